"""`tracking.fold_runs`: folds recorded in the parent run instead of one child run each."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from gencv.cv import FoldResult, ParentFoldLog, curve_sample
from gencv.errors import SpecError
from gencv.resume import _folds_in_parent
from gencv.runner import run_experiment
from gencv.spec import TrackingSpec
from gencv.studies.compare import load_run_scores
from gencv.tracking import MlflowTracker

from .conftest import tiny
from .test_tracking import _children, _Interrupt


@pytest.mark.parametrize(("mode", "n_folds", "child"), [
    ("auto", 30, True), ("auto", 31, False), ("always", 455, True), ("never", 2, False),
])
def test_auto_gives_fold_runs_up_to_the_stated_number(mode: str, n_folds: int, child: bool) -> None:
    assert TrackingSpec(fold_runs=mode).child_runs(n_folds) is child


def test_tracking_section_leaves_the_digest_and_refuses_unknown_modes() -> None:
    assert tiny(**{"tracking.fold_runs": "never"}).digest() == tiny().digest()
    with pytest.raises(SpecError, match="tracking.fold_runs"):
        tiny(**{"tracking.fold_runs": "sometimes"})


@pytest.mark.parametrize(("n", "k", "expected"), [(455, 5, [0, 114, 227, 340, 454]), (3, 5, [0, 1, 2]),
                                                  (10, 1, [0]), (10, 0, [])])
def test_curve_sample_is_evenly_spaced(n: int, k: int, expected: list[int]) -> None:
    assert curve_sample(n, k) == expected


class _Writes:
    """A tracker that keeps the parent-run writes ParentFoldLog makes, in order."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, object]] = []

    def log_steps(self, run_id: str, steps: dict) -> None:
        self.writes.append(("steps", sorted(steps)))

    def log_series(self, run_id: str, series: dict, start_step: int = 1) -> None:
        self.writes.append(("series", sorted(series)))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.writes.append(("text", [r["index"] for r in json.loads(text)]))


def _fold(i: int, ok: bool = True) -> FoldResult:
    return FoldResult(index=i, seed=i, n_train=9, n_valid=1, status="ok" if ok else "failed",
                      valid_scores={"accuracy": i / 10}, history=[{"epoch": 1, "curve_train_loss": 0.5}])


def test_parent_fold_log_writes_in_batches_and_on_close() -> None:
    w = _Writes()
    log = ParentFoldLog(w, "run", curves=[0, 4], every=2, seconds=1e9)
    for i in range(5):
        log.add(_fold(i))
    assert w.writes == [("steps", [0, 1]), ("series", ["fold-0/curve_train_loss"]), ("text", [0, 1]),
                        ("steps", [2, 3]), ("text", [2, 3])]
    log.close()  # the rest, also when the run stops early
    assert w.writes[5:] == [("steps", [4]), ("series", ["fold-4/curve_train_loss"]), ("text", [4])]
    log.close()
    assert len(w.writes) == 8  # nothing pending: nothing written twice
    timed = ParentFoldLog(w, "run", every=100, seconds=0.0)
    timed.add(_fold(7))
    assert w.writes[-1] == ("text", [7])  # older than `seconds`: written at once


@pytest.mark.slow
def test_folds_in_the_parent_run_match_fold_runs_for_compare(tracking_uri: str) -> None:
    tracker = MlflowTracker(tracking_uri)
    inside = run_experiment(tiny(**{"tracking.fold_runs": "never", "tracking.curve_folds": 2}), tracker=tracker)
    apart = run_experiment(tiny(**{"tracking.fold_runs": "always"}), tracker=tracker)
    tracker.flush()
    client = MlflowClient(tracking_uri)
    parent = client.get_run(inside.run_id)
    assert _children(client, parent) == [] and len(_children(client, client.get_run(apart.run_id))) == 3
    hist = client.get_metric_history(inside.run_id, "fold_valid_accuracy")
    assert sorted(m.step for m in hist) == [0, 1, 2]
    for m in hist:
        assert m.value == pytest.approx(inside.cv.folds[m.step].valid_scores["accuracy"], abs=1e-12)
    keys = set(parent.data.metrics)
    assert {"fold-0/curve_train_loss", "fold-2/curve_train_loss"} <= keys and "fold-1/curve_train_loss" not in keys
    curve = client.get_metric_history(inside.run_id, "fold-2/curve_train_loss")
    assert len(curve) == inside.cv.folds[2].epochs_run
    (batch,) = client.list_artifacts(inside.run_id, "fold_results")  # 3 folds: one batch
    records = json.loads(Path(client.download_artifacts(inside.run_id, batch.path)).read_text())
    assert [r["index"] for r in records] == [0, 1, 2]
    assert batch.path.startswith("fold_results/folds-0-2-")
    assert set(_folds_in_parent(client, inside.run_id)) == {0, 1, 2}
    assert "folds.csv" in {a.path for a in client.list_artifacts(inside.run_id)}
    # compare reads the same per-fold scores either way (same spec and seed: same folds and fits)
    a, b = load_run_scores(client, inside.run_id), load_run_scores(client, apart.run_id)
    assert a.scores.keys() == b.scores.keys() == {0, 1, 2}
    np.testing.assert_allclose([a.scores[i] for i in range(3)], [b.scores[i] for i in range(3)], atol=1e-12)
    assert a.n_train == pytest.approx(b.n_train) and a.n_test == pytest.approx(b.n_test)


@pytest.mark.slow
def test_resume_reads_finished_folds_from_the_parent_run(tracking_uri: str) -> None:
    tracker = MlflowTracker(tracking_uri)
    exp = tiny(**{"tracking.fold_runs": "never"})
    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp, tracker=tracker, progress=_Interrupt(fold=1))
    client = MlflowClient(tracking_uri)
    (parent,) = client.search_runs([tracker.experiment_id("tiny")], filter_string="tags.`gencv.kind` = 'cv'")
    assert parent.info.status == "KILLED"
    (batch,) = client.list_artifacts(parent.info.run_id, "fold_results")  # written on Ctrl-C, not lost
    (fold0,) = json.loads(Path(client.download_artifacts(parent.info.run_id, batch.path)).read_text())
    assert fold0["index"] == 0
    resumed = run_experiment(exp, tracker=tracker, resume=parent.info.run_id)
    tracker.flush()
    assert resumed.cv.folds[0].fit_seconds == fold0["fit_seconds"]  # fold 0 reused, not refitted
    assert len(client.get_metric_history(parent.info.run_id, "fold_valid_accuracy")) == 3  # one value per fold
    fresh = run_experiment(exp, tracker=tracker)
    assert [f.valid_scores for f in resumed.cv.folds] == [f.valid_scores for f in fresh.cv.folds]


def test_resume_reads_batches_and_the_one_fold_files_of_earlier_versions(tracking_uri: str) -> None:
    tracker = MlflowTracker(tracking_uri, writer="inline")
    run_id = tracker.start_run("old", "p")
    tracker.log_text(run_id, json.dumps(_fold(3).to_json()), "fold_results/fold-3.json")  # gencv before batches
    tracker.log_text(run_id, json.dumps([_fold(0).to_json(), _fold(1, ok=False).to_json()]),
                     "fold_results/folds-0-1-abcd1234.json")
    done = _folds_in_parent(MlflowClient(tracking_uri), run_id)
    assert sorted(done) == [0, 3]  # the failed fold 1 is fitted again
    assert done[3].valid_scores == {"accuracy": 0.3} and done[0].run_id == run_id
