"""Curvature and sharpness measures of a trained network's training loss.

Each measure's meaning, cost and parameters: README.md, section "Curvature and sharpness measures".
The catalogue (`MEASURE_NAMES`, `MeasureConfig`) is torch-free; the computing functions import
torch on first use. `LossLandscape` is the Hessian-vector-product core (loss, gradient, H @ v over
flat parameters) that the measures share, public for other packages (network pruning's OBD diagonal).
"""

from __future__ import annotations

from typing import Any

from gencv.measures.config import MEASURE_NAMES, MeasureConfig, validate_measure_names

__all__ = [
    "MEASURE_NAMES",
    "LandscapeFiles",
    "LossLandscape",
    "MeasureConfig",
    "MeasureResult",
    "compute_measures",
    "plot_density",
    "save_landscapes",
    "validate_measure_names",
]

_LAZY = {
    "LandscapeFiles": "gencv.measures._landscape_plot",
    "LossLandscape": "gencv.measures._hvp",
    "MeasureResult": "gencv.measures._api",
    "compute_measures": "gencv.measures._api",
    "plot_density": "gencv.measures._density",
    "save_landscapes": "gencv.measures._landscape_plot",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gencv.measures' has no attribute {name!r}")
