"""The batched engine's shortcuts, each held to what it replaces: the members' preparation to
`NetEstimator.prepare_fit`, the fused Adam step to torch's Adam (through the skorch engine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import make_classification, make_regression
from sklearn.model_selection import KFold, LeaveOneOut

from gencv.engines import BatchedEngine, estimator_from_spec, get_engine
from gencv.engines.batched_prep import MemberPrep
from gencv.engines.stacked_optim import FUSED_MIN_PARAMS
from gencv.models import init_weights_
from gencv.spec import ModelSpec, TrainSpec
from gencv.splits import Fold


def _est(task: str, scale: str = "standard", dtype: str = "float32", **train: object):
    t = {"optimizer": "adam", "lr": 0.01, "batch_size": 16, "max_epochs": 2, "schedule": "none", "dtype": dtype,
         "early_stopping": None, **train}
    return estimator_from_spec(ModelSpec(hidden=[7], dropout=0.0, init="he"), TrainSpec(**t), task=task,
                               n_classes=3 if task == "classification" else 1, scale=scale)


def _reference(est, X, y, fold: Fold, seed: int):
    """A member as the engine prepared it before the shortcut: prepare_fit on the fold, then scaled()."""
    ref = clone(est).set_params(random_state=seed)
    model, t, Xt, yf = ref.prepare_fit(X[fold.train], y[fold.train])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = init_weights_(ref.build_module(ref.n_inputs_), model.init, model.activation)
        state = torch.get_rng_state()
    return ref, Xt, ref.encode_target(yf), ref.scaled(X[fold.valid]), module.state_dict(), state


def _data(task: str, n: int, float32: bool = False):
    if task == "classification":
        X, y = make_classification(n_samples=n, n_features=5, n_informative=3, n_classes=3, random_state=1)
    else:
        X, y = make_regression(n_samples=n, n_features=5, noise=2.0, random_state=1)
        y = y * 50 + 1000  # a target far from standard units
    X[:, 2] = 3.0  # a constant column: its scale must be 1, as sklearn sets it
    X[:, 4] *= 1e4
    return X.astype(np.float32) if float32 else X, y


@pytest.mark.parametrize(("task", "scale", "cv", "float32", "es"), [
    ("classification", "standard", "loo", False, False),
    ("classification", "standard", "kfold", True, True),
    ("regression", "standard", "kfold", False, True),
    ("regression", "none", "kfold", False, False),
    ("classification", "minmax", "kfold", False, False),  # the general path: prepare_fit for every fold
])
def test_every_member_is_prepared_as_prepare_fit_prepares_its_fold(task: str, scale: str, cv: str, float32: bool,
                                                                     es: bool) -> None:
    X, y = _data(task, 24 if cv == "loo" else 60, float32)
    split = LeaveOneOut() if cv == "loo" else KFold(4, shuffle=True, random_state=0)
    folds = [Fold(i, tr, va) for i, (tr, va) in enumerate(split.split(X))]
    seeds = [100 + 7 * i for i in range(len(folds))]
    est = _est(task, scale, early_stopping={"patience": 2, "valid_fraction": 0.25} if es else None)
    prep = MemberPrep(est, X, y, None, eval_on_valid=True)
    for fold, seed in zip(folds, seeds):
        m = prep.member(fold, seed)
        ref, Xt, yt, Xv, state, rng = _reference(est, X, y, fold, seed)
        fit = slice(None) if ref.fit_positions(y[fold.train]) is None else ref.fit_positions(y[fold.train])
        assert np.array_equal(m.est.fit_positions_ if m.est.fit_positions_ is not None else np.arange(len(Xt)),
                              np.arange(len(Xt))[fit])
        torch.testing.assert_close(m.X, torch.as_tensor(Xt)[m.est.fit_positions_ if es else slice(None)],
                                   atol=0, rtol=0)
        torch.testing.assert_close(m.y, torch.as_tensor(yt)[m.est.fit_positions_ if es else slice(None)],
                                   atol=0, rtol=0)
        if es:
            torch.testing.assert_close(m.X_es, torch.as_tensor(Xt)[m.est.inner_valid_positions_], atol=0, rtol=0)
        torch.testing.assert_close(m.X_ev, torch.as_tensor(Xv), atol=0, rtol=0)
        assert m.X.dtype == torch.float32
        got, want = m.est.preprocess_.named_steps["scale"], ref.preprocess_.named_steps["scale"]
        if scale == "none":
            assert got == want == "passthrough"
        else:
            for name in ("mean_", "var_", "scale_", "n_samples_seen_", "min_", "data_min_", "data_max_"):
                if hasattr(want, name):
                    assert type(getattr(got, name)) is type(getattr(want, name)), name
                    np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
        np.testing.assert_array_equal(m.est.preprocess_.transform(X[fold.valid]), Xv)
        if task == "classification":
            np.testing.assert_array_equal(m.est.classes_, ref.classes_)
        else:
            assert (m.est.y_mean_, m.est.y_std_) == (ref.y_mean_, ref.y_std_)
        assert m.est.random_state == seed and m.est._seed_ == seed and m.est.n_inputs_ == ref.n_inputs_
        for k, v in state.items():
            torch.testing.assert_close(m.est.init_state_[k], v, atol=0, rtol=0)
        assert torch.equal(m.gen.get_state(), rng)
    if scale == "standard":
        assert prep.checked is not None  # the shortcut was taken


def test_a_fold_that_fails_its_checks_fails_alone() -> None:
    """Rows the whole data cannot pass (a NaN) leave every fold to its own checks: only folds training on them fail."""
    X, y = _data("classification", 40)
    X[3, 0] = np.nan
    folds = [Fold(i, tr, va) for i, (tr, va) in enumerate(KFold(4).split(X))]
    prep = MemberPrep(_est("classification"), X, y, None, eval_on_valid=False)
    outcomes = []
    for fold in folds:
        try:
            prep.member(fold, 1)
            outcomes.append("ok")
        except ValueError as exc:
            assert "NaN" in str(exc)
            outcomes.append("failed")
    assert outcomes == ["ok", "failed", "failed", "failed"]  # fold 0 holds row 3 out


@pytest.mark.parametrize("train", [
    {"optimizer": "adam", "lr": 0.01},
    {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.1},
    {"optimizer": "adam", "lr": 0.02, "weight_decay": 0.01, "max_epochs": 12,
     "early_stopping": {"patience": 1, "valid_fraction": 0.3}},  # members stop at different epochs
])
def test_members_large_enough_for_the_fused_adam_step_equal_the_skorch_nets(train: dict,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    for name in ("_fused_adam_", "_fused_adamw_"):  # a spy: the fused kernel is what steps these members
        kernel = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _k=kernel, **kw: calls.append(1) or _k(*a, **kw))
    X, y = make_classification(n_samples=120, n_features=6, n_informative=4, n_classes=3, random_state=0)
    folds = [Fold(i, tr, va) for i, (tr, va) in enumerate(KFold(4, shuffle=True, random_state=0).split(X))]
    t = {"batch_size": 16, "max_epochs": 3, "schedule": "none", "dtype": "float64", "early_stopping": None, **train}
    est = estimator_from_spec(ModelSpec(hidden=[64, 32], dropout=0.0), TrainSpec(**t), task="classification",
                              n_classes=3)
    seeds = [5, 6, 7, 8]
    ref = list(get_engine("skorch").fit_folds(est, X, y, folds, seeds))
    got = list(get_engine("batched").fit_folds(est, X, y, folds, seeds))
    assert sum(p.numel() for p in got[0].estimator.module_.parameters()) >= FUSED_MIN_PARAMS
    if t["early_stopping"] is None:
        assert len(calls) == t["max_epochs"] * 6  # one call a batch (6 batches of 16 in a fold of 90 rows)
    else:
        assert calls
    if "early_stopping" in train and train["early_stopping"]:
        assert len({len(f.estimator.net_.history) for f in got}) > 1
    for a, b in zip(ref, got):
        assert len(a.estimator.net_.history) == len(b.estimator.net_.history)
        sa, sb = a.estimator.module_.state_dict(), b.estimator.module_.state_dict()
        for k in sa:
            torch.testing.assert_close(sb[k], sa[k], atol=1e-6, rtol=0)


def test_a_population_with_a_rate_and_a_decay_per_member_steps_each_through_the_fused_kernel() -> None:
    X, y = make_classification(n_samples=120, n_features=6, n_informative=4, n_classes=3, random_state=0)
    folds = [Fold(i, tr, va) for i, (tr, va) in enumerate(KFold(4, shuffle=True, random_state=0).split(X))]
    ests = [estimator_from_spec(ModelSpec(hidden=[64, 32], dropout=0.0),
                                TrainSpec(optimizer=opt, lr=lr, weight_decay=wd, batch_size=16, max_epochs=3,
                                          schedule="none", dtype="float64", early_stopping=None),
                                task="classification", n_classes=3)
            for opt, lr, wd in (("adam", 0.01, 0.0), ("adam", 0.003, 0.01), ("adamw", 0.02, 0.1),
                                ("adamw", 0.005, 0.0))]
    seeds = [5, 6, 7, 8]
    together = BatchedEngine().fit_population(ests, X, y, folds, seeds)
    for est, fits in zip(ests, together):
        ref = list(get_engine("skorch").fit_folds(est, X, y, folds, seeds))
        for a, b in zip(ref, fits):
            sa, sb = a.estimator.module_.state_dict(), b.estimator.module_.state_dict()
            for k in sa:
                torch.testing.assert_close(sb[k], sa[k], atol=1e-6, rtol=0)


@pytest.mark.parametrize(("train", "model"), [
    ({"optimizer": "adam", "lr": 0.05}, {}),
    ({"optimizer": "rmsprop", "lr": 0.02, "schedule": {"kind": "plateau", "patience": 0, "factor": 0.5}}, {}),
    ({"optimizer": "momentum", "lr": 0.05, "clip_grad_norm": 0.5, "l1": 0.001}, {}),
    ({"optimizer": "adam", "lr": 0.05}, {"batch_norm": True}),  # per-member buffers (and best buffers) follow
])
def test_a_stack_rebuilt_without_its_stopped_members_trains_the_others_unchanged(
        train: dict, model: dict, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Members stopping early leave the stack (COMPACT_AT); the others' epochs are those of the full stack."""
    import gencv.engines.batched as batched

    X, y = make_classification(n_samples=150, n_features=6, n_informative=4, n_classes=3, random_state=0)
    folds = [Fold(i, tr, va) for i, (tr, va) in enumerate(KFold(5, shuffle=True, random_state=0).split(X))]
    t = {"batch_size": 16, "max_epochs": 30, "dtype": "float64", "schedule": "none",
         "early_stopping": {"patience": 2, "valid_fraction": 0.3}, **train}
    ests = [estimator_from_spec(ModelSpec(hidden=[8], dropout=0.0, **model),
                                TrainSpec(**(t | {"lr": t["lr"] / k, "weight_decay": 0.01 * k,
                                                  "l1": t.get("l1", 0) * k})),
                                task="classification", n_classes=3) for k in (1, 3)]  # a column of each per member
    seeds = [21, 22, 23, 24, 25]
    with caplog.at_level("DEBUG", logger="gencv.engines.batched"):
        got = batched.BatchedEngine().fit_population(ests, X, y, folds, seeds)
    assert "go on in a smaller stack" in caplog.text
    monkeypatch.setattr(batched, "COMPACT_AT", 0.0)
    ref = batched.BatchedEngine().fit_population(ests, X, y, folds, seeds)
    stops = [f.estimator.epochs_run_ for fits in got for f in fits]
    assert len(set(stops)) > 2 and max(stops) > min(stops) + 2
    for fits_a, fits_b in zip(ref, got):
        for a, b in zip(fits_a, fits_b):
            ha, hb = a.estimator.net_.history, b.estimator.net_.history
            assert len(ha) == len(hb)
            for ra, rb in zip(ha, hb):
                assert {k: v for k, v in rb.items() if k != "dur"} == \
                    pytest.approx({k: v for k, v in ra.items() if k != "dur"}, abs=1e-12)
            assert a.estimator.best_epoch_ == b.estimator.best_epoch_
            sa, sb = a.estimator.module_.state_dict(), b.estimator.module_.state_dict()
            for k in sa:
                torch.testing.assert_close(sb[k], sa[k], atol=1e-12, rtol=0)


def test_folds_with_different_class_sets_train_in_different_stacks_as_the_skorch_engine_gives_them() -> None:
    """classes=None and a fold missing a class: that member has two outputs, the others three."""
    t = TrainSpec(optimizer="sgd", lr=0.05, batch_size=16, max_epochs=2, schedule="none", early_stopping=None,
                  dtype="float64")
    est = estimator_from_spec(ModelSpec(hidden=[7], dropout=0.0), t, task="classification",
                              n_classes=3).set_params(classes=None)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 4)), np.repeat([0, 1, 2], 20)
    folds = [Fold(0, np.arange(20, 60), np.arange(5)), Fold(1, np.r_[0:30, 45:60], np.arange(30, 45)),
             Fold(2, np.r_[0:45, 50:60], np.arange(45, 50))]
    ref = list(get_engine("skorch").fit_folds(est, X, y, folds, [1, 2, 3], eval_on_valid=False))
    got = list(get_engine("batched").fit_folds(est, X, y, folds, [1, 2, 3], eval_on_valid=False))
    assert [list(f.estimator.classes_) for f in got] == [list(f.estimator.classes_) for f in ref] == \
        [[1, 2], [0, 1, 2], [0, 1, 2]]
    for a, b in zip(ref, got):
        sa, sb = a.estimator.module_.state_dict(), b.estimator.module_.state_dict()
        for k in sa:
            torch.testing.assert_close(sb[k], sa[k], atol=1e-6, rtol=0)


def test_a_fold_of_one_training_row_fails_as_prepare_fit_fails_it() -> None:
    X, y = _data("regression", 30)
    folds = [Fold(0, np.arange(10, 30), np.arange(10)), Fold(1, np.array([0]), np.arange(1, 30))]
    prep = MemberPrep(_est("regression"), X, y, None, eval_on_valid=True)
    prep.member(folds[0], 1)
    with pytest.raises(ValueError, match="minimum of 2 is required"):
        prep.member(folds[1], 2)
