from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gencv.data import SOURCES, holdout_test, load_dataset
from gencv.errors import DataError, SpecError
from gencv.spec import CVSpec, DataSpec, validate_experiment
from gencv.splits import make_folds


@pytest.mark.parametrize("source", [s for s in SOURCES if ":" not in s])
def test_every_builtin_source_loads(source: str) -> None:
    ds = load_dataset(DataSpec(source=source), seed=0)
    assert ds.X.dtype == np.float32 and ds.X.ndim == 2 and len(ds.y) == ds.n_samples
    assert ds.task == SOURCES[source][0]
    if ds.task == "classification":
        assert ds.y.dtype == np.int64 and ds.y.min() == 0
    else:
        assert ds.y.dtype == np.float32
    assert len(ds.digest) == 16


def test_lag_windows_look_only_at_the_past() -> None:
    ds = load_dataset(DataSpec(source="sunspots", lags=3), seed=0)
    raw = pd.read_csv(Path(__file__).resolve().parents[1] / "gencv" / "datasets" / "sunspots.csv")["sunspots"].to_numpy()
    # window i holds raw[i:i+3] and its target is raw[i+3]
    assert np.allclose(ds.X[5], raw[5:8]) and ds.y[5] == pytest.approx(raw[8])
    assert np.all(np.diff(ds.time_index) > 0)


def test_csv_string_labels_are_encoded(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    pd.DataFrame({"a": [1.0, 2, 3, 4, 5, 6], "b": [0.5] * 6, "label": ["cat", "dog"] * 3}).to_csv(p, index=False)
    ds = load_dataset(DataSpec(source=f"csv:{p}", target="label"))
    assert ds.task == "classification" and ds.classes == ["cat", "dog"] and list(ds.y[:2]) == [0, 1]
    assert ds.feature_names == ["a", "b"]


def test_csv_errors_name_the_column(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    pd.DataFrame({"a": [1.0, np.nan, 3], "b": [1.0, 2, np.inf], "y": [0, 1, 0]}).to_csv(p, index=False)
    with pytest.raises(SpecError, match="data.target: got 'label': no such column"):
        load_dataset(DataSpec(source=f"csv:{p}", target="label"))
    with pytest.raises(SpecError, match="data.target: required"):
        load_dataset(DataSpec(source=f"csv:{p}"))
    with pytest.raises(DataError, match=r"\['a', 'b'\] contain NaN or inf"):
        load_dataset(DataSpec(source=f"csv:{p}", target="y"))
    q = tmp_path / "r.csv"
    pd.DataFrame({"a": np.arange(30.0), "y": np.r_[np.linspace(0, 1, 29), np.inf]}).to_csv(q, index=False)
    with pytest.raises(DataError, match=r"target column 'y' has 1 NaN or inf value"):
        load_dataset(DataSpec(source=f"csv:{q}", target="y"))
    with pytest.raises(SpecError, match="does not exist"):
        load_dataset(DataSpec(source=f"csv:{tmp_path}/none.csv", target="y"))


def test_parquet_source_with_group_column(tmp_path: Path) -> None:
    p = tmp_path / "d.parquet"
    rng = np.random.default_rng(0)
    pd.DataFrame({"x": rng.normal(size=40), "g": np.repeat(np.arange(8), 5), "y": rng.normal(size=40)}).to_parquet(p)
    ds = load_dataset(DataSpec(source=f"parquet:{p}", target="y", group="g"))
    assert ds.task == "regression" and ds.feature_names == ["x"] and len(np.unique(ds.groups)) == 8


def test_unknown_source_suggests() -> None:
    with pytest.raises(SpecError, match="Did you mean 'iris'"):
        load_dataset(DataSpec(source="irsi"))


def test_holdout_test_set_rules() -> None:
    ts = load_dataset(DataSpec(source="sunspots"), seed=0)
    cv, test = holdout_test(ts, 0.2, seed=0)
    assert test.min() > cv.max()  # the test period is the most recent one
    grouped = load_dataset(DataSpec(source="synthetic_grouped"), seed=0)
    cv, test = holdout_test(grouped, 0.2, seed=0)
    assert not set(grouped.groups[cv]) & set(grouped.groups[test])
    iris = load_dataset(DataSpec(source="iris"))
    cv, test = holdout_test(iris, 0.2, seed=0)
    assert len(test) == 30 and np.all(np.bincount(iris.y[test]) == 10)  # stratified
    assert not set(cv) & set(test) and len(cv) + len(test) == 150
    assert len(holdout_test(iris, 0.0, seed=0)[1]) == 0


def _dated_csv(tmp_path: Path, fmt: str) -> Path:
    """40 monthly rows, shuffled, with the date written as text in `fmt`; `step` counts months."""
    dates = pd.date_range("1993-01-01", periods=40, freq="MS")
    order = np.random.default_rng(0).permutation(40)
    text = {"us": lambda d: d.strftime("%m/%d/%Y"), "mon": lambda d: f"{d:%b}-{d.day}-{d.year}"}[fmt]
    frame = pd.DataFrame({"date": [text(dates[i]) for i in order], "step": order.astype(float),
                          "y": 2.0 * order + 0.5})
    assert not frame["date"].is_monotonic_increasing  # text order is not time order
    p = tmp_path / f"{fmt}.csv"
    frame.to_csv(p, index=False)
    return p


@pytest.mark.parametrize("fmt", ["us", "mon"])  # 03/15/1995, Jan-1-1995
def test_csv_date_strings_are_sorted_by_time_and_rolling_folds_follow_it(tmp_path: Path, fmt: str) -> None:
    p = _dated_csv(tmp_path, fmt)
    ds = load_dataset(DataSpec(source=f"csv:{p}", target="y", time="date"))
    assert ds.time_index.dtype.kind == "M"  # parsed as datetimes, not kept as text
    assert np.all(np.diff(ds.time_index) > np.timedelta64(0))
    assert np.array_equal(ds.X[:, 0], np.arange(40))  # the rows moved with their dates
    assert np.array_equal(ds.y, 2.0 * np.arange(40) + 0.5)
    folds = make_folds(CVSpec(kind="rolling", n_splits=4), y=ds.y, task=ds.task, seed=0,
                       indices=np.arange(ds.n_samples), is_time_series=True)
    for f in folds:
        assert ds.time_index[f.train].max() < ds.time_index[f.valid].min()


def test_numeric_time_column_stays_numeric(tmp_path: Path) -> None:
    p = tmp_path / "n.csv"
    pd.DataFrame({"year": [2003, 2001, 2002, 2000] * 5, "x": np.arange(20.0), "y": np.arange(20.0)}).to_csv(p, index=False)
    ds = load_dataset(DataSpec(source=f"csv:{p}", target="y", time="year"))
    assert ds.time_index.dtype.kind == "i" and np.all(np.diff(ds.time_index) >= 0)


def test_unparseable_time_column_names_field_value_and_fix(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv"
    dates = ["03/15/1995", "12/01/1994", "not a date", "01/02/1995"] * 3
    pd.DataFrame({"date": dates, "x": np.arange(12.0), "y": np.arange(12.0)}).to_csv(p, index=False)
    with pytest.raises(DataError, match=r"data\.time: column 'date' cannot be read as dates .*got 'not a date'.*ISO 8601"):
        load_dataset(DataSpec(source=f"csv:{p}", target="y", time="date"))
    q = tmp_path / "gap.csv"
    pd.DataFrame({"date": ["1995-01-01", None, "1995-03-01"], "x": [1.0, 2, 3], "y": [1.0, 2, 3]}).to_csv(q, index=False)
    with pytest.raises(DataError, match=r"data\.time: column 'date' has 1 missing value"):
        load_dataset(DataSpec(source=f"csv:{q}", target="y", time="date"))


def test_target_listed_as_feature_is_rejected_before_loading() -> None:
    raw = {"data": {"source": "csv:d.csv", "target": "y", "features": ["a", "y"]}}
    with pytest.raises(SpecError, match=r"data\.features: got \['a', 'y'\]: lists the target column 'y'.*"
                                        r"remove 'y' from data\.features, e\.g\. data\.features=\['a'\]"):
        validate_experiment(raw)


def test_features_without_the_target_and_lag_windows_stay_allowed(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    pd.DataFrame({"a": np.arange(12.0), "b": np.ones(12), "y": np.arange(12.0) * 3}).to_csv(p, index=False)
    ds = load_dataset(validate_experiment({"data": {"source": f"csv:{p}", "target": "y", "features": ["a"]}}).data)
    assert ds.feature_names == ["a"]
    lagged = load_dataset(validate_experiment({"data": {"source": "sunspots", "lags": 4}}).data)
    assert lagged.feature_names == ["lag_4", "lag_3", "lag_2", "lag_1"]  # past copies of the target are fine


def test_header_only_csv_says_no_rows(tmp_path: Path) -> None:
    p = tmp_path / "empty.csv"
    p.write_text("a,b,y\n")
    with pytest.raises(DataError, match=r"has no rows \(columns: a, b, y\)"):
        load_dataset(DataSpec(source=f"csv:{p}", target="y"))


def test_nullable_integer_column_with_na_is_one_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "na.parquet"
    frame = pd.DataFrame({"a": pd.array([1, None, 3, 4] * 5, dtype="Int64"), "b": np.arange(20.0),
                          "y": [0, 1] * 10})
    frame.to_parquet(p)
    with pytest.raises(DataError, match=r"data.features: missing values in column\(s\) 'a' \(5\)"):
        load_dataset(DataSpec(source=f"parquet:{p}", target="y"))
    # without NA, nullable dtypes load as plain numbers
    frame["a"] = pd.array(range(20), dtype="Int64")
    frame.to_parquet(p)
    ds = load_dataset(DataSpec(source=f"parquet:{p}", target="y"))
    assert ds.X[:, 0].tolist() == list(map(float, range(20)))
