#!/bin/sh
# Secrets arrive as files (compose `secrets:`, Kubernetes secret volumes). The code reads a
# few of them from environment variables (through dagster.EnvVar): for each NAME in the
# list below, NAME_FILE names the file and NAME is exported with its content, in this
# process tree only. Settings that are already file paths (BACKUP_PIPELINE_ORG_SECRET_FILE,
# BACKUP_PIPELINE_DRIVE_CREDENTIALS_FILE, ...) are left alone: their secret never enters
# the environment.
set -eu

for name in \
    BACKUP_PIPELINE_APP_DATABASE_PASSWORD \
    BACKUP_PIPELINE_S3_ACCESS_KEY \
    BACKUP_PIPELINE_S3_SECRET_KEY \
    DAGSTER_PG_PASSWORD \
    DAGSTER_CELERY_BROKER_URL; do
    file_var="${name}_FILE"
    eval "file=\${${file_var}:-}"
    eval "direct=\${${name}:-}"
    if [ -n "$file" ]; then
        if [ -n "$direct" ]; then
            echo "docker-entrypoint: both $name and $file_var are set; set only one" >&2
            exit 2
        fi
        if [ ! -r "$file" ]; then
            echo "docker-entrypoint: $file_var points at $file, which is not a readable file" >&2
            exit 2
        fi
        # Trailing newlines of the file are dropped by $(...), as secret files often end in one.
        value="$(cat "$file")"
        export "$name=$value"
        unset "$file_var"
    fi
done

exec "$@"
