"""`gencv validate`: the resolved spec, or every error in it."""

from __future__ import annotations

from typing import Annotated

import typer

from gencv.cli.common import SetOpt, SpecArg, err, guard, load_spec, setup_logging


def validate(
    spec: SpecArg = None,
    set_: SetOpt = None,
    no_data: Annotated[bool, typer.Option("--no-data", help="check the spec only, not the data and folds")] = False,
    allow_large_loo: Annotated[bool, typer.Option("--allow-large-loo")] = False,
) -> None:
    """Print the resolved spec, or every error in it (exit code 2); also checks data and folds.

    With model.kind=custom, --no-data checks that model.module's file exists and defines the name, without
    importing it; without --no-data the module is built and run on a few rows of the data.

    Example: gencv validate experiments/digits_cnn.yaml --set cv.n_splits=3
    """
    setup_logging(False)

    def go() -> None:
        exp = load_spec(spec, set_)
        if exp.model.kind == "custom":  # the file and the name in it, read without importing (no torch)
            from gencv.modref import check_module_source

            check_module_source(str(exp.model.module))
        if not no_data:
            from gencv.runner import prepare

            prep = prepare(exp, allow_large_loo=allow_large_loo)
            err.print(f"data {prep.dataset.name}: {prep.dataset.n_samples} samples, {prep.dataset.task}; "
                      f"{len(prep.folds)} folds; test set {len(prep.test_idx)}", highlight=False)
        print(exp.to_yaml(), end="")

    guard(go)

