"""`gencv ui`: the MLflow UI on the tracking store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from gencv.cli.common import UriOpt, err, guard, sigterm_to_interrupt

STOP_TIMEOUT = 5.0  # seconds the UI's processes get to exit after SIGTERM before SIGKILL


def ui_url(host: str, port: int) -> str:
    """The experiments page in MLflow's model-training view.

    MLflow 3.17's UI opens in its GenAI view unless the browser chose otherwise (the sidebar switch,
    kept in the browser's local storage) or the address asks for it: `workflowType=machine_learning`,
    which the UI keeps on its own links. The `mlflow.experimentKind` tag gencv sets is not read there.
    """
    return f"http://{host}:{port}/#/experiments?workflowType=machine_learning"


def ui(
    tracking_uri: UriOpt = None,
    host: Annotated[str, typer.Option(help="bind address; keep 127.0.0.1 unless you add authentication")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 5000,
) -> None:
    """Open the MLflow UI on the tracking store (runs, learning curves, plots, models).

    Example: gencv ui --port 5000   (then browse the address it prints)
    """
    from gencv.tracking import resolve_tracking_uri

    uri = guard(lambda: resolve_tracking_uri(tracking_uri))
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if uri.startswith("sqlite:///"):
        cmd += ["--default-artifact-root", str(Path(uri.removeprefix("sqlite:///")).parent.resolve() / "artifacts")]
    err.print(f"MLflow UI on {ui_url(host, port)} for {uri} (Ctrl-C to stop)", highlight=False, soft_wrap=True)
    sigterm_to_interrupt()
    # Its own session: `mlflow ui` starts a server with worker processes; stopping only the first
    # would leave the others listening on the port.
    proc = subprocess.Popen(cmd, env=os.environ.copy(), start_new_session=True)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        _stop_group(proc)
        raise typer.Exit(0) from None
    _stop_group(proc)  # the server exited by itself: its workers must not outlive it
    raise typer.Exit(code)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group `proc` leads, then SIGKILL what is left after STOP_TIMEOUT seconds."""
    import time

    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader, so the group empties
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    proc.wait()

