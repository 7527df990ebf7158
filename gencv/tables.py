"""CSV and Parquet tables: delimiter sniffing, feature column kinds, missing values, the task, lag windows.

A table's feature columns come back as one 2-D array. When every feature column is numeric and complete
it is float64 (NaN where a value is missing and `data.impute` fills it); when a column is categorical
(string, category or bool) it is an object array: numbers as floats, categories as `str`, NaN for missing. The per-fold preprocessor (`gencv.engines.make_preprocessor`) imputes and
encodes it, fitted on the training fold only, so no statistic of a held-out row reaches the fit.
"""

from __future__ import annotations

import csv
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gencv.errors import DataError, SpecError, did_you_mean
from gencv.spec import DataSpec

__all__ = ["TableParts", "lag_windows", "read_table", "sniff_sep", "table_parts"]

log = logging.getLogger(__name__)

#: an integer target with at most this many distinct values is taken as class labels (data.task: auto)
MAX_AUTO_CLASSES = 50


@dataclass(frozen=True)
class TableParts:
    """What a table contributes to a Dataset (data.py turns it into one)."""

    X: np.ndarray  # float64 (NaN where missing), or object when `categorical` is non-empty
    y: np.ndarray
    task: str
    feature_names: list[str]
    categorical: tuple[int, ...] = ()
    groups: np.ndarray | None = None
    time_index: np.ndarray | None = None
    horizon: int = 1


def sniff_sep(path: Path) -> str:
    """The delimiter of a text table, guessed from its first lines (comma when nothing fits)."""
    with path.open("r", newline="", errors="replace") as fh:
        head = fh.read(64 * 1024)
    try:
        return csv.Sniffer().sniff(head, delimiters=",\t;|").delimiter
    except csv.Error:
        return ","


def read_table(spec: DataSpec, kind: str, path: str) -> pd.DataFrame:
    """The file as a DataFrame: csv with `data.sep` (sniffed when unset), or Parquet."""
    p = Path(path)
    if not p.exists():
        raise SpecError(f"data.source: got {spec.source!r}: file {path!r} does not exist")
    try:
        if kind == "csv":
            sep = spec.sep or sniff_sep(p)
            frame = pd.read_csv(p, sep=sep)
            log.info("read %s with delimiter %r", path, sep)
        else:
            frame = pd.read_parquet(p)
    except Exception as exc:  # noqa: BLE001 - pandas raises many kinds; all mean "cannot read"
        raise DataError(f"data.source: cannot read {kind} file {path!r}: {exc}") from None
    if len(frame) == 0:
        raise DataError(f"data.source: {kind} file {path!r} has no rows (columns: "
                        f"{', '.join(map(str, frame.columns)) or 'none'}); give a file with at least one data row")
    if kind == "csv" and frame.shape[1] == 1 and spec.sep is None:
        log.warning("%s: one column only (%r); if the file has another delimiter, set data.sep", path, frame.columns[0])
    return frame


def _is_categorical(col: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)


def _column_values(col: pd.Series, categorical: bool) -> np.ndarray:
    """Numbers as float64 with NaN for missing (pandas' NA included); categories as str with NaN for missing."""
    missing = col.isna().to_numpy()
    if not categorical:
        return col.astype("float64").to_numpy(na_value=np.nan) if missing.any() else col.to_numpy(dtype=np.float64)
    out = np.array([str(v) for v in col.astype(object).to_numpy()], dtype=object)
    out[missing] = np.nan
    return out


def _task(spec: DataSpec, y: pd.Series) -> str:
    """data.task, or the auto rule: non-numeric or bool -> classification; integer with <= 50 values -> classification."""
    if spec.task != "auto":
        if spec.task == "regression" and _is_categorical(y):
            raise DataError(f"data.task: got 'regression', but the target column {spec.target!r} is not numeric "
                            f"(e.g. {y.iloc[0]!r}); use data.task: classification, or a numeric target")
        return spec.task
    is_class = _is_categorical(y) or (pd.api.types.is_integer_dtype(y) and y.nunique() <= MAX_AUTO_CLASSES)
    task = "classification" if is_class else "regression"
    if pd.api.types.is_integer_dtype(y) and not pd.api.types.is_bool_dtype(y):
        log.info("data.task=auto: integer target %r with %d values -> %s (set data.task to choose)",
                 spec.target, y.nunique(), task)
    return task


def table_parts(spec: DataSpec, kind: str, path: str) -> TableParts:
    """Read a csv/parquet source and split it into features, target and side columns."""
    frame = read_table(spec, kind, path)
    cols = [str(c) for c in frame.columns]
    frame.columns = cols
    if spec.target is None:
        raise SpecError(f"data.target: required for {kind} sources; name the target column, one of: {', '.join(cols)}")
    for fld in ("target", "group", "time"):
        col = getattr(spec, fld)
        if col is not None and col not in cols:
            raise SpecError(f"data.{fld}: got {col!r}: no such column in {path}.{did_you_mean(col, cols)} "
                            f"Columns: {', '.join(cols)}")
    y_raw = frame[spec.target]
    if y_raw.isna().any():
        raise DataError(f"data.target: column {spec.target!r} has {int(y_raw.isna().sum())} missing values; drop or fill them")
    if spec.features is not None:
        missing = [c for c in spec.features if c not in cols]
        if missing:
            raise SpecError(f"data.features: columns {missing} not in {path}.{did_you_mean(missing[0], cols)}")
    if spec.time:
        time_index = _parse_time(frame[spec.time], spec.time)
        order = np.argsort(time_index, kind="stable")
        frame, time_index = frame.iloc[order].reset_index(drop=True), time_index[order]
        y_raw = frame[spec.target]
    else:
        time_index = None
    if spec.lags is not None:
        return _lagged_table(spec, frame, time_index, path)
    side = {c for c in (spec.target, spec.group, spec.time) if c is not None}
    feat = frame[spec.features] if spec.features is not None else frame.drop(columns=list(side))
    kinds = [_is_categorical(feat[c]) for c in feat.columns]
    _check_missing(feat, kinds, spec, path)
    cat = tuple(j for j, k in enumerate(kinds) if k)
    if cat:
        X = np.empty(feat.shape, dtype=object)
        for j, c in enumerate(feat.columns):
            X[:, j] = _column_values(feat[c], kinds[j])
    else:  # nullable dtypes (Int64, Float64) to plain numbers, pandas' NA to NaN
        X = feat.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
    groups = frame[spec.group].to_numpy() if spec.group else None
    return TableParts(X, y_raw.to_numpy(), _task(spec, y_raw), list(map(str, feat.columns)), cat,
                      groups=groups, time_index=time_index)


def _check_missing(feat: pd.DataFrame, kinds: list[bool], spec: DataSpec, path: str) -> None:
    """Under data.impute=none a missing value in a categorical or nullable (Int64, boolean, ...) column is refused
    here, naming every column with missing values; plain float NaN alone is left to data.py's finite check
    (which names NaN and inf together)."""
    checked = [c for c, k in zip(feat.columns, kinds) if k or pd.api.types.is_extension_array_dtype(feat[c])]
    if spec.impute != "none" or not feat[checked].isna().to_numpy().any():
        return
    na = feat.isna().sum()
    cols = ", ".join(f"{c!r} ({int(k)})" for c, k in na.items() if k)
    raise DataError(f"data.features: missing values in column(s) {cols} of {path}; set data.impute to mean, median "
                    "or most_frequent (fitted on each training fold), drop or fill those rows, or list complete "
                    "columns in data.features")


def lag_windows(series: np.ndarray, lags: int, horizon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of `lags` rows of `series` (T,) or (T, d) -> the next value `horizon` steps on.

    Returns (X (n, lags * d) time-major: the d values of the oldest step first; y (n,) the first column
    at t + horizon - 1 after the window; positions (n,) of those targets). Raises when fewer than 10 fit.
    """
    s = series.reshape(len(series), -1)
    n = len(s) - lags - horizon + 1
    if n < 10:
        raise DataError(f"data.lags={lags}, data.horizon={horizon}: the series of {len(s)} points leaves {n} windows; "
                        "use fewer lags")
    X = np.stack([s[i: i + lags].reshape(-1) for i in range(n)])
    pos = np.arange(lags + horizon - 1, lags + horizon - 1 + n)
    return X, s[pos, 0], pos


def _lagged_table(spec: DataSpec, frame: pd.DataFrame, time_index: np.ndarray | None, path: str) -> TableParts:
    """Lag windows of the target (and of data.features as exogenous series, lagged the same way), in time order."""
    cols = [str(spec.target), *(spec.features or [])]
    bad = [c for c in cols if _is_categorical(frame[c])]
    if bad:
        raise DataError(f"data.lags: column(s) {bad} of {path} are not numeric; lag windows need numeric series "
                        "(list numeric columns in data.features)")
    na = frame[cols].isna().sum()
    if na.any():
        raise DataError(f"data.lags: missing values in column(s) {[c for c, k in na.items() if k]} of {path}; lag "
                        "windows need complete series: fill or interpolate them first")
    if time_index is None:
        log.info("data.lags without data.time: windows follow the file's row order")
    X, y, pos = lag_windows(frame[cols].to_numpy(dtype=np.float64), spec.lags or 1, spec.horizon)
    names = [f"{c}_lag_{spec.lags - j}" for j in range(spec.lags or 1) for c in cols]
    t = time_index[pos] if time_index is not None else pos
    groups = frame[spec.group].to_numpy()[pos] if spec.group else None
    return TableParts(X, y, "regression", names, (), groups=groups, time_index=np.asarray(t), horizon=spec.horizon)


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
