"""The typer app: one command per module of `gencv.cli`, registered here.

Command modules import only typer, rich and gencv's light modules at the top; torch, MLflow,
Optuna and matplotlib load inside the command that needs them, so `gencv --help` is quick.
"""

from __future__ import annotations

import sys

import typer

from gencv.cli.compare import compare
from gencv.cli.datasets import datasets
from gencv.cli.measure import measure
from gencv.cli.prune import prune
from gencv.cli.run import run
from gencv.cli.sweep import sweep
from gencv.cli.tune import tune
from gencv.cli.ui import ui
from gencv.cli.validate import validate

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Cross-validation and generalization experiments for PyTorch networks.")
for command in (run, tune, sweep, prune, compare, measure, validate, datasets, ui):
    app.command()(command)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # one that arrived outside a command's guard (start-up, clean-up)
        sys.exit(130)
