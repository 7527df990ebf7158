"""Curvature and sharpness measures of a trained network's training loss.

Each measure's meaning, cost and parameters: README.md, section "Curvature and sharpness measures".
"""

from __future__ import annotations

from gencv.measures._api import (
    MEASURE_NAMES,
    MeasureConfig,
    MeasureResult,
    compute_measures,
    validate_measure_names,
)
from gencv.measures._density import plot_density

__all__ = [
    "MEASURE_NAMES",
    "MeasureConfig",
    "MeasureResult",
    "compute_measures",
    "plot_density",
    "validate_measure_names",
]
