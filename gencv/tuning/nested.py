"""Nested CV: a study inside each outer training fold; the outer test fold is scored once by the refit winner."""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gencv.cv import fit_and_score
from gencv.metrics import METRICS
from gencv.report import summarize
from gencv.runner import Prepared, make_estimator, refit_model
from gencv.seeds import derive_seed
from gencv.spec import Experiment
from gencv.splits import Fold, make_folds, subsample_train
from gencv.tracking import NullTracker, Tracker
from gencv.tuning.records import (
    NestedEstimate,
    NestedFold,
    TrialRecord,
    TuneOutcome,
    TuningError,
    study_counts,
)
from gencv.tuning.report import (
    measure_gap_report,
    plot_measures_vs_gap_trials,
    study_plots,
)
from gencv.tuning.space import Dimension
from gencv.tuning.storage import (
    redact_url,
    study_lock,
)
from gencv.tuning.study import (
    best_record,
    close_dead_trial_runs,
    open_study,
    study_records,
    tag_best,
)
from gencv.tuning.summary import summary_markdown
from gencv.tuning.trials import TrialContext, flush_tracker, optimize, real_run_id

log = logging.getLogger(__name__)


def tune_nested(exp: Experiment, prep: Prepared, dims: list[Dimension], store: Any, storage_url: str,
                 study_name: str, n_trials: int, timeout: float | None, tracker: Tracker, progress: Any,
                 tags: Mapping[str, str], ctx_args: dict[str, Any], worker_key: int, refit: bool) -> TuneOutcome:
    """Nested CV: for each outer fold, tune on inner folds of its training part, refit, score its test part once.

    Then the final model: the configuration that won the most outer folds (ties: the best mean inner
    CV score; both chosen without any outer test score) refit on all non-test data and scored once
    on the held-out test set. One worker per nested study: a second one is refused with a clear error.
    """
    assert exp.tune is not None
    ds = prep.dataset
    metric = exp.metric
    sign = 1.0 if METRICS[metric].higher_is_better else -1.0
    _check_nested_alone(store, study_name)  # before any run is created or any outer fold refit again
    root_run = real_run_id(tracker, tracker.start_run(exp.name, study_name, tags=tags))
    tracker.log_params(root_run, {**exp.flat_params(), "study": study_name, "storage": redact_url(storage_url)})
    tracker.log_inputs(root_run, [prep.data_ref])
    folds_out: list[NestedFold] = []
    all_records: list[TrialRecord] = []
    studies: list[tuple[int, Any]] = []
    winners: dict[int, TrialRecord] = {}
    status = "FAILED"
    try:
        for outer in prep.folds:
            k = outer.index
            inner = make_folds(exp.tune.inner_cv, y=ds.y, task=ds.task, seed=derive_seed(exp.seed, "inner_cv", k),
                               indices=outer.train, groups=ds.groups, is_time_series=ds.is_time_series,
                               min_gap=ds.min_gap, classes=ds.classes, field="tune.inner_cv")
            name = f"{study_name}-outer{k}"
            study = open_study(exp, dims, store, name, derive_seed(exp.seed, "sampler", "outer", k, worker_key),
                                len(inner), cv_field="tune.inner_cv")
            _check_nested_alone(store, study_name, study)
            studies.append((k, study))
            outer_run = tracker.start_run(exp.name, f"outer-{k}", parent=root_run,
                                          tags={"gencv.kind": "outer_fold", "gencv.fold": str(k),
                                                "gencv.study": name})
            ctx = TrialContext(folds=inner, study_run=outer_run, study_name=name, label=f"outer fold {k}", **ctx_args)
            counts = study_counts(study)
            progress.study_start(name, n_trials, counts["COMPLETE"] + counts["PRUNED"], f"outer {k} trials")
            try:
                optimize(ctx, study, n_trials, timeout, exp.tune.max_consecutive_failures)
            except BaseException:
                tracker.end_run(outer_run, "KILLED")
                raise
            records = study_records(study, dims)
            all_records += records
            best = best_record(study, dims)
            tag_best(tracker, study, best)
            if best is None or best.value is None:
                tracker.end_run(outer_run, "FAILED")
                raise TuningError(f"outer fold {k}: no inner trial completed, so there is no winner to refit; "
                                  "see the trials' reasons (gencv.reason tags)")
            best.study = name
            winners[k] = best
            winner = exp.with_overrides(best.params)
            est = make_estimator(winner, ds, module=prep.module, base=prep.estimator.base)
            # data.train_fraction: the winner is refit on that fraction of the outer training fold, too
            outer_fit = subsample_train(Fold(k, outer.train, outer.valid), ds.y, ds.groups, winner.data.train_fraction,
                                        derive_seed(exp.seed, "outer", k, "train_fraction"),
                                        time_ordered=ds.is_time_series, stratified=ds.task == "classification")
            res = fit_and_score(est, ds.X, ds.y, outer_fit, metric=metric,
                                seed=derive_seed(exp.seed, "outer", k), measures=exp.measures,
                                measure_config=ctx.measure_config, groups=ds.groups, engine=winner.train.engine)
            score = res.valid_scores.get(metric, float("nan")) if res.ok else float("nan")
            tracker.log_params(outer_run, {f"best.{p}": v for p, v in best.params.items()})
            tracker.log_metrics(outer_run, {f"outer_test_{metric}": score, f"best_inner_{metric}": float(best.value),
                                            "n_trials": float(len(records)), "best_trial": float(best.number)})
            tracker.set_tags(outer_run, {"gencv.status": res.status, **({"gencv.reason": res.reason} if res.reason else {})})
            tracker.end_run(outer_run, "FINISHED" if res.ok else "FAILED")
            res.estimator = None
            folds_out.append(NestedFold(k, outer.train, outer.valid, inner, name, dict(best.params),
                                        float(best.value), float(score), res, len(records)))
        outer_scores = [f.outer_score for f in folds_out]
        inner_best = [f.best_inner_value for f in folds_out]
        est_summary = summarize(outer_scores, bounds=METRICS[metric].bounds)
        inner_summary = summarize(inner_best, bounds=METRICS[metric].bounds)
        optimism = sign * (inner_summary["mean"] - est_summary["mean"])
        chosen = nested_choice(folds_out, higher_is_better=sign > 0)
        nested_est = NestedEstimate(folds_out, metric, est_summary, inner_summary, float(optimism),
                                    final_params=dict(folds_out[chosen[0]].best_params),
                                    final_outer_folds=[folds_out[i].index for i in chosen])
        final = winners[folds_out[chosen[0]].index]
        outcome = TuneOutcome(exp, study_name, redact_url(storage_url), METRICS[metric].direction, metric,
                              all_records, final, nested=nested_est,
                              run_id=None if isinstance(tracker, NullTracker) else root_run)
        outcome.notes.append(
            f"nested CV estimate of the tuning procedure: {metric} {est_summary['mean']:.4f} "
            f"(95% interval {est_summary['ci_low']:.4f} to {est_summary['ci_high']:.4f}, {est_summary['n']} outer folds, "
            "treated as independent although they share training data: optimistic); "
            f"the inner best CV scores average {inner_summary['mean']:.4f}, an optimism of {optimism:+.4f}")
        outcome.notes.append(
            f"final model: the configuration chosen by outer folds {nested_est.final_outer_folds} "
            f"(of {len(folds_out)}; most outer wins, ties broken by the best inner CV score, no outer test score "
            "used) refit on all non-test data; quote the nested estimate for the procedure and the held-out "
            "test score for this model")
        failed_outer = [f.index for f in folds_out if not np.isfinite(f.outer_score)]
        if failed_outer:
            outcome.notes.append(f"outer folds {failed_outer} failed when refitting the winner; the estimate uses the others")
        metrics = {f"nested_{metric}_{k}": float(v) for k, v in est_summary.items() if k != "n"}
        metrics |= {f"inner_best_{metric}_mean": inner_summary["mean"], "optimism": float(optimism)}
        tracker.log_metrics(root_run, metrics)
        tracker.log_params(root_run, {f"final.{p}": v for p, v in nested_est.final_params.items()})
        tracker.set_tags(root_run, {"gencv.final_from_outer_folds": ",".join(map(str, nested_est.final_outer_folds))})
        close_dead_trial_runs(tracker, all_records)
        if exp.measures:
            outcome.measure_report = measure_gap_report(
                [r for r in all_records if r.state == "COMPLETE" and not r.penalized], dims, metric)
        if refit:
            outcome.refit_estimator, outcome.refit_test_scores = refit_model(
                exp.with_overrides(nested_est.final_params), prep, tracker, root_run)
        _log_nested_artifacts(tracker, root_run, outcome, studies)
        status = "FINISHED"
        return outcome
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end_run(root_run, status)
        flush_tracker(tracker)


def nested_choice(folds: Sequence[NestedFold], higher_is_better: bool) -> list[int]:
    """Positions (in `folds`) of the outer folds whose winner is refit as the final model.

    The configuration that won the most outer folds; ties (always, in a continuous space) go to the
    best mean inner CV score. Outer test scores are never looked at, so the held-out test set
    stays the only score of the final model.
    """
    groups: dict[str, list[int]] = {}
    for i, f in enumerate(folds):
        groups.setdefault(json.dumps(f.best_params, sort_keys=True, default=str), []).append(i)
    sign = 1.0 if higher_is_better else -1.0

    def rank(members: list[int]) -> tuple[int, float, int]:
        return len(members), sign * float(np.mean([folds[i].best_inner_value for i in members])), -members[0]

    return max(groups.values(), key=rank)


def _check_nested_alone(store: Any, study_name: str, study: Any = None) -> None:
    """Nested mode is for one worker: refuse a study whose outer-fold studies have trials RUNNING elsewhere.

    Outer folds run one after another and each worker would refit every outer winner and write its
    own run tree, so a second worker would repeat work rather than share it. Trials of a dead worker
    are failed (and re-queued) by heartbeat first, so a crashed run can be resumed.
    """
    import optuna

    if study is None:
        prefix = f"{study_name}-outer"
        names = [s.study_name for s in store.get_all_studies() if s.study_name.startswith(prefix)
                 and s.study_name[len(prefix):].isdigit()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in sorted(names):
                _check_nested_alone(store, study_name, optuna.load_study(study_name=name, storage=store,
                                                                         sampler=optuna.samplers.RandomSampler()))
        return
    with study_lock(store, study.study_name):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)
        running = [t for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
    if running:
        who = sorted({str(t.user_attrs.get("gencv.worker", "unknown")) for t in running})
        grace = getattr(store, "grace_period", None)
        raise TuningError(
            f"--nested: study {study.study_name} has {len(running)} trial(s) RUNNING in another worker "
            f"({', '.join(who)}); nested mode runs one worker per study (each worker would refit every outer "
            "fold again). Wait for that worker to finish, or use another --study name; to share the work of one "
            "study between workers, tune without --nested. If that worker died, its trials are failed and "
            f"re-queued once its last heartbeat is older than {f'{grace} s' if grace else 'the grace period'}; "
            "run this again then")


def _log_nested_artifacts(tracker: Tracker, run_id: str, outcome: TuneOutcome,
                          studies: Sequence[tuple[int, Any]]) -> None:
    if isinstance(tracker, NullTracker) or outcome.nested is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "spec.yaml").write_text(outcome.experiment.to_yaml())
        pd.DataFrame([{"outer_fold": f.index, "n_train": len(f.outer_train), "n_test": len(f.outer_test),
                       "best_inner": f.best_inner_value, "outer_score": f.outer_score, "study": f.study_name,
                       "final": f.index in outcome.nested.final_outer_folds,
                       **{f"param {k}": v for k, v in f.best_params.items()}} for f in outcome.nested.folds]
                     ).to_csv(d / "nested.csv", index=False)
        outcome.trials_table().to_csv(d / "trials.csv", index=False)
        (d / "summary.md").write_text(summary_markdown(outcome))
        plots = d / "plots"
        for k, study in studies:  # one set of Optuna plots per outer fold's study
            study_plots(study, plots / f"outer{k}")
        if outcome.measure_report is not None and not outcome.measure_report.empty:
            outcome.measure_report.to_csv(d / "measures_vs_gap.csv", index=False)
            records = [r for r in outcome.trials if r.state == "COMPLETE" and not r.penalized]
            plots.mkdir(exist_ok=True)
            plot_measures_vs_gap_trials(records, outcome.measure_report, plots / "measures_vs_gap_trials.png",
                                        outcome.metric)
        for p in d.iterdir():
            if p.is_dir() and not any(p.rglob("*.png")):
                continue
            tracker.log_artifact(run_id, p, p.name if p.is_dir() else None)

