"""CV schemes as scikit-learn splitters, checked against the data before any training."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import (
    BaseCrossValidator,
    GroupKFold,
    KFold,
    LeaveOneGroupOut,
    LeaveOneOut,
    RepeatedKFold,
    RepeatedStratifiedKFold,
    ShuffleSplit,
    StratifiedKFold,
    StratifiedShuffleSplit,
    TimeSeriesSplit,
)

from gencv.errors import SplitError
from gencv.spec import CVSpec

__all__ = ["Fold", "make_folds", "make_splitter"]


@dataclass(frozen=True)
class Fold:
    """One split: absolute sample indices into the dataset."""

    index: int
    train: np.ndarray
    valid: np.ndarray


def make_splitter(
    cv: CVSpec,
    *,
    task: str,
    seed: int,
    is_time_series: bool = False,
    min_gap: int = 0,
    field: str = "cv",
) -> BaseCrossValidator | ShuffleSplit | TimeSeriesSplit | RepeatedKFold:
    """The scikit-learn splitter named by `cv.kind`, seeded with `seed` where it shuffles.

    `min_gap`: for time series, the fewest rows between a training block and the later held-out
    block (lag windows with horizon h need h - 1); `cv.gap` below it is raised to it.
    """
    kind = cv.kind
    classif = task == "classification"
    if is_time_series and kind not in ("rolling", "holdout"):
        raise SplitError(
            f"{field}.kind: got {kind!r} on a time series: shuffled folds would train on the future; "
            f"use {field}.kind=rolling"
        )
    if kind == "stratified" and not classif:
        raise SplitError(f"{field}.kind: got 'stratified' on a regression target; use kfold")
    rs = seed if cv.shuffle else None
    if kind == "kfold":
        return KFold(n_splits=cv.n_splits, shuffle=cv.shuffle, random_state=rs)
    if kind == "stratified":
        return StratifiedKFold(n_splits=cv.n_splits, shuffle=cv.shuffle, random_state=rs)
    if kind == "loo":
        return LeaveOneOut()
    if kind == "holdout":
        if is_time_series:
            return _TimeHoldout(cv.test_fraction, gap=min_gap)
        cls = StratifiedShuffleSplit if classif else ShuffleSplit
        return cls(n_splits=1, test_size=cv.test_fraction, random_state=seed)
    if kind == "rolling":
        max_train = cv.max_train_size if cv.window == "sliding" else None
        return TimeSeriesSplit(n_splits=cv.n_splits, max_train_size=max_train, test_size=cv.test_size,
                               gap=max(cv.gap, min_gap))
    if kind == "repeated":
        cls = RepeatedStratifiedKFold if classif else RepeatedKFold
        return cls(n_splits=cv.n_splits, n_repeats=cv.n_repeats, random_state=seed)
    if kind == "group":
        if cv.leave_one_group_out:
            return LeaveOneGroupOut()
        return GroupKFold(n_splits=cv.n_splits, shuffle=cv.shuffle, random_state=rs)
    raise SplitError(f"{field}.kind: unknown kind {kind!r}")  # pragma: no cover - spec validation catches it


class _TimeHoldout:
    """One split: the earlier part trains, the last `fraction` validates, `gap` rows between them dropped."""

    def __init__(self, fraction: float, gap: int = 0) -> None:
        self.fraction = fraction
        self.gap = gap

    def get_n_splits(self, X: object = None, y: object = None, groups: object = None) -> int:
        return 1

    def split(self, X: np.ndarray, y: object = None, groups: object = None):  # type: ignore[no-untyped-def]
        n = len(X)
        n_valid = max(1, int(np.ceil(self.fraction * n)))
        idx = np.arange(n)
        yield idx[: max(n - n_valid - self.gap, 0)], idx[n - n_valid :]


def make_folds(
    cv: CVSpec,
    *,
    y: np.ndarray,
    task: str,
    seed: int,
    indices: np.ndarray,
    groups: np.ndarray | None = None,
    is_time_series: bool = False,
    min_gap: int = 0,
    allow_large_loo: bool = False,
    field: str = "cv",
) -> list[Fold]:
    """Check the scheme against the data, then return its folds as absolute indices.

    `indices` are the dataset rows available to CV (the held-out test rows are excluded);
    `min_gap` is `Dataset.min_gap` (see `make_splitter`).
    """
    n = len(indices)
    y_sub = y[indices]
    g_sub = groups[indices] if groups is not None else None
    if is_time_series and min_gap > cv.gap and cv.kind == "rolling":
        cv = cv.model_copy(update={"gap": min_gap})
    _check(cv, n=n, y=y_sub, task=task, groups=g_sub, allow_large_loo=allow_large_loo, field=field)
    splitter = make_splitter(cv, task=task, seed=seed, is_time_series=is_time_series, min_gap=min_gap, field=field)
    local = np.arange(n)
    folds = []
    try:
        for i, (tr, va) in enumerate(splitter.split(local, y_sub, g_sub if cv.kind == "group" else None)):
            folds.append(Fold(i, indices[tr], indices[va]))
    except ValueError as exc:
        raise SplitError(f"{field}: {cv.kind} CV cannot split these {n} samples: {exc}") from None
    if any(len(f.train) == 0 for f in folds):
        raise SplitError(f"{field}: {cv.kind} CV leaves a fold with no training data in these {n} samples; "
                         f"use a smaller {field}.test_fraction or more data")
    return folds


def _check(
    cv: CVSpec,
    *,
    n: int,
    y: np.ndarray,
    task: str,
    groups: np.ndarray | None,
    allow_large_loo: bool,
    field: str,
) -> None:
    k = cv.n_splits
    if cv.kind in ("kfold", "stratified", "repeated") and k > n:
        raise SplitError(f"{field}.n_splits: got {k}, more than the {n} samples available to CV; use at most {n}")
    if cv.kind in ("stratified",) or (cv.kind == "repeated" and task == "classification"):
        counts = np.bincount(y.astype(int))
        counts = counts[counts > 0]
        smallest = int(counts.min())
        if smallest < k:
            cls = int(np.argmin(np.where(np.bincount(y.astype(int)) > 0, np.bincount(y.astype(int)), np.iinfo(int).max)))
            raise SplitError(
                f"{field}.n_splits: got {k}, but class {cls} has only {smallest} sample(s) in the CV data; "
                f"use n_splits <= {smallest}, or {field}.kind=kfold"
            )
    if cv.kind == "loo" and n > cv.max_loo_samples and not allow_large_loo:
        raise SplitError(
            f"{field}.kind: loo on {n} samples trains {n} networks (limit {field}.max_loo_samples={cv.max_loo_samples}); "
            "raise the limit, pass --allow-large-loo, or use kfold"
        )
    if cv.kind == "group":
        if groups is None:
            raise SplitError(
                f"{field}.kind: 'group' needs a group column; set data.group to a column name "
                "(or use data.source=synthetic_grouped)"
            )
        n_groups = len(np.unique(groups))
        if not cv.leave_one_group_out and k > n_groups:
            raise SplitError(
                f"{field}.n_splits: got {k}, more than the {n_groups} groups; use n_splits <= {n_groups}"
            )
        if n_groups < 2:
            raise SplitError(f"{field}.kind: 'group' needs at least 2 groups, found {n_groups}")
    if cv.kind == "rolling":
        test = cv.test_size if cv.test_size is not None else n // (k + 1)
        need = k * test + cv.gap + 1
        if test < 1 or need > n:
            raise SplitError(
                f"{field}.n_splits: got {k} rolling splits (test_size={test}, gap={cv.gap}) but the series has "
                f"{n} points, needing at least {max(need, k + 1 + cv.gap)}; use fewer splits, a smaller test_size or gap"
            )
