"""A benign probe program archive, and tools to turn it into each attack the validator must stop."""

from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

ROOT = "program"  # torch.export.save names the archive's top-level folder after the file stem
MODEL_JSON = f"{ROOT}/models/model.json"
WEIGHTS_CONFIG = f"{ROOT}/data/weights/model_weights_config.json"
CONSTANTS_CONFIG = f"{ROOT}/data/constants/model_constants_config.json"
SAMPLE_INPUTS = f"{ROOT}/data/sample_inputs/model.pt"
# torch.export's own pytree code trips its deprecation of LeafSpec (pyproject ignores it too, but
# `pytest -W error` on the command line takes precedence over the ini filters).
LEAF_SPEC_WARNING = r".*isinstance\(treespec, LeafSpec\)"


class TinyModelWithLoss(nn.Module):
    """Linear layer, a non-persistent buffer and a tensor constant, then cross-entropy.

    The buffer and the plain-tensor attribute make torch write ``data/constants/tensor_<n>``
    entries, so the benign archive exercises the constants path too.
    """

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.register_buffer("shift", torch.tensor([0.1, -0.2, 0.3]), persistent=False)
        self.scale = torch.tensor([2.0, 1.0, 0.5])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy((self.linear(x) + self.shift) * self.scale, y)


@dataclass(frozen=True)
class Benign:
    path: Path
    model: TinyModelWithLoss

    @staticmethod
    def inputs(batch: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, 4, generator=generator)
        return x, torch.randint(0, 3, (batch,), generator=generator)


@pytest.fixture(scope="session")
def benign(tmp_path_factory: pytest.TempPathFactory) -> Benign:
    """A program archive saved exactly as obstacle's probe capture saves one."""
    torch.manual_seed(0)
    model = TinyModelWithLoss().eval()
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", LEAF_SPEC_WARNING, FutureWarning)
        program = torch.export.export(model, (x, y), dynamic_shapes=({0: batch}, {0: batch}))
        program = program.run_decompositions()
        program._example_inputs = None  # no pickled sample inputs
        path = tmp_path_factory.mktemp("benign") / f"{ROOT}.pt2"
        torch.export.save(program, path)
    return Benign(path=path, model=model)


class MarkerPickle:
    """Unpickling this creates ``path``: proof that the pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str, str]]:
        return (open, (self.path, "w"))


@dataclass
class Tamper:
    """Rewrites entries of the benign archive into new archives in ``directory``."""

    source: Path
    directory: Path

    root = ROOT
    model_json = MODEL_JSON
    weights_config = WEIGHTS_CONFIG
    constants_config = CONSTANTS_CONFIG
    sample_inputs = SAMPLE_INPUTS

    @staticmethod
    def marker_pickle(path: Path) -> bytes:
        """A protocol-2 pickle whose loading creates ``path``."""
        return pickle.dumps(MarkerPickle(path), protocol=2)

    def read(self, name: str) -> bytes:
        with zipfile.ZipFile(self.source) as archive:
            return archive.read(name)

    def json(self, name: str) -> Any:
        return json.loads(self.read(name))

    def write(
        self,
        filename: str,
        *,
        replace: Mapping[str, Any] | None = None,
        add: dict[str, bytes] | None = None,
        drop: tuple[str, ...] = (),
    ) -> Path:
        """Copy the benign archive with ``replace``d entries (JSON-encoded unless bytes/str)."""
        replace = dict(replace or {})
        target = self.directory / filename
        with zipfile.ZipFile(self.source) as source, zipfile.ZipFile(target, "w") as out:
            for info in source.infolist():
                if info.filename in drop:
                    continue
                data = replace.pop(info.filename, None)
                out.writestr(
                    info.filename, _encode(data) if data is not None else source.read(info)
                )
            for name, data in {**replace, **(add or {})}.items():
                out.writestr(name, _encode(data))
        return target


def _encode(data: Any) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode()
    return json.dumps(data).encode()


@pytest.fixture
def tamper(benign: Benign, tmp_path: Path) -> Tamper:
    return Tamper(source=benign.path, directory=tmp_path)
