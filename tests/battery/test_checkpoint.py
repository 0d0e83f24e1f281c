"""Checkpoints: metadata in the header, validation against the probe, legacy .pt safety."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

import obstacle
from obstacle.artifacts.layout import list_checkpoints
from obstacle.artifacts.manifest import read_manifest
from obstacle.battery.checkpoint import append_train_log, load_checkpoint
from obstacle.errors import CheckpointError, ParameterError


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    obstacle.Probe.capture(
        model, nn.functional.cross_entropy, [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))]
    ).save(tmp_path)
    return tmp_path, model


def test_header_carries_step_lr_loss_and_optimizer(run: tuple[Path, nn.Module]) -> None:
    run_dir, model = run
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.99))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = obstacle.save_checkpoint(run_dir, model, step=7, lr=0.01, train_loss=0.5, optimizer=opt)
    assert path.name == "step_000000007.safetensors"
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    assert meta["step"] == "7" and float(meta["lr"]) == 0.01 and float(meta["train_loss"]) == 0.5
    opt_meta = json.loads(meta["optimizer"])
    assert opt_meta["class"] == "Adam" and opt_meta["hyperparameters"]["betas"] == [0.8, 0.99]
    ck = load_checkpoint(path, read_manifest(run_dir / "probe/manifest.json"))
    assert ck.optimizer is not None
    assert set(ck.optimizer.state["0.weight"]) == {"exp_avg", "exp_avg_sq", "step"}
    torch.testing.assert_close(
        ck.optimizer.state["0.weight"]["exp_avg"], opt.state[model[0].weight]["exp_avg"]
    )
    assert list_checkpoints(run_dir) == [(7, path)]


def test_mismatched_checkpoint_lists_every_bad_tensor_by_name(
    run: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    run_dir, model = run
    state = dict(model.state_dict())
    del state["0.bias"]
    state["2.weight"] = torch.zeros(5, 4)
    state["extra.weight"] = torch.zeros(1)
    path = obstacle.save_checkpoint(run_dir, state, step=1, lr=0.1)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, read_manifest(run_dir / "probe/manifest.json"))
    message = str(info.value)
    assert "missing: 0.bias" in message and "unexpected: extra.weight" in message
    assert "2.weight: shape [5, 4] (probe expects [2, 4])" in message


def test_legacy_pt_state_dict_loads_with_weights_only(run: tuple[Path, nn.Module]) -> None:
    run_dir, model = run
    path = run_dir / "checkpoints" / "step_000000003.pt"
    path.parent.mkdir(exist_ok=True)
    torch.save(model.state_dict(), path)
    ck = load_checkpoint(path, read_manifest(run_dir / "probe/manifest.json"))
    assert ck.step == 3 and set(ck.state) == set(model.state_dict())


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_legacy_pt_with_code_is_refused_without_running_it(
    run: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    run_dir, _ = run
    marker = tmp_path / "pwned"
    path = run_dir / "checkpoints" / "step_000000004.pt"
    path.parent.mkdir(exist_ok=True)
    torch.save({"0.weight": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_checkpoint_is_a_clear_error(run: tuple[Path, nn.Module]) -> None:
    run_dir, model = run
    path = obstacle.save_checkpoint(run_dir, model, step=2, lr=0.1)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


def test_non_finite_weights_are_kept_as_evidence(run: tuple[Path, nn.Module]) -> None:
    run_dir, model = run
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    path = obstacle.save_checkpoint(run_dir, model, step=9, lr=10.0, train_loss=float("inf"))
    ck = load_checkpoint(path)
    assert torch.isnan(ck.state["0.weight"][0, 0]) and ck.train_loss == float("inf")


def test_bad_arguments_are_parameter_errors(run: tuple[Path, nn.Module]) -> None:
    run_dir, model = run
    with pytest.raises(
        ParameterError, match="The 'step' parameter must be an int in the range \\[0, inf\\)"
    ):
        obstacle.save_checkpoint(run_dir, model, step=-1, lr=0.1)
    with pytest.raises(ParameterError, match="'lr'"):
        obstacle.save_checkpoint(run_dir, model, step=1, lr=float("nan"))


def test_train_log_appends_json_lines(tmp_path: Path) -> None:
    append_train_log(tmp_path, step=1, lr=0.1, loss=2.0)
    append_train_log(tmp_path, step=2, lr=0.1, loss=1.5)
    lines = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert lines == [{"step": 1, "lr": 0.1, "loss": 2.0}, {"step": 2, "lr": 0.1, "loss": 1.5}]
