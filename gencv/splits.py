"""CV schemes as scikit-learn splitters, checked against the data before any training."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sklearn.model_selection import (
    BaseCrossValidator,
    GroupKFold,
    GroupShuffleSplit,
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

if TYPE_CHECKING:
    from gencv.data import Dataset

__all__ = ["Fold", "folds_digest", "make_folds", "make_splitter", "scheme_warnings", "subsample_train", "train_subsample_size"]


@dataclass(frozen=True)
class Fold:
    """One split: absolute sample indices into the dataset."""

    index: int
    train: np.ndarray
    valid: np.ndarray


def folds_digest(folds: Sequence[Fold]) -> str:
    """A short digest of the folds' row indices: two runs with the same digest were scored on the same folds."""
    import hashlib

    h = hashlib.sha256()
    for f in folds:
        for part in (f.train, f.valid):
            h.update(np.asarray(part, dtype=np.int64).tobytes())
            h.update(b"|")
        h.update(b";")
    return h.hexdigest()[:16]


def train_subsample_size(n: int, fraction: float) -> int:
    """Rows (or groups) `data.train_fraction` keeps of `n`: ceil(fraction * n), at least 1 (so 1.0 keeps all)."""
    return min(n, max(1, math.ceil(fraction * n - 1e-9)))  # the tolerance: 0.3 * 10 is 3.0000000000000004


def subsample_train(
    fold: Fold,
    y: np.ndarray,
    groups: np.ndarray | None,
    fraction: float,
    seed: int,
    *,
    time_ordered: bool = False,
    stratified: bool = False,
) -> Fold:
    """The fold with its training rows subsampled to `fraction` (`data.train_fraction`); the held-out rows unchanged.

    Time series (`time_ordered`): the latest `train_subsample_size(n, fraction)` rows of the training fold.
    Grouped data (`groups`, one label per row of the dataset): that many of the fold's groups, drawn
    at random, whole. Otherwise a random draw of that many rows, `stratified` (classification): every
    class keeps its share to within one row (largest remainders) and at least one row (one more row than
    `train_subsample_size` per class that would otherwise have none). `y` is indexed
    by the fold's absolute indices; the kept rows stay in the fold's order. Seeded by `seed` only.
    """
    train = np.asarray(fold.train)
    n = len(train)
    if fraction >= 1.0 or n == 0:
        return fold
    k = train_subsample_size(n, fraction)
    rng = np.random.default_rng(seed)
    if time_ordered:
        keep = np.argsort(train, kind="stable")[n - k :]
    elif groups is not None:
        g = np.asarray(groups)[train]
        labels = np.unique(g)
        chosen = rng.choice(labels, size=train_subsample_size(len(labels), fraction), replace=False)
        keep = np.flatnonzero(np.isin(g, chosen))
    elif stratified:
        codes = np.unique(np.asarray(y)[train], return_inverse=True)[1]
        counts = np.bincount(codes)
        share = counts * (k / n)
        take = np.floor(share).astype(int)
        order = np.argsort(-(share - take), kind="stable")  # largest remainders first
        take[order[: k - take.sum()]] += 1
        take = np.maximum(take, np.minimum(counts, 1))  # every class of the fold keeps a row
        keep = np.concatenate([rng.choice(np.flatnonzero(codes == c), size=t, replace=False)
                               for c, t in enumerate(take) if t])
    else:
        keep = rng.choice(n, size=k, replace=False)
    return Fold(fold.index, train[np.sort(keep)], fold.valid)


def make_splitter(
    cv: CVSpec,
    *,
    task: str,
    seed: int,
    is_time_series: bool = False,
    min_gap: int = 0,
    grouped: bool = False,
    field: str = "cv",
) -> BaseCrossValidator | ShuffleSplit | TimeSeriesSplit | RepeatedKFold:
    """The scikit-learn splitter named by `cv.kind`, seeded with `seed` where it shuffles.

    `min_gap`: for time series, the fewest rows between a training block and the later held-out
    block (lag windows with horizon h need h - 1); `cv.gap` below it is raised to it.
    `grouped`: the data has groups (`data.group`); a holdout then keeps whole groups on one side.
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
        if grouped:  # a group's rows are alike: validating on groups also trained on would flatter the score
            return GroupShuffleSplit(n_splits=1, test_size=cv.test_fraction, random_state=seed)
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


def scheme_warnings(cv: CVSpec, dataset: Dataset, *, field: str = "cv") -> list[str]:
    """Human-readable warnings for a CV scheme whose folds depend on a row order the data may not have.

    Rolling CV, and kfold without shuffling, cut the rows in file order. Call this with the dataset as
    loaded, before rows without a time column are taken to be in time order (`runner.prepare` does
    that for rolling CV): no `time_index` is what tells that the order is only the file's. `field`
    is the spec path of `cv` (``tune.inner_cv`` for nested CV). Returns [] when there is nothing to say.
    """
    ordered = cv.kind == "rolling" or (cv.kind == "kfold" and not cv.shuffle)
    n = dataset.n_samples
    if not ordered or n < 3 or (dataset.is_time_series and cv.kind != "rolling"):
        return []  # shuffled schemes need no order; unshuffled kfold on a time series is refused anyway
    out: list[str] = []
    classif = dataset.task == "classification"
    scheme = "rolling CV" if cv.kind == "rolling" else f"{field}.kind=kfold with {field}.shuffle=false"
    shuffled = f"{field}.kind=stratified" if classif else f"{field}.kind=kfold"
    if cv.kind == "rolling" and not dataset.is_time_series:
        out.append(
            f"{field}.kind=rolling on data.source={dataset.name!r}, which is not a time series (no data.time): "
            "the rows are taken in file order as time order, and the last rows become the test set and the "
            "validation blocks, so unless the file is in time order the scores mean nothing; set data.time to "
            f"the time column, or use {shuffled} if the rows have no time order"
        )
    y = dataset.y
    if classif:
        # Blocks cut in row order from rows grouped by class validate on classes their training never saw.
        splitter = make_splitter(cv, task=dataset.task, seed=0, is_time_series=cv.kind == "rolling", field=field)
        try:
            unseen = [np.setdiff1d(y[va], y[tr]) for tr, va in splitter.split(np.arange(n))]
        except ValueError:
            unseen = []  # the scheme does not fit this data; make_folds says so with a clear error
        blind = [u for u in unseen if u.size]
        runs = int(np.count_nonzero(np.diff(y))) + 1
        if blind:
            names = ", ".join(_label(int(c), dataset.classes) for c in np.unique(np.concatenate(blind)))
            grouped = f" (the {n} rows come in {runs} runs of one class)" if runs <= 2 * len(np.unique(y)) else ""
            fix = shuffled if cv.kind == "rolling" else f"{field}.shuffle=true"
            out.append(
                f"{scheme} on data.source={dataset.name!r}: in {len(blind)} of its folds the validation block "
                f"holds class(es) ({names}) that its training block lacks{grouped}, which the model cannot predict; "
                f"unless that is the time order you mean to test, use {fix}"
            )
    elif not dataset.is_time_series:
        d = np.diff(y.astype(np.float64))
        if d.any() and (np.all(d >= 0) or np.all(d <= 0)):
            out.append(
                f"{scheme} on data.source={dataset.name!r}: the rows are sorted by the target, so each held-out "
                "block lies outside the range of target values its training rows saw; unless that order is "
                f"time, use {field}.kind=kfold with {field}.shuffle=true"
            )
    return out


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
    classes: Sequence[str] | None = None,
    test_size: float | None = None,
    field: str = "cv",
) -> list[Fold]:
    """Check the scheme against the data, then return its folds as absolute indices.

    `indices` are the dataset rows available to CV (the held-out test rows are excluded);
    `min_gap` is `Dataset.min_gap` (see `make_splitter`). For error messages only: `classes`
    (`Dataset.classes`) names the class codes of `y`, and `test_size` is the `data.test_size` that
    held out the rows missing from `indices`, blamed when it leaves too few rows for the scheme.
    """
    n = len(indices)
    y_sub = y[indices]
    g_sub = groups[indices] if groups is not None else None
    if is_time_series and min_gap > cv.gap and cv.kind == "rolling":
        cv = cv.model_copy(update={"gap": min_gap})
    _check(cv, n=n, y=y_sub, task=task, groups=g_sub, allow_large_loo=allow_large_loo, field=field,
           y_all=y, classes=classes, test_size=test_size, is_time_series=is_time_series)
    if cv.kind == "holdout" and g_sub is not None and not is_time_series and len(np.unique(g_sub)) < 2:
        raise SplitError(f"{field}.kind: got 'holdout' on grouped data (data.group) with "
                         f"{len(np.unique(g_sub))} group; whole groups are held out, so at least 2 are needed")
    grouped = g_sub is not None
    splitter = make_splitter(cv, task=task, seed=seed, is_time_series=is_time_series, min_gap=min_gap,
                             grouped=grouped, field=field)
    local = np.arange(n)
    folds = []
    uses_groups = cv.kind == "group" or (cv.kind == "holdout" and grouped and not is_time_series)
    try:
        for i, (tr, va) in enumerate(splitter.split(local, y_sub, g_sub if uses_groups else None)):
            folds.append(Fold(i, indices[tr], indices[va]))
    except ValueError as exc:
        raise SplitError(f"{field}: {cv.kind} CV cannot split these {n} samples: {exc}") from None
    if any(len(f.train) == 0 for f in folds):
        what = f"{field}.test_fraction={cv.test_fraction}: " if cv.kind == "holdout" else f"{field}: {cv.kind} CV "
        raise SplitError(f"{what}leaves a fold with no training data in these {n} samples; "
                         f"use a smaller {field}.test_fraction or more data")
    return folds


def _label(code: int, classes: Sequence[str] | None) -> str:
    """A class as the user knows it: its label when known, else its code."""
    return repr(str(classes[code])) if classes is not None and 0 <= code < len(classes) else str(code)


def _held_out(field: str, n: int, n_all: int) -> str:
    """Where the rows missing from CV went, for messages about too few rows."""
    if n >= n_all:
        return ""
    if field == "cv":
        return f" (data.test_size holds out {n_all - n} of the {n_all} rows)"
    return f" (the outer fold and the test set hold out {n_all - n} of the {n_all} rows)"


def _check(
    cv: CVSpec,
    *,
    n: int,
    y: np.ndarray,
    task: str,
    groups: np.ndarray | None,
    allow_large_loo: bool,
    field: str,
    y_all: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
    test_size: float | None = None,
    is_time_series: bool = False,
) -> None:
    k = cv.n_splits
    n_all = n if y_all is None else len(y_all)
    if cv.kind in ("kfold", "stratified", "repeated") and k > n:
        if test_size is not None and field == "cv" and k <= n_all:  # the data would do; the hold-out took it
            most = math.floor((n_all - k) / n_all * 100) / 100
            raise SplitError(
                f"data.test_size: got {test_size}: holds out {n_all - n} of the {n_all} rows, leaving {n} for "
                f"{k}-fold CV ({field}.n_splits={k}); use data.test_size <= {most:g} (0.2 is usual) "
                f"or {field}.n_splits <= {n}"
            )
        also = " or a smaller data.test_size" if field == "cv" and n < n_all else ""
        raise SplitError(f"{field}.n_splits: got {k}, more than the {n} samples available to CV"
                         f"{_held_out(field, n, n_all)}; use at most {n}{also}")
    grouped_holdout = cv.kind == "holdout" and groups is not None and not is_time_series  # whole groups, not classes
    stratified = cv.kind == "stratified" or (
        task == "classification" and (cv.kind == "repeated" or (cv.kind == "holdout" and not is_time_series
                                                                and not grouped_holdout))
    )
    if stratified:
        full = np.bincount(y.astype(int))
        code = int(np.argmin(np.where(full > 0, full, np.iinfo(np.int64).max)))
        smallest = int(full[code])
        need = 2 if cv.kind == "holdout" else k
        if smallest < need:
            label = _label(code, classes)
            total = int(np.sum(y_all == code)) if y_all is not None else smallest
            where = f" of its {total}" if total > smallest else ""
            if cv.kind == "holdout" or smallest < 2:
                # No n_splits helps: a stratified split needs every class on both sides.
                raise SplitError(
                    f"{field}.kind: got {cv.kind!r}, which splits every class between training and validation, "
                    f"but class {label} has only {smallest} sample(s){where} in the CV data"
                    f"{_held_out(field, n, n_all) if where else ''}; stratified CV needs at least 2 per class: "
                    f"use {field}.kind=kfold (not stratified), add rows of class {label}, or drop them"
                )
            raise SplitError(
                f"{field}.n_splits: got {k}, but class {label} has only {smallest} sample(s){where} in the CV data; "
                f"use {field}.n_splits <= {smallest}, {field}.kind=kfold (not stratified), or more rows of class {label}"
            )
    if cv.kind == "holdout" and not is_time_series:  # the time holdout's empty training block is caught later
        n_valid = math.ceil(cv.test_fraction * n)
        n_train = n - n_valid
        each = len(np.unique(y)) if stratified else 1  # a stratified split needs every class on both sides
        if n_train < each or n_valid < each:
            lo, hi = math.ceil(each / n * 100) / 100, math.floor((n - each) / n * 100) / 100
            fix = (f"use {field}.test_fraction between {lo:g} and {hi:g} (0.2 is usual)" if lo <= hi
                   else f"use {field}.kind=kfold or more data")
            need = f"the {each} classes" if stratified else "1 row"
            side = f"leaving {n_train} for training" if n_train < each else f"only {n_valid} for validation"
            raise SplitError(
                f"{field}.test_fraction: got {cv.test_fraction}: validates on {n_valid} of the {n} CV rows, {side}, "
                f"fewer than {need} each side needs; {fix}"
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
            room = n - cv.gap - 1  # rows left for the k validation blocks after one training row and the gap
            fixes = []
            if cv.test_size is not None:  # both fields set the length; name both, with values that fit
                head = f"{field}.n_splits={k}, {field}.test_size={cv.test_size}: {k} rolling splits of {test} rows"
                if room // cv.test_size >= 2:
                    fixes.append(f"{field}.n_splits <= {room // cv.test_size}")
                if room // k >= 1:
                    fixes.append(f"{field}.test_size <= {room // k}")
            else:
                head = (f"{field}.n_splits: got {k} rolling splits: validation blocks of {test} rows "
                        f"(points // (n_splits + 1))")
                fit = next((j for j in range(min(k - 1, n), 1, -1) if n // (j + 1) and (n // (j + 1)) * j + cv.gap < n), 0)
                if fit:
                    fixes.append(f"{field}.n_splits <= {fit}")
            if cv.gap:
                fixes.append(f"a smaller {field}.gap (got {cv.gap})")
            raise SplitError(
                f"{head} with gap={cv.gap} need at least {max(need, k + 1 + cv.gap)} points, but the series has {n}"
                f"{_held_out(field, n, n_all)}; use {' or '.join(fixes) if fixes else 'more data'}"
            )
