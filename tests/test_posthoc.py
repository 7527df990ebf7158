from __future__ import annotations

import numpy as np
import pytest
from mlflow import MlflowClient

from gencv.errors import GencvError
from gencv.posthoc import measure_logged_run
from gencv.runner import run_experiment
from gencv.tracking import MlflowTracker

from .conftest import tiny

MEASURES = ["hessian_top", "hessian_trace", "adaptive_sharpness", "norms", "hessian_density"]


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

    post = measure_logged_run(tracker, out.run_id, ["hessian_top", "norms"])
    assert post.n_samples == len(out.dataset.y) - 30 and post.result.values["hessian_top_1"] > 0
    assert client.get_run(out.run_id).data.metrics["refit_hessian_top_1"] == pytest.approx(post.result.values["hessian_top_1"])
    assert post.result.values["n_params"] == out.cv.folds[0].measures["n_params"]


def test_posthoc_errors_are_clear(tracking_uri: str) -> None:
    tracker = MlflowTracker(tracking_uri)
    out = run_experiment(tiny(), tracker=tracker, refit=False)
    with pytest.raises(GencvError, match="cannot read artifact 'model_weights/state_dict.pt'"):
        measure_logged_run(tracker, out.run_id, ["norms"])
    with pytest.raises(ValueError, match="(?i)did you mean 'hessian_top'"):
        measure_logged_run(tracker, out.run_id, ["hesian_top"])


def test_unknown_measure_in_spec_is_a_spec_error() -> None:
    from gencv.errors import SpecError

    with pytest.raises(SpecError, match=r"measures: .*(?i:did you mean 'eps_sharpness')"):
        tiny(measures=["eps_sharpnes"])
    with pytest.raises(SpecError, match=r"measure_options: .*unknown measure option 'sample_sise'"):
        tiny(measure_options={"sample_sise": 3})
