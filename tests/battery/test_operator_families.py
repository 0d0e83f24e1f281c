"""Each family of the operator allow-list, captured from a real model, accepted end to end.

One tiny model per family of ``obstacle.artifacts.allowed_ops.OPERATOR_FAMILIES`` is captured
with ``Probe.capture`` (which applies the allow-list rule), saved (which runs the service's whole
archive validator), and the family's representative operators must be in the program. A probe
whose loss calls ``lgamma`` is also analysed; a probe calling a refused operator fails at capture.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import obstacle
from obstacle.artifacts.allowed_ops import OPERATOR_FAMILIES
from obstacle.artifacts.archive import validate_program_archive
from obstacle.artifacts.layout import PROBE_DIR, PROBE_PROGRAM
from obstacle.battery.analysis import analyze
from obstacle.errors import ProbeError

B = 6


class _Head(nn.Module):
    """``features(linear(x))`` flattened to three logits: the family's ops sit in ``features``."""

    def __init__(self, features: Callable[[Tensor], Tensor], width: int = 4) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.features = features
        self.out = nn.LazyLinear(3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(self.linear(x))
        return self.out(h.reshape(h.shape[0], -1))  # type: ignore[no-any-return]


def _arithmetic(h: Tensor) -> Tensor:
    return (
        torch.hypot(h, 1 + h.abs())
        + torch.fmax(h, -h)
        + torch.copysign(h, -h)
        + torch.exp2(h)
        + torch.atan2(h, h + 3)
    )


def _special(h: Tensor) -> Tensor:
    p = torch.sigmoid(h)
    return torch.stack(
        [
            torch.lgamma(h.exp()),
            torch.digamma(h.exp()),
            torch.erfinv(torch.tanh(h)),
            torch.special.i1(h),
            torch.special.erfcx(h),
            torch.special.ndtri(p),
            torch.polygamma(1, h.exp()),
            torch.special.bessel_j0(h),
        ],
        dim=1,
    )


def _comparison(h: Tensor) -> Tensor:
    keep = ((h > 0) & (h < 1)) | torch.isnan(h) | (h == 0.5)
    shifted = torch.bitwise_left_shift(torch.ones_like(h, dtype=torch.int64), 1)
    return torch.where(keep, h, -h) * shifted


def _reductions(h: Tensor) -> Tensor:
    edges = torch.tensor([-0.5, 0.0, 0.5])
    return torch.stack(
        [
            h.cumprod(1).sum(1),
            h.cummax(1).values.sum(1),
            h.logcumsumexp(1).sum(1),
            h.median(1).values,
            h.kthvalue(2, 1).values,
            torch.linalg.vector_norm(h, 3, dim=1),
            (h - h.max())[:, 0],
            h.sort(1).values[:, 0],
            h.topk(2, 1).values[:, 1],
            torch.searchsorted(edges, h.detach().contiguous()).to(h.dtype).sum(1),
        ],
        dim=1,
    )


def _views(h: Tensor) -> Tensor:
    a, b = h.split([1, 3], dim=1)
    return torch.cat([h.unfold(1, 2, 1).flatten(1), h.flip(1), b.repeat(1, 2), a.expand(-1, 2)], 1)


def _indexing(h: Tensor) -> Tensor:
    index = torch.tensor([2, 0])
    zeros = torch.zeros(h.shape[0], 2, dtype=torch.int64)
    return torch.cat(
        [
            h.index_select(1, index),
            h.masked_scatter(h > 0, -h),
            h.scatter_add(1, zeros, h[:, :2]),
            h.scatter_reduce(1, zeros, h[:, :2], "amax"),
            h.gather(1, zeros),
            h.index_put((torch.tensor([1]),), torch.tensor(0.5), accumulate=True)[:, :1],
        ],
        1,
    )


def _linear_algebra(h: Tensor) -> Tensor:
    gram = h[:, :, None] * h[:, None, :] + torch.eye(4)
    lower = torch.tril(gram, -1) + 2 * torch.eye(4)
    return torch.cat(
        [
            torch.linalg.det(gram)[:, None],
            torch.linalg.slogdet(gram)[1][:, None],
            torch.linalg.eigvalsh(gram),
            torch.linalg.svdvals(gram),
            torch.linalg.qr(gram).R.sum(1),
            torch.linalg.solve_triangular(lower, h[:, :, None], upper=False).squeeze(-1),
            torch.linalg.matrix_exp(0.1 * gram).sum(1),
        ],
        1,
    )


class _Bilinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bilinear = nn.Bilinear(4, 4, 3)
        self.bias = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.bias(x)
        return self.bilinear(h, h) + torch.addmv(torch.zeros(3), torch.ones(3, 4), h[0])  # type: ignore[no-any-return]


def _spectral(h: Tensor) -> Tensor:
    spectrum = torch.fft.rfft(h, dim=1)
    return torch.cat([torch.fft.irfft(spectrum * 0.5, n=4, dim=1), spectrum.abs()], 1)


class _Image(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect")
        self.theta = nn.Parameter(torch.eye(2, 3)[None] + 0.01)
        self.out = nn.LazyLinear(3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        grid = F.affine_grid(
            self.theta.expand(x.shape[0], 2, 3), list(h.shape), align_corners=False
        )
        h = F.grid_sample(h, grid, align_corners=False)
        h = F.interpolate(F.adaptive_max_pool2d(h, 3), scale_factor=2, mode="bicubic")
        h = torch.cat([F.max_pool2d(h, 2), F.avg_pool2d(h, 2)], 1)
        return self.out(h.flatten(1))  # type: ignore[no-any-return]


class _Normalized(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(4, 8), nn.BatchNorm1d(8), nn.GroupNorm(2, 8), nn.LayerNorm(8), nn.Linear(8, 3)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # type: ignore[no-any-return]


def _creation(h: Tensor) -> Tensor:
    rows, cols = torch.tril_indices(4, 4)
    pairs = (h[:, rows] * h[:, cols]).to(torch.float64).to(h.dtype)
    padded = F.pad(h[:, None, :], (1, 1), mode="circular").flatten(1)  # empty + copy at trace
    return torch.cat([pairs, padded, h + torch.full((4,), 2.0), h * torch.arange(4.0)], 1)


def _model(family: str) -> tuple[nn.Module, Tensor]:
    x = torch.randn(B, 4, generator=torch.Generator().manual_seed(0))
    features: dict[str, Callable[[Tensor], Tensor]] = {
        "arithmetic": _arithmetic,
        "special_functions": _special,
        "comparison_logic": _comparison,
        "reductions": _reductions,
        "views_shapes": _views,
        "indexing": _indexing,
        "linear_algebra": _linear_algebra,
        "spectral": _spectral,
        "creation_conversion": _creation,
    }
    if family in features:
        return _Head(features[family]), x
    if family == "activations":
        acts = [nn.ReLU(), nn.LeakyReLU(), nn.ELU(), nn.GELU(), nn.Hardtanh(), nn.Sigmoid()]
        return nn.Sequential(nn.Linear(4, 4), *acts, nn.Softmax(1), nn.Linear(4, 3)), x
    if family == "linear_algebra_layers":
        return _Bilinear(), x
    if family == "convolution_pooling":
        return _Image(), torch.randn(B, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    assert family == "normalization"
    return _Normalized(), x


# family -> the operators (name.overload) its model must lower to
EXPECTED = {
    "arithmetic": {"hypot.default", "fmax.default", "copysign.Tensor", "exp2.default", "atan2.default"},
    "special_functions": {
        "lgamma.default", "digamma.default", "erfinv.default", "special_i1.default",
        "special_erfcx.default", "special_ndtri.default", "polygamma.default",
        "special_bessel_j0.default",
    },
    "comparison_logic": {"gt.Scalar", "lt.Scalar", "isnan.default", "bitwise_left_shift.Tensor_Scalar"},
    "activations": {
        "relu.default", "leaky_relu.default", "elu.default", "gelu.default", "hardtanh.default",
        "sigmoid.default", "_softmax.default",
    },
    "reductions": {
        "cumprod.default", "cummax.default", "logcumsumexp.default", "median.dim",
        "kthvalue.default", "linalg_vector_norm.default", "max.default", "sort.default",
        "topk.default", "searchsorted.Tensor",
    },
    "views_shapes": {"unfold.default", "flip.default", "repeat.default", "split_with_sizes.default", "cat.default"},
    "indexing": {
        "index_select.default", "masked_scatter.default", "scatter_add.default",
        "scatter_reduce.two", "gather.default", "index_put.default",
    },
    "linear_algebra": {
        "_linalg_det.default", "_linalg_slogdet.default", "_linalg_eigh.default",
        "_linalg_svd.default", "linalg_qr.default", "linalg_solve_triangular.default",
        "linalg_matrix_exp.default",
    },
    "linear_algebra_layers": {"_trilinear.default", "addmv.default"},
    "spectral": {"_fft_r2c.default", "_fft_c2r.default"},
    "convolution_pooling": {
        "convolution.default", "grid_sampler_2d.default", "adaptive_max_pool2d.default",
        "max_pool2d_with_indices.default", "avg_pool2d.default",
    },
    "normalization": {"_native_batch_norm_legit_no_training.default", "native_group_norm.default"},
    "creation_conversion": {"tril_indices.default", "copy.default", "full.default", "_to_copy.default"},
}  # fmt: skip


def _operators(program: torch.export.ExportedProgram) -> set[str]:
    return {
        str(node.target).removeprefix("aten.")
        for node in program.graph.nodes
        if node.op == "call_function"
    }


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_each_family_is_captured_saved_and_validated(family: str, tmp_path: Path) -> None:
    model, x = _model(family)
    model(x)  # materialise lazy layers
    target = torch.randint(0, 3, (B,), generator=torch.Generator().manual_seed(1))
    probe = obstacle.Probe.capture(model, nn.CrossEntropyLoss(), [(x, target)])
    found = _operators(probe.program)
    assert EXPECTED[family] <= found, sorted(EXPECTED[family] - found)
    listed = OPERATOR_FAMILIES[family.removesuffix("_layers")]
    assert EXPECTED[family] <= listed
    probe.save(tmp_path)  # runs the service's validator on the archive
    summary = validate_program_archive(tmp_path / PROBE_DIR / PROBE_PROGRAM)
    assert {"torch.ops.aten." + name for name in EXPECTED[family]} <= set(summary.operators)


class _PoissonRate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(self.linear(x)) + 0.1  # type: ignore[no-any-return]


def _exact_poisson_nll(rate: Tensor, count: Tensor) -> Tensor:
    """-log p(count | rate) with its lgamma(count + 1) term: what PoissonNLLLoss approximates."""
    return (rate - count * rate.log() + torch.lgamma(count + 1)).mean()


@pytest.mark.parametrize(
    "loss_fn",
    [_exact_poisson_nll, nn.PoissonNLLLoss(log_input=False, full=True)],
    ids=["lgamma", "PoissonNLLLoss-full"],
)
def test_poisson_likelihood_probe_is_captured_and_analysed(
    loss_fn: Callable[[Tensor, Tensor], Tensor], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = _PoissonRate()
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(8, 4, generator=g), torch.poisson(torch.full((8, 3), 3.0), generator=g))
        for _ in range(2)
    ]
    probe = obstacle.Probe.capture(model, loss_fn, batches)
    if loss_fn is _exact_poisson_nll:
        assert "lgamma.default" in _operators(probe.program)
    probe.save(tmp_path)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(3):
        obstacle.save_checkpoint(tmp_path, model, step=step, lr=0.05)
        for x, y in batches:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
    report = analyze(tmp_path, preset="quick", dtype="float64")
    assert len(report["checkpoints"]) == 3
    assert all(math.isfinite(c["lambda_max"]) for c in report["checkpoints"])


@torch.library.custom_op("obstacle_test::double_it", mutates_args=())
def _double_it(x: Tensor) -> Tensor:
    return x * 2


@_double_it.register_fake
def _(x: Tensor) -> Tensor:
    return torch.empty_like(x)


class _CustomOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return _double_it(self.linear(x))  # type: ignore[no-any-return]


class _Inverse(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear(x)
        return torch.linalg.inv(h[:, :, None] * h[:, None, :] + torch.eye(4)).sum(-1)[:, :3]


@pytest.mark.parametrize(
    ("model", "fragments"),
    [
        (_CustomOp(), ("'torch.ops.obstacle_test.double_it.default'", "namespace", "_CustomOp")),
        (
            _Inverse(),
            ("'torch.ops.higher_order.with_effects'", "torch.ops.aten._linalg_check_errors"),
        ),
        (
            nn.Sequential(nn.Linear(4, 3), nn.RReLU()),
            ("rrelu_with_noise_functional", "random numbers", "layer 1 (RReLU)"),
        ),
    ],
    ids=["custom-op", "with-effects", "random"],
)
def test_a_refused_operator_fails_at_capture(model: nn.Module, fragments: tuple[str, ...]) -> None:
    x = torch.randn(B, 4)
    with pytest.raises(ProbeError) as info:
        obstacle.Probe.capture(model, nn.CrossEntropyLoss(), [(x, torch.randint(0, 3, (B,)))])
    message = str(info.value)
    for fragment in (*fragments, "Probe.capture", "obstacle.artifacts.allowed_ops"):
        assert fragment in message, message


def test_uninitialised_allocations_are_captured_as_zeros() -> None:
    model = nn.Linear(4, 4)
    x, y = torch.randn(B, 4), torch.randn(B, 4).sign()
    probe = obstacle.Probe.capture(model, nn.HingeEmbeddingLoss(), [(x, y)])  # uses empty_like
    assert not {op for op in _operators(probe.program) if op.startswith(("empty", "new_empty"))}
    assert torch.allclose(probe.program.module()(x, y), nn.HingeEmbeddingLoss()(model(x), y))
