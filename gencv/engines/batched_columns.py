"""The batched engine's per-member tables: members' rows padded into one tensor, settings as columns (one float
where the members agree), and each member's learning rate epoch by epoch (schedules, per-member plateaus)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from gencv.engines.optim import make_schedule

__all__ = ["_Plateaus", "_column", "_epoch_rates", "_stack_rows"]


def _stack_rows(rows: Sequence[torch.Tensor | None], fill: float | int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad tensors of different lengths into (members, longest, ...) and a float mask of real rows."""
    real = [r for r in rows if r is not None]
    n_max = max((len(r) for r in real), default=0)
    if len(real) == len(rows) and all(len(r) == n_max for r in real):  # k-fold, leave-one-out: one length
        return torch.stack(real), torch.ones(len(rows), n_max)
    tail = real[0].shape[1:]
    out = torch.full((len(rows), n_max, *tail), fill, dtype=real[0].dtype)
    mask = torch.zeros(len(rows), n_max)
    for i, r in enumerate(rows):
        if r is not None and len(r):
            out[i, : len(r)] = r
            mask[i, : len(r)] = 1.0
    return out, mask


class _Plateaus:
    """One `ReduceLROnPlateau` per member (torch's own, on a stand-in optimizer): a learning rate each."""

    def __init__(self, trains: Sequence[Any]) -> None:
        sched = make_schedule(trains[0], "train_loss")
        self.opts = [torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=t.lr) for t in trains]
        self.policies = [sched.policy(o, **sched.kwargs) for o in self.opts]  # type: ignore[union-attr]

    def rates(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.tensor([[o.param_groups[0]["lr"]] for o in self.opts], dtype=dtype, device=device)

    def step(self, member: int, monitored: float) -> None:
        self.policies[member].step(monitored)

    def keep(self, members: list[int]) -> None:
        """Only these members (by position) go on."""
        self.opts = [self.opts[i] for i in members]
        self.policies = [self.policies[i] for i in members]


def _learning_rates(train: Any) -> list[float]:
    """The learning rate of each epoch: skorch's LRScheduler steps its policy once per epoch end."""
    sched = make_schedule(train, "train_loss")
    if sched is None:
        return [float(train.lr)] * train.max_epochs
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=train.lr)
    policy = sched.policy(opt, **sched.kwargs)
    lrs = []
    for _ in range(train.max_epochs):
        lrs.append(float(opt.param_groups[0]["lr"]))
        opt.step()
        policy.step()
    return lrs


def _column(values: Sequence[float], dtype: torch.dtype, device: torch.device) -> float | torch.Tensor:
    """One float when every member has the same value, else a (members, 1) column."""
    if all(v == values[0] for v in values):
        return float(values[0])
    return torch.tensor([float(v) for v in values], dtype=dtype, device=device).unsqueeze(1)


def _epoch_rates(trains: Sequence[Any], dtype: torch.dtype, device: torch.device) -> list[Any]:
    """Each epoch's learning rate: a float when the members agree, else a (members, 1) column."""
    per = [_learning_rates(t) for t in trains]
    if all(r == per[0] for r in per):
        return list(per[0])
    table = torch.tensor(per, dtype=dtype, device=device)  # (members, epochs)
    return [table[:, e : e + 1] for e in range(table.shape[1])]
