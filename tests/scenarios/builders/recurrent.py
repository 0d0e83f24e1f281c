"""Recurrent models (GRU, LSTM) trained in torch's default float32, as a user trains them.

The battery analyses them in float64 by default, which is where recurrent programs used to fail
(a tensor the exported program creates keeps float32). The exact facts are computed on a
float64 copy of the model at the saved (float32) parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RecurrentRegressor(nn.Module):
    """A one-layer GRU or LSTM over (B, T, 1) sequences; a linear head reads the last state."""

    def __init__(self, cell: type[nn.GRU] | type[nn.LSTM], hidden: int) -> None:
        super().__init__()
        self.rnn = cell(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        y: Tensor = self.head(out[:, -1])
        return y


def memory_task(
    gen: torch.Generator, n: int, *, length: int = 6, noise: float = 0.0
) -> tuple[Tensor, Tensor]:
    """float32 sequences x_t ~ N(0, 1) and y = Σ_t 0.6^(T−1−t)·x_t (+ label noise): a fading memory."""
    x = torch.randn(n, length, 1, generator=gen)
    weights = 0.6 ** torch.arange(length - 1, -1, -1, dtype=torch.float32)
    y = (x[:, :, 0] * weights).sum(dim=1, keepdim=True)
    return x, y + noise * torch.randn(n, 1, generator=gen)
