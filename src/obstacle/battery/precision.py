"""The precision policy: which dtype the battery computes in, and what that dtype can resolve.

``dtype="auto"`` (the default everywhere) picks:

- **float32** on a GPU (tensor throughput, and memory: a 124M-parameter model's vectors are half
  the size), and on the CPU above :data:`FLOAT64_MAX_PARAMETERS` parameters, where the memory of
  the Lanczos basis and the per-batch gradients is what limits the analysis;
- **float64** for small models on the CPU, as before: exact to rounding, and cheap there.

``"float32"`` or ``"float64"`` given explicitly (``--dtype``) always wins. Reductions (dot
products, norms, the Gram matrix, the Lanczos eigenproblem) are float64 whatever the dtype
(:mod:`obstacle.battery.reduce`).

What float32 cannot resolve. A float32 Hessian-vector product carries a relative error near
1e-7·√(work), and measured Lanczos runs bottom out near 1e-4·λmax for the smallest eigenvalues
(``lanczos.py``). A λmin with |λmin| below :data:`FLOAT32_RESOLUTION`·λmax in float32 is
therefore not reported as a number: the record says it is below the resolution and how to
resolve it (float64). Such a λmin is far below any threshold that calls curvature "clearly
negative", so no verdict depends on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from obstacle._validation import check_choice

__all__ = [
    "DTYPE_CHOICES",
    "FLOAT32_RESOLUTION",
    "FLOAT64_MAX_PARAMETERS",
    "Precision",
    "choose_precision",
    "resolution",
]

DTYPE_CHOICES = ("auto", "float32", "float64")
# Above this many parameters the CPU analysis runs in float32 (a float64 vector of 1M
# parameters is 8 MB; the Lanczos basis holds two dozen of them, the per-batch gradients K more).
FLOAT64_MAX_PARAMETERS = 1_000_000
# The smallest |λ| / λmax that float32 Lanczos resolves (measured: λmin bottoms out near 1e-4).
FLOAT32_RESOLUTION = 1e-4


@dataclass(frozen=True)
class Precision:
    """The dtype chosen, whether it was asked for or chosen by the policy, and why."""

    dtype: str
    policy: str  # "requested" or "auto"
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"dtype": self.dtype, "policy": self.policy, "reason": self.reason}


def choose_precision(dtype: str, *, device: torch.device, num_parameters: int) -> Precision:
    """Resolve ``dtype`` ("auto", "float32" or "float64") for a model on ``device``."""
    dtype = check_choice("dtype", dtype, DTYPE_CHOICES)
    if dtype != "auto":
        return Precision(dtype, "requested", f"--dtype {dtype} was requested")
    if device.type != "cpu":
        return Precision("float32", "auto", f"float32 on {device.type}: the policy for GPUs")
    if num_parameters > FLOAT64_MAX_PARAMETERS:
        return Precision(
            "float32",
            "auto",
            f"float32: {num_parameters:,} parameters is above the float64 limit of "
            f"{FLOAT64_MAX_PARAMETERS:,} on the CPU (--dtype float64 overrides)",
        )
    return Precision(
        "float64",
        "auto",
        f"float64: {num_parameters:,} parameters on the CPU (at most {FLOAT64_MAX_PARAMETERS:,})",
    )


def resolution(dtype: torch.dtype) -> float:
    """The smallest |λ|/λmax that Lanczos resolves in ``dtype`` (0 for float64: rounding only)."""
    return FLOAT32_RESOLUTION if dtype != torch.float64 else 0.0
