"""Optimizers and learning-rate schedules by name (`train.optimizer`, `train.schedule.kind`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from skorch.callbacks import LRScheduler

from gencv.spec import ScheduleSpec, TrainSpec

__all__ = ["OPTIMIZERS", "SCHEDULES", "make_optimizer", "make_schedule"]

OptimizerFactory = Callable[[TrainSpec], tuple[type[torch.optim.Optimizer], dict[str, Any]]]

#: name -> (optimizer class, its keyword arguments besides lr) for a training recipe.
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd": lambda t: (torch.optim.SGD, {"weight_decay": t.weight_decay}),
    "momentum": lambda t: (torch.optim.SGD, {"momentum": t.momentum, "weight_decay": t.weight_decay}),
    "nesterov": lambda t: (torch.optim.SGD, {"momentum": t.momentum, "nesterov": True,
                                             "weight_decay": t.weight_decay}),
    "adagrad": lambda t: (torch.optim.Adagrad, {"weight_decay": t.weight_decay}),
    "rmsprop": lambda t: (torch.optim.RMSprop, {"weight_decay": t.weight_decay}),
    "adam": lambda t: (torch.optim.Adam, {"weight_decay": t.weight_decay}),
    "adamw": lambda t: (torch.optim.AdamW, {"weight_decay": t.weight_decay}),
    "nadam": lambda t: (torch.optim.NAdam, {"weight_decay": t.weight_decay}),
    # No weight_decay argument: L2 goes into the loss instead. Without a line search a full L-BFGS
    # step can jump to a loss of 1e14 once the curvature estimate degenerates near a minimum.
    "lbfgs": lambda t: (torch.optim.LBFGS, {"line_search_fn": "strong_wolfe"}),
}

ScheduleFactory = Callable[[ScheduleSpec, TrainSpec, str], LRScheduler]

#: name -> skorch LRScheduler callback for (schedule spec, training recipe, monitored quantity).
SCHEDULES: dict[str, ScheduleFactory] = {
    "step": lambda s, t, monitor: LRScheduler(policy=torch.optim.lr_scheduler.StepLR, step_size=s.step_size,
                                              gamma=s.gamma),
    "exponential": lambda s, t, monitor: LRScheduler(policy=torch.optim.lr_scheduler.ExponentialLR, gamma=s.gamma),
    "cosine": lambda s, t, monitor: LRScheduler(policy=torch.optim.lr_scheduler.CosineAnnealingLR,
                                                T_max=s.t_max or t.max_epochs, eta_min=s.eta_min),
    "plateau": lambda s, t, monitor: LRScheduler(policy=torch.optim.lr_scheduler.ReduceLROnPlateau, monitor=monitor,
                                                 factor=s.factor, patience=s.patience),
}


def make_optimizer(train: TrainSpec) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The optimizer class and its arguments (besides lr) for `train.optimizer`."""
    return OPTIMIZERS[train.optimizer](train)


def make_schedule(train: TrainSpec, monitor: str) -> LRScheduler | None:
    """The skorch LRScheduler callback for `train.schedule`, or None for `kind: none`."""
    s = train.schedule
    return None if s.kind == "none" else SCHEDULES[s.kind](s, train, monitor)
