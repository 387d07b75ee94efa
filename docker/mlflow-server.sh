#!/bin/sh
# The tracking server of compose.yaml: PostgreSQL backend store, S3 (MinIO) artifact store proxied
# through the server, basic auth. Secrets are read from files (docker secrets), so none of them
# is in compose.yaml, in a database URI or on a command line that `ps` shows.
set -eu
secrets="${SECRETS_DIR:-/run/secrets}"
database="mlflow@${POSTGRES_HOST:-postgres}:${POSTGRES_PORT:-5432}"

# libpq takes the password from PGPASSWORD, so both database URIs below carry none.
PGPASSWORD="$(cat "$secrets/postgres_password")"
AWS_ACCESS_KEY_ID="$(cat "$secrets/minio_user")"
AWS_SECRET_ACCESS_KEY="$(cat "$secrets/minio_password")"
MLFLOW_AUTH_ADMIN_PASSWORD="$(cat "$secrets/mlflow_admin_password")"
MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$secrets/flask_secret_key")"
export PGPASSWORD AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY

# EDIT by default: team members log runs into each other's experiments; deleting and granting
# permissions stays with an experiment's or model's creator (MANAGE) and the admin.
# The password cache spares a PBKDF2 hash per request (seconds per training run).
MLFLOW_AUTH_CONFIG_PATH="$(mktemp)"
export MLFLOW_AUTH_CONFIG_PATH
cat >"$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = ${MLFLOW_DEFAULT_PERMISSION:-EDIT}
database_uri = postgresql://$database/mlflow_auth
admin_username = admin
auth_cache_ttl_seconds = 60
INI

exec mlflow server --backend-store-uri "postgresql://$database/mlflow" \
    --artifacts-destination "s3://${MLFLOW_BUCKET:-mlflow}/" --app-name basic-auth \
    --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" --workers "${MLFLOW_WORKERS:-2}"
