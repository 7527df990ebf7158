"""`gencv tune`: parse, set up logging and tracking, call `tune_experiment`, render progress and results.

"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gencv.cli.common import (
    EngineOpt,
    SetOpt,
    SpecArg,
    ThreadsOpt,
    UriOpt,
    command,
    engine_sets,
    err,
    guard,
    load_spec,
    out,
    redacted,
    setup_logging,
    sigterm_to_interrupt,
    spec_path,
    with_threads,
)
from gencv.errors import GencvError

__all__ = ["tune"]

HEARTBEAT_ENV = "GENCV_HEARTBEAT_INTERVAL"


class RichTuneProgress:
    """Live display on stderr: trials done of the study's total, best so far, pruned and failed counts."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=err, transient=False)
        self.task: Any = None
        self.fold_task: Any = None
        self.info = ""

    def __enter__(self) -> RichTuneProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def study_start(self, study_name: str, n_trials: int, n_done: int, label: str) -> None:
        if self.task is not None:
            self.bar.update(self.task, visible=False)
        self.task = self.bar.add_task(f"{label:<14}", total=n_trials, completed=min(n_done, n_trials),
                                      info=f"study {study_name}")
        if self.fold_task is None:
            self.fold_task = self.bar.add_task("folds         ", total=None, info="")

    def trial_start(self, number: int, params: Mapping[str, Any]) -> None:
        shown = ", ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in params.items())
        self.bar.reset(self.fold_task, total=None, info=f"trial {number}: {shown}")

    def fold_end(self, number: int, position: int, n_folds: int, result: Any) -> None:
        score = result.valid_scores.get(self.metric)
        self.bar.update(self.fold_task, total=n_folds, completed=position + 1,
                        info=f"trial {number} fold {result.index}: " +
                             (f"{self.metric} {score:.4f}" if score is not None else result.reason[:60]))

    def trial_end(self, record: Any, counts: Mapping[str, int], best: float | None) -> None:
        done = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
        best_s = "-" if best is None else f"{best:.4f}"
        self.bar.update(self.task, completed=done,
                        info=f"trial {record.number} {record.state.lower()} | best {self.metric} {best_s} | "
                             f"pruned {counts.get('PRUNED', 0)} failed {counts.get('FAIL', 0)}")


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if v != v else f"{v:.4g}"
    return "-" if v is None else str(v)


def _print_tune(outcome: Any, top: int = 10) -> None:
    from gencv.metrics import METRICS

    m = outcome.metric
    c = outcome.counts
    trials = [t for t in outcome.trials if t.state == "COMPLETE" and t.value is not None and not t.penalized]
    trials.sort(key=lambda t: t.value, reverse=METRICS[m].higher_is_better)
    paths = list(outcome.experiment.tune.space) if outcome.experiment.tune else []
    t = Table(title=f"{outcome.experiment.name}: best trials of study {outcome.study_name} "
                    f"({c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed; CV {m}, {outcome.direction})")
    for col in ("trial", f"CV {m}", *paths):
        t.add_column(col, justify="right")
    for r in trials[:top]:
        t.add_row(str(r.number), _fmt(r.value), *[_fmt(r.params.get(p)) for p in paths])
    if outcome.nested is None:  # nested: one study per outer fold, their winners are tabled below
        out.print(t)
    if outcome.nested is not None:
        n = outcome.nested
        nt = Table(title=f"nested CV: tuned inside each outer training fold, scored once on its outer test fold ({m})")
        for col in ("outer fold", "train", "test", "best inner CV", "outer test", *paths):
            nt.add_column(col, justify="right")
        for f in n.folds:
            nt.add_row(str(f.index), str(len(f.outer_train)), str(len(f.outer_test)), _fmt(f.best_inner_value),
                       _fmt(f.outer_score), *[_fmt(f.best_params.get(p)) for p in paths])
        out.print(nt)
        e = n.estimate
        out.print(f"nested estimate ({m}): {e['mean']:.4f} ± {e['std']:.4f}, 95% interval "
                  f"[{e['ci_low']:.4f}, {e['ci_high']:.4f}] over {e['n']} outer folds  <- quote this", highlight=False)
        out.print("  (the interval treats the outer folds as independent; they share training data, so it is "
                  "optimistic, as the fold summary's is)", highlight=False, soft_wrap=True)
        out.print(f"mean best inner CV {m}: {n.inner_best['mean']:.4f}; optimism = mean best inner CV score - nested "
                  f"estimate (what tuning's own score claims beyond what the tuned procedure delivers on unseen outer "
                  f"folds; positive = flattering): {n.optimism:+.4f}", highlight=False, soft_wrap=True)
        params = ", ".join(f"{k}={_short(v)}" for k, v in n.final_params.items())
        out.print(f"final model: the winner of outer folds {n.final_outer_folds} ({params}) refit on all "
                  "non-test data", highlight=False, soft_wrap=True)
        if outcome.refit_test_scores:
            scores = ", ".join(f"{k} {v:.4f}" for k, v in outcome.refit_test_scores.items())
            out.print(f"final model, held-out test set: {scores}", highlight=False, soft_wrap=True)
    elif outcome.best is not None:
        params = ", ".join(f"{k}={_short(v)}" for k, v in outcome.best.params.items())
        out.print(f"best trial {outcome.best.number}: CV {m} {outcome.best.value:.4f} (optimistic: selected on these "
                  f"folds) with {params}", highlight=False, soft_wrap=True)
        if outcome.refit_test_scores:
            scores = ", ".join(f"{k} {v:.4f}" for k, v in outcome.refit_test_scores.items())
            out.print(f"best configuration refit on all non-test data, held-out test set: {scores}  <- quote this",
                      highlight=False, soft_wrap=True)
    if outcome.measure_report is not None and not outcome.measure_report.empty:
        mt = Table(title="measure vs generalization gap across completed trials (Kendall tau; granulated = Jiang et al. 2020)")
        for col in ("measure", "tau", "p", "n", "granulated tau"):
            mt.add_column(col, justify="right")
        for _, row in outcome.measure_report.iterrows():
            mt.add_row(str(row["measure"]), _fmt(row["tau"]), _fmt(row["p_value"]), str(row["n_trials"]),
                       _fmt(row["granulated_tau"]))
        out.print(mt)
    for note in outcome.notes:
        err.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    if outcome.run_id:
        err.print(f"MLflow study run {outcome.run_id} (open with `gencv ui`)", highlight=False)


def tune(
    spec: SpecArg = None,
    set_: SetOpt = None,
    engine: EngineOpt = None,
    threads: ThreadsOpt = 1,
    trials: Annotated[int | None, typer.Option("--trials", "-n", help="the study's TOTAL of complete + pruned trials, "
                                               "over all workers (default tune.trials; per outer fold with --nested)")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help="seconds this worker keeps starting trials")] = None,
    storage: Annotated[str | None, typer.Option("--storage", help="Optuna storage URL (default sqlite:///mlruns/optuna.db; "
                                                "postgresql://user:pass@host/db to share a study between workers)")] = None,
    study: Annotated[str | None, typer.Option("--study", help="study name: resume it, or join it from another worker")] = None,
    nested: Annotated[bool | None, typer.Option("--nested/--no-nested", help="nested CV: tune inside each outer "
                                                "training fold (default tune.nested)")] = None,
    tracking_uri: UriOpt = None,
    no_track: Annotated[bool, typer.Option("--no-track", help="do not record anything in MLflow")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print the results as JSON on stdout")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress display")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Tune the spec's tune.space with Optuna over its CV folds; refit the best; record the study in MLflow.

    Example: gencv tune experiments/tune_iris.yaml --trials 30 --study iris-lr
    Shared study: run `gencv tune SPEC --storage postgresql://... --study NAME` on each worker.
    """
    setup_logging(verbose)
    set_ = engine_sets(set_, engine)
    sigterm_to_interrupt()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    used: dict[str, str] = {}  # the study name, once known (for the resume hint)

    def go() -> Any:
        from gencv.runner import prepare
        from gencv.tracking import make_tracker
        from gencv.tuning import build_space, outcome_json, tune_experiment
        from gencv.tuning.storage import DEFAULT_STORAGE, redact_url
        from gencv.tuning.tune import default_study_name

        hb_raw = os.environ.get(HEARTBEAT_ENV, "60")
        try:
            heartbeat = int(hb_raw)
        except ValueError:
            raise GencvError(f"{HEARTBEAT_ENV}: got {hb_raw!r}; use a whole number of seconds such as 60") from None
        exp = load_spec(spec, set_)
        build_space(exp)  # space errors before data or storage are touched
        is_nested = exp.tune.nested if nested is None else nested
        used["study"] = study or default_study_name(exp, is_nested)
        prep = prepare(exp, tracking_uri=tracking_uri)
        tracker = make_tracker(not no_track, tracking_uri)
        url = storage or DEFAULT_STORAGE
        err.print(f"[bold]{exp.name}[/]: tuning {len(exp.tune.space)} hyperparameters "
                  f"({exp.tune.sampler} sampler, {exp.tune.pruner} pruner) on {prep.dataset.name}, "
                  f"{len(prep.folds)} {'outer ' if is_nested else ''}folds, storage {redact_url(url)}"
                  + (" (one worker; use postgresql:// to share)" if url.startswith("sqlite") else ""),
                  highlight=False, soft_wrap=True)
        kwargs = dict(tracker=tracker, storage=url, study_name=used["study"], n_trials=trials, timeout=timeout,
                      nested=nested, heartbeat_interval=heartbeat, prepared=prep)
        if quiet or json_out:
            outcome = tune_experiment(exp, **kwargs)
        else:
            with RichTuneProgress(exp.metric) as progress:
                outcome = tune_experiment(exp, progress=progress, **kwargs)
        if json_out:
            print(json.dumps(outcome_json(outcome), default=str))
        else:
            _print_tune(outcome)
        return outcome

    def resume_hint(exc: BaseException) -> str:
        return command("tune", spec_path(spec), set_, ("--threads", None if threads == 1 else threads),
                       ("--study", used.get("study", "NAME")),
                       ("--storage", redacted(storage)),
                       ("--tracking-uri", redacted(tracking_uri)),
                       ("--no-track", no_track), ("--trials", trials), ("--timeout", timeout),
                       ("--nested" if nested else "--no-nested", nested is not None))

    outcome = guard(lambda: with_threads(threads, go), resume_hint)
    if outcome.nested is None and outcome.best is None and outcome.finalized:
        raise typer.Exit(1)
