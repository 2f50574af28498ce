"""``backup_job``: plan → dump_database + export_bucket[bucket] (parallel) → finalize_backup.

Thin wiring: each op gathers its inputs, calls a function of ``services/backup_*.py``,
reports progress and metadata. The order rules (parts verified, manifest last, then the
ledger entry) and the failure behaviour are documented in docs/architecture/BACKUP-STRATEGY.md.
"""

import contextlib
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from pydantic import Field

from backup_pipeline import admin_view
from backup_pipeline.archive.part_index import PartIndexWriter
from backup_pipeline.concurrency import EXCLUSIVE_RUN_TAGS
from backup_pipeline.destinations.base import (
    Destination,
    DestinationError,
    LockedError,
    StoredFile,
    decimal_bytes,
)
from backup_pipeline.ops.backup_seeding import report_seeding, upload_budget
from backup_pipeline.ops.data_lease import (
    release_data_lease_on_failure,
    release_run_data_lease,
    run_data_lease,
)
from backup_pipeline.ops.rate_limit import enforce_manual_backup_interval
from backup_pipeline.ops.step_errors import expected_failure, quiet_failure
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.resources.postgres import DataLockBusy, PostgresResource
from backup_pipeline.resources.s3 import S3Resource
from backup_pipeline.schedules import IN_PROGRESS_STATUSES
from backup_pipeline.services.backup_buckets import (
    ArchiveWriter,
    BucketExportResult,
    OpenedObject,
    ReadAhead,
    discover_buckets,
    export_bucket,
    iter_listing,
)
from backup_pipeline.services.backup_database import dump_database, locate_and_check_pg_dump
from backup_pipeline.services.backup_finalize import FinalizeInput, finalize_backup
from backup_pipeline.services.backup_incremental import (
    INCREMENTAL_OFF,
    IncrementalPolicy,
    ModeChoice,
    choose_mode,
    export_bucket_incremental,
)
from backup_pipeline.services.backup_parts import (
    PART_DATABASE,
    BackupError,
    ErrorCode,
    bucket_part_name,
    mapping_key,
    new_backup_id,
    shard_part_name,
)
from backup_pipeline.services.backup_seed import (
    DUMP_NOT_NEEDED,
    BucketBudget,
    day_budget,
    writes_seed_checkpoint,
)
from backup_pipeline.services.backup_upload import (
    Encryptor,
    destination_error_code,
    has_manifest,
    has_seed_checkpoint,
    remove_incomplete_sets,
    remove_part,
    remove_set,
)
from backup_pipeline.services.bucket_shards import (
    ShardLimits,
    ShardRange,
    summarize_and_shard,
)
from backup_pipeline.services.progress import ProgressSnapshot, ProgressTracker
from backup_pipeline.services.reachability import ReferencesUnknown, find_references
from backup_pipeline.settings import SEED_RUN_BUDGET_DEFAULT
from backup_pipeline.shard_settings import DEFAULT_MAX_BYTES, DEFAULT_MAX_OBJECTS

BACKUP_JOB_NAME = "backup_job"
BACKUP_SET_ASSET = dg.AssetKey("backup_set")
BACKUP_ID_TAG = "backup_pipeline/backup_id"
KEYS = "keys"
PROGRESS_INTERVAL_SECONDS = 10.0


class BackupConfig(dg.Config):
    """Per-installation choices (defaults from settings); nothing secret. The defaults are right for a
    normal backup: launch without changing anything."""

    installation_id: str = Field(
        default="backup-pipeline",
        description="Name of this installation; names the backup files. Leave as is.",
    )
    buckets_include: list[str] = Field(
        default_factory=list, description="Buckets to back up; empty = every bucket (recommended)."
    )
    buckets_exclude: list[str] = Field(
        default_factory=list, description="Buckets to leave out of this backup."
    )
    exclude_table_patterns: list[str] = Field(
        default_factory=lambda: ["public.sessions", "public.*_cache"],
        description="Tables whose rows are not backed up (sessions, caches); their structure still is.",
    )
    schema_version_query: str = Field(
        default="SELECT max(version) FROM schema_migrations",
        description="Query giving the app's schema version, recorded with the backup (not recorded, with a "
        "warning, when the app has no such table). Leave as is.",
    )
    compression_level: int = Field(default=1, description="gzip level 1 (fast) to 9 (smaller, slower).")
    progress_interval_seconds: float = Field(
        default=PROGRESS_INTERVAL_SECONDS,
        description="How often progress (bytes, objects, ETA) is written to the log.",
    )
    # 0 (off) unless built from settings: the job's default config carries the operator's value.
    min_manual_backup_interval_minutes: int = Field(
        default=0, ge=0, description="A manual backup this soon after the last one is refused unless forced."
    )
    force: bool = Field(default=False, description="Run a manual backup even within the minimum interval.")
    incremental_objects: bool = Field(
        default=False, description="Upload only objects new or changed since the last backup of each bucket."
    )
    full_every: int = Field(
        default=7, ge=1, description="With incremental_objects: every Nth backup is a full one."
    )
    incremental_min_live_share: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="With incremental_objects: full when less of the older parts is used.",
    )
    shard_max_objects: int = Field(
        default=DEFAULT_MAX_OBJECTS,
        ge=1,
        description="A bucket with more objects is backed up in several parts by key range, in parallel "
        "steps (not with incremental_objects).",
    )
    shard_max_bytes: int = Field(
        default=DEFAULT_MAX_BYTES, ge=1, description="Likewise for a bucket with more bytes."
    )
    seed_margin_share: float = Field(
        default=0.05,
        ge=0.0,
        lt=1.0,
        description="With incremental_objects on Google Drive: share of the daily upload cap left unused when a "
        "backup larger than the day's allowance is spread over several runs (seeding).",
    )
    seed_run_budget_bytes: int = Field(
        default=SEED_RUN_BUDGET_DEFAULT,
        ge=1,
        description="With incremental_objects on Google Drive: at most this many bytes of objects per seeding run, "
        "so a seeding run that dies loses at most this much.",
    )


# --- helpers ---------------------------------------------------------------------------------


def failure_from(
    context: dg.OpExecutionContext, err: BackupError | DataLockBusy | DestinationError
) -> Exception:
    """``[code] message`` without a stack trace (``ops/step_errors.py``); a retryable error is
    retried by the step's retry policy first."""
    if isinstance(err, BackupError):
        code, message, retry = err.code, err.message, err.retryable
    elif isinstance(err, DataLockBusy):
        code, message, retry = ErrorCode.LOCKED, str(err), False
    else:
        code, message, retry = destination_error_code(err), str(err), err.retryable
    return expected_failure(context, message, code, retryable=retry)


@contextlib.contextmanager
def backup_errors(context: dg.OpExecutionContext) -> Iterator[None]:
    try:
        yield
    except (BackupError, DataLockBusy, DestinationError) as err:
        raise failure_from(context, err) from None


def build_encryptor(keys: BackupKeysResource) -> tuple[Encryptor, dict[str, Any]]:
    """An Encryptor over the org keyring and the recovery public key; plus the key ids (for the ledger)."""
    from backup_pipeline.archive.stream_crypto import encrypt_stream

    try:
        keyring = keys.keyring()
        recovery = keys.recovery_public_key()
    except Exception as exc:  # key loading errors name the file/setting, never key material
        raise BackupError(ErrorCode.KEYS_UNAVAILABLE, f"backup keys unavailable: {exc}") from None

    def encryptor(chunks: Iterable[bytes], backup_id: str, part_name: str) -> Iterator[bytes]:
        return encrypt_stream(
            chunks,
            backup_id=backup_id,
            part_name=part_name,
            org_keyring=keyring,
            recovery_public_key=recovery,
        )

    return encryptor, {"org_key_id": keyring.current_key_id, "recovery_key_id": recovery.key_id}


def build_archive_writer(compression_level: int) -> ArchiveWriter:
    """Opened objects → ``archive.tar_parts.write_bucket_archive`` (pax tar, per-entry gzip members)."""
    from backup_pipeline.archive.streams import iter_file
    from backup_pipeline.archive.tar_parts import SourceObject, write_bucket_archive

    def writer(objects: Iterator[OpenedObject], index: PartIndexWriter | None = None) -> Iterable[bytes]:
        def sources() -> Iterator[SourceObject]:
            for obj in objects:
                # The GET is already under way (its headers gave size and metadata), so open()
                # hands over that response's body rather than issuing a second request.
                body = obj.body
                yield SourceObject(
                    key=obj.key,
                    size=obj.size,
                    content_type=obj.content_type,
                    metadata=obj.metadata,
                    tags=obj.tags,
                    etag=obj.etag,
                    last_modified=obj.last_modified,
                    open=lambda body=body: iter_file(body),  # type: ignore[misc]
                    headers=obj.headers,
                )

        return write_bucket_archive(sources(), compress_level=compression_level, index=index)

    return writer


def progress_logger(context: dg.OpExecutionContext) -> Callable[[ProgressSnapshot], None]:
    return lambda snap: context.log.info(snap.message())


def backup_id_of_run(instance: dg.DagsterInstance, run_id: str) -> str | None:
    run = instance.get_run_by_id(run_id)
    return run.tags.get(BACKUP_ID_TAG) if run else None


def backup_ids_being_written(
    instance: dg.DagsterInstance, *, except_run_id: str, job_name: str = BACKUP_JOB_NAME
) -> set[str]:
    """Backup ids of the other backup runs still in progress: their sets have no manifest *yet*.

    The data lease keeps another backup run out only if both run under it; a run that died
    without its status being recorded yet, or a lease taken over after a stale heartbeat, must
    not cost a live run its set, so in-progress runs are spared by their status as well.
    """
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=job_name, statuses=IN_PROGRESS_STATUSES))
    return {
        run.tags[BACKUP_ID_TAG] for run in runs if run.run_id != except_run_id and run.tags.get(BACKUP_ID_TAG)
    }


def run_has_failed_step(context: dg.OpExecutionContext) -> bool:
    records = context.instance.all_logs(context.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    return bool(records)


def discard_if_run_failed(
    context: dg.OpExecutionContext, destination: Destination, installation_id: str, backup_id: str, part: str
) -> None:
    """A sibling step failed while this one uploaded: its failure hook may have run already, so remove our part."""
    if run_has_failed_step(context):
        # A part the destination keeps (object lock) stays: without a manifest it is no backup.
        with contextlib.suppress(LockedError):
            remove_part(destination, installation_id, backup_id, part)
        raise quiet_failure(
            f"another step of this backup failed; part {part!r} discarded", ErrorCode.INTERNAL
        )


def installation_id_of_run(run: dg.DagsterRun | None) -> str | None:
    """The installation id the run was launched with (Launchpad config), if it set one.

    Not a run tag: the run list shows only the tags people filter by (backup id, trigger).
    """
    if run is None:
        return None
    ops: Any = run.run_config.get("ops")
    config = ((ops or {}).get("plan_backup") or {}).get("config") if isinstance(ops, dict) else None
    value = config.get("installation_id") if isinstance(config, dict) else None
    return str(value) if value else None


def set_completed_in_run(instance: dg.DagsterInstance, run_id: str) -> bool:
    """Whether this run already logged its backup_set materialization (the set is complete)."""
    records = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    return any(
        r.asset_materialization and r.asset_materialization.asset_key == BACKUP_SET_ASSET for r in records
    )


@dg.failure_hook(required_resource_keys={"destination"})
def remove_partial_set(context: dg.HookContext) -> None:
    """Any failed step removes the whole set (manifest first): a failed run leaves no partial backup."""
    backup_id = backup_id_of_run(context.instance, context.run_id)
    if not backup_id:
        return
    if set_completed_in_run(context.instance, context.run_id):
        # A step after finalize_backup (record_backup_checks) failed: the set is complete and
        # recorded in the ledger; deleting it would lose a good backup.
        context.log.warning(f"backup set {backup_id} is complete (manifest written, recorded): kept")
        return
    run = context.instance.get_run_by_id(context.run_id)
    installation_id = installation_id_of_run(run) or context.resources.destination.installation_id
    destination: Destination = context.resources.destination.get_destination()
    try:
        removed = remove_set(destination, installation_id, backup_id)
    except DestinationError as exc:
        context.log.warning(
            f"could not remove the partial backup set {backup_id} ({exc}); it has no manifest, so it is not "
            "a backup, and the next backup or retention removes it"
        )
        return
    context.log.info(f"removed {removed} file(s) of the partial backup set {backup_id}")


# --- ops -------------------------------------------------------------------------------------


@dg.op(
    out={"plan": dg.Out(dict), "buckets": dg.DynamicOut(dict)},
    description="Prepares the backup: gives it an id, checks pg_dump against the database server, lists the "
    "buckets with their sizes, checks the destination has room, and removes leftovers of backups that died.",
)
def plan_backup(
    context: dg.OpExecutionContext,
    config: BackupConfig,
    app_db: PostgresResource,
    s3: S3Resource,
    destination: DestinationResource,
    keys: BackupKeysResource,
) -> Iterator[dg.Output[dict] | dg.DynamicOutput[dict]]:
    enforce_manual_backup_interval(
        context, config.min_manual_backup_interval_minutes, force=config.force, state_dir=keys.state_dir
    )
    with backup_errors(context), run_data_lease(context, app_db):
        run = context.instance.get_run_by_id(context.run_id)
        started = datetime.now(UTC)
        backup_id = (run.tags.get(BACKUP_ID_TAG) if run else None) or new_backup_id(started, context.run_id)
        # Only what people filter the run list by (which backup, who started it); sizes and
        # counts are metadata of finalize_backup and of the backup_set materialization.
        context.instance.add_run_tags(
            context.run_id,
            {
                BACKUP_ID_TAG: backup_id,
                admin_view.TAG_TRIGGER: admin_view.trigger_of(run.tags if run else {}),
            },
        )
        _, key_ids = build_encryptor(keys)
        tools, _, server_version = locate_and_check_pg_dump(app_db)
        client = s3.client()
        own = [b for b in destination.buckets_on(s3.endpoint) if b not in config.buckets_exclude]
        for bucket in own:
            context.log.info(
                f"bucket {bucket} is a destination of this backup on the same S3 server: not backed up"
            )
        exclude = [*config.buckets_exclude, *own]
        buckets = discover_buckets(client, config.buckets_include, exclude)
        # Incremental sets are never sharded (settings refuse shard limits with them):
        # their inventory part and diff are per bucket (docs/architecture/BACKUP-STRATEGY.md).
        limits = (
            None
            if config.incremental_objects
            else ShardLimits(config.shard_max_objects, config.shard_max_bytes)
        )
        planned = [summarize_and_shard(b, iter_listing(client, b), limits) for b in buckets]
        summaries = [summary for summary, _ in planned]
        db_size = _database_size(app_db)
        estimate = db_size + sum(s.bytes for s in summaries)
        dest = destination.get_destination()
        budget = upload_budget(context, config, dest, keys, db_size, summaries, estimate)
        writing = backup_ids_being_written(
            context.instance, except_run_id=context.run_id, job_name=context.job_name
        )
        removed = remove_incomplete_sets(
            dest,
            config.installation_id,
            keep={backup_id, *writing},
            referenced=lambda grouped: _referenced_parts(dest, keys, grouped),
        )
        if removed:
            context.log.info(f"removed incomplete sets of runs that died: {', '.join(removed)}")
    plan = {
        "backup_id": backup_id,
        "installation_id": config.installation_id,
        "started_at": started.isoformat(timespec="seconds"),
        "pg_server_version": server_version,
        "pg_dump_version": tools.pg_dump.version,
        "buckets": {s.name: {"objects": s.objects, "bytes": s.bytes} for s in summaries},
        "database_size_bytes": db_size,
        "estimated_bytes": estimate,
        "key_ids": key_ids,
        "exclude_table_patterns": list(config.exclude_table_patterns),
        "schema_version_query": config.schema_version_query,
        "compression_level": config.compression_level,
        "progress_interval_seconds": config.progress_interval_seconds,
        "incremental": {
            "enabled": config.incremental_objects,
            "full_every": config.full_every,
            "min_live_share": config.incremental_min_live_share,
            "budget_limited": budget is not None,
        },
        # Seeding (docs/architecture/BACKUP-STRATEGY.md "Seeding across days"): None = no limit.
        "seed": None
        if budget is None
        else {
            **budget.to_dict(),
            "day": day_budget(budget.cap, config.seed_margin_share, db_size),
            "margin_share": config.seed_margin_share,
        },
    }
    context.log.info(
        f"backup {backup_id}: database ~{db_size} bytes, {len(summaries)} bucket(s) "
        f"{sum(s.objects for s in summaries)} objects {sum(s.bytes for s in summaries)} bytes; "
        f"destination {dest.description}"
    )
    yield dg.Output(
        plan,
        "plan",
        metadata={
            "backup_id": backup_id,
            "buckets": len(summaries),
            "objects": sum(s.objects for s in summaries),
            "estimated_bytes": estimate,
            "removed_incomplete_sets": len(removed),
            **(
                {
                    "seeding": "this run ends as seeding: no database dump"
                    if budget.ends_seeding
                    else "budget-limited: completes the set if everything fits",
                    "seed_budget_bytes": sum(budget.per_bucket.values()),
                    "seed_pending_bytes": budget.pending_bytes,
                }
                if budget is not None
                else {}
            ),
        },
    )
    taken: set[str] = set()
    # A set with a sharded bucket is format 3, which has no inventory parts (BACKUP-FORMAT.md §6.1):
    # its unsharded buckets then keep their objects in the manifest too.
    any_sharded = any(shards for _, shards in planned)
    for summary, shards in planned:
        if not shards:
            yield dg.DynamicOutput(
                {
                    "bucket": summary.name,
                    "objects": summary.objects,
                    "bytes": summary.bytes,
                    # Whether its inventory can be a streamed part (BACKUP-FORMAT.md §5.3).
                    "in_key_order": summary.in_key_order,
                    "inventory_part": summary.in_key_order and not any_sharded,
                },
                output_name="buckets",
                mapping_key=mapping_key(summary.name, taken),
            )
            continue
        context.log.info(
            f"bucket {summary.name}: {summary.objects} objects, {summary.bytes} bytes: exported in "
            f"{len(shards)} shards by key range (limits {config.shard_max_objects} objects / "
            f"{config.shard_max_bytes} bytes per shard)"
        )
        # One step per shard: they run in parallel like buckets, and the step's retry policy
        # retries a failed one alone (a re-execution from failure does not: the failure hook
        # has removed the set, docs/architecture/BACKUP-STRATEGY.md, Sharded buckets).
        for shard in shards:
            yield dg.DynamicOutput(
                {
                    "bucket": summary.name,
                    "objects": shard.objects,
                    "bytes": shard.bytes,
                    "shard": shard.to_dict(),
                },
                output_name="buckets",
                mapping_key=mapping_key(f"{summary.name}_shard{shard.number:04d}", taken),
            )


def _referenced_parts(
    dest: Destination, keys: BackupKeysResource, grouped: dict[str, list[StoredFile]]
) -> Callable[[str], set[str]]:
    """Parts that complete format-2 sets and kept seeds reference (``services/reachability.py``): never
    removed here."""
    try:
        refs = find_references(
            dest,
            keys.keyring,
            grouped,
            [b for b, files in grouped.items() if has_manifest(files) or has_seed_checkpoint(files)],
        )
    except ReferencesUnknown as exc:
        raise BackupError(
            ErrorCode.DESTINATION_UNAVAILABLE, f"removing the remains of dead backups: {exc}"
        ) from None
    return lambda backup_id: set(refs.of_set(backup_id))


def _database_size(app_db: PostgresResource) -> int:
    with app_db.connect(autocommit=True) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0


@dg.op(
    retry_policy=dg.RetryPolicy(max_retries=1, delay=5),
    description="Backs up the database (pg_dump), encrypted, to the destination, and checks what arrived. In a "
    "run planned to end as seeding it records 'not needed: seeding run' instead (a seed is never restored).",
)
def dump_database_op(
    context: dg.OpExecutionContext,
    plan: dict,
    app_db: PostgresResource,
    destination: DestinationResource,
    keys: BackupKeysResource,
) -> dict:
    backup_id, installation_id = plan["backup_id"], plan["installation_id"]
    if (plan.get("seed") or {}).get("ends_seeding"):
        return _database_not_needed(context, plan)
    with backup_errors(context), run_data_lease(context, app_db):
        encryptor, _ = build_encryptor(keys)
        dest = destination.get_destination()
        context.log.info(f"encrypting the database dump into part {PART_DATABASE!r} of backup {backup_id}")
        progress = ProgressTracker(
            "database dump",
            progress_logger(context),
            bytes_total=None,
            min_interval=plan["progress_interval_seconds"],
        )
        result = dump_database(
            app_db,
            dest,
            encryptor,
            installation_id=installation_id,
            backup_id=backup_id,
            exclude_table_data=plan["exclude_table_patterns"],
            schema_version_query=plan["schema_version_query"],
            progress=progress,
            on_start=lambda cmd: context.log.info("running " + " ".join(cmd)),
        )
        discard_if_run_failed(context, dest, installation_id, backup_id, PART_DATABASE)
    if result.schema_version_note:
        context.log.warning(result.schema_version_note)
    out = result.to_dict()
    context.add_output_metadata(
        {
            "part": PART_DATABASE,
            "file_id": result.part.file_id,
            "ciphertext_bytes": result.part.size,
            "dump_bytes": result.part.plaintext_size,
            "seconds": round(result.seconds, 3),
            "schema_version": result.schema_version or result.schema_version_note or "not configured",
            "pg_dump_version": result.pg_dump_version,
        }
    )
    return out


def _database_not_needed(context: dg.OpExecutionContext, plan: dict) -> dict:
    """A run planned to end as seeding dumps no database: a seed checkpoint is never restored, and
    the run that completes the set dumps it (docs/architecture/BACKUP-STRATEGY.md, Seeding)."""
    seed = plan["seed"]
    context.log.info(
        f"database dump {DUMP_NOT_NEEDED}: {decimal_bytes(seed.get('pending_bytes', 0))} of objects are left "
        f"to upload and this run may upload {decimal_bytes(sum(seed['per_bucket'].values()))}, so it ends as "
        "seeding (not restorable); the run that completes the set dumps the database"
    )
    context.add_output_metadata({"part": "none", "dump": DUMP_NOT_NEEDED})
    return {
        "part": None,
        "skipped": DUMP_NOT_NEEDED,
        "server_version": plan["pg_server_version"],
        "pg_dump_version": plan["pg_dump_version"],
        "schema_version": None,
        "schema_version_note": None,
        "exclude_table_data": list(plan["exclude_table_patterns"]),
        "seconds": 0.0,
        "table_rows": {},
    }


@dg.op(
    retry_policy=dg.RetryPolicy(max_retries=1, delay=5),
    description="Backs up every file of one bucket (one step per bucket, or per key range of a bucket above "
    "the shard limits), encrypted, to the destination, and checks what arrived.",
)
def export_bucket_op(
    context: dg.OpExecutionContext,
    plan: dict,
    bucket: dict,
    app_db: PostgresResource,
    s3: S3Resource,
    destination: DestinationResource,
    keys: BackupKeysResource,
) -> dict:
    backup_id, installation_id, name = plan["backup_id"], plan["installation_id"], bucket["bucket"]
    shard = ShardRange.from_dict(bucket["shard"]) if bucket.get("shard") else None
    part_name = shard_part_name(name, shard.number) if shard else bucket_part_name(name)
    what = f"bucket {name}" + (f" shard {shard.number}/{shard.count}" if shard else "")
    with backup_errors(context), run_data_lease(context, app_db):
        encryptor, _ = build_encryptor(keys)
        dest = destination.get_destination()
        context.log.info(f"encrypting {what} into part {part_name!r} of backup {backup_id}")
        progress = ProgressTracker(
            what,
            progress_logger(context),
            bytes_total=bucket["bytes"],
            objects_total=bucket["objects"],
            min_interval=plan["progress_interval_seconds"],
        )
        policy = IncrementalPolicy(**plan.get("incremental", {}))
        seed = plan.get("seed")
        budget = (
            BucketBudget(
                left=int(seed["per_bucket"].get(name, 0)),
                day=seed.get("day"),
                alone=(seed.get("alone") or {}).get(name),
            )
            if seed and shard is None
            else None
        )
        # Every unsharded bucket gets an inventory part (format 2, issue 18: the manifest stays
        # O(buckets + parts)); a listing not in key order cannot be written as one, so that bucket
        # keeps its objects in the manifest (format 1 form). Plans of older code lack the flag.
        if shard is None and (
            policy.enabled or bucket.get("inventory_part", bucket.get("in_key_order", False))
        ):
            result = _export_with_inventory(
                context, plan, name, dest, encryptor, keys, s3, progress, policy, budget
            )
        else:
            if shard is None and not bucket.get("in_key_order", False):
                context.log.warning(
                    f"bucket {name}: the server does not list it in key order; its object list goes into "
                    "the manifest instead of an inventory part"
                )
            result = export_bucket(
                s3.client(),
                name,
                dest,
                encryptor,
                build_archive_writer(plan["compression_level"]),
                installation_id=installation_id,
                backup_id=backup_id,
                progress=progress,
                read_ahead=ReadAhead(workers=s3.read_ahead),
                tag_reading=s3.tag_reading,
                with_index=True,
                shard=shard,
            )
        side_parts = [p for p in (result.index_part, result.inventory_part) if p is not None]
        if side_parts and run_has_failed_step(context):
            with contextlib.suppress(LockedError):
                for side in side_parts:
                    remove_part(dest, installation_id, backup_id, side.part_name)
        discard_if_run_failed(context, dest, installation_id, backup_id, part_name)
    warnings = result.warnings()
    for warning in warnings:
        context.log.warning(warning)
    context.add_output_metadata(
        {
            "part": part_name,
            "file_id": result.part.file_id,
            "objects": result.object_count,
            "object_bytes": result.plaintext_bytes,
            "ciphertext_bytes": result.part.size,
            "changed_during_backup": len(result.changed),
            "vanished_during_backup": len(result.vanished),
            "not_backed_up": len(result.unreadable),
            "inexact_headers": len(result.inexact),
            "versioning": result.versioning.message() if result.versioning else "not versioned",
            "warnings": dg.MetadataValue.md("\n".join(f"- {w}" for w in warnings) or "none"),
            "seconds": round(result.seconds, 3),
            **_incremental_metadata(result.incremental),
        }
    )
    return result.to_dict()


def _export_with_inventory(
    context: dg.OpExecutionContext,
    plan: dict,
    bucket: str,
    dest: Destination,
    encryptor: Encryptor,
    keys: BackupKeysResource,
    s3: S3Resource,
    progress: ProgressTracker,
    policy: IncrementalPolicy,
    budget: BucketBudget | None = None,
) -> BucketExportResult:
    """Full or incremental (``services/backup_incremental.py``), said in the log with the reason.

    With incremental object backups off every bucket is a full one, with no previous set read.
    """
    keyring = keys.keyring()
    choice = (
        choose_mode(dest, keyring, plan["installation_id"], bucket, plan["backup_id"], policy)
        if policy.enabled
        else ModeChoice(True, INCREMENTAL_OFF)
    )
    if choice.warning:
        context.log.warning(f"bucket {bucket}: full backup: {choice.warning}")
    context.log.info(f"bucket {bucket}: {'full' if choice.full else 'incremental'} backup ({choice.reason})")
    result = export_bucket_incremental(
        s3.client(),
        bucket,
        dest,
        encryptor,
        build_archive_writer(plan["compression_level"]),
        installation_id=plan["installation_id"],
        backup_id=plan["backup_id"],
        choice=choice,
        keyring=keyring,
        progress=progress,
        read_ahead=ReadAhead(workers=s3.read_ahead),
        tag_reading=s3.tag_reading,
        budget=budget,
    )
    inc = result.incremental or {}
    if budget is not None and budget.deferred_objects:
        context.log.warning(
            f"bucket {bucket}: {budget.deferred_objects} object(s) ({decimal_bytes(budget.deferred_bytes)}) "
            "deferred to the next run: the daily upload allowance is used up (seeding)"
        )
    diff = inc.get("diff", {})
    context.log.info(
        f"bucket {bucket}: {inc.get('mode')}: {diff.get('new', 0)} new ({diff.get('new_bytes', 0)} bytes), "
        f"{diff.get('changed', 0)} changed ({diff.get('changed_bytes', 0)} bytes), "
        f"{diff.get('deleted', 0)} deleted, {diff.get('unchanged', 0)} unchanged "
        f"({diff.get('unchanged_bytes', 0)} bytes, in {len(inc.get('referenced_parts', []))} older part(s))"
    )
    return result


def _incremental_metadata(incremental: dict | None) -> dict[str, Any]:
    if not incremental:
        return {}
    return {
        "mode": incremental["mode"],
        "mode_reason": incremental["mode_reason"],
        "base_backup_id": incremental["base_backup_id"] or "none",
        **{f"objects_{k}": v for k, v in incremental["diff"].items()},
        "referenced_parts": len(incremental["referenced_parts"]),
        **(
            {
                "deferred_objects": incremental["deferred_objects"],
                "deferred_bytes": incremental["deferred_bytes"],
            }
            if "deferred_objects" in incremental
            else {}
        ),
    }


@dg.op(
    description="Checks every part on the destination, then writes the manifest (only then is it a backup) "
    "and records it on the backup_set asset.",
)
def finalize_backup_op(
    context: dg.OpExecutionContext,
    plan: dict,
    database: dict,
    buckets: list[dict],
    app_db: PostgresResource,
    destination: DestinationResource,
    keys: BackupKeysResource,
) -> dict:
    with backup_errors(context), run_data_lease(context, app_db):
        encryptor, key_ids = build_encryptor(keys)
        dest = destination.get_destination()
        entry = finalize_backup(
            dest,
            encryptor,
            FinalizeInput(
                installation_id=plan["installation_id"],
                backup_id=plan["backup_id"],
                started_at=plan["started_at"],
                database=database,
                # Shards of a bucket in key order: the manifest lists them so.
                buckets=sorted(buckets, key=lambda b: (b["bucket"], (b.get("shard") or {}).get("number", 0))),
                key_ids=key_ids,
                versions={"backup_pipeline": _package_version()},
            ),
        )
    release_run_data_lease(context, app_db)
    entry["run_id"] = context.run_id
    entry["destination"] = dest.description
    if writes_seed_checkpoint(database, buckets):
        return report_seeding(context, dest, entry, buckets, plan)
    context.log_event(
        dg.AssetMaterialization(
            asset_key=BACKUP_SET_ASSET, metadata=admin_view.backup_set_metadata(entry, dest)
        )
    )
    context.log.info(
        f"backup {entry['backup_id']} complete: {len(entry['part_file_ids'])} files, {entry['total_bytes']} bytes"
    )
    context.add_output_metadata(admin_view.backup_run_summary(entry))
    return {"backup_id": entry["backup_id"], "manifest_file_id": entry["manifest_file_id"]}


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("backup_pipeline")
    except PackageNotFoundError:
        return "unknown"


# --- job -------------------------------------------------------------------------------------


def build_backup_job(
    config: BackupConfig | None = None,
    executor_def: dg.ExecutorDefinition | None = None,
    name: str = BACKUP_JOB_NAME,
    description: str | None = None,
    record_checks: dg.OpDefinition | None = None,
) -> dg.JobDefinition:
    """The backup job; ``config`` gives the defaults shown in the Launchpad (from settings);
    ``description`` the administrator-facing text (``admin_view.backup_job_description``);
    ``record_checks`` an op run after ``finalize_backup`` that records the safety checks against
    the new materialization (``admin_view.build_record_checks_op``)."""
    defaults = (config or BackupConfig()).model_dump()

    @dg.job(
        name=name,
        description=description
        or "Encrypted backup of the app database and every bucket to the destination: one run = "
        "one backup set (manifest written last) = one backup_set materialization.",
        tags=EXCLUSIVE_RUN_TAGS,
        hooks={remove_partial_set, release_data_lease_on_failure},
        executor_def=executor_def or dg.multiprocess_executor,
        config={"ops": {"plan_backup": {"config": defaults}}},
    )
    def backup_job() -> None:
        plan, buckets = plan_backup()
        database = dump_database_op.alias("dump_database")(plan)
        exports = buckets.map(lambda b: export_bucket_op.alias("export_bucket")(plan, b))
        finalized = finalize_backup_op.alias("finalize_backup")(plan, database, exports.collect())
        if record_checks is not None:
            record_checks(finalized)

    return backup_job


def backup_config_from_settings(settings: Any) -> BackupConfig:
    return BackupConfig(
        installation_id=settings.installation_id,
        buckets_include=list(settings.buckets_include),
        buckets_exclude=list(settings.buckets_exclude),
        exclude_table_patterns=list(settings.exclude_table_patterns),
        schema_version_query=settings.schema_version_query,
        compression_level=settings.compression_level,
        min_manual_backup_interval_minutes=settings.min_manual_backup_interval_minutes,
        incremental_objects=settings.incremental_objects,
        full_every=settings.full_every,
        incremental_min_live_share=settings.incremental_min_live_share,
        shard_max_objects=settings.shard_max_objects,
        shard_max_bytes=settings.shard_max_bytes,
        seed_margin_share=settings.seed_margin_share,
        seed_run_budget_bytes=settings.seed_run_budget_bytes,
    )


BACKUP_SET_SPEC = dg.AssetSpec(
    BACKUP_SET_ASSET,
    description="The backups of the application (database + buckets). Each complete backup appears here as a "
    "materialization: status, time, size, files, objects, duration, where it is, and links to restore or "
    "delete it. Checks: backup_set_fresh (is the newest backup recent enough?), backup_destination (is the "
    "destination reachable, is it off-site?) and backup_set_verified (did the newest backup restore in a "
    "test?). A deleted backup shows as an observation with event=deleted (backup_pipeline/ledger.py).",
    group_name="backups",
)
