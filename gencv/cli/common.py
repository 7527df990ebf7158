"""What every command shares: the consoles (data on stdout, the rest on stderr), options, logging,
the error guard (exit 2 / 130) and spec loading."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console, ConsoleDimensions

from gencv.errors import GencvError

log = logging.getLogger(__name__)


PIPE_WIDTH = 1000  # columns of stdout when it is not a terminal: a table is never cut to fit


class DataConsole(Console):
    """stdout: the terminal's width at a terminal; piped or redirected, wide enough that no table
    cell is cut to "113.48…" (rich assumes 80 columns when it finds no terminal)."""

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)  # type: ignore[attr-defined]
        if self._width is None and not self.is_terminal:
            return ConsoleDimensions(max(size.width, PIPE_WIDTH), size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


out = DataConsole()  # data


err = Console(stderr=True)  # progress, logs, errors


DEFAULT_SPEC = "experiments/quickstart.yaml"


T = TypeVar("T")


SpecArg = Annotated[str | None, typer.Argument(help="experiment YAML; default: experiments/quickstart.yaml, "
                                               "else the built-in quickstart")]


SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override a dotted path, e.g. train.lr=0.01")]


EngineOpt = Annotated[str | None, typer.Option("--engine", help="train.engine: skorch (one net per fold), batched "
                                               "(all folds as one stacked model) or auto (batched where supported)")]


def engine_sets(sets: list[str] | None, engine: str | None) -> list[str] | None:
    """`--engine X` as the last `--set train.engine=X` (so it wins, and resume hints repeat it)."""
    return sets if engine is None else [*(sets or []), f"train.engine={engine}"]


ThreadsOpt = Annotated[int, typer.Option("--threads", help="torch CPU threads (default 1: small networks gain "
                                         "nothing from more, and leave the other core to MLflow's writer; on a busy "
                                         "machine spinning threads slow training several-fold); 0 = torch's default")]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's CPU threads set to `n` (0: left as they are) for the block, then restored (a CliRunner or
    notebook caller keeps its own)."""
    if n < 0:
        raise GencvError(f"--threads: got {n}; use 1 or more, or 0 for torch's default")
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def with_threads(n: int, fn: Callable[[], T]) -> T:
    """`fn()` with torch on `n` CPU threads (`torch_threads`)."""
    with torch_threads(n):
        return fn()


UriOpt = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI or "
                                            "sqlite:///mlruns/mlflow.db)")]


def setup_logging(verbose: bool) -> None:
    # stdout carries data only (tables, --json); MLflow would print "View run ... at" lines there.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # Reading back finished folds (resume, sweeps) downloads small JSON files: no progress bar for each.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)


_INTERRUPT_SEEN = threading.Event()  # set once a Ctrl-C/SIGTERM is being handled: later SIGTERMs are ignored


def sigterm_to_interrupt() -> None:
    """SIGTERM (docker stop, a batch scheduler) ends the run like Ctrl-C: runs marked KILLED, exit 130.

    A handler that raises while the main thread runs a finalizer or weakref callback (torch's
    WeakIdKeyDictionary, say) has its exception printed as "Exception ignored" and dropped. So each
    SIGTERM also starts a watchdog that delivers the signal again unless the main thread is seen
    handling the interrupt within 2 s; once it is, SIGTERM is ignored so the clean-up is not cut short.
    """
    from gencv.errors import Terminated

    main_id = threading.main_thread().ident

    def watchdog() -> None:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            # the exception each thread is handling (in an except or finally block)
            exc = sys._current_exceptions().get(main_id)
            if isinstance(exc, tuple):  # Python < 3.12: (type, value, traceback)
                exc = exc[1]
            if isinstance(exc, KeyboardInterrupt):
                _INTERRUPT_SEEN.set()
            if _INTERRUPT_SEEN.wait(0.02):
                return
        log.debug("SIGTERM was swallowed (raised inside a finalizer?): delivering it again")
        os.kill(os.getpid(), signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        if _INTERRUPT_SEEN.is_set():  # the interrupt got through: a second SIGTERM must not cut the clean-up short
            return
        threading.Thread(target=watchdog, name="gencv-sigterm-watchdog", daemon=True).start()
        raise Terminated(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def guard(fn: Callable[[], T],
          resume_hint: str | Callable[[BaseException], str] = "gencv run SPEC --resume {run_id}") -> T:
    """Run fn; user errors exit 2 with the message only, Ctrl-C/SIGTERM exit 130 with how to resume.

    `resume_hint` is a format string with {run_id}, or a function of the interrupt that returns the
    command to paste.
    """
    try:
        return fn()
    except GencvError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt as exc:
        _INTERRUPT_SEEN.set()
        if callable(resume_hint):
            hint = resume_hint(exc)
        else:
            hint = resume_hint.format(run_id=getattr(exc, "gencv_run_id", None) or "RUN_ID")
        # markup off: a pasted command may hold [brackets] (--set model.hidden=[64])
        err.print(f"interrupted: runs were marked KILLED; finished work is kept. Resume with: {hint}",
                  style="yellow", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(130) from None


def command(name: str, spec: str, sets: Sequence[str] | None, *options: tuple[str, Any]) -> str:
    """A `gencv` command line to paste: spec, every --set, then each (option, value) whose value is
    not None or False (True: a flag), every word shell-quoted."""
    words = ["gencv", name, spec]
    for item in sets or []:
        words += ["--set", item]
    for opt, value in options:
        if value is None or value is False:
            continue
        words += [opt] if value is True else [opt, str(value)]
    return " ".join(shlex.quote(w) for w in words)


def redacted(url: str | None) -> str | None:
    """A URL to show: any password replaced by ***."""
    if url is None or "@" not in url:
        return url
    from gencv.tuning.storage import redact_url

    return redact_url(url)


def spec_path(spec: str | None) -> str:
    """The spec file a command reads: `spec`, else experiments/quickstart.yaml here, else the built-in one."""
    if spec is not None:
        return spec
    from importlib import resources

    local = Path(DEFAULT_SPEC)
    embedded = resources.files("gencv.experiments").joinpath("quickstart.yaml")
    return str(local) if local.exists() else str(embedded)


def load_spec(spec: str | None, sets: list[str] | None) -> Any:
    from gencv.spec import load_experiment

    return load_experiment(spec_path(spec), sets or [])

