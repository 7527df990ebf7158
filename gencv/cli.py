"""The `gencv` command line: parse, set up logging and tracking, call one library function, render."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gencv.errors import GencvError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Cross-validation and generalization experiments for PyTorch networks.")
out = Console()  # data
err = Console(stderr=True)  # progress, logs, errors

DEFAULT_SPEC = "experiments/quickstart.yaml"
T = TypeVar("T")

SpecArg = Annotated[str | None, typer.Argument(help="experiment YAML; default: experiments/quickstart.yaml, "
                                               "else the built-in quickstart")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override a dotted path, e.g. train.lr=0.01")]
UriOpt = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI or "
                                            "sqlite:///mlruns/mlflow.db)")]


def _setup_logging(verbose: bool) -> None:
    # stdout carries data only (tables, --json); MLflow would print "View run ... at" lines there.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)


def _sigterm_to_interrupt() -> None:
    """SIGTERM (docker stop, a batch scheduler) ends the run like Ctrl-C: runs marked KILLED, exit 130."""
    from gencv.errors import Terminated

    def handler(signum: int, frame: Any) -> None:
        # One-shot: a second SIGTERM while we mark runs KILLED must not cut that clean-up short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def _guard(fn: Callable[[], T], resume_hint: str = "gencv run SPEC --resume {run_id}") -> T:
    """Run fn; user errors exit 2 with the message only, Ctrl-C/SIGTERM exit 130 with how to resume."""
    try:
        return fn()
    except GencvError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt as exc:
        run_id = getattr(exc, "gencv_run_id", None) or "RUN_ID"
        hint = resume_hint.format(run_id=run_id)
        err.print(f"[yellow]interrupted: runs were marked KILLED; finished work is kept. Resume with: {hint}[/]",
                  highlight=False)
        raise typer.Exit(130) from None


def _load(spec: str | None, sets: list[str] | None) -> Any:
    from gencv.spec import load_experiment

    if spec is None:
        from importlib import resources

        local = Path(DEFAULT_SPEC)
        embedded = resources.files("gencv.experiments").joinpath("quickstart.yaml")
        spec = str(local) if local.exists() else str(embedded)
    return load_experiment(spec, sets or [])


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
    cols = {"fold": "fold", "status": "status", f"train_{m}": "train", f"valid_{m}": "valid", f"test_{m}": "test",
            f"gap_{m}": "gap", "epochs_run": "epochs", "best_epoch": "best", "fit_seconds": "fit s"}
    from gencv.metrics import METRICS

    gap = "train - valid" if METRICS[m].higher_is_better else "valid - train"
    t = Table(title=f"{outcome.experiment.name}: per-fold {m} (valid = held-out fold, gap = {gap}: > 0 is worse held out)")
    for label in cols.values():
        t.add_column(label, justify="right")
    for _, row in table.iterrows():
        t.add_row(*[_fmt(row[c]) for c in cols])
    out.print(t)
    keys = [f"train_{m}", f"valid_{m}", f"test_{m}", f"gap_{m}", "train_loss", "valid_loss", "gap_loss"]
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
    measure_keys = [k for k in HEADLINE_MEASURES if k in set(outcome.summary["metric"])]
    if measure_keys:
        mt = Table(title="curvature and sharpness at the final weights (training data; mean over folds)")
        for c in ("measure", "mean", "std", "n"):
            mt.add_column(c, justify="right")
        for k in measure_keys:
            s = summarize(outcome.cv.values(k))
            mt.add_row(k, f"{s['mean']:.4g}", f"{s['std']:.3g}", str(s["n"]))
        out.print(mt)
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


@app.command()
def run(
    spec: SpecArg = None,
    set_: SetOpt = None,
    tracking_uri: UriOpt = None,
    no_track: Annotated[bool, typer.Option("--no-track", help="do not record anything in MLflow")] = False,
    allow_large_loo: Annotated[bool, typer.Option("--allow-large-loo", help="run leave-one-out above cv.max_loo_samples")] = False,
    resume: Annotated[str | None, typer.Option("--resume", help="run id of an interrupted run: reuse its finished folds")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the results as JSON on stdout")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress display")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Cross-validate a spec: per-fold train/validation/test scores, gaps, curves; record in MLflow.

    Example: gencv run experiments/quickstart.yaml --set train.lr=0.01 --set cv.kind=kfold
    """
    _setup_logging(verbose)
    _sigterm_to_interrupt()

    def go() -> Any:
        from gencv.runner import outcome_json, prepare, run_experiment
        from gencv.tracking import make_tracker

        exp = _load(spec, set_)
        prep = prepare(exp, allow_large_loo=allow_large_loo)
        tracker = make_tracker(not no_track, tracking_uri)
        err.print(f"[bold]{exp.name}[/]: {prep.dataset.name} ({prep.dataset.n_samples} samples, {prep.dataset.task}), "
                  f"{exp.cv.kind} CV with {len(prep.folds)} folds, test set {len(prep.test_idx)}, seed {exp.seed}",
                  highlight=False)
        if quiet or json_out:
            outcome = run_experiment(exp, tracker=tracker, prepared=prep, resume=resume)
        else:
            with RichProgress(err, exp.metric) as progress:
                outcome = run_experiment(exp, tracker=tracker, prepared=prep, progress=progress, resume=resume)
        if json_out:
            print(json.dumps(outcome_json(outcome), default=str))
        else:
            _print_outcome(outcome)
        return outcome

    outcome = _guard(go)
    if not outcome.cv.ok_folds:
        raise typer.Exit(1)


@app.command()
def measure(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of a `gencv run` parent run")],
    measures: Annotated[str, typer.Option("--measures", "-m", help="comma-separated measure names")] =
        "hessian_top,hessian_trace,eps_sharpness,adaptive_sharpness,pacbayes_flatness,norms",
    sample_size: Annotated[int | None, typer.Option(help="seeded subsample of the training rows "
                                                    "(default: the run's measure_options, else 512)")] = None,
    tracking_uri: UriOpt = None,
    no_log: Annotated[bool, typer.Option("--no-log", help="print only; do not add the values to the run")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Compute curvature/sharpness measures of a logged run's model, without retraining.

    Example: gencv measure 4129d6bf6ef045bd83f6c7f1566dee63 --measures hessian_top,hessian_density
    """
    _setup_logging(verbose)

    def go() -> Any:
        from gencv.posthoc import measure_logged_run
        from gencv.tracking import MlflowTracker

        tracker = MlflowTracker(tracking_uri)
        names = [m.strip() for m in measures.split(",") if m.strip()]
        err.print(f"measuring run {run_id}: {', '.join(names)}", highlight=False)
        overrides = {} if sample_size is None else {"sample_size": sample_size}
        return measure_logged_run(tracker, run_id, names, overrides=overrides, log_results=not no_log)

    res = _guard(go)
    t = Table(title=f"{res.experiment.name}: measures of the refit model ({res.n_samples} training rows)")
    t.add_column("measure")
    t.add_column("value", justify="right")
    for k, v in res.result.values.items():
        t.add_row(k, f"{v:.6g}")
    out.print(t)
    for note in res.result.notes:
        err.print(f"[yellow]note:[/] {note}", highlight=False)


@app.command()
def validate(
    spec: SpecArg = None,
    set_: SetOpt = None,
    no_data: Annotated[bool, typer.Option("--no-data", help="check the spec only, not the data and folds")] = False,
    allow_large_loo: Annotated[bool, typer.Option("--allow-large-loo")] = False,
) -> None:
    """Print the resolved spec, or every error in it (exit code 2); also checks data and folds.

    Example: gencv validate experiments/digits_cnn.yaml --set cv.n_splits=3
    """
    _setup_logging(False)

    def go() -> None:
        exp = _load(spec, set_)
        if not no_data:
            from gencv.runner import prepare

            prep = prepare(exp, allow_large_loo=allow_large_loo)
            err.print(f"data {prep.dataset.name}: {prep.dataset.n_samples} samples, {prep.dataset.task}; "
                      f"{len(prep.folds)} folds; test set {len(prep.test_idx)}", highlight=False)
        print(exp.to_yaml(), end="")

    _guard(go)


@app.command()
def datasets() -> None:
    """List the data sources a spec can name in data.source.

    Example: gencv datasets
    """
    from gencv.data import describe_sources

    t = Table(title="data sources")
    for c in ("source", "task", "description"):
        t.add_column(c)
    for row in describe_sources():
        t.add_row(*row)
    out.print(t)


@app.command()
def ui(
    tracking_uri: UriOpt = None,
    host: Annotated[str, typer.Option(help="bind address; keep 127.0.0.1 unless you add authentication")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 5000,
) -> None:
    """Open the MLflow UI on the tracking store (runs, learning curves, plots, models).

    Example: gencv ui --port 5000   (then browse http://127.0.0.1:5000)
    """
    from gencv.tracking import resolve_tracking_uri

    uri = _guard(lambda: resolve_tracking_uri(tracking_uri))
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if uri.startswith("sqlite:///"):
        cmd += ["--default-artifact-root", str(Path(uri.removeprefix("sqlite:///")).parent.resolve() / "artifacts")]
    err.print(f"MLflow UI on http://{host}:{port} for {uri} (Ctrl-C to stop)", highlight=False)
    try:
        raise typer.Exit(subprocess.call(cmd, env=os.environ.copy()))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


from gencv.cli_tune import tune  # noqa: E402  (cli_tune imports the helpers above)

app.command()(tune)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # one that arrived outside a command's guard (start-up, clean-up)
        sys.exit(130)


if __name__ == "__main__":
    main()
