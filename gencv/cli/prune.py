"""`gencv prune`: network pruning swept over sparsity levels, each level compared with the unpruned network."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import typer
from rich.table import Table

from gencv.cli.common import (
    SetOpt,
    SpecArg,
    ThreadsOpt,
    UriOpt,
    command,
    err,
    guard,
    load_spec,
    out,
    redacted,
    setup_logging,
    sigterm_to_interrupt,
    spec_path,
    torch_threads,
)

_METHODS_HELP = ("random | magnitude | global_magnitude | gradient | hessian | neuron | channel (repeatable)")


def prune(
    spec: SpecArg = None,
    method: Annotated[list[str] | None, typer.Option("--method", "-m", help=_METHODS_HELP)] = None,
    levels: Annotated[str, typer.Option("--levels", help="sparsity levels in (0, 1), comma-separated; level 0 "
                                        "(unpruned, fine-tuned equally) is always the baseline")] = "0.5,0.8,0.9,0.95",
    finetune_epochs: Annotated[int | None, typer.Option("--finetune-epochs", help="fine-tuning epochs after each "
                                                        "pruning round (default: train.max_epochs / 4)")] = None,
    iterative: Annotated[int, typer.Option("--iterative", help="reach each level in K prune/fine-tune rounds")] = 1,
    rewind: Annotated[bool, typer.Option("--rewind", help="also reset the survivors to their initial weights and "
                                         "retrain (lottery ticket), reported as METHOD+rewind")] = False,
    hessian_probes: Annotated[int, typer.Option("--hessian-probes", help="Rademacher probes of the OBD Hessian "
                                                "diagonal (0: exact, one HVP per parameter)")] = 32,
    no_timing: Annotated[bool, typer.Option("--no-timing", help="skip the CPU inference timing of shrunk "
                                            "networks")] = False,
    threads: ThreadsOpt = 1,
    set_: SetOpt = None,
    tracking_uri: UriOpt = None,
    no_track: Annotated[bool, typer.Option("--no-track", help="do not record anything in MLflow")] = False,
    resume: Annotated[str | None, typer.Option("--resume", help="prune run id: its saved trained folds and finished "
                                               "(fold, method, level) steps are reused")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the results as JSON on stdout")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Prune each fold's trained network at each sparsity level, fine-tune, score; compare with level 0.

    Example: gencv prune experiments/prune_mlp.yaml --method magnitude --method random --levels 0.5,0.9
    """
    setup_logging(verbose)
    sigterm_to_interrupt()

    def go() -> Any:

        exp = load_spec(spec, set_)
        with torch_threads(threads):
            return sweep(exp)

    def sweep(exp: Any) -> Any:
        from gencv.studies.prune import (
            PruneSettings,
            check_settings,
            parse_levels,
            run_prune,
        )
        from gencv.tracking import make_tracker

        settings = PruneSettings(tuple(method or ()), parse_levels(levels), finetune_epochs=finetune_epochs,
                                 hessian_probes=hessian_probes, iterative=iterative, rewind=rewind,
                                 timing=not no_timing)
        check_settings(exp, settings)  # before any store is opened or network trained
        tracker = make_tracker(not no_track, tracking_uri, exp.name)

        def step(fold: int, label: str, level: float, res: Any) -> None:
            if not json_out:
                v = res.valid_scores.get(exp.metric, float("nan"))
                err.print(f"fold {fold}: {label} at {level:g}: {exp.metric} {v:.4f}", highlight=False)

        result = run_prune(exp, settings, tracker=tracker, on_step=step, resume=resume)
        if json_out:
            print(json.dumps({"run_id": result.run_id, "levels": json.loads(result.table.to_json(orient="records")),
                              "notes": result.notes}, default=str))
        else:
            _print(result)
        return result

    def resume_hint(exc: BaseException) -> str:
        run_id = getattr(exc, "gencv_run_id", None) or resume
        return command("prune", spec_path(spec), set_, *[("--method", m) for m in method or []],
                       ("--levels", levels), ("--finetune-epochs", finetune_epochs), ("--iterative", iterative),
                       ("--rewind", rewind), ("--hessian-probes", hessian_probes), ("--no-timing", no_timing),
                       ("--threads", None if threads == 1 else threads),
                       ("--tracking-uri", redacted(tracking_uri)), ("--no-track", no_track), ("--resume", run_id))

    guard(go, resume_hint)


def _print(result: Any) -> None:
    m = result.experiment.metric
    t = Table(title=f"{result.experiment.name}: pruning sweep (same folds; vs the unpruned network fine-tuned "
                    "equally: corrected t-test p, Holm-corrected across methods and levels, and Bayesian "
                    "P(better / equivalent / worse))")
    cols = {"method": "method", "level": "level", "sparsity_mean": "sparsity", "n_params_mean": "params",
            f"valid_{m}_mean": f"CV {m}", f"gap_{m}_mean": "gap", f"test_{m}_mean": f"test {m}",
            "diff_vs_baseline": "diff", "p_holm": "p (Holm)", "P_better": "P better", "P_equivalent": "P equiv",
            "P_worse": "P worse", "infer_ms_b1_mean": "ms b1", "infer_ms_b256_mean": "ms b256"}
    if "hessian_top_1_mean" in result.table:  # the top Hessian eigenvalue of the pruned network, when measured
        cols["hessian_top_1_mean"] = "hessian_top"
    cols = {k: v for k, v in cols.items() if k in result.table}
    for label in cols.values():
        t.add_column(label, justify="right", no_wrap=True)
    for _, row in result.table.iterrows():
        cells = []
        for key in cols:
            v = row.get(key)
            cells.append("-" if v is None or (isinstance(v, float) and math.isnan(v)) else
                         f"{v:g}" if key == "level" else f"{v:.0f}" if key == "n_params_mean" else
                         f"{v:.4g}" if isinstance(v, float) else str(v))
        t.add_row(*cells)
    out.print(t)
    for note in result.notes:
        err.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    if result.run_id:
        err.print(f"MLflow prune run {result.run_id} (open with `gencv ui`)", highlight=False)
