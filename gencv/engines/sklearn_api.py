"""`NetClassifier` and `NetRegressor`: gencv's networks as plain scikit-learn estimators.

Flat keyword settings (the spec's `model.*` and `train.*` fields), shapes and classes inferred in
`fit`, per-fit scaling inside, early stopping validated inside the data given to `fit`. The
reference engine trains these same estimators (`estimator_from_spec` builds one from a spec).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from skorch.callbacks import Callback, GradientNormClipping
from torch import nn

from gencv.augment import make_augmenter
from gencv.engines.estimator import (
    CurveMetric as _CurveMetric,
    ExportedModel,
    early_stopping_spec as _early_stopping,
    make_preprocessor,
    param_names,
    schedule_spec as _schedule,
    x_checks,
)
from gencv.engines.optim import make_optimizer, make_schedule
from gencv.engines.skorch_net import (
    FoldEarlyStopping,
    HeldOutCurve,
    InnerSplit,
    SkorchClassifier,
    SkorchRegressor,
    StopAtTrainLoss,
    StopTraining,
    TensorBatches,
)
from gencv.engines.transfer import transfer_
from gencv.models import CNN, MLP, RNN, check_output, module_args
from gencv.spec import EarlyStoppingSpec, ModelSpec, TrainSpec

__all__ = ["SKLEARN_EXPECTED_FAILED_CHECKS", "NetClassifier", "NetEstimator", "NetRegressor"]

log = logging.getLogger(__name__)

#: scikit-learn estimator checks a network cannot pass: check name -> reason. Pass it to
#: `parametrize_with_checks(..., expected_failed_checks=lambda est: SKLEARN_EXPECTED_FAILED_CHECKS)`.
SKLEARN_EXPECTED_FAILED_CHECKS: dict[str, str] = {
    "check_methods_subset_invariance": (
        "the network computes in float32, and a float32 matrix product's rounding depends on how many rows it is "
        "given (BLAS blocking): predictions on a subset agree with those on the whole set to about 1e-7 relative, "
        "not to the check's atol=1e-7 on values of order 1"),
}

_BUILTIN = {"mlp": MLP, "cnn": CNN, "rnn": RNN}


class NetEstimator(BaseEstimator):
    """Preprocessing + a skorch-trained torch network; the shared base of NetClassifier and NetRegressor.

    Parameters
    ----------
    module : "mlp", "cnn", "rnn", a torch ``nn.Module`` subclass or a function that returns one
        The network. One of your own gets ``n_features``/``n_outputs``/``image_shape`` (those its signature
        has) and its ``module__*`` settings; the built-in ones also take hidden, activation, ... below.
    hidden, activation, dropout, batch_norm, init, channels, kernel_size, cell, rnn_layers
        The spec's ``model.*`` fields (``init`` also applies to a module of your own).
    optimizer, lr, momentum, weight_decay, l1, batch_size, max_epochs, clip_grad_norm, device, dtype
        The spec's ``train.*`` fields (``dtype``: "float32", or "float64" for reference checks between engines).
    schedule : None, a kind name, a dict of ``train.schedule`` fields, or a ScheduleSpec
    early_stopping : bool, a dict of ``train.early_stopping`` fields, or an EarlyStoppingSpec
        Validated on a split *inside* the data given to ``fit`` (the last block when ``time_ordered``,
        whole groups when ``fit`` gets ``groups``).
    stop_at_train_loss : float or None
        Train until the data loss (no penalty, dropout off) on the rows given to ``fit`` is <= this, checked
        after every epoch, or ``max_epochs``; needs ``early_stopping=False``. Sets ``stop_reached_``, ``stop_epoch_``.
    max_members : int or None
        The batched engine's most folds per stack (None: as many as fit its memory budget); no effect on ``fit``.
    scale : "standard", "minmax" or "none"
        Feature scaling, fitted on the data given to ``fit`` only.
    impute, categorical, categorical_features : as `make_preprocessor` (missing values, category encoding)
    time_ordered, time_gap
        Rows are in time order: early stopping holds out the last block, ``time_gap`` rows before it left out.
    image_shape : (C, H, W) for ``module="cnn"``
    augment : None, a dict of ``data.augment`` fields or an AugmentSpec: training batches only (`gencv.augment`)
    classes : the label set (a training fold may lack a class); None: the labels seen by ``fit``
    metric : the metric of the per-epoch held-out curve (default accuracy / rmse)
    base, base_lr_factor : the weights to start from (`transfer.BaseWeights`), the lr factor of its trained layers
    random_state : int, RandomState or None
        Seeds weight init, shuffling, dropout and the early-stopping split.
    **kwargs : ``module__<name>=value``, passed to the module's constructor (as in skorch).
    """

    task = "classification"
    _module_prefix = "module__"

    def __init__(
        self,
        module: str | type[nn.Module] = "mlp",
        *,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        dropout: float = 0.1,
        batch_norm: bool = False,
        init: str = "he",
        channels: Sequence[int] = (16, 32),
        kernel_size: int = 3,
        cell: str = "lstm",
        rnn_layers: int = 1,
        optimizer: str = "adam",
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        l1: float = 0.0,
        batch_size: int = 32,
        max_epochs: int = 50,
        schedule: Any = "cosine",
        clip_grad_norm: float | None = None,
        early_stopping: Any = True,
        stop_at_train_loss: float | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        max_members: int | None = None,
        scale: str = "standard",
        impute: str = "none",
        categorical: str = "onehot",
        categorical_features: Sequence[int] | None = None,
        time_ordered: bool = False,
        time_gap: int = 0,
        image_shape: tuple[int, ...] | None = None,
        augment: Any = None,
        classes: Any = None,
        metric: str | None = None,
        base: Any = None,
        base_lr_factor: float = 1.0,
        random_state: Any = None,
        **kwargs: Any,
    ) -> None:
        self.module = module
        self.hidden = hidden
        self.activation = activation
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.init = init
        self.channels = channels
        self.kernel_size = kernel_size
        self.cell = cell
        self.rnn_layers = rnn_layers
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.l1 = l1
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.schedule = schedule
        self.clip_grad_norm = clip_grad_norm
        self.early_stopping = early_stopping
        self.stop_at_train_loss = stop_at_train_loss
        self.device = device
        self.dtype = dtype
        self.max_members = max_members
        self.scale = scale
        self.impute = impute
        self.categorical = categorical
        self.categorical_features = categorical_features
        self.time_ordered = time_ordered
        self.time_gap = time_gap
        self.image_shape = image_shape
        self.augment = augment
        self.classes = classes
        self.metric = metric
        self.base = base
        self.base_lr_factor = base_lr_factor
        self.random_state = random_state
        self._unexpected_kwargs: dict[str, Any] = {}
        self._store_kwargs(kwargs)

    # ------------------------------------------------------------------ parameters
    @classmethod
    def _get_param_names(cls) -> list[str]:  # once per class: clone/get_params ask on every call (LOO fold setup)
        return list(param_names(cls))

    def _store_kwargs(self, kwargs: dict[str, Any]) -> None:
        """`module__<name>` settings become attributes (as in skorch); anything else is kept and refused by `fit`."""
        for key, value in kwargs.items():
            if key.startswith(self._module_prefix) and len(key) > len(self._module_prefix):
                setattr(self, key, value)
            else:
                self._unexpected_kwargs[key] = value

    def _check_kwargs(self) -> None:
        from gencv.errors import did_you_mean

        if self._unexpected_kwargs:
            names = sorted(self._get_param_names())
            bad = ", ".join(repr(k) + did_you_mean(k, names) for k in self._unexpected_kwargs)
            raise TypeError(f"{type(self).__name__}: got unexpected setting(s) {bad}; settings for the module's "
                            f"constructor are passed as {self._module_prefix}<name>=value")

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        params = super().get_params(deep=deep)
        params.update({k: v for k, v in vars(self).items() if k.startswith(self._module_prefix)})
        params.update(self._unexpected_kwargs)  # so that a clone keeps them, and its fit refuses them too
        return params

    def set_params(self, **params: Any) -> NetEstimator:
        names = set(self._get_param_names())
        self._store_kwargs({k: params.pop(k) for k in list(params) if k not in names and "__" not in k
                            or k.startswith(self._module_prefix)})
        super().set_params(**params)
        return self

    def _module_kwargs(self) -> dict[str, Any]:
        n = len(self._module_prefix)
        return {k[n:]: v for k, v in vars(self).items() if k.startswith(self._module_prefix)}

    def _specs(self) -> tuple[ModelSpec, TrainSpec]:
        """The settings, validated by the spec's own models (errors name the setting)."""
        kind = self.module if isinstance(self.module, str) else "mlp"
        try:
            model = ModelSpec(kind=kind, hidden=list(self.hidden), activation=self.activation, dropout=self.dropout,
                              batch_norm=self.batch_norm, init=self.init, channels=list(self.channels),
                              kernel_size=self.kernel_size, cell=self.cell, rnn_layers=self.rnn_layers)
            train = TrainSpec(optimizer=self.optimizer, lr=self.lr, momentum=self.momentum,
                              weight_decay=self.weight_decay, l1=self.l1, batch_size=self.batch_size,
                              max_epochs=self.max_epochs, schedule=_schedule(self.schedule),
                              clip_grad_norm=self.clip_grad_norm, early_stopping=_early_stopping(self.early_stopping),
                              stop_at_train_loss=self.stop_at_train_loss, device=self.device, dtype=self.dtype,
                              max_members=self.max_members, base_lr_factor=self.base_lr_factor)
        except ValidationError as exc:
            raise ValueError(f"{type(self).__name__}: invalid setting(s):\n{exc}") from None
        if self.scale not in ("standard", "minmax", "none"):
            raise ValueError(f"scale: got {self.scale!r}; use 'standard', 'minmax' or 'none'")
        return model, train

    def _seed(self) -> int:
        if isinstance(self.random_state, (int, np.integer)):
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    # ------------------------------------------------------------------ building
    def _n_out(self) -> int:
        return 1

    def build_module(self, n_features: int) -> nn.Module:
        """The untrained network for `n_features` inputs (a classifier needs `classes=` or a fit for its outputs)."""
        module, args = self._module(self._specs()[0], n_features)
        return module(**args)

    def _module(self, model: ModelSpec, n_in: int) -> tuple[Callable[..., nn.Module], dict[str, Any]]:
        """The module's class (or factory) and its constructor arguments; sizes under `models.SIZE_NAMES`."""
        n_out = self._n_out()
        extra = self._module_kwargs()
        if not isinstance(self.module, str):
            if not callable(self.module) or isinstance(self.module, nn.Module):
                raise ValueError(f"module: got {self.module!r}; use 'mlp', 'cnn', 'rnn', a torch nn.Module subclass "
                                 "or a function that returns one")
            return self.module, module_args(self.module, extra, n_features=n_in, n_outputs=n_out,
                                            image_shape=self.image_shape)
        m = model
        if self.module == "cnn":
            if self.image_shape is None:
                raise ValueError("module='cnn' needs image_shape=(channels, height, width) (model.kind=cnn needs "
                                 "image input, data.source=digits); use module='mlp'")
            args: dict[str, Any] = dict(image_shape=self.image_shape, n_outputs=n_out, channels=m.channels,
                                        kernel_size=m.kernel_size, hidden=m.hidden, activation=m.activation,
                                        dropout=m.dropout, batch_norm=m.batch_norm)
        elif self.module == "rnn":
            args = dict(n_features=n_in, n_outputs=n_out, hidden=m.hidden, cell=m.cell, layers=m.rnn_layers,
                        dropout=m.dropout)
        else:
            args = dict(n_features=n_in, n_outputs=n_out, hidden=m.hidden, activation=m.activation, dropout=m.dropout,
                        batch_norm=m.batch_norm)
        return _BUILTIN[self.module], args | extra

    def check_module(self, X: Any, y: Any) -> None:
        """Build a module of your own once and run it on a few rows of X, before any training: a constructor
        that refuses its arguments or an output of the wrong shape is one SpecError naming the field."""
        if isinstance(self.module, str):
            return
        X = np.asarray(X)
        labels = self.classes if self.classes is not None else y
        n_out = len(np.unique(np.asarray(labels))) if self.task == "classification" else 1
        factory, args = self.module, module_args(self.module, self._module_kwargs(), n_features=X.shape[1],
                                                 n_outputs=n_out, image_shape=self.image_shape)
        check_output(factory, args, X[:8], n_out, self.task)

    def _net(self, model: ModelSpec, train: TrainSpec, X_eval: Any, y_eval: Any,
             on_epoch: Callable[..., None] | None, groups: np.ndarray | None) -> Any:
        t = train
        module, margs = self._module(model, self.n_inputs_)
        opt, oargs = make_optimizer(t)
        es = t.early_stopping
        # The held-out curve comes first among the epoch-end callbacks: early stopping ends training by
        # raising in its on_epoch_end, and the stopping epoch must still get its curve point.
        callbacks: list[tuple[str, Callback]] = [("curve", HeldOutCurve(X_eval, y_eval, self._curve_metric(), on_epoch))]
        if t.clip_grad_norm is not None:
            callbacks.append(("clip", GradientNormClipping(gradient_clip_value=t.clip_grad_norm)))
        sched = make_schedule(t, "valid_loss" if es else "train_loss")
        if sched is not None:
            callbacks.append(("schedule", sched))
        if es is not None:
            callbacks.append(("early_stopping", FoldEarlyStopping(
                monitor="valid_loss", patience=es.patience, threshold=es.min_delta, threshold_mode="abs",
                lower_is_better=True, load_best=es.restore_best)))
        if t.stop_at_train_loss is not None:  # last: the stopping epoch still gets its curve point and schedule step
            callbacks.append(("stop_at_train_loss", StopAtTrainLoss(t.stop_at_train_loss)))
        common: dict[str, Any] = dict(
            module=module, optimizer=opt, lr=t.lr, max_epochs=t.max_epochs,
            batch_size=t.batch_size, train_split=self._inner_split(es, groups), callbacks=callbacks, verbose=0,
            iterator_train=TensorBatches, iterator_valid=TensorBatches, iterator_train__shuffle=True,
            device=t.device, l1=t.l1, l2_explicit=t.weight_decay if t.optimizer == "lbfgs" else 0.0,
            init_scheme=model.init, init_activation=model.activation, augment=make_augmenter(
                self.augment, seed=self._seed_, task=self.task, image_shape=self.image_shape,
                preprocess=self.preprocess_, n_features=self.n_features_in_),
            **{f"module__{k}": v for k, v in margs.items()},
            **{f"optimizer__{k}": v for k, v in oargs.items()},
        )
        if self.task == "classification":
            return SkorchClassifier(criterion=nn.CrossEntropyLoss, classes=list(range(self._n_out())), **common)
        return SkorchRegressor(criterion=nn.MSELoss, **common)

    def _inner_split(self, es: EarlyStoppingSpec | None, groups: np.ndarray | None) -> InnerSplit | None:
        if es is None:
            return None
        return InnerSplit(es.valid_fraction, stratified=self.task == "classification",
                          time_ordered=self.time_ordered, seed=self._seed_, gap=self.time_gap, groups=groups)

    @property
    def curve_metric_name(self) -> str:
        """The metric of the held-out learning curve: `metric` (accuracy / rmse when unset)."""
        return self.metric or ("accuracy" if self.task == "classification" else "rmse")

    def _curve_metric(self) -> _CurveMetric:
        return _CurveMetric(self.curve_metric_name, self.task, self._n_out(), getattr(self, "y_mean_", 0.0),
                            getattr(self, "y_std_", 1.0))

    # ------------------------------------------------------------------ targets
    def _set_target_(self, y: np.ndarray, checked: bool = False) -> None:
        """Fit the target encoding on `y` (classes, or the standardisation of a regression target); `checked`:
        y is a part of targets already checked as classification targets."""
        raise NotImplementedError

    def encode_target(self, y: np.ndarray) -> np.ndarray:
        """Targets as the network is trained on them."""
        raise NotImplementedError

    def fit_positions(self, y: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        """Positions of the rows `fit(X, y, groups=groups)` fits the network on (all but the early-stopping split).

        Deterministic given an int `random_state`, so the rows of a logged fit can be recovered without its state.
        """
        es = self._specs()[1].early_stopping
        if es is None:
            return np.arange(len(y))
        split = InnerSplit(es.valid_fraction, stratified=self.task == "classification",
                           time_ordered=self.time_ordered, seed=self._seed(), gap=self.time_gap, groups=groups)
        codes = self._codes(np.asarray(y), self._class_set(np.asarray(y))) if self.task == "classification" else None
        return split.positions(len(y), codes)[0]

    # ------------------------------------------------------------------ fitting
    def prepare_fit(self, X: Any, y: Any) -> tuple[ModelSpec, TrainSpec, np.ndarray, np.ndarray]:
        """`fit` up to the network: check settings and data, fix the seed, fit the target encoding and the
        scaling on X. Returns (model spec, train spec, scaled X, checked y); an engine that trains the
        network itself (the batched engine) starts from here."""
        self._check_kwargs()
        model, train = self._specs()
        X, y = validate_data(self, X, y, ensure_min_samples=2, y_numeric=self.task == "regression",
                             **x_checks(self.categorical_features, self.impute))
        self._seed_ = self._seed()
        self._set_target_(y)
        self.preprocess_ = make_preprocessor(self.scale, train.dtype, impute=self.impute, categorical=self.categorical,
                                             categorical_features=self.categorical_features, n_features=X.shape[1])
        Xt = self.preprocess_.fit_transform(X)
        self.n_inputs_ = int(Xt.shape[1])  # the network's input width (one-hot columns included)
        return model, train, Xt, y

    def scaled(self, X: Any) -> np.ndarray:
        """X checked and scaled as the fitted network takes it."""
        return self.preprocess_.transform(validate_data(self, X, reset=False,
                                                           **x_checks(self.categorical_features, self.impute)))

    def fit(
        self,
        X: Any,
        y: Any,
        *,
        X_eval: Any = None,
        y_eval: Any = None,
        on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
        groups: Any = None,
    ) -> NetEstimator:
        """Fit the scaling on X only, then the network; X_eval/y_eval only feed the per-epoch held-out curve.

        `groups` (one label per row of X): early stopping then holds out whole groups. `on_epoch(epoch, row)`
        is called after every epoch.
        """
        model, train, Xt, y = self.prepare_fit(X, y)
        Xe = ye = None
        if X_eval is not None and len(X_eval):
            Xe = self.scaled(X_eval)
            ye = None if y_eval is None else self.encode_target(np.asarray(y_eval))
            if ye is None:
                Xe = None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed_)
            net = self._net(model, train, Xe, ye, on_epoch, None if groups is None else np.asarray(groups))
            net.initialize()
            if train.dtype != "float32":
                net.module_.to(getattr(torch, train.dtype))  # in place: the optimizer keeps its parameters
            if self.base is not None:  # the base's weights over the seeded init; a new optimizer
                transfer_(net, self.base, n_inputs=self.n_inputs_, lr_factor=train.base_lr_factor, init=model.init,
                          activation=model.activation)
            self.init_state_ = {k: v.detach().clone() for k, v in net.module_.state_dict().items()}
            yt = self.encode_target(y)
            # skorch's partial_fit swallows KeyboardInterrupt (it just stops training); we let
            # Ctrl-C and SIGTERM propagate so the run is marked KILLED instead of half-trained.
            net.notify("on_train_begin", X=Xt, y=yt)
            try:
                net.fit_loop(Xt, yt)
            except StopTraining:
                pass
            net.notify("on_train_end", X=Xt, y=yt)
        for _, cb in net.callbacks_:  # the held-out data and the caller's callback are not part of the model
            if isinstance(cb, HeldOutCurve):
                cb.X_eval = cb.y_eval = cb.on_epoch = None
        self.net_ = net
        split = net.train_split
        self.inner_valid_positions_ = getattr(split, "last_valid_positions_", None)
        self.fit_positions_ = getattr(split, "last_train_positions_", None)
        h = net.history
        self.epochs_run_ = len(h)
        stopper = dict(net.callbacks_).get("early_stopping")
        # The epoch early stopping judged best (min_delta applied): the weights restored when restore_best.
        best = int(getattr(stopper, "best_epoch_", 0) or 0)
        self.best_epoch_ = best if best > 0 else self.epochs_run_
        target = dict(net.callbacks_).get("stop_at_train_loss")
        # Whether and when the fitted rows' loss reached train.stop_at_train_loss (None: no such target).
        self.stop_reached_ = None if target is None else bool(target.reached_)
        self.stop_epoch_ = None if target is None or not target.reached_ else int(target.stop_epoch_)
        return self

    # ------------------------------------------------------------------ predicting
    def _outputs(self, X: Any) -> torch.Tensor:
        check_is_fitted(self, "net_")
        Xt = torch.as_tensor(self.scaled(X))
        module = self.net_.module_
        was = module.training
        module.eval()
        try:
            with torch.no_grad():
                chunks = [module(Xt[i : i + 4096].to(self.net_.device)).cpu() for i in range(0, len(Xt), 4096)]
        finally:
            module.train(was)
        return torch.cat(chunks) if chunks else torch.empty(0)

    def loss(self, X: Any, y: Any) -> float:
        """Mean criterion (cross-entropy, or MSE in standardised units) with dropout off, no penalty."""
        out = self._outputs(X)
        yt = torch.as_tensor(self.encode_target(np.asarray(y)))
        return float(self.net_.criterion_(out, yt))

    @property
    def module_(self) -> nn.Module:
        """The fitted torch network (logits or standardised values out; scaling not included)."""
        check_is_fitted(self, "net_")
        return self.net_.module_

    def epoch_history(self) -> list[dict[str, float]]:
        """One row per epoch: train loss, early-stopping loss, held-out curve points, seconds."""
        rows = []
        score_name = f"curve_valid_{self.curve_metric_name}"
        for h in self.net_.history:
            row = {"epoch": float(h["epoch"]), "curve_train_loss": float(h.get("train_loss", np.nan)),
                   "seconds": float(h.get("dur", np.nan))}
            if "valid_loss" in h:
                row["curve_es_loss"] = float(h["valid_loss"])
            if "curve_valid_loss" in h:
                row["curve_valid_loss"] = float(h["curve_valid_loss"])
            if "curve_fit_loss" in h:  # train.stop_at_train_loss: the eval-mode data loss on the fitted rows
                row["curve_fit_loss"] = float(h["curve_fit_loss"])
            if "curve_valid_score" in h:
                row[score_name] = float(h["curve_valid_score"])
            rows.append(row)
        return rows

    def to_torch(self) -> nn.Module:
        """A self-contained torch module: raw features in, probabilities or target-unit values out."""
        return ExportedModel.from_estimator(self)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        # Same random_state, same network on the CPU; CUDA kernels need not be bitwise reproducible.
        tags.non_deterministic = self.device != "cpu"
        return tags

    # classes for NetClassifier; defined here so the encoding helpers are shared
    def _class_set(self, y: np.ndarray) -> np.ndarray:
        if self.classes is None:
            return np.unique(y)
        return np.unique(np.asarray(self.classes))

    @staticmethod
    def _codes(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
        codes = np.searchsorted(classes, y)
        bad = (codes >= len(classes)) | (classes[np.minimum(codes, len(classes) - 1)] != y)
        if bad.any():
            raise ValueError(f"y has label(s) {np.unique(y[bad]).tolist()[:10]} not in classes={classes.tolist()}; "
                             "pass classes= with every label")
        return codes.astype(np.int64)


class NetClassifier(ClassifierMixin, NetEstimator):
    """A gencv network as a scikit-learn classifier (cross-entropy on logits; `predict_proba` by softmax)."""

    task = "classification"

    def _set_target_(self, y: np.ndarray, checked: bool = False) -> None:
        if not checked:
            check_classification_targets(y)
        self.classes_ = self._class_set(y)
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 classes; got 1 class "
                             f"({self.classes_.tolist()}); pass classes= with the full label set")

    def _n_out(self) -> int:
        if hasattr(self, "classes_"):
            return len(self.classes_)
        if self.classes is None:
            raise ValueError("the number of outputs is set by fit, or by classes= before it")
        return len(np.unique(np.asarray(self.classes)))

    @property
    def n_classes(self) -> int:
        """The number of classes (the network's outputs)."""
        return len(self.classes_)

    def encode_target(self, y: np.ndarray) -> np.ndarray:
        return self._codes(np.asarray(y), self.classes_)

    def predict_proba(self, X: Any) -> np.ndarray:
        return torch.softmax(self._outputs(X).double(), dim=1).numpy()

    def predict(self, X: Any) -> np.ndarray:
        codes = self._outputs(X).argmax(1).numpy()
        return self.classes_[codes]


class NetRegressor(RegressorMixin, NetEstimator):
    """A gencv network as a scikit-learn regressor (MSE on the target standardised on the fit data)."""

    task = "regression"
    n_classes = 1

    def _set_target_(self, y: np.ndarray, checked: bool = False) -> None:
        y64 = np.asarray(y, dtype=np.float64)
        self.y_mean_ = float(y64.mean())
        self.y_std_ = float(y64.std()) or 1.0

    def encode_target(self, y: np.ndarray) -> np.ndarray:
        return ((np.asarray(y, dtype=self.dtype) - self.y_mean_) / self.y_std_).reshape(-1, 1).astype(self.dtype)

    def predict(self, X: Any) -> np.ndarray:
        return self._outputs(X).double().numpy().ravel() * self.y_std_ + self.y_mean_
