"""gencv: cross-validation and generalization experiments for PyTorch networks."""

from __future__ import annotations

__version__ = "0.1.0"

from gencv.cv import CVResult, FoldResult, cross_validate, derive_seed  # noqa: E402
from gencv.data import Dataset, load_dataset  # noqa: E402
from gencv.errors import DataError, DivergenceError, GencvError, SpecError, SplitError  # noqa: E402
from gencv.estimators import GencvEstimator  # noqa: E402
from gencv.runner import RunOutcome, prepare, run_experiment  # noqa: E402
from gencv.spec import Experiment, load_experiment  # noqa: E402
from gencv.tracking import MlflowTracker, NullTracker, Tracker  # noqa: E402
from gencv.tuning import TuneOutcome, tune_experiment  # noqa: E402

__all__ = [
    "CVResult",
    "DataError",
    "Dataset",
    "DivergenceError",
    "Experiment",
    "FoldResult",
    "GencvError",
    "GencvEstimator",
    "MlflowTracker",
    "NullTracker",
    "RunOutcome",
    "SpecError",
    "SplitError",
    "Tracker",
    "TuneOutcome",
    "__version__",
    "cross_validate",
    "derive_seed",
    "load_dataset",
    "load_experiment",
    "prepare",
    "run_experiment",
    "tune_experiment",
]
