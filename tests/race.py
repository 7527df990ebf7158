"""Start N processes that each import, signal they are ready, and wait for one file to go: a real race."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def release_together(script: str, first_arg: str, n: int, tmp_path: Path, timeout: float = 120) -> list[str]:
    """Run `python -c script first_arg GO_FILE i` n times, release them at once; return their stderr.

    The script touches `<GO_FILE's folder>/ready-<i>` once imported, then waits for GO_FILE to exist.
    Asserts every process exited 0.
    """
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", script, first_arg, str(go), str(i)], stderr=subprocess.PIPE,
                              text=True) for i in range(n)]
    deadline = time.monotonic() + timeout
    while len(list(tmp_path.glob("ready-*"))) < n and time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    go.touch()
    errors = [p.communicate(timeout=timeout)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * n, "\n".join(e[-1500:] for e in errors)
    return errors
