"""Datasets: bundled scikit-learn sets, synthetic data, a shipped time series, CSV and Parquet."""

from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import datasets as skd
from sklearn.model_selection import GroupShuffleSplit, train_test_split
from sklearn.preprocessing import LabelEncoder

from gencv.errors import DataError, SpecError, did_you_mean
from gencv.spec import DataSpec

__all__ = ["SOURCES", "Dataset", "describe_sources", "holdout_test", "load_dataset"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    """Features, target and side columns of one data source, ready for splitting."""

    name: str
    X: np.ndarray  # float32, (n, d)
    y: np.ndarray  # int64 class codes or float32 values, (n,)
    task: str  # "classification" | "regression"
    feature_names: list[str]
    classes: list[str] = field(default_factory=list)
    groups: np.ndarray | None = None
    time_index: np.ndarray | None = None
    image_shape: tuple[int, ...] | None = None  # e.g. (1, 8, 8) for digits
    horizon: int = 1  # lag windows: the target lies `horizon` steps after the last lag

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
            if arr is not None:
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
    "csv:PATH": ("either", "a CSV file; data.target names the target column (group/time optional)"),
    "parquet:PATH": ("either", "a Parquet file; as csv"),
}


def describe_sources() -> list[tuple[str, str, str]]:
    """(name, task, description) for every source."""
    return [(name, task, desc) for name, (task, desc) in SOURCES.items()]


def load_dataset(spec: DataSpec, seed: int = 0) -> Dataset:
    """Load the data named by `spec.source`; synthetic sources draw from `seed`."""
    source = spec.source
    if source.startswith(("csv:", "parquet:")):
        kind, _, path = source.partition(":")
        return _from_table(spec, kind, path)
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
        f"Allowed: {', '.join(names)}, csv:PATH, parquet:PATH (see `gencv datasets`)"
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
    lags, horizon = spec.lags, spec.horizon
    n = len(series) - lags - horizon + 1
    if n < 10:
        raise DataError(
            f"data.lags={lags}, data.horizon={horizon}: the series of {len(series)} points leaves {n} windows; "
            "use fewer lags"
        )
    X = np.stack([series[i : i + lags] for i in range(n)])
    y = series[lags + horizon - 1 : lags + horizon - 1 + n]
    t = time[lags + horizon - 1 : lags + horizon - 1 + n]
    names = [f"lag_{lags - j}" for j in range(lags)]
    return _finish(name, X, y, "regression", names, None, time_index=np.asarray(t), horizon=horizon)


def _from_table(spec: DataSpec, kind: str, path: str) -> Dataset:
    p = Path(path)
    if not p.exists():
        raise SpecError(f"data.source: got {spec.source!r}: file {path!r} does not exist")
    try:
        frame = pd.read_csv(p) if kind == "csv" else pd.read_parquet(p)
    except Exception as exc:  # pandas raises many kinds; all mean "cannot read"
        raise DataError(f"data.source: cannot read {kind} file {path!r}: {exc}") from None
    if len(frame) == 0:
        raise DataError(f"data.source: {kind} file {path!r} has no rows (columns: "
                        f"{', '.join(map(str, frame.columns)) or 'none'}); give a file with at least one data row")
    if spec.target is None:
        raise SpecError(
            f"data.target: required for {kind} sources; name the target column, one of: {', '.join(map(str, frame.columns))}"
        )
    for fld in ("target", "group", "time"):
        col = getattr(spec, fld)
        if col is not None and col not in frame.columns:
            raise SpecError(
                f"data.{fld}: got {col!r}: no such column in {path}.{did_you_mean(col, map(str, frame.columns))} "
                f"Columns: {', '.join(map(str, frame.columns))}"
            )
    y_raw = frame[spec.target]
    if y_raw.isna().any():
        raise DataError(f"data.target: column {spec.target!r} has {int(y_raw.isna().sum())} missing values; drop or fill them")
    side = {c for c in (spec.target, spec.group, spec.time) if c is not None}
    if spec.features is not None:
        missing = [c for c in spec.features if c not in frame.columns]
        if missing:
            raise SpecError(f"data.features: columns {missing} not in {path}")
        feat = frame[spec.features]
    else:
        feat = frame.drop(columns=list(side))
    non_numeric = [str(c) for c in feat.columns if not pd.api.types.is_numeric_dtype(feat[c])]
    if non_numeric:
        raise DataError(
            f"data: feature column(s) {non_numeric} are not numeric; encode them, or list numeric columns in data.features"
        )
    nullable = [c for c in feat.columns if pd.api.types.is_extension_array_dtype(feat[c])]
    na = feat[nullable].isna().sum()
    if na.any():  # pandas' NA of nullable dtypes (Int64, Float64, boolean); plain NaN/inf are named below
        cols = ", ".join(f"{c!r} ({int(k)})" for c, k in na.items() if k)
        raise DataError(f"data.features: missing values in column(s) {cols} of {path}; drop or fill those rows, "
                        "or list complete columns in data.features")
    feat = feat.astype("float64")  # nullable dtypes (Int64, boolean) to plain numbers
    is_class = not pd.api.types.is_numeric_dtype(y_raw) or pd.api.types.is_bool_dtype(y_raw) or (
        pd.api.types.is_integer_dtype(y_raw) and y_raw.nunique() <= 50
    )
    task = "classification" if is_class else "regression"
    groups = frame[spec.group].to_numpy() if spec.group else None
    time_index = _parse_time(frame[spec.time], spec.time) if spec.time else None
    if time_index is not None:
        order = np.argsort(time_index, kind="stable")
        feat, y_raw = feat.iloc[order], y_raw.iloc[order]
        groups = groups[order] if groups is not None else None
        time_index = time_index[order]
    return _finish(spec.source, feat.to_numpy(), y_raw.to_numpy(), task, [str(c) for c in feat.columns], None,
                   groups=groups, time_index=time_index, target_name=str(spec.target))


def _parse_time(values: pd.Series, column: str) -> np.ndarray:
    """The time column as sortable values: numbers and datetimes as they are, text parsed as dates.

    Text is parsed in one format (pandas infers it from the first value), never value by value:
    sorting date strings as text (``03/15/1995`` before ``12/01/1994``) would put the future first,
    and parsing each value on its own could read ``01/02`` as January in one row and February in another.
    """
    missing = int(values.isna().sum())
    if missing:
        raise DataError(f"data.time: column {column!r} has {missing} missing value(s); every row needs a time "
                        "to be put in order: drop or fill those rows")
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "could not infer format"; failures raise below
                try:
                    parsed = pd.to_datetime(values)
                except ValueError as exc:
                    if "timezone" not in str(exc).lower():
                        raise
                    parsed = pd.to_datetime(values, utc=True)  # offsets differ between rows: compare in UTC
        except (ValueError, TypeError, OverflowError) as exc:
            bad = _unparseable_example(values)
            raise DataError(
                f"data.time: column {column!r} cannot be read as dates in one format: got {bad!r} "
                f"({str(exc).splitlines()[0]}); write every value in one date format (ISO 8601 such as "
                "1995-03-15 is safest) or as numbers (e.g. a year or a step count)"
            ) from None
    if pd.api.types.is_datetime64_any_dtype(parsed) and getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert(None)  # UTC, without the zone, so the values sort as datetime64
    return parsed.to_numpy()


def _unparseable_example(values: pd.Series) -> object:
    """A value of `values` that fails the date format pandas infers from the first value."""
    from pandas.tseries.api import guess_datetime_format

    fmt = guess_datetime_format(str(values.iloc[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        coerced = pd.to_datetime(values, format=fmt or "mixed", errors="coerce", utc=True)
    bad = values[coerced.isna()]
    return bad.iloc[0] if len(bad) else values.iloc[0]


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
) -> Dataset:
    X = np.asarray(X, dtype=np.float64)
    bad = ~np.isfinite(X)
    if bad.any():
        cols = sorted({feature_names[j] for j in np.nonzero(bad.any(axis=0))[0]})
        raise DataError(f"data: feature column(s) {cols} contain NaN or inf; drop or impute those values first")
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
        X=X.astype(np.float32),
        y=y_out,
        task=task,
        feature_names=feature_names,
        classes=list(classes),
        groups=None if groups is None else np.asarray(groups),
        time_index=None if time_index is None else np.asarray(time_index),
        image_shape=image_shape,
        horizon=horizon,
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
