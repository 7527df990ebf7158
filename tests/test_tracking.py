from __future__ import annotations

from pathlib import Path

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
    assert {"spec.yaml", "folds.csv", "summary.md", "summary.csv", "plots", "model_weights"} <= arts
    assert "model" not in arts  # the model lives in its LoggedModel, not copied into the run's artifacts
    assert {a.path for a in client.list_artifacts(out.run_id, "plots")} == {
        "plots/fold_scores.png", "plots/learning_curves.png", "plots/confusion_matrix.png"}
    for child in children:
        assert {a.path for a in client.list_artifacts(child.info.run_id, "plots")} == {"plots/learning_curve.png"}
    sd_path = client.download_artifacts(out.run_id, "model_weights/state_dict.pt")
    state = torch.load(sd_path, weights_only=True)
    model = load_logged_model(tracker, out.run_id)
    assert set(state) == set(model.state_dict())
    X = out.dataset.X[:20]
    with torch.no_grad():
        reloaded = model(torch.as_tensor(X)).numpy()
    np.testing.assert_allclose(reloaded, out.refit_estimator.predict_proba(X), atol=1e-5)


def test_refit_is_a_logged_model_of_the_parent_run_and_registered(tracking_uri: str) -> None:
    import json

    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    from gencv import __version__

    tracker = MlflowTracker(tracking_uri)
    out = run_experiment(tiny(), tracker=tracker, register="tiny-net")
    client = MlflowClient(tracking_uri)
    parent = client.get_run(out.run_id)
    (lm,) = client.search_logged_models([parent.info.experiment_id])
    assert lm.source_run_id == out.run_id and lm.name == "model" and str(lm.status) == "READY"
    assert lm.tags["gencv.version"] == __version__
    assert json.loads(lm.tags["gencv.classes"]) == ["setosa", "versicolor", "virginica"] == out.dataset.classes
    assert lm.params["train.lr"] == "0.02"  # the run's spec, on the model page too
    assert [o.model_id for o in parent.outputs.model_outputs] == [lm.model_id]  # the run's Models column
    assert parent.data.tags["gencv.model_id"] == lm.model_id
    mlmodel = Model.load(download_artifacts(artifact_uri=f"{lm.artifact_location}/MLmodel"))
    assert mlmodel.model_id == lm.model_id and mlmodel.run_id == out.run_id
    assert mlmodel.signature is not None and mlmodel.saved_input_example_info is not None
    assert mlmodel.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] in ([-1, 4], (-1, 4))
    assert mlmodel.metadata == {"gencv_version": __version__, "task": "classification",
                                "classes": ["setosa", "versicolor", "virginica"],
                                "feature_names": list(out.dataset.feature_names), "input": "raw features"}
    (version,) = client.search_model_versions("name = 'tiny-net'")
    assert int(version.version) == 1 and version.source == lm.artifact_location and version.run_id == out.run_id
    lm = client.get_logged_model(lm.model_id)
    assert json.loads(lm.tags["mlflow.modelVersions"]) == [{"name": "tiny-net", "version": 1}]
    assert parent.data.tags["gencv.registered_model"] == "tiny-net/1"
    # through the registry, MLflow's own loader predicts as the in-memory refit does
    import mlflow.pytorch

    with torch.no_grad():
        via_registry = mlflow.pytorch.load_model(
            download_artifacts(artifact_uri=version.source, tracking_uri=tracking_uri))(torch.as_tensor(out.dataset.X))
    np.testing.assert_allclose(via_registry.numpy(), out.refit_estimator.predict_proba(out.dataset.X), atol=1e-5)


def test_datasets_are_run_inputs_whole_on_the_parent_parts_on_each_fold(tracking_uri: str) -> None:
    import json

    from gencv.checksums import rows_digest

    tracker = MlflowTracker(tracking_uri)
    out = run_experiment(tiny(), tracker=tracker, refit=False)
    client = MlflowClient(tracking_uri)
    ds = out.dataset
    (whole,) = client.get_run(out.run_id).inputs.dataset_inputs
    assert (whole.dataset.name, whole.dataset.digest, whole.tags) == ("iris", ds.digest, [])
    assert whole.dataset.source_type == "code"
    assert json.loads(whole.dataset.source)["tags"]["loader"] == "sklearn.datasets.load_iris"
    assert json.loads(whole.dataset.profile) == {"features_shape": [150, 4], "features_size": 600,
                                                 "features_nbytes": 2400, "targets_shape": [150], "targets_size": 150,
                                                 "targets_nbytes": 1200}
    schema = json.loads(json.loads(whole.dataset.schema)["mlflow_tensorspec"]["features"])
    assert schema == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}}]
    for child in _children(client, client.get_run(out.run_id)):
        fold = int(child.data.tags["gencv.fold"])
        rows = json.loads(Path(client.download_artifacts(child.info.run_id, "fold_rows.json")).read_text())
        assert set(rows) == {"training", "early_stopping", "validation"}
        parts = [set(v) for v in rows.values()]
        assert sum(map(len, parts)) == len(set().union(*parts))  # disjoint
        assert len(rows["training"]) == out.cv.folds[fold].n_fit and len(rows["validation"]) == out.cv.folds[fold].n_valid
        inputs = {i.tags[0].value: i.dataset for i in child.inputs.dataset_inputs}
        assert set(inputs) == {"training", "early_stopping", "validation"}
        for ctx, d in inputs.items():
            assert d.name == f"iris[fold {fold} {ctx}]" and d.digest == rows_digest(np.array(rows[ctx]), of=ds.digest)
            assert json.loads(d.profile)["features_shape"] == [len(rows[ctx]), 4]  # counts, never the rows
            assert d.source == whole.dataset.source


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
    old["data"]["lags"] = 12  # data.lags defaulted to 12 before tables could be windowed
    client.set_tag(parent.info.run_id, "gencv.spec_digest",
                   hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16])
    with sqlite3.connect(tracking_uri.removeprefix("sqlite:///")) as db:
        db.execute("DELETE FROM params WHERE run_uuid = ? AND key = 'cv.max_loo_samples'", (parent.info.run_id,))
        db.execute("UPDATE params SET value = '12' WHERE run_uuid = ? AND key = 'data.lags'", (parent.info.run_id,))
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


def test_data_ref_of_a_file_is_its_uri_and_parts_are_digests_of_their_rows(tmp_path: Path) -> None:
    import json
    from types import SimpleNamespace

    from gencv.tracking import DataRef

    ds = SimpleNamespace(name="table", digest="abc123", X=np.zeros((10, 3), np.float32), y=np.zeros(10, np.int64))
    ref = DataRef.of(ds, f"csv:{tmp_path}/t.csv")
    assert (ref.source_type, json.loads(ref.source)) == ("local", {"uri": (tmp_path / "t.csv").as_uri()})
    assert (ref.n_rows, ref.row_shape, ref.features_dtype, ref.targets_dtype) == (10, (3,), "float32", "int64")
    parts = ref.fold_parts(2, {"validation": np.array([7, 8]), "training": np.arange(7), "early_stopping": np.array([])})
    assert [(p.name, p.context, p.n_rows) for p in parts] == [("table[fold 2 training]", "training", 7),
                                                              ("table[fold 2 validation]", "validation", 2)]
    assert parts[1].digest != ref.part("x", np.array([7, 9]), "validation").digest  # other rows, other digest
    assert parts[1].digest == ref.part("x", np.array([7, 8]), "validation").digest


def test_new_experiment_is_marked_as_model_training(tracking_uri: str) -> None:
    from gencv.cli.ui import ui_url
    from gencv.tracking.mlflow_tracker import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    tracker = MlflowTracker(tracking_uri, writer="inline")
    exp_id = tracker.experiment_id("kind-check")
    assert MlflowClient(tracking_uri).get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert EXPERIMENT_KIND == "custom_model_development"  # the value MLflow's UI bundle names its model-training view
    # MLflow 3.17's UI picks its view from the address (or the browser's own choice), not from the tag
    assert ui_url("127.0.0.1", 5000) == "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
