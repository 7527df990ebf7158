"""Measures on an already logged run: rebuild the network from the logged spec and weights, no retraining."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from gencv.cv import derive_seed
from gencv.errors import GencvError
from gencv.measures import MeasureConfig, MeasureResult, compute_measures, plot_density, validate_measure_names
from gencv.runner import prepare
from gencv.spec import Experiment, load_experiment
from gencv.tracking import MlflowTracker

__all__ = ["PosthocResult", "measure_logged_run"]

log = logging.getLogger(__name__)


@dataclass
class PosthocResult:
    """Measures of a logged model and what they were computed on."""

    run_id: str
    experiment: Experiment
    result: MeasureResult
    n_samples: int


def _download(tracker: MlflowTracker, run_id: str, path: str, tmp: str) -> Path:
    try:
        return Path(tracker.client.download_artifacts(run_id, path, tmp))
    except Exception as exc:
        raise GencvError(
            f"run {run_id}: cannot read artifact {path!r} ({exc}); `gencv measure` needs a run made by "
            "`gencv run` with tracking on (it logs spec.yaml and model_weights/state_dict.pt)"
        ) from None


def measure_logged_run(
    tracker: MlflowTracker,
    run_id: str,
    names: Sequence[str],
    *,
    config: MeasureConfig | None = None,
    log_results: bool = True,
) -> PosthocResult:
    """Compute measures of a run's refit model on the data it was trained on (all non-test rows).

    The weights are read with `torch.load(weights_only=True)` into a network rebuilt from the
    logged spec, so no pickled code from the artifact store is executed.
    """
    names = validate_measure_names(list(names))
    if not names:
        raise GencvError("no measures given; pass e.g. --measures hessian_top,hessian_trace")
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = _download(tracker, run_id, "spec.yaml", tmp)
        exp = load_experiment(spec_path)
        state = torch.load(_download(tracker, run_id, "model_weights/state_dict.pt", tmp), weights_only=True)
    prep = prepare(exp, allow_large_loo=True)
    ds = prep.dataset
    est = prep.estimator
    module_cls, margs = est._module()
    module = module_cls(**margs)
    net_state = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    try:
        module.load_state_dict(net_state)
    except RuntimeError as exc:
        raise GencvError(f"run {run_id}: the logged weights do not fit the network of its spec: {exc}") from None
    module.eval()
    X = torch.as_tensor(ds.X[prep.cv_idx], dtype=torch.float32)
    Xs = (X - state["shift"].float()) / state["scale"].float()  # the refit's scaler, fit on these rows
    if ds.task == "classification":
        y = torch.as_tensor(ds.y[prep.cv_idx], dtype=torch.long)
        loss = torch.nn.functional.cross_entropy
    else:
        yv = torch.as_tensor(ds.y[prep.cv_idx], dtype=torch.float32).reshape(-1, 1)
        y = (yv - state["y_mean"]) / state["y_std"]
        loss = torch.nn.functional.mse_loss
    result = compute_measures(module, Xs, y, loss, names, seed=derive_seed(exp.seed, "posthoc"), config=config)
    if log_results:
        tracker.log_metrics(run_id, {f"refit_{k}": v for k, v in result.values.items()})
        tracker.set_tags(run_id, {"gencv.posthoc_measures": ",".join(names)})
        if result.density is not None:
            with tempfile.TemporaryDirectory() as tmp:
                png = Path(tmp) / "refit_hessian_density.png"
                plot_density(*result.density, png, result.eigenvalues)
                tracker.log_artifact(run_id, png, "plots")
    tracker.flush()
    return PosthocResult(run_id, exp, result, int(len(prep.cv_idx)))

