"""What every command shares: the consoles (data on stdout, the rest on stderr), options, logging,
the error guard (exit 2 / 130) and spec loading."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from gencv.errors import GencvError

out = Console()  # data


err = Console(stderr=True)  # progress, logs, errors


DEFAULT_SPEC = "experiments/quickstart.yaml"


T = TypeVar("T")


SpecArg = Annotated[str | None, typer.Argument(help="experiment YAML; default: experiments/quickstart.yaml, "
                                               "else the built-in quickstart")]


SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override a dotted path, e.g. train.lr=0.01")]


UriOpt = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI or "
                                            "sqlite:///mlruns/mlflow.db)")]


def setup_logging(verbose: bool) -> None:
    # stdout carries data only (tables, --json); MLflow would print "View run ... at" lines there.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)


def sigterm_to_interrupt() -> None:
    """SIGTERM (docker stop, a batch scheduler) ends the run like Ctrl-C: runs marked KILLED, exit 130."""
    from gencv.errors import Terminated

    def handler(signum: int, frame: Any) -> None:
        # One-shot: a second SIGTERM while we mark runs KILLED must not cut that clean-up short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def guard(fn: Callable[[], T], resume_hint: str = "gencv run SPEC --resume {run_id}") -> T:
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


def load_spec(spec: str | None, sets: list[str] | None) -> Any:
    from gencv.spec import load_experiment

    if spec is None:
        from importlib import resources

        local = Path(DEFAULT_SPEC)
        embedded = resources.files("gencv.experiments").joinpath("quickstart.yaml")
        spec = str(local) if local.exists() else str(embedded)
    return load_experiment(spec, sets or [])

