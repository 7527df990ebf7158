"""The Docker batch topology without Docker: PostgreSQL + docker/mlflow-server.sh (auth on) + docker/worker.sh.

The server and the workers run with the entrypoints and environment that docker/compose.yaml gives
them, read from that file and interpolated from docker/.env.example. The intended differences:
real passwords instead of the change-me examples, 127.0.0.1 and free ports instead of the service
names and ports, a temporary directory for the artifacts volume, and the work (spec, study, trials).
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ADMIN, PASSWORD, SECRET = "admin", "test-admin-pw-1", "test-secret-key-1"
DOCKER = ROOT / "docker"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- compose.yaml, read as compose reads it

def _compose() -> dict[str, Any]:
    import yaml

    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _example_env() -> dict[str, str]:
    """docker/.env.example as compose reads docker/.env."""
    return dict(line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines()
                if line and not line.startswith("#"))


def _interpolate(value: str, dotenv: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}."""
    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.groups()
        got = dotenv.get(name, "")
        if op == ":?" and not got:
            raise KeyError(f"{name}: {arg}")
        return got or (arg if op == ":-" else "")

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", sub, value)


def _service(name: str, dotenv: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The service's entrypoint + command and its interpolated environment."""
    svc = _compose()["services"][name]
    argv = list(svc.get("entrypoint", [])) + list(svc.get("command", []))
    return argv, {k: _interpolate(str(v), dotenv) for k, v in svc.get("environment", {}).items()}


def _test_env(pg_password: str, **work: str) -> dict[str, str]:
    """.env.example with real passwords (the one intended difference) and the test's work settings."""
    env = _example_env()
    assert {k for k, v in env.items() if v.startswith("change-me")} == {"POSTGRES_PASSWORD", "MLFLOW_ADMIN_PASSWORD",
                                                                          "MLFLOW_SECRET_KEY"}
    return env | {"POSTGRES_PASSWORD": pg_password, "MLFLOW_ADMIN_PASSWORD": PASSWORD, "MLFLOW_SECRET_KEY": SECRET} | work


def _localize(env: dict[str, str], pg_port: int, mlflow_port: int) -> dict[str, str]:
    """Service names and container ports -> 127.0.0.1 and this test's ports."""
    out = {k: v.replace("@postgres:5432/", f"@127.0.0.1:{pg_port}/")
                .replace("http://mlflow:5000", f"http://127.0.0.1:{mlflow_port}") for k, v in env.items()}
    out |= {k: "127.0.0.1" for k in ("MLFLOW_HOST",) if k in out}
    out |= {k: str(mlflow_port) for k in ("MLFLOW_PORT",) if k in out}
    assert not any(h in v for v in out.values() for h in ("postgres:", "mlflow:")), out
    return out


def _process_env(service_env: dict[str, str], **extra: str) -> dict[str, str]:
    """This machine's environment without settings of its own, the scripts on PATH as in the image."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GENCV_", "MLFLOW_", "OPTUNA_", "PG"))}
    path = f"{DOCKER}:{Path(sys.executable).parent}:{os.environ['PATH']}"
    return base | {"PATH": path, "OMP_NUM_THREADS": "1"} | service_env | extra


def _cmdlines(sessions: set[int]) -> dict[int, str]:
    """Command lines of every process in these sessions (what `ps` shows any user)."""
    out: dict[int, str] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            sid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[3])
            if sid in sessions:
                out[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            pass
    return out


# --------------------------------------------------------------------------- the running topology

@dataclass
class Topology:
    url: str            # the MLflow server
    publish_port: int   # what compose would publish on the host (not the port the test server listens on)
    pg_url: str         # the cluster, database `optuna` (compose's POSTGRES_DB)
    pg_port: int
    pg_password: str
    server_sid: int
    log: Path


def _create_databases(url: str) -> None:
    """What the postgres service creates: POSTGRES_DB and docker/initdb.sql."""
    import psycopg2

    dsn = url.replace("postgresql+psycopg2://", "postgresql://")
    pg_env = _compose()["services"]["postgres"]["environment"]
    names = [pg_env["POSTGRES_DB"]] + re.findall(r"CREATE DATABASE (\w+);", (DOCKER / "initdb.sql").read_text())
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        for n in names:
            cur.execute(f"DROP DATABASE IF EXISTS {n} WITH (FORCE)")
            cur.execute(f"CREATE DATABASE {n}")
    conn.close()


def _get(url: str, auth: bool = True, headers: dict[str, str] | None = None,
         data: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{ADMIN}:{PASSWORD}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def topology(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:  # noqa: F811
    from sqlalchemy.engine import make_url

    pg = make_url(pg_url)
    assert pg.username == _compose()["services"]["postgres"]["environment"]["POSTGRES_USER"]
    _create_databases(pg_url)
    port, publish = _free_port(), _free_port()
    art = tmp_path_factory.mktemp("mlartifacts")
    argv, env = _service("mlflow", _test_env(str(pg.password), MLFLOW_PUBLISH_PORT=str(publish)))
    env = _process_env(_localize(env, int(pg.port), port), MLFLOW_ARTIFACTS_DIR=str(art))  # the volume
    log = art / "server.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"mlflow-server.sh exited {proc.returncode}: {log.read_text()[-3000:]}")
            try:
                if _get(url + "/health", auth=False)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(1)
        else:
            pytest.fail("MLflow server did not become healthy in 180 s")
        yield Topology(url, publish, pg.set(database="optuna").render_as_string(hide_password=False),
                       int(pg.port), str(pg.password), proc.pid, log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # a loaded machine: uvicorn's workers are slow to stop
                os.killpg(proc.pid, 9)
                proc.wait(timeout=30)


@pytest.fixture(scope="module")
def mlflow_server(topology: Topology) -> str:
    return topology.url


def test_server_requires_authentication(mlflow_server: str) -> None:
    status, _ = _get(mlflow_server + "/api/2.0/mlflow/experiments/search?max_results=5", auth=False)
    assert status == 401
    status, _ = _get(mlflow_server + "/api/2.0/mlflow/experiments/search?max_results=5")
    assert status == 200


def test_gencv_run_logs_to_the_authenticated_server(mlflow_server: str, tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_TRACKING_USERNAME": ADMIN,
           "MLFLOW_TRACKING_PASSWORD": PASSWORD}
    res = subprocess.run([sys.executable, "-m", "gencv.cli", "run", str(ROOT / "experiments" / "quickstart.yaml"),
                          "-q", "--json", "--set", "train.max_epochs=2", "--set", "cv.n_splits=2",
                          "--set", "name=topology"], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.lstrip().startswith("{"), (res.stdout[-1500:], res.stderr[-1500:])
    run_id = json.loads(res.stdout)["run_id"]
    status, body = _get(f"{mlflow_server}/api/2.0/mlflow/runs/get?run_id={run_id}")
    assert status == 200, body[:500]
    assert json.loads(body)["run"]["info"]["status"] == "FINISHED"
    status, body = _get(f"{mlflow_server}/api/2.0/mlflow/artifacts/list?run_id={run_id}")
    assert status == 200, body[:500]
    paths = {f["path"] for f in json.loads(body)["files"]}
    assert {"model_weights", "spec.yaml", "folds.csv"} <= paths  # the model itself is a LoggedModel of the run
    status, body = _get(f"{mlflow_server}/api/2.0/mlflow/runs/get?run_id={run_id}")
    outputs = json.loads(body)["run"].get("outputs", {}).get("model_outputs", [])
    assert len(outputs) == 1, body[:1500]  # the refit, linked to the run (the UI's Models column)


def test_ui_accepts_the_published_port_and_refuses_other_hosts_and_origins(topology: Topology) -> None:
    api = topology.url + "/api/2.0/mlflow/experiments/search?max_results=5"
    for host in (f"127.0.0.1:{topology.publish_port}", f"localhost:{topology.publish_port}"):
        assert _get(api, headers={"Host": host})[0] == 200, host  # a browser on the published port
    assert _get(api, headers={"Host": f"evil.example:{topology.publish_port}"})[0] == 403  # DNS rebinding
    create = topology.url + "/api/2.0/mlflow/experiments/create"
    body = json.dumps({"name": "cors-probe"}).encode()
    json_ct = {"Content-Type": "application/json"}
    assert _get(create, headers=json_ct | {"Origin": "http://evil.example"}, data=body)[0] == 403
    assert _get(create, headers=json_ct | {"Origin": f"http://127.0.0.1:{topology.publish_port}"}, data=body)[0] == 200
    server = [c for c in _cmdlines({topology.server_sid}).values() if " server " in c and "--allowed-hosts" in c]
    assert server, _cmdlines({topology.server_sid})
    origins = server[0].split("--cors-allowed-origins ", 1)[1].split(" ", 1)[0].split(",")
    assert f"http://127.0.0.1:{topology.publish_port}" in origins and f"http://localhost:{topology.publish_port}" in origins


def test_no_password_on_the_server_command_lines(topology: Topology) -> None:
    cmdlines = _cmdlines({topology.server_sid})
    assert any("uvicorn" in c for c in cmdlines.values()), cmdlines  # the server's worker processes are seen too
    for c in cmdlines.values():
        assert topology.pg_password not in c and PASSWORD not in c, c


def test_compose_healthchecks_pass_on_the_running_topology(topology: Topology, tmp_path: Path) -> None:
    services = _compose()["services"]
    _, wenv = _service("worker", _test_env(topology.pg_password))
    for name, port in (("mlflow", topology.url.rsplit(":", 1)[1]), ("worker", None)):
        test = services[name]["healthcheck"]["test"]
        assert test[0] == "CMD"
        argv = [a.replace("127.0.0.1:5000", f"127.0.0.1:{port}") for a in test[1:]] if port else test[1:]
        env = _process_env(_localize(wenv, topology.pg_port, int(topology.url.rsplit(":", 1)[1])))
        r = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (name, r.stderr[-2000:])
    down = _process_env(_localize(wenv, _free_port(), int(topology.url.rsplit(":", 1)[1])))  # no database there
    r = subprocess.run(services["worker"]["healthcheck"]["test"][1:], env=down, cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and "study database" in r.stderr


def test_two_compose_workers_share_one_study_and_log_to_the_server(
    topology: Topology, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from .test_tuning import tune_exp

    spec = tmp_path / "tune.yaml"
    spec.write_text(tune_exp(**{"tune.pruner": "none", "name": "topology-tune"}).to_yaml())
    mlflow_port = int(topology.url.rsplit(":", 1)[1])
    argv, env = _service("worker", _test_env(topology.pg_password, GENCV_SPEC=str(spec), GENCV_STUDY="topology",
                                             GENCV_TRIALS="4"))
    env = _process_env(_localize(env, topology.pg_port, mlflow_port))
    logs = [(open(tmp_path / f"w{i}.out", "w"), open(tmp_path / f"w{i}.err", "w")) for i in range(2)]
    workers = [subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=o, stderr=e, start_new_session=True)
               for o, e in logs]
    seen: set[str] = set()  # every command line seen while the workers ran
    deadline = time.time() + 300
    while any(w.poll() is None for w in workers) and time.time() < deadline:
        seen |= set(_cmdlines({w.pid for w in workers}).values())
        time.sleep(0.3)
    for w in workers:
        if w.poll() is None:
            w.kill()
    for o, e in logs:
        o.close()
        e.close()
    for i, w in enumerate(workers):
        assert w.returncode == 0, (tmp_path / f"w{i}.err").read_text()[-3000:]
    assert any(" tune " in c and "--storage" in c for c in seen), seen  # the sampling saw gencv running
    for c in seen:
        assert topology.pg_password not in c and PASSWORD not in c, c
    import optuna

    study = optuna.load_study(study_name="topology", storage=topology.pg_url)
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 4
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    client = MlflowClient(topology.url)
    exp = client.get_experiment_by_name("topology-tune")
    runs = client.search_runs([exp.experiment_id], max_results=500)
    kinds = [r.data.tags.get("gencv.kind") for r in runs]
    assert kinds.count("study") == 1 and kinds.count("trial") == 4
    study_run = next(r for r in runs if r.data.tags.get("gencv.kind") == "study")
    assert all(r.data.tags.get("mlflow.parentRunId") == study_run.info.run_id for r in runs
               if r.data.tags.get("gencv.kind") == "trial")
    assert sum(r.data.tags.get("gencv.best_trial") == "true" for r in runs) == 1


# --------------------------------------------------------------------------- the files themselves (no server)

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def test_image_installs_cpu_torch_by_default() -> None:
    import re

    import yaml

    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(rf'^ARG TORCH_INDEX_URL="{re.escape(CPU_INDEX)}"$', dockerfile, re.M)
    assert 'pip install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"' in dockerfile
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    assert compose["services"]["mlflow"]["build"]["args"]["TORCH_INDEX_URL"] == f"${{TORCH_INDEX_URL:-{CPU_INDEX}}}"
    env = dict(line.split("=", 1) for line in (ROOT / "docker" / ".env.example").read_text().splitlines()
               if line and not line.startswith("#"))
    assert env["TORCH_INDEX_URL"] == CPU_INDEX


def test_compose_workers_wait_for_a_healthy_mlflow_and_never_pull_the_image() -> None:
    import yaml

    services = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]
    assert "/health" in " ".join(services["mlflow"]["healthcheck"]["test"])
    worker = services["worker"]
    assert worker["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert worker["image"] == services["mlflow"]["image"] and worker["pull_policy"] == "never"


def test_worker_script_defaults_the_study_to_the_spec_name(tmp_path: Path) -> None:
    from .test_tuning import tune_exp

    spec = tmp_path / "tune.yaml"
    spec.write_text(tune_exp(**{"name": "shared-by-name"}).to_yaml())
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "gencv").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')  # prints the arguments it got
    (fake / "gencv").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENCV_", "MLFLOW_"))}
    env |= {"GENCV_SPEC": str(spec), "OPTUNA_STORAGE": "postgresql+psycopg2://u@db/optuna",
            "PATH": f"{fake}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", str(ROOT / "docker" / "worker.sh")], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    args = r.stdout.split("\n")
    assert args[args.index("--study") + 1] == "shared-by-name"  # every worker of this spec joins one study
    named = subprocess.run(["bash", str(ROOT / "docker" / "worker.sh")], env={**env, "GENCV_STUDY": "given"},
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    args = named.stdout.split("\n")
    assert named.returncode == 0 and args[args.index("--study") + 1] == "given"
    sweep = subprocess.run(["bash", str(ROOT / "docker" / "worker.sh")], env={**env, "GENCV_COMMAND": "sweep"},
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    args = sweep.stdout.split("\n")
    assert sweep.returncode == 0 and args[:2] == ["sweep", str(spec)] and "--study" not in args  # gencv's own name
    assert args[args.index("--storage") + 1] == "postgresql+psycopg2://u@db/optuna"
    bad = subprocess.run(["bash", str(ROOT / "docker" / "worker.sh")], env={**env, "GENCV_COMMAND": "run"},
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "GENCV_COMMAND must be tune or sweep, got 'run'" in bad.stderr


def test_compose_database_urls_name_the_installed_driver_and_hold_no_password() -> None:
    from sqlalchemy.engine import make_url

    dotenv = _test_env("pg-secret")
    urls = {f"{name}.{k}": v for name in ("mlflow", "worker") for k, v in _service(name, dotenv)[1].items()
            if v.startswith("postgres")}
    assert set(urls) == {"mlflow.MLFLOW_BACKEND_URI", "mlflow.MLFLOW_AUTH_DB_URI", "worker.OPTUNA_STORAGE"}
    for where, url in urls.items():
        assert make_url(url).drivername == "postgresql+psycopg2", where  # bare postgresql:// is psycopg 3 in SA 2.1
        assert make_url(url).password is None and "pg-secret" not in url, where
    for name in ("mlflow", "worker"):
        assert _service(name, dotenv)[1]["PGPASSWORD"] == "pg-secret"  # libpq reads it; no command line shows it


def test_compose_has_a_healthcheck_for_every_long_running_service() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", "mlflow", "worker"}
    for name, svc in services.items():
        assert svc["healthcheck"]["test"], name
    assert services["worker"]["healthcheck"]["test"] == ["CMD", "worker.sh", "--health"]


@pytest.mark.parametrize("publish", [None, "8765"])
def test_compose_tells_the_server_the_published_port(publish: str | None) -> None:
    dotenv = {k: v for k, v in _test_env("pw").items() if k != "MLFLOW_PUBLISH_PORT"}
    if publish:
        dotenv["MLFLOW_PUBLISH_PORT"] = publish
    mlflow = _compose()["services"]["mlflow"]
    host_port = _interpolate(mlflow["ports"][0], dotenv).split(":")[1]
    assert host_port == (publish or "5000")
    assert _service("mlflow", dotenv)[1]["MLFLOW_PUBLISH_PORT"] == host_port


def _fake_mlflow(tmp_path: Path) -> Path:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mlflow").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')  # prints the arguments it got
    (fake / "mlflow").chmod(0o755)
    return fake


def test_server_script_allows_the_published_port(tmp_path: Path) -> None:
    fake = _fake_mlflow(tmp_path)
    argv, env = _service("mlflow", _test_env("pw", MLFLOW_PUBLISH_PORT="8765"))
    env = _process_env(env, MLFLOW_ARTIFACTS_DIR=str(tmp_path / "art"))
    env["PATH"] = f"{fake}:{env['PATH']}"
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    args = r.stdout.split("\n")
    hosts = args[args.index("--allowed-hosts") + 1].split(",")
    assert {"127.0.0.1:8765", "localhost:8765", "mlflow:5000"} <= set(hosts)
    assert args[args.index("--cors-allowed-origins") + 1].split(",") == ["http://localhost:8765", "http://127.0.0.1:8765"]
    assert "--backend-store-uri" not in args  # the URL travels as MLFLOW_BACKEND_STORE_URI


@pytest.mark.parametrize(("service", "left"), [
    ("mlflow", "POSTGRES_PASSWORD"), ("mlflow", "MLFLOW_ADMIN_PASSWORD"), ("mlflow", "MLFLOW_SECRET_KEY"),
    ("worker", "POSTGRES_PASSWORD"), ("worker", "MLFLOW_ADMIN_PASSWORD"),
])
def test_scripts_refuse_the_example_passwords(service: str, left: str, tmp_path: Path) -> None:
    dotenv = _test_env("pg-real-pw") | {left: _example_env()[left]}
    argv, env = _service(service, dotenv)
    env = _process_env(env, MLFLOW_ARTIFACTS_DIR=str(tmp_path / "art"), GENCV_WAIT_SECONDS="1")
    env["PATH"] = f"{_fake_mlflow(tmp_path)}:{env['PATH']}"  # were it to start, it would not serve anything
    r = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-1500:])
    assert len(r.stderr.strip().splitlines()) == 1 and "docker/.env.example" in r.stderr, r.stderr


def test_worker_script_refuses_a_password_in_the_storage_url(tmp_path: Path) -> None:
    env = _process_env({"OPTUNA_STORAGE": "postgresql+psycopg2://u:hunter2@db/optuna", "GENCV_SPEC": "x.yaml"})
    r = subprocess.run(["worker.sh"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "PGPASSWORD" in r.stderr and "hunter2" not in r.stderr, r.stderr
