"""`gencv ui`: the MLflow UI on the tracking store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from gencv.cli.common import UriOpt, err, guard


def ui(
    tracking_uri: UriOpt = None,
    host: Annotated[str, typer.Option(help="bind address; keep 127.0.0.1 unless you add authentication")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 5000,
) -> None:
    """Open the MLflow UI on the tracking store (runs, learning curves, plots, models).

    Example: gencv ui --port 5000   (then browse http://127.0.0.1:5000)
    """
    from gencv.tracking import resolve_tracking_uri

    uri = guard(lambda: resolve_tracking_uri(tracking_uri))
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if uri.startswith("sqlite:///"):
        cmd += ["--default-artifact-root", str(Path(uri.removeprefix("sqlite:///")).parent.resolve() / "artifacts")]
    err.print(f"MLflow UI on http://{host}:{port} for {uri} (Ctrl-C to stop)", highlight=False)
    try:
        raise typer.Exit(subprocess.call(cmd, env=os.environ.copy()))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None

