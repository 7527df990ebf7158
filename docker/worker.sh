#!/usr/bin/env bash
# One tuning worker: joins the shared Optuna study and logs to the shared MLflow server.
# Environment:
#   GENCV_SPEC       spec path inside the image (default: experiments/tune_iris.yaml)
#   GENCV_STUDY      study name shared by all workers (default: the spec's `name`, so that workers
#                    started without it still share one study)
#   GENCV_TRIALS     total trials for the whole study, not per worker (default: the spec's tune.trials)
#   OPTUNA_STORAGE   postgresql://user:pass@host:5432/optuna   (required)
#   MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD  (MLflow server + credentials)
#   GENCV_WAIT_SECONDS  how long to wait for the MLflow server to answer (default: 120)
set -euo pipefail
: "${OPTUNA_STORAGE:?set OPTUNA_STORAGE to the shared PostgreSQL URL}"
spec="${GENCV_SPEC:-experiments/tune_iris.yaml}"
study="${GENCV_STUDY:-}"
if [[ -z "$study" ]]; then
    # Without --study every worker would start its own study (name-time-pid): use the spec's name.
    study="$(python -c 'import sys; from gencv.spec import load_experiment; print(load_experiment(sys.argv[1]).name)' \
             "$spec")" || { echo "cannot read the study name from $spec; set GENCV_STUDY" >&2; exit 2; }
fi
args=(tune "$spec" --storage "$OPTUNA_STORAGE" --study "$study" --quiet)
[[ -n "${GENCV_TRIALS:-}" ]] && args+=(--trials "$GENCV_TRIALS")
if [[ "${MLFLOW_TRACKING_URI:-}" == http* ]]; then
    deadline=$(( $(date +%s) + ${GENCV_WAIT_SECONDS:-120} ))
    until python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/health', timeout=3)" \
            "$MLFLOW_TRACKING_URI" 2>/dev/null; do
        if (( $(date +%s) > deadline )); then echo "MLflow server $MLFLOW_TRACKING_URI not reachable" >&2; exit 1; fi
        sleep 2
    done
fi
exec gencv "${args[@]}"
