#!/usr/bin/env bash
# Start an MLflow tracking server: PostgreSQL backend, served artifacts, basic authentication.
# Environment:
#   MLFLOW_BACKEND_URI     postgresql+psycopg2://user@host:5432/mlflow   (required)
#   MLFLOW_AUTH_DB_URI     postgresql+psycopg2://user@host:5432/mlflow_auth (required)
#   PGPASSWORD             the database password (or a ~/.pgpass / PGPASSFILE file); keep it out of the
#                          URLs. The backend URI reaches `mlflow server` through its environment
#                          (MLFLOW_BACKEND_STORE_URI), never its command line, which `ps` shows to everyone.
#   MLFLOW_ADMIN_USER      admin user created on first start (default: admin)
#   MLFLOW_ADMIN_PASSWORD  its password (required)
#   MLFLOW_FLASK_SERVER_SECRET_KEY  CSRF secret of the auth app (random per start if unset)
#   MLFLOW_ARTIFACTS_DIR   where served artifacts are stored (default: /mlartifacts)
#   MLFLOW_HOST / MLFLOW_PORT  bind address (default 127.0.0.1:5000; the compose file sets 0.0.0.0
#                          inside the container and publishes the port on the host's 127.0.0.1 only)
#   MLFLOW_PUBLISH_PORT    the port browsers use (the host port compose publishes; default MLFLOW_PORT)
#   MLFLOW_ALLOWED_HOSTS   Host headers accepted (default: localhost, 127.0.0.1 and mlflow, on MLFLOW_PORT
#                          and on MLFLOW_PUBLISH_PORT)
#   MLFLOW_CORS_ORIGINS    origins allowed to send changes from a browser (default: http://localhost and
#                          http://127.0.0.1 on MLFLOW_PUBLISH_PORT)
# Refuses to start while a password is still the `change-me` example of docker/.env.example.
set -euo pipefail
for var in PGPASSWORD MLFLOW_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY; do
    if [[ "${!var:-}" == change-me* ]]; then
        echo "mlflow-server.sh: $var is still the example value from docker/.env.example; set a real one in docker/.env" >&2
        exit 2
    fi
done
: "${MLFLOW_BACKEND_URI:?set MLFLOW_BACKEND_URI}"
: "${MLFLOW_AUTH_DB_URI:?set MLFLOW_AUTH_DB_URI}"
: "${MLFLOW_ADMIN_PASSWORD:?set MLFLOW_ADMIN_PASSWORD}"
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
public="${MLFLOW_PUBLISH_PORT:-$port}"
artifacts="${MLFLOW_ARTIFACTS_DIR:-/mlartifacts}"
allowed="localhost,localhost:$port,127.0.0.1,127.0.0.1:$port,mlflow,mlflow:$port"
[[ "$public" != "$port" ]] && allowed+=",localhost:$public,127.0.0.1:$public"
allowed="${MLFLOW_ALLOWED_HOSTS:-$allowed}"
origins="${MLFLOW_CORS_ORIGINS:-http://localhost:$public,http://127.0.0.1:$public}"
if [[ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]]; then
    echo "warning: MLFLOW_FLASK_SERVER_SECRET_KEY is not set; using a random key (sessions end at restart)" >&2
    MLFLOW_FLASK_SERVER_SECRET_KEY="$(python -c 'import secrets; print(secrets.token_hex(32))')"
fi
export MLFLOW_FLASK_SERVER_SECRET_KEY
# `mlflow server` reads --backend-store-uri from this variable: a password in the URL stays off argv.
export MLFLOW_BACKEND_STORE_URI="$MLFLOW_BACKEND_URI"
conf_dir="$(mktemp -d)"
trap 'rm -rf "$conf_dir"' EXIT
umask 077
cat > "$conf_dir/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = ${MLFLOW_AUTH_DB_URI}
admin_username = ${MLFLOW_ADMIN_USER:-admin}
admin_password = ${MLFLOW_ADMIN_PASSWORD}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$conf_dir/basic_auth.ini"
mkdir -p "$artifacts"
exec mlflow server \
    --app-name basic-auth \
    --serve-artifacts --artifacts-destination "$artifacts" \
    --host "$host" --port "$port" \
    --allowed-hosts "$allowed" \
    --cors-allowed-origins "$origins"
