"""`--resume` of `gencv run`: the finished folds of an interrupted run, the spec check, orphaned fold runs."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from gencv.cv import FoldResult
from gencv.errors import GencvError
from gencv.spec import Experiment
from gencv.tracking import MlflowTracker, Tracker

__all__ = ["ORPHAN_REASON", "finished_folds"]

log = logging.getLogger(__name__)

ORPHAN_REASON = "orphaned: the process died; re-run by resume"

_RUN_PARAMS = ("n_samples", "n_test", "n_folds")  # logged with the spec's flat params, not part of it


def _check_same_spec(client: Any, parent: Any, exp: Experiment) -> None:
    """Raise unless `exp` is the spec of the run to resume, keys added since that run taking today's defaults.

    The run's spec is read back (spec.yaml, else its flat params) and validated by today's model, so
    a run made by an older gencv, whose digest did not cover keys added since, still resumes.
    """
    run_id = parent.info.run_id
    if parent.data.tags.get("gencv.spec_digest") == exp.digest():
        return
    raw = _logged_spec(client, parent, exp)
    old: Experiment | None = None
    if raw is not None:
        try:
            old = Experiment.model_validate(raw)
        except ValueError as exc:  # a key removed since, or a value today's model refuses
            log.info("resume: the spec of run %s does not validate today: %s", run_id, exc)
    if old is not None and old.data.lags == 12 and exp.data.lags is None:
        # data.lags defaulted to 12 before tables could be windowed: built-in series still use 12 when it
        # is unset, and nothing else read it, so an old run's 12 is today's unset value
        old = old.model_copy(update={"data": old.data.model_copy(update={"lags": None})})
    if old is not None and old.digest() == exp.digest():
        log.info("resume: run %s was made by gencv %s; spec keys added since take their defaults", run_id,
                 parent.data.tags.get("gencv.version", "?"))
        return
    before = old.flat_params() if old is not None else {k: v for k, v in parent.data.params.items()
                                                        if k not in _RUN_PARAMS}
    now = exp.flat_params()
    diffs = [f"{k}: the run has {before.get(k, '(not set)')}, this spec {now.get(k, '(not set)')}"
             for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    shown = "; ".join(diffs[:10]) + (f"; and {len(diffs) - 10} more" if len(diffs) > 10 else "")
    raise GencvError(f"--resume {run_id}: that run used another spec: {shown or 'digests differ'}. Resume with the "
                     "run's values (drop the --set or spec edit that changes them), or start a new run without --resume")


def _logged_spec(client: Any, parent: Any, exp: Experiment) -> dict[str, Any] | None:
    """The raw spec a run logged: its spec.yaml, else rebuilt from its flat params (a run interrupted
    before gencv logged spec.yaml at the start); None if neither is there."""
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        try:
            raw = yaml.safe_load(Path(client.download_artifacts(parent.info.run_id, "spec.yaml", tmp)).read_text())
            if isinstance(raw, dict):
                return raw
        except Exception as exc:  # noqa: BLE001  (no spec.yaml: a run interrupted before gencv logged it first)
            log.debug("no spec.yaml in run %s: %s", parent.info.run_id, exc)
    params = {k: v for k, v in parent.data.params.items() if k not in _RUN_PARAMS}
    if not params:
        return None
    typed = _flat_values(exp.model_dump(mode="json"))  # a str today is kept a str ("123" stays a name)
    raw: dict[str, Any] = {}
    for key, text in params.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                return None
        node[leaf] = text if isinstance(typed.get(key), str) else _param_value(text)
    return raw


def _flat_values(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys as `Experiment.flat_params` makes them, values not turned into strings."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k != "space":
            out.update(_flat_values(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _param_value(text: str) -> Any:
    """A flat param's value back from its string (`Experiment.flat_params`: str() of scalars, JSON of lists)."""
    if text in ("None", "True", "False"):
        return {"None": None, "True": True, "False": False}[text]
    try:
        return json.loads(text)
    except ValueError:
        return text


def finished_folds(tracker: Tracker, run_id: str, exp: Experiment) -> dict[int, FoldResult]:
    """Folds of an interrupted run that finished, loaded from their fold_result.json."""
    if not isinstance(tracker, MlflowTracker):
        raise GencvError("--resume needs tracking on (it reads the finished folds from MLflow)")
    client = tracker.client
    try:
        parent = client.get_run(run_id)
    except Exception as exc:
        raise GencvError(f"--resume {run_id}: no such run in {tracker.tracking_uri}: {exc}") from None
    _check_same_spec(client, parent, exp)
    children = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
                                  max_results=10_000)
    done: dict[int, FoldResult] = {}
    for child in children:
        if child.info.status == "RUNNING":  # its process died (SIGKILL, power loss): nobody will end it
            client.set_tag(child.info.run_id, "gencv.reason", ORPHAN_REASON)
            client.set_terminated(child.info.run_id, "KILLED")
            log.info("resume: closed run %s, left RUNNING by a process that died", child.info.run_id)
            continue
        if child.info.status != "FINISHED" or child.data.tags.get("gencv.kind") != "fold":
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = client.download_artifacts(child.info.run_id, "fold_result.json", tmp)
            except Exception:
                continue
            fr = FoldResult.from_json(json.loads(Path(path).read_text()))
        fr.run_id = child.info.run_id
        done[fr.index] = fr
    for index, fr in _folds_in_parent(client, run_id).items():  # tracking.fold_runs: the folds kept no runs
        done.setdefault(index, fr)
    return done


def _folds_in_parent(client: Any, run_id: str) -> dict[int, FoldResult]:
    """Successful folds a run recorded in itself (no fold runs): the `fold_results/folds-*.json` lists
    `ParentFoldLog` writes, and the one-fold `fold_results/fold-<i>.json` files of earlier versions."""
    try:
        if not client.list_artifacts(run_id, "fold_results"):
            return {}
    except Exception as exc:  # noqa: BLE001  (no artifact location yet: nothing recorded)
        log.debug("no fold_results in run %s: %s", run_id, exc)
        return {}
    out: dict[int, FoldResult] = {}
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client.download_artifacts(run_id, "fold_results", tmp))
        for path in sorted(local.glob("*.json")):
            records = json.loads(path.read_text())
            for record in records if isinstance(records, list) else [records]:
                fr = FoldResult.from_json(record)
                if fr.ok:  # failed folds are fitted again, as failed fold runs are
                    fr.run_id = run_id
                    out[fr.index] = fr
    return out
