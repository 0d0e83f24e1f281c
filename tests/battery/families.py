"""One small model per architecture family the probe must capture (float64, eval-mode ready)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

Family = tuple[nn.Module, Callable[[Tensor, Tensor], Tensor], list[tuple[Tensor, Tensor]]]


class _Recurrent(nn.Module):
    def __init__(self, cell: type[nn.LSTM] | type[nn.GRU]) -> None:
        super().__init__()
        self.rnn = cell(4, 6, batch_first=True)
        self.out = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        hidden, _ = self.rnn(x)
        return self.out(hidden[:, -1])


class _Transformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.out = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.encoder(self.embed(x)).mean(dim=1))


def _batches(
    shape: tuple[int, ...], k: int = 2, b: int = 6, seed: int = 0
) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(b, *shape, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (b,), generator=g),
        )
        for _ in range(k)
    ]


def build(name: str) -> Family:
    """The model, loss and probe batches of one family, seeded."""
    torch.manual_seed(0)
    if name == "mlp":
        model: nn.Module = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
        data = _batches((5,))
    elif name == "cnn":
        model = nn.Sequential(
            nn.Conv2d(1, 4, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(36, 3),
        )
        data = _batches((1, 8, 8))
    elif name == "layernorm":
        model = nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 3))
        data = _batches((5,))
    elif name == "batchnorm":
        model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Softplus(), nn.Linear(8, 3))
        data = _batches((5,))
        model.double().train()
        with torch.no_grad():  # give the running statistics non-trivial values
            model(data[0][0] * 2 + 1)
    elif name == "lstm":
        model = _Recurrent(nn.LSTM)
        data = _batches((5, 4))
    elif name == "gru":
        model = _Recurrent(nn.GRU)
        data = _batches((5, 4))
    elif name == "transformer":
        model = _Transformer()
        data = _batches((5, 4))
    else:
        raise KeyError(name)
    return model.double(), F.cross_entropy, data


FAMILIES = ["mlp", "cnn", "layernorm", "batchnorm", "lstm", "gru", "transformer"]


def eager_reference(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    batches: list[tuple[Tensor, Tensor]],
    v: Tensor,
) -> tuple[float, Tensor, Tensor]:
    """(J, ∇J, H·v) of the eager model in eval mode through the math attention kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    with sdpa_kernel([SDPBackend.MATH]):
        value = torch.stack([loss_fn(model(x), y) for x, y in batches]).mean()
        grads = torch.autograd.grad(value, params, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        hv = torch.autograd.grad(flat @ v, params)
    return float(value.detach()), flat.detach(), torch.cat([h.reshape(-1) for h in hv])
