"""Measures on an already logged run: rebuild the network from the logged spec and weights, no retraining."""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gencv.checksums import sha256_file, tag_key
from gencv.engines.transfer import new_head_
from gencv.errors import GencvError, SpecError, did_you_mean
from gencv.measures import (
    MeasureConfig,
    MeasureResult,
    compute_measures,
    plot_density,
    save_landscapes,
    validate_measure_names,
)
from gencv.models import load_module
from gencv.modref import is_file_ref
from gencv.runner import prepare, refit_rows
from gencv.seeds import derive_seed
from gencv.spec import Experiment, load_experiment
from gencv.tracking import MlflowTracker
from gencv.tracking.weights import download_artifact, load_logged_weights

__all__ = ["PosthocResult", "measure_logged_run"]

log = logging.getLogger(__name__)


@dataclass
class PosthocResult:
    """Measures of a logged model and what they were computed on."""

    run_id: str
    experiment: Experiment
    result: MeasureResult
    n_samples: int
    config: MeasureConfig | None = None


def _download(tracker: MlflowTracker, run_id: str, path: str, tmp: str) -> Path:
    return download_artifact(tracker.client, run_id, path, tmp)


def _load_weights(tracker: MlflowTracker, run_id: str, path: str, tmp: str, tags: Mapping[str, str],
                  notes: list[str]) -> dict[str, Any]:
    """A logged state dict, its SHA-256 checked against the run's tag first; every failure one GencvError."""
    return load_logged_weights(tracker.client, run_id, path, tmp, tags, notes)


def _logged_module(tracker: MlflowTracker, run_id: str, exp: Experiment, tmp: str, tags: Mapping[str, str],
                   notes: list[str]) -> Any:
    """model.kind=custom: the class or factory from the copy of its file logged with the run (not the file
    where it now is); an importable module whose copy does not import alone is imported by name."""
    ref = str(exp.model.module)
    name = ref.rpartition(":")[2]
    files = [a.path for a in tracker.client.list_artifacts(run_id, "model_weights/module")]
    if not files:
        notes.append(f"model.module: the run logged no copy of {ref}; imported it from where it is now")
        return None
    local = _download(tracker, run_id, files[0], tmp)
    expected = tags.get(tag_key(files[0]))
    if expected is not None and sha256_file(local) != expected:
        raise GencvError(f"run {run_id}: {files[0]} is corrupted or was replaced (its SHA-256 differs from the "
                         "one the run logged); re-run `gencv run` to log the model again")
    try:
        return load_module(f"{local}:{name}")
    except SpecError as exc:
        if is_file_ref(ref):
            raise GencvError(f"run {run_id}: the logged copy of model.module ({files[0]}) does not load: {exc}") \
                from None
        notes.append(f"model.module: the logged copy of {ref} does not import on its own ({exc}); imported "
                     f"{ref.rpartition(':')[0]} by name instead")
        return None


def _check_overrides(config: MeasureConfig | None, overrides: Mapping[str, Any] | None) -> None:
    if config is not None and not isinstance(config, MeasureConfig):
        raise TypeError(f"config must be a MeasureConfig or None, got {type(config).__name__}")
    if overrides is None:
        return
    if not isinstance(overrides, Mapping):
        raise TypeError(f"overrides must be a mapping of MeasureConfig fields, got {type(overrides).__name__}")
    fields = {f.name for f in dataclasses.fields(MeasureConfig)}
    for key in overrides:
        if key not in fields:
            raise ValueError(
                f"overrides: unknown measure option {key!r}; allowed: {', '.join(sorted(fields))}."
                + did_you_mean(str(key), fields)
            )


def _resolve_config(
    exp: Experiment, config: MeasureConfig | None, overrides: Mapping[str, Any] | None, notes: list[str]
) -> MeasureConfig:
    """The spec's `measure_options` (or `config` when given), with `overrides` on top."""
    if config is None:
        base = MeasureConfig(**exp.measure_options)
    else:
        base = config
        if exp.measure_options:
            notes.append(
                f"config was given, so the run's measure_options {exp.measure_options} were not used; pass "
                "overrides={...} instead to change only some of them"
            )
    return dataclasses.replace(base, **dict(overrides)) if overrides else base


def measure_logged_run(
    tracker: MlflowTracker,
    run_id: str,
    names: Sequence[str],
    *,
    config: MeasureConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    log_results: bool = True,
) -> PosthocResult:
    """Compute measures of a run's refit model on the rows it was fitted on (non-test rows minus its early-stopping split).

    The weights are read with `torch.load(weights_only=True)` into a network rebuilt from the
    logged spec, so no pickled code from the artifact store is executed.

    Parameters
    ----------
    tracker, run_id
        The MLflow store and the parent run made by `gencv run`.
    names
        Measures from `MEASURE_NAMES`.
    config
        A complete `MeasureConfig` that replaces the spec's `measure_options` (a note says so when the
        spec had some). None (default): start from the run's `measure_options`.
    overrides
        `MeasureConfig` fields set on top, e.g. ``{"sample_size": 256}``; unknown names raise ValueError.
    log_results
        Log the values as ``refit_<key>`` metrics (and the density plot) on the run.
    """
    names = validate_measure_names(list(names))
    if not names:
        raise GencvError("no measures given; pass e.g. --measures hessian_top,hessian_trace")
    _check_overrides(config, overrides)
    try:
        tracker.client.get_run(run_id)
    except Exception as exc:  # MLflow's "not found" and its kin: one message, exit 2
        raise GencvError(f"run {run_id!r}: not found in {tracker.tracking_uri} ({str(exc).splitlines()[0]}); pass "
                         "the run id `gencv run` printed (or --tracking-uri of the store it was logged to)") from None
    with tempfile.TemporaryDirectory() as tmp:
        logged = {a.path for a in tracker.client.list_artifacts(run_id, "model_weights")}
        # the refit model's own spec (a study's best trial); runs of older versions have only spec.yaml
        model_spec = "model_weights/model_spec.yaml"
        exp = load_experiment(_download(tracker, run_id, model_spec if model_spec in logged else "spec.yaml", tmp))
        tags = tracker.client.get_run(run_id).data.tags
        notes: list[str] = []
        state = _load_weights(tracker, run_id, "model_weights/state_dict.pt", tmp, tags, notes)
        init_state = None
        if "model_weights/init_state_dict.pt" in logged:  # runs of gencv before it was logged lack it
            init_state = _load_weights(tracker, run_id, "model_weights/init_state_dict.pt", tmp, tags, notes)
        module = _logged_module(tracker, run_id, exp, tmp, tags, notes) if exp.model.kind == "custom" else None
    cfg = _resolve_config(exp, config, overrides, notes)
    prep = prepare(exp, allow_large_loo=True, module=module, tracking_uri=tracker.tracking_uri)
    ds = prep.dataset
    est = prep.estimator
    # The rows the refit's network was fitted on: the non-test rows (subsampled to data.train_fraction)
    # but its early-stopping split (recovered from the refit's seed, as the refit drew them).
    refit_est = est.set_params(random_state=derive_seed(exp.seed, "refit"))
    given = refit_rows(exp, prep)
    groups = None if ds.groups is None else ds.groups[given]
    rows = given[refit_est.fit_positions(ds.y[given], groups)]
    # held-out rows for the landscape measures: the test set, else the refit's early-stopping split
    held_rows = prep.test_idx if len(prep.test_idx) else np.setdiff1d(given, rows)
    if ds.categorical or exp.data.impute != "none":
        # imputation and encoding are not in the logged buffers: the refit's preprocessor is fitted again
        # on the rows given to the refit (deterministic), as the refit fitted it
        refit_est.prepare_fit(ds.X[given], ds.y[given])

        def scaled(r: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(refit_est.scaled(ds.X[r])).float()
    else:
        # The refit's scaler was fit on the rows given to the refit: (x - shift) / scale in float64, then float32 like the estimator.
        def scaled(r: np.ndarray) -> torch.Tensor:
            X = torch.as_tensor(ds.X[r], dtype=torch.float64)
            return ((X - state["shift"].double()) / state["scale"].double()).float()
    Xs = scaled(rows)
    module = est.build_module(Xs.shape[1])
    if est.base is not None:  # a transferred network: its new output block, as training built it
        new_head_(module, est.base, init=est.init, activation=est.activation)
    net_state = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    try:
        module.load_state_dict(net_state)
    except RuntimeError as exc:
        raise GencvError(f"run {run_id}: the logged weights do not fit the network of its spec: {exc}") from None
    module.eval()

    def target(r: np.ndarray) -> torch.Tensor:
        if ds.task == "classification":
            return torch.as_tensor(ds.y[r], dtype=torch.long)
        yv = torch.as_tensor(ds.y[r], dtype=torch.float32).reshape(-1, 1)
        return (yv - state["y_mean"]) / state["y_std"]

    y = target(rows)
    loss = torch.nn.functional.cross_entropy if ds.task == "classification" else torch.nn.functional.mse_loss
    held_out = (scaled(held_rows), target(held_rows)) if len(held_rows) else None
    result = compute_measures(module, Xs, y, loss, names, seed=derive_seed(exp.seed, "posthoc"), config=cfg,
                              init_state=init_state, held_out=held_out)
    result.notes[:0] = notes
    if "norms" in names and init_state is None:
        result.notes.append(
            "norms: dist_from_init is not available: this run has no model_weights/init_state_dict.pt "
            "(a run logged before gencv recorded the refit's initial weights)"
        )
    if log_results:
        tracker.log_metrics(run_id, {f"refit_{k}": v for k, v in result.values.items()})
        changed = {
            f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if getattr(cfg, f.name) != f.default
        }
        tracker.set_tags(run_id, {
            "gencv.posthoc_measures": ",".join(names),
            "gencv.posthoc_measure_options": json.dumps(changed, sort_keys=True),
        })
        if result.density is not None:
            with tempfile.TemporaryDirectory() as tmp:
                png = Path(tmp) / "refit_hessian_density.png"
                plot_density(*result.density, png, result.eigenvalues)
                tracker.log_artifact(run_id, png, "plots")
        if result.landscapes:  # plots/<measure>_refit.png and landscape/ grids, as `gencv run` logs them
            with tempfile.TemporaryDirectory() as tmp:
                save_landscapes(result.landscapes, tmp, "refit")
                for sub in ("plots", "landscape"):
                    tracker.log_artifact(run_id, Path(tmp) / sub, sub)
    tracker.flush()
    return PosthocResult(run_id, exp, result, int(len(rows)), cfg)
