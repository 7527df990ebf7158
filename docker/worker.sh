#!/usr/bin/env bash
# One worker: joins the shared Optuna study (a tuning study, or a sweep's queue of levels) and logs to the
# shared MLflow server.
# Usage: worker.sh            run the worker
#        worker.sh --health   exit 0 when the study database and the MLflow server answer (compose healthcheck)
# Environment:
#   GENCV_COMMAND    tune (default) or sweep: `gencv sweep SPEC --storage ...` shares the spec's sweep levels
#   GENCV_SPEC       spec path inside the image (default: experiments/tune_iris.yaml)
#   GENCV_STUDY      study name shared by all workers (default: tune: the spec's `name`, so that workers
#                    started without it still share one study; sweep: gencv's own, the same on every worker)
#   GENCV_TRIALS     total trials for the whole study, not per worker (default: the spec's tune.trials)
#   OPTUNA_STORAGE   postgresql+psycopg2://user@host:5432/optuna   (required; no password in it: the URL
#                    goes on gencv's command line, which `ps` shows to everyone)
#   PGPASSWORD       the database password (or a ~/.pgpass / PGPASSFILE file)
#   MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD  (MLflow server + credentials)
#   GENCV_WAIT_SECONDS  how long to wait for the MLflow server to answer (default: 120)
# Refuses to start while a password is still the `change-me` example of docker/.env.example.
set -euo pipefail
for var in PGPASSWORD MLFLOW_TRACKING_PASSWORD; do
    if [[ "${!var:-}" == change-me* ]]; then
        echo "worker.sh: $var is still the example value from docker/.env.example; set a real one in docker/.env" >&2
        exit 2
    fi
done
: "${OPTUNA_STORAGE:?set OPTUNA_STORAGE to the shared PostgreSQL URL}"
if [[ "$OPTUNA_STORAGE" =~ ^[^:/]+://[^/@]*:[^/@]*@ ]]; then
    echo "worker.sh: OPTUNA_STORAGE holds a password, which would show on the command line; put it in PGPASSWORD" >&2
    exit 2
fi
if [[ "${1:-}" == "--health" ]]; then
    # The URL is read from the environment, not passed as an argument.
    exec python - <<'PY'
import os, sys, urllib.request
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
url = make_url(os.environ["OPTUNA_STORAGE"])
if url.drivername == "postgresql":
    url = url.set(drivername="postgresql+psycopg2")  # the installed driver (SQLAlchemy 2.1 would pick psycopg 3)
engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 5})
try:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
except Exception as exc:
    sys.exit(f"worker.sh --health: study database: {type(exc).__name__}: {str(exc).splitlines()[0]}")
tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
if tracking.startswith("http"):
    try:
        urllib.request.urlopen(tracking.rstrip("/") + "/health", timeout=5)
    except Exception as exc:
        sys.exit(f"worker.sh --health: MLflow server {tracking}: {exc}")
PY
fi
command="${GENCV_COMMAND:-tune}"
if [[ "$command" != tune && "$command" != sweep ]]; then
    echo "worker.sh: GENCV_COMMAND must be tune or sweep, got '$command'" >&2
    exit 2
fi
spec="${GENCV_SPEC:-experiments/tune_iris.yaml}"
study="${GENCV_STUDY:-}"
if [[ "$command" == sweep ]]; then
    args=(sweep "$spec" --storage "$OPTUNA_STORAGE" --quiet)
    [[ -n "$study" ]] && args+=(--study "$study")
elif [[ -z "$study" ]]; then
    # Without --study every worker would start its own study (name-time-pid): use the spec's name.
    study="$(python -c 'import sys; from gencv.spec import load_experiment; print(load_experiment(sys.argv[1]).name)' \
             "$spec")" || { echo "cannot read the study name from $spec; set GENCV_STUDY" >&2; exit 2; }
fi
if [[ "$command" == tune ]]; then
    args=(tune "$spec" --storage "$OPTUNA_STORAGE" --study "$study" --quiet)
    [[ -n "${GENCV_TRIALS:-}" ]] && args+=(--trials "$GENCV_TRIALS")
fi
if [[ "${MLFLOW_TRACKING_URI:-}" == http* ]]; then
    deadline=$(( $(date +%s) + ${GENCV_WAIT_SECONDS:-120} ))
    until python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/health', timeout=3)" \
            "$MLFLOW_TRACKING_URI" 2>/dev/null; do
        if (( $(date +%s) > deadline )); then echo "MLflow server $MLFLOW_TRACKING_URI not reachable" >&2; exit 1; fi
        sleep 2
    done
fi
exec gencv "${args[@]}"
