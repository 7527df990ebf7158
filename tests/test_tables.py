"""Real tables: delimiters, categorical columns, missing values, the task rule, lag windows, leak-free preprocessing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gencv.data import load_dataset
from gencv.engines import NetClassifier, export_input, get_engine, make_preprocessor
from gencv.errors import DataError
from gencv.runner import prepare, run_experiment
from gencv.spec import DataSpec, load_experiment

from .conftest import ROOT, tiny


def _mixed(n: int = 120, seed: int = 0) -> pd.DataFrame:
    """String labels, a categorical column, a bool column, missing numbers and categories."""
    rng = np.random.default_rng(seed)
    city = rng.choice(["Lisbon", "Porto", "Braga"], size=n).astype(object)
    x = rng.normal(size=n)
    z = rng.normal(size=n)
    label = np.where(x + (city == "Lisbon") > 0.3, "yes", "no")
    x[rng.choice(n, 12, replace=False)] = np.nan
    city[rng.choice(n, 9, replace=False)] = None
    return pd.DataFrame({"x": x, "city": city, "z": z, "member": rng.random(n) < 0.5, "label": label})


def _write(frame: pd.DataFrame, path: Path, sep: str) -> str:
    frame.to_csv(path, sep=sep, index=False)
    return f"csv:{path}"


@pytest.mark.parametrize("sep", ["\t", ";", ",", "|"])
def test_delimiter_is_sniffed_or_given(tmp_path: Path, sep: str) -> None:
    frame = pd.DataFrame({"a": np.arange(30) * 0.5, "b": np.arange(30) % 4, "y": np.arange(30) * 1.5})
    src = _write(frame, tmp_path / "t.txt", sep)
    for given in (None, sep):
        ds = load_dataset(DataSpec(source=src, target="y", sep=given))
        assert ds.feature_names == ["a", "b"] and ds.task == "regression"
        np.testing.assert_allclose(ds.X, frame[["a", "b"]].to_numpy(), atol=0)


def test_sep_accepts_tab_by_name() -> None:
    assert DataSpec(sep="tab").sep == "\t" and DataSpec(sep="\\t").sep == "\t"
    with pytest.raises(ValueError, match="one character"):
        DataSpec(sep=";;")


def test_mixed_table_keeps_categories_and_missing_values_for_the_fold_pipeline(tmp_path: Path) -> None:
    frame = _mixed()
    src = _write(frame, tmp_path / "m.tsv", "\t")
    with pytest.raises(DataError, match=r"missing values in column\(s\) 'x' \(12\), 'city' \(9\).*data.impute"):
        load_dataset(DataSpec(source=src, target="label"))
    ds = load_dataset(DataSpec(source=src, target="label", impute="median"))
    assert ds.task == "classification" and ds.classes == ["no", "yes"]
    assert ds.categorical == (1, 3) and ds.X.dtype == object
    np.testing.assert_array_equal(pd.isna(ds.X[:, 1]), frame["city"].isna())
    assert set(ds.X[~pd.isna(ds.X[:, 1]), 1]) == {"Lisbon", "Porto", "Braga"}
    assert set(ds.X[:, 3]) == {"True", "False"}
    np.testing.assert_allclose(ds.X[:, 0].astype(float), frame["x"], atol=0, equal_nan=True)
    assert len(ds.digest) == 16 and ds.digest == load_dataset(DataSpec(source=src, target="label", impute="median")).digest


@pytest.mark.parametrize("engine", ["skorch", "batched"])
def test_imputer_and_encoder_statistics_are_the_training_folds(tmp_path: Path, engine: str) -> None:
    src = _write(_mixed(), tmp_path / "m.tsv", "\t")
    exp = tiny(**{"data.source": src, "data.target": "label", "data.impute": "median", "train.max_epochs": 1,
                  "train.engine": engine, "cv.n_splits": 3})
    prep = prepare(exp)
    ds = prep.dataset
    fits = list(get_engine(engine).fit_folds(prep.estimator, ds.X, ds.y, prep.folds, [1, 2, 3]))
    differs = 0
    for fit in fits:
        assert fit.error is None, fit.error
        cols = fit.estimator.preprocess_.named_steps["columns"]
        rows = ds.X[fit.fold.train]
        num = cols.named_transformers_["num"].named_steps
        cat = cols.named_transformers_["cat"].named_steps
        ref_median = [np.nanmedian(rows[:, j].astype(float)) for j in (0, 2)]
        np.testing.assert_allclose(num["impute"].statistics_, ref_median, rtol=0, atol=1e-12)
        x_ok = rows[:, [0, 2]].astype(float)
        x_filled = np.where(np.isnan(x_ok), ref_median, x_ok)
        np.testing.assert_allclose(num["scale"].mean_, x_filled.mean(0), atol=1e-12)
        for k, j in enumerate((1, 3)):
            counts = pd.Series(rows[:, j]).dropna().value_counts()
            top = min(counts[counts == counts.max()].index)  # SimpleImputer breaks ties by the smallest
            assert cat["impute"].statistics_[k] == top
            np.testing.assert_array_equal(cat["encode"].categories_[k], sorted(counts.index))
        differs += not np.allclose(num["impute"].statistics_, [np.nanmedian(ds.X[prep.cv_idx][:, j].astype(float))
                                                              for j in (0, 2)])
    assert differs > 0  # the check has power: some fold's medians differ from those of all CV rows


@pytest.mark.parametrize("categorical", ["onehot", "ordinal"])
def test_unseen_category_in_a_held_out_fold_does_not_crash(categorical: str) -> None:
    X = np.array([[float(i), "a" if i % 2 else "b"] for i in range(40)], dtype=object)
    X[:, 0] = X[:, 0].astype(float)
    y = np.arange(40) % 2
    est = NetClassifier(hidden=(4,), max_epochs=2, early_stopping=False, categorical=categorical,
                        categorical_features=[1], random_state=0).fit(X, y)
    new = np.array([[3.0, "never seen"], [4.0, "a"]], dtype=object)
    proba = est.predict_proba(new)
    assert proba.shape == (2, 2) and np.all(np.isfinite(proba))
    Xt = est.preprocess_.transform(new)
    if categorical == "onehot":
        np.testing.assert_array_equal(Xt[0, 1:], [0.0, 0.0])  # unseen -> all zeros
        assert est.n_inputs_ == 3
    else:
        enc = est.preprocess_.named_steps["columns"].named_transformers_["cat"].named_steps
        assert enc["encode"].transform(np.array([["never seen"]], dtype=object))[0, 0] == -1
        assert est.n_inputs_ == 2


@pytest.mark.parametrize("engine", ["skorch", "batched"])
def test_a_fold_without_a_category_gets_a_narrower_network_and_still_trains(tmp_path: Path, engine: str) -> None:
    frame = _mixed().dropna()
    frame.loc[frame.index[5], "city"] = "Faro"  # one row: the fold holding it out never sees the category
    src = _write(frame, tmp_path / "m.csv", ",")
    exp = tiny(**{"data.source": src, "data.target": "label", "data.test_size": 0.0, "train.max_epochs": 2,
                  "train.engine": engine, "cv.n_splits": 3})
    prep = prepare(exp)
    fits = list(get_engine(engine).fit_folds(prep.estimator, prep.dataset.X, prep.dataset.y, prep.folds, [1, 2, 3]))
    assert all(f.error is None for f in fits)
    widths = [f.estimator.n_inputs_ for f in fits]
    assert sorted(widths) == [7, 8, 8]  # x, z + city (3 or 4) + member (2)
    lacking = next(f for f in fits if f.estimator.n_inputs_ == 7)
    assert np.all(np.isfinite(lacking.estimator.predict_proba(prep.dataset.X[lacking.fold.valid])))


def test_exported_model_fills_missing_values_and_takes_encoded_rows() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    X[rng.random(X.shape) < 0.1] = np.nan
    y = (np.nan_to_num(X[:, 0]) > 0).astype(int)
    est = NetClassifier(hidden=(4,), max_epochs=3, early_stopping=False, impute="mean", random_state=0).fit(X, y)
    np.testing.assert_allclose(est.preprocess_.named_steps["impute"].statistics_, np.nanmean(X, 0), atol=1e-12)
    with torch.no_grad():
        out = est.to_torch()(torch.as_tensor(export_input(est.preprocess_, X))).numpy()
    np.testing.assert_allclose(out, est.predict_proba(X), atol=1e-5)
    Xc = np.empty((60, 2), dtype=object)
    Xc[:, 0], Xc[:, 1] = X[:, 0], np.where(y == 1, "u", "v")
    est = NetClassifier(hidden=(4,), max_epochs=3, early_stopping=False, impute="median", categorical_features=[1],
                        random_state=0).fit(Xc, y)
    with torch.no_grad():
        out = est.to_torch()(torch.as_tensor(export_input(est.preprocess_, Xc))).numpy()
    np.testing.assert_allclose(out, est.predict_proba(Xc), atol=1e-5)


def test_task_rule_and_override(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": np.linspace(0, 1, 40), "y": np.arange(40) % 3, "s": ["p", "q"] * 20})
    src = _write(frame, tmp_path / "t.csv", ",")
    assert load_dataset(DataSpec(source=src, target="y", features=["a"])).task == "classification"  # int, 3 values
    ds = load_dataset(DataSpec(source=src, target="y", features=["a"], task="regression"))
    assert ds.task == "regression" and ds.classes == [] and ds.y.dtype == np.float32
    with pytest.raises(DataError, match="data.task: got 'regression'.*not numeric"):
        load_dataset(DataSpec(source=src, target="s", features=["a"], task="regression"))
    frame["y"] = np.arange(40)  # 40 distinct integers: still <= 50, classification unless told
    src = _write(frame, tmp_path / "t2.csv", ",")
    assert load_dataset(DataSpec(source=src, target="y", features=["a"])).task == "classification"


def test_nullable_dtypes_work_and_their_na_follows_impute(tmp_path: Path) -> None:
    frame = pd.DataFrame({
        "i": pd.array([1, 2, None, 4] * 10, dtype="Int64"),
        "b": pd.array([True, False, True, None] * 10, dtype="boolean"),
        "s": pd.array(["u", "v", None, "u"] * 10, dtype="string"),
        "y": np.arange(40) * 0.5,
    })
    path = tmp_path / "n.parquet"
    frame.to_parquet(path)
    with pytest.raises(DataError, match=r"'i' \(10\), 'b' \(10\), 's' \(10\)"):
        load_dataset(DataSpec(source=f"parquet:{path}", target="y"))
    ds = load_dataset(DataSpec(source=f"parquet:{path}", target="y", impute="most_frequent"))
    assert ds.categorical == (1, 2)
    Xt = make_preprocessor("none", impute="most_frequent", categorical_features=ds.categorical,
                           n_features=3).fit_transform(ds.X)
    # i: NA -> most frequent (1, tied with 2 and 4: the smallest); b, s one-hot (False/True, u/v)
    np.testing.assert_allclose(Xt[:4], [[1, 0, 1, 1, 0], [2, 1, 0, 0, 1], [1, 0, 1, 1, 0], [4, 0, 1, 1, 0]], atol=0)
    complete = frame.dropna()
    complete.to_parquet(path)
    ds = load_dataset(DataSpec(source=f"parquet:{path}", target="y", features=["i"]))
    assert ds.X.dtype == np.float32
    np.testing.assert_allclose(ds.X[:, 0], complete["i"].astype(float), atol=0)


@pytest.mark.parametrize("horizon", [1, 3])
def test_lag_windows_from_a_csv_ordered_by_parsed_dates(tmp_path: Path, horizon: int) -> None:
    n, lags = 40, 4
    dates = pd.date_range("2020-01-01", periods=n, freq="D")
    sales, temp = np.arange(n) ** 1.5, np.sin(np.arange(n))
    order = np.random.default_rng(0).permutation(n)  # the file is not in time order
    frame = pd.DataFrame({"day": dates.strftime("%Y-%m-%d")[order], "sales": sales[order], "temp": temp[order]})
    src = _write(frame, tmp_path / "s.csv", ";")
    ds = load_dataset(DataSpec(source=src, target="sales", time="day", features=["temp"], lags=lags,
                               horizon=horizon))
    m = n - lags - horizon + 1
    ref = np.stack([np.column_stack([sales, temp])[i: i + lags].ravel() for i in range(m)])
    np.testing.assert_allclose(ds.X, ref.astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(ds.y, sales[lags + horizon - 1:], rtol=1e-6)
    assert ds.time_index[0] == np.datetime64(dates[lags + horizon - 1]) and ds.horizon == horizon
    assert ds.feature_names[:2] == [f"sales_lag_{lags}", f"temp_lag_{lags}"]
    assert ds.min_gap == horizon - 1
    only = load_dataset(DataSpec(source=src, target="sales", time="day", lags=lags))
    np.testing.assert_allclose(only.X, np.stack([sales[i: i + lags] for i in range(n - lags)]), rtol=1e-6)
    assert only.feature_names == [f"sales_lag_{lags - j}" for j in range(lags)]


def test_example_table_spec_runs_leak_free_with_impute_and_onehot() -> None:
    import os

    cwd = os.getcwd()
    os.chdir(ROOT)  # the spec's path is relative to the repository root
    try:
        exp = load_experiment(ROOT / "experiments" / "table_mixed.yaml").with_overrides({"train.max_epochs": 3})
        t0 = time.perf_counter()
        out = run_experiment(exp, refit=True)
    finally:
        os.chdir(cwd)
    assert out.dataset.classes == ["high", "low", "mid"] and out.dataset.categorical == (2, 3)
    assert all(f.status == "ok" for f in out.cv.folds) and len(out.cv.folds) == 5
    assert out.refit_test_scores["accuracy"] > 0.4  # three classes, 46% of them 'high'
    names = np.array(out.dataset.classes, dtype=object)
    np.testing.assert_array_equal(out.held_out["pred_label"], names[out.held_out["y_pred"]])
    np.testing.assert_array_equal(out.held_out["true_label"], names[out.held_out["y_true"]])
    assert time.perf_counter() - t0 < 60


@pytest.mark.slow
def test_logged_model_carries_class_names_and_preprocessor_and_gencv_measure_matches(tmp_path: Path,
                                                                                  tracking_uri: str) -> None:
    import pickle

    from mlflow import MlflowClient
    from mlflow.models import Model

    from gencv.measures import MeasureConfig, compute_measures
    from gencv.posthoc import measure_logged_run
    from gencv.seeds import derive_seed
    from gencv.tracking import MlflowTracker
    from gencv.tracking.mlflow_tracker import load_logged_model

    src = _write(_mixed(), tmp_path / "m.tsv", "\t")
    exp = tiny(**{"data.source": src, "data.target": "label", "data.impute": "mean", "data.categorical": "ordinal",
                  "train.max_epochs": 2, "cv.n_splits": 2}, measure_options={"sample_size": 40})
    tracker = MlflowTracker(tracking_uri)
    out = run_experiment(exp, tracker=tracker)
    tracker.flush()
    client = MlflowClient(tracking_uri)
    from mlflow.artifacts import download_artifacts

    model_id = client.get_run(out.run_id).data.tags["gencv.model_id"]  # the refit is a LoggedModel of the run
    local = download_artifacts(artifact_uri=f"{client.get_logged_model(model_id).artifact_location}/MLmodel",
                               dst_path=str(tmp_path / "dl"))
    meta = Model.load(local).metadata
    assert meta["classes"] == ["no", "yes"] and meta["task"] == "classification"
    assert meta["input"].startswith("preprocessed")
    held = pd.read_csv(client.download_artifacts(out.run_id, "held_out_predictions.csv", str(tmp_path / "h")))
    assert set(held["true_label"]) == {"no", "yes"} and len(held) == len(prepare(exp).cv_idx)
    pre = pickle.loads(Path(client.download_artifacts(out.run_id, "model_weights/preprocessor.pkl",
                                                      str(tmp_path / "p"))).read_bytes())
    est, X = out.refit_estimator, out.dataset.X[:7]
    model = load_logged_model(tracker, out.run_id)
    with torch.no_grad():
        proba = model(torch.as_tensor(pre.transform(X))).numpy()
    np.testing.assert_allclose(proba, est.predict_proba(X), atol=1e-5)
    # gencv measure refits the preprocessor on the refit's rows: the same inputs as the refit's own
    names = ["hessian_trace"]
    post = measure_logged_run(tracker, out.run_id, names, log_results=False)
    cv_idx = prepare(exp).cv_idx
    rows = cv_idx[est.fit_positions(out.dataset.y[cv_idx])]
    direct = compute_measures(est.net_.module_, torch.as_tensor(est.preprocess_.transform(out.dataset.X[rows])),
                              torch.as_tensor(est.encode_target(out.dataset.y[rows])),
                              torch.nn.functional.cross_entropy, names, seed=derive_seed(exp.seed, "posthoc"),
                              config=MeasureConfig(**exp.measure_options), init_state=est.init_state_).values
    for key, value in direct.items():
        assert post.result.values[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
