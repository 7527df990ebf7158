from __future__ import annotations

import numpy as np
import pytest
import torch

from gencv.data import load_dataset
from gencv.engines import NetEstimator, estimator_from_spec
from gencv.engines.skorch_net import InnerSplit
from gencv.errors import DivergenceError
from gencv.spec import DataSpec, EarlyStoppingSpec, ModelSpec, TrainSpec


def _est(task: str = "classification", n_features: int = 4, n_classes: int = 3, **train: object) -> NetEstimator:
    t = TrainSpec(max_epochs=int(train.pop("max_epochs", 5)), lr=float(train.pop("lr", 0.02)), **train)  # type: ignore[arg-type]
    return estimator_from_spec(ModelSpec(hidden=[8], dropout=0.0), t, task=task, n_classes=n_classes, random_state=3)


def test_inner_split_lies_inside_training_fold_and_at_its_end_for_time_series() -> None:
    y = np.arange(50) % 2
    tr, va = InnerSplit(0.2, stratified=True, time_ordered=False, seed=0).positions(50, y)
    assert len(va) == 10 and not set(tr) & set(va) and set(tr) | set(va) == set(range(50))
    assert np.bincount(y[va]).tolist() == [5, 5]  # stratified
    tr, va = InnerSplit(0.2, stratified=False, time_ordered=True, seed=0).positions(50, None)
    assert va.tolist() == list(range(40, 50)) and tr.max() < va.min()  # the last block, not skorch's first


def test_scaler_is_fit_on_the_training_fold_only() -> None:
    ds = load_dataset(DataSpec(source="iris"))
    X_tr, y_tr = ds.X[:100], ds.y[:100]
    est = _est().fit(X_tr, y_tr, X_eval=ds.X[100:], y_eval=ds.y[100:])
    scaler = est.preprocess_.named_steps["scale"]
    np.testing.assert_allclose(scaler.mean_, X_tr.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(scaler.scale_, X_tr.astype(np.float64).std(0), rtol=1e-6)
    assert not np.allclose(scaler.mean_, ds.X.mean(0), rtol=1e-3)


def test_logits_cross_entropy_dtypes_and_exported_model() -> None:
    ds = load_dataset(DataSpec(source="iris"))
    est = _est().fit(ds.X, ds.y)
    assert isinstance(est.net_.criterion_, torch.nn.CrossEntropyLoss)
    out = est._outputs(ds.X[:5])
    assert out.dtype == torch.float32 and not torch.allclose(out.exp().sum(1), torch.ones(5))  # logits, not probs
    proba = est.predict_proba(ds.X)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-9)
    exported = est.to_torch()
    with torch.no_grad():
        np.testing.assert_allclose(exported(torch.as_tensor(ds.X)).numpy(), proba, atol=1e-5)
    manual = float(torch.nn.functional.cross_entropy(torch.as_tensor(np.log(proba)), torch.as_tensor(ds.y)))
    assert est.loss(ds.X, ds.y) == pytest.approx(manual, rel=1e-4)


def test_regression_targets_are_standardised_on_the_fold_and_mapped_back() -> None:
    ds = load_dataset(DataSpec(source="diabetes"))
    est = _est("regression", n_features=10, max_epochs=30).fit(ds.X[:300], ds.y[:300])
    assert est.y_mean_ == pytest.approx(float(ds.y[:300].astype(np.float64).mean()))
    pred = est.predict(ds.X[300:])
    assert pred.shape == (142,) and 50 < pred.mean() < 250  # in target units, not standardised
    with torch.no_grad():
        exported = est.to_torch()(torch.as_tensor(ds.X[300:])).numpy().ravel()
    np.testing.assert_allclose(exported, pred, rtol=1e-4)


def test_same_seed_same_weights_different_seed_different() -> None:
    ds = load_dataset(DataSpec(source="iris"))
    a = _est().fit(ds.X, ds.y).predict_proba(ds.X)
    b = _est().fit(ds.X, ds.y).predict_proba(ds.X)
    np.testing.assert_array_equal(a, b)
    c = _est().set_params(random_state=4).fit(ds.X, ds.y).predict_proba(ds.X)
    assert not np.allclose(a, c)


def test_divergence_stops_at_the_first_bad_batch() -> None:
    ds = load_dataset(DataSpec(source="iris"))
    est = _est(optimizer="sgd", lr=1e3, max_epochs=50, early_stopping=None)
    with pytest.raises(DivergenceError) as info:
        est.fit(ds.X * 1e3, ds.y)
    assert info.value.epoch is not None and info.value.epoch < 50
    assert "lower train.lr" in str(info.value)


def test_l1_penalty_shrinks_weights() -> None:
    ds = load_dataset(DataSpec(source="wine"))
    plain = _est(n_features=13, max_epochs=30, early_stopping=None).fit(ds.X, ds.y)
    sparse = _est(n_features=13, max_epochs=30, early_stopping=None, l1=0.05).fit(ds.X, ds.y)
    w = lambda e: sum(float(p.detach().abs().sum()) for p in e.net_.module_.parameters() if p.dim() > 1)  # noqa: E731
    assert w(sparse) < 0.6 * w(plain)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "nadam", "lbfgs"])
def test_every_optimizer_trains(optimizer: str) -> None:
    ds = load_dataset(DataSpec(source="iris"))
    lr = 1.0 if optimizer == "lbfgs" else 0.05
    est = _est(optimizer=optimizer, lr=lr, max_epochs=15, early_stopping=None, weight_decay=1e-4,
               batch_size=150 if optimizer == "lbfgs" else 32).fit(ds.X, ds.y)
    assert (est.predict(ds.X) == ds.y).mean() > 0.7


@pytest.mark.parametrize("kind", ["step", "exponential", "cosine", "plateau"])
def test_schedules_change_the_learning_rate(kind: str) -> None:
    ds = load_dataset(DataSpec(source="iris"))
    est = _est(max_epochs=40 if kind == "plateau" else 6, schedule={"kind": kind, "step_size": 2, "gamma": 0.5, "patience": 0, "factor": 0.5},
               early_stopping=EarlyStoppingSpec(patience=50), clip_grad_norm=1.0).fit(ds.X, ds.y)
    lr = est.net_.optimizer_.param_groups[0]["lr"]
    assert lr < 0.02


def test_early_stopping_restores_best_epoch() -> None:
    ds = load_dataset(DataSpec(source="iris"))
    est = _est(max_epochs=60, lr=0.05, early_stopping=EarlyStoppingSpec(patience=3, valid_fraction=0.3)).fit(ds.X, ds.y)
    losses = est.net_.history[:, "valid_loss"]
    assert est.epochs_run_ < 60 and est.best_epoch_ == int(np.argmin(losses)) + 1
    assert est.epochs_run_ - est.best_epoch_ >= 3


def test_cnn_and_rnn_modules() -> None:
    from gencv.runner import make_estimator
    from gencv.spec import Experiment

    digits = load_dataset(DataSpec(source="digits"))
    exp = Experiment().with_overrides({"model.kind": "cnn", "model.batch_norm": True, "train.max_epochs": 2})
    est = make_estimator(exp, digits).fit(digits.X[:300], digits.y[:300])
    assert est.predict_proba(digits.X[:7]).shape == (7, 10)
    ts = load_dataset(DataSpec(source="synthetic_timeseries", lags=6))
    exp = Experiment().with_overrides({"model.kind": "rnn", "model.cell": "gru", "train.max_epochs": 2, "metric": "rmse"})
    est = make_estimator(exp, ts).fit(ts.X[:200], ts.y[:200])
    assert est.time_ordered and est.predict(ts.X[200:210]).shape == (10,)


def test_gencv_estimator_is_a_deprecated_alias_of_the_spec_built_estimator() -> None:
    from gencv.engines import GencvEstimator, NetClassifier

    ds = load_dataset(DataSpec(source="iris"))
    t = TrainSpec(max_epochs=3, lr=0.02)
    with pytest.warns(DeprecationWarning, match="NetClassifier"):
        old = GencvEstimator(ModelSpec(hidden=[8], dropout=0.0), t, n_features=4, n_classes=3, seed=3)
    assert isinstance(old, NetClassifier) and old.random_state == 3
    new = estimator_from_spec(ModelSpec(hidden=[8], dropout=0.0), t, task="classification", n_classes=3, random_state=3)
    np.testing.assert_array_equal(old.fit(ds.X, ds.y).predict_proba(ds.X), new.fit(ds.X, ds.y).predict_proba(ds.X))


def test_gencv_own_estimators_do_not_warn(recwarn: pytest.WarningsRecorder) -> None:
    from gencv.runner import make_estimator
    from gencv.spec import Experiment

    make_estimator(Experiment(), load_dataset(DataSpec(source="iris")))
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning) and "GencvEstimator" in str(w.message)]
