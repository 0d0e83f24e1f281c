"""The probe manifest: what a checkpoint must contain and what the probe data looks like.

Torch-free, so that the service can check an uploaded checkpoint against it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from obstacle.artifacts.safetensors_header import SafetensorsHeader
from obstacle.artifacts.untrusted_json import JsonLimits, parse_untrusted_json
from obstacle.errors import CheckpointError, ProbeError

MANIFEST_FORMAT: Literal["obstacle.probe/1"] = "obstacle.probe/1"

# torch dtype name -> safetensors dtype code
SAFETENSORS_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


class TensorSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    shape: list[int]
    dtype: str


class InputSpec(BaseModel):
    """One positional tensor of a batch; ``shape[0]`` is the (dynamic) batch dimension."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int
    shape: list[int]
    dtype: str


class ProbeManifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["obstacle.probe/1"] = MANIFEST_FORMAT
    parameters: list[TensorSpec]
    buffers: list[TensorSpec]
    inputs: list[InputSpec]
    num_batches: int
    batch_size: int
    validation_size: int | None = None
    torch_version: str
    obstacle_version: str
    content_hash: str
    model_class: str = ""
    loss_class: str = ""

    @property
    def state_specs(self) -> list[TensorSpec]:
        """Every tensor a checkpoint must hold: parameters then buffers."""
        return [*self.parameters, *self.buffers]

    @property
    def num_parameters(self) -> int:
        total = 0
        for spec in self.parameters:
            n = 1
            for d in spec.shape:
                n *= d
            total += n
        return total

    def check_header(self, header: SafetensorsHeader, *, name: str) -> None:
        """Raise CheckpointError listing every missing, extra, mis-shaped or mis-typed tensor."""
        expected = {s.name: s for s in self.state_specs}
        got = header.tensors
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        wrong = []
        for key in sorted(set(expected) & set(got)):
            spec, entry = expected[key], got[key]
            if list(entry.shape) != spec.shape:
                wrong.append(f"{key}: shape {list(entry.shape)} (probe expects {spec.shape})")
            elif SAFETENSORS_DTYPES.get(spec.dtype) != entry.dtype and not _both_float(
                spec.dtype, entry.dtype
            ):
                wrong.append(f"{key}: dtype {entry.dtype} (probe expects {spec.dtype})")
        if missing or extra or wrong:
            parts = []
            if missing:
                parts.append("missing: " + ", ".join(missing))
            if extra:
                parts.append("unexpected: " + ", ".join(extra))
            if wrong:
                parts.append("mismatched: " + "; ".join(wrong))
            raise CheckpointError(
                f"{name}: the checkpoint does not match the probe's model ({' | '.join(parts)}). "
                "Save the state_dict of the same model the probe was captured from."
            )


def _both_float(torch_dtype: str, code: str) -> bool:
    # A float32 probe accepts float64/bf16/f16 weights: the engine casts to its own dtype.
    return torch_dtype in ("float64", "float32", "float16", "bfloat16") and code in (
        "F64",
        "F32",
        "F16",
        "BF16",
    )


MAX_MANIFEST_BYTES = 16 * 2**20
MANIFEST_JSON = JsonLimits(max_bytes=MAX_MANIFEST_BYTES, max_depth=8)


def parse_manifest(raw: bytes | str, *, name: str) -> ProbeManifest:
    """Validate the bytes of a ``manifest.json`` (untrusted: bounded JSON, then the schema)."""
    fix = "Capture the probe again with obstacle.Probe.capture(...).save(run_dir)"
    document = parse_untrusted_json(
        raw, what=f"{name}: the probe manifest", error=ProbeError, fix=fix, limits=MANIFEST_JSON
    )
    try:
        return ProbeManifest.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(document)'}: {err['msg']}"
            for err in exc.errors()[:10]
        )
        raise ProbeError(
            f"{name}: the probe manifest is not a valid obstacle.probe/1 manifest ({problems}). "
            f"{fix}."
        ) from None


def read_manifest(path: str | Path) -> ProbeManifest:
    """Read and validate ``manifest.json``."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ProbeError(
            f"{p}: no probe manifest. Capture the probe with obstacle.Probe.capture(...).save(run_dir)."
        ) from None
    except OSError as exc:
        raise ProbeError(
            f"{p}: the probe manifest cannot be read ({exc.strerror or exc}). Check that the path "
            "is the manifest.json file of a probe directory."
        ) from None
    return parse_manifest(raw, name=str(p))
