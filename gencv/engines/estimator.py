"""`GencvEstimator`: preprocessing + a skorch net for one fold, with the scikit-learn estimator contract."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, MinMaxScaler, StandardScaler
from skorch.callbacks import Callback, GradientNormClipping
from torch import nn

from gencv.engines.optim import make_optimizer, make_schedule
from gencv.engines.skorch_net import (
    FoldEarlyStopping,
    HeldOutCurve,
    InnerSplit,
    SkorchClassifier,
    SkorchRegressor,
    StopTraining,
    TensorBatches,
)
from gencv.models import CNN, MLP, RNN
from gencv.spec import ModelSpec, TrainSpec

log = logging.getLogger(__name__)



def _to_float32(X: np.ndarray, dtype: str = "float32") -> np.ndarray:
    return np.asarray(X, dtype=dtype)



def make_preprocessor(scale: str, dtype: str = "float32") -> Pipeline:
    """Scaler (fit on the training fold only) followed by a cast to `dtype` (train.dtype)."""
    scaler: Any = {"standard": StandardScaler(), "minmax": MinMaxScaler(), "none": "passthrough"}[scale]
    return Pipeline([("scale", scaler), ("float32", FunctionTransformer(_to_float32, kw_args={"dtype": dtype}))])



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

    def _net(self, X_eval: Any, y_eval: Any, on_epoch: Callable[..., None] | None,
             groups: np.ndarray | None = None) -> Any:
        t = self.train
        module, margs = self._module()
        opt, oargs = make_optimizer(t)
        es = t.early_stopping
        # The held-out curve comes first among the epoch-end callbacks: early stopping ends training by
        # raising in its on_epoch_end, and the stopping epoch must still get its curve point.
        callbacks: list[tuple[str, Callback]] = [
            ("curve", HeldOutCurve(X_eval, y_eval, self._curve_metric(), on_epoch)),
        ]
        if t.clip_grad_norm is not None:
            callbacks.append(("clip", GradientNormClipping(gradient_clip_value=t.clip_grad_norm)))
        sched = make_schedule(t, "valid_loss" if es else "train_loss")
        if sched is not None:
            callbacks.append(("schedule", sched))
        train_split = self._inner_split(groups)
        if es is not None:
            callbacks.append(("early_stopping", FoldEarlyStopping(
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
            return SkorchClassifier(criterion=nn.CrossEntropyLoss, classes=list(range(self.n_classes)), **common)
        return SkorchRegressor(criterion=nn.MSELoss, **common)

    def _inner_split(self, groups: np.ndarray | None) -> InnerSplit | None:
        es = self.train.early_stopping
        if es is None:
            return None
        return InnerSplit(es.valid_fraction, stratified=self.task == "classification",
                          time_ordered=self.time_ordered, seed=self.seed, gap=self.time_gap, groups=groups)

    def fit_positions(self, y: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        """Positions of the rows `fit(X, y, groups=groups)` fits the network on (all but the early-stopping split).

        Deterministic given the estimator's seed, so the rows of a logged fit can be recovered without its state.
        """
        split = self._inner_split(groups)
        if split is None:
            return np.arange(len(y))
        y_codes = np.asarray(y).astype(int) if self.task == "classification" else None
        return split.positions(len(y), y_codes)[0]

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

    def encode_target(self, y: np.ndarray) -> np.ndarray:
        if self.task == "classification":
            return np.asarray(y, dtype=np.int64)
        dtype = self.train.dtype
        return ((np.asarray(y, dtype=dtype) - self.y_mean_) / self.y_std_).reshape(-1, 1).astype(dtype)

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        *,
        X_eval: np.ndarray | None = None,
        y_eval: np.ndarray | None = None,
        on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
        groups: np.ndarray | None = None,
    ) -> GencvEstimator:
        """Fit preprocessing on X only, then the net; X_eval/y_eval only feed the learning curve.

        `groups` (one label per row of X): early stopping then holds out whole groups.
        """
        if self.task == "regression":
            y64 = np.asarray(y, dtype=np.float64)
            self.y_mean_ = float(y64.mean())
            self.y_std_ = float(y64.std()) or 1.0
        self.preprocess_ = make_preprocessor(self.scale, self.train.dtype).fit(X)
        Xt = self.preprocess_.transform(X)
        Xe = self.preprocess_.transform(X_eval) if X_eval is not None and len(X_eval) else None
        ye = self.encode_target(y_eval) if Xe is not None and y_eval is not None else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = self._net(Xe, ye, on_epoch, groups)
            net.initialize()
            net.module_.to(getattr(torch, self.train.dtype))  # in place: the optimizer keeps its parameters
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
        self.net_ = net
        split = net.train_split
        self.inner_valid_positions_ = getattr(split, "last_valid_positions_", None)
        self.fit_positions_ = getattr(split, "last_train_positions_", None)
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
        yt = torch.as_tensor(self.encode_target(y))
        return float(self.net_.criterion_(out, yt))

    @property
    def module_(self) -> nn.Module:
        """The fitted torch network (logits or standardised values out; preprocessing not included)."""
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
            if "curve_valid_score" in h:
                row[score_name] = float(h["curve_valid_score"])
            rows.append(row)
        return rows

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
        net = copy.deepcopy(est.net_.module_).cpu().float().eval()
        return cls(net, shift, scale, est.task, getattr(est, "y_mean_", 0.0), getattr(est, "y_std_", 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net((x.float() - self.shift) / self.scale)
        if self.task == "classification":
            return torch.softmax(out, dim=1)
        return out * self.y_std + self.y_mean

