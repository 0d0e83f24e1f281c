"""Across the sequence: what the checkpoint records say together.

Pure functions over the list of per-checkpoint records (plain dicts with flat keys such as
``step``, ``lr``, ``loss``, ``grad_norm``, ``param_norm``, ``curvature_along_gradient``,
``lr_curvature``, ``predicted_change``, ``validation_loss``; any may be None). No torch: the
run-level task calls these on records that may have been through JSON, where NaN became null,
so a missing ``loss`` counts as non-finite.

Records are taken in step order (sorted, stable for equal steps). Every function returns a
JSON-ready dict of plain numbers, with None where a number is undefined (too few checkpoints,
a zero denominator, no finite values); none of them raises on non-finite input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from obstacle._validation import check_int
from obstacle.artifacts.layout import TRAIN_LOG
from obstacle.errors import ParameterError, RunDirectoryError

Record = Mapping[str, Any]

__all__ = [
    "curvature_variation",
    "read_train_log",
    "relative_trend",
    "train_log_uphill",
    "trends",
    "uphill_step_rate",
]

# lr·gᵀHg/gᵀg above this predicts that a plain gradient step goes uphill (Taylor).
_UPHILL_THRESHOLD = 2.0


# -- helpers -----------------------------------------------------------------------------------


def _number(value: object) -> float | None:
    """``value`` as a float if it is a real number (NaN/inf kept), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _finite(value: object) -> float | None:
    """``value`` as a float if it is a finite real number, else None."""
    v = _number(value)
    return v if v is not None and math.isfinite(v) else None


def _ordered(records: Iterable[Record], name: str = "records") -> list[Record]:
    items = list(records)
    for i, r in enumerate(items):
        if (
            not isinstance(r, Mapping)
            or isinstance(r.get("step"), bool)
            or not isinstance(r.get("step"), int)
        ):
            raise ParameterError(
                f"The {name!r} parameter must be a sequence of dicts, each with an int 'step'. "
                f"Item {i} is {r!r}. Pass the per-checkpoint records (or train-log entries)."
            )
    return sorted(items, key=lambda r: int(r["step"]))


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    out = num / den
    return out if math.isfinite(out) else None


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ys against xs; None with fewer than two distinct xs."""
    if len(xs) < 2:
        return None
    mx = math.fsum(xs) / len(xs)
    my = math.fsum(ys) / len(ys)
    sxx = math.fsum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    out = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return out if math.isfinite(out) else None


def relative_trend(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """(relative decrease, relative scatter) of a least-squares line through (step, J) points.

    The decrease is −slope·(last step − first step)/mean J: how much the fitted line falls over
    the span, as a fraction of the loss. The scatter is the residuals' RMS (n − 2 degrees of
    freedom) over mean J. Two points give the plain relative change and no scatter. NaN when a
    loss is missing or non-finite, or fewer than two points are given.
    """
    if len(points) < 2 or not all(
        isinstance(j, int | float) and math.isfinite(j) for _, j in points
    ):
        return math.nan, math.nan
    xs = [float(x) for x, _ in points]
    ys = [float(y) for _, y in points]
    mean_y = math.fsum(ys) / len(ys)
    scale = max(abs(mean_y), 1e-12)
    slope = _slope(xs, ys)
    if len(points) == 2 or slope is None:
        return (ys[0] - ys[-1]) / max(abs(ys[0]), 1e-12), 0.0
    mean_x = math.fsum(xs) / len(xs)
    residuals = [y - (mean_y + slope * (x - mean_x)) for x, y in zip(xs, ys, strict=True)]
    rms = math.sqrt(math.fsum(e * e for e in residuals) / (len(points) - 2))
    return -slope * (xs[-1] - xs[0]) / scale, rms / scale


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


def _tail(n: int, fraction: float) -> int:
    """How many of the last points a window of ``fraction`` of n covers: ceil, at least 2."""
    return min(n, max(2, math.ceil(n * fraction)))


def _series(records: Sequence[Record], key: str) -> list[tuple[int, float]]:
    """(step, value) for the records whose ``key`` is finite."""
    out = []
    for r in records:
        v = _finite(r.get(key))
        if v is not None:
            out.append((int(r["step"]), v))
    return out


def _rises(values: Sequence[float]) -> tuple[int, int]:
    """(consecutive pairs, pairs that rose) of a finite series."""
    pairs = max(len(values) - 1, 0)
    return pairs, sum(1 for a, b in pairwise(values) if b > a)


# -- uphill steps ------------------------------------------------------------------------------


def uphill_step_rate(records: Iterable[Record]) -> dict[str, Any]:
    """How often the probe loss J rose from one checkpoint to the next.

    - ``rate``: ``uphill_pairs / pairs`` over consecutive checkpoints (in step order) whose
      losses are both finite; a pair counts as uphill when J strictly rose. None without pairs.
    - ``skipped_pairs``: consecutive pairs left out because a loss is missing or non-finite.
    - ``consecutive``: for pairs whose steps differ by exactly 1 (the real optimizer step from
      t to t+1), the real change ``actual = J(t+1) − J(t)`` against the record's Taylor
      ``predicted_change`` at t (``predicted`` is None when it was not computed);
      ``sign_agreement`` is the fraction of pairs with both numbers finite whose signs (−, 0, +) agree
      (``compared`` of them), ``actual_uphill``/``predicted_uphill`` count positive changes.
    """
    ordered = _ordered(records)
    pairs = uphill = skipped = 0
    consecutive: list[dict[str, Any]] = []
    compared = agree = actual_up = predicted_up = 0
    for a, b in pairwise(ordered):
        ja, jb = _finite(a.get("loss")), _finite(b.get("loss"))
        if ja is None or jb is None:
            skipped += 1
            continue
        pairs += 1
        uphill += jb > ja
        if int(b["step"]) - int(a["step"]) != 1:
            continue
        actual = jb - ja
        predicted = _finite(a.get("predicted_change"))
        consecutive.append({"step": int(a["step"]), "actual": actual, "predicted": predicted})
        actual_up += actual > 0
        if predicted is not None:
            compared += 1
            agree += _sign(actual) == _sign(predicted)
            predicted_up += predicted > 0
    return {
        "rate": _ratio(uphill, pairs),
        "pairs": pairs,
        "uphill_pairs": uphill,
        "skipped_pairs": skipped,
        "consecutive": {
            "pairs": consecutive,
            "count": len(consecutive),
            "compared": compared,
            "sign_agreement": _ratio(agree, compared),
            "actual_uphill": actual_up,
            "predicted_uphill": predicted_up,
        },
    }


def read_train_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The ``{step, lr, loss}`` entries of ``RUN_DIR/train_log.jsonl``; [] when there is none."""
    path = Path(run_dir) / TRAIN_LOG
    if not path.is_file():
        return []
    entries: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                entry = None
            if not isinstance(entry, dict) or not isinstance(entry.get("step"), int):
                raise RunDirectoryError(
                    f"{path}, line {number}: each line must be a JSON object with an int 'step' "
                    f"and a 'loss'; got {line.strip()[:80]!r}. Write it with obstacle.append_train_log."
                )
            entries.append(entry)
    return entries


def train_log_uphill(entries: Iterable[Record], *, window: int = 10) -> dict[str, Any]:
    """How often the logged minibatch loss rose, raw and smoothed.

    ``entries`` are ``{step, loss}`` dicts (``train_log.jsonl``, or the records' ``train_loss``
    renamed). Only finite losses are used, in step order.

    - ``rate``: fraction of consecutive logged losses that rose (``uphill_pairs / pairs``).
      Minibatch noise alone makes this near 0.5 even on a run that is making progress.
    - ``smoothed``: the losses are cut into consecutive blocks of ``window`` entries, aligned to
      the end (a leftover partial block at the start is dropped, so the most recent data is in
      full blocks); ``rate`` is the fraction of consecutive block means that rose. With noise
      averaged out, a high smoothed rate means the run really goes uphill. None with fewer than
      two blocks.
    """
    window = check_int("window", window, low=1)
    ordered = _ordered(entries, "entries")
    values = [v for r in ordered if (v := _finite(r.get("loss"))) is not None]
    pairs, uphill = _rises(values)
    blocks = len(values) // window
    start = len(values) - blocks * window
    means = [
        math.fsum(values[start + i * window : start + (i + 1) * window]) / window
        for i in range(blocks)
    ]
    block_pairs, block_up = _rises(means)
    return {
        "entries": len(ordered),
        "finite": len(values),
        "pairs": pairs,
        "uphill_pairs": uphill,
        "rate": _ratio(uphill, pairs),
        "smoothed": {
            "window": window,
            "blocks": blocks,
            "pairs": block_pairs,
            "uphill_pairs": block_up,
            "rate": _ratio(block_up, block_pairs),
        },
    }


# -- curvature along the gradient ----------------------------------------------------------------


def _variation(series: Sequence[tuple[int, float]]) -> dict[str, Any]:
    values = [v for _, v in series]
    n = len(values)
    mean = math.fsum(values) / n if n else None
    # Population standard deviation (ddof = 0): the spread of the values the run went through.
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n) if mean is not None else None
    signs = [v > 0 for v in values if v != 0]
    lo = min(series, key=lambda sv: sv[1]) if series else None
    hi = max(series, key=lambda sv: sv[1]) if series else None
    return {
        "count": n,
        "mean": mean,
        "std": std,
        "cv": _ratio(std, abs(mean)) if mean is not None and n >= 2 else None,
        "sign_changes": sum(1 for a, b in pairwise(signs) if a != b),
        "min": lo[1] if lo else None,
        "min_step": lo[0] if lo else None,
        "max": hi[1] if hi else None,
        "max_step": hi[0] if hi else None,
    }


def curvature_variation(records: Iterable[Record]) -> dict[str, Any]:
    """How much the curvature along the gradient, gᵀHg/gᵀg, changes over the run.

    ``curvature`` summarises ``curvature_along_gradient`` and ``lr_curvature`` summarises
    lr·gᵀHg/gᵀg (the record's ``lr_curvature``, else ``lr × curvature_along_gradient``), each
    over its finite values: ``count``, ``mean``, ``std`` (population, ddof 0), ``cv`` =
    std/|mean| (None for fewer than two values or a zero mean), ``sign_changes`` (consecutive
    nonzero values of opposite sign, in step order), ``min``/``max`` with their steps.
    ``lr_curvature`` also has ``above_threshold``: how many checkpoints had lr·gᵀHg/gᵀg > 2,
    where a plain gradient step is predicted to go uphill, and ``threshold`` (2).
    """
    ordered = _ordered(records)
    curvature = _series(ordered, "curvature_along_gradient")
    lr_curvature: list[tuple[int, float]] = []
    for r in ordered:
        value = _finite(r.get("lr_curvature"))
        if value is None:
            lr, c = _finite(r.get("lr")), _finite(r.get("curvature_along_gradient"))
            value = _finite(lr * c) if lr is not None and c is not None else None
        if value is not None:
            lr_curvature.append((int(r["step"]), value))
    scaled = _variation(lr_curvature)
    scaled["threshold"] = _UPHILL_THRESHOLD
    scaled["above_threshold"] = sum(1 for _, v in lr_curvature if v > _UPHILL_THRESHOLD)
    return {"curvature": _variation(curvature), "lr_curvature": scaled}


# -- trends ------------------------------------------------------------------------------------


def _gradient_trend(ordered: Sequence[Record]) -> dict[str, Any]:
    series = _series(ordered, "grad_norm")
    if not series:
        return {"peak": None, "peak_step": None, "last": None, "last_step": None, "decay": None}
    peak = max(series, key=lambda sv: sv[1])
    last = series[-1]
    return {
        "peak": peak[1],
        "peak_step": peak[0],
        "last": last[1],
        "last_step": last[0],
        "decay": _ratio(last[1], peak[1]),
    }


def _loss_trend(ordered: Sequence[Record]) -> dict[str, Any]:
    series = _series(ordered, "loss")
    out: dict[str, Any] = {
        "first": series[0][1] if series else None,
        "last": series[-1][1] if series else None,
        "min": min(v for _, v in series) if series else None,
        "window_last_third": None,
        "relative_decrease_last_third": None,
        "slope_last_third": None,
        "relative_decrease_last_two": None,
        "slope_last_two": None,
    }
    if len(series) < 2:
        return out
    third = series[-_tail(len(series), 1 / 3) :]
    two = series[-2:]
    out["window_last_third"] = len(third)
    out["relative_decrease_last_third"] = _ratio(third[0][1] - third[-1][1], abs(third[0][1]))
    out["slope_last_third"] = _slope([s for s, _ in third], [v for _, v in third])
    out["relative_decrease_last_two"] = _ratio(two[0][1] - two[1][1], abs(two[0][1]))
    out["slope_last_two"] = _ratio(two[1][1] - two[0][1], two[1][0] - two[0][0])
    return out


def _parameter_trend(ordered: Sequence[Record]) -> dict[str, Any]:
    series = [(s, v) for s, v in _series(ordered, "param_norm") if v > 0]
    half = series[-_tail(len(series), 1 / 2) :] if len(series) >= 2 else []
    log_slope = _slope([s for s, _ in half], [math.log(v) for _, v in half]) if half else None
    return {
        "first": series[0][1] if series else None,
        "last": series[-1][1] if series else None,
        "ratio": _ratio(series[-1][1], series[0][1]) if series else None,
        "log_slope_second_half": log_slope,
        "window_second_half": len(half) or None,
    }


def _validation_trend(ordered: Sequence[Record]) -> dict[str, Any]:
    validation = _series(ordered, "validation_loss")
    out: dict[str, Any] = {
        "available": bool(validation),
        "min": None,
        "min_step": None,
        "last": None,
        "rise_from_min": None,
        "slope_last_half": None,
        "train_slope_last_half": None,
        "rising_while_train_falls": None,
    }
    if not validation:
        return out
    lowest = min(validation, key=lambda sv: sv[1])
    out.update(min=lowest[1], min_step=lowest[0], last=validation[-1][1])
    out["rise_from_min"] = _ratio(validation[-1][1] - lowest[1], abs(lowest[1]))
    # Both slopes over the same checkpoints: the last half of those with both losses finite.
    both = [
        (int(r["step"]), t, v)
        for r in ordered
        if (t := _finite(r.get("loss"))) is not None
        and (v := _finite(r.get("validation_loss"))) is not None
    ]
    if len(both) >= 2:
        half = both[-_tail(len(both), 1 / 2) :]
        steps = [s for s, _, _ in half]
        val_slope = _slope(steps, [v for _, _, v in half])
        train_slope = _slope(steps, [t for _, t, _ in half])
        out["slope_last_half"] = val_slope
        out["train_slope_last_half"] = train_slope
        if val_slope is not None and train_slope is not None:
            out["rising_while_train_falls"] = val_slope > 0 and train_slope < 0
    return out


def _non_finite(ordered: Sequence[Record]) -> dict[str, Any]:
    bad_loss = [int(r["step"]) for r in ordered if _finite(r.get("loss")) is None]
    bad_params = [
        int(r["step"])
        for r in ordered
        if (v := _number(r.get("param_norm"))) is not None and not math.isfinite(v)
    ]
    return {
        "count": len(bad_loss),
        "first_step": bad_loss[0] if bad_loss else None,
        "parameter_norm_count": len(bad_params),
        "parameter_norm_first_step": bad_params[0] if bad_params else None,
    }


def trends(records: Iterable[Record]) -> dict[str, Any]:
    """Where the run is heading: the slow evidence of the obstacle table.

    - ``gradient_norm``: ``peak`` (and ``peak_step``) and ``last`` finite ‖g‖; ``decay`` =
      last/peak (near 0: the run reached a critical point; near 1: it did not).
    - ``loss`` (probe loss J, finite values): ``first``, ``last``, ``min``;
      ``relative_decrease_last_third`` = (J_start − J_end)/|J_start| over the last third of the
      checkpoints (``window_last_third`` of them, at least 2) and ``slope_last_third`` (least
      squares, per step); ``relative_decrease_last_two`` and ``slope_last_two`` (ΔJ/Δstep) over
      the last two checkpoints. Positive decrease = progress; a tiny one = a plateau.
    - ``parameter_norm``: ``first``, ``last``, ``ratio`` = last/first, and
      ``log_slope_second_half``: the least-squares slope of ln‖θ‖ against step over the last
      half of the checkpoints (growth rate per step: ‖θ‖ ∝ exp(slope·step); steady positive
      growth with creeping loss suggests there is no critical point to reach).
    - ``validation``: ``min``/``min_step``/``last`` of the validation loss; ``rise_from_min`` =
      (last − min)/|min|; over the last half of the checkpoints with both losses finite,
      ``slope_last_half`` (validation) and ``train_slope_last_half`` (probe J), and
      ``rising_while_train_falls`` (validation slope > 0 and train slope < 0: overfitting).
    - ``non_finite``: ``count`` of checkpoints whose loss is missing or non-finite and the
      ``first_step``; the same for a non-finite ``param_norm`` (divergence).
    - ``explosion_ratio``: max finite J / the first checkpoint's J; None when that first loss
      is not finite and positive. Far above 1: the loss blew up at some point.
    """
    ordered = _ordered(records)
    losses = [v for _, v in _series(ordered, "loss")]
    first = _finite(ordered[0].get("loss")) if ordered else None
    explosion = _ratio(max(losses), first) if losses and first is not None and first > 0 else None
    return {
        "checkpoints": len(ordered),
        "first_step": int(ordered[0]["step"]) if ordered else None,
        "last_step": int(ordered[-1]["step"]) if ordered else None,
        "gradient_norm": _gradient_trend(ordered),
        "loss": _loss_trend(ordered),
        "parameter_norm": _parameter_trend(ordered),
        "validation": _validation_trend(ordered),
        "non_finite": _non_finite(ordered),
        "explosion_ratio": explosion,
    }
