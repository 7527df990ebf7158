"""One flat study: open or resume it, run its MLflow parent run, finalize (best trial, refit, artifacts)."""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gencv.metrics import METRICS
from gencv.runner import refit_model
from gencv.seeds import derive_seed
from gencv.spec import Experiment, drop_unset_custom_keys
from gencv.tracking import MlflowTracker, NullTracker, Tracker
from gencv.tuning.pruners import make_pruner
from gencv.tuning.records import TrialRecord, TuneOutcome, TuningError, study_counts
from gencv.tuning.report import measure_gap_report, plot_measures_vs_gap_trials, study_plots
from gencv.tuning.samplers import make_sampler
from gencv.tuning.space import Dimension
from gencv.tuning.storage import (
    redact_url,
    study_lock,
)
from gencv.tuning.summary import summary_markdown
from gencv.tuning.trials import TrialContext, flush_tracker, real_run_id, worker_id

log = logging.getLogger(__name__)


#: spec keys added after studies were first stored, with their defaults: a study stored before a key
#: existed was run as if the key had its default, so its digest is computed without the key.
_ADDED_KEYS: dict[tuple[str, ...], Any] = {("train", "engine"): "skorch", ("train", "dtype"): "float32",
                                           ("train", "stop_at_train_loss"): None, ("train", "max_members"): None, ("data", "train_fraction"): 1.0,
                                           ("data", "task"): "auto", ("data", "sep"): None,
                                           ("data", "categorical"): "onehot", ("data", "impute"): "none",
                                           ("data", "image_size"): [32, 32]}


def study_digest(exp: Experiment, *, legacy: bool = False) -> str:
    """Digest of what makes trials comparable: the spec without the study's budget settings.

    `tune.pruner_options` is left out: it changes which trials stop early, not what a completed
    trial's value means (so are `tune.batch_trials`: how many trials train together, and `tune.population_pruning`),
    and leaving it out keeps studies made before the option existed resumable
    (and an explicitly written default equal to an omitted one). `legacy`: the digest as a gencv
    without the keys in `_ADDED_KEYS` computed it (None when one of them is not at its default).
    """
    import hashlib

    raw = exp.model_dump(mode="json")
    raw.pop("sweep", None)  # a sweep's levels are not what a trial's value means
    raw.pop("tracking", None)  # how a run is recorded, not what it scores
    for k in ("trials", "timeout", "max_consecutive_failures", "nested", "pruner_options", "batch_trials",
              "population_pruning"):
        (raw.get("tune") or {}).pop(k, None)
    raw.pop("name", None)
    drop_unset_custom_keys(raw)  # model.module/model.kwargs unset: the digest of studies stored before they existed
    if legacy:
        if raw.get("data", {}).get("lags") is None:  # data.lags defaulted to 12 (unused outside series) before
            raw["data"]["lags"] = 12
        for (section, key), default in _ADDED_KEYS.items():
            if raw.get(section, {}).get(key, default) != default:
                return ""
            raw.get(section, {}).pop(key, None)
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]


def open_study(exp: Experiment, dims: list[Dimension], storage: Any, name: str, sampler_seed: int,
                n_folds: int, *, must_exist: bool = False, cv_field: str = "cv") -> Any:
    """Create or load study `name`; check it belongs to this spec; seed its sampler.

    The sampler's seed also depends on the worker's place among the study's workers (`_join_seed`): a
    resumed study re-created with the first session's seed, or a second worker joining an empty
    study, would propose the first worker's configurations again.
    """
    import optuna

    direction = METRICS[exp.metric].direction
    pruner = (make_pruner(exp.tune.pruner, n_folds, exp.tune.pruner_settings(), cv_field) if exp.tune
              else make_pruner("none", n_folds, {}))
    sampler = make_sampler(exp, dims, sampler_seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                    pruner=pruner, load_if_exists=True)
    seed = _join_seed(study, storage, sampler_seed)
    if seed != sampler_seed:
        study.sampler = make_sampler(exp, dims, seed)
    if study.direction.name.lower() != direction:
        raise TuningError(f"--study {name}: the stored study {study.direction.name.lower()}s, but metric "
                          f"{exp.metric!r} needs {direction}; use another study name")
    digest = study_digest(exp)
    stored = study.user_attrs.get("gencv.spec_digest")
    if stored is None:
        study.set_user_attr("gencv.spec_digest", digest)
        study.set_user_attr("gencv.metric", exp.metric)
        study.set_user_attr("gencv.space", {d.path: d.kind for d in dims})
    elif stored != digest and stored == study_digest(exp, legacy=True):
        study.set_user_attr("gencv.spec_digest", digest)  # a study of an earlier gencv: the same spec
    elif stored != digest:
        raise TuningError(f"--study {name}: that study was run with another spec or search space "
                          f"(digest {stored}, this spec {digest}); its trials are not comparable. "
                          "Use the same spec and --set values, or another --study name")
    return study


def _join_seed(study: Any, storage: Any, sampler_seed: int) -> int:
    """This worker's sampler seed: `sampler_seed` for the first worker of an empty study (one worker's
    study is reproducible from the spec's seed); for every later worker or session, one derived from
    its join number and the trials the study then held. Recorded as study attributes
    `gencv.sampler_seed.HOST:PID` and, on each of its trials, `gencv.sampler_seed`."""
    with study_lock(storage, study.study_name):
        joined = int(study.user_attrs.get("gencv.workers_joined", 0))
        n_before = len(study.get_trials(deepcopy=False))
        study.set_user_attr("gencv.workers_joined", joined + 1)
        seed = sampler_seed if joined == 0 and n_before == 0 else derive_seed(sampler_seed, "worker", joined, n_before)
        study.set_user_attr(f"gencv.sampler_seed.{worker_id()}", seed)
    return seed


def start_study_run(tracker: Tracker, exp: Experiment, study: Any, store: Any, storage_url: str, label: str,
               tags: Mapping[str, str], parent: str | None = None) -> str:
    """The study's MLflow run, shared by every worker: created once (under the study lock), then reused."""
    key = "gencv.mlflow_run_id"
    with study_lock(store, study.study_name):
        if isinstance(tracker, MlflowTracker):
            existing = study.user_attrs.get(key)
            if existing and study.user_attrs.get("gencv.tracking_uri") == redact_url(tracker.tracking_uri):
                try:
                    tracker.client.get_run(existing)
                    tracker.client.update_run(existing, status="RUNNING")
                    return str(existing)
                except Exception:
                    log.info("study run %s not found in %s; starting a new one", existing, tracker.tracking_uri)
        run_id = real_run_id(tracker, tracker.start_run(exp.name, label, parent=parent, tags=tags))
        if isinstance(tracker, MlflowTracker):
            study.set_user_attr(key, run_id)
            study.set_user_attr("gencv.tracking_uri", redact_url(tracker.tracking_uri))
            tracker.log_params(run_id, {**exp.flat_params(), "study": study.study_name,
                                        "storage": redact_url(storage_url)})
    return run_id


def _claim_finalize(study: Any, store: Any) -> bool:
    """True for exactly one worker once no trial runs or waits (the last one out writes the report)."""
    with study_lock(store, study.study_name):
        counts = study_counts(study)
        if counts["RUNNING"] or counts["WAITING"]:
            return False
        total = sum(counts.values())
        if study.user_attrs.get("gencv.finalized_at") == total:
            return False
        study.set_user_attr("gencv.finalized_at", total)
        return True


def study_records(study: Any, dims: list[Dimension]) -> list[TrialRecord]:
    return TrialRecord.of_study(study, dims)


def best_record(study: Any, dims: list[Dimension]) -> TrialRecord | None:
    try:
        best = study.best_trial
    except ValueError:
        return None
    rec = TrialRecord.from_frozen(best, dims)
    return None if rec.penalized else rec


def close_dead_trial_runs(tracker: Tracker, records: Sequence[TrialRecord]) -> None:
    """MLflow runs of trials whose worker died are still RUNNING, and so is the fold run it was in:
    mark them FAILED with the reason."""
    reason = "worker stopped sending heartbeats (killed?); the trial was re-queued with the same parameters"
    for r in records:
        if r.state == "FAIL" and r.run_id and not r.reason:
            for child in _running_children(tracker, r.run_id):
                tracker.set_tags(child, {"gencv.reason": reason})
                tracker.end_run(child, "FAILED")
            tracker.set_tags(r.run_id, {"gencv.state": "FAIL", "gencv.reason": reason})
            tracker.end_run(r.run_id, "FAILED")


def _running_children(tracker: Tracker, run_id: str) -> list[str]:
    """Ids of the RUNNING child runs of `run_id` (MLflow trackers only; others record nothing to close)."""
    client = getattr(tracker, "client", None)
    if client is None:
        return []
    try:
        exp_id = client.get_run(run_id).info.experiment_id
        runs = client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'", max_results=1000)
    except Exception as exc:  # the report must not fail on a run another process deleted
        log.info("cannot list the fold runs of dead trial run %s: %s", run_id, exc)
        return []
    return [r.info.run_id for r in runs if r.info.status == "RUNNING"]


def tag_best(tracker: Tracker, study: Any, best: TrialRecord | None) -> None:
    prev = study.user_attrs.get("gencv.best_run_id")
    if prev and (best is None or prev != best.run_id):
        tracker.set_tags(prev, {"gencv.best_trial": "false"})
    if best is not None and best.run_id:
        tracker.set_tags(best.run_id, {"gencv.best_trial": "true"})
        study.set_user_attr("gencv.best_run_id", best.run_id)


def finalize_flat(ctx: TrialContext, study: Any, n_trials: int, refit: bool) -> TuneOutcome:
    exp, tracker, run_id = ctx.exp, ctx.tracker, ctx.study_run
    records = study_records(study, ctx.dims)
    best = best_record(study, ctx.dims)
    outcome = TuneOutcome(exp, study.study_name, redact_url(str(getattr(ctx.storage, "url", ":memory:"))),
                          METRICS[exp.metric].direction, exp.metric, records, best,
                          run_id=None if isinstance(tracker, NullTracker) else run_id)
    counts = outcome.counts
    if best is None:
        outcome.notes.append("no trial completed: nothing to refit; see the failed trials' reasons")
    else:
        outcome.notes.append(
            f"the best CV {exp.metric} ({best.value:.4f}, trial {best.number}) is optimistic: it is the best of "
            f"{counts['COMPLETE']} completed trials scored on the same folds it was selected on. Quote the refit "
            "model's held-out test score, or run with --nested for an unbiased estimate of the tuning procedure")
    if counts["COMPLETE"] + counts["PRUNED"] < n_trials:
        outcome.notes.append(f"the study has {counts['COMPLETE'] + counts['PRUNED']} of {n_trials} trials "
                             "(timeout, exhausted grid, or stopped); resume with --study " + study.study_name)
    if not _claim_finalize(study, ctx.storage):
        outcome.finalized = False
        outcome.notes.append("another worker is finishing this study (refit, plots, report); this worker only ran trials")
        flush_tracker(tracker)
        return outcome
    close_dead_trial_runs(tracker, records)
    tag_best(tracker, study, best)
    summary = {"n_trials": float(len(records)), **{f"n_{k.lower()}": float(v) for k, v in counts.items()}}
    if best is not None and best.value is not None:
        summary[f"best_valid_{exp.metric}"] = float(best.value)
        summary["best_trial"] = float(best.number)
        tracker.log_params(run_id, {f"best.{k}": v for k, v in best.params.items()})
    tracker.log_metrics(run_id, summary)
    if exp.measures:
        outcome.measure_report = measure_gap_report([r for r in records if r.state == "COMPLETE" and not r.penalized],
                                                    ctx.dims, exp.metric)
    status = "FINISHED"
    try:
        if refit and best is not None:
            best_exp = exp.with_overrides(best.params)
            outcome.refit_estimator, outcome.refit_test_scores = refit_model(best_exp, ctx.prep, tracker, run_id)
        _log_study_artifacts(tracker, run_id, study, outcome)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end_run(run_id, status)
        flush_tracker(tracker)
    return outcome


def _log_study_artifacts(tracker: Tracker, run_id: str, study: Any, outcome: TuneOutcome) -> None:
    if isinstance(tracker, NullTracker):
        return
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "spec.yaml").write_text(outcome.experiment.to_yaml())
        outcome.trials_table().to_csv(d / "trials.csv", index=False)
        (d / "summary.md").write_text(summary_markdown(outcome))
        plots = d / "plots"
        study_plots(study, plots)
        if outcome.measure_report is not None and not outcome.measure_report.empty:
            outcome.measure_report.to_csv(d / "measures_vs_gap.csv", index=False)
            records = [r for r in outcome.trials if r.state == "COMPLETE" and not r.penalized]
            plot_measures_vs_gap_trials(records, outcome.measure_report, plots / "measures_vs_gap_trials.png",
                                        outcome.metric)
        for p in d.iterdir():
            if p.is_dir() and not any(p.iterdir()):
                continue
            tracker.log_artifact(run_id, p, p.name if p.is_dir() else None)

