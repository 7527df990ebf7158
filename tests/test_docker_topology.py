"""The Docker batch topology without Docker: PostgreSQL + docker/mlflow-server.sh (auth on) + docker/worker.sh."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ADMIN, PASSWORD = "admin", "test-admin-pw-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _create_databases(url: str, names: list[str]) -> dict[str, str]:
    import psycopg2

    dsn = url.replace("postgresql+psycopg2://", "postgresql://")
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        for n in names:
            cur.execute(f"DROP DATABASE IF EXISTS {n}")
            cur.execute(f"CREATE DATABASE {n}")
    conn.close()
    base = url.rsplit("/", 1)[0]
    return {n: f"{base}/{n}" for n in names}


def _get(url: str, auth: bool = True) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{ADMIN}:{PASSWORD}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def mlflow_server(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # noqa: F811
    dbs = _create_databases(pg_url, ["mlflow_topo", "mlflow_topo_auth"])
    port = _free_port()
    art = tmp_path_factory.mktemp("mlartifacts")
    env = {**os.environ, "MLFLOW_BACKEND_URI": dbs["mlflow_topo"], "MLFLOW_AUTH_DB_URI": dbs["mlflow_topo_auth"],
           "MLFLOW_ADMIN_USER": ADMIN, "MLFLOW_ADMIN_PASSWORD": PASSWORD, "MLFLOW_ARTIFACTS_DIR": str(art),
           "MLFLOW_PORT": str(port), "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    log = open(art / "server.log", "w")
    proc = subprocess.Popen(["bash", str(ROOT / "docker" / "mlflow-server.sh")], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"mlflow-server.sh exited {proc.returncode}: {(art / 'server.log').read_text()[-3000:]}")
            try:
                if _get(url + "/health", auth=False)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(1)
        else:
            pytest.fail("MLflow server did not become healthy in 180 s")
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
        log.close()


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
    assert {"model", "spec.yaml", "folds.csv"} <= paths


def test_two_worker_scripts_share_one_study_and_log_to_the_server(
    mlflow_server: str, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    from mlflow import MlflowClient

    from .test_tuning import tune_exp

    spec = tmp_path / "tune.yaml"
    spec.write_text(tune_exp(**{"tune.pruner": "none", "name": "topology-tune"}).to_yaml())
    env = {**os.environ, "GENCV_SPEC": str(spec), "GENCV_STUDY": "topology", "GENCV_TRIALS": "4",
           "OPTUNA_STORAGE": pg_url, "MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_TRACKING_USERNAME": ADMIN,
           "MLFLOW_TRACKING_PASSWORD": PASSWORD, "GENCV_HEARTBEAT_INTERVAL": "2", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    workers = [subprocess.Popen(["bash", str(ROOT / "docker" / "worker.sh")], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for w in workers:
        out, errs = w.communicate(timeout=300)
        assert w.returncode == 0, errs[-3000:]
    import optuna

    study = optuna.load_study(study_name="topology", storage=pg_url)
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 4
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    client = MlflowClient(mlflow_server)
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
    env |= {"GENCV_SPEC": str(spec), "OPTUNA_STORAGE": "postgresql://u:p@db/optuna",
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
