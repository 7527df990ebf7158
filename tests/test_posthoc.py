from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from gencv.errors import GencvError
from gencv.measures import MeasureConfig, compute_measures
from gencv.posthoc import measure_logged_run
from gencv.runner import prepare, run_experiment
from gencv.seeds import derive_seed
from gencv.tracking import MlflowTracker

from .conftest import tiny

MEASURES = ["hessian_top", "hessian_trace", "adaptive_sharpness", "norms", "hessian_density"]
POSTHOC = ["hessian_top", "hessian_trace", "norms"]


def test_measures_are_logged_per_fold_summarised_and_plotted(tracking_uri: str) -> None:
    tracker = MlflowTracker(tracking_uri)
    exp = tiny(measures=MEASURES, measure_options={"sample_size": 60, "trace_max_probes": 30, "density_steps": 15})
    out = run_experiment(exp, tracker=tracker)
    client = MlflowClient(tracking_uri)
    for f in out.cv.folds:
        assert f.measures["measure_sample_size"] == 60 and f.measures["hessian_top_1"] > 0
        assert f.measures["dist_from_init"] > 0 and "measure_loss" in f.measures
        fold_run = client.get_run(f.run_id)
        assert fold_run.data.metrics["hessian_top_1"] == pytest.approx(f.measures["hessian_top_1"])
    parent = client.get_run(out.run_id).data.metrics
    assert parent["hessian_top_1_mean"] == pytest.approx(np.mean([f.measures["hessian_top_1"] for f in out.cv.folds]))
    plots = {a.path for a in client.list_artifacts(out.run_id, "plots")}
    assert "plots/measures_vs_gap.png" in plots and "plots/hessian_density_fold0.png" in plots
    # the same seed gives the same numbers
    again = run_experiment(exp, tracker=tracker)
    assert again.cv.folds[1].measures["hessian_trace"] == out.cv.folds[1].measures["hessian_trace"]

    post = measure_logged_run(tracker, out.run_id, POSTHOC)
    # measured on the rows the refit was fitted on: 120 non-test rows minus its early-stopping split (20%)
    assert post.n_samples == len(out.dataset.y) - 30 - 24 and post.result.values["hessian_top_1"] > 0
    assert client.get_run(out.run_id).data.metrics["refit_hessian_top_1"] == pytest.approx(post.result.values["hessian_top_1"])
    assert post.result.values["n_params"] == out.cv.folds[0].measures["n_params"]
    # the run's measure_options are used (sample_size 60 of the 96 fitted rows)
    assert post.config == MeasureConfig(**exp.measure_options) and post.result.values["sample_size"] == 60
    # the refit's initial weights are logged, so the distance from them is measured too
    assert not any("dist_from_init" in n for n in post.result.notes)
    init = out.refit_estimator.init_state_
    moved = sum(float(((p.detach() - init[k]) ** 2).sum()) for k, p in out.refit_estimator.net_.module_.named_parameters())
    assert post.result.values["dist_from_init"] == pytest.approx(np.sqrt(moved), rel=1e-6)
    # the same numbers as compute_measures on the refit estimator's own module, preprocessing and labels
    direct = _direct_measures(out, POSTHOC)
    assert set(post.result.values) == set(direct)
    for key, value in direct.items():
        assert post.result.values[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    # explicit overrides go on top of the spec's options; a full config replaces them (and says so)
    over = measure_logged_run(tracker, out.run_id, ["norms"], overrides={"sample_size": 40}, log_results=False)
    assert over.result.values["sample_size"] == 40 and over.config.trace_max_probes == 30
    full = measure_logged_run(tracker, out.run_id, ["norms"], config=MeasureConfig(sample_size=50), log_results=False)
    assert full.result.values["sample_size"] == 50 and full.config.trace_max_probes == 200
    assert any("measure_options" in n and "were not used" in n for n in full.result.notes)
    # the command line: same numbers, the run's options by default, --sample-size on top
    from typer.testing import CliRunner

    from gencv.cli import app

    res = CliRunner().invoke(app, ["measure", out.run_id, "--measures", "hessian_top,norms", "--tracking-uri",
                                   tracking_uri, "--no-log"])
    assert res.exit_code == 0, res.output
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in res.stdout.splitlines()
            if line.count("│") == 3}
    assert rows["hessian_top_1"] == f"{post.result.values['hessian_top_1']:.6g}" and rows["sample_size"] == "60"
    res = CliRunner().invoke(app, ["measure", "0" * 32, "--tracking-uri", tracking_uri])
    assert res.exit_code == 2 and "Traceback" not in res.output


def _direct_measures(out, names: list[str]) -> dict[str, float]:
    """compute_measures on the refit estimator's own module, preprocessing and targets (labels / scaled y)."""
    exp, est = out.experiment, out.refit_estimator
    assert est is not None
    cv_idx = prepare(exp).cv_idx
    rows = cv_idx[est.fit_positions(out.dataset.y[cv_idx])]  # the refit's fitted rows (no early-stopping split)
    loss = torch.nn.functional.cross_entropy if est.task == "classification" else torch.nn.functional.mse_loss
    return compute_measures(
        est.net_.module_, torch.as_tensor(est.preprocess_.transform(out.dataset.X[rows])),
        torch.as_tensor(est.encode_target(out.dataset.y[rows])), loss, names,
        seed=derive_seed(exp.seed, "posthoc"), config=MeasureConfig(**exp.measure_options), init_state=est.init_state_,
    ).values


def test_posthoc_regression_matches_the_refit_estimator(tracking_uri: str) -> None:
    """Regression: the logged y_mean / y_std and scaler give the estimator's own standardised targets."""
    tracker = MlflowTracker(tracking_uri)
    exp = tiny(**{"data.source": "diabetes", "cv.kind": "kfold", "cv.n_splits": 2, "metric": "rmse",
                  "train.max_epochs": 2, "train.early_stopping": None}, measure_options={"sample_size": 80})
    out = run_experiment(exp, tracker=tracker)
    names = ["hessian_top", "hessian_trace"]
    post = measure_logged_run(tracker, out.run_id, names, log_results=False)
    direct = _direct_measures(out, names)
    assert post.result.values["sample_size"] == 80 and set(post.result.values) == set(direct)
    for key, value in direct.items():
        assert post.result.values[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_posthoc_errors_are_clear(tracking_uri: str) -> None:
    tracker = MlflowTracker(tracking_uri)
    out = run_experiment(tiny(), tracker=tracker, refit=False)
    with pytest.raises(GencvError, match="cannot read artifact 'model_weights/state_dict.pt'"):
        measure_logged_run(tracker, out.run_id, ["norms"])
    with pytest.raises(ValueError, match="(?i)did you mean 'hessian_top'"):
        measure_logged_run(tracker, out.run_id, ["hesian_top"])
    with pytest.raises(ValueError, match=r"overrides: unknown measure option 'sample_sise'.*(?i:did you mean)"):
        measure_logged_run(tracker, out.run_id, ["norms"], overrides={"sample_sise": 3})


def test_unknown_measure_in_spec_is_a_spec_error() -> None:
    from gencv.errors import SpecError

    with pytest.raises(SpecError, match=r"measures: .*(?i:did you mean 'eps_sharpness')"):
        tiny(measures=["eps_sharpnes"])
    with pytest.raises(SpecError, match=r"measure_options: .*unknown measure option 'sample_sise'"):
        tiny(measure_options={"sample_sise": 3})


def test_corrupted_or_truncated_weights_are_one_message_not_a_silent_load(tracking_uri: str) -> None:
    """64 overwritten bytes once loaded silently (norm 1e33); the logged SHA-256 catches them before loading."""
    from pathlib import Path
    from urllib.parse import urlparse

    from typer.testing import CliRunner

    from gencv.checksums import sha256_file, tag_key
    from gencv.cli import app

    tracker = MlflowTracker(tracking_uri)
    out = run_experiment(tiny(**{"cv.n_splits": 2, "train.max_epochs": 2}), tracker=tracker)
    client = MlflowClient(tracking_uri)
    weights = Path(urlparse(client.get_run(out.run_id).info.artifact_uri).path) / "model_weights" / "state_dict.pt"
    tags = client.get_run(out.run_id).data.tags
    assert tags[tag_key("model_weights/state_dict.pt")] == sha256_file(weights)
    assert tag_key("model_weights/init_state_dict.pt") in tags
    good = weights.read_bytes()

    def measure() -> object:
        return CliRunner().invoke(app, ["measure", out.run_id, "--measures", "norms", "--tracking-uri", tracking_uri,
                                        "--no-log"])

    assert measure().exit_code == 0
    broken = bytearray(good)
    broken[len(good) // 2 : len(good) // 2 + 64] = b"\x7f" * 64  # inside a tensor's bytes: torch.load would not notice
    weights.write_bytes(bytes(broken))
    res = measure()
    assert res.exit_code == 2 and "corrupted or was replaced" in res.output and "Traceback" not in res.output
    weights.write_bytes(good[: len(good) // 3])  # truncated
    res = measure()
    assert res.exit_code == 2 and "corrupted or was replaced" in res.output and "Traceback" not in res.output
    # a run of an older gencv (no checksum tag): a truncated file is still one message, not a traceback
    client.delete_tag(out.run_id, tag_key("model_weights/state_dict.pt"))
    res = measure()
    assert res.exit_code == 2 and "not a readable weights file" in res.output and "Traceback" not in res.output
    weights.write_bytes(good)
    res = measure()
    assert res.exit_code == 0 and "no SHA-256 was logged" in res.output
