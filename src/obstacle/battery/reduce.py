"""Float64 reductions over vectors kept in float32: dot products, norms and Gram matrices.

The battery keeps parameter-sized vectors in the analysis dtype (float32 on GPUs and large
models) but reduces them in float64, so that a sum over 10⁸ entries does not lose the digits
that Lanczos and the noise statistics depend on. The reductions run in column blocks of at most
``BLOCK_BYTES`` per operand: never a float64 copy of a whole vector or basis.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["BLOCK_BYTES", "dot64", "gram64", "norm64"]

BLOCK_BYTES = 32 * 2**20


def gram64(a: Tensor, b: Tensor) -> Tensor:
    """a·bᵀ in float64 for row blocks a (m, n) and b (k, n) (1-D b: a·b, shape (m,))."""
    vector = b.dim() == 1
    b2 = b.reshape(1, -1) if vector else b
    if a.dtype == torch.float64 and b2.dtype == torch.float64:
        out = a @ b2.T
    else:
        out = torch.zeros(a.shape[0], b2.shape[0], dtype=torch.float64, device=a.device)
        step = max(1024, BLOCK_BYTES // (8 * max(a.shape[0], b2.shape[0], 1)))
        for i in range(0, a.shape[1], step):
            out += a[:, i : i + step].double() @ b2[:, i : i + step].double().T
    return out[:, 0] if vector else out


def dot64(a: Tensor, b: Tensor) -> float:
    """aᵀb of two vectors, reduced in float64."""
    return float(gram64(a.reshape(1, -1), b.reshape(-1))[0])


def norm64(a: Tensor) -> float:
    """‖a‖, reduced in float64."""
    return math.sqrt(max(dot64(a, a), 0.0))
