"""The restore job: thin ops over ``backup_pipeline.services.restore``.

Graph (one restore = one run)::

    start_restore ─► verify_restore_parts ─► safety_backup ─► restore_database_step ─┐
                                                                                     ├─► fan_out_buckets ─► restore_bucket_step[<bucket>] ─► finish_restore
                                                                                     ┘

* ``restore_to_moment`` (``ops/restore_moment.py``) runs first: given a ``target_time``, PITR into
  a new data directory and every step below is skipped; without one it does nothing.
* ``start_restore`` checks the request (confirmation phrase naming the backup, buckets,
  versions, the database role's privileges) and resolves ``latest`` (the newest complete
  regular set, never a safety set); a bad request fails here (``[RESTORE_REFUSED]``). A real
  run then drops the scratch databases of killed runs it can prove dead.
* ``verify_restore_parts`` streams every needed part once, authenticating each chunk and
  comparing both SHA-256 with the manifest, BEFORE anything is touched (we stream twice
  rather than stage: no plaintext on disk, no staging space; see the service docstring). It
  reads the dump's table of contents on the way and refuses when roles it needs are missing.
* ``safety_backup`` makes a database-only backup set of the current target database (the
  backup job's functions, manifest last), labelled a safety set (``setKind=safety``,
  ``trigger=pre-restore``): never ``latest``, not counted by retention's keep-last-N.
* ``restore_database_step`` restores into the scratch database ``bp_restore_<run id>`` and
  checks every table's rows against the manifest; the target is not touched. The dry run
  instead reports tables and row counts in the backup against the database now.
* ``restore_bucket_step``: one step per bucket (dynamic), with added / overwritten /
  skipped / kept_both / failed as metadata; the dry run predicts the same numbers.
* ``finish_restore``: swaps the scratch database in (one transaction; the replaced database is
  dropped unless kept on request), consistency report (full restores), audit, outcome tags.

Every expected failure (a refusal, a damaged set, the destination, S3 or the database
unreachable, the data lease busy) fails its step with ``[CODE] message`` and no stack trace in
the run view (``ops/step_errors.py``); an unexpected exception keeps its trace.

A failed step drops the run's scratch database (hook ``drop_restore_scratch_on_failure``): the
target database changes only in ``finish_restore``, so a failure anywhere leaves it as it was.

A real restore holds the run-level data lease (``ops/data_lease.py``) from ``start_restore``
(after the request checks) to ``finish_restore``; a dry run touches nothing and takes none.
"""

import getpass
import json
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict
from typing import Any

import dagster as dg
import psycopg

from backup_pipeline.archive.errors import ArchiveError
from backup_pipeline.concurrency import EXCLUSIVE_RUN_TAGS
from backup_pipeline.destinations.base import DestinationError
from backup_pipeline.ops.backup import BACKUP_SET_ASSET
from backup_pipeline.ops.data_lease import (
    acquire_run_data_lease,
    holder_finished,
    release_data_lease_on_failure,
    release_run_data_lease,
    run_data_lease,
)
from backup_pipeline.ops.restore_config import (
    RESTORE_BUCKET_FAILED,
    RESTORE_DATABASE_FAILED,
    RESTORE_REFUSED,
    RESTORE_VERIFY_FAILED,
    TAG_DRY_RUN,
    TAG_LAUNCHED_BY,
    TAG_OUTCOME,
    TAG_PREFIX,
    TAG_RESTORE_OF,
    TAG_SAFETY_BACKUP,
    RestoreConfig,
    options_from_plan,
)
from backup_pipeline.ops.restore_moment import restore_to_moment
from backup_pipeline.ops.restore_safety import make_safety_backup
from backup_pipeline.ops.restore_undo import (
    commit_buckets,
    journaled_bucket,
    recover_at_start,
    roll_back_buckets_on_failure,
)
from backup_pipeline.ops.step_errors import quiet_failure
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.resources.postgres import (
    DataLockBusy,
    PgToolsError,
    PostgresResource,
    PostgresUnavailable,
)
from backup_pipeline.resources.s3 import S3Resource, S3Unavailable
from backup_pipeline.services import restore as svc
from backup_pipeline.services.backup_parts import (
    BUCKET_PART_PREFIX,
    TRIGGER_PRE_RESTORE,
    BackupError,
    ErrorCode,
    bucket_of_part,
    mapping_key,
)
from backup_pipeline.services.backup_upload import destination_error_code
from backup_pipeline.services.download_estimate import restore_download_note
from backup_pipeline.services.errors import first_line


def _fail(context: dg.OpExecutionContext, message: str, code: str, **details: Any) -> Exception:
    """An expected failure of this step: one line, no stack trace; ``details`` (counts) go to the log."""
    shown = {k: v for k, v in details.items() if v is not None}
    if shown:
        context.log.error(f"[{code}] details: {json.dumps(shown, default=str, sort_keys=True)}")
    return quiet_failure(message, code)


#: Failures of what a restore depends on (destination, S3, database, pg tools, the data lease, the
#: safety backup): expected, reported in one line with their code.
_UNAVAILABLE = (DestinationError, S3Unavailable, PostgresUnavailable, PgToolsError, DataLockBusy, BackupError)


def _unavailable(context: dg.OpExecutionContext, exc: BaseException) -> Exception:
    if isinstance(exc, DestinationError):
        code = destination_error_code(exc)
    elif isinstance(exc, BackupError):
        code = exc.code
    elif isinstance(exc, S3Unavailable):
        code = ErrorCode.S3_UNREACHABLE
    elif isinstance(exc, PostgresUnavailable):
        code = ErrorCode.DATABASE_UNREACHABLE
    elif isinstance(exc, DataLockBusy):
        code = ErrorCode.LOCKED
    else:
        code = ErrorCode.PG_TOOLS_UNUSABLE
    return _fail(context, exc.message if isinstance(exc, BackupError) else str(exc), code)


@contextmanager
def _expected_errors(context: dg.OpExecutionContext) -> Iterator[None]:
    try:
        yield
    except _UNAVAILABLE as exc:
        raise _unavailable(context, exc) from None


def _keys(keys: Any) -> svc.RestoreKeys:
    """The org keyring from the keys resource; secrets are read from their file, never config."""
    keyring = keys.org_keyring() if hasattr(keys, "org_keyring") else keys.keyring()
    return svc.RestoreKeys(org_keyring=keyring)


def _launched_by(context: dg.OpExecutionContext) -> str:
    tags = context.run.tags
    for key in (TAG_LAUNCHED_BY, "dagster/user", "user"):
        if tags.get(key):
            return str(tags[key])
    if tags.get("dagster/schedule_name"):
        return f"schedule {tags['dagster/schedule_name']}"
    if tags.get("dagster/sensor_name"):
        return f"sensor {tags['dagster/sensor_name']}"
    try:
        return f"{getpass.getuser()} (run worker)"
    except (KeyError, OSError):
        return f"uid {os.getuid()} (run worker)"


def _target_db(app_db: PostgresResource, options: svc.RestoreOptions) -> svc.PgTarget:
    return svc.PgTarget.from_url(
        app_db.database_url, dbname=options.target_database or app_db.database_name, password=app_db.password
    )


def _source(destination: DestinationResource, plan: dict[str, Any]) -> DestinationResource:
    """The destination the backup is read from: the one the request named, else the primary."""
    return destination.named(plan.get("source_destination") or "")


def _resolve(destination: DestinationResource, keys: Any, plan: dict[str, Any]) -> svc.ResolvedBackup:
    return svc.resolve_backup(
        _source(destination, plan).get_destination(),
        _keys(keys),
        plan["backup_id"],
        installation_id=plan["installation_id"],
    )


@dg.op(
    ins={"backup_set": dg.In(dg.Nothing)},  # skipped when restore_to_moment took a target_time
    description="Checks the request (confirmation phrase, buckets, pg_restore and server versions) and resolves `latest`.",
)
def start_restore(
    context: dg.OpExecutionContext,
    config: RestoreConfig,
    app_db: PostgresResource,
    destination: DestinationResource,
    keys: BackupKeysResource,
    s3: S3Resource,
) -> dict[str, Any]:
    options = config.options()
    try:
        source = destination.named(config.destination.strip())
    except ValueError as exc:
        raise _fail(context, str(exc), RESTORE_REFUSED) from None
    try:
        resolved = svc.resolve_backup(
            source.get_destination(),
            _keys(keys),
            options.backup_id,
            installation_id=destination.installation_id,
        )
        svc.check_confirmation(options, resolved.backup_id)
        parts = svc.needed_parts(resolved, options)
        download_note = restore_download_note(source.get_destination(), resolved, parts)
        if download_note:  # Drive's ~1 TB/day download threshold: warned, never refused
            context.log.warning(download_note)
        versions: dict[str, str] = {}
        would_refuse: list[str] = []  # dry run: the refusals a real run would make
        if options.restores_database:
            tools = app_db.pg_tools(check_server=False)
            target = _target_db(app_db, options)
            versions = svc.check_restore_versions(
                tools.pg_restore.version,
                resolved.versions().get("pg_dump"),
                resolved.versions().get("pg_server"),
                svc.server_version(target),
            )
            svc.check_or_note(options.dry_run, would_refuse, svc.check_privileges, target)
    except (svc.RestoreRefused, ArchiveError) as exc:
        raise _fail(context, str(exc), RESTORE_REFUSED) from None
    except _UNAVAILABLE as exc:
        raise _unavailable(context, exc) from None
    if not options.dry_run:
        acquire_run_data_lease(context, app_db)  # held until finish_restore
    # First act on data (under the lease: no other restore is alive): undo killed restores' buckets.
    with _expected_errors(context):
        try:
            recovered = recover_at_start(context, destination, s3.client(), dry_run=options.dry_run)
        except svc.RestoreError as exc:
            raise _fail(context, str(exc), RESTORE_BUCKET_FAILED) from None
    if not options.dry_run and options.restores_database:
        _cleanup_leftovers(context, _target_db(app_db, options))
    launched_by = _launched_by(context)
    context.instance.add_run_tags(
        context.run_id,
        {
            TAG_RESTORE_OF: resolved.backup_id,
            TAG_DRY_RUN: str(options.dry_run).lower(),
            TAG_LAUNCHED_BY: launched_by,
        },
    )
    plan = {
        "backup_id": resolved.backup_id,
        "source_destination": source.label if config.destination.strip() else "",
        "installation_id": resolved.installation_id,
        "options": {**asdict(options), "confirm": "", "buckets": list(options.buckets)},
        "parts": parts,
        # One restore step per bucket, a sharded bucket's parts read one after the other in it.
        "buckets": list(dict.fromkeys(bucket_of_part(p) for p in parts if p.startswith(BUCKET_PART_PREFIX))),
        "consistency_query": config.consistency_query,
        "launched_by": launched_by,
        "would_refuse": would_refuse,
    }
    context.add_output_metadata(
        {
            "backup_id": resolved.backup_id,
            "dry_run": options.dry_run,
            "scope": options.scope.value,
            "parts": ", ".join(parts),
            "launched_by": launched_by,
            **({"download_warning": download_note} if download_note else {}),
            **{f"version_{k}": v for k, v in versions.items()},
            **({"recovered_undo_journals": dg.MetadataValue.json(recovered)} if recovered else {}),
        }
    )
    return plan


def _cleanup_leftovers(context: dg.OpExecutionContext, target: svc.PgTarget) -> None:
    """Drop scratch databases of killed restores and verifications (provably dead: see ``scratch.py``)."""
    leftovers = svc.cleanup_leftovers(target, run_finished=holder_finished(context.instance))
    if leftovers.dropped:
        context.log.warning(f"dropped scratch databases of killed runs: {', '.join(leftovers.dropped)}")
    if leftovers.unproven or leftovers.failed:
        context.log.warning(
            "scratch databases left alone (their run is unknown to this instance, or the drop failed): "
            + ", ".join(leftovers.unproven + leftovers.failed)
        )
    if leftovers.replaced:
        context.log.info(
            "databases replaced by earlier restores are still on the server (kept on request, or their run "
            f"was killed after its swap; drop them when no longer needed): {', '.join(leftovers.replaced)}"
        )


@dg.op(
    description="Authenticates every needed part end to end against the manifest (AEAD tags, sizes, SHA-256) before anything is touched; checks the roles the dump needs.",
)
def verify_restore_parts(
    context: dg.OpExecutionContext,
    plan: dict[str, Any],
    app_db: PostgresResource,
    destination: DestinationResource,
    keys: BackupKeysResource,
) -> dict[str, Any]:
    dest = _source(destination, plan).get_destination()
    # A real restore keeps its lease fresh while it reads: retention must not delete these parts.
    with _lease_unless_dry_run(context, app_db, plan):
        results, notes = _verify_parts(context, app_db, destination, keys, plan, dest)
    plan = {**plan, "would_refuse": [*plan.get("would_refuse", []), *notes]}
    for note in plan["would_refuse"]:
        context.log.warning(f"a real restore would be refused: {note}")
    context.add_output_metadata(
        {
            "parts_verified": len(results),
            "bytes_verified": sum(r["bytes"] for r in results),
            "parts": dg.MetadataValue.json(results),
            **({"would_refuse": dg.MetadataValue.json(plan["would_refuse"])} if plan["would_refuse"] else {}),
        }
    )
    return plan


def _lease_unless_dry_run(
    context: dg.OpExecutionContext, app_db: PostgresResource, plan: dict[str, Any]
) -> AbstractContextManager[None]:
    return nullcontext() if options_from_plan(plan).dry_run else run_data_lease(context, app_db)


def _verify_parts(
    context: dg.OpExecutionContext,
    app_db: PostgresResource,
    destination: DestinationResource,
    keys: BackupKeysResource,
    plan: dict[str, Any],
    dest: Any,
) -> tuple[list[dict[str, Any]], list[str]]:
    options = options_from_plan(plan)
    notes: list[str] = []
    try:
        resolved = _resolve(destination, keys, plan)
        results = []
        for name in plan["parts"]:
            context.log.info(f"verifying part {name} of backup {plan['backup_id']}")
            if name != svc.PART_DATABASE:
                results.append(svc.verify_part(dest, _keys(keys), resolved, name))
                continue
            pg_restore = app_db.pg_tools(check_server=False).pg_restore.path
            verified, facts = svc.verify_database_part(dest, _keys(keys), resolved, pg_restore=pg_restore)
            results.append(verified)
            target = _target_db(app_db, options)
            try:
                svc.check_or_note(options.dry_run, notes, svc.check_roles, target, facts, options.ownership)
            except svc.RestoreRefused as exc:
                raise _fail(context, str(exc), RESTORE_REFUSED) from None
    except svc.RestoreRefused as exc:
        raise _fail(context, str(exc), RESTORE_VERIFY_FAILED) from None
    except _UNAVAILABLE as exc:
        raise _unavailable(context, exc) from None
    return results, notes


@dg.op(
    description="Backs up the current target database as a safety set (setKind safety, trigger pre-restore) before it is replaced.",
)
def safety_backup(
    context: dg.OpExecutionContext,
    plan: dict[str, Any],
    app_db: PostgresResource,
    destination: DestinationResource,
    keys: BackupKeysResource,
) -> dict[str, Any]:
    options = options_from_plan(plan)
    if options.dry_run or not options.restores_database:
        return {"skipped": True, "reason": "dry run" if options.dry_run else "database not restored"}
    target = _target_db(app_db, options)
    if not svc.database_has_tables(target):
        context.log.info(f"database {target.dbname} is missing or empty: nothing to keep")
        return {"skipped": True, "reason": "target database missing or empty"}
    with _expected_errors(context), run_data_lease(context, app_db):
        entry = make_safety_backup(context, app_db, destination, keys, target.dbname)
    context.instance.add_run_tags(context.run_id, {TAG_SAFETY_BACKUP: entry["backup_id"]})
    context.log_event(
        dg.AssetMaterialization(
            asset_key=BACKUP_SET_ASSET,
            description=f"SAFETY backup (pre-restore) of database {target.dbname}: never `latest`; restore it by id to undo",
            metadata={**_metadata(entry), "trigger": TRIGGER_PRE_RESTORE, "restore_of": plan["backup_id"]},
        )
    )
    context.add_output_metadata({"safety_backup_id": entry["backup_id"], "database": target.dbname})
    return {"skipped": False, "backup_id": entry["backup_id"]}


@dg.op(
    description="Restores the database into the scratch database bp_restore_<run id> and checks every table's rows against the manifest; the target is swapped only by finish_restore (dry run: tables and row counts, backup vs now).",
)
def restore_database_step(
    context: dg.OpExecutionContext,
    plan: dict[str, Any],
    safety: dict[str, Any],
    app_db: PostgresResource,
    destination: DestinationResource,
    keys: BackupKeysResource,
) -> dict[str, Any]:
    options = options_from_plan(plan)
    if not options.restores_database:
        return {"skipped": True}
    target = _target_db(app_db, options)
    try:
        resolved = _resolve(destination, keys, plan)
        pg_restore = app_db.pg_tools(check_server=False).pg_restore.path
        dump = svc.open_part(
            _source(destination, plan).get_destination(), _keys(keys), resolved, svc.PART_DATABASE
        )
        if options.dry_run:
            result = svc.plan_database(
                dump, target, pg_restore=pg_restore, expected_rows=resolved.table_rows()
            )
            context.add_output_metadata(
                {
                    "dry_run": True,
                    "database": target.dbname,
                    "tables": dg.MetadataValue.md(_tables_markdown(result["tables"])),
                }
            )
            return {"dry_run": True, **result}
        scratch = _scratch(context)
        with run_data_lease(context, app_db), svc.claim_scratch(target, scratch):
            context.log.info(
                f"pg_restore into scratch database {scratch} (the target {target.dbname} is not touched)"
            )
            result = svc.restore_into_scratch(
                dump,
                target,
                scratch,
                pg_restore=pg_restore,
                ownership=options.ownership,
                schema_only=options.schema_only,
                expected_rows=resolved.table_rows(),
            )
    except svc.RestoreError as exc:
        raise _fail(context, str(exc), RESTORE_DATABASE_FAILED) from None
    except _UNAVAILABLE as exc:
        raise _unavailable(context, exc) from None
    context.add_output_metadata(
        {
            **_metadata({k: v for k, v in result.items() if k not in ("tables", "source_database")}),
            "tables": dg.MetadataValue.md(_restored_markdown(result["tables"])),
            "safety_backup": safety.get("backup_id"),
        }
    )
    return result


def _scratch(context: dg.OpExecutionContext) -> str:
    """This run's scratch database: ``r<run id>`` proves it is this run's (``scratch.py``)."""
    return svc.scratch_name(svc.RESTORE, svc.run_token(context.run_id))


def _restored_markdown(tables: list[dict[str, Any]]) -> str:
    lines = ["| table | rows restored |", "|---|---:|"]
    lines += [f"| {t['table']} | {t['rows']} |" for t in tables]
    return "\n".join(lines)


def _tables_markdown(tables: list[dict[str, Any]]) -> str:
    lines = ["| table | rows in backup | rows now |", "|---|---:|---:|"]
    for t in tables:
        now = "absent" if t["rows_now"] is None else t["rows_now"]
        lines.append(f"| {t['table']} | {t['rows_in_backup']} | {now} |")
    return "\n".join(lines)


@dg.op(out=dg.DynamicOut(dict), description="One restore step per bucket of the request.")
def fan_out_buckets(
    plan: dict[str, Any], database: dict[str, Any]
) -> Iterator[dg.DynamicOutput[dict[str, Any]]]:
    taken: set[str] = set()
    for bucket in plan["buckets"]:
        yield dg.DynamicOutput({"plan": plan, "bucket": bucket}, mapping_key=mapping_key(bucket, taken))


@dg.op(
    description="Restores one bucket from its part with the conflict policy (dry run: what would be added/overwritten/skipped).",
)
def restore_bucket_step(
    context: dg.OpExecutionContext,
    item: dict[str, Any],
    app_db: PostgresResource,
    s3: S3Resource,
    destination: DestinationResource,
    keys: BackupKeysResource,
) -> dict[str, Any]:
    plan, bucket = item["plan"], item["bucket"]
    options = options_from_plan(plan)
    resolved = _resolve(destination, keys, plan)
    client = s3.client()
    source = svc.bucket_source(_source(destination, plan).get_destination(), _keys(keys), resolved, bucket)
    if options.dry_run:
        try:
            summary = svc.plan_bucket(
                client, bucket, source.planned(), options.conflict_policy, options.key_prefix
            )
        except Exception as exc:
            reason = s3.describe_error(exc, f"planning the restore of bucket {bucket}")
            raise _fail(context, str(reason), ErrorCode.S3_UNREACHABLE) from None
        context.add_output_metadata({"dry_run": True, **_metadata(summary)})
        return {**summary, "dry_run": True}

    last_logged = [0]

    def progress(summary: svc.BucketSummary) -> None:
        done = summary.added + summary.overwritten + summary.skipped + summary.kept_both + summary.failed
        if done - last_logged[0] >= 500:
            last_logged[0] = done
            context.log.info(
                f"{bucket}: {done}/{source.count} objects, {summary.bytes_written} bytes written"
            )

    with _expected_errors(context), run_data_lease(context, app_db):
        details: dict[str, Any] = {}
        try:
            # Every change journaled first; a failure rolls the bucket (and the run's others) back.
            with journaled_bucket(context, destination, client, bucket) as journal:
                try:
                    result = svc.restore_bucket(
                        client,
                        bucket,
                        source.entries,
                        source.inventory,
                        options.conflict_policy,
                        resolved.backup_id,
                        key_prefix=options.key_prefix,
                        on_progress=progress,
                        journal=journal,
                        on_unrestorable=options.on_unrestorable,
                        report_unrestorable=lambda line: context.log.warning(f"not restored exactly: {line}"),
                    )
                except svc.BucketRestoreFailed as exc:
                    details = exc.summary.as_dict()
                    raise
        except svc.RestoreError as exc:
            raise _fail(context, str(exc), RESTORE_BUCKET_FAILED, **details) from None
    summary = result.as_dict()
    context.add_output_metadata(_metadata(summary))
    if result.failed or result.inexact:
        context.log.warning(
            f"bucket {bucket}: {result.failed} objects refused and {result.inexact} served differently by the "
            "target (on_unrestorable=continue): restored without them, each named above"
        )
    return summary


def _metadata(values: dict[str, Any]) -> dict[str, Any]:
    """Event metadata from a small dict: nested dicts and lists as JSON."""
    return {
        key: dg.MetadataValue.json(value) if isinstance(value, (dict, list)) else value
        for key, value in values.items()
    }


@dg.op(
    description="Consistency report (rows pointing to missing objects, unreferenced objects), audit record and outcome tags."
)
def finish_restore(
    context: dg.OpExecutionContext,
    plan: dict[str, Any],
    database: dict[str, Any],
    buckets: list[dict[str, Any]],
    app_db: PostgresResource,
    s3: S3Resource,
    destination: DestinationResource,
) -> dict[str, Any]:
    options = options_from_plan(plan)
    report: dict[str, Any] | None = None
    swapped: dict[str, Any] = {}
    target = _target_db(app_db, options)
    if not options.dry_run and database.get("scratch_database"):
        with _expected_errors(context), run_data_lease(context, app_db):
            swapped = _swap_in(context, app_db, options, database, target)
    if not options.dry_run:
        with _expected_errors(context):
            try:
                commit_buckets(context, destination, s3.client())
            except svc.RestoreError as exc:
                raise _fail(context, str(exc), RESTORE_BUCKET_FAILED) from None
    if options.scope is svc.RestoreScope.FULL and not options.dry_run and not options.schema_only:
        with _expected_errors(context), run_data_lease(context, app_db):
            report = svc.consistency_report(
                target.conninfo(), s3.client(), plan["buckets"], query=plan["consistency_query"]
            )
    if not options.dry_run:
        release_run_data_lease(context, app_db)
    outcome = {
        "backup_id": plan["backup_id"],
        "dry_run": options.dry_run,
        "scope": options.scope.value,
        "conflict_policy": options.conflict_policy.value,
        "on_unrestorable": options.on_unrestorable.value,
        "database": {
            k: v for k, v in {**database, **swapped}.items() if k not in ("tables", "source_database")
        },
        "buckets": {
            b["bucket"]: {
                k: b.get(k, 0) for k in ("added", "overwritten", "skipped", "kept_both", "failed", "inexact")
            }
            for b in buckets
        },
        "consistency": report,
        "launched_by": plan["launched_by"],
        "would_refuse": plan.get("would_refuse") or None,
    }
    context.instance.add_run_tags(context.run_id, {TAG_OUTCOME: "dry_run" if options.dry_run else "restored"})
    _audit("restore_dry_run" if options.dry_run else "restore", outcome, plan["launched_by"])
    context.add_output_metadata(_metadata({k: v for k, v in outcome.items() if v is not None}))
    return outcome


def _swap_in(
    context: dg.OpExecutionContext,
    app_db: PostgresResource,
    options: svc.RestoreOptions,
    database: dict[str, Any],
    target: svc.PgTarget,
) -> dict[str, Any]:
    """The one moment the target database changes: the checked scratch database takes its name."""
    context.log.info(
        f"swapping scratch database {database['scratch_database']} in as {target.dbname}: other sessions "
        "of the target are ended, the application reconnects to the restored database"
    )
    try:
        swapped = svc.install_restored_database(
            target,
            database,
            token=svc.run_token(context.run_id),
            pg_dump=app_db.pg_tools(check_server=False).pg_dump.path,
            options=options,
        )
    except svc.RestoreError as exc:
        raise _fail(context, str(exc), RESTORE_DATABASE_FAILED) from None
    if swapped.get("previous_kept"):
        context.log.warning(
            f"the replaced database is kept as {swapped['replaced_database']}: drop it when no longer needed"
            + (
                f" (dropping it failed: {swapped['previous_drop_error']})"
                if swapped.get("previous_drop_error")
                else ""
            )
        )
    return swapped


@dg.failure_hook(required_resource_keys={"app_db"})
def drop_restore_scratch_on_failure(context: dg.HookContext) -> None:
    """A failed step: the run will not swap, so its scratch database goes (the target was never touched).

    After a successful swap the scratch name no longer exists and this does nothing.
    """
    app_db = context.resources.app_db
    target = svc.PgTarget.from_url(app_db.database_url, password=app_db.password)
    name = svc.scratch_name(svc.RESTORE, svc.run_token(context.run_id))
    try:
        if svc.database_exists(target, name):
            svc.drop_database(target, name)
            context.log.info(f"the run failed: dropped its scratch database {name}")
    except psycopg.Error as exc:
        context.log.warning(
            f"could not drop scratch database {name} ({first_line(exc)}); the next restore drops it"
        )


def _audit(action: str, details: dict[str, Any], actor: str) -> None:
    """The audit trail kept with the ledger (``backup_pipeline.audit``), when settings load."""
    try:
        from backup_pipeline.audit import audit_log
        from backup_pipeline.settings import load_settings

        audit_log(load_settings()).append(action, details, actor=actor)
    except Exception as exc:  # the run's tags and metadata still record the restore
        dg.get_dagster_logger().warning(f"audit trail not written: {type(exc).__name__}")


@dg.graph(description="Restore a backup set: verify every part first, safety backup, database, then buckets.")
def restore_graph() -> None:
    plan = verify_restore_parts(start_restore(backup_set=restore_to_moment().backup_set))
    database = restore_database_step(plan, safety_backup(plan))
    results = fan_out_buckets(plan, database).map(restore_bucket_step)
    finish_restore(plan, database, results.collect())


restore_job = restore_graph.to_job(
    name="restore_job",
    description=(
        "Restore the database and/or buckets from a backup set. Dry run by default: set dry_run false and "
        "confirm `restore <backup id>` to change data. Every part is verified before anything is touched; "
        "the current database is backed up first (pre-restore). With restore_to_moment's target_time: "
        "point-in-time recovery into a new data directory instead (PITR profile)."
    ),
    tags={**EXCLUSIVE_RUN_TAGS, TAG_PREFIX + "job": "restore"},
    hooks={release_data_lease_on_failure, drop_restore_scratch_on_failure, roll_back_buckets_on_failure},
)
