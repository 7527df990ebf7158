"""Logged weights read back: a run's state dict with its SHA-256 checked (`gencv measure`), and the base network
of a transfer (`model.base`: a run, a registered model version, or a file)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gencv.checksums import sha256_file, tag_key
from gencv.engines.transfer import BaseWeights, check_base
from gencv.errors import GencvError, SpecError
from gencv.spec import ModelSpec, load_experiment
from gencv.spec_transfer import parse_uri
from gencv.tracking.base import resolve_tracking_uri

__all__ = ["download_artifact", "load_base", "load_logged_weights"]

log = logging.getLogger(__name__)

_MEASURE_NEEDS = ("`gencv measure` needs a run made by `gencv run` with tracking on (it logs spec.yaml and "
                  "model_weights/state_dict.pt)")
WEIGHTS = "model_weights/state_dict.pt"
#: the model settings that shape the network: a base must agree with the target on them
_ARCHITECTURE = ("kind", "module", "hidden", "channels", "kernel_size", "activation", "batch_norm", "cell",
                 "rnn_layers")


def download_artifact(client: Any, run_id: str, path: str, tmp: str, needs: str = _MEASURE_NEEDS) -> Path:
    """A run's artifact, downloaded under `tmp`; one GencvError when it cannot be read."""
    try:
        return Path(client.download_artifacts(run_id, path, tmp))
    except Exception as exc:  # noqa: BLE001  (MLflow's errors of every kind: one message)
        raise GencvError(f"run {run_id}: cannot read artifact {path!r} ({exc}); {needs}") from None


def _read_state(local: Path, where: str, fix: str) -> dict[str, Any]:
    try:
        state = torch.load(local, weights_only=True)
    except Exception as exc:  # noqa: BLE001  truncated zip, pickle errors, unknown types: all mean "not a weights file"
        raise GencvError(f"{where} is not a readable weights file "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); {fix}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GencvError(f"{where} holds a {type(state).__name__}, not a state dict of tensors; {fix}")
    return dict(state)


def load_logged_weights(client: Any, run_id: str, path: str, tmp: str, tags: Mapping[str, str],
                        notes: list[str], needs: str = _MEASURE_NEEDS) -> dict[str, Any]:
    """A logged state dict, its SHA-256 checked against the run's tag first; every failure one GencvError."""
    local = download_artifact(client, run_id, path, tmp, needs)
    expected = tags.get(tag_key(path))
    if expected is None:
        notes.append(f"{path}: no SHA-256 was logged with it (a run of an older gencv): not verified")
    else:
        got = sha256_file(local)
        if got != expected:
            raise GencvError(f"run {run_id}: {path} is corrupted or was replaced: its SHA-256 is {got[:16]}..., "
                             f"the run logged {expected[:16]}...; re-run `gencv run` to log the model again")
    return _read_state(local, f"run {run_id}: {path}", "re-run `gencv run` to log the model again")


def _version_run(client: Any, uri: str) -> tuple[str, str]:
    """(run id, "NAME/VERSION") of a models:/ URI."""
    name, version, alias = parse_uri(uri)
    try:
        if alias is not None:
            mv = client.get_model_version_by_alias(name, alias)
        elif version == "latest":
            found = client.search_model_versions(f"name='{name}'")
            if not found:
                raise LookupError(f"registered model {name!r} has no versions")
            mv = max(found, key=lambda v: int(v.version))
        else:
            mv = client.get_model_version(name, str(version))
    except Exception as exc:  # noqa: BLE001  (MLflow's errors of every kind: one message)
        raise SpecError(f"model.base.uri: got {uri!r}: not found ({str(exc).splitlines()[0]}); register the source "
                        f"model first (gencv run SOURCE.yaml --register {name}), or check --tracking-uri") from None
    if not mv.run_id:
        raise SpecError(f"model.base.uri: got {uri!r}: version {mv.version} names no gencv run; register a model "
                        "with gencv run --register NAME")
    return str(mv.run_id), f"{name}/{mv.version}"


def _check_architecture(base_model: ModelSpec, model: ModelSpec, source: str) -> None:
    diffs = [f"{k}={getattr(base_model, k)!r} in the base, {getattr(model, k)!r} here" for k in _ARCHITECTURE
             if getattr(base_model, k) != getattr(model, k)]
    if diffs:
        raise SpecError(f"model.base: the base network ({source}) has another architecture: model."
                        + "; model.".join(diffs) + "; set this spec's model to the base's (only the output layer "
                        "is replaced: model.base.new_head)")


def _from_run(client: Any, run_id: str, model: ModelSpec, field: str) -> tuple[dict[str, Any], dict[str, str]]:
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001  (MLflow's errors of every kind: one message)
        raise SpecError(f"{field}: got {run_id!r}: no such run ({str(exc).splitlines()[0]}); give the run id "
                        "`gencv run` printed for the source model, and its store with --tracking-uri") from None
    needs = "model.base needs a `gencv run` parent run with tracking on and its refit model (no --no-refit)"
    with tempfile.TemporaryDirectory() as tmp:
        notes: list[str] = []
        state = load_logged_weights(client, run_id, WEIGHTS, tmp, run.data.tags, notes, needs)
        spec = download_artifact(client, run_id, "model_weights/model_spec.yaml", tmp, needs)
        _check_architecture(load_experiment(spec).model, model, f"run {run_id}")
    for note in notes:
        log.warning("model.base: %s", note)
    return state, {"gencv.base_run": run_id, "gencv.base_sha256": run.data.tags.get(tag_key(WEIGHTS), "not logged")}


def load_base(model: ModelSpec, *, fits: Any = None, n_features: int | None = None,
              tracking_uri: str | None = None) -> BaseWeights | None:
    """The weights `model.base` names (None without one), checked: SHA-256, a run's logged architecture, and
    with `fits` (a NetEstimator) that they fit its network for `n_features` inputs, before any training.

    `run`/`uri` are read from the MLflow store at `tracking_uri` (default: MLFLOW_TRACKING_URI, else
    gencv's default store); `path` is a state-dict file, loaded with `weights_only=True` like the others."""
    base = model.base
    if base is None:
        return None
    if base.path is not None:
        file = Path(base.path).expanduser()
        if not file.is_file():
            raise SpecError(f"model.base.path: got {base.path!r}: no such file; give a state-dict file (torch.save("
                            "module.state_dict(), PATH), or a run's model_weights/state_dict.pt)")
        digest = sha256_file(file)
        if base.sha256 is not None and digest != base.sha256:
            raise SpecError(f"model.base.sha256: the file {base.path} has SHA-256 {digest[:16]}..., the spec expects "
                            f"{base.sha256[:16]}...; the file was changed or replaced")
        state = _read_state(file, f"model.base.path: {base.path}", "give a file saved with torch.save(state_dict)")
        tags = {"gencv.base_path": str(file.resolve()), "gencv.base_sha256": digest}
    else:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
        tags = {}
        if base.uri is not None:
            run_id, version = _version_run(client, base.uri)
            tags = {"gencv.base_uri": base.uri, "gencv.base_model_version": version}
        else:
            run_id = str(base.run)
        state, found = _from_run(client, run_id, model, "model.base.run" if base.uri is None else "model.base.uri")
        tags |= found
    weights = BaseWeights.from_state(state, freeze=base.freeze if isinstance(base.freeze, str) else tuple(base.freeze),
                                     new_head=tuple(base.new_head), head=base.head,
                                     tags={"gencv.base": base.source, **tags})
    if fits is not None:
        check_base(fits, weights, int(n_features if n_features is not None else weights.n_inputs or 0))
    return weights
