"""Batches and runs: planning, the worker pool of a batch, deleting confirmed sources, the summary, the dry run and the flip of ``media_asset_settings``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psycopg
from minio import Minio

from backup_pipeline.services.errors import S3_ERRORS, s3_error_reason
from backup_pipeline.services.migration.copy import (
    MigrationContext,
    drive_metadata,
    migrate_asset,
)
from backup_pipeline.services.migration.model import (
    PROVIDER_DRIVE,
    PROVIDER_MINIO,
    RUN_STOPPERS,
    AssetFailed,
    AssetOutcome,
    BatchResult,
    DriveFiles,
    LegacyAsset,
    MigrationOptions,
    MigrationSummary,
    StorageUnavailable,
    stopped_text,
)
from backup_pipeline.services.migration.status_table import (
    _status_table_exists,
    count_drive_assets,
    ensure_schema,
    find_drive_assets,
    register_assets,
)


def plan_batches(
    conn: psycopg.Connection, minio: Minio, bucket: str, options: MigrationOptions, run_id: str, endpoint: str
) -> list[list[str]]:
    """Apply the schema, check the bucket, register every Drive asset, return id batches."""
    options.validate()
    ensure_schema(conn)
    ensure_bucket(minio, bucket, endpoint)
    abort_stale_uploads(minio, bucket, options.key_prefix, endpoint)
    assets = find_drive_assets(conn)
    register_assets(conn, assets, bucket, options.key_prefix, run_id)
    ids = [a.key for a in assets]
    return [ids[i : i + options.batch_size] for i in range(0, len(ids), options.batch_size)]


def ensure_bucket(minio: Minio, bucket: str, endpoint: str) -> None:
    try:
        if not minio.bucket_exists(bucket):
            minio.make_bucket(bucket)
    except S3_ERRORS as exc:
        raise StorageUnavailable(s3_error_reason(exc, endpoint, f"checking bucket {bucket!r}")) from None


def abort_stale_uploads(minio: Minio, bucket: str, prefix: str, endpoint: str) -> int:
    """Abort unfinished multipart uploads a killed run left under ``prefix`` (they are not objects,
    but they hold storage). Safe because the data lock allows one migration at a time."""
    aborted = 0
    try:
        # minio exposes these S3 calls only as private methods; they are stable since 7.0.
        result = minio._list_multipart_uploads(bucket, prefix=prefix)
        for upload in result.uploads:
            minio._abort_multipart_upload(bucket, upload.object_name, str(upload.upload_id))
            aborted += 1
    except S3_ERRORS as exc:
        raise StorageUnavailable(s3_error_reason(exc, endpoint, "listing unfinished uploads")) from None
    return aborted


def migrate_batch(
    ctx: MigrationContext, asset_ids: list[str], on_asset: Callable[[AssetOutcome], None] | None = None
) -> BatchResult:
    """Migrate the given assets with ``options.concurrency`` workers.

    A MinIO or Google Drive outage stops the batch: workers that have not started return
    ``not_attempted``, the result's ``fatal`` says why, and the caller fails the run (the next
    run continues).
    """
    with ctx.connect() as conn:
        assets = find_drive_assets(conn, asset_ids)
    result = BatchResult()
    result.skipped += len(set(asset_ids) - {a.key for a in assets})

    def work(asset: LegacyAsset) -> AssetOutcome:
        try:
            return migrate_asset(ctx, asset)
        except RUN_STOPPERS as exc:
            ctx.stop.set()
            result.fatal = result.fatal or stopped_text(exc)
            return AssetOutcome(asset.key, "failed", reason=exc.reason, error=stopped_text(exc))

    with ThreadPoolExecutor(max_workers=ctx.options.concurrency, thread_name_prefix="migrate") as pool:
        for outcome in pool.map(work, assets):
            result.add(outcome)
            if on_asset:
                on_asset(outcome)
    return result


def delete_sources(ctx: MigrationContext) -> int:
    """Delete the Drive files of switched assets (only after verification, only when confirmed)."""
    ctx.options.validate()
    if not ctx.options.delete_source:
        return 0
    with ctx.connect() as conn:
        rows = conn.execute(
            "SELECT asset_id, drive_file_id FROM storage_migration "
            "WHERE status = 'switched' AND verified_at IS NOT NULL AND source_deleted_at IS NULL"
        ).fetchall()
        drive = ctx.thread_drive()
        for asset_id, file_id in rows:
            drive.delete(file_id)  # idempotent: a file already gone is success
            with conn.transaction():
                conn.execute(
                    "UPDATE storage_migration SET source_deleted_at = now(), updated_at = now() WHERE asset_id = %s",
                    (asset_id,),
                )
    return len(rows)


def finalize(conn: psycopg.Connection, result: BatchResult, *, sources_deleted: int = 0) -> MigrationSummary:
    """Count what is left; flip ``media_asset_settings`` to MinIO only when nothing is."""
    remaining = count_drive_assets(conn)
    reasons: Counter[str] = Counter()
    if _status_table_exists(conn):
        for reason_row in conn.execute(
            "SELECT s.error FROM storage_migration s JOIN media_assets m ON m.id::text = s.asset_id "
            "WHERE m.storage_provider = %s",
            (PROVIDER_DRIVE,),
        ).fetchall():
            reasons[_reason_of(reason_row[0])] += 1
    if result.fatal:
        flipped, message = False, f"not switched to MinIO: the run stopped: {result.fatal}"
    elif remaining:
        detail = ", ".join(f"{n} × {r}" for r, n in reasons.most_common()) or "not yet attempted"
        flipped, message = (
            False,
            f"not switched to MinIO: {remaining} assets are still in Google Drive ({detail})",
        )
    else:
        flip_settings_to_minio(conn)
        flipped, message = True, "media_asset_settings now uses MinIO only; no asset is left in Google Drive"
    return MigrationSummary(
        dry_run=False,
        moved=result.moved,
        adopted=result.adopted,
        skipped=result.skipped,
        failed=result.failed,
        not_attempted=result.not_attempted,
        bytes_moved=result.bytes_moved,
        remaining_in_drive=remaining,
        failure_reasons=dict(reasons),
        failures=result.failures[:100],
        settings_flipped=flipped,
        settings_message=message,
        sources_deleted=sources_deleted,
        stopped=result.fatal,
        stored_differently=result.stored_differently,
        stored_differently_examples=result.stored_differently_examples,
    )


def _reason_of(error: str | None) -> str:
    if not error:
        return "not yet attempted"
    return error.split(":", 1)[0].strip() or "error"


#: The app's admin-page key that offered a choice of storage backend; removed by the flip.
STORAGE_CHOICE_SETTING = "media.storage_backend"


def flip_settings_to_minio(conn: psycopg.Connection) -> None:
    """MinIO becomes the only storage: the setting is fixed and the storage choice removed."""
    with conn.transaction():
        conn.execute(
            "UPDATE media_asset_settings SET storage_provider = %s, updated_at = now()", (PROVIDER_MINIO,)
        )
        if conn.execute("SELECT to_regclass('app_settings') IS NOT NULL").fetchone() == (True,):
            conn.execute("DELETE FROM app_settings WHERE key = %s", (STORAGE_CHOICE_SETTING,))


def dry_run(conn: psycopg.Connection, drive: DriveFiles) -> MigrationSummary:
    """What a run would move: counts and bytes from Drive's metadata; nothing is written.

    Each asset goes through :func:`drive_metadata`, as in the real run, so an asset counted as
    movable here fails there only if its bytes disagree with the checksums (see the module doc).
    A Drive outage raises ``DriveUnavailable``: a dry run that cannot see Drive has no answer.
    """
    assets = find_drive_assets(conn)
    would, would_bytes, failures = 0, 0, []
    reasons: Counter[str] = Counter()
    for asset in assets:
        try:
            info = drive_metadata(drive, asset)
        except AssetFailed as exc:
            reasons[exc.reason] += 1
            failures.append({"asset_id": asset.key, "reason": exc.reason, "error": str(exc)})
            continue
        would += 1
        would_bytes += info.size
    return MigrationSummary(
        dry_run=True,
        moved=0,
        adopted=0,
        skipped=0,
        failed=0,
        not_attempted=0,
        bytes_moved=0,
        remaining_in_drive=len(assets),
        failure_reasons=dict(reasons),
        failures=failures[:100],
        settings_flipped=False,
        settings_message="dry run: nothing was changed",
        would_move=would,
        would_move_bytes=would_bytes,
        would_fail=len(assets) - would,
    )


def run_migration(
    ctx: MigrationContext, *, on_asset: Callable[[AssetOutcome], None] | None = None
) -> MigrationSummary:
    """The whole migration in one call (the CLI's path; the Dagster job runs the same steps as ops)."""
    ctx.options.validate()
    if ctx.options.dry_run:
        with ctx.connect() as conn:
            return dry_run(conn, ctx.thread_drive())
    with ctx.connect() as conn:
        batches = plan_batches(conn, ctx.minio, ctx.bucket, ctx.options, ctx.run_id, ctx.endpoint)
    total = BatchResult()
    for batch in batches:
        result = migrate_batch(ctx, batch, on_asset)
        total.merge(result)
        if result.fatal:
            break
    deleted = delete_sources(ctx) if not total.fatal else 0
    with ctx.connect() as conn:
        return finalize(conn, total, sources_deleted=deleted)
