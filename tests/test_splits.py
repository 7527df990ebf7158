from __future__ import annotations

import numpy as np
import pytest

from gencv import splits
from gencv.data import holdout_test, load_dataset
from gencv.errors import SplitError
from gencv.spec import CVSpec, DataSpec
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


IRIS_CLASSES = ["setosa", "versicolor", "virginica"]


def test_stratified_error_names_the_class_label_and_a_fix_that_works() -> None:
    y = np.r_[np.zeros(28, dtype=int), np.ones(30, dtype=int), [2, 2]]  # 'virginica' has 2 rows
    with pytest.raises(SplitError, match=r"cv\.n_splits: got 5, but class 'virginica' has only 2 sample\(s\) in the "
                                         r"CV data; use cv\.n_splits <= 2, cv\.kind=kfold"):
        _folds(CVSpec(kind="stratified", n_splits=5), y=y, classes=IRIS_CLASSES)
    # one of its 2 rows went to the test set: no n_splits works, and the message must not suggest one
    full_y = np.r_[np.zeros(28, dtype=int), np.ones(30, dtype=int), [2, 2]]
    with pytest.raises(SplitError, match=r"class 'virginica' has only 1 sample\(s\) of its 2 in the CV data "
                                         r"\(data\.test_size holds out 1 of the 60 rows\); stratified CV needs at least 2 "
                                         r"per class: use cv\.kind=kfold") as info:
        make_folds(CVSpec(kind="stratified", n_splits=3), y=full_y, task="classification", seed=0,
                   indices=np.arange(59), classes=IRIS_CLASSES)
    assert "n_splits <= 1" not in str(info.value)
    with pytest.raises(SplitError, match=r"class 2 has only 2"):  # no labels given: the code
        _folds(CVSpec(kind="stratified", n_splits=5), y=y)


def test_too_large_test_size_is_blamed_not_n_splits() -> None:
    iris = load_dataset(DataSpec(source="iris"))
    cv_idx, _ = holdout_test(iris, 0.97, seed=0)
    with pytest.raises(SplitError, match=r"^data\.test_size: got 0\.97: holds out 146 of the 150 rows, leaving 4 for "
                                         r"5-fold CV .*use data\.test_size <= 0\.96 .*or cv\.n_splits <= 4"):
        make_folds(CVSpec(kind="stratified", n_splits=5), y=iris.y, task=iris.task, seed=0, indices=cv_idx,
                   classes=iris.classes, test_size=0.97)
    # a caller that does not pass test_size still hears about data.test_size
    with pytest.raises(SplitError, match=r"\(data\.test_size holds out 146 of the 150 rows\); use at most 4 or a "
                                         r"smaller data\.test_size"):
        make_folds(CVSpec(kind="kfold", n_splits=5), y=iris.y, task=iris.task, seed=0, indices=cv_idx)


@pytest.mark.parametrize(
    ("cv", "kw", "pattern"),
    [
        (CVSpec(kind="holdout", test_fraction=0.98), {},
         (r"cv\.test_fraction: got 0\.98: validates on 59 of the 60 CV rows, leaving 1 for training, fewer than "
          r"the 3 classes.*use cv\.test_fraction between 0\.05 and 0\.95")),
        (CVSpec(kind="holdout", test_fraction=0.02), {},
         r"cv\.test_fraction: got 0\.02: .*only 2 for validation, fewer than the 3 classes"),
        (CVSpec(kind="holdout", test_fraction=0.99), {"task": "regression", "y": np.zeros(60)},
         r"cv\.test_fraction: got 0\.99: .*leaving 0 for training, fewer than 1 row"),
        (CVSpec(kind="rolling", n_splits=5, test_size=30), {"ts": True, "task": "regression"},
         (r"cv\.n_splits=5, cv\.test_size=30: 5 rolling splits of 30 rows with gap=0 need at least 151 points, but "
          r"the series has 60 .*; use cv\.test_size <= 11$")),
    ],
)
def test_size_errors_name_the_size_field(cv: CVSpec, kw: dict, pattern: str) -> None:
    with pytest.raises(SplitError, match=pattern):
        _folds(cv, **kw)


def test_scheme_warnings_on_rolling_cv_of_data_that_is_no_time_series() -> None:
    iris = load_dataset(DataSpec(source="iris"))  # sorted by class, no time column
    warnings = splits.scheme_warnings(CVSpec(kind="rolling"), iris)
    assert len(warnings) == 2
    assert "cv.kind=rolling on data.source='iris', which is not a time series" in warnings[0]
    assert "set data.time" in warnings[0] and "cv.kind=stratified" in warnings[0]
    assert "'virginica'" in warnings[1] and "training block lacks" in warnings[1]
    nested = splits.scheme_warnings(CVSpec(kind="rolling"), iris, field="tune.inner_cv")
    assert all("tune.inner_cv.kind" in w for w in nested)


@pytest.mark.parametrize(("source", "cv"), [("sunspots", CVSpec(kind="rolling")), ("iris", CVSpec(kind="stratified")),
                                            ("iris", CVSpec(kind="kfold", shuffle=True))])
def test_no_scheme_warnings_where_the_order_is_time_or_rows_are_shuffled(source: str, cv: CVSpec) -> None:
    assert splits.scheme_warnings(cv, load_dataset(DataSpec(source=source))) == []


def test_scheme_warnings_on_unshuffled_kfold_of_sorted_rows() -> None:
    from gencv.data import Dataset

    sorted_cls = Dataset("sorted", np.zeros((40, 1), np.float32), np.repeat([0, 1], 20), "classification", ["x"],
                         classes=["no", "yes"])
    (w,) = splits.scheme_warnings(CVSpec(kind="kfold", n_splits=2, shuffle=False), sorted_cls)
    assert "cv.kind=kfold with cv.shuffle=false" in w and "('no', 'yes')" in w and "use cv.shuffle=true" in w
    sorted_reg = Dataset("ramp", np.zeros((40, 1), np.float32), np.arange(40, dtype=np.float32), "regression", ["x"])
    (w,) = splits.scheme_warnings(CVSpec(kind="kfold", n_splits=4, shuffle=False), sorted_reg)
    assert "sorted by the target" in w
