"""Datasets: bundled scikit-learn sets, synthetic data, a shipped time series, CSV/Parquet tables, npz arrays and
image folders (`gencv.tables` and `gencv.arrays` read the files)."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import pandas as pd
from sklearn import datasets as skd
from sklearn.model_selection import GroupShuffleSplit, train_test_split
from sklearn.preprocessing import LabelEncoder

from gencv.arrays import load_image_folder, load_npz
from gencv.errors import DataError, SpecError, did_you_mean
from gencv.spec import DataSpec
from gencv.tables import lag_windows, table_parts

__all__ = ["SOURCES", "Dataset", "describe_sources", "holdout_test", "load_dataset"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    """Features, target and side columns of one data source, ready for splitting."""

    name: str
    # float32 (n, d); float64 with NaN where data.impute fills missing values; object (n, d) when
    # `categorical` names columns (strings there, floats elsewhere): the per-fold preprocessor encodes them
    X: np.ndarray
    y: np.ndarray  # int64 class codes or float32 values, (n,)
    task: str  # "classification" | "regression"
    feature_names: list[str]
    classes: list[str] = field(default_factory=list)
    groups: np.ndarray | None = None
    time_index: np.ndarray | None = None
    image_shape: tuple[int, ...] | None = None  # e.g. (1, 8, 8) for digits
    horizon: int = 1  # lag windows: the target lies `horizon` steps after the last lag
    categorical: tuple[int, ...] = ()  # feature columns holding categories (encoded per fold)

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def is_time_series(self) -> bool:
        return self.time_index is not None

    @property
    def min_gap(self) -> int:
        """Rows to leave between a training block and a later held-out block so no training target
        lies after the held-out block's first forecast origin (horizon - 1 for lag windows, else 0)."""
        return self.horizon - 1 if self.is_time_series else 0

    @property
    def digest(self) -> str:
        """Short SHA-256 over features, target and groups."""
        h = hashlib.sha256()
        for arr in (self.X, self.y, self.groups):
            if arr is not None and arr.dtype == object:  # bytes of the values, not of the object pointers
                h.update(pd.util.hash_pandas_object(pd.DataFrame(arr).astype(str), index=False).to_numpy().tobytes())
            elif arr is not None:
                h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:16]


# source name -> (task, description)
SOURCES: dict[str, tuple[str, str]] = {
    "iris": ("classification", "3 iris species, 150 samples, 4 features (scikit-learn)"),
    "wine": ("classification", "3 wine cultivars, 178 samples, 13 features (scikit-learn)"),
    "breast_cancer": ("classification", "malignant/benign, 569 samples, 30 features (scikit-learn)"),
    "digits": ("classification", "handwritten digits 0-9, 1797 images of 8x8 (scikit-learn); use model.kind=cnn"),
    "diabetes": ("regression", "disease progression, 442 samples, 10 features (scikit-learn)"),
    "synthetic_classification": ("classification", "make_classification; n_samples, n_features, n_classes, noise"),
    "synthetic_regression": ("regression", "make_regression; n_samples, n_features, noise"),
    "synthetic_grouped": ("classification", "classification with n_groups clusters sharing a group offset (group CV)"),
    "synthetic_timeseries": ("regression", "noisy seasonal series with trend; lag windows (rolling CV)"),
    "sunspots": ("regression", "yearly sunspot numbers 1700-2008 (NOAA, shipped); lag windows (rolling CV)"),
    "csv:PATH": ("either", ("a CSV file (delimiter sniffed, or data.sep); data.target names the target column "
                            "(group/time optional; data.lags makes lag windows)")),
    "parquet:PATH": ("either", "a Parquet file; as csv"),
    "npz:PATH": ("either", "numpy .npz with arrays X (n, ...) and y (n,); X of (n, C, H, W) are images"),
    "images:DIR": ("classification", "a folder per class of PNG/JPEG images, resized to data.image_size"),
}


def describe_sources() -> list[tuple[str, str, str]]:
    """(name, task, description) for every source."""
    return [(name, task, desc) for name, (task, desc) in SOURCES.items()]


def load_dataset(spec: DataSpec, seed: int = 0) -> Dataset:
    """Load the data named by `spec.source`; synthetic sources draw from `seed`; `data.classes` keeps some classes."""
    ds = _load(spec, seed)
    return ds if spec.classes is None else keep_classes(ds, spec.classes)


def keep_classes(ds: Dataset, keep: list[int | str]) -> Dataset:
    """The rows of the classes `keep` (labels as the data names them), coded 0..k-1 in the order given."""
    if ds.task != "classification":
        raise SpecError(f"data.classes: got {keep}, but {ds.name} is a {ds.task} task; remove data.classes")
    names = [str(c) for c in keep]
    unknown = [n for n in names if n not in ds.classes]
    if unknown or len(set(names)) < len(names):
        what = f"{unknown} not among the classes" if unknown else "a class twice; the classes"
        raise SpecError(f"data.classes: got {keep}: {what} of {ds.name} are {ds.classes}; list each once")
    codes = np.array([ds.classes.index(n) for n in names])
    rows = np.flatnonzero(np.isin(ds.y, codes))
    recode = np.full(len(ds.classes), -1, dtype=np.int64)
    recode[codes] = np.arange(len(codes))
    return Dataset(ds.name, ds.X[rows], recode[ds.y[rows]], ds.task, ds.feature_names, names,
                   None if ds.groups is None else ds.groups[rows],
                   None if ds.time_index is None else ds.time_index[rows], ds.image_shape, ds.horizon, ds.categorical)


def _load(spec: DataSpec, seed: int) -> Dataset:
    source = spec.source
    if source.startswith(("csv:", "parquet:")):
        kind, _, path = source.partition(":")
        return _from_table(spec, kind, path)
    if source.startswith("npz:"):
        X, y, shape = load_npz(source.removeprefix("npz:"), source)
        task = spec.task if spec.task != "auto" else _auto_task(y)
        return _finish(source, X, y, task, [f"x{i}" for i in range(X.shape[1])], None, image_shape=shape)
    if source.startswith("images:"):
        h, w = spec.image_size
        X, y, classes, shape = load_image_folder(source.removeprefix("images:"), source, (h, w))
        return _finish(source, X, y, "classification", [f"px{i}" for i in range(X.shape[1])], classes,
                       image_shape=shape)
    loaders = {
        "iris": skd.load_iris,
        "wine": skd.load_wine,
        "breast_cancer": skd.load_breast_cancer,
        "digits": skd.load_digits,
        "diabetes": skd.load_diabetes,
    }
    if source in loaders:
        bunch = loaders[source]()
        task = SOURCES[source][0]
        names = [str(n) for n in getattr(bunch, "feature_names", [f"x{i}" for i in range(bunch.data.shape[1])])]
        classes = [str(c) for c in getattr(bunch, "target_names", [])] if task == "classification" else []
        image_shape = (1, 8, 8) if source == "digits" else None
        return _finish(source, bunch.data, bunch.target, task, names, classes, image_shape=image_shape)
    if source == "synthetic_classification":
        X, y = skd.make_classification(
            n_samples=spec.n_samples or 300,
            n_features=spec.n_features or 10,
            n_informative=max(2, (spec.n_features or 10) // 2),
            n_classes=spec.n_classes or 2,
            flip_y=spec.noise if spec.noise is not None else 0.01,
            random_state=seed,
        )
        return _finish(source, X, y, "classification", [f"x{i}" for i in range(X.shape[1])], None)
    if source == "synthetic_regression":
        X, y = skd.make_regression(
            n_samples=spec.n_samples or 300,
            n_features=spec.n_features or 10,
            noise=spec.noise if spec.noise is not None else 10.0,
            random_state=seed,
        )
        return _finish(source, X, y, "regression", [f"x{i}" for i in range(X.shape[1])], None)
    if source == "synthetic_grouped":
        return _grouped(spec, seed)
    if source == "synthetic_timeseries":
        rng = np.random.default_rng(seed)
        n = spec.n_samples or 400
        t = np.arange(n, dtype=float)
        noise = spec.noise if spec.noise is not None else 0.3
        series = np.sin(2 * np.pi * t / 25) + 0.5 * np.sin(2 * np.pi * t / 7) + 0.004 * t + noise * rng.normal(size=n)
        return _lagged(source, series, t, spec)
    if source == "sunspots":
        with resources.files("gencv.datasets").joinpath("sunspots.csv").open("r") as fh:
            frame = pd.read_csv(fh)
        return _lagged(source, frame["sunspots"].to_numpy(float), frame["year"].to_numpy(), spec)
    names = [n for n in SOURCES if ":" not in n]
    raise SpecError(
        f"data.source: got {source!r}: unknown source.{did_you_mean(source, names)} "
        f"Allowed: {', '.join(names)}, csv:PATH, parquet:PATH, npz:PATH, images:DIR (see `gencv datasets`)"
    )


def _grouped(spec: DataSpec, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    n = spec.n_samples or 300
    n_groups = spec.n_groups or 10
    d = spec.n_features or 6
    groups = rng.integers(0, n_groups, size=n)
    offsets = rng.normal(scale=1.5, size=(n_groups, d))  # each group (e.g. a patient) shifts its features
    w = rng.normal(size=d)
    X = rng.normal(size=(n, d)) + offsets[groups]
    logits = (X - offsets[groups]) @ w + (spec.noise if spec.noise is not None else 0.5) * rng.normal(size=n)
    y = (logits > 0).astype(int)
    return _finish("synthetic_grouped", X, y, "classification", [f"x{i}" for i in range(d)], None, groups=groups)


def _lagged(name: str, series: np.ndarray, time: np.ndarray, spec: DataSpec) -> Dataset:
    """Turn a series into (lags -> value at t + horizon - 1) supervised windows, in time order."""
    lags, horizon = spec.lags or 12, spec.horizon
    X, y, pos = lag_windows(series, lags, horizon)
    names = [f"lag_{lags - j}" for j in range(lags)]
    return _finish(name, X, y, "regression", names, None, time_index=np.asarray(time[pos]), horizon=horizon)


def _auto_task(y: np.ndarray) -> str:
    """data.task=auto for arrays: non-numeric, bool, or integer with <= 50 values -> classification."""
    is_class = not np.issubdtype(y.dtype, np.number) or y.dtype == bool or (
        np.issubdtype(y.dtype, np.integer) and len(np.unique(y)) <= 50)
    return "classification" if is_class else "regression"


def _from_table(spec: DataSpec, kind: str, path: str) -> Dataset:
    t = table_parts(spec, kind, path)
    return _finish(spec.source, t.X, t.y, t.task, t.feature_names, None, groups=t.groups, time_index=t.time_index,
                   horizon=t.horizon, target_name=str(spec.target), categorical=t.categorical,
                   allow_nan=spec.impute != "none")


def _finish(
    name: str,
    X: np.ndarray,
    y: np.ndarray,
    task: str,
    feature_names: list[str],
    classes: list[str] | None,
    *,
    groups: np.ndarray | None = None,
    time_index: np.ndarray | None = None,
    image_shape: tuple[int, ...] | None = None,
    horizon: int = 1,
    target_name: str = "target",
    categorical: tuple[int, ...] = (),
    allow_nan: bool = False,
) -> Dataset:
    """Check X (finite, or NaN where allowed; categorical columns left as they are) and encode the target."""
    num = [j for j in range(np.shape(X)[1]) if j not in set(categorical)]
    Xn = np.asarray(np.asarray(X)[:, num], dtype=np.float64)
    bad = np.isinf(Xn) if allow_nan else ~np.isfinite(Xn)
    if bad.any():
        cols = sorted({feature_names[num[j]] for j in np.nonzero(bad.any(axis=0))[0]})
        what = "inf" if allow_nan else "NaN or inf"
        raise DataError(f"data: feature column(s) {cols} contain {what}; drop those values, or set data.impute "
                        "(mean, median or most_frequent) to fill missing ones per training fold")
    X_out = np.asarray(X, dtype=object) if categorical else Xn.astype(np.float64 if allow_nan else np.float32)
    if task == "classification":
        enc = LabelEncoder()
        codes = enc.fit_transform(np.asarray(y))  # string labels are encoded, not rejected
        if not classes:
            classes = [str(c) for c in enc.classes_]
        y_out = codes.astype(np.int64)
        if len(classes) < 2:
            raise DataError(f"data.target: only one class ({classes}) present; classification needs at least two")
    else:
        y_num = np.asarray(y, dtype=np.float64)
        if not np.all(np.isfinite(y_num)):
            bad_rows = int((~np.isfinite(y_num)).sum())
            raise DataError(f"data.target: the target column {target_name!r} has {bad_rows} NaN or inf value(s); "
                            "drop or impute those rows")
        y_out = y_num.astype(np.float32)
        classes = []
    return Dataset(
        name=name,
        X=X_out,
        y=y_out,
        task=task,
        feature_names=feature_names,
        classes=list(classes),
        groups=None if groups is None else np.asarray(groups),
        time_index=None if time_index is None else np.asarray(time_index),
        image_shape=image_shape,
        horizon=horizon,
        categorical=tuple(categorical),
    )


def holdout_test(ds: Dataset, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (cv, test): the last block for time series, whole groups for grouped data, else stratified."""
    idx = np.arange(ds.n_samples)
    if test_size <= 0:
        return idx, np.array([], dtype=int)
    n_test = int(np.ceil(test_size * ds.n_samples))
    if n_test >= ds.n_samples - 1:
        raise SpecError(f"data.test_size: got {test_size}: leaves too few samples for CV; use a smaller fraction")
    if ds.is_time_series:
        # The test period is the most recent one; with a horizon > 1 the last horizon - 1 windows before
        # it would train on targets inside the test period, so they are left out.
        cv_end = ds.n_samples - n_test - ds.min_gap
        if cv_end < 2:
            raise SpecError(f"data.test_size: got {test_size}: leaves too few samples for CV; use a smaller fraction")
        return idx[:cv_end], idx[-n_test:]
    if ds.groups is not None:
        gss = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
        cv_idx, test_idx = next(gss.split(idx, groups=ds.groups))
        return np.sort(cv_idx), np.sort(test_idx)
    stratify = ds.y if ds.task == "classification" else None
    if stratify is not None:
        counts = np.bincount(ds.y)
        if counts[counts > 0].min() < 2:
            stratify = None
            log.warning("a class has a single sample; the test split is not stratified")
    try:
        cv_idx, test_idx = train_test_split(idx, test_size=n_test, random_state=seed, stratify=stratify)
    except ValueError as exc:
        raise SpecError(f"data.test_size: got {test_size}: {exc}") from None
    return np.sort(cv_idx), np.sort(test_idx)
