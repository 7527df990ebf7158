"""`gencv compare`: paired, corrected tests between finished runs scored on the same folds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from gencv.cli.common import UriOpt, err, guard, out, setup_logging


def compare(
    run_ids: Annotated[list[str], typer.Argument(help="two or more run ids (`gencv run` parent runs or study trials)")],
    metric: Annotated[str | None, typer.Option("--metric", help="metric to compare (default: the runs' primary "
                                               "metric)")] = None,
    rope: Annotated[float | None, typer.Option("--rope", help="region of practical equivalence, in the metric's "
                                               "units (default 0.01 for scores in [0, 1], else 1% of the first "
                                               "run's mean)")] = None,
    plots: Annotated[Path | None, typer.Option("--plots", help="folder for the posterior PNGs (default: "
                                               "./gencv-compare)")] = None,
    log_run: Annotated[bool, typer.Option("--log", help="record the comparison as an MLflow run")] = False,
    tracking_uri: UriOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the results as JSON on stdout")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Is one run really better? Corrected t-test and Bayesian correlated t-test on the shared folds.

    Example: gencv compare 4129d6bf6ef045bd83f6c7f1566dee63 9be1c0d2a5e94b1b8f0c3a7e2d6f1a44 --rope 0.01
    """
    setup_logging(verbose)

    def go() -> Any:
        from gencv.studies.compare import compare_runs, load_run_scores, plot_posteriors
        from gencv.tracking import MlflowTracker

        tracker = MlflowTracker(tracking_uri, writer="inline")
        runs = [load_run_scores(tracker.client, r, metric) for r in run_ids]
        if metric is None and len({r.metric for r in runs}) > 1:
            from gencv.errors import GencvError

            raise GencvError(f"the runs have different primary metrics ({', '.join(r.metric for r in runs)}); "
                             "pass --metric")
        comparison = compare_runs(runs, rope=rope)
        paths = plot_posteriors(comparison, plots or Path("gencv-compare"))
        if log_run:
            _log_comparison(tracker, comparison, paths)
        return comparison, paths

    comparison, paths = guard(go, resume_hint="gencv compare RUN_A RUN_B (nothing to resume)")
    if json_out:
        print(json.dumps({**comparison.to_json(), "plots": [str(p) for p in paths]}, default=str))
        return
    _print(comparison)
    for p in paths:
        err.print(f"posterior plot: {p}", highlight=False)


def _print(c: Any) -> None:
    from gencv.studies.compare import comparison_table

    labels = {r.run_id: r.label for r in c.runs}
    rt = Table(title=f"runs ({c.metric}, {'higher' if c.higher_is_better else 'lower'} is better; ranked by pairs "
                     "won with P(better) > 0.95, then mean)")
    for col in ("rank", "run", "folds", f"mean {c.metric}", "wins"):
        rt.add_column(col, justify="right", no_wrap=True)
    by_id = {r.run_id: r for r in c.runs}
    for i, (rid, mean, wins) in enumerate(c.ranking, 1):
        rt.add_row(str(i), labels[rid], str(len(by_id[rid].scores)), f"{mean:.4f}", str(wins))
    out.print(rt)
    t = Table(title=f"pairs (difference a - b, > 0: a better; {c.rope_note}; p-values Holm-corrected over "
                    f"{len(c.pairs)} pair(s))")
    rows = comparison_table(c)
    t.add_column("", justify="left", no_wrap=True)
    for row in rows:
        t.add_column(f"{row['a']} vs {row['b']}", justify="right", no_wrap=True)
    for key in list(rows[0])[2:]:
        t.add_row(key, *[f"{r[key]:.4f}" if isinstance(r[key], float) else str(r[key]) for r in rows])
    out.print(t)
    out.print("The plain paired t-test is over-confident: CV training sets overlap, so fold scores are correlated "
              "and its variance is too small. Quote the corrected test or the Bayesian probabilities.",
              highlight=False, soft_wrap=True)
    for note in c.notes:
        err.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)


def _log_comparison(tracker: Any, c: Any, paths: list[Path]) -> None:
    import tempfile

    import pandas as pd

    from gencv.studies.compare import comparison_table

    experiment = tracker.client.get_run(c.runs[0].run_id).info.experiment_id
    name = tracker.client.get_experiment(experiment).name
    run_id = tracker.start_run(name, "compare-" + "-vs-".join(r.label for r in c.runs)[:200],
                               tags={"gencv.kind": "compare", "gencv.compared": ",".join(r.run_id for r in c.runs)})
    tracker.log_params(run_id, {"metric": c.metric, "rope": c.rope, "runs": ",".join(r.run_id for r in c.runs)})
    metrics: dict[str, float] = {}
    for i, p in enumerate(c.pairs):
        metrics |= {f"pair{i}_p_corrected": p.corrected_p, f"pair{i}_p_holm": p.corrected_p_holm,
                    f"pair{i}_p_a_better": p.p_a_better, f"pair{i}_p_equivalent": p.p_equivalent,
                    f"pair{i}_p_b_better": p.p_b_better, f"pair{i}_mean_diff": p.mean_diff}
    tracker.log_metrics(run_id, metrics)
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "comparison.csv"
        pd.DataFrame(comparison_table(c)).to_csv(table, index=False)
        tracker.log_artifact(run_id, table)
        (Path(tmp) / "comparison.json").write_text(json.dumps(c.to_json(), default=str))
        tracker.log_artifact(run_id, Path(tmp) / "comparison.json")
    for p in paths:
        tracker.log_artifact(run_id, p, "plots")
    tracker.end_run(run_id, "FINISHED")
    err.print(f"MLflow comparison run {tracker.resolve(run_id)}", highlight=False)
