"""The whole restore procedure in one call (the disaster-recovery CLI; the job runs it as steps)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
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
    install_restored_database,
    plan_database,
    restore_into_scratch,
    server_version,
    verify_database_part,
)
from backup_pipeline.services.restore.dump_info import DatabaseFacts
from backup_pipeline.services.restore.report import consistency_report
from backup_pipeline.services.restore.scratch import (
    RESTORE,
    check_or_note,
    check_privileges,
    check_roles,
    claim_scratch,
    cleanup_leftovers,
    database_exists,
    drop_database,
    process_token,
    scratch_name,
)
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
    """Resolve → confirm → check → verify every needed part → (safety backup) → database into a
    scratch database → buckets → swap the database in → report.

    Nothing is changed before every needed part verified and the roles and privileges the
    database restore needs were checked (a dry run lists what would be refused in
    ``would_refuse`` instead). ``safety_backup`` is called with the target before a
    non-empty database is replaced; without one, such a restore is refused unless
    ``options.keep_previous_database`` keeps the replaced database on the server. The target
    database changes only at the end, in one swap: a failure before leaves it as it was and
    drops the scratch database (a killed process leaves it to the next run's cleanup).
    """
    resolved = resolve_backup(destination, keys, options.backup_id, installation_id=installation_id)
    check_confirmation(options, resolved.backup_id)
    parts = needed_parts(resolved, options)
    would_refuse: list[str] = []  # dry run: the refusals a real run would make
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
        check_or_note(options.dry_run, would_refuse, check_privileges, pg_target)
    if options.restores_files and s3_client is None:
        raise RestoreRefused(
            "buckets: no S3 client: set BACKUP_PIPELINE_S3_ENDPOINT, BACKUP_PIPELINE_S3_ACCESS_KEY and "
            "BACKUP_PIPELINE_S3_SECRET_KEY (or restore --scope database)"
        )
    report: dict[str, Any] = {
        "backup_id": resolved.backup_id,
        "dry_run": options.dry_run,
        "verified": [],
        "would_refuse": would_refuse,
    }
    facts = DatabaseFacts()
    for name in parts:
        log(f"verifying {name} …")
        if name == PART_DATABASE:
            assert pg_target is not None and pg_restore is not None
            verified, facts = verify_database_part(destination, keys, resolved, pg_restore=pg_restore)
            report["verified"].append(verified)
            check_or_note(options.dry_run, would_refuse, check_roles, pg_target, facts, options.ownership)
        else:
            report["verified"].append(verify_part(destination, keys, resolved, name))
    with ExitStack() as held:
        scratch: str | None = None
        token = process_token()
        if options.restores_database:
            assert pg_target is not None and pg_restore is not None
            dump = open_part(destination, keys, resolved, PART_DATABASE)  # lazy: nothing read yet
            if options.dry_run:
                report["database"] = plan_database(
                    dump, pg_target, pg_restore=pg_restore, expected_rows=resolved.table_rows()
                )
            else:
                leftovers = cleanup_leftovers(pg_target)
                if leftovers.dropped:
                    log(f"dropped scratch databases of killed runs: {', '.join(leftovers.dropped)}")
                _safety_backup(pg_target, options, safety_backup, report, log)
                scratch = scratch_name(RESTORE, token)
                # Claimed for the whole run (buckets included), dropped on any failure before the swap.
                held.enter_context(claim_scratch(pg_target, scratch))
                held.callback(_drop_unless_swapped, pg_target, scratch)
                log(f"restoring the database into scratch database {scratch} …")
                report["database"] = restore_into_scratch(
                    dump,
                    pg_target,
                    scratch,
                    pg_restore=pg_restore,
                    ownership=options.ownership,
                    schema_only=options.schema_only,
                    expected_rows=resolved.table_rows(),
                )
        report["buckets"] = _buckets(destination, keys, resolved, parts, options, s3_client, log)
        if scratch is not None:
            assert pg_target is not None and pg_restore is not None
            log(f"swapping the restored database in as {pg_target.dbname} …")
            database = report["database"]
            swapped = install_restored_database(
                pg_target,
                database,
                token=token,
                pg_dump=pg_restore.parent / "pg_dump",
                options=options,
                claimed=True,
            )
            database.pop("source_database")
            database.update(swapped)
    if (
        options.scope is RestoreScope.FULL
        and not options.dry_run
        and not options.schema_only
        and pg_target is not None
        and s3_client is not None
    ):
        report["consistency"] = consistency_report(
            pg_target.conninfo(), s3_client, list(report["buckets"]), query=consistency_query
        )
    return report


def _drop_unless_swapped(target: PgTarget, scratch: str) -> None:
    """At the end of the run: after the swap the name is gone; after a failure before it, the
    scratch database is this run's own and nothing else."""
    if database_exists(target, scratch):
        drop_database(target, scratch)


def _safety_backup(
    target: PgTarget,
    options: RestoreOptions,
    safety_backup: Callable[[PgTarget], str] | None,
    report: dict[str, Any],
    log: Callable[[str], None],
) -> None:
    if not database_has_tables(target):
        return
    if safety_backup is None:
        if options.keep_previous_database:
            return  # the replaced database stays on the server as bp_replaced_<token>
        raise RestoreRefused(
            f"target database {target.dbname!r} is not empty and no safety backup can be made "
            "(no org secret): restore into a new database (--target-database), keep the current one "
            "on the server (--keep-previous-database), or pass --skip-safety-backup to replace it without one"
        )
    report["safety_backup_id"] = safety_backup(target)
    log(f"safety backup {report['safety_backup_id']} made")


def _buckets(
    destination: Destination,
    keys: RestoreKeys,
    resolved: Any,
    parts: list[str],
    options: RestoreOptions,
    s3_client: Minio | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
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
    return buckets
