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
    bucket_of_part,
)
from backup_pipeline.services.restore.buckets import plan_bucket, restore_bucket
from backup_pipeline.services.restore.common import (
    DEFAULT_CONSISTENCY_QUERY,
    RestoreError,
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
from backup_pipeline.services.restore.incremental import bucket_source
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
from backup_pipeline.services.restore.undo_journal import (
    RunJournal,
    UndoError,
    pending_journals,
    recover_journals,
)


class RestoreRolledBack(RestoreError):
    """A real restore failed after it changed buckets; they were put back as they were."""


def recover_before_restore(
    state_dir: Path | None,
    s3_client: Minio | None,
    *,
    dry_run: bool,
    run_finished: Callable[[str], bool | None] | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> list[dict[str, Any]]:
    """First thing of a restore: the undo journals of killed restores are rolled back (or their
    commit finished). A dry run changes nothing: it only names them."""
    if state_dir is None:
        return []
    pending = pending_journals(state_dir)
    if not pending:
        return []
    if dry_run:
        for path in pending:
            log(f"an interrupted restore left the undo journal {path}: a real restore rolls it back first")
        return [{"pending": str(path)} for path in pending]
    if s3_client is None:
        raise RestoreRefused(
            f"an interrupted restore left undo journals ({', '.join(str(p) for p in pending)}): rolling them "
            "back needs S3 (set BACKUP_PIPELINE_S3_ENDPOINT, BACKUP_PIPELINE_S3_ACCESS_KEY, BACKUP_PIPELINE_S3_SECRET_KEY)"
        )
    done, left = recover_journals(state_dir, s3_client, run_finished=run_finished)
    for item in done:
        log(item.message())
    for note in left:
        log(f"undo journal left alone: {note}")
    return [item.as_dict() for item in done]


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
    state_dir: Path | None = None,
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

    Buckets are all-or-nothing too: with ``state_dir`` every change is journaled first
    (``undo_journal``); any failure up to and including the swap rolls the buckets back
    (``RestoreRolledBack``), and before anything else a real run rolls back what killed
    restores left (``recover_before_restore``). Without ``state_dir`` a failed bucket restore
    leaves what it wrote.
    """
    recovered = recover_before_restore(state_dir, s3_client, dry_run=options.dry_run, log=log)
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
    if recovered:
        report["recovered_undo_journals"] = recovered
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
    token = process_token()
    journal = RunJournal(state_dir, token) if state_dir is not None and not options.dry_run else None
    if journal is not None and options.restores_files:
        journal.hold()  # released when this process ends: a free lock proves it gone
    try:
        _restore(
            destination,
            keys,
            options,
            resolved,
            parts,
            report,
            token,
            journal,
            pg_target=pg_target,
            pg_restore=pg_restore,
            s3_client=s3_client,
            safety_backup=safety_backup,
            log=log,
        )
    except BaseException as exc:
        if journal is not None and s3_client is not None and journal.exists():
            _roll_back(journal, s3_client, exc, log)
        raise
    finally:
        if journal is not None:
            journal.release()
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


def _roll_back(journal: RunJournal, client: Minio, exc: BaseException, log: Callable[[str], None]) -> None:
    """The run failed after it may have changed buckets: undo them, and say so in the error."""
    try:
        undone = journal.rollback(client)
    except UndoError as undo:
        log(str(undo))
        raise UndoError(f"{exc}; the buckets could not be rolled back yet: {undo}") from exc
    log(undone.message())
    if isinstance(exc, RestoreError):
        raise RestoreRolledBack(f"{exc}; {undone.message()}") from exc


def _restore(
    destination: Destination,
    keys: RestoreKeys,
    options: RestoreOptions,
    resolved: Any,
    parts: list[str],
    report: dict[str, Any],
    token: str,
    journal: RunJournal | None,
    *,
    pg_target: PgTarget | None,
    pg_restore: Path | None,
    s3_client: Minio | None,
    safety_backup: Callable[[PgTarget], str] | None,
    log: Callable[[str], None],
) -> None:
    """Database into scratch → buckets (journaled) → swap → commit the bucket journal."""
    with ExitStack() as held:
        scratch: str | None = None
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
        report["buckets"] = _buckets(destination, keys, resolved, parts, options, s3_client, log, journal)
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
    if journal is not None and s3_client is not None and journal.exists():
        # Success recorded (COMMITTED) before the undo copies go: a crash now never rolls back.
        try:
            report["undo"] = journal.commit(s3_client).as_dict()
        except UndoError as exc:
            log(str(exc))
            report["undo"] = {"committed": True, "cleanup": str(exc)}
    unrestorable = sum(b.get("failed", 0) + b.get("inexact", 0) for b in report["buckets"].values())
    if unrestorable and not options.dry_run:
        report["warnings"] = [
            f"{unrestorable} objects could not be restored exactly (on_unrestorable=continue): "
            "see unrestorable per bucket"
        ]


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
    journal: RunJournal | None = None,
) -> dict[str, Any]:
    buckets: dict[str, Any] = {}
    # The database, a format-2 set's inventories and older parts are not buckets (read per
    # bucket); a sharded bucket's shards (format 3) are one bucket, restored once.
    wanted = [bucket_of_part(name) for name in parts if name.startswith(BUCKET_PART_PREFIX)]
    for bucket in dict.fromkeys(wanted):
        assert s3_client is not None
        source = bucket_source(destination, keys, resolved, bucket)
        if options.dry_run:
            buckets[bucket] = plan_bucket(
                s3_client, bucket, source.planned(), options.conflict_policy, options.key_prefix
            )
            continue
        log(f"restoring bucket {bucket} …")
        with ExitStack() as held:
            bucket_journal = held.enter_context(journal.open_bucket(s3_client, bucket)) if journal else None
            summary = restore_bucket(
                s3_client,
                bucket,
                source.entries,
                source.inventory,
                options.conflict_policy,
                resolved.backup_id,
                key_prefix=options.key_prefix,
                journal=bucket_journal,
                on_unrestorable=options.on_unrestorable,
                report_unrestorable=lambda line: log(f"not restored exactly: {line}"),
            )
        buckets[bucket] = summary.as_dict()
    return buckets
