"""`gencv measure`: curvature and sharpness of a logged run's model, without retraining."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from gencv.cli.common import UriOpt, err, guard, out, setup_logging


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
    setup_logging(verbose)

    def go() -> Any:
        from gencv.posthoc import measure_logged_run
        from gencv.tracking import MlflowTracker

        tracker = MlflowTracker(tracking_uri)
        names = [m.strip() for m in measures.split(",") if m.strip()]
        err.print(f"measuring run {run_id}: {', '.join(names)}", highlight=False)
        overrides = {} if sample_size is None else {"sample_size": sample_size}
        return measure_logged_run(tracker, run_id, names, overrides=overrides, log_results=not no_log)

    res = guard(go)
    t = Table(title=f"{res.experiment.name}: measures of the refit model ({res.n_samples} training rows)")
    t.add_column("measure")
    t.add_column("value", justify="right")
    for k, v in res.result.values.items():
        t.add_row(k, f"{v:.6g}")
    out.print(t)
    for note in res.result.notes:
        err.print(f"[yellow]note:[/] {note}", highlight=False)

