"""One asset: Drive metadata checked, the body streamed into MinIO with MD5/SHA-256, verified, then the row switched (see the package docstring for the write ordering)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psycopg
from minio import Minio
from minio.error import S3Error

from backup_pipeline.destinations.base import DestinationError, NotFoundError, StoredFile, TrashedError
from backup_pipeline.services.errors import S3_ERRORS, s3_error_reason
from backup_pipeline.services.migration.keys import (
    choose_content_type,
)
from backup_pipeline.services.migration.model import (
    _HASH_READ,
    PROVIDER_DRIVE,
    PROVIDER_MINIO,
    REASON_CHECKSUM,
    REASON_DRIVE_ERROR,
    REASON_NO_CONTENT,
    REASON_NOT_FOUND,
    REASON_RECORDED_MISMATCH,
    REASON_TRASHED,
    RUN_STOPPERS,
    AssetFailed,
    AssetOutcome,
    DriveFiles,
    DriveUnavailable,
    LegacyAsset,
    MigrationOptions,
    StorageUnavailable,
    stopped_text,
)
from backup_pipeline.services.migration.status_table import (
    _set_status,
)


class HashingReader:
    """A file-like ``read(n)`` over an iterator of blocks, hashing what passes.

    ``read(n)`` returns exactly ``n`` bytes unless the stream ends, because minio concatenates
    short reads into a part (quadratic copying with small blocks). An exception raised by the
    source is kept in ``source_error`` so it can be told apart from an S3 failure.
    """

    def __init__(self, blocks: Iterable[bytes]):
        self._blocks = iter(blocks)
        self._buffer = bytearray()
        self._eof = False
        self.size = 0
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.sha256 = hashlib.sha256()
        self.source_error: BaseException | None = None

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or len(self._buffer) < n):
            try:
                block = next(self._blocks)
            except StopIteration:
                self._eof = True
                break
            except BaseException as exc:
                self.source_error = exc
                raise
            self._buffer += block
        if n < 0 or n >= len(self._buffer):
            out = bytes(self._buffer)
            self._buffer.clear()
        else:
            out = bytes(self._buffer[:n])
            del self._buffer[:n]
        self.size += len(out)
        self.md5.update(out)
        self.sha256.update(out)
        return out


@dataclass(frozen=True)
class Digests:
    size: int
    md5: str
    sha256: str


def _hash_object(client: Minio, bucket: str, key: str) -> Digests:
    response = client.get_object(bucket, key)
    try:
        # Raw bytes: a Content-Encoding the object was stored with must not be undone.
        reader = HashingReader(response.stream(_HASH_READ, decode_content=False))
        while reader.read(_HASH_READ):
            pass
        return Digests(reader.size, reader.md5.hexdigest(), reader.sha256.hexdigest())
    finally:
        response.close()
        response.release_conn()


@dataclass
class MigrationContext:
    """What a worker needs; ``connect`` and ``drive`` make a new connection/client per thread."""

    connect: Callable[[], psycopg.Connection]
    drive: Callable[[], DriveFiles]
    minio: Minio
    bucket: str
    options: MigrationOptions
    run_id: str
    endpoint: str = "MinIO"
    log: Callable[[str], None] = lambda message: None
    stop: threading.Event = field(default_factory=threading.Event)
    _local: threading.local = field(default_factory=threading.local)

    def thread_drive(self) -> DriveFiles:
        if not hasattr(self._local, "drive"):
            self._local.drive = self.drive()
        return self._local.drive  # type: ignore[no-any-return]


def _storage_error(ctx: MigrationContext, exc: BaseException, action: str) -> StorageUnavailable:
    return StorageUnavailable(
        f"{s3_error_reason(exc, ctx.endpoint, action)} (rerun the migration once S3 works again)"
    )


def _stat_object(ctx: MigrationContext, key: str) -> int | None:
    stored = _stat_stored(ctx, key)
    return None if stored is None else stored[0]


def _stat_stored(ctx: MigrationContext, key: str) -> tuple[int, str | None] | None:
    """(size, served Content-Type) of ``key``, None when it is not there."""
    try:
        stat = ctx.minio.stat_object(ctx.bucket, key)
        return int(stat.size or 0), stat.content_type
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
            return None
        raise _storage_error(ctx, exc, f"stat of {key!r}") from None
    except S3_ERRORS as exc:
        raise _storage_error(ctx, exc, f"stat of {key!r}") from None


def drive_metadata(drive: DriveFiles, asset: LegacyAsset) -> StoredFile:
    """Drive's metadata of the asset's file, checked by :func:`check_drive_metadata`.

    Raises ``AssetFailed`` for what concerns this file only, ``DriveUnavailable`` when Drive did
    not answer (the destination already retried).
    """
    file_id = asset.drive_file_id
    try:
        info = drive.stat(file_id)
    except TrashedError:
        raise AssetFailed(
            REASON_TRASHED,
            f"file {file_id} is in the trash, where Google Drive keeps it for 30 days: restore it "
            "(drive.google.com → Trash → right-click the file → Restore) and rerun the migration",
        ) from None
    except NotFoundError:
        raise AssetFailed(REASON_NOT_FOUND, f"file {file_id} (HTTP 404)") from None
    except DestinationError as exc:
        if exc.retryable:
            raise DriveUnavailable(
                f"{DriveUnavailable.reason}: {exc} (rerun the migration once Google Drive answers again)"
            ) from None
        raise AssetFailed(REASON_DRIVE_ERROR, str(exc)) from None
    check_drive_metadata(asset, info)
    return info


def check_drive_metadata(asset: LegacyAsset, info: StoredFile) -> None:
    """What Drive's metadata alone says about moving this asset; the dry run and the real run
    both apply it, so they agree on what moves.

    A recorded value that differs from Drive fails the asset: the row is left as it is (never
    rewritten with Drive's values) until someone decides which side is right.
    """
    file_id = asset.drive_file_id
    if info.md5 is None and info.sha256 is None:
        raise AssetFailed(
            REASON_NO_CONTENT,
            f"file {file_id} has no md5Checksum: a Google Docs, Sheets or Slides document or a shortcut "
            "has no binary content to copy; download or export it from Drive and store it in the "
            "application again",
        )
    differences = []
    if asset.recorded_size is not None and asset.recorded_size != info.size:
        differences.append(f"size_bytes {asset.recorded_size} recorded, Drive reports {info.size}")
    if asset.recorded_md5 and info.md5 and asset.recorded_md5.lower() != info.md5.lower():
        differences.append(f"checksum_md5 {asset.recorded_md5} recorded, Drive reports {info.md5}")
    if asset.recorded_sha256 and info.sha256 and asset.recorded_sha256.lower() != info.sha256.lower():
        differences.append(f"checksum_sha256 {asset.recorded_sha256} recorded, Drive reports {info.sha256}")
    if differences:
        raise AssetFailed(REASON_RECORDED_MISMATCH, _recorded_mismatch(file_id, differences))


def _recorded_mismatch(file_id: str, differences: list[str]) -> str:
    return (
        f"file {file_id}: {'; '.join(differences)}; the row was left unchanged: correct the row or "
        "the file, then rerun the migration"
    )


def _check_against_drive(info: StoredFile, got: Digests, asset: LegacyAsset) -> None:
    """The copied bytes against Drive's metadata, then against what the application recorded."""
    if got.size != info.size:
        raise AssetFailed("size mismatch", f"Drive reports {info.size} bytes, {got.size} were copied")
    if info.md5 and got.md5 != info.md5.lower():
        raise AssetFailed(REASON_CHECKSUM, f"Drive md5Checksum {info.md5}, copied data has md5 {got.md5}")
    if info.sha256 and got.sha256 != info.sha256.lower():
        raise AssetFailed(
            REASON_CHECKSUM, f"Drive sha256Checksum {info.sha256}, copied data has sha256 {got.sha256}"
        )
    differences = []
    if asset.recorded_size is not None and got.size != asset.recorded_size:
        differences.append(f"size_bytes {asset.recorded_size} recorded, the file has {got.size}")
    if asset.recorded_md5 and got.md5 != asset.recorded_md5.lower():
        differences.append(f"checksum_md5 {asset.recorded_md5} recorded, the file has md5 {got.md5}")
    if asset.recorded_sha256 and got.sha256 != asset.recorded_sha256.lower():
        differences.append(
            f"checksum_sha256 {asset.recorded_sha256} recorded, the file has sha256 {got.sha256}"
        )
    if differences:
        raise AssetFailed(REASON_RECORDED_MISMATCH, _recorded_mismatch(info.id, differences))


def migrate_asset(ctx: MigrationContext, asset: LegacyAsset) -> AssetOutcome:
    """Copy, verify and switch one asset; every failure but a storage outage becomes an outcome."""
    if ctx.stop.is_set():
        return AssetOutcome(asset.key, "not_attempted")
    with ctx.connect() as conn:
        row = conn.execute(
            "UPDATE storage_migration SET attempts = attempts + 1, last_run_id = %s, updated_at = now(), "
            "status = CASE WHEN status = 'failed' THEN 'pending' ELSE status END "
            "WHERE asset_id = %s AND status <> 'switched' RETURNING target_key",
            (ctx.run_id, asset.key),
        ).fetchone()
        conn.commit()
        if row is None:
            return AssetOutcome(asset.key, "skipped")
        key: str = row[0]
        try:
            return _copy_verify_switch(ctx, conn, asset, key)
        except AssetFailed as exc:
            _set_status(conn, asset.key, "failed", error=str(exc)[:2000])
            ctx.log(f"asset {asset.key}: failed: {exc}")
            return AssetOutcome(asset.key, "failed", reason=exc.reason, error=str(exc))
        except RUN_STOPPERS as exc:
            _set_status(conn, asset.key, "failed", error=stopped_text(exc)[:2000])
            raise


def _copy_verify_switch(
    ctx: MigrationContext, conn: psycopg.Connection, asset: LegacyAsset, key: str
) -> AssetOutcome:
    drive = ctx.thread_drive()
    info = drive_metadata(drive, asset)
    content_type = choose_content_type(asset.content_type)

    adopted = False
    got: Digests | None = None
    existing_size = _stat_object(ctx, key)
    if existing_size is not None and existing_size == info.size:
        try:
            candidate = _hash_object(ctx.minio, ctx.bucket, key)
        except S3_ERRORS as exc:
            raise _storage_error(ctx, exc, f"read-back of {key!r}") from None
        try:
            _check_against_drive(info, candidate, asset)
            got, adopted = candidate, True
        except AssetFailed:
            got = None  # a stale or foreign object at our key: overwritten below
    if got is None:
        got = _upload(ctx, drive, asset, info, key, content_type)

    _set_status(
        conn,
        asset.key,
        "copied",
        size_bytes=got.size,
        md5=got.md5,
        sha256=got.sha256,
        drive_md5=info.md5,
        content_type=content_type,
        error=None,
    )
    try:
        _check_against_drive(info, got, asset)
        stored = _stat_stored(ctx, key)
        if stored is None or stored[0] != got.size:
            raise AssetFailed(
                "object check failed",
                f"MinIO reports {None if stored is None else stored[0]} bytes for {key!r}, expected {got.size}",
            )
    except AssetFailed:
        _remove_unverified(ctx, key)
        raise
    _set_status(conn, asset.key, "verified")
    if not _switch(conn, asset, ctx.bucket, key, got, content_type):
        return AssetOutcome(asset.key, "skipped")
    ctx.log(f"asset {asset.key}: {'adopted' if adopted else 'moved'} {got.size} bytes to {ctx.bucket}/{key}")
    outcome = AssetOutcome(asset.key, "adopted" if adopted else "moved", bytes=0 if adopted else got.size)
    served = stored[1]
    if served and served.split(";")[0].strip().lower() != content_type.split(";")[0].strip().lower():
        # Some S3 servers (SeaweedFS) pick a type from the key's extension instead of the one
        # sent. The bytes are verified, so the file is migrated; the application's recorded type
        # stays in its row, and the difference is reported rather than hidden.
        ctx.log(
            f"warning: asset {asset.key}: the S3 server serves {ctx.bucket}/{key} as {served!r}, "
            f"not the {content_type!r} that was sent; the application's recorded type is kept"
        )
        outcome.served_content_type, outcome.sent_content_type = served, content_type
    return outcome


def _upload(
    ctx: MigrationContext,
    drive: DriveFiles,
    asset: LegacyAsset,
    info: StoredFile,
    key: str,
    content_type: str,
) -> Digests:
    # Range requests on an empty file are answered 416 by real servers: nothing to download.
    blocks: Iterable[bytes] = drive.get(asset.drive_file_id) if info.size > 0 else ()
    reader = HashingReader(blocks)
    try:
        ctx.minio.put_object(
            ctx.bucket,
            key,
            reader,  # type: ignore[arg-type]
            length=-1,
            part_size=ctx.options.part_size,
            content_type=content_type,
            metadata={"drive-file-id": asset.drive_file_id, "asset-id": asset.key},
            # One part in flight per upload keeps memory at one part per worker.
            num_parallel_uploads=1,
        )
    except BaseException as exc:
        if reader.source_error is not None:
            if isinstance(reader.source_error, NotFoundError):
                raise AssetFailed(REASON_NOT_FOUND, f"file {asset.drive_file_id} (HTTP 404)") from None
            if isinstance(reader.source_error, DestinationError) and reader.source_error.retryable:
                raise DriveUnavailable(
                    f"{DriveUnavailable.reason}: download of {asset.drive_file_id}: {reader.source_error} "
                    "(rerun the migration once Google Drive answers again)"
                ) from None
            if isinstance(reader.source_error, DestinationError):
                raise AssetFailed("Google Drive download failed", str(reader.source_error)) from None
            raise
        if isinstance(exc, S3_ERRORS):
            raise _storage_error(ctx, exc, f"upload of {key!r}") from None
        raise
    return Digests(reader.size, reader.md5.hexdigest(), reader.sha256.hexdigest())


def _remove_unverified(ctx: MigrationContext, key: str) -> None:
    """Nothing points at an unverified object; removing it keeps the bucket free of bad copies."""
    try:
        ctx.minio.remove_object(ctx.bucket, key)
    except S3_ERRORS as exc:
        raise _storage_error(ctx, exc, f"removal of unverified {key!r}") from None


def _switch(
    conn: psycopg.Connection, asset: LegacyAsset, bucket: str, key: str, got: Digests, content_type: str
) -> bool:
    """Point the row at the object and mark ``switched`` in one transaction; False when the row changed.

    The size and checksums written equal the recorded ones (``_check_against_drive`` compared
    them) or fill in values the application had not recorded; nothing recorded is overwritten.
    """
    with conn.transaction():
        row = conn.execute(
            "SELECT storage_provider, drive_file_id FROM media_assets WHERE id = %s FOR UPDATE", (asset.id,)
        ).fetchone()
        if row is None or row[0] != PROVIDER_DRIVE or row[1] != asset.drive_file_id:
            conn.execute(
                "UPDATE storage_migration SET status = 'failed', updated_at = now(), error = %s WHERE asset_id = %s",
                ("the media asset was changed or deleted during the migration", asset.key),
            )
            return False
        conn.execute(
            "UPDATE media_assets SET storage_provider = %s, bucket = %s, object_key = %s, drive_file_id = NULL, "
            "size_bytes = %s, checksum_sha256 = %s, checksum_md5 = %s, content_type = %s WHERE id = %s",
            (PROVIDER_MINIO, bucket, key, got.size, got.sha256, got.md5, content_type, asset.id),
        )
        conn.execute(
            "UPDATE storage_migration SET status = 'switched', switched_at = now(), updated_at = now(), error = NULL "
            "WHERE asset_id = %s",
            (asset.key,),
        )
    return True
