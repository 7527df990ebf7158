"""gencv: cross-validation and generalization experiments for PyTorch networks.

The public names below are imported on first use (PEP 562), so `import gencv` and the CLI's light
commands (`gencv --help`, `gencv datasets`, `gencv validate --no-data`) do not import torch,
MLflow or Optuna.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "CVResult": "gencv.cv",
    "FoldResult": "gencv.cv",
    "cross_validate": "gencv.cv",
    "derive_seed": "gencv.seeds",
    "Dataset": "gencv.data",
    "load_dataset": "gencv.data",
    "DataError": "gencv.errors",
    "DivergenceError": "gencv.errors",
    "GencvError": "gencv.errors",
    "SpecError": "gencv.errors",
    "SplitError": "gencv.errors",
    "TrackingError": "gencv.errors",
    "ENGINES": "gencv.engines",
    "GencvEstimator": "gencv.engines",
    "NetClassifier": "gencv.engines",
    "NetRegressor": "gencv.engines",
    "SKLEARN_EXPECTED_FAILED_CHECKS": "gencv.engines",
    "get_engine": "gencv.engines",
    "RunOutcome": "gencv.runner",
    "prepare": "gencv.runner",
    "run_experiment": "gencv.runner",
    "Experiment": "gencv.spec",
    "load_experiment": "gencv.spec",
    "MlflowTracker": "gencv.tracking",
    "NullTracker": "gencv.tracking",
    "Tracker": "gencv.tracking",
    "TuneOutcome": "gencv.tuning",
    "tune_experiment": "gencv.tuning",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gencv' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from gencv.cv import CVResult, FoldResult, cross_validate  # noqa: F401
    from gencv.data import Dataset, load_dataset  # noqa: F401
    from gencv.engines import (  # noqa: F401
        ENGINES,
        SKLEARN_EXPECTED_FAILED_CHECKS,
        GencvEstimator,
        NetClassifier,
        NetRegressor,
        get_engine,
    )
    from gencv.errors import DataError, DivergenceError, GencvError, SpecError, SplitError, TrackingError  # noqa: F401
    from gencv.runner import RunOutcome, prepare, run_experiment  # noqa: F401
    from gencv.seeds import derive_seed  # noqa: F401
    from gencv.spec import Experiment, load_experiment  # noqa: F401
    from gencv.tracking import MlflowTracker, NullTracker, Tracker  # noqa: F401
    from gencv.tuning import TuneOutcome, tune_experiment  # noqa: F401
