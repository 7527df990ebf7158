"""The skorch net gencv trains: skorch's loop with its per-batch bookkeeping trimmed, penalties,
weight init, tensor-slicing batches, the held-out learning curve, early stopping inside the training fold."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import GroupShuffleSplit, ShuffleSplit, StratifiedShuffleSplit
from skorch import NeuralNet as _NetBase, NeuralNetClassifier, NeuralNetRegressor
from skorch.callbacks import Callback, EarlyStopping
from skorch.dataset import Dataset as SkorchDataset, get_len
from torch import nn

from gencv.errors import DivergenceError
from gencv.models import init_weights_

log = logging.getLogger(__name__)



class InnerSplit:
    """skorch train_split: hold out a validation part *inside* the training fold for early stopping.

    i.i.d. data: a seeded (stratified) random fraction; grouped data (`groups`, one label per row
    of the training fold): whole groups, so early stopping never validates on groups it trains on;
    time series: the last block, so early stopping never validates on the past of what it trains
    on, with `gap` rows before it left out (lag windows whose targets would reach into the block).
    """

    def __init__(self, fraction: float, *, stratified: bool, time_ordered: bool, seed: int, gap: int = 0,
                 groups: np.ndarray | None = None) -> None:
        self.fraction = fraction
        self.stratified = stratified
        self.time_ordered = time_ordered
        self.seed = seed
        self.gap = gap
        self.groups = groups
        self.last_train_positions_: np.ndarray | None = None
        self.last_valid_positions_: np.ndarray | None = None

    def positions(self, n: int, y: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(train, valid) positions within a training fold of n samples."""
        n_valid = max(1, int(math.ceil(self.fraction * n)))
        gap = self.gap if self.time_ordered else 0
        if n - n_valid - gap < 1:
            raise ValueError(f"train.early_stopping.valid_fraction={self.fraction} leaves no training data in a fold of {n}")
        idx = np.arange(n)
        if self.time_ordered:
            return idx[: n - n_valid - gap], idx[n - n_valid :]
        if self.groups is not None:
            groups = np.asarray(self.groups)
            if len(groups) != n:
                raise ValueError(f"InnerSplit: got {len(groups)} group labels for a training fold of {n} rows")
            n_groups = len(np.unique(groups))
            if n_groups < 2:
                raise ValueError(f"train.early_stopping: the training fold has {n_groups} group (data.group); "
                                 "early stopping holds out whole groups and needs at least 2; use more groups "
                                 "or drop train.early_stopping")
            gss = GroupShuffleSplit(n_splits=1, test_size=self.fraction, random_state=self.seed)
            return next(gss.split(idx, y, groups))
        if self.stratified and y is not None:
            counts = np.bincount(np.asarray(y).astype(int))
            if counts[counts > 0].min() >= 2 and n_valid >= (counts > 0).sum():
                sss = StratifiedShuffleSplit(n_splits=1, test_size=n_valid, random_state=self.seed)
                return next(sss.split(idx, y))
        ss = ShuffleSplit(n_splits=1, test_size=n_valid, random_state=self.seed)
        return next(ss.split(idx))

    def __call__(self, dataset: Any, y: Any = None, groups: Any = None) -> tuple[Any, Any]:
        n = len(dataset)
        y_arr = None if y is None else np.asarray(y).reshape(n, -1)[:, 0]
        tr, va = self.positions(n, y_arr)
        self.last_train_positions_, self.last_valid_positions_ = tr, va
        return torch.utils.data.Subset(dataset, tr), torch.utils.data.Subset(dataset, va)



def _resolve(dataset: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Tensors behind a skorch Dataset or (nested) Subset of one."""
    if isinstance(dataset, torch.utils.data.Subset):
        X, y = _resolve(dataset.dataset)
        idx = torch.as_tensor(np.asarray(dataset.indices), dtype=torch.long)
        return X[idx], None if y is None else y[idx]
    if isinstance(dataset, SkorchDataset):
        X = torch.as_tensor(dataset.X)
        y = None if dataset.y is None else torch.as_tensor(dataset.y)
        return X, y
    raise TypeError(f"TensorBatches needs a skorch Dataset or Subset, got {type(dataset).__name__}")



class TensorBatches:
    """Mini-batches by tensor slicing instead of per-sample DataLoader collation (same semantics, less overhead)."""

    def __init__(self, dataset: Any, batch_size: int = 32, shuffle: bool = False, **_: Any) -> None:
        self.X, self.y = _resolve(dataset)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle

    def __len__(self) -> int:
        return (len(self.X) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.X)
        order = torch.randperm(n) if self.shuffle else None  # global RNG, seeded per fold by the caller
        dummy = torch.zeros(n)
        for start in range(0, n, self.batch_size):
            sl = order[start : start + self.batch_size] if order is not None else slice(start, start + self.batch_size)
            yield self.X[sl], (self.y[sl] if self.y is not None else dummy[sl])



class HeldOutCurve(Callback):
    """Record loss and primary metric of the held-out fold per epoch (for learning curves only, never for selection)."""

    def __init__(self, X_eval: Any = None, y_eval: Any = None, metric: Callable[..., float] | None = None,
                 on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> None:
        self.X_eval = X_eval
        self.y_eval = y_eval
        self.metric = metric
        self.on_epoch = on_epoch

    def on_epoch_end(self, net: Any, **kw: Any) -> None:
        row: dict[str, float] = {}
        if self.X_eval is not None and len(self.X_eval):
            module = net.module_
            was_training = module.training
            module.eval()
            with torch.no_grad():
                Xt = torch.as_tensor(self.X_eval, device=net.device)
                out = module(Xt)
                yt = torch.as_tensor(self.y_eval, device=net.device)
                row["curve_valid_loss"] = float(net.criterion_(out, yt))
                if self.metric is not None:
                    row["curve_valid_score"] = float(self.metric(out.cpu().numpy(), self.y_eval))
            module.train(was_training)
            for k, v in row.items():
                net.history.record(k, v)
        if self.on_epoch is not None:
            self.on_epoch(len(net.history), dict(net.history[-1]))



class StopAtTrainLoss(Callback):
    """End training at the first epoch whose data loss on the fitted rows is <= `value` (Jiang et al. 2019).

    The loss is the criterion alone (no L1/L2 penalty) in eval mode (dropout off), recomputed on the
    whole training set at the end of every epoch and recorded as `curve_fit_loss`; `reached_` and
    `stop_epoch_` say whether and when it got there (max_epochs ends training otherwise).
    """

    def __init__(self, value: float, chunk: int = 4096) -> None:
        self.value = value
        self.chunk = chunk

    def initialize(self) -> StopAtTrainLoss:
        self.reached_, self.stop_epoch_ = False, 0
        return self

    def on_train_begin(self, net: Any, **kw: Any) -> None:
        self.reached_, self.stop_epoch_ = False, 0

    def on_epoch_end(self, net: Any, dataset_train: Any = None, **kw: Any) -> None:
        X, y = _resolve(dataset_train)
        module = net.module_
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                out = torch.cat([module(X[i : i + self.chunk].to(net.device)) for i in range(0, len(X), self.chunk)])
                loss = float(net.criterion_(out, y.to(net.device)))
        finally:
            module.train(was_training)
        net.history.record("curve_fit_loss", loss)
        if loss <= self.value:
            self.reached_, self.stop_epoch_ = True, len(net.history)
            raise StopTraining


class StopTraining(Exception):
    """Early stopping's signal (skorch's own EarlyStopping raises KeyboardInterrupt, indistinguishable from Ctrl-C)."""



class FoldEarlyStopping(EarlyStopping):
    def on_epoch_end(self, net: Any, **kwargs: Any) -> None:
        try:
            super().on_epoch_end(net, **kwargs)
        except KeyboardInterrupt:
            if self.misses_ == self.patience:
                raise StopTraining from None
            raise



_HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_batch_begin", "on_batch_end",
          "on_grad_computed")



class _LeanLoopMixin:
    """skorch's loop with its per-batch bookkeeping trimmed; same semantics.

    `notify` calls only hooks that a callback (or the net) actually overrides, `on_grad_computed`
    arguments are only built when someone listens, train/eval mode is switched only when it
    changes, batch rows are written straight into the history, and the PrintLog table is not
    built when nothing prints it (verbose=0; gencv has its own progress display). On a small MLP
    this removes most of skorch's per-batch and per-epoch overhead.
    """

    verbose: int

    callbacks_: list[tuple[str, Callback]]

    def _active_hooks(self, name: str) -> list[Callable[..., None]]:
        key = (id(self.callbacks_), len(self.callbacks_))
        cache = self.__dict__.get("hook_cache_")
        if cache is None or cache[0] != key:
            cache = (key, {})
            self.__dict__["hook_cache_"] = cache
        hooks = cache[1].get(name)
        if hooks is None:
            hooks = [getattr(self, name)]  # the net's own hooks keep the history (new_epoch, new_batch)
            for _, cb in self.callbacks_:
                if getattr(type(cb), name) is not getattr(Callback, name):
                    hooks.append(getattr(cb, name))
            cache[1][name] = hooks
        return hooks

    def on_batch_begin(self, net: Any, batch: Any = None, training: bool = False, **kwargs: Any) -> None:
        # skorch's `history.new_batch()`, without History.__getitem__, which copies the whole history
        # into a list on every call (per batch, a cost that grows with the epochs run).
        list.__getitem__(self.history, -1)["batches"].append({})  # type: ignore[attr-defined]

    def notify(self, method_name: str, **cb_kwargs: Any) -> None:
        for hook in self._active_hooks(method_name):
            hook(self, **cb_kwargs)

    def get_default_callbacks(self) -> list[tuple[str, Callback]]:
        default = super().get_default_callbacks()  # type: ignore[misc]
        return default if self.verbose else [(n, cb) for n, cb in default if n != "print_log"]

    def run_single_epoch(self, iterator: Any, training: bool, prefix: str, step_fn: Callable[..., Any],
                         **fit_params: Any) -> None:
        """skorch's epoch (hooks, per-batch loss and size in the history), without its indexing overhead;
        a training batch whose loss is NaN/inf raises DivergenceError."""
        if iterator is None:
            return
        begin, end = self._active_hooks("on_batch_begin"), self._active_hooks("on_batch_end")
        loss_key, size_key = prefix + "_loss", prefix + "_batch_size"
        batches = list.__getitem__(self.history, -1)["batches"]  # type: ignore[attr-defined]
        batch_count = 0
        for batch in iterator:
            for hook in begin:  # the net's own on_batch_begin appends this batch's row
                hook(self, batch=batch, training=training)
            step = step_fn(batch, **fit_params)
            row = batches[-1]
            row[loss_key] = loss = step["loss"].item()
            if training and not math.isfinite(loss):  # stop at the first diverged batch, before another step
                epoch = len(self.history)  # type: ignore[attr-defined]
                raise DivergenceError(
                    f"training loss became {loss} at epoch {epoch}, batch {len(batches)}; "
                    "lower train.lr, set train.clip_grad_norm, or scale the data", epoch=epoch, batch=len(batches))
            first = batch[0] if isinstance(batch, (tuple, list)) else batch
            row[size_key] = first.shape[0] if isinstance(first, torch.Tensor) else get_len(first)
            for hook in end:
                hook(self, batch=batch, training=training, **step)
            batch_count += 1
        self.history.record(prefix + "_batch_count", batch_count)  # type: ignore[attr-defined]

    def train_step(self, batch: Any, **fit_params: Any) -> Any:
        if len(self._active_hooks("on_grad_computed")) > 1 or type(self).on_grad_computed is not _NetBase.on_grad_computed:
            return super().train_step(batch, **fit_params)  # type: ignore[misc]
        acc = self.get_train_step_accumulator()  # type: ignore[attr-defined]

        def step_fn() -> torch.Tensor:
            self._zero_grad_optimizer()  # type: ignore[attr-defined]
            step = self.train_step_single(batch, **fit_params)  # type: ignore[attr-defined]
            acc.store_step(step)
            return step["loss"]

        self._step_optimizer(step_fn)  # type: ignore[attr-defined]
        return acc.get_step()

    def _set_training(self, training: bool = True) -> None:
        module = getattr(self, "module_", None)
        criterion = getattr(self, "criterion_", None)
        if (module is not None and module.training == training and
                (not isinstance(criterion, nn.Module) or criterion.training == training)):
            return
        super()._set_training(training)  # type: ignore[misc]



class _PenalizedMixin:
    """Adds an L1 (and, for L-BFGS, an explicit L2) penalty to the training loss."""

    l1: float
    l2_explicit: float
    module_: nn.Module

    def get_loss(self, y_pred: torch.Tensor, y_true: torch.Tensor, X: Any = None, training: bool = False) -> torch.Tensor:
        loss = super().get_loss(y_pred, y_true, X=X, training=training)  # type: ignore[misc]
        if training and (self.l1 > 0 or self.l2_explicit > 0):
            weights = [p for p in self.module_.parameters() if p.requires_grad and p.dim() > 1]
            if self.l1 > 0:
                loss = loss + self.l1 * sum(p.abs().sum() for p in weights)
            if self.l2_explicit > 0:
                loss = loss + 0.5 * self.l2_explicit * sum((p * p).sum() for p in weights)
        return loss



class _GencvNetMixin(_LeanLoopMixin, _PenalizedMixin):
    """gencv's extra net settings (penalties, weight init) on top of skorch's classifier/regressor."""

    def __init__(self, *args: Any, l1: float = 0.0, l2_explicit: float = 0.0, init_scheme: str = "default",
                 init_activation: str = "relu", augment: Callable[..., Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.l1, self.l2_explicit = l1, l2_explicit
        self.init_scheme, self.init_activation = init_scheme, init_activation
        self.augment = augment  # a gencv.augment.Augmenter: training batches only (validation_step never sees it)

    def train_step_single(self, batch: Any, **fit_params: Any) -> dict[str, Any]:
        if self.augment is None:
            return super().train_step_single(batch, **fit_params)  # type: ignore[misc,no-any-return]
        self._set_training(True)
        Xi, yi, y_mix, lam = self.augment(*batch)
        y_pred = self.infer(Xi, **fit_params)  # type: ignore[attr-defined]
        loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        if y_mix is not None:  # mixup, classification: the loss mixed as the inputs were (penalty weight lam + 1 - lam)
            loss = lam * loss + (1 - lam) * self.get_loss(y_pred, y_mix, X=Xi, training=True)
        loss.backward()
        return {"loss": loss, "y_pred": y_pred}

    def initialize_module(self) -> Any:
        super().initialize_module()  # type: ignore[misc]
        init_weights_(self.module_, self.init_scheme, self.init_activation)
        return self



class SkorchClassifier(_GencvNetMixin, NeuralNetClassifier):
    pass



class SkorchRegressor(_GencvNetMixin, NeuralNetRegressor):
    pass

