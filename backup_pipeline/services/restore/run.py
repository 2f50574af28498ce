"""The whole restore procedure in one call (the disaster-recovery CLI; the job runs it as steps)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from minio import Minio

from backup_pipeline.destinations.base import Destination
from backup_pipeline.services.backup_parts import (
    BUCKET_PART_PREFIX,
    PART_DATABASE,
)
from backup_pipeline.services.restore.buckets import bucket_entries, plan_bucket, restore_bucket
from backup_pipeline.services.restore.common import (
    DEFAULT_CONSISTENCY_QUERY,
    RestoreOptions,
    RestoreRefused,
    RestoreScope,
    check_confirmation,
)
from backup_pipeline.services.restore.database import (
    PgTarget,
    check_restore_versions,
    database_has_tables,
    ensure_database,
    plan_database,
    restore_database,
    server_version,
)
from backup_pipeline.services.restore.report import consistency_report
from backup_pipeline.services.restore.sets import (
    RestoreKeys,
    needed_parts,
    open_part,
    resolve_backup,
    verify_part,
)


def run_restore(
    destination: Destination,
    keys: RestoreKeys,
    options: RestoreOptions,
    *,
    pg_target: PgTarget | None,
    pg_restore: Path | None,
    s3_client: Minio | None,
    installation_id: str | None = None,
    consistency_query: str = DEFAULT_CONSISTENCY_QUERY,
    safety_backup: Callable[[PgTarget], str] | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Resolve → confirm → verify every needed part → (safety backup) → database → buckets → report.

    Nothing is changed before every needed part verified. ``safety_backup`` is called with the
    target before a non-empty database is replaced; without one, such a restore is refused.
    """
    resolved = resolve_backup(destination, keys, options.backup_id, installation_id=installation_id)
    check_confirmation(options, resolved.backup_id)
    parts = needed_parts(resolved, options)
    if options.restores_database:
        if pg_target is None or pg_restore is None:
            raise RestoreRefused(
                "target database: no PostgreSQL configured (BACKUP_PIPELINE_APP_DATABASE_URL)"
            )
        from backup_pipeline.resources.postgres import tool_version

        check_restore_versions(
            tool_version(pg_restore),
            resolved.versions().get("pg_dump"),
            resolved.versions().get("pg_server"),
            server_version(pg_target),
        )
    if options.restores_files and s3_client is None:
        raise RestoreRefused(
            "buckets: no S3 client: set BACKUP_PIPELINE_S3_ENDPOINT, BACKUP_PIPELINE_S3_ACCESS_KEY and "
            "BACKUP_PIPELINE_S3_SECRET_KEY (or restore --scope database)"
        )
    report: dict[str, Any] = {"backup_id": resolved.backup_id, "dry_run": options.dry_run, "verified": []}
    for name in parts:
        log(f"verifying {name} …")
        report["verified"].append(verify_part(destination, keys, resolved, name))
    if options.restores_database:
        assert pg_target is not None and pg_restore is not None
        dump = open_part(destination, keys, resolved, PART_DATABASE)  # lazy: nothing read yet
        if options.dry_run:
            report["database"] = plan_database(dump, pg_target, pg_restore=pg_restore)
        else:
            if database_has_tables(pg_target):
                if safety_backup is None:
                    raise RestoreRefused(
                        f"target database {pg_target.dbname!r} is not empty and no safety backup can be made "
                        "(no org secret): restore into a new database (--target-database) or pass "
                        "--skip-safety-backup to replace it without one"
                    )
                report["safety_backup_id"] = safety_backup(pg_target)
                log(f"safety backup {report['safety_backup_id']} made")
            ensure_database(pg_target)
            log(f"restoring the database into {pg_target.dbname} …")
            report["database"] = restore_database(
                dump, pg_target, pg_restore=pg_restore, schema_only=options.schema_only
            )
    buckets: dict[str, Any] = {}
    for name in parts:
        if name == PART_DATABASE:
            continue
        assert s3_client is not None
        bucket = name.removeprefix(BUCKET_PART_PREFIX)
        inventory = resolved.inventory(bucket)
        if options.dry_run:
            buckets[bucket] = plan_bucket(
                s3_client, bucket, inventory.values(), options.conflict_policy, options.key_prefix
            )
            continue
        log(f"restoring bucket {bucket} …")
        summary = restore_bucket(
            s3_client,
            bucket,
            bucket_entries(open_part(destination, keys, resolved, name)),
            inventory,
            options.conflict_policy,
            resolved.backup_id,
            key_prefix=options.key_prefix,
        )
        buckets[bucket] = summary.as_dict()
    report["buckets"] = buckets
    if (
        options.scope is RestoreScope.FULL
        and not options.dry_run
        and not options.schema_only
        and pg_target is not None
        and s3_client is not None
    ):
        report["consistency"] = consistency_report(
            pg_target.conninfo(), s3_client, list(buckets), query=consistency_query
        )
    return report
