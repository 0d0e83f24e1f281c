"""Gradient noise ("varying g"): how much the K probe batches disagree about the gradient.

With g_k the gradient of batch k's loss (batch size B) and ḡ their mean (= ∇J):

- ``trace`` tr(Σ) = Σ_k ‖g_k − ḡ‖² / (K − 1): the unbiased trace of the covariance of
  one batch's gradient.
- ``mean_gradient_sq_norm`` ‖ḡ‖² overestimates ‖G‖² (the true gradient's): E‖ḡ‖² = ‖G‖² + tr(Σ)/K.
  ``gradient_sq_norm_unbiased`` = ‖ḡ‖² − tr(Σ)/K removes that bias. When it is positive the
  signal is resolved and it is the |G|² used below; otherwise the noise swamps the signal at this
  K, the raw ‖ḡ‖² is used and the noise scale is a lower bound (``signal_resolved: false``).
- ``noise_scale`` B_simple = B·tr(Σ)/|G|² (McCandlish et al. 2018, "An Empirical Model of
  Large-Batch Training", eq. 2.8): B·tr(Σ) estimates the per-example covariance trace, assuming
  the probe batches are independent draws of B examples each (no finite-population correction).
- ``snr`` |G|²/tr(Σ): the signal-to-noise of one batch gradient (= B / B_simple).
- ``mean_pairwise_cosine`` of the g_k (k < l).
- ``bootstrap``: percentile intervals over ``options["bootstrap"]`` resamples of the K batches
  (with replacement; ``bootstrap_seed``, ``bootstrap_confidence``), each resample going through the
  same estimator as the point estimate. With K of 4–16 these intervals are rough.

Everything is computed from the K×K Gram matrix g_kᵀg_l (float64 reductions), so the
bootstrap costs O(R·K²) after one O(K²·P) product, its tr(Σ) does not cancel against ‖ḡ‖², and
the gradients need not be held together: under a memory plan the Gram matrix is built chunk by
chunk (:meth:`CheckpointContext.batch_gram`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from obstacle._validation import check_float, check_int
from obstacle.battery.quantities.base import CheckpointContext, Quantity, Record
from obstacle.battery.reduce import gram64

__all__ = [
    "GradientNoise",
    "bootstrap_noise",
    "bootstrap_noise_from_gram",
    "noise_statistics",
    "noise_statistics_from_gram",
]

_NOISE_KEYS = (
    "mean_gradient_norm",
    "trace",
    "mean_gradient_sq_norm",
    "gradient_sq_norm_unbiased",
    "signal_resolved",
    "gradient_sq_norm_estimator",
    "noise_scale",
    "noise_scale_raw",
    "snr",
    "snr_raw",
    "mean_pairwise_cosine",
    "bootstrap",
)


class GradientNoise(Quantity):
    """Record keys: ``num_batches``, ``batch_size``, ``batch_gradient_norms``, the keys of
    :func:`noise_statistics`, ``bootstrap`` (see :func:`bootstrap_noise`; None when the
    ``bootstrap`` option, the number of resamples, is 0) and ``reason`` (why the noise keys are
    None: one probe batch has no spread).

    Options: ``bootstrap`` (resamples, default 1000), ``bootstrap_seed`` (default 0),
    ``bootstrap_confidence`` (default 0.95)."""

    name = "noise"

    def compute(self, ctx: CheckpointContext) -> Record:
        _, gram = ctx.batch_gram()
        k = gram.shape[0]
        batch_size = ctx.engine.probe.manifest.batch_size
        record: Record = {
            "num_batches": k,
            "batch_size": batch_size,
            "batch_gradient_norms": [math.sqrt(max(float(v), 0.0)) for v in gram.diagonal()],
        }
        if k < 2:
            record.update(dict.fromkeys(_NOISE_KEYS))
            record["reason"] = (
                "the probe has one batch: gradient noise needs K ≥ 2 batches to estimate a spread"
            )
            return record
        resamples = check_int("bootstrap", ctx.options.get("bootstrap", 1000), low=0)
        seed = check_int("bootstrap_seed", ctx.options.get("bootstrap_seed", 0), low=0)
        confidence = check_float(
            "bootstrap_confidence",
            ctx.options.get("bootstrap_confidence", 0.95),
            low=0.0,
            high=1.0,
            closed="neither",
        )
        record.update(noise_statistics_from_gram(gram, batch_size))
        record["bootstrap"] = (
            bootstrap_noise_from_gram(
                gram, batch_size, resamples=resamples, seed=seed, confidence=confidence
            )
            if resamples > 0
            else None
        )
        record["reason"] = None
        return record


def noise_statistics(grads: Tensor, batch_size: int) -> dict[str, Any]:
    """Point estimates from the (K, P) per-batch gradients, K ≥ 2 (see the module docstring)."""
    return noise_statistics_from_gram(gram64(grads, grads), batch_size)


def noise_statistics_from_gram(gram: Tensor, batch_size: int) -> dict[str, Any]:
    """Point estimates from the K×K Gram matrix g_kᵀg_l of the per-batch gradients, K ≥ 2."""
    parts = _centred_gram(gram)
    ones = torch.ones(1, parts[0], dtype=torch.float64)
    est = _estimates(ones, parts, batch_size)
    g2 = float(est["g2_raw"][0])
    resolved = bool(est["resolved"][0])
    return {
        "mean_gradient_norm": math.sqrt(g2) if g2 >= 0 else math.nan,
        "trace": float(est["trace"][0]),
        "mean_gradient_sq_norm": g2,
        "gradient_sq_norm_unbiased": float(est["g2_unbiased"][0]),
        "signal_resolved": resolved,
        "gradient_sq_norm_estimator": "unbiased" if resolved else "raw",
        "noise_scale": float(est["noise_scale"][0]),
        "noise_scale_raw": float(est["noise_scale_raw"][0]),
        "snr": float(est["snr"][0]),
        "snr_raw": float(est["snr_raw"][0]),
        "mean_pairwise_cosine": _mean_pairwise_cosine(gram),
    }


def bootstrap_noise(
    grads: Tensor, batch_size: int, *, resamples: int, seed: int, confidence: float
) -> dict[str, Any]:
    """Percentile intervals of the noise scale and SNR over resamples of the K batches."""
    return bootstrap_noise_from_gram(
        gram64(grads, grads), batch_size, resamples=resamples, seed=seed, confidence=confidence
    )


def bootstrap_noise_from_gram(
    gram: Tensor, batch_size: int, *, resamples: int, seed: int, confidence: float
) -> dict[str, Any]:
    """:func:`bootstrap_noise` from the K×K Gram matrix of the per-batch gradients."""
    parts = _centred_gram(gram)
    k = parts[0]
    gen = torch.Generator().manual_seed(seed)
    index = torch.randint(0, k, (resamples, k), generator=gen)
    counts = torch.zeros(resamples, k, dtype=torch.float64)
    counts.scatter_add_(1, index, torch.ones(resamples, k, dtype=torch.float64))
    est = _estimates(counts, parts, batch_size)
    return {
        "resamples": resamples,
        "seed": seed,
        "confidence": confidence,
        "noise_scale": _percentile_interval(est["noise_scale"], confidence),
        "snr": _percentile_interval(est["snr"], confidence),
        "unresolved_fraction": float((~est["resolved"]).double().mean()),
    }


# -- estimators over weighted resamples -----------------------------------------------------------

_Parts = tuple[int, Tensor, Tensor, Tensor]


def _centred_gram(gram: Tensor) -> _Parts:
    """(K, ‖ḡ‖², h = D·ḡ, M = D·Dᵀ) with D the centred gradients, from the raw Gram matrix G.

    With m = G·1/K (m_k = g_kᵀḡ): ‖ḡ‖² = 1ᵀm/K, h = m − ‖ḡ‖² and M = G − m1ᵀ − 1mᵀ + ‖ḡ‖², all
    K-sized and in float64 on the CPU, where the bootstrap's counts are.
    """
    g = gram.detach().to(torch.float64).cpu()
    k = g.shape[0]
    m = g.sum(dim=1) / k
    g2 = m.sum() / k
    return k, g2, m - g2, g - m[:, None] - m[None, :] + g2


def _estimates(counts: Tensor, parts: _Parts, batch_size: int) -> dict[str, Tensor]:
    """Each row of ``counts`` (how often each batch is drawn; rows sum to K) is one sample.

    The sample's mean is ḡ + Dᵀw/K, so with e = Dᵀw/K: ‖ḡ*‖² = ‖ḡ‖² + 2·wᵀh/K + ‖e‖² and
    Σ_k w_k‖g_k − ḡ*‖² = wᵀdiag(M) − K‖e‖², where ‖e‖² = wᵀMw/K².
    """
    k, g2, h, gram = parts
    w = counts / k
    shift = torch.einsum("rk,kl,rl->r", w, gram, w)
    g2_raw = g2 + 2 * (w @ h) + shift
    trace = (counts @ torch.diagonal(gram) - k * shift) / (k - 1)
    g2_unbiased = g2_raw - trace / k
    resolved = g2_unbiased > 0
    g2_used = torch.where(resolved, g2_unbiased, g2_raw)
    return {
        "g2_raw": g2_raw,
        "trace": trace,
        "g2_unbiased": g2_unbiased,
        "resolved": resolved,
        "noise_scale": batch_size * trace / g2_used,
        "noise_scale_raw": batch_size * trace / g2_raw,
        "snr": g2_used / trace,
        "snr_raw": g2_raw / trace,
    }


def _percentile_interval(values: Tensor, confidence: float) -> list[float]:
    """[lower, upper] order statistics (no interpolation, so ±inf replicates stay meaningful)."""
    if bool(values.isnan().any()):
        return [math.nan, math.nan]
    ordered = values.sort().values
    n = ordered.numel()
    lo = max(math.ceil((1 - confidence) / 2 * n) - 1, 0)
    hi = min(math.ceil((1 + confidence) / 2 * n) - 1, n - 1)
    return [float(ordered[lo]), float(ordered[hi])]


def _mean_pairwise_cosine(gram: Tensor) -> float:
    g = gram.detach().to(torch.float64).cpu()
    norms = g.diagonal().clamp_min(0).sqrt()
    cos = g / (norms[:, None] * norms[None, :])
    upper = torch.triu_indices(g.shape[0], g.shape[0], offset=1)
    return float(cos[upper[0], upper[1]].mean())
