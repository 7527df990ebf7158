"""Pieces around the network estimators: the per-fit preprocessing, the exported torch model, and the
deprecated `GencvEstimator` (now `NetClassifier`/`NetRegressor` in `sklearn_api`)."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, MinMaxScaler, StandardScaler
from torch import nn

from gencv.spec import ModelSpec, TrainSpec

__all__ = ["ExportedModel", "GencvEstimator", "make_preprocessor"]

log = logging.getLogger(__name__)



def _to_float32(X: np.ndarray, dtype: str = "float32") -> np.ndarray:
    return np.asarray(X, dtype=dtype)



def make_preprocessor(scale: str, dtype: str = "float32") -> Pipeline:
    """Scaler (fit on the training fold only) followed by a cast to `dtype` (train.dtype)."""
    scaler: Any = {"standard": StandardScaler(), "minmax": MinMaxScaler(), "none": "passthrough"}[scale]
    return Pipeline([("scale", scaler), ("float32", FunctionTransformer(_to_float32, kw_args={"dtype": dtype}))])



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
    """Scaler + network (+ softmax or target inverse transform) in one module, for MLflow."""

    def __init__(self, net: nn.Module, shift: torch.Tensor, scale: torch.Tensor, task: str,
                 y_mean: float = 0.0, y_std: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.task = task
        self.register_buffer("shift", shift.float())
        self.register_buffer("scale", scale.float())
        self.register_buffer("y_mean", torch.tensor(float(y_mean)))
        self.register_buffer("y_std", torch.tensor(float(y_std)))

    @classmethod
    def from_estimator(cls, est: Any) -> ExportedModel:
        import copy

        scaler = est.preprocess_.named_steps["scale"]
        d = est.n_features_in_
        if isinstance(scaler, StandardScaler):
            shift, scale = torch.as_tensor(scaler.mean_), torch.as_tensor(scaler.scale_)
        elif isinstance(scaler, MinMaxScaler):
            # MinMaxScaler computes x * scale_ + min_, i.e. (x - shift) / scale with these:
            scale = 1.0 / torch.as_tensor(scaler.scale_)
            shift = -torch.as_tensor(scaler.min_) * scale
        else:
            shift, scale = torch.zeros(d), torch.ones(d)
        net = copy.deepcopy(est.net_.module_).cpu().float().eval()
        return cls(net, shift, scale, est.task, getattr(est, "y_mean_", 0.0), getattr(est, "y_std_", 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net((x.float() - self.shift) / self.scale)
        if self.task == "classification":
            return torch.softmax(out, dim=1)
        return out * self.y_std + self.y_mean

