"""`gencv sweep`: a factor studied level by level on the same folds, each level compared with the baseline."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
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


class RichSweepProgress:
    """One line per level on stderr; the fold bars of the level underneath (unless quiet)."""

    def __init__(self, metric: str, quiet: bool) -> None:
        self.metric = metric
        self.quiet = quiet
        self._bars: Any = None

    def level_start(self, level: Any, n_levels: int) -> Any:
        err.print(f"level {level.index + 1}/{n_levels}: {level.label}", highlight=False)
        if self.quiet:
            return None
        from gencv.cli.run import RichProgress

        self._bars = RichProgress(err, self.metric).__enter__()
        return self._bars

    def level_end(self, level: Any, outcome: Any, reused: bool) -> None:
        if self._bars is not None:
            self._bars.__exit__(None, None, None)
            self._bars = None
        mean = outcome.cv.mean_score()
        err.print(f"  {'reused' if reused else 'done'}: CV {self.metric} {mean:.4f}", highlight=False)


def sweep(
    spec: SpecArg = None,
    grid: Annotated[list[str] | None, typer.Option("--grid", "-g", help="PATH=V1,V2,... (repeatable; every "
                                                   "combination is a level); overrides the spec's sweep.grid")] = None,
    set_: SetOpt = None,
    engine: EngineOpt = None,
    threads: ThreadsOpt = 1,
    tracking_uri: UriOpt = None,
    no_track: Annotated[bool, typer.Option("--no-track", help="do not record anything in MLflow")] = False,
    resume: Annotated[str | None, typer.Option("--resume", help="sweep run id: finished levels are reused, "
                                               "an interrupted one resumes its folds")] = None,
    refit: Annotated[bool, typer.Option("--refit/--no-refit", help="also refit each level on all non-test data")] = False,
    storage: Annotated[str | None, typer.Option("--storage", help="Optuna storage URL holding the levels as a queue "
                                                "that several workers share (e.g. postgresql://user:pass@host/db); "
                                                "rerun the same command to resume")] = None,
    study: Annotated[str | None, typer.Option("--study", help="the sweep's study name in --storage (default: spec "
                                              "name and a digest of spec and grid)")] = None,
    heartbeat: Annotated[int, typer.Option("--heartbeat", help="with --storage: seconds between a level's heartbeats; "
                                           "a level silent for twice as long is re-queued", min=1)] = 30,
    json_out: Annotated[bool, typer.Option("--json", help="print the results as JSON on stdout")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no fold progress bars")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Cross-validate every level of a grid on the same folds; compare each level with the baseline.

    Example: gencv sweep experiments/sweep_dropout_wd.yaml --grid model.dropout=0,0.3 --grid train.weight_decay=0,1e-3
    Shared by workers: run `gencv sweep SPEC --storage postgresql://... --tracking-uri http://...` on each.
    """
    setup_logging(verbose)
    set_ = engine_sets(set_, engine)
    sigterm_to_interrupt()

    def go() -> Any:
        from gencv.errors import SpecError
        from gencv.studies.sweep import parse_grid, run_sweep
        from gencv.tracking import make_tracker

        exp = load_spec(spec, set_)
        levels = parse_grid(grid) if grid else dict(exp.sweep.grid) if exp.sweep else {}
        if not levels:
            raise SpecError("sweep: no levels; give --grid PATH=V1,V2 or a `sweep: {grid: {PATH: [V1, V2]}}` section")
        baseline = exp.sweep.baseline if exp.sweep and not grid else None
        tracker = make_tracker(not no_track, tracking_uri, exp.name)  # a store that cannot be used fails now
        result = run_sweep(exp, levels, baseline=baseline, tracker=tracker, refit=refit, resume=resume,
                           progress=RichSweepProgress(exp.metric, quiet or json_out), storage=storage,
                           study_name=study, heartbeat_interval=heartbeat)
        if json_out:
            print(json.dumps({"run_id": result.run_id, "levels": json.loads(result.table.to_json(orient="records")),
                              "measures_vs_gap": json.loads(result.correlations.to_json(orient="records")),
                              "notes": result.notes}, default=str))
        else:
            _print(result)
        return result

    def resume_hint(exc: BaseException) -> str:
        run_id = None if storage else getattr(exc, "gencv_run_id", None) or resume
        return command("sweep", spec_path(spec), set_, ("--threads", None if threads == 1 else threads),
                       *[("--grid", g) for g in grid or []],
                       ("--tracking-uri", redacted(tracking_uri)), ("--no-track", no_track), ("--refit", refit),
                       ("--storage", redacted(storage)), ("--study", study), ("--resume", run_id))

    guard(lambda: with_threads(threads, go), resume_hint)


def _print(result: Any) -> None:
    m = result.experiment.metric
    if result.table.empty:  # a worker of a shared sweep that left before the others
        for note in result.notes:
            err.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
        return
    t = Table(title=f"{result.experiment.name}: sweep over {len(result.levels)} levels (same folds; vs baseline "
                    f"{result.levels[result.baseline].label}: corrected t-test p, Holm-corrected across levels, "
                    "and Bayesian P(better / equivalent / worse))")
    cols = {"level": "level", f"valid_{m}_mean": f"CV {m}", f"gap_{m}_mean": "gap", "diff_vs_baseline": "diff",
            "p_holm": "p (Holm)", "P_better": "P better", "P_equivalent": "P equiv", "P_worse": "P worse"}
    # the measures' level means beside the tests (the correlation table below says whether they track the gap)
    cols |= {f"{k}_mean": k for k in result.correlations.get("measure", [])}
    extra = set(result.correlations.get("measure", []))
    for label in cols.values():
        t.add_column(label, justify="right", no_wrap=label not in extra)
    for _, row in result.table.iterrows():
        cells = []
        for key in cols:
            v = row.get(key)
            cells.append("-" if v is None or (isinstance(v, float) and v != v) else
                         f"{v:.4g}" if isinstance(v, float) and key.removesuffix("_mean") in extra else
                         f"{v:.4f}" if isinstance(v, float) else str(v))
        t.add_row(*cells)
    out.print(t)
    if not result.correlations.empty:
        ct = Table(title="measures vs gap across levels and folds (Kendall tau; granulated = Jiang et al. 2020)")
        for c in result.correlations.columns:
            ct.add_column(str(c), justify="right", no_wrap=True)
        for _, row in result.correlations.iterrows():
            ct.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values])
        out.print(ct)
    for note in result.notes:
        err.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    if result.run_id:
        err.print(f"MLflow sweep run {result.run_id} (open with `gencv ui`)", highlight=False)
