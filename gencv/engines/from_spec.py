"""A spec's model and training settings -> the NetClassifier/NetRegressor that trains them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from gencv.augment import as_augment_spec, check_augment
from gencv.engines.sklearn_api import NetClassifier, NetEstimator, NetRegressor
from gencv.engines.transfer import BaseWeights
from gencv.errors import SpecError
from gencv.models import load_module
from gencv.spec import AugmentSpec, ModelSpec, TrainSpec

__all__ = ["estimator_from_spec"]


def estimator_from_spec(
    model: ModelSpec,
    train: TrainSpec,
    *,
    task: str,
    n_classes: int = 2,
    image_shape: tuple[int, ...] | None = None,
    scale: str = "standard",
    time_ordered: bool = False,
    time_gap: int = 0,
    metric: str | None = None,
    random_state: int = 0,
    module: Callable[..., nn.Module] | None = None,
    augment: AugmentSpec | None = None,
    base: BaseWeights | None = None,
) -> NetEstimator:
    """The NetClassifier/NetRegressor for a spec's model and training settings (labels 0..n_classes-1).

    `module`: for `model.kind: custom`, the class or factory itself (a notebook's), instead of importing
    `model.module`. `augment`: data.augment, checked against the data here (SpecError before any training).
    `base`: the weights `model.base` names, loaded (`gencv.tracking.weights.load_base`)."""
    spec = as_augment_spec(augment)
    check_augment(spec, image_shape)
    if spec is not None and spec.active and train.optimizer == "lbfgs":
        raise SpecError(f"data.augment: got {spec.model_dump(exclude_defaults=True)} with train.optimizer: lbfgs, "
                        "which evaluates the loss several times per step (line search), each time on another "
                        "augmented batch; use train.optimizer: adam (or sgd, ...), or remove data.augment")
    m = model.model_dump(exclude={"module", "kwargs", "base"})
    kind: Any = m.pop("kind")
    if kind == "custom":  # the class or factory model.module names, its model.kwargs routed as module__<name>
        kind = load_module(str(model.module)) if module is None else module
        m.update({f"module__{k}": v for k, v in model.kwargs.items()})
    m["hidden"], m["channels"] = tuple(m["hidden"]), tuple(m["channels"])
    t = train.model_dump(exclude={"schedule", "early_stopping", "engine"})  # the engine is the CV's, not the net's
    common: dict[str, Any] = dict(module=kind, **m, **t, schedule=train.schedule, early_stopping=train.early_stopping,
                                  scale=scale, time_ordered=time_ordered, time_gap=time_gap, image_shape=image_shape,
                                  metric=metric, random_state=random_state, augment=spec, base=base)
    if task == "classification":
        return NetClassifier(classes=tuple(range(n_classes)), **common)
    return NetRegressor(**common)
