"""Training engines: fit the folds of one configuration and hand back one fitted model per fold.

`base` defines the seam (`Engine`, `FittedModel`, `FoldFit`); `skorch_engine` is the reference
engine (one cloned skorch net per fold); `batched` trains all folds as one stacked model; `sklearn_api`
holds the scikit-learn estimators they fit (`NetClassifier`, `NetRegressor`), built from `skorch_net` (the trimmed skorch loop), `optim`
(optimizers and schedules by name) and `estimator` (preprocessing, the exported model).
"""

from __future__ import annotations

from collections.abc import Callable

from gencv.engines.base import Engine, FittedModel, FoldFit
from gencv.engines.batched import AutoEngine, BatchedEngine, UnsupportedSettingError, engine_used
from gencv.engines.estimator import ExportedModel, GencvEstimator, export_input, make_preprocessor
from gencv.engines.from_spec import estimator_from_spec
from gencv.engines.prefit import PrefitEngine
from gencv.engines.sklearn_api import (
    SKLEARN_EXPECTED_FAILED_CHECKS,
    NetClassifier,
    NetEstimator,
    NetRegressor,
)
from gencv.engines.skorch_engine import SkorchEngine
from gencv.errors import GencvError, did_you_mean

__all__ = ["ENGINES", "SKLEARN_EXPECTED_FAILED_CHECKS", "AutoEngine", "BatchedEngine", "Engine", "ExportedModel",
           "FittedModel", "FoldFit", "GencvEstimator", "NetClassifier", "NetEstimator", "NetRegressor", "PrefitEngine",
           "SkorchEngine", "UnsupportedSettingError", "engine_used", "estimator_from_spec", "export_input", "get_engine", "make_preprocessor"]

#: engine name -> factory. `skorch` is the reference; `batched` stacks the folds; `auto` picks batched when it can.
ENGINES: dict[str, Callable[[], Engine]] = {"skorch": SkorchEngine, "batched": BatchedEngine, "auto": AutoEngine}


def get_engine(name: str | Engine) -> Engine:
    """The engine registered as `name` (an engine object is returned as it is)."""
    if not isinstance(name, str):
        return name
    if name not in ENGINES:
        raise GencvError(f"train.engine: got {name!r}; available engines: {', '.join(ENGINES)}."
                         + did_you_mean(name, ENGINES))
    return ENGINES[name]()
