"""`gencv run`: cross-validate a spec, render progress and the per-fold and summary tables."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

import typer
from rich.console import Console
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
from gencv.errors import GencvError, TrackingError


class RichProgress:
    """Renders fold and epoch progress (the library's Progress protocol)."""

    def __init__(self, console: Console, metric: str) -> None:
        self.metric = metric
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console, transient=False)
        self.folds_task: Any = None
        self.epoch_task: Any = None

    def __enter__(self) -> RichProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def fold_start(self, fold: int, n_folds: int, max_epochs: int) -> None:
        if self.folds_task is None:
            self.folds_task = self.bar.add_task("folds ", total=n_folds, info="")
        if self.epoch_task is None:
            self.epoch_task = self.bar.add_task("epochs", total=max_epochs, info="")
        self.bar.reset(self.epoch_task, total=max_epochs, info=f"fold {fold}")

    def epoch_end(self, fold: int, epoch: int, row: Mapping[str, Any]) -> None:
        if self.epoch_task is None:
            return
        info = f"fold {fold} train_loss {row.get('train_loss', float('nan')):.4f}"
        if "curve_valid_loss" in row:
            info += f" held-out loss {row['curve_valid_loss']:.4f}"
        self.bar.update(self.epoch_task, completed=epoch, info=info)

    def fold_end(self, fold: int, result: Any) -> None:
        if self.folds_task is None:
            self.folds_task = self.bar.add_task("folds ", total=None, info="")
        score = result.valid_scores.get(self.metric)
        info = f"fold {fold}: {self.metric} {score:.4f}" if score is not None else f"fold {fold}: {result.status}"
        self.bar.advance(self.folds_task)
        self.bar.update(self.folds_task, info=info)


HEADLINE_MEASURES = (
    "hessian_top_1", "hessian_trace", "hessian_diag_max", "ggn_trace", "fisher_trace", "eps_sharpness",
    "adaptive_sharpness_worst", "adaptive_sharpness_avg", "pacbayes_sigma", "pacbayes_sigma_mag",
    "norm_frobenius_product", "norm_spectral_product", "dist_from_init", "hessian_density_negative_mass",
)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if v != v else f"{v:.4f}"
    return str(v)


def _print_outcome(outcome: Any) -> None:
    from gencv.report import summarize, value_bounds

    table = outcome.table
    m = outcome.cv.metric
    cols = {"fold": "fold", "status": "status", f"train_{m}": "train", f"es_{m}": "es", f"valid_{m}": "valid",
            f"test_{m}": "test", f"gap_{m}": "gap", "epochs_run": "epochs", "best_epoch": "best", "fit_seconds": "fit s"}
    from gencv.metrics import METRICS

    gap = "train - valid" if METRICS[m].higher_is_better else "valid - train"
    t = Table(title=f"{outcome.experiment.name}: per-fold {m} (train = rows fitted, es = early-stopping split, "
                    f"valid = held-out fold, gap = {gap}: > 0 is worse held out)")
    for label in cols.values():
        t.add_column(label, justify="right")
    for _, row in table.iterrows():
        t.add_row(*[_fmt(row[c]) for c in cols])
    out.print(t)
    keys = [f"train_{m}", f"es_{m}", f"valid_{m}", f"test_{m}", f"gap_{m}", "train_loss", "es_loss", "valid_loss",
            "gap_loss"]
    keys += [k for k in outcome.summary["metric"] if k.startswith(("valid_", "gap_")) and k not in keys]
    st = Table(title="summary over folds (95% t-interval; folds overlap, so it is optimistic)")
    for c in ("metric", "mean", "std", "95% CI", "n"):
        st.add_column(c, justify="right")
    for k in keys:
        vals = outcome.cv.values(k)
        if len(vals) == 0 or not any(v == v for v in vals):
            continue
        s = summarize(vals, bounds=value_bounds(k))
        st.add_row(k, f"{s['mean']:.4f}", f"{s['std']:.4f}", f"[{s['ci_low']:.4f}, {s['ci_high']:.4f}]", str(s["n"]))
    out.print(st)
    listed = list(outcome.summary["metric"])
    measure_keys = [k for k in HEADLINE_MEASURES if k in set(listed)]
    measure_keys += [k for k in listed if k.startswith(("landscape_", "interpolation_max_bump"))]  # loss pictures
    if measure_keys:
        mt = Table(title="curvature and sharpness at the final weights (training data; `_valid`: the held-out fold; "
                         "mean over folds)")
        for c in ("measure", "mean", "std", "n"):
            mt.add_column(c, justify="right")
        for k in measure_keys:
            s = summarize(outcome.cv.values(k))
            mt.add_row(k, f"{s['mean']:.4g}", f"{s['std']:.3g}", str(s["n"]))
        out.print(mt)
    perm = getattr(outcome, "permutation", None)
    if perm is not None:
        how = "within groups" if perm.grouped else "labels of the CV rows"
        out.print(f"permutation test ({perm.n_permutations} CVs on the same folds, {how} permuted): true valid_{m} "
                  f"{perm.true_score:.4f}, permuted mean {perm.null_mean:.4f}, p-value {perm.p_value:.4g} "
                  f"(smallest possible {1 / (perm.n_permutations + 1):.4g})", highlight=False, soft_wrap=True)
    if outcome.refit_test_scores:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in outcome.refit_test_scores.items())
        out.print(f"refit on all non-test data, held-out test set: {scores}", highlight=False, soft_wrap=True)
    for note in outcome.notes:
        err.print(f"[yellow]note:[/] {note}")
    for f in outcome.cv.folds:
        if not f.ok:
            err.print(f"[red]fold {f.index} failed:[/] {f.reason}", highlight=False)
    if outcome.run_id:
        err.print(f"MLflow run {outcome.run_id} (open with `gencv ui`)", highlight=False)


def run(
    spec: SpecArg = None,
    set_: SetOpt = None,
    engine: EngineOpt = None,
    threads: ThreadsOpt = 1,
    tracking_uri: UriOpt = None,
    no_track: Annotated[bool, typer.Option("--no-track", help="do not record anything in MLflow")] = False,
    allow_large_loo: Annotated[bool, typer.Option("--allow-large-loo", help="run leave-one-out above cv.max_loo_samples")] = False,
    resume: Annotated[str | None, typer.Option("--resume", help="run id of an interrupted run: reuse its finished folds")] = None,
    permutations: Annotated[int, typer.Option("--permutations", min=0, help=(
        "N: also cross-validate N times with the target permuted (same folds) and report the p-value of "
        "the true score"))] = 0,
    register: Annotated[str | None, typer.Option("--register", metavar="NAME", help=(
        "also register the refit model in MLflow's model registry as a new version of NAME"))] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the results as JSON on stdout")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress display")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Cross-validate a spec: per-fold train/validation/test scores, gaps, curves; record in MLflow.

    Example: gencv run experiments/quickstart.yaml --set train.lr=0.01 --set cv.kind=kfold
    """
    setup_logging(verbose)
    set_ = engine_sets(set_, engine)
    sigterm_to_interrupt()

    def go() -> Any:
        from gencv.runner import outcome_json, prepare, run_experiment, run_label
        from gencv.tracking import make_tracker
        from gencv.tracking.store import check_tracking_uri

        exp = load_spec(spec, set_)
        if register is not None and (no_track or not register.strip()):
            raise GencvError(f"--register: got {register!r}{' with --no-track' if no_track else ''}; the model "
                             "registry lives in the tracking store: drop --no-track and give a non-empty name, "
                             "e.g. --register iris-mlp")
        if not no_track:
            check_tracking_uri(tracking_uri)  # the quick checks, before data and torch are loaded
        prep = prepare(exp, allow_large_loo=allow_large_loo, tracking_uri=tracking_uri)
        after_cv = []
        if permutations:
            from gencv.studies.permutation import PermutationTest

            after_cv.append(PermutationTest(permutations))
            after_cv[0].check(prep)  # before the store is opened or anything trains
        tracker = make_tracker(not no_track, tracking_uri, experiment=exp.name)  # a bad store fails here
        err.print(f"[bold]{exp.name}[/]: {prep.dataset.name} ({prep.dataset.n_samples} samples, {prep.dataset.task}), "
                  f"{exp.cv.kind} CV with {len(prep.folds)} folds, test set {len(prep.test_idx)}, seed {exp.seed}",
                  highlight=False)
        name = run_label(exp.name, [x for x in set_ or [] if not x.startswith("name=")])

        def show(outcome: Any) -> None:
            if json_out:
                print(json.dumps(outcome_json(outcome), default=str))
            else:
                _print_outcome(outcome)

        try:
            if quiet or json_out:
                outcome = run_experiment(exp, tracker=tracker, prepared=prep, resume=resume, after_cv=after_cv,
                                         run_name=name, register=register)
            else:
                with RichProgress(err, exp.metric) as progress:
                    outcome = run_experiment(exp, tracker=tracker, prepared=prep, progress=progress, resume=resume,
                                             after_cv=after_cv, run_name=name, register=register)
        except TrackingError as exc:  # computed, but not (fully) recorded: show the results, then the error
            if getattr(exc, "outcome", None) is not None:
                show(exc.outcome)  # type: ignore[attr-defined]
            raise
        show(outcome)
        return outcome

    def resume_hint(exc: BaseException) -> str:
        run_id = getattr(exc, "gencv_run_id", None) or resume
        cmd = command("run", spec_path(spec), set_, ("--threads", None if threads == 1 else threads),
                      ("--tracking-uri", redacted(tracking_uri)), ("--no-track", no_track),
                      ("--allow-large-loo", allow_large_loo), ("--permutations", permutations or None),
                      ("--register", register), ("--resume", run_id))
        return cmd if run_id else f"{cmd}  (no run was recorded yet: this starts afresh)"

    outcome = guard(lambda: with_threads(threads, go), resume_hint)
    if not outcome.cv.ok_folds:
        raise typer.Exit(1)

