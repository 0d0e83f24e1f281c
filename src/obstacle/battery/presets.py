"""Named cost presets (after cockpit's "economy / business / full").

A preset fixes how much the battery spends per checkpoint: how many probe batches it uses, how far
Lanczos may go, how fine the landscape grids are, and whether the spectrum is estimated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from obstacle._validation import check_choice


@dataclass(frozen=True)
class Preset:
    name: str
    max_batches: int  # probe batches used (K); noise statistics need K >= 2
    lanczos_max_iter: int  # HVPs Lanczos may spend per checkpoint, both ends together
    lanczos_tol: float  # residual bound relative to |λ|; 1e-3 is honest in float32
    slice_points: int  # points of the negative-curvature slice
    interpolation_points: int  # α grid of the θ0 → θT interpolation
    checkpoint_interpolation_points: int  # α grid from each checkpoint to θT (0 = skip)
    subspace_grid: int  # grid × grid lattice of the 2-D plot (0 = skip)
    bootstrap: int  # resamples of the noise confidence interval
    spectrum: bool  # Hutch++ trace and SLQ density

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def run_level_loss_evaluations(self, num_checkpoints: int) -> int:
        """At most how many probe loss evaluations the run-level tests spend on ``num_checkpoints``
        analysed checkpoints: the θ0 → θT line (and its validation curve), each checkpoint's line to
        θT sharing J(θT), and the 2-D lattice. Each evaluation passes over every probe batch."""
        if num_checkpoints < 2:
            return 0
        line = 2 * (self.interpolation_points + 2)  # α = 0 and 1 may join the grid; validation
        lines = (
            1 + (num_checkpoints - 1) * (self.checkpoint_interpolation_points - 1)
            if self.checkpoint_interpolation_points
            else 0
        )
        return line + lines + self.subspace_grid**2


PRESETS = {
    "quick": Preset("quick", 4, 40, 1e-2, 11, 21, 0, 0, 200, False),
    "standard": Preset("standard", 8, 200, 1e-3, 21, 41, 11, 15, 500, False),
    "full": Preset("full", 64, 300, 1e-3, 41, 61, 21, 25, 2000, True),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (``quick``, ``standard`` or ``full``)."""
    return PRESETS[check_choice("preset", name, list(PRESETS))]
