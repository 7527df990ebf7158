"""`data.train_fraction`: training folds subsampled (splits.subsample_train), held-out folds unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gencv.runner import prepare, refit_rows
from gencv.splits import Fold, folds_digest, subsample_train, train_subsample_size
from gencv.studies.sweep import parse_grid, run_sweep
from gencv.tracking import NullTracker

from .conftest import tiny

FRACTIONS = [0.1, 0.3, 0.55, 1.0]


def _fold(n: int = 200) -> tuple[Fold, np.ndarray, np.ndarray]:
    """A fold over rows 0..n-1 (every other row held out) with classes 60/30/10% and 20 groups of unequal size."""
    rng = np.random.default_rng(1)
    y = rng.permutation(np.repeat([0, 1, 2], [int(0.6 * n), int(0.3 * n), n - int(0.9 * n)]))
    groups = np.sort(rng.integers(0, 20, size=n))
    idx = np.arange(n)
    return Fold(0, idx[idx % 4 != 0], idx[idx % 4 == 0]), y, groups


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_stratified_subsample_has_the_stated_size_and_keeps_class_shares(fraction: float) -> None:
    fold, y, _ = _fold()
    sub = subsample_train(fold, y, None, fraction, seed=3, stratified=True)
    k = train_subsample_size(len(fold.train), fraction)
    assert k == max(1, math.ceil(round(fraction * len(fold.train), 9)))
    assert len(sub.train) == k
    assert np.array_equal(sub.valid, fold.valid) and np.isin(sub.train, fold.train).all()
    assert np.all(np.diff(sub.train) > 0)  # the fold's order, no repeats
    full, part = np.bincount(y[fold.train], minlength=3), np.bincount(y[sub.train], minlength=3)
    assert np.all(np.abs(part - full * k / len(fold.train)) < 1.0)  # each class within one row of its share


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_grouped_subsample_keeps_whole_groups(fraction: float) -> None:
    fold, y, groups = _fold()
    sub = subsample_train(fold, y, groups, fraction, seed=3, stratified=True)
    fold_groups = np.unique(groups[fold.train])
    kept = np.unique(groups[sub.train])
    assert len(kept) == train_subsample_size(len(fold_groups), fraction)
    assert np.array_equal(sub.train, fold.train[np.isin(groups[fold.train], kept)])  # every row of a kept group
    assert np.array_equal(sub.valid, fold.valid)


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_time_series_subsample_keeps_the_latest_rows(fraction: float) -> None:
    fold = Fold(2, np.arange(0, 150), np.arange(155, 180))
    sub = subsample_train(fold, np.zeros(180), None, fraction, seed=3, time_ordered=True)
    k = train_subsample_size(150, fraction)
    assert np.array_equal(sub.train, np.arange(150 - k, 150)) and np.array_equal(sub.valid, fold.valid)


def test_subsample_is_reproducible_from_the_seed() -> None:
    fold, y, groups = _fold()
    for g in (None, groups):
        a, b = (subsample_train(fold, y, g, 0.3, seed=7, stratified=True) for _ in range(2))
        c = subsample_train(fold, y, g, 0.3, seed=8, stratified=True)
        assert np.array_equal(a.train, b.train) and not np.array_equal(a.train, c.train)
    assert subsample_train(fold, y, groups, 1.0, seed=7) is fold


def test_cv_fits_the_subsample_and_the_refit_uses_the_same_fraction() -> None:
    exp = tiny(**{"data.train_fraction": 0.5})
    prep = prepare(exp)
    full = prepare(tiny())
    assert folds_digest(prep.folds) == folds_digest(full.folds)  # the fraction does not change the folds
    rows = refit_rows(exp, prep)
    assert len(rows) == train_subsample_size(len(prep.cv_idx), 0.5) and np.isin(rows, prep.cv_idx).all()
    assert np.array_equal(rows, refit_rows(exp, prep))


def test_a_rare_class_keeps_a_row() -> None:
    y = np.repeat([0, 1], [97, 3])
    sub = subsample_train(Fold(0, np.arange(100), np.arange(0)), y, None, 0.1, seed=0, stratified=True)
    assert np.bincount(y[sub.train]).tolist() == [10, 1]  # 9.7 -> 10 rows of class 0; class 1's 0.3 -> 1 row


def test_sweep_over_train_fraction_draws_the_learning_curve() -> None:
    assert parse_grid(["data.train_fraction=0.1,0.3,1.0"]) == {"data.train_fraction": [0.1, 0.3, 1.0]}
    exp = tiny(**{"train.max_epochs": 2, "train.early_stopping": None})
    out = run_sweep(exp, {"data.train_fraction": [0.3, 1.0]}, tracker=NullTracker())
    small, whole = out.outcomes
    prep = prepare(exp)
    for f, g, fold in zip(small.cv.folds, whole.cv.folds, prep.folds):
        assert f.ok and g.ok
        assert g.n_train == len(fold.train) and f.n_train == train_subsample_size(len(fold.train), 0.3)
        assert f.n_valid == g.n_valid == len(fold.valid)
    assert len(out.table) == 2
