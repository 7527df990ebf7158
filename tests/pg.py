"""A real, throw-away PostgreSQL server for tests: initdb in a temporary directory, 127.0.0.1, a free port.

Finds initdb/pg_ctl under /usr/lib/postgresql/*/bin (or on PATH); when missing and running as root,
installs the Debian `postgresql` package. Under CI (the CI variable set) a server that cannot be
provided is an error, never a skip. PostgreSQL refuses to run as root, so as root the cluster is
created and run as the `postgres` system user the package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["PostgresUnavailable", "find_bin", "postgres_server"]


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries and no way to install them."""


def find_bin() -> Path | None:
    """Directory holding initdb and pg_ctl (newest version first), or None."""
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                    if Path(p).parent.name.isdigit() else 0, reverse=True):
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    return None


def _install() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, capture_output=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "postgresql"], check=True,
                   capture_output=True, env=env, timeout=900)


def ensure_bin() -> Path:
    """initdb/pg_ctl directory, installing PostgreSQL as root if needed; raises PostgresUnavailable."""
    found = find_bin()
    if found is not None:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        try:
            _install()
        except (subprocess.SubprocessError, OSError) as exc:
            raise PostgresUnavailable(f"apt-get install postgresql failed: {exc}") from exc
        found = find_bin()
        if found is not None:
            return found
    raise PostgresUnavailable("PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin); "
                              "install it with `apt-get install -y postgresql`")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server, create database `gencv`, yield its SQLAlchemy URL; stop and delete at exit."""
    bindir = ensure_bin()
    as_root = os.geteuid() == 0
    runas: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="gencv-pg-"))
    if as_root:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise PostgresUnavailable("running as root but there is no `postgres` user to run the server as") from exc
        os.chmod(tmp, 0o755)
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        runner = shutil.which("runuser") or shutil.which("su")
        runas = ["runuser", "-u", "postgres", "--"] if runner and runner.endswith("runuser") else []
        if not runas:
            raise PostgresUnavailable("running as root needs `runuser` to start PostgreSQL as user postgres")
    data, sock, logf = tmp / "data", tmp / "sock", tmp / "server.log"
    for p in (data, sock):
        p.mkdir()
        if as_root:
            os.chown(p, pw.pw_uid, pw.pw_gid)
    port = _free_port()
    user, password = "gencv", "s3cret-pw"
    pwfile = tmp / "pw"
    pwfile.write_text(password + "\n")
    if as_root:
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        logf.touch()
        os.chown(logf, pw.pw_uid, pw.pw_gid)

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*runas, *args], check=True, capture_output=True, text=True, timeout=timeout)

    started = False
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", user, "--pwfile", str(pwfile), "-A", "scram-sha-256",
            "-E", "UTF8", "--no-sync")
        opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sock} -c fsync=off " \
               "-c max_connections=100"
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(logf), "-o", opts, "-w", "-t", "60", "start")
        started = True
        env = {**os.environ, "PGPASSWORD": password}
        subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, "gencv"],
                       check=True, capture_output=True, text=True, env=env, timeout=60)
        yield f"postgresql+psycopg2://{user}:{password}@127.0.0.1:{port}/gencv"
    except subprocess.CalledProcessError as exc:
        log = logf.read_text() if logf.exists() else ""
        raise PostgresUnavailable(f"{exc.cmd[0] if exc.cmd else 'postgres'} failed: {exc.stderr}\n{log}") from exc
    finally:
        if started:
            try:
                run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop", timeout=60)
            except (subprocess.SubprocessError, OSError):
                pass
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a live PostgreSQL database; skip locally, fail under CI, when none can be provided."""
    try:
        with postgres_server() as url:
            yield url
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a real PostgreSQL for the shared-study tests: {exc}")
        pytest.skip(f"no PostgreSQL: {exc}")
