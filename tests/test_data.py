from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gencv.data import SOURCES, holdout_test, load_dataset
from gencv.errors import DataError, SpecError
from gencv.spec import DataSpec


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
