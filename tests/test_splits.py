from __future__ import annotations

import numpy as np
import pytest

from gencv.errors import SplitError
from gencv.spec import CVSpec
from gencv.splits import make_folds


def _folds(cv: CVSpec, n: int = 60, task: str = "classification", groups: np.ndarray | None = None,
           ts: bool = False, y: np.ndarray | None = None, **kw: object):  # type: ignore[no-untyped-def]
    y = np.arange(n) % 3 if y is None else y
    idx = np.arange(100, 100 + n)  # CV rows need not start at 0 (test rows held out)
    full_y = np.zeros(100 + n, dtype=int)
    full_y[idx] = y
    full_g = None
    if groups is not None:
        full_g = np.zeros(100 + n, dtype=int)
        full_g[idx] = groups
    return make_folds(cv, y=full_y, task=task, seed=0, indices=idx, groups=full_g, is_time_series=ts, **kw), idx


@pytest.mark.parametrize("kind", ["kfold", "stratified", "loo", "group"])
def test_partition_schemes_are_disjoint_and_test_every_sample_once(kind: str) -> None:
    groups = np.arange(60) // 6
    folds, idx = _folds(CVSpec(kind=kind, n_splits=5), groups=groups)
    seen = np.concatenate([f.valid for f in folds])
    assert sorted(seen) == sorted(idx)  # every sample held out exactly once
    for f in folds:
        assert not set(f.train) & set(f.valid)
        assert sorted(np.r_[f.train, f.valid]) == sorted(idx)
        if kind == "group":
            assert not set(groups[f.train - 100]) & set(groups[f.valid - 100])
        if kind == "stratified":
            assert np.all(np.bincount(f.valid % 3, minlength=3) == 4)


def test_repeated_and_holdout() -> None:
    folds, idx = _folds(CVSpec(kind="repeated", n_splits=3, n_repeats=2))
    assert len(folds) == 6
    for rep in (folds[:3], folds[3:]):
        assert sorted(np.concatenate([f.valid for f in rep])) == sorted(idx)
    assert not all(np.array_equal(a.valid, b.valid) for a, b in zip(folds[:3], folds[3:]))
    (h,), _ = _folds(CVSpec(kind="holdout", test_fraction=0.25))
    assert len(h.valid) == 15 and not set(h.train) & set(h.valid)


def test_logo_uses_one_group_per_fold() -> None:
    groups = np.arange(60) // 10
    folds, _ = _folds(CVSpec(kind="group", leave_one_group_out=True), groups=groups)
    assert len(folds) == 6
    assert all(len(set(groups[f.valid - 100])) == 1 for f in folds)


@pytest.mark.parametrize(("window", "gap", "max_train"), [("expanding", 0, None), ("expanding", 3, None), ("sliding", 2, 20)])
def test_rolling_never_trains_on_the_future_and_honours_gap(window: str, gap: int, max_train: int | None) -> None:
    cv = CVSpec(kind="rolling", n_splits=4, window=window, gap=gap, max_train_size=max_train, test_size=8)
    folds, _ = _folds(cv, task="regression", ts=True, y=np.zeros(60))
    assert len(folds) == 4
    for f in folds:
        assert f.train.max() + gap < f.valid.min()  # train strictly before valid, gap between
        assert f.valid.min() - f.train.max() == gap + 1
        assert len(f.valid) == 8
        if max_train:
            assert len(f.train) <= max_train
    if window == "expanding":
        assert all(len(a.train) < len(b.train) for a, b in zip(folds, folds[1:]))


@pytest.mark.parametrize(
    ("cv", "kw", "pattern"),
    [
        (CVSpec(kind="stratified", n_splits=5), {"y": np.r_[np.zeros(57), np.ones(3)].astype(int)},
         r"cv\.n_splits: got 5, but class 1 has only 3 sample\(s\)"),
        (CVSpec(kind="kfold", n_splits=61), {}, r"cv\.n_splits: got 61, more than the 60 samples"),
        (CVSpec(kind="rolling", n_splits=30, test_size=5), {"ts": True, "task": "regression"}, r"30 rolling splits"),
        (CVSpec(kind="group", n_splits=3), {}, r"needs a group column; set data\.group"),
        (CVSpec(kind="group", n_splits=5), {"groups": np.arange(60) % 3}, r"more than the 3 groups"),
        (CVSpec(kind="loo", max_loo_samples=50), {}, r"loo on 60 samples .*--allow-large-loo"),
        (CVSpec(kind="kfold"), {"ts": True, "task": "regression"}, r"would train on the future; use cv\.kind=rolling"),
        (CVSpec(kind="stratified"), {"task": "regression"}, r"'stratified' on a regression target"),
    ],
)
def test_scheme_errors(cv: CVSpec, kw: dict, pattern: str) -> None:
    with pytest.raises(SplitError, match=pattern):
        _folds(cv, **kw)


def test_large_loo_allowed_with_flag() -> None:
    folds, _ = _folds(CVSpec(kind="loo", max_loo_samples=10), n=20, allow_large_loo=True)
    assert len(folds) == 20
