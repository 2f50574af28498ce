"""``migrate_drive_to_minio``: thin ops over ``backup_pipeline.services.migration``.

plan_drive_migration ──► migrate_batch[batch_0000..N] (dynamic) ──► finish_drive_migration
                                                                     └─► storage_migration materialization

The job runs on the in-process executor: batches are steps one after another (each visible
in the UI, each with ``concurrency`` worker threads). The run holds the data lease
(``ops/data_lease.py``) from ``plan_drive_migration`` to ``finish_drive_migration``.
"""

import json
from collections.abc import Iterator
from typing import Any

import dagster as dg
from pydantic import Field

from backup_pipeline.concurrency import EXCLUSIVE_RUN_TAGS
from backup_pipeline.destinations.base import DestinationError
from backup_pipeline.ops.data_lease import (
    release_data_lease_on_failure,
    release_run_data_lease,
    run_data_lease,
)
from backup_pipeline.ops.step_errors import quiet_failure
from backup_pipeline.resources import PostgresResource, S3Resource
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.postgres import DataLockBusy, PostgresUnavailable
from backup_pipeline.safety import evaluation_of
from backup_pipeline.services import migration as mig
from backup_pipeline.services.backup_parts import ErrorCode
from backup_pipeline.services.progress import ProgressTracker
from backup_pipeline.settings import BackupSettings

STORAGE_MIGRATION_ASSET = dg.AssetKey("storage_migration")
#: Resource key of the Google Drive that holds the legacy files (may differ from the backup destination).
LEGACY_DRIVE = "legacy_drive"
STORAGE_STATUS_CHECK = "primary_storage_status"
# Codes of the expected failures (the step's one-line error starts with one).
MIGRATION_REFUSED = "MIGRATION_REFUSED"
MIGRATION_STOPPED = "MIGRATION_STOPPED"
DRIVE_UNAVAILABLE = "DRIVE_UNAVAILABLE"


class MigrationConfig(dg.Config):
    dry_run: bool = Field(False, description="Count what would move (assets, bytes); change nothing.")
    batch_size: int = Field(50, description="Assets per batch step (1-10000).")
    concurrency: int = Field(4, description="Assets copied at once within a batch (1-16).")
    delete_source: bool = Field(
        False, description="After verification and switch, delete the Drive files. Needs `confirmation`."
    )
    confirmation: str = Field(
        "", description=f"Type exactly {mig.DELETE_SOURCE_CONFIRMATION!r} to allow delete_source."
    )
    primary_bucket: str = Field("media", description="MinIO bucket the files are copied into.")

    def options(self) -> mig.MigrationOptions:
        return mig.MigrationOptions(
            dry_run=self.dry_run,
            batch_size=self.batch_size,
            concurrency=self.concurrency,
            delete_source=self.delete_source,
            confirmation=self.confirmation or None,
        )


class LegacyDriveResource(DestinationResource):
    """Legacy media files in Google Drive, read by the Drive → MinIO migration (not the backup destination)."""

    # Dagster shows the class docstring as the resource's description in the UI; without this
    # subclass `legacy_drive` read "Where backup parts go", the backup destination's text.


def build_legacy_drive_resource(settings: BackupSettings) -> LegacyDriveResource:
    """The Drive holding the legacy files: the configured Drive credentials, whatever the backup destination."""
    resource = DestinationResource.from_settings(settings)
    return LegacyDriveResource(**{**resource.model_dump(), "kind": "google_drive"})


def migration_context(
    context: dg.OpExecutionContext,
    config: MigrationConfig,
    app_db: PostgresResource,
    s3: S3Resource,
    legacy_drive: DestinationResource,
) -> mig.MigrationContext:
    return mig.MigrationContext(
        connect=app_db.connect,
        drive=legacy_drive.get_destination,
        minio=s3.client(),
        bucket=config.primary_bucket,
        options=config.options(),
        run_id=context.run_id,
        endpoint=s3.endpoint,
        log=context.log.debug,
    )


def _fail(exc: BaseException) -> Exception:
    """An expected failure (bad options, the lease busy, a store unavailable): one line with its
    code and no stack trace in the run view (``ops/step_errors.py``)."""
    if isinstance(exc, DataLockBusy):
        code = ErrorCode.LOCKED
    elif isinstance(exc, PostgresUnavailable):
        code = ErrorCode.DATABASE_UNREACHABLE
    elif isinstance(exc, mig.StorageUnavailable):
        code = ErrorCode.S3_UNREACHABLE
    elif isinstance(exc, mig.DriveUnavailable | DestinationError):
        code = DRIVE_UNAVAILABLE
    else:
        code = MIGRATION_REFUSED
    return quiet_failure(str(exc), code)


@dg.op(
    out={"batches": dg.DynamicOut(dict), "plan": dg.Out(dict)},
    description="Apply the storage_migration table, register every asset still in Google Drive, split into batches.",
)
def plan_drive_migration(
    context: dg.OpExecutionContext,
    config: MigrationConfig,
    app_db: PostgresResource,
    s3: S3Resource,
    legacy_drive: DestinationResource,
) -> Iterator[dg.DynamicOutput[dict] | dg.Output[dict]]:
    try:
        config.options().validate()
        with run_data_lease(context, app_db):
            ctx = migration_context(context, config, app_db, s3, legacy_drive)
            if config.dry_run:
                with app_db.connect() as conn:
                    summary = mig.dry_run(conn, ctx.thread_drive())
                # Per file, the reason the real run would record (e.g. "in the Google Drive trash: …
                # restore it"), so they can be dealt with before the real run.
                for failure in summary.failures:
                    context.log.warning(f"asset {failure['asset_id']} would fail: {failure['error']}")
                context.log.info(
                    f"dry run: {summary.would_move} assets ({summary.would_move_bytes} bytes) would move, "
                    f"{summary.would_fail} would fail ({summary.failure_reasons})"
                )
                yield dg.Output({"dry_run": summary.as_dict(), "batches": 0}, "plan")
                return
            with app_db.connect() as conn:
                batches = mig.plan_batches(
                    conn, ctx.minio, ctx.bucket, ctx.options, context.run_id, s3.endpoint
                )
    except (mig.MigrationError, DataLockBusy, PostgresUnavailable, DestinationError) as exc:
        raise _fail(exc) from None
    total = sum(len(b) for b in batches)
    context.log.info(f"{total} assets in Google Drive, {len(batches)} batches of up to {config.batch_size}")
    for index, ids in enumerate(batches):
        yield dg.DynamicOutput(
            {"index": index, "asset_ids": ids}, mapping_key=f"batch_{index:04d}", output_name="batches"
        )
    yield dg.Output({"dry_run": None, "batches": len(batches), "assets": total}, "plan")


@dg.op(description="Copy, verify and switch one batch of assets with bounded concurrency.")
def migrate_batch(
    context: dg.OpExecutionContext,
    config: MigrationConfig,
    app_db: PostgresResource,
    s3: S3Resource,
    legacy_drive: DestinationResource,
    batch: dict,
) -> dict:
    ids: list[str] = batch["asset_ids"]
    tracker = ProgressTracker(
        label=f"batch {batch['index']}",
        emit=lambda snap: context.log.info(snap.message()),
        objects_total=len(ids),
        min_interval=5.0,
    )
    try:
        with run_data_lease(context, app_db):
            ctx = migration_context(context, config, app_db, s3, legacy_drive)
            result = mig.migrate_batch(ctx, ids, lambda o: tracker.add(o.bytes, 1))
    except (DataLockBusy, PostgresUnavailable) as exc:
        raise _fail(exc) from None
    tracker.finish()
    for failure in result.failures[:20]:
        context.log.warning(f"asset {failure['asset_id']}: {failure['error']}")
    for item in result.stored_differently_examples:
        context.log.warning(
            f"asset {item['asset_id']}: the S3 server serves it as {item['served_content_type']!r}, "
            f"not the {item['sent_content_type']!r} sent (migrated; the recorded type is kept)"
        )
    if result.fatal:
        raise quiet_failure(
            f"{result.fatal} (batch {batch['index']}: {result.moved} moved, {result.failed} failed, "
            f"{result.not_attempted} not attempted before it stopped; a rerun continues where this one stopped)",
            MIGRATION_STOPPED,
        )
    context.add_output_metadata(
        {"moved": result.moved, "failed": result.failed, "bytes_moved": result.bytes_moved}
    )
    return result.as_dict()


def summary_metadata(summary: mig.MigrationSummary) -> dict[str, Any]:
    data = summary.as_dict()
    return {
        "moved": data["moved"],
        "adopted (already in MinIO, verified)": data["adopted"],
        "skipped": data["skipped"],
        "failed": data["failed"],
        "bytes_moved": data["bytes_moved"],
        "remaining_in_drive": data["remaining_in_drive"],
        "failure_reasons": dg.MetadataValue.json(data["failure_reasons"]),
        "sources_deleted": data["sources_deleted"],
        "settings_flipped": data["settings_flipped"],
        "settings": data["settings_message"],
        "complete": data["complete"],
        "stored_with_another_content_type": data["stored_differently"],
    }


@dg.op(
    ins={"results": dg.In(list[dict]), "plan": dg.In(dict)},
    description="Delete confirmed sources, flip media_asset_settings when nothing is left, record the summary.",
)
def finish_drive_migration(
    context: dg.OpExecutionContext,
    config: MigrationConfig,
    app_db: PostgresResource,
    s3: S3Resource,
    legacy_drive: DestinationResource,
    results: list[dict],
    plan: dict,
) -> dict:
    if plan.get("dry_run") is not None:
        release_run_data_lease(context, app_db)
        out = _record(context, plan["dry_run"], dry_run=True)
        record_storage_status(context, app_db, s3, config.primary_bucket)
        return out
    total = mig.BatchResult()
    for result in results:
        total.merge(mig.BatchResult.from_dict(result))
    try:
        with run_data_lease(context, app_db):
            ctx = migration_context(context, config, app_db, s3, legacy_drive)
            deleted = mig.delete_sources(ctx)
            with app_db.connect() as conn:
                summary = mig.finalize(conn, total, sources_deleted=deleted)
    except (mig.MigrationError, DataLockBusy, PostgresUnavailable, DestinationError) as exc:
        raise _fail(exc) from None
    release_run_data_lease(context, app_db)
    (context.log.info if summary.settings_flipped else context.log.warning)(summary.settings_message)
    out = _record(context, summary.as_dict(), dry_run=False, metadata=summary_metadata(summary))
    record_storage_status(context, app_db, s3, config.primary_bucket)
    return out


def _record(
    context: dg.OpExecutionContext, data: dict, *, dry_run: bool, metadata: dict[str, Any] | None = None
) -> dict:
    if dry_run:
        metadata = {
            "dry_run": True,
            "would_move": data["would_move"],
            "would_move_bytes": data["would_move_bytes"],
            "would_fail": data["would_fail"],
            "failure_reasons": dg.MetadataValue.json(data["failure_reasons"]),
            "remaining_in_drive": data["remaining_in_drive"],
        }
    context.log_event(
        dg.AssetMaterialization(
            asset_key=STORAGE_MIGRATION_ASSET,
            description="Google Drive → MinIO migration run" + (" (dry run)" if dry_run else ""),
            metadata=metadata or {},
        )
    )
    context.log.info(json.dumps({k: v for k, v in data.items() if k != "failures"}, default=str))
    return {k: v for k, v in data.items() if k != "failures"}


@dg.job(
    description="Copy every media asset still in Google Drive into MinIO, verify it, point its row at MinIO; "
    "when none is left, fix media_asset_settings to MinIO. Resumable: rerun after any failure.",
    tags={**EXCLUSIVE_RUN_TAGS, "backup_pipeline/kind": "migration"},
    executor_def=dg.in_process_executor,
    hooks={release_data_lease_on_failure},
)
def migrate_drive_to_minio() -> None:
    batches, plan = plan_drive_migration()
    results = batches.map(migrate_batch).collect()
    finish_drive_migration(results=results, plan=plan)


# --- storage status ----------------------------------------------------------------------


def storage_status_check_result(status: mig.StorageStatus) -> dg.AssetCheckResult:
    """Passes when MinIO is usable; warns while assets still live in Drive; errors when MinIO is not usable."""
    severity = dg.AssetCheckSeverity.ERROR if not status.healthy else dg.AssetCheckSeverity.WARN
    passed = status.healthy and not status.assets_in_drive
    return dg.AssetCheckResult(
        passed=passed,
        severity=severity,
        description=status.error
        or (
            f"{status.assets_in_drive} assets still in Google Drive"
            if status.assets_in_drive
            else "MinIO is the only primary storage"
        ),
        metadata={
            "minio_endpoint": status.endpoint,
            "minio_reachable": status.reachable,
            "primary_bucket": status.primary_bucket,
            "primary_bucket_exists": status.primary_bucket_exists,
            "buckets": dg.MetadataValue.json(
                [
                    {"name": b.name, "objects": b.objects, "bytes": b.bytes, "truncated": b.truncated}
                    for b in status.buckets
                ]
            ),
            "objects_total": sum(b.objects for b in status.buckets),
            "bytes_total": sum(b.bytes for b in status.buckets),
            "assets_in_drive": status.assets_in_drive if status.assets_in_drive is not None else -1,
            "assets_in_minio": status.assets_in_minio if status.assets_in_minio is not None else -1,
            "media_asset_settings": status.settings_provider or "",
            "migration_status": dg.MetadataValue.json(status.migration_status),
        },
    )


def record_storage_status(
    context: dg.OpExecutionContext, app_db: PostgresResource, s3: S3Resource, primary_bucket: str
) -> None:
    """Record ``primary_storage_status`` against the storage_migration materialization just logged.

    Dagster shows a check against the asset's newest materialization; recorded in the same run,
    the verdict is current at once instead of "Not evaluated" until someone clicks Execute.
    """
    try:
        result = storage_status_check_result(
            mig.storage_status(app_db.connect, s3.client(), s3.endpoint, primary_bucket)
        )
    except Exception as exc:  # the migration is done; the check stays executable by hand
        context.log.warning(f"could not evaluate {STORAGE_STATUS_CHECK} now: {exc}")
        return
    evaluation = evaluation_of(result, STORAGE_MIGRATION_ASSET, STORAGE_STATUS_CHECK)
    # log_event handles AssetCheckEvaluation at runtime; Dagster's UserEvent alias omits it.
    context.log_event(evaluation)  # type: ignore[arg-type]


def build_storage_status_check(primary_bucket: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=STORAGE_MIGRATION_ASSET,
        name=STORAGE_STATUS_CHECK,
        description="MinIO reachable, its buckets with object counts and bytes, and assets still in Google Drive. "
        "Recorded at the end of every migration run; Execute to refresh it.",
    )
    def primary_storage_status(app_db: PostgresResource, s3: S3Resource) -> dg.AssetCheckResult:
        status = mig.storage_status(app_db.connect, s3.client(), s3.endpoint, primary_bucket)
        return storage_status_check_result(status)

    return primary_storage_status


STORAGE_MIGRATION_SPEC = dg.AssetSpec(
    STORAGE_MIGRATION_ASSET,
    description="Google Drive → MinIO migration: one materialization per run (moved, skipped, failed with "
    "reasons, bytes). The primary_storage_status check shows MinIO health and assets still in Drive.",
    group_name="storage",
)
