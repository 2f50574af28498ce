"""``storage_health_job``: checks that the app's PostgreSQL and S3 are reachable and usable.

Read-only (it takes no data lock and no exclusive tag); an unreachable store fails its step with
one line and its code, no stack trace (``ops/step_errors.py``); operators run it after changing
settings, and the end-to-end test uses it as a real job that needs no destination.
"""

import dagster as dg

from backup_pipeline.ops.step_errors import quiet_failure
from backup_pipeline.resources import PostgresResource, S3Resource
from backup_pipeline.resources.postgres import PgToolsError, PostgresUnavailable
from backup_pipeline.resources.s3 import S3Unavailable
from backup_pipeline.services.backup_parts import BackupError, ErrorCode
from backup_pipeline.services.health import check_postgres, check_s3


class HealthConfig(dg.Config):
    schema_version_query: str = "SELECT max(version) FROM schema_migrations"


@dg.op(description="Connect to the app database; check pg_dump/pg_restore against the server version.")
def check_app_database(
    context: dg.OpExecutionContext, config: HealthConfig, app_db: PostgresResource
) -> dict:
    try:
        health = check_postgres(app_db, config.schema_version_query)
    except PostgresUnavailable as exc:
        raise quiet_failure(str(exc), ErrorCode.DATABASE_UNREACHABLE) from None
    except PgToolsError as exc:
        raise quiet_failure(str(exc), ErrorCode.PG_TOOLS_UNUSABLE) from None
    except BackupError as exc:  # the schema-version query is broken (a backup would fail on it)
        raise quiet_failure(exc.message, exc.code) from None
    context.log.info(health.summary())
    if health.schema_version_note:
        context.log.warning(health.schema_version_note)
    context.add_output_metadata(health.as_metadata())
    return {"endpoint": health.endpoint, "server_version": health.server_version}


@dg.op(description="List the buckets the S3 credentials can see.")
def check_object_storage(context: dg.OpExecutionContext, s3: S3Resource) -> dict:
    try:
        health = check_s3(s3)
    except S3Unavailable as exc:
        raise quiet_failure(str(exc), ErrorCode.S3_UNREACHABLE) from None
    context.log.info(health.summary())
    context.add_output_metadata(health.as_metadata())
    return {"endpoint": health.endpoint, "bucket_count": health.bucket_count}


@dg.job(
    description="Check that the application's PostgreSQL (and pg_dump/pg_restore) and S3 storage are "
    "reachable with the configured settings. Read-only.",
    tags={"backup_pipeline/kind": "health"},
)
def storage_health_job() -> None:
    check_app_database()
    check_object_storage()
