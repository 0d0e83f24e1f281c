"""Small real training runs, each with known optimization obstacles (the verdict's scenario suite).

Every builder ``build_<label>_<arch>(run_dir, seed)`` trains a model from scratch (data,
initialization and minibatch order all follow ``seed``; float64 on one CPU thread unless it
says otherwise; a few seconds at most), writes the probe (K minibatches of its training data, a
validation batch where it matters), its checkpoints (with the optimizer's state when it has one,
the run's batch size, and a consecutive pair t, t+1 at the end) and ``train_log.jsonl``, then
computes with plain torch — never the battery — the exact facts that make its label right, and
returns them in a :class:`ScenarioInfo` (with the episodes the verdict must find, where the run
has a timeline worth reading). ``SCENARIOS`` maps ``"<label>/<arch>"`` to its builder;
``test_builders_exact.py`` asserts the facts for every (name, seed) below.

The split (so that thresholds cannot be fitted to the runs they are judged on):

- ``CALIBRATION``: seed 0 of every architecture in ``CALIBRATION_NAMES``. The only runs the
  verdict's thresholds may be tuned on; ``test_verdicts.py`` runs them in CI.
- ``HELD_OUT``: seeds 1 and 2 of those same architectures, and seeds 0, 1 and 2 of the
  architectures in ``HELD_OUT_NAMES``, which appear nowhere in the calibration set (one per
  label). Run by ``bench/verdict_accuracy.py``, never tuned on.

Modules: ``registry`` (ScenarioInfo, Episode, SCENARIOS), ``reference`` (the exact float64
loss, Hessian and optimizer step), ``training`` (seeds, data, the training loop), and one
module of builders per label, plus ``episodes`` for runs with more than one phase.
"""

from __future__ import annotations

from obstacle.labels import LABELS

from . import (
    divergence,
    episodes,
    gradient_noise,
    healthy,
    local_minimum,
    no_critical_point,
    overfitting,
    poor_conditioning,
    saddle_point,
)
from .registry import SCENARIOS, Builder, Episode, ScenarioInfo

__all__ = [
    "CALIBRATION",
    "CALIBRATION_NAMES",
    "HELD_OUT",
    "HELD_OUT_NAMES",
    "LABELS",
    "SCENARIOS",
    "Builder",
    "Episode",
    "ScenarioInfo",
]

# The builder modules register themselves on import.
_MODULES = (
    healthy,
    local_minimum,
    saddle_point,
    poor_conditioning,
    gradient_noise,
    no_critical_point,
    divergence,
    overfitting,
    episodes,
)

CALIBRATION_NAMES: tuple[str, ...] = (
    "healthy/mlp_digits",
    "healthy/cnn_digits",
    "healthy/linear_regression",
    "healthy/gru",
    "local_minimum/double_well",
    "local_minimum/sine_unit",
    "saddle_point/deep_linear",
    "saddle_point/tanh_mlp",
    "saddle_point/tanh_mlp_late_escape",
    "saddle_point/linear_net_then_converges",
    "saddle_point/tanh_mlp_then_noise_floor",
    "poor_conditioning/relu_mlp",
    "poor_conditioning/relu_mlp_momentum",
    "poor_conditioning/relu_mlp_adam",
    "gradient_noise/linear_regression",
    "gradient_noise/tanh_mlp",
    "gradient_noise/tanh_mlp_adam",
    "gradient_noise/tanh_mlp_batch2",
    "gradient_noise/lstm",
    "no_critical_point/logistic_regression",
    "no_critical_point/relu_mlp",
    "divergence/tanh_mlp",
    "divergence/linear_regression",
    "overfitting/mlp_digits",
    "overfitting/tanh_mlp_regression",
)
HELD_OUT_NAMES: tuple[str, ...] = (
    "healthy/relu_mlp_adamw",
    "saddle_point/linear_factorization",
    "gradient_noise/relu_mlp",
    "no_critical_point/tanh_mlp",
    "divergence/random_features",
    "overfitting/cnn_digits",
)

CALIBRATION: list[tuple[str, int]] = [(name, 0) for name in CALIBRATION_NAMES]
HELD_OUT: list[tuple[str, int]] = [
    (name, seed) for name in CALIBRATION_NAMES for seed in (1, 2)
] + [(name, seed) for name in HELD_OUT_NAMES for seed in (0, 1, 2)]

assert set(CALIBRATION_NAMES) | set(HELD_OUT_NAMES) == set(SCENARIOS), (
    "every scenario is in the split"
)
assert not set(CALIBRATION_NAMES) & set(HELD_OUT_NAMES), "no architecture in both sets"
