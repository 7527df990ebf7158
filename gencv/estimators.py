"""A scikit-learn estimator around a skorch net: preprocessing, criterion, optimizer, callbacks."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import sklearn
import torch
from sklearn.base import BaseEstimator
from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, MinMaxScaler, StandardScaler
from skorch import NeuralNet as _NetBase
from skorch import NeuralNetClassifier, NeuralNetRegressor
from skorch.callbacks import Callback, EarlyStopping, GradientNormClipping, LRScheduler
from skorch.dataset import Dataset as SkorchDataset
from skorch.dataset import get_len
from torch import nn

from gencv.errors import DivergenceError
from gencv.models import CNN, MLP, RNN, init_weights_
from gencv.spec import ModelSpec, TrainSpec

__all__ = ["GencvEstimator", "InnerSplit", "TensorBatches", "make_preprocessor"]

log = logging.getLogger(__name__)


def _to_float32(X: np.ndarray) -> np.ndarray:
    return np.asarray(X, dtype=np.float32)


def make_preprocessor(scale: str) -> Pipeline:
    """Scaler (fit on the training fold only) followed by a cast to float32."""
    scaler: Any = {"standard": StandardScaler(), "minmax": MinMaxScaler(), "none": "passthrough"}[scale]
    return Pipeline([("scale", scaler), ("float32", FunctionTransformer(_to_float32))])


class InnerSplit:
    """skorch train_split: hold out a validation part *inside* the training fold for early stopping.

    i.i.d. data: a seeded (stratified) random fraction; time series: the last block, so
    early stopping never validates on the past of what it trains on, with `gap` rows before it
    left out (lag windows whose targets would reach into the validation block).
    """

    def __init__(self, fraction: float, *, stratified: bool, time_ordered: bool, seed: int, gap: int = 0) -> None:
        self.fraction = fraction
        self.stratified = stratified
        self.time_ordered = time_ordered
        self.seed = seed
        self.gap = gap
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
        self.last_valid_positions_ = va
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


class _HeldOutCurve(Callback):
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


class _StopTraining(Exception):
    """Early stopping's signal (skorch's own EarlyStopping raises KeyboardInterrupt, indistinguishable from Ctrl-C)."""


class _EarlyStopping(EarlyStopping):
    def on_epoch_end(self, net: Any, **kwargs: Any) -> None:
        try:
            super().on_epoch_end(net, **kwargs)
        except KeyboardInterrupt:
            if self.misses_ == self.patience:
                raise _StopTraining from None
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
                 init_activation: str = "relu", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.l1, self.l2_explicit = l1, l2_explicit
        self.init_scheme, self.init_activation = init_scheme, init_activation

    def initialize_module(self) -> Any:
        super().initialize_module()  # type: ignore[misc]
        init_weights_(self.module_, self.init_scheme, self.init_activation)
        return self


class _Classifier(_GencvNetMixin, NeuralNetClassifier):
    pass


class _Regressor(_GencvNetMixin, NeuralNetRegressor):
    pass


def _optimizer(train: TrainSpec) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    wd = train.weight_decay
    name = train.optimizer
    if name == "sgd":
        return torch.optim.SGD, {"weight_decay": wd}
    if name == "momentum":
        return torch.optim.SGD, {"momentum": train.momentum, "weight_decay": wd}
    if name == "nesterov":
        return torch.optim.SGD, {"momentum": train.momentum, "nesterov": True, "weight_decay": wd}
    if name == "adagrad":
        return torch.optim.Adagrad, {"weight_decay": wd}
    if name == "rmsprop":
        return torch.optim.RMSprop, {"weight_decay": wd}
    if name == "adam":
        return torch.optim.Adam, {"weight_decay": wd}
    if name == "adamw":
        return torch.optim.AdamW, {"weight_decay": wd}
    if name == "nadam":
        return torch.optim.NAdam, {"weight_decay": wd}
    # No weight_decay argument: L2 goes into the loss instead. Without a line search a full L-BFGS
    # step can jump to a loss of 1e14 once the curvature estimate degenerates near a minimum.
    return torch.optim.LBFGS, {"line_search_fn": "strong_wolfe"}


def _schedule(train: TrainSpec, monitor: str) -> LRScheduler | None:
    s = train.schedule
    if s.kind == "none":
        return None
    if s.kind == "step":
        return LRScheduler(policy=torch.optim.lr_scheduler.StepLR, step_size=s.step_size, gamma=s.gamma)
    if s.kind == "exponential":
        return LRScheduler(policy=torch.optim.lr_scheduler.ExponentialLR, gamma=s.gamma)
    if s.kind == "cosine":
        return LRScheduler(
            policy=torch.optim.lr_scheduler.CosineAnnealingLR, T_max=s.t_max or train.max_epochs, eta_min=s.eta_min
        )
    return LRScheduler(
        policy=torch.optim.lr_scheduler.ReduceLROnPlateau, monitor=monitor, factor=s.factor, patience=s.patience
    )


class GencvEstimator(BaseEstimator):
    """Preprocessing + skorch net for one CV fold; scikit-learn estimator contract (fitted state ends in `_`).

    Classification targets are int64 codes 0..n_classes-1 and the module emits logits
    (cross-entropy). Regression targets are standardised on the training fold and the
    predictions mapped back, so losses are reported in standardised units.
    """

    def __init__(
        self,
        model: ModelSpec,
        train: TrainSpec,
        *,
        task: str = "classification",
        n_features: int = 1,
        n_classes: int = 2,
        image_shape: tuple[int, ...] | None = None,
        scale: str = "standard",
        time_ordered: bool = False,
        time_gap: int = 0,
        metric: str | None = None,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.train = train
        self.task = task
        self.n_features = n_features
        self.n_classes = n_classes
        self.image_shape = image_shape
        self.scale = scale
        self.time_ordered = time_ordered
        self.time_gap = time_gap
        self.metric = metric
        self.seed = seed

    # ------------------------------------------------------------------ building
    def _module(self) -> tuple[type[nn.Module], dict[str, Any]]:
        m = self.model
        n_out = self.n_classes if self.task == "classification" else 1
        if m.kind == "cnn":
            if self.image_shape is None:
                raise ValueError("model.kind=cnn needs image input (data.source=digits); use model.kind=mlp")
            return CNN, dict(image_shape=self.image_shape, n_out=n_out, channels=m.channels,
                             kernel_size=m.kernel_size, hidden=m.hidden, activation=m.activation,
                             dropout=m.dropout, batch_norm=m.batch_norm)
        if m.kind == "rnn":
            return RNN, dict(n_in=self.n_features, n_out=n_out, hidden=m.hidden, cell=m.cell,
                             layers=m.rnn_layers, dropout=m.dropout)
        return MLP, dict(n_in=self.n_features, n_out=n_out, hidden=m.hidden, activation=m.activation,
                         dropout=m.dropout, batch_norm=m.batch_norm)

    def _net(self, X_eval: Any, y_eval: Any, on_epoch: Callable[..., None] | None) -> Any:
        t = self.train
        module, margs = self._module()
        opt, oargs = _optimizer(t)
        es = t.early_stopping
        # The held-out curve comes first among the epoch-end callbacks: early stopping ends training by
        # raising in its on_epoch_end, and the stopping epoch must still get its curve point.
        callbacks: list[tuple[str, Callback]] = [
            ("curve", _HeldOutCurve(X_eval, y_eval, self._curve_metric(), on_epoch)),
        ]
        if t.clip_grad_norm is not None:
            callbacks.append(("clip", GradientNormClipping(gradient_clip_value=t.clip_grad_norm)))
        sched = _schedule(t, "valid_loss" if es else "train_loss")
        if sched is not None:
            callbacks.append(("schedule", sched))
        train_split = None
        if es is not None:
            train_split = InnerSplit(es.valid_fraction, stratified=self.task == "classification",
                                     time_ordered=self.time_ordered, seed=self.seed, gap=self.time_gap)
            callbacks.append(("early_stopping", _EarlyStopping(
                monitor="valid_loss", patience=es.patience, threshold=es.min_delta, threshold_mode="abs",
                lower_is_better=True, load_best=es.restore_best)))
        common: dict[str, Any] = dict(
            module=module, optimizer=opt, lr=t.lr, max_epochs=t.max_epochs,
            batch_size=t.batch_size, train_split=train_split, callbacks=callbacks, verbose=0,
            iterator_train=TensorBatches, iterator_valid=TensorBatches, iterator_train__shuffle=True,
            device=t.device, l1=t.l1, l2_explicit=t.weight_decay if t.optimizer == "lbfgs" else 0.0,
            init_scheme=self.model.init, init_activation=self.model.activation,
            **{f"module__{k}": v for k, v in margs.items()},
            **{f"optimizer__{k}": v for k, v in oargs.items()},
        )
        if self.task == "classification":
            return _Classifier(criterion=nn.CrossEntropyLoss, classes=list(range(self.n_classes)), **common)
        return _Regressor(criterion=nn.MSELoss, **common)

    @property
    def curve_metric_name(self) -> str:
        """The metric of the held-out learning curve: the primary metric (accuracy / rmse when unset)."""
        return self.metric or ("accuracy" if self.task == "classification" else "rmse")

    def _curve_metric(self) -> Callable[[np.ndarray, np.ndarray], float]:
        """The primary metric on (network outputs, fitted targets), in the units `predict` reports."""
        from gencv.metrics import METRICS

        m = METRICS[self.curve_metric_name]
        func = m.fast or m.func  # per epoch: the numpy version, held to sklearn's number by the tests
        labels = list(range(self.n_classes))

        def curve(out: np.ndarray, y: np.ndarray) -> float:
            if self.task == "regression":  # back from standardised units
                return float(func(np.ravel(y) * self.y_std_ + self.y_mean_,
                                  np.ravel(out).astype(np.float64) * self.y_std_ + self.y_mean_))
            if m.needs_proba:
                proba = torch.softmax(torch.as_tensor(out, dtype=torch.float64), dim=1).numpy()
                return float(func(y, proba, labels))
            return float(func(y, out.argmax(1)))
        return curve

    def _y_fit(self, y: np.ndarray) -> np.ndarray:
        if self.task == "classification":
            return np.asarray(y, dtype=np.int64)
        return ((np.asarray(y, dtype=np.float32) - self.y_mean_) / self.y_std_).reshape(-1, 1).astype(np.float32)

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        *,
        X_eval: np.ndarray | None = None,
        y_eval: np.ndarray | None = None,
        on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> GencvEstimator:
        """Fit preprocessing on X only, then the net; X_eval/y_eval only feed the learning curve."""
        if self.task == "regression":
            y64 = np.asarray(y, dtype=np.float64)
            self.y_mean_ = float(y64.mean())
            self.y_std_ = float(y64.std()) or 1.0
        self.preprocess_ = make_preprocessor(self.scale).fit(X)
        Xt = self.preprocess_.transform(X)
        Xe = self.preprocess_.transform(X_eval) if X_eval is not None and len(X_eval) else None
        ye = self._y_fit(y_eval) if Xe is not None and y_eval is not None else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = self._net(Xe, ye, on_epoch)
            net.initialize()
            self.init_state_ = {k: v.detach().clone() for k, v in net.module_.state_dict().items()}
            yt = self._y_fit(y)
            # skorch's partial_fit swallows KeyboardInterrupt (it just stops training); we let
            # Ctrl-C and SIGTERM propagate so the run is marked KILLED instead of half-trained.
            net.notify("on_train_begin", X=Xt, y=yt)
            try:
                net.fit_loop(Xt, yt)
            except _StopTraining:
                pass
            net.notify("on_train_end", X=Xt, y=yt)
        self.net_ = net
        split = net.train_split
        self.inner_valid_positions_ = getattr(split, "last_valid_positions_", None)
        self._set_history_stats()
        return self

    def _set_history_stats(self) -> None:
        h = self.net_.history
        self.epochs_run_ = len(h)
        stopper = dict(self.net_.callbacks_).get("early_stopping")
        # The epoch early stopping judged best (min_delta applied): the weights restored when restore_best.
        best = int(getattr(stopper, "best_epoch_", 0) or 0)
        self.best_epoch_ = best if best > 0 else self.epochs_run_

    # ------------------------------------------------------------------ predicting
    def _outputs(self, X: np.ndarray) -> torch.Tensor:
        Xt = torch.as_tensor(self.preprocess_.transform(X))
        module = self.net_.module_
        was = module.training
        module.eval()
        try:
            with torch.no_grad():
                chunks = [module(Xt[i : i + 4096].to(self.net_.device)).cpu() for i in range(0, len(Xt), 4096)]
        finally:
            module.train(was)
        return torch.cat(chunks) if chunks else torch.empty(0)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if self.task != "classification":
            raise AttributeError("predict_proba is only defined for classification")
        return torch.softmax(self._outputs(X).double(), dim=1).numpy()

    def predict(self, X: np.ndarray) -> np.ndarray:
        out = self._outputs(X)
        if self.task == "classification":
            return out.argmax(1).numpy()
        return out.double().numpy().ravel() * self.y_std_ + self.y_mean_

    def loss(self, X: np.ndarray, y: np.ndarray) -> float:
        """Mean criterion (cross-entropy or MSE in standardised units) with dropout off, no penalty."""
        out = self._outputs(X)
        yt = torch.as_tensor(self._y_fit(y))
        return float(self.net_.criterion_(out, yt))

    def to_torch(self) -> nn.Module:
        """A self-contained torch module: raw features in, probabilities or target-unit values out."""
        return ExportedModel.from_estimator(self)


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
    def from_estimator(cls, est: GencvEstimator) -> ExportedModel:
        import copy

        scaler = est.preprocess_.named_steps["scale"]
        d = est.n_features
        if isinstance(scaler, StandardScaler):
            shift, scale = torch.as_tensor(scaler.mean_), torch.as_tensor(scaler.scale_)
        elif isinstance(scaler, MinMaxScaler):
            # MinMaxScaler computes x * scale_ + min_, i.e. (x - shift) / scale with these:
            scale = 1.0 / torch.as_tensor(scaler.scale_)
            shift = -torch.as_tensor(scaler.min_) * scale
        else:
            shift, scale = torch.zeros(d), torch.ones(d)
        net = copy.deepcopy(est.net_.module_).cpu().eval()
        return cls(net, shift, scale, est.task, getattr(est, "y_mean_", 0.0), getattr(est, "y_std_", 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net((x.float() - self.shift) / self.scale)
        if self.task == "classification":
            return torch.softmax(out, dim=1)
        return out * self.y_std + self.y_mean
