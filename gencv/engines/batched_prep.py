"""The batched engine's members before training: each fold's checks, target encoding, scaling, initialization
and early-stopping split, as `NetEstimator.fit` does them for that fold.

The first fold of a configuration goes through `NetEstimator.prepare_fit` itself. The others reuse its work
where the result cannot differ: the data are checked once (a fold's rows of checked data are the checked
rows), and a standard scaler's statistics are computed with scikit-learn's own formulas on the fold's rows,
without scikit-learn's per-call checks (about 3 ms a fold; the tests hold every fitted attribute to
`prepare_fit`'s). Data with missing values, categorical columns or a min-max scaler take the general path.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data
from torch import nn

from gencv.engines.estimator import x_checks
from gencv.models import init_weights_
from gencv.splits import Fold

__all__ = ["Member", "MemberPrep"]


@dataclass
class Member:
    """One fold's state while the stack trains."""

    fold: Fold
    seed: int
    est: Any
    train: Any  # the estimator's TrainSpec
    module: nn.Module
    gen: torch.Generator  # the fold seed's stream after initialization: the shuffle orders
    X: torch.Tensor  # preprocessed fit rows
    y: torch.Tensor
    X_es: torch.Tensor | None
    y_es: torch.Tensor | None
    X_ev: torch.Tensor | None
    y_ev: np.ndarray | None
    curve: Any
    model: Any  # the estimator's ModelSpec
    history: list[dict[str, Any]] = field(default_factory=list)
    alive: bool = True
    error: Exception | None = None
    misses: int = 0
    threshold: float = math.inf
    best_epoch: int = 0
    has_best: bool = False
    stop_epoch: int = 0  # train.stop_at_train_loss: the epoch the fitted rows' loss reached it (0: not reached)
    config: int = 0  # which configuration of a population (fit_population's estimator index)
    pruned: tuple[int, float, float] | None = None  # population pruning: (epoch, its configuration's loss, median)


class MemberPrep:
    """Prepares the members of one configuration (`estimator`) on the folds of one data set, in fold order."""

    def __init__(self, estimator: Any, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None,
                 eval_on_valid: bool) -> None:
        self.estimator, self.X, self.y, self.eval_on_valid = estimator, X, y, eval_on_valid
        self.groups = None if groups is None else np.asarray(groups)
        self.first: Any = None  # the first member's fitted estimator: the template of the others
        self.checked: tuple[np.ndarray, np.ndarray] | None = None
        self.specs: tuple[Any, Any] = (None, None)  # the configuration's ModelSpec and TrainSpec

    def member(self, fold: Fold, seed: int) -> Member:
        if self.first is None:
            est = clone(self.estimator).set_params(random_state=seed)
            model, t, Xt, yf = est.prepare_fit(self.X[fold.train], self.y[fold.train])
            self.first, self.checked, self.specs = est, self._check_all(est), (model, t)
            X_ev = None if not (self.eval_on_valid and len(fold.valid)) else est.scaled(self.X[fold.valid])
            return self._finish(est, fold, seed, model, t, Xt, yf, X_ev)
        if self.checked is None or not _plain(self.first.preprocess_) or len(fold.train) < 2:
            est = clone(self.estimator).set_params(random_state=seed)
            model, t, Xt, yf = est.prepare_fit(self.X[fold.train], self.y[fold.train])
            X_ev = None if not (self.eval_on_valid and len(fold.valid)) else est.scaled(self.X[fold.valid])
            return self._finish(est, fold, seed, model, t, Xt, yf, X_ev)
        Xc, yc = self.checked
        est = _shallow(self.first)  # the settings (read only) and checks of the first fold; its own fitted state:
        est.random_state = seed
        est._seed_ = est._seed()
        yf = yc[fold.train]
        est._set_target_(yf, checked=True)
        est.preprocess_, Xt = _refit(self.first.preprocess_, Xc[fold.train])
        est.n_inputs_ = int(Xt.shape[1])
        X_ev = None
        if self.eval_on_valid and len(fold.valid):
            X_ev = _transform(est.preprocess_, Xc[fold.valid])
        model, t = self.specs
        return self._finish(est, fold, seed, model, t, Xt, yf, X_ev)

    def _check_all(self, est: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """The whole data checked as `prepare_fit` checks a fold's rows (None: some rows fail; each fold then
        checks its own, so that only the folds holding them fail)."""
        probe = copy.copy(est)
        try:
            X, y = validate_data(probe, self.X, self.y, ensure_min_samples=2, y_numeric=est.task == "regression",
                                 **x_checks(est.categorical_features, est.impute))
            if est.task == "classification":
                check_classification_targets(y)
        except ValueError:
            return None
        return X, y

    def _finish(self, est: Any, fold: Fold, seed: int, model: Any, t: Any, Xt: np.ndarray, yf: np.ndarray,
                X_ev: np.ndarray | None) -> Member:
        yt = est.encode_target(yf)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(est._seed_)  # as NetEstimator.fit: the module's init draws ...
            factory, args = est._module(model, est.n_inputs_)  # est.build_module, with the specs at hand
            module = init_weights_(factory(**args), model.init, model.activation)
            if t.dtype != "float32":
                module = module.to(getattr(torch, t.dtype))
            gen = torch.Generator()
            gen.set_state(torch.get_rng_state())  # ... then TensorBatches' shuffles continue the stream
        est.init_state_ = {k: v.detach().clone() for k, v in module.state_dict().items()}
        groups = None if self.groups is None else self.groups[fold.train]
        split = est._inner_split(t.early_stopping, groups)
        if split is None:
            fit_pos, es_pos = None, None
        else:
            codes = np.asarray(yt).astype(int) if est.task == "classification" else None
            fit_pos, es_pos = split.positions(len(yt), codes)
        est.fit_positions_, est.inner_valid_positions_ = fit_pos, es_pos
        Xt_t, yt_t = torch.as_tensor(Xt), torch.as_tensor(yt)
        y_ev = None if X_ev is None else est.encode_target(self.y[fold.valid])
        return Member(
            fold=fold, seed=seed, est=est, train=t, module=module, gen=gen,
            X=Xt_t if fit_pos is None else Xt_t[torch.as_tensor(fit_pos)],
            y=yt_t if fit_pos is None else yt_t[torch.as_tensor(fit_pos)],
            X_es=None if es_pos is None else Xt_t[torch.as_tensor(es_pos)],
            y_es=None if es_pos is None else yt_t[torch.as_tensor(es_pos)],
            X_ev=None if X_ev is None else torch.as_tensor(X_ev), y_ev=y_ev, curve=est._curve_metric(), model=model)


def _shallow(obj: Any) -> Any:
    """`copy.copy` of an estimator without scikit-learn's pickling hooks (`__getstate__` / `__setstate__`, which
    copy.copy goes through and which cost more than the copy): the same attributes, shared values."""
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__)
    return new


def _plain(pipeline: Pipeline) -> bool:
    """A standard scaler (or none) and the cast: the preprocessing `_refit` reproduces."""
    steps = pipeline.named_steps
    scaler = steps.get("scale")
    return list(steps) == ["scale", "float32"] and (scaler == "passthrough" or (
        type(scaler) is StandardScaler and scaler.with_mean and scaler.with_std))


def _refit(template: Pipeline, X: np.ndarray) -> tuple[Pipeline, np.ndarray]:
    """`template` (a fitted `_plain` pipeline) fitted anew on X, and X transformed: StandardScaler's statistics
    by its own formulas (`_incremental_mean_and_var` from nothing, `_is_constant_feature`,
    `_handle_zeros_in_scale`) on checked, finite X."""
    pipe = _shallow(template)  # the cast step is stateless: shared; the scaler's statistics are the fold's own
    scaler = template.named_steps["scale"]
    if scaler != "passthrough":
        scaler = _shallow(scaler)
        pipe.steps = [("scale", scaler), template.steps[1]]
        n = X.shape[0]
        total = np.sum(X, axis=0, dtype=np.float64)
        mean = total / n
        temp = X - mean
        correction = np.sum(temp, axis=0)
        temp **= 2
        var = (np.sum(temp, axis=0) - correction**2 / n) / n
        eps = np.finfo(np.float64).eps
        scale = np.sqrt(var)
        scale[var <= n * eps * var + (n * mean * eps) ** 2] = 1.0
        scaler.mean_, scaler.var_, scaler.scale_, scaler.n_samples_seen_ = mean, var, scale, np.float64(n)
    return pipe, _transform(pipe, X)


def _transform(pipe: Pipeline, X: np.ndarray) -> np.ndarray:
    """What `pipe.transform` (a `_plain` pipeline) gives for checked, finite X."""
    scaler = pipe.named_steps["scale"]
    if scaler != "passthrough":
        X = np.array(X, dtype=X.dtype if X.dtype in (np.float32, np.float64) else np.float64)
        X -= scaler.mean_.astype(X.dtype)
        X /= scaler.scale_.astype(X.dtype)
    return np.asarray(X, dtype=pipe.named_steps["float32"].kw_args["dtype"])
