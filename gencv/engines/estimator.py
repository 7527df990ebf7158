"""Pieces around the network estimators: settings given as values or specs, the per-epoch curve metric, the
per-fit preprocessing, the exported torch model, and the
deprecated `GencvEstimator` (now `NetClassifier`/`NetRegressor` in `sklearn_api`)."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, MinMaxScaler, OneHotEncoder, OrdinalEncoder, StandardScaler
from torch import nn

from gencv.spec import EarlyStoppingSpec, ModelSpec, ScheduleSpec, TrainSpec

__all__ = ["CurveMetric", "ExportedModel", "GencvEstimator", "early_stopping_spec", "export_input", "make_preprocessor",
           "param_names", "schedule_spec", "x_checks"]

log = logging.getLogger(__name__)



def early_stopping_spec(value: Any) -> EarlyStoppingSpec | None:
    """`early_stopping` as given (True/False/None, a dict of EarlyStoppingSpec fields, or one) -> spec or None."""
    if value is None or value is False:
        return None
    if value is True:
        return EarlyStoppingSpec()
    if isinstance(value, EarlyStoppingSpec):
        return value
    if isinstance(value, dict):
        return EarlyStoppingSpec(**value)
    raise ValueError(f"early_stopping: got {value!r}; use True, False, or a dict such as "
                     "{'patience': 10, 'valid_fraction': 0.2, 'min_delta': 0.0, 'restore_best': True}")


def schedule_spec(value: Any) -> ScheduleSpec:
    """`schedule` as given (None, a kind name, a dict of ScheduleSpec fields, or one) -> spec."""
    if value is None:
        return ScheduleSpec(kind="none")
    if isinstance(value, ScheduleSpec):
        return value
    if isinstance(value, str):
        return ScheduleSpec(kind=value)  # type: ignore[arg-type]
    if isinstance(value, dict):
        return ScheduleSpec(**value)
    raise ValueError(f"schedule: got {value!r}; use None, a kind ('step', 'exponential', 'cosine', 'plateau') "
                     "or a dict such as {'kind': 'step', 'step_size': 10, 'gamma': 0.1}")


class CurveMetric:
    """The primary metric on (network outputs, fitted targets), in the units `predict` reports (picklable)."""

    def __init__(self, name: str, task: str, n_classes: int, y_mean: float = 0.0, y_std: float = 1.0) -> None:
        self.name, self.task, self.n_classes, self.y_mean, self.y_std = name, task, n_classes, y_mean, y_std

    def __call__(self, out: np.ndarray, y: np.ndarray) -> float:
        from gencv.metrics import METRICS

        m = METRICS[self.name]
        func = m.fast or m.func  # per epoch: the numpy version, held to sklearn's number by the tests
        if self.task == "regression":  # back from standardised units
            return float(func(np.ravel(y) * self.y_std + self.y_mean,
                              np.ravel(out).astype(np.float64) * self.y_std + self.y_mean))
        if m.needs_proba:
            proba = torch.softmax(torch.as_tensor(out, dtype=torch.float64), dim=1).numpy()
            return float(func(y, proba, list(range(self.n_classes))))
        return float(func(y, out.argmax(1)))


def _to_float32(X: np.ndarray, dtype: str = "float32") -> np.ndarray:
    return np.asarray(X, dtype=dtype)


def _scaler(scale: str) -> Any:
    return {"standard": StandardScaler(), "minmax": MinMaxScaler(), "none": "passthrough"}[scale]


@functools.cache
def param_names(cls: type) -> tuple[str, ...]:
    """scikit-learn's parameter names of an estimator class (from `__init__`'s signature), computed once per class."""
    return tuple(BaseEstimator._get_param_names.__func__(cls))  # type: ignore[attr-defined]


def make_preprocessor(scale: str, dtype: str = "float32", *, impute: str = "none", categorical: str = "onehot",
                      categorical_features: Sequence[int] | None = None, n_features: int | None = None) -> Pipeline:
    """The per-fit feature preprocessing, fitted on the training fold only, ending in a cast to `dtype`.

    Plain numeric data: scaler (`scale`). With `impute` (mean | median | most_frequent): a SimpleImputer
    first. With `categorical_features` (column positions among `n_features`): a ColumnTransformer whose
    numeric part is imputer + scaler and whose categorical part is a most_frequent imputer (when `impute`
    is set) + OneHotEncoder (`categorical="onehot"`, unseen categories -> all zeros) or OrdinalEncoder
    (`"ordinal"`, unseen -> -1, then scaled like the numbers).
    """
    cast = ("float32", FunctionTransformer(_to_float32, kw_args={"dtype": dtype}))
    cats = sorted(int(j) for j in (categorical_features or ()))
    if not cats:
        steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy=impute))] if impute != "none" else []
        return Pipeline([*steps, ("scale", _scaler(scale)), cast])
    if n_features is None:
        raise ValueError("make_preprocessor: categorical_features needs n_features (the number of columns)")
    nums = [j for j in range(n_features) if j not in set(cats)]
    num_steps: list[tuple[str, Any]] = [("to_float", FunctionTransformer(_to_float32, kw_args={"dtype": "float64"}))]
    cat_steps: list[tuple[str, Any]] = []
    if impute != "none":
        num_steps.append(("impute", SimpleImputer(strategy=impute)))
        cat_steps.append(("impute", SimpleImputer(strategy="most_frequent")))
    num_steps.append(("scale", _scaler(scale)))
    if categorical == "onehot":
        cat_steps.append(("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False)))
    else:
        cat_steps.append(("encode", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)))
        cat_steps.append(("scale", _scaler(scale)))
    columns = ColumnTransformer([("num", Pipeline(num_steps), nums), ("cat", Pipeline(cat_steps), cats)],
                                sparse_threshold=0.0)
    return Pipeline([("columns", columns), cast])


_DTYPES = (np.float64, np.float32)  # float32 data stays float32 (the network's dtype); anything else -> float64


def x_checks(categorical_features: Sequence[int] | None, impute: str) -> dict[str, Any]:
    """`validate_data`'s settings for X: categories stay objects, missing values reach the imputer."""
    return {"dtype": None if categorical_features else _DTYPES,
            "ensure_all_finite": "allow-nan" if impute != "none" else True}


def export_input(preprocess: Pipeline, X: np.ndarray) -> np.ndarray:
    """What the exported model (`ExportedModel`) takes for raw rows X: X itself, or for data with categorical
    columns the preprocessed float32 rows (the fitted preprocessor is logged beside the model)."""
    if "columns" in preprocess.named_steps:
        return np.asarray(preprocess.transform(X), dtype=np.float32)
    return np.asarray(X, dtype=np.float32)


def GencvEstimator(  # noqa: N802  (a deprecated class name, kept callable)
    model: ModelSpec,
    train: TrainSpec,
    *,
    task: str = "classification",
    n_features: int | None = None,
    n_classes: int = 2,
    image_shape: tuple[int, ...] | None = None,
    scale: str = "standard",
    time_ordered: bool = False,
    time_gap: int = 0,
    metric: str | None = None,
    seed: int = 0,
) -> Any:
    """Deprecated: the NetClassifier/NetRegressor for a spec's model and training settings.

    Use `gencv.NetClassifier`/`gencv.NetRegressor` (flat settings, shapes inferred in `fit`), or
    `gencv.engines.estimator_from_spec` for spec objects. `n_features` is ignored (inferred from the
    data); `seed` is the new estimators' `random_state`.
    """
    warnings.warn("GencvEstimator is deprecated and will be removed in the next release; use gencv.NetClassifier "
                  "or gencv.NetRegressor (or gencv.engines.estimator_from_spec for spec objects)",
                  DeprecationWarning, stacklevel=2)
    from gencv.engines.from_spec import estimator_from_spec

    return estimator_from_spec(model, train, task=task, n_classes=n_classes, image_shape=image_shape, scale=scale,
                               time_ordered=time_ordered, time_gap=time_gap, metric=metric, random_state=seed)



class ExportedModel(nn.Module):
    """Imputation + scaler + network (+ softmax or target inverse transform) in one module, for MLflow.

    For data with categorical columns the module takes the preprocessed rows (`export_input`): the
    encoding is not a tensor operation, so the fitted preprocessor is logged beside the model.
    """

    def __init__(self, net: nn.Module, shift: torch.Tensor, scale: torch.Tensor, task: str,
                 y_mean: float = 0.0, y_std: float = 1.0, fill: torch.Tensor | None = None) -> None:
        super().__init__()
        self.net = net
        self.task = task
        self.register_buffer("shift", shift.float())
        self.register_buffer("scale", scale.float())
        self.register_buffer("y_mean", torch.tensor(float(y_mean)))
        self.register_buffer("y_std", torch.tensor(float(y_std)))
        self.register_buffer("fill", None if fill is None else fill.float())  # per-column values for NaN

    @classmethod
    def from_estimator(cls, est: Any) -> ExportedModel:
        import copy

        steps = est.preprocess_.named_steps
        scaler = steps.get("scale", "passthrough")
        d = getattr(est, "n_inputs_", est.n_features_in_)
        if isinstance(scaler, StandardScaler):
            shift, scale = torch.as_tensor(scaler.mean_), torch.as_tensor(scaler.scale_)
        elif isinstance(scaler, MinMaxScaler):
            # MinMaxScaler computes x * scale_ + min_, i.e. (x - shift) / scale with these:
            scale = 1.0 / torch.as_tensor(scaler.scale_)
            shift = -torch.as_tensor(scaler.min_) * scale
        else:
            shift, scale = torch.zeros(d), torch.ones(d)
        fill = torch.as_tensor(steps["impute"].statistics_.astype(np.float64)) if "impute" in steps else None
        net = copy.deepcopy(est.net_.module_).cpu().float().eval()
        return cls(net, shift, scale, est.task, getattr(est, "y_mean_", 0.0), getattr(est, "y_std_", 1.0), fill)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.fill is not None:
            x = torch.where(torch.isnan(x), self.fill, x)
        out = self.net((x - self.shift) / self.scale)
        if self.task == "classification":
            return torch.softmax(out, dim=1)
        return out * self.y_std + self.y_mean
