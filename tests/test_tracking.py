from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from gencv.errors import GencvError
from gencv.runner import run_experiment
from gencv.tracking import MlflowTracker, load_logged_model, resolve_tracking_uri

from .conftest import tiny


def _children(client: MlflowClient, run) -> list:  # type: ignore[no-untyped-def]
    return client.search_runs([run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")


def test_run_tree_metrics_artifacts_and_reloadable_model(tracking_uri: str) -> None:
    tracker = MlflowTracker(tracking_uri)
    exp = tiny()
    out = run_experiment(exp, tracker=tracker)
    client = MlflowClient(tracking_uri)
    parent = client.get_run(out.run_id)
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["gencv.spec_digest"] == exp.digest() and tags["gencv.data_digest"] == out.dataset.digest
    assert tags["gencv.seed"] == "0" and tags["gencv.version"]
    from gencv.seeds import derive_seed

    assert tags["gencv.seed.cv"] == str(derive_seed(0, "cv")) and tags["gencv.seed.test"] == str(derive_seed(0, "test"))
    assert parent.data.params["train.lr"] == "0.02" and parent.data.params["cv.kind"] == "stratified"
    m = parent.data.metrics
    vals = [f.valid_scores["accuracy"] for f in out.cv.folds]
    assert m["valid_accuracy_mean"] == pytest.approx(np.mean(vals)) and m["n_failed_folds"] == 0
    assert m["valid_accuracy_std"] == pytest.approx(np.std(vals, ddof=1))
    children = _children(client, parent)
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    for child in children:
        fold = out.cv.folds[int(child.data.tags["gencv.fold"])]
        hist = client.get_metric_history(child.info.run_id, "curve_train_loss")
        assert [h.step for h in hist] == list(range(1, fold.epochs_run + 1))
        for curve in ("curve_valid_loss", "curve_valid_accuracy"):  # a point for every epoch, the last included
            assert len(client.get_metric_history(child.info.run_id, curve)) == fold.epochs_run
        assert child.data.metrics["valid_accuracy"] == pytest.approx(fold.valid_scores["accuracy"])
    arts = {a.path for a in client.list_artifacts(out.run_id)}
    assert {"spec.yaml", "folds.csv", "summary.md", "summary.csv", "plots", "model", "model_weights"} <= arts
    assert {a.path for a in client.list_artifacts(out.run_id, "plots")} == {
        "plots/fold_scores.png", "plots/learning_curves.png", "plots/confusion_matrix.png"}
    from mlflow.models import Model

    mlmodel = Model.load(client.download_artifacts(out.run_id, "model/MLmodel"))
    assert mlmodel.signature is not None and mlmodel.saved_input_example_info is not None
    assert mlmodel.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] in ([-1, 4], (-1, 4))
    model = load_logged_model(tracker, out.run_id)
    X = out.dataset.X[:20]
    with torch.no_grad():
        reloaded = model(torch.as_tensor(X)).numpy()
    np.testing.assert_allclose(reloaded, out.refit_estimator.predict_proba(X), atol=1e-5)
    sd_path = client.download_artifacts(out.run_id, "model_weights/state_dict.pt")
    state = torch.load(sd_path, weights_only=True)
    assert set(state) == set(model.state_dict())


class _Interrupt:
    """Progress that presses Ctrl-C during the given fold."""

    def __init__(self, fold: int) -> None:
        self.fold = fold

    def fold_start(self, fold: int, n: int, e: int) -> None:
        pass

    def epoch_end(self, fold: int, epoch: int, row: object) -> None:
        if fold == self.fold and epoch == 2:
            raise KeyboardInterrupt

    def fold_end(self, fold: int, result: object) -> None:
        pass


def test_interrupted_run_is_killed_then_resumed_without_redoing_finished_folds(tracking_uri: str) -> None:
    tracker = MlflowTracker(tracking_uri)
    exp = tiny()
    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp, tracker=tracker, progress=_Interrupt(fold=1))
    client = MlflowClient(tracking_uri)
    (parent,) = client.search_runs([tracker.experiment_id("tiny")], filter_string="tags.`gencv.kind` = 'cv'")
    assert parent.info.status == "KILLED"
    statuses = sorted(c.info.status for c in _children(client, parent))
    assert statuses == ["FINISHED", "KILLED"]  # fold 0 done, fold 1 killed, never left RUNNING
    resumed = run_experiment(exp, tracker=tracker, resume=parent.info.run_id)
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    fold_runs = _children(client, parent)
    assert sorted(r.data.tags["gencv.fold"] for r in fold_runs) == ["0", "1", "1", "2"]  # fold 0 not refitted
    fresh = run_experiment(exp, tracker=tracker)
    assert [f.valid_scores for f in resumed.cv.folds] == [f.valid_scores for f in fresh.cv.folds]


def test_resume_refuses_another_spec(tracking_uri: str) -> None:
    from gencv.errors import GencvError

    tracker = MlflowTracker(tracking_uri)
    out = run_experiment(tiny(), tracker=tracker, refit=False)
    with pytest.raises(GencvError, match="used another spec"):
        run_experiment(tiny(**{"train.lr": 0.5}), tracker=tracker, resume=out.run_id)


def test_resume_with_another_override_names_each_differing_field(tracking_uri: str) -> None:
    from gencv.errors import GencvError

    tracker = MlflowTracker(tracking_uri)
    out = run_experiment(tiny(), tracker=tracker, refit=False)
    with pytest.raises(GencvError, match=r"train\.lr: the run has 0\.02, this spec 0\.5; "
                                         r"train\.max_epochs: the run has 4, this spec 9\. .*drop the --set"):
        run_experiment(tiny(**{"train.lr": 0.5, "train.max_epochs": 9}), tracker=tracker, resume=out.run_id)


@pytest.mark.parametrize("logged", ["spec.yaml", "params only"])
def test_resume_of_a_run_made_before_a_spec_key_existed(tracking_uri: str, logged: str) -> None:
    """An older gencv knew no cv.max_loo_samples: its run logged neither the key nor a digest covering it."""
    import hashlib
    import json
    import sqlite3
    from pathlib import Path
    from urllib.parse import urlparse

    import yaml

    tracker = MlflowTracker(tracking_uri)
    exp = tiny()
    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp, tracker=tracker, progress=_Interrupt(fold=1), refit=False)
    client = MlflowClient(tracking_uri)
    (parent,) = client.search_runs([tracker.experiment_id("tiny")], filter_string="tags.`gencv.kind` = 'cv'")
    old = exp.model_dump(mode="json")
    del old["cv"]["max_loo_samples"]
    client.set_tag(parent.info.run_id, "gencv.spec_digest",
                   hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16])
    with sqlite3.connect(tracking_uri.removeprefix("sqlite:///")) as db:
        db.execute("DELETE FROM params WHERE run_uuid = ? AND key = 'cv.max_loo_samples'", (parent.info.run_id,))
    spec_file = Path(urlparse(parent.info.artifact_uri).path) / "spec.yaml"
    assert spec_file.exists()
    if logged == "spec.yaml":
        spec_file.write_text(yaml.safe_dump(old, sort_keys=False))
    else:  # interrupted before it logged spec.yaml (gencv logged it only at the end)
        spec_file.unlink()
    resumed = run_experiment(exp, tracker=tracker, resume=parent.info.run_id, refit=False)
    assert client.get_run(parent.info.run_id).info.status == "FINISHED" and len(resumed.cv.ok_folds) == 3
    assert sorted(r.data.tags["gencv.fold"] for r in _children(client, parent)) == ["0", "1", "1", "2"]
    with pytest.raises(GencvError, match=r"cv\.n_splits: the run has 3, this spec 4"):
        run_experiment(tiny(**{"cv.n_splits": 4}), tracker=tracker, resume=parent.info.run_id)


def test_failure_marks_run_failed(tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import gencv.runner as runner

    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(runner, "_log_parent", boom)
    tracker = MlflowTracker(tracking_uri)
    with pytest.raises(RuntimeError):
        runner.run_experiment(tiny(), tracker=tracker, refit=False)
    client = MlflowClient(tracking_uri)
    (parent,) = client.search_runs([tracker.experiment_id("tiny")], filter_string="tags.`gencv.kind` = 'cv'")
    assert parent.info.status == "FAILED"


def test_file_store_is_refused_with_a_fix() -> None:
    from gencv.errors import TrackingError

    with pytest.raises(TrackingError, match="use sqlite:///mlruns/mlflow.db"):
        resolve_tracking_uri("./mlruns")


def test_new_experiment_is_marked_as_model_training(tracking_uri: str) -> None:
    from gencv.cli.ui import ui_url
    from gencv.tracking.mlflow_tracker import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    tracker = MlflowTracker(tracking_uri, writer="inline")
    exp_id = tracker.experiment_id("kind-check")
    assert MlflowClient(tracking_uri).get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert EXPERIMENT_KIND == "custom_model_development"  # the value MLflow's UI bundle names its model-training view
    # MLflow 3.17's UI picks its view from the address (or the browser's own choice), not from the tag
    assert ui_url("127.0.0.1", 5000) == "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
