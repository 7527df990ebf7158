"""Training engines: fit the folds of one configuration and hand back one fitted model per fold.

`base` defines the seam (`Engine`, `FittedModel`, `FoldFit`); `skorch_engine` is the reference
engine (one cloned skorch net per fold); `sklearn_api` holds the scikit-learn estimators it clones
(`NetClassifier`, `NetRegressor`), built from `skorch_net` (the trimmed skorch loop), `optim`
(optimizers and schedules by name) and `estimator` (preprocessing, the exported model).
"""

from __future__ import annotations

from collections.abc import Callable

from gencv.engines.base import Engine, FittedModel, FoldFit
from gencv.engines.estimator import ExportedModel, GencvEstimator, make_preprocessor
from gencv.engines.skorch_engine import SkorchEngine
from gencv.engines.sklearn_api import (
    SKLEARN_EXPECTED_FAILED_CHECKS,
    NetClassifier,
    NetEstimator,
    NetRegressor,
    estimator_from_spec,
)
from gencv.errors import GencvError, did_you_mean

__all__ = ["ENGINES", "SKLEARN_EXPECTED_FAILED_CHECKS", "Engine", "ExportedModel", "FittedModel", "FoldFit",
           "GencvEstimator", "NetClassifier", "NetEstimator", "NetRegressor", "SkorchEngine", "estimator_from_spec",
           "get_engine", "make_preprocessor"]

#: engine name -> factory. `skorch` is the reference.
ENGINES: dict[str, Callable[[], Engine]] = {"skorch": SkorchEngine}


def get_engine(name: str) -> Engine:
    """The engine registered as `name`."""
    if name not in ENGINES:
        raise GencvError(f"train.engine: got {name!r}; available engines: {', '.join(ENGINES)}."
                         + did_you_mean(name, ENGINES))
    return ENGINES[name]()
