#!/usr/bin/env bash
# Start an MLflow tracking server: PostgreSQL backend, served artifacts, basic authentication.
# Environment:
#   MLFLOW_BACKEND_URI     postgresql://user:pass@host:5432/mlflow   (required)
#   MLFLOW_AUTH_DB_URI     postgresql://user:pass@host:5432/mlflow_auth (required)
#   MLFLOW_ADMIN_USER      admin user created on first start (default: admin)
#   MLFLOW_ADMIN_PASSWORD  its password (required)
#   MLFLOW_FLASK_SERVER_SECRET_KEY  CSRF secret of the auth app (random per start if unset)
#   MLFLOW_ARTIFACTS_DIR   where served artifacts are stored (default: /mlartifacts)
#   MLFLOW_HOST / MLFLOW_PORT  bind address (default 127.0.0.1:5000; the compose file sets 0.0.0.0
#                          inside the container and publishes the port on the host's 127.0.0.1 only)
#   MLFLOW_ALLOWED_HOSTS   Host headers accepted (default: localhost,127.0.0.1,mlflow and their :PORT)
set -euo pipefail
: "${MLFLOW_BACKEND_URI:?set MLFLOW_BACKEND_URI}"
: "${MLFLOW_AUTH_DB_URI:?set MLFLOW_AUTH_DB_URI}"
: "${MLFLOW_ADMIN_PASSWORD:?set MLFLOW_ADMIN_PASSWORD}"
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
artifacts="${MLFLOW_ARTIFACTS_DIR:-/mlartifacts}"
allowed="${MLFLOW_ALLOWED_HOSTS:-localhost,localhost:$port,127.0.0.1,127.0.0.1:$port,mlflow,mlflow:$port}"
if [[ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]]; then
    echo "warning: MLFLOW_FLASK_SERVER_SECRET_KEY is not set; using a random key (sessions end at restart)" >&2
    MLFLOW_FLASK_SERVER_SECRET_KEY="$(python -c 'import secrets; print(secrets.token_hex(32))')"
fi
export MLFLOW_FLASK_SERVER_SECRET_KEY
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
    --backend-store-uri "$MLFLOW_BACKEND_URI" \
    --serve-artifacts --artifacts-destination "$artifacts" \
    --host "$host" --port "$port" \
    --allowed-hosts "$allowed"
