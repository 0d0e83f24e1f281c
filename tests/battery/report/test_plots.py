"""Each plot on recorded report JSON, including the degenerate runs (nulls, one checkpoint, none)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from obstacle.battery.report import (
    plot_interpolation,
    plot_negative_curvature,
    plot_spectrum,
    plot_subspace,
    plot_time_series,
    save_png,
    select_saddle_checkpoint,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

Report = dict[str, Any]


def labels(ax: Axes) -> list[str]:
    return ax.get_legend_handles_labels()[1]


def line(ax: Axes, label: str) -> Line2D:
    found = [ln for ln in ax.get_lines() if ln.get_label() == label]
    assert len(found) == 1, f"{label!r} not among {[ln.get_label() for ln in ax.get_lines()]}"
    return found[0]


def texts(ax: Axes) -> list[str]:
    return [t.get_text() for t in ax.texts]


def ydata(ln: Line2D) -> np.ndarray[Any, Any]:
    return np.asarray(ln.get_ydata(), dtype=float)


def xdata(ln: Line2D) -> np.ndarray[Any, Any]:
    return np.asarray(ln.get_xdata(), dtype=float)


# ----------------------------------------------------------------------------- interpolation


def test_interpolation_draws_train_validation_endpoints_and_shading(saddle: Report) -> None:
    fig = plot_interpolation(saddle)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    record = saddle["run"]["interpolation"]
    train = line(ax, "training loss (probe)")
    np.testing.assert_allclose(xdata(train), record["alphas"])
    np.testing.assert_allclose(ydata(train), record["train"])
    np.testing.assert_allclose(ydata(line(ax, "validation loss")), record["validation"])
    assert "between the checkpoints" in labels(ax)
    assert ax.get_xlim() == (-0.5, 1.5)
    assert ax.get_ylabel() == "loss (probe mean)"
    assert "α" in ax.get_xlabel() or "alpha" in ax.get_xlabel()
    endpoints = " ".join(texts(ax))
    assert r"\theta_0" in endpoints and r"\theta_T" in endpoints
    assert ax.get_yscale() == "linear"  # 0.01 … 1: under two decades


def test_barrier_is_annotated_only_when_not_monotone(
    saddle: Report, saddle_with_barrier: Report
) -> None:
    monotone = plot_interpolation(saddle)
    assert monotone is not None
    assert [t for t in monotone.axes[0].texts if t.get_gid() == "barrier"] == []
    assert "chord θ0 → θT" not in labels(monotone.axes[0])

    bumpy = plot_interpolation(saddle_with_barrier)
    assert bumpy is not None
    barrier = [t for t in bumpy.axes[0].texts if t.get_gid() == "barrier"]
    assert len(barrier) == 1
    assert "barrier 0.49 above the chord" in barrier[0].get_text()
    assert "0.55" in barrier[0].get_text()
    chord = line(bumpy.axes[0], "chord θ0 → θT")
    assert xdata(chord).tolist() == [0.0, 1.0]


def test_barrier_without_recorded_position_marks_the_peak_inside_the_segment(
    saddle_with_barrier: Report,
) -> None:
    saddle_with_barrier["run"]["interpolation"].update(barrier=0.0, barrier_alpha=None, rise=0.3)
    fig = plot_interpolation(saddle_with_barrier)
    assert fig is not None
    (barrier,) = [t for t in fig.axes[0].texts if t.get_gid() == "barrier"]
    assert barrier.get_text().startswith("not monotone: rises by 0.3")
    assert "0.55" in barrier.get_text()  # the top of the recorded bump


def test_interpolation_of_a_diverging_run_is_log_scaled_with_the_null_stretch_shaded(
    divergence: Report,
) -> None:
    fig = plot_interpolation(divergence)
    assert fig is not None
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"  # 2.3 … 2e5
    assert "loss non-finite" in labels(ax)
    assert "validation loss" not in labels(ax)
    assert any("non-finite" in t for t in texts(ax) if r"\theta_T" in t)
    assert np.isnan(ydata(line(ax, "training loss (probe)"))[-1])  # a gap, not a clipped spike


def test_interpolation_without_validation(no_validation: Report) -> None:
    fig = plot_interpolation(no_validation)
    assert fig is not None
    assert "validation loss" not in labels(fig.axes[0])
    assert "training loss (probe)" in labels(fig.axes[0])


@pytest.mark.parametrize("fixture", ["single_checkpoint", "all_null"])
def test_interpolation_is_none_without_its_record(fixture: str, request: Any) -> None:
    assert plot_interpolation(request.getfixturevalue(fixture)) is None


# ----------------------------------------------------------------------------- subspace


def test_subspace_draws_contours_path_and_step_labels(saddle: Report) -> None:
    fig = plot_subspace(saddle)
    assert fig is not None
    ax, colorbar = fig.axes
    record = saddle["run"]["subspace"]
    path = line(ax, "training path")
    np.testing.assert_allclose(xdata(path), record["path"]["x"])
    np.testing.assert_allclose(ydata(path), record["path"]["y"])
    markers = line(ax, "checkpoints")
    assert len(xdata(markers)) == len(record["path"]["steps"])
    step_labels = texts(ax)
    assert "0" in step_labels and "1400" in step_labels  # first and last always labelled
    assert set(step_labels) <= {str(s) for s in record["path"]["steps"]}
    assert ax.collections, "no contours drawn"
    # 0.01 … 1.5 spans two decades: log-spaced levels, said on the colour bar
    assert "log scale" in colorbar.get_ylabel()


def test_subspace_uses_linear_levels_when_the_loss_spans_less_than_decades(
    saddle: Report,
) -> None:
    record = saddle["run"]["subspace"]
    record["loss"] = [[v + 10.0 for v in row] for row in record["loss"]]
    fig = plot_subspace(saddle)
    assert fig is not None
    assert "log" not in fig.axes[1].get_ylabel()


def test_subspace_tolerates_null_cells(saddle: Report) -> None:
    rows = saddle["run"]["subspace"]["loss"]
    rows[0] = [None] * len(rows[0])
    rows[5][3] = None
    assert plot_subspace(saddle) is not None


@pytest.mark.parametrize("fixture", ["single_checkpoint", "divergence", "all_null"])
def test_subspace_is_none_without_its_record(fixture: str, request: Any) -> None:
    assert plot_subspace(request.getfixturevalue(fixture)) is None


def test_subspace_with_mismatched_grid_is_none(saddle: Report) -> None:
    saddle["run"]["subspace"]["loss"] = saddle["run"]["subspace"]["loss"][:-1]
    assert plot_subspace(saddle) is None


# ----------------------------------------------------------------------------- curvature slice


def with_lanczos(report: Report, changes: dict[int, tuple[float, float, bool]]) -> Report:
    """Set (λmin, λmax, escape descends) at checkpoint indices; remove the slice elsewhere."""
    out = copy.deepcopy(report)
    for i, c in enumerate(out["checkpoints"]):
        if i in changes:
            c["lambda_min"], c["lambda_max"], descends = changes[i]
            c["details"]["lanczos"]["escape"]["descends"] = descends
        else:
            c["details"]["lanczos"] = None
    return out


def test_saddle_checkpoint_is_the_strongest_negative_curvature_relative_to_lambda_max(
    saddle: Report,
) -> None:
    # A: most negative in absolute terms, but tiny against its λmax; C: does not descend
    report = with_lanczos(
        saddle, {2: (-0.5, 100.0, True), 5: (-0.05, 0.1, True), 8: (-1.0, 1.0, False)}
    )
    chosen = select_saddle_checkpoint(report)
    assert chosen is not None and chosen["step"] == report["checkpoints"][5]["step"]


def test_saddle_checkpoint_falls_back_to_the_most_negative_lambda_min(saddle: Report) -> None:
    report = with_lanczos(
        saddle, {2: (-0.5, 100.0, False), 8: (-1.0, 1.0, False), 9: (0.2, 1.0, False)}
    )
    chosen = select_saddle_checkpoint(report)
    assert chosen is not None and chosen["step"] == report["checkpoints"][8]["step"]


def test_saddle_checkpoint_ignores_curvature_at_float_noise_level(saddle: Report) -> None:
    # B's ratio -λmin/λmax is 2.6e8, but both are float noise next to A's λmax = 1
    report = with_lanczos(saddle, {2: (-0.3, 1.0, True), 6: (-5.29e-15, 2.35e-23, True)})
    chosen = select_saddle_checkpoint(report)
    assert chosen is not None and chosen["step"] == report["checkpoints"][2]["step"]


def test_saddle_checkpoint_on_the_recorded_run(saddle: Report) -> None:
    expected = max(
        (c for c in saddle["checkpoints"] if c["details"]["lanczos"]["escape"]["descends"]),
        key=lambda c: -c["lambda_min"] / abs(c["lambda_max"]),
    )
    chosen = select_saddle_checkpoint(saddle)
    assert chosen is not None and chosen["step"] == expected["step"]


def test_negative_curvature_slice_draws_recording_quadratic_and_escape(saddle: Report) -> None:
    fig = plot_negative_curvature(saddle)
    assert fig is not None
    ax = fig.axes[0]
    chosen = select_saddle_checkpoint(saddle)
    assert chosen is not None
    lanczos = chosen["details"]["lanczos"]
    recorded = line(ax, r"loss along $v_{\min}$ (recorded)")
    np.testing.assert_allclose(ydata(recorded), lanczos["slice"]["losses"])

    centre = lanczos["slice"]["losses"][10]  # α = 0
    (quadratic,) = [ln for ln in ax.get_lines() if "quadratic" in str(ln.get_label())]
    alphas = xdata(quadratic)
    np.testing.assert_allclose(ydata(quadratic), centre + 0.5 * chosen["lambda_min"] * alphas**2)

    escape = line(ax, "escape certificate (descends)")
    esc = lanczos["escape"]
    expected = sorted(
        [(a, centre + d) for a, d in zip(esc["alphas"], esc["delta_plus"], strict=True)]
        + [(-a, centre + d) for a, d in zip(esc["alphas"], esc["delta_minus"], strict=True)]
    )
    got = sorted(zip(xdata(escape), ydata(escape), strict=True))
    np.testing.assert_allclose(got, expected)
    assert all(y < centre for _, y in got)  # the certificate: both directions descend
    assert f"step {chosen['step']}" in fig.get_suptitle()
    assert ax.get_ylabel() == "loss (probe mean)"


def test_slice_with_positive_curvature_says_so(saddle: Report) -> None:
    report = with_lanczos(saddle, {4: (0.3, 1.0, False)})
    fig = plot_negative_curvature(report)
    assert fig is not None
    assert "no negative curvature" in fig.axes[0].get_title(loc="left")
    assert "escape certificate (does not descend)" in labels(fig.axes[0])


@pytest.mark.parametrize("fixture", ["divergence", "all_null"])
def test_slice_is_none_without_lanczos(fixture: str, request: Any) -> None:
    report = request.getfixturevalue(fixture)
    assert select_saddle_checkpoint(report) is None
    assert plot_negative_curvature(report) is None


def test_slice_on_a_single_checkpoint(single_checkpoint: Report) -> None:
    fig = plot_negative_curvature(single_checkpoint)
    assert fig is not None
    assert f"step {single_checkpoint['checkpoints'][0]['step']}" in fig.get_suptitle()


# ----------------------------------------------------------------------------- time series

YLABELS = [
    "loss (probe mean)",
    r"gradient norm $\|g\|$",
    "lr × curvature",
    "eigenvalue (symlog)",
    "signal / noise",
    "fraction uphill",
]


def test_time_series_panels_share_the_step_axis_with_readable_scales(saddle: Report) -> None:
    fig = plot_time_series(saddle)
    assert fig is not None
    axes = fig.axes
    assert [ax.get_ylabel() for ax in axes] == YLABELS
    assert axes[-1].get_xlabel() == "step"
    assert all(ax.get_shared_x_axes().joined(axes[0], ax) for ax in axes)
    loss, grad, step_curv, eig, snr, uphill = axes
    assert {"probe loss", "validation loss", "minibatch loss (logged)"} <= set(labels(loss))
    assert grad.get_yscale() == "log"
    assert eig.get_yscale() == "symlog"
    assert snr.get_yscale() == "log"
    assert 2.0 in [ydata(ln)[0] for ln in step_curv.get_lines() if "uphill" in str(ln.get_label())]
    steps = [c["step"] for c in saddle["checkpoints"]]
    np.testing.assert_allclose(xdata(line(loss, "probe loss")), steps)
    np.testing.assert_allclose(
        ydata(line(eig, r"Hessian $\lambda_{\min}$")),
        [c["lambda_min"] for c in saddle["checkpoints"]],
    )
    assert "full-data step downhill" in labels(uphill)
    assert "stability threshold" not in labels(step_curv)  # constant 2: the line at 2 says it


def test_time_series_keeps_a_barely_changing_gradient_norm_linear_and_plain(
    saddle: Report,
) -> None:
    saddle["run"]["train_log"] = None
    for i, c in enumerate(saddle["checkpoints"]):
        c["grad_norm"] = 7.7896e-7 + i * 1e-11  # a run stuck in place
        c["loss"] = c["train_loss"] = c["validation_loss"] = 4.5763801266 + i * 1e-13
    fig = plot_time_series(saddle)
    assert fig is not None
    for ax in fig.axes[:2]:
        assert ax.get_yscale() == "linear"
        assert ax.yaxis.get_major_formatter().get_useOffset() is False  # no "1e-12 + 4.57…"


def test_extreme_finite_magnitudes_render(divergence: Report, tmp_path: Path) -> None:
    firsts = divergence["checkpoints"][:3]
    for c, big, tiny in zip(firsts, (1, 1e150, 1e300), (1, 1e-200, 1e-307), strict=True):
        c.update(
            loss=big, grad_norm=big, lr_curvature=tiny, lambda_max=tiny, lambda_min=-tiny, snr=big
        )
    fig = plot_time_series(divergence)
    assert fig is not None
    assert fig.axes[0].get_yscale() == "log"
    assert save_png(fig, tmp_path / "extreme.png").stat().st_size > 10_000


def test_time_series_draws_a_varying_stability_threshold(saddle: Report) -> None:
    for c in saddle["checkpoints"]:
        c["stability_threshold"] = 3.8  # e.g. heavy-ball momentum
    fig = plot_time_series(saddle)
    assert fig is not None
    assert any("stability threshold" in label for label in labels(fig.axes[2]))


def test_time_series_of_an_adam_run_draws_adams_threshold_not_sgds(saddle: Report) -> None:
    for c in saddle["checkpoints"]:
        c.update(
            optimizer="adam",
            stability_threshold=None,
            preconditioned_lr_lambda_max=30.0,
            preconditioned_threshold=38.0,
        )
    fig = plot_time_series(saddle)
    assert fig is not None
    panel = fig.axes[2]
    thresholds = {
        str(ln.get_label()): ydata(ln)[0]
        for ln in panel.get_lines()
        if "threshold" in str(ln.get_label())
    }
    assert thresholds == {"Adam's stability threshold 38: above it a step goes uphill": 38.0}
    assert any("P^{-1}H" in label for label in labels(panel))


def test_time_series_of_a_diverging_run_has_gaps_and_shading(divergence: Report) -> None:
    fig = plot_time_series(divergence)
    assert fig is not None
    loss = fig.axes[0]
    assert loss.get_yscale() == "log"  # 2.3 … 1.9e6
    probe = ydata(line(loss, "probe loss"))
    assert np.isfinite(probe[:5]).all() and np.isnan(probe[5:]).all()
    assert "non-finite checkpoint" in labels(loss)
    assert "full-data step uphill" in labels(fig.axes[5])


def test_time_series_without_validation(no_validation: Report) -> None:
    fig = plot_time_series(no_validation)
    assert fig is not None
    assert "validation loss" not in labels(fig.axes[0])


def test_time_series_of_a_single_checkpoint(single_checkpoint: Report) -> None:
    fig = plot_time_series(single_checkpoint)
    assert fig is not None
    step = single_checkpoint["checkpoints"][0]["step"]
    assert list(fig.axes[-1].get_xticks()) == [step]
    assert xdata(line(fig.axes[0], "probe loss")).tolist() == [step]


def test_time_series_with_every_value_null_says_so(all_null: Report) -> None:
    fig = plot_time_series(all_null)
    assert fig is not None
    messages = [t for ax in fig.axes for t in texts(ax)]
    assert "no loss recorded" in messages
    assert "Hessian eigenvalues not recorded" in messages
    assert all(not ax.get_lines() for ax in fig.axes)
    assert fig.axes[-1].get_xlim()[0] < 0 < 10 < fig.axes[-1].get_xlim()[1]


def test_time_series_is_none_without_checkpoints() -> None:
    assert plot_time_series({"schema": "obstacle.report/1", "checkpoints": []}) is None
    assert plot_time_series({}) is None


# ----------------------------------------------------------------------------- spectrum


def test_spectrum_draws_recorded_densities_on_a_log_axis(saddle: Report) -> None:
    fig = plot_spectrum(saddle)
    assert fig is not None
    ax = fig.axes[0]
    recorded = [c for c in saddle["checkpoints"] if c["details"]["spectrum"]]
    curves = [ln for ln in ax.get_lines() if str(ln.get_label()).startswith("step ")]
    assert len(curves) == len(recorded) == 3
    assert curves[0].get_label().startswith(f"step {recorded[0]['step']}")
    np.testing.assert_allclose(
        xdata(curves[0]), recorded[0]["details"]["spectrum"]["density"]["grid"]
    )
    assert ax.get_yscale() == "log"
    assert "tr H" in curves[0].get_label()


@pytest.mark.parametrize("fixture", ["divergence", "single_checkpoint", "all_null"])
def test_spectrum_is_none_when_not_computed(fixture: str, request: Any) -> None:
    assert plot_spectrum(request.getfixturevalue(fixture)) is None


# ----------------------------------------------------------------------------- PNG


def test_save_png_writes_a_png(saddle: Report, tmp_path: Path) -> None:
    fig = plot_interpolation(saddle)
    assert fig is not None
    path = save_png(fig, tmp_path / "deeper" / "interpolation.png")
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000
    # width × height from the IHDR chunk: the figure size at 130 dpi
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert abs(width - 7.6 * 130) <= 1 and abs(height - 4.3 * 130) <= 1


@pytest.mark.parametrize(
    "draw",
    [plot_interpolation, plot_subspace, plot_negative_curvature, plot_time_series, plot_spectrum],
)
def test_every_plot_renders_to_png(draw: Any, saddle_with_barrier: Report, tmp_path: Path) -> None:
    fig = draw(saddle_with_barrier)
    assert fig is not None
    data = save_png(fig, tmp_path / "plot.png").read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
