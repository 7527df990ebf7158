from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gencv.runner import prepare, run_experiment
from gencv.studies.permutation import permutation_test
from gencv.tracking import MlflowTracker

from .conftest import tiny


def test_measure_notes_reach_the_outcome_once_per_distinct_note() -> None:
    # A sample size above the training fold: every fold uses its whole fold and says so.
    exp = tiny(**{"measures": ["norms"], "measure_options": {"sample_size": 10_000}, "train.max_epochs": 2})
    out = run_experiment(exp, refit=False)
    notes = [n for n in out.notes if n.startswith("measures")]
    assert len(notes) == 1 and notes[0].startswith("measures, folds 0, 1, 2:"), out.notes
    assert "10000" in notes[0]
    assert all(f.measure_notes for f in out.cv.folds)


def test_rolling_cv_on_data_that_is_no_time_series_warns_in_the_output() -> None:
    """iris sorted by class under rolling CV once gave a refit test accuracy of 0.0 without a word."""
    exp = tiny(**{"cv.kind": "rolling", "cv.n_splits": 3, "train.max_epochs": 2})
    out = run_experiment(exp, refit=False)
    warned = [n for n in out.notes if "not a time series" in n]
    assert len(warned) == 1 and "cv.kind=rolling" in warned[0] and "data.time" in warned[0]
    assert not [n for n in run_experiment(tiny(**{"train.max_epochs": 2}), refit=False).notes
                if "time series" in n]


def test_held_out_predictions_are_the_scored_ones_and_cover_every_cv_row_once() -> None:
    out = run_experiment(tiny(**{"train.max_epochs": 3}), refit=False)
    h = out.held_out
    assert sorted(h["row"]) == sorted(np.concatenate([f.valid for f in prepare(out.experiment).folds]))
    for f in out.cv.folds:
        rows = h[h["fold"] == f.index]
        assert (rows["y_true"] == out.dataset.y[rows["row"]]).all()
        assert (rows["y_true"] == rows["y_pred"]).mean() == pytest.approx(f.valid_scores["accuracy"], abs=1e-12)


def test_parent_run_gets_confusion_matrix_per_class_report_and_permutation_test(tracking_uri: str,
                                                                                 tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from sklearn.metrics import precision_recall_fscore_support

    out = permutation_test(tiny(**{"train.max_epochs": 2}), 2, tracker=MlflowTracker(tracking_uri), refit=False)
    client = MlflowClient(tracking_uri)
    metrics = client.get_run(out.run_id).data.metrics
    assert metrics["permutation_n"] == 2
    assert metrics["permutation_p_value"] == pytest.approx(out.permutation.p_value, abs=1e-12)
    assert metrics["permutation_null_mean"] == pytest.approx(out.permutation.null_mean, abs=1e-12)
    paths = {a.path for a in client.list_artifacts(out.run_id)} | {
        a.path for a in client.list_artifacts(out.run_id, "plots")}
    assert {"per_class.csv", "permutation_scores.csv", "plots/confusion_matrix.png",
            "plots/permutation_null.png"} <= paths
    scores = pd.read_csv(client.download_artifacts(out.run_id, "permutation_scores.csv", str(tmp_path)))
    np.testing.assert_allclose(scores["valid_accuracy"], out.permutation.null_scores, atol=1e-12)
    per_class = pd.read_csv(client.download_artifacts(out.run_id, "per_class.csv", str(tmp_path)))
    y_true, y_pred = out.held_out["y_true"], out.held_out["y_pred"]
    p, r, f1, s = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2], zero_division=0)
    assert list(per_class["class"]) == out.dataset.classes == ["setosa", "versicolor", "virginica"]
    for col, ref in (("precision", p), ("recall", r), ("f1", f1), ("support", s)):
        np.testing.assert_allclose(per_class[col], ref, atol=1e-12, err_msg=col)
    # no fold runs for the permutations: only the true CV's folds are children of the run
    children = client.search_runs([client.get_run(out.run_id).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{out.run_id}'")
    assert len(children) == len(out.cv.folds)
