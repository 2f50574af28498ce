"""Google Drive → MinIO migration of the application's media assets (plain functions, no Dagster).

Every ``media_assets`` row whose provider is Google Drive is copied into MinIO, verified and
switched, one asset at a time, with its progress in the ``storage_migration`` table
(``backup_pipeline/sql/storage_migration.sql``). The write ordering is what makes a crash at
any instant harmless (docs/S3-STORAGE-IMPLEMENTATION.md states it as MUST rules):

1. the status row with the asset's fixed target key is committed (``pending``) before any
   upload, so the only object a crash can leave behind is at that key, and the next run
   overwrites or adopts it — never a second copy;
2. the Drive download is streamed into a MinIO upload (multipart above one part) while
   MD5, SHA-256 and size are computed; a multipart upload only becomes an object when it
   completes, so a killed upload leaves no object (its parts are aborted by the next run);
3. the copy is compared with Drive's ``size``/``md5Checksum`` (and ``sha256Checksum``
   when Drive reports one), with the values the application recorded (``size_bytes``,
   ``checksum_md5``, ``checksum_sha256``) and with MinIO's stat of the object; a mismatching
   object is removed, the asset is ``failed`` and retried by the next run;
4. only then, in one transaction, ``media_assets`` is pointed at the object and the status
   becomes ``switched``. Switched objects are never removed by this module.

Before any byte is copied, Drive's metadata is checked with :func:`check_drive_metadata`, the
same function the dry run applies, so both agree on what moves: a trashed file, a file Drive
no longer has, a Google Docs file or shortcut (no binary content) and a row whose recorded
size or checksums disagree with Drive fail with their own reason and leave the row as it is.
Only what the content itself reveals (bytes that do not match Drive's or the recorded
checksums, e.g. a recorded SHA-256 where Drive reports none) is found by the real run alone.

An object already at the target key (an earlier run died between upload and record) is read
back from MinIO and hashed: when it matches Drive's checksums it is adopted, not uploaded again.
"""

from __future__ import annotations

import hashlib
import threading
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any, Protocol

import psycopg
from minio import Minio
from minio.error import S3Error

from backup_pipeline.destinations.base import DestinationError, NotFoundError, StoredFile, TrashedError
from backup_pipeline.services.errors import S3_ERRORS, s3_error_reason

# --- the application's schema, as far as the migration touches it ------------------------

#: media_assets.storage_provider values.
PROVIDER_DRIVE = "google_drive"
PROVIDER_MINIO = "minio"

#: Object keys of migrated assets: ``<prefix><asset id>/<safe file name>`` in the primary bucket.
DEFAULT_KEY_PREFIX = "drive-migrated/"
#: The phrase ``delete_source`` must be confirmed with, typed exactly.
DELETE_SOURCE_CONFIRMATION = "delete migrated files from google drive"
#: Multipart part size: one part is buffered per concurrent upload (memory = concurrency × part).
DEFAULT_PART_SIZE = 16 * 1024 * 1024
MAX_KEY_NAME_BYTES = 200
_HASH_READ = 1024 * 1024

STATUSES = ("pending", "copied", "verified", "switched", "failed")

# Failure reasons (the part of ``storage_migration.error`` before the first colon; summaries
# count by it). Each says whether a rerun can help on its own.
REASON_TRASHED = "in the Google Drive trash"
REASON_NOT_FOUND = "not found in Google Drive"
REASON_NO_CONTENT = "Google Docs file or shortcut (no binary content)"
REASON_RECORDED_MISMATCH = "recorded values differ from Google Drive"
REASON_CHECKSUM = "checksum mismatch"
REASON_DRIVE_ERROR = "Google Drive error"


class MigrationError(Exception):
    """The run cannot go on (bad options, storage unavailable); the message says why."""


class StorageUnavailable(MigrationError):
    """MinIO could not be reached or refused the request: the run stops, the next run continues."""

    reason = "MinIO unavailable"


class DriveUnavailable(MigrationError):
    """Google Drive did not answer after the destination's retries (down, throttling, network):
    the run stops rather than failing every remaining asset the same way; the next run continues."""

    reason = "Google Drive unavailable"


#: Errors that stop a run: every asset after them would fail the same way.
RUN_STOPPERS = (StorageUnavailable, DriveUnavailable)


def stopped_text(exc: StorageUnavailable | DriveUnavailable) -> str:
    """The message, led by the reason: summaries count reasons by the text before the first colon."""
    text = str(exc)
    return text if text.startswith(exc.reason) else f"{exc.reason}: {text}"


class AssetFailed(Exception):
    """This asset cannot be migrated now; ``reason`` is a short class, the message the detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class DriveFiles(Protocol):
    """The part of the destination contract (``destinations/base.py``) the migration reads."""

    def stat(self, file_id: str) -> StoredFile: ...

    def get(self, file_id: str, start: int = 0, end: int | None = None) -> Iterator[bytes]: ...

    def delete(self, file_id: str) -> None: ...


@dataclass(frozen=True)
class MigrationOptions:
    dry_run: bool = False
    batch_size: int = 50
    concurrency: int = 4
    delete_source: bool = False
    confirmation: str | None = None
    part_size: int = DEFAULT_PART_SIZE
    key_prefix: str = DEFAULT_KEY_PREFIX

    def validate(self) -> None:
        problems = []
        if not 1 <= self.batch_size <= 10_000:
            problems.append(f"batch_size must be between 1 and 10000, got {self.batch_size}")
        if not 1 <= self.concurrency <= 16:
            problems.append(f"concurrency must be between 1 and 16, got {self.concurrency}")
        if not 5 * 1024 * 1024 <= self.part_size <= 512 * 1024 * 1024:
            problems.append("part_size must be between 5 MiB (S3's minimum) and 512 MiB")
        if self.key_prefix.startswith("/") or (self.key_prefix and not self.key_prefix.endswith("/")):
            problems.append(
                f"key_prefix must be empty or end with '/' and not start with '/', got {self.key_prefix!r}"
            )
        if self.delete_source and (self.confirmation or "").strip() != DELETE_SOURCE_CONFIRMATION:
            problems.append(
                f"delete_source needs the confirmation phrase typed exactly: {DELETE_SOURCE_CONFIRMATION!r}"
            )
        if problems:
            raise MigrationError("invalid migration options: " + "; ".join(problems))


@dataclass(frozen=True)
class LegacyAsset:
    """A media_assets row still in Google Drive. ``id`` keeps the column's own type; ``recorded_*``
    are the size and checksums the application recorded (None where it recorded none)."""

    id: Any
    drive_file_id: str
    filename: str | None
    content_type: str | None
    recorded_sha256: str | None = None
    recorded_size: int | None = None
    recorded_md5: str | None = None

    @property
    def key(self) -> str:
        return str(self.id)


@dataclass
class AssetOutcome:
    asset_id: str
    result: str  # moved | adopted | skipped | failed | not_attempted
    bytes: int = 0
    reason: str | None = None
    error: str | None = None
    #: The server serves the object with another Content-Type than the one sent (it is
    #: migrated: the bytes are verified and the application's recorded type is kept).
    served_content_type: str | None = None
    sent_content_type: str | None = None


#: How many "stored differently" examples a result keeps (the count is exact).
STORED_DIFFERENTLY_EXAMPLES = 20


@dataclass
class BatchResult:
    moved: int = 0
    adopted: int = 0
    skipped: int = 0
    failed: int = 0
    not_attempted: int = 0
    bytes_moved: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    fatal: str | None = None
    stored_differently: int = 0
    stored_differently_examples: list[dict[str, str]] = field(default_factory=list)

    def add(self, outcome: AssetOutcome) -> None:
        if outcome.served_content_type is not None:
            self.stored_differently += 1
            if len(self.stored_differently_examples) < STORED_DIFFERENTLY_EXAMPLES:
                self.stored_differently_examples.append(
                    {
                        "asset_id": outcome.asset_id,
                        "sent_content_type": outcome.sent_content_type or "",
                        "served_content_type": outcome.served_content_type,
                    }
                )
        if outcome.result == "moved":
            self.moved += 1
            self.bytes_moved += outcome.bytes
        elif outcome.result == "adopted":
            self.adopted += 1
        elif outcome.result == "skipped":
            self.skipped += 1
        elif outcome.result == "failed":
            self.failed += 1
            self.failures.append(
                {"asset_id": outcome.asset_id, "reason": outcome.reason or "", "error": outcome.error or ""}
            )
        else:
            self.not_attempted += 1

    def merge(self, other: BatchResult) -> None:
        for name in (
            "moved",
            "adopted",
            "skipped",
            "failed",
            "not_attempted",
            "bytes_moved",
            "stored_differently",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failures.extend(other.failures)
        room = STORED_DIFFERENTLY_EXAMPLES - len(self.stored_differently_examples)
        self.stored_differently_examples.extend(other.stored_differently_examples[: max(0, room)])
        self.fatal = self.fatal or other.fatal

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchResult:
        return cls(**data)


@dataclass
class MigrationSummary:
    """What a run did and what is left; ``settings_flipped`` only when nothing is left in Drive."""

    dry_run: bool
    moved: int
    adopted: int
    skipped: int
    failed: int
    not_attempted: int
    bytes_moved: int
    remaining_in_drive: int
    failure_reasons: dict[str, int]
    failures: list[dict[str, str]]
    settings_flipped: bool
    settings_message: str
    sources_deleted: int = 0
    would_move: int = 0
    would_move_bytes: int = 0
    would_fail: int = 0
    #: Why the run stopped before trying every asset (MinIO or Google Drive unavailable), if it did.
    stopped: str | None = None
    #: Objects the S3 server serves with another Content-Type than the one sent (see AssetOutcome).
    stored_differently: int = 0
    stored_differently_examples: list[dict[str, str]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.remaining_in_drive == 0 and not self.dry_run

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["complete"] = self.complete
        return data


# --- schema ------------------------------------------------------------------------------


def migration_sql() -> str:
    return resources.files("backup_pipeline.sql").joinpath("storage_migration.sql").read_text("utf-8")


def ensure_schema(conn: psycopg.Connection) -> None:
    """Create the ``storage_migration`` table if needed (idempotent; commits)."""
    with conn.transaction():
        conn.execute(migration_sql())  # type: ignore[call-overload]


def _status_table_exists(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('storage_migration') IS NOT NULL").fetchone()
    return bool(row and row[0])


# --- key layout --------------------------------------------------------------------------


def safe_object_name(filename: str | None) -> str:
    """A file name usable as the last segment of an S3 key.

    Unicode is kept (NFC), path separators and control characters become ``_`` (a name with
    ``/`` must not create pseudo-folders), ``.``/``..`` are replaced, and the name is cut to
    200 UTF-8 bytes keeping its extension.
    """
    name = unicodedata.normalize("NFC", filename or "").strip()
    name = "".join("_" if ch in "/\\" or unicodedata.category(ch) in ("Cc", "Cf") else ch for ch in name)
    if name in ("", ".", ".."):
        name = "file"
    if len(name.encode("utf-8")) > MAX_KEY_NAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        if not (dot and stem and len(ext.encode("utf-8")) <= 16):
            stem, ext = name, ""
        suffix = f".{ext}" if ext else ""
        room = MAX_KEY_NAME_BYTES - len(suffix.encode("utf-8"))
        name = stem.encode("utf-8")[:room].decode("utf-8", errors="ignore") + suffix
    return name


def object_key_for(asset_id: str, filename: str | None, prefix: str = DEFAULT_KEY_PREFIX) -> str:
    """``<prefix><asset id>/<safe file name>``: unique per asset, stable across runs."""
    return f"{prefix}{safe_object_name(asset_id)}/{safe_object_name(filename)}"


def choose_content_type(recorded: str | None) -> str:
    """The content type the application recorded, if it is a well-formed ``type/subtype``.

    Drive's own mimeType is not used: it is often guessed from the name, and the app's
    value is what it served until now.
    """
    value = (recorded or "").strip()
    main, slash, sub = value.partition("/")
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$&^_.+-")
    params_ok = all(32 <= ord(c) < 127 for c in value)
    if (
        slash
        and main
        and sub.split(";")[0].strip()
        and set(main) <= allowed
        and params_ok
        and len(value) <= 255
    ):
        return value
    return "application/octet-stream"


# --- streams -----------------------------------------------------------------------------


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


# --- the database side -------------------------------------------------------------------

_SELECT_LEGACY = (
    "SELECT id, drive_file_id, original_filename, content_type, checksum_sha256, size_bytes, checksum_md5 "
    "FROM media_assets WHERE storage_provider = %s AND drive_file_id IS NOT NULL"
)


def find_drive_assets(conn: psycopg.Connection, asset_ids: list[str] | None = None) -> list[LegacyAsset]:
    """Rows still in Google Drive (all, or those among ``asset_ids``), in id order."""
    if asset_ids is None:
        rows = conn.execute(_SELECT_LEGACY + " ORDER BY id", (PROVIDER_DRIVE,)).fetchall()
    else:
        rows = conn.execute(
            _SELECT_LEGACY + " AND id::text = ANY(%s) ORDER BY id", (PROVIDER_DRIVE, asset_ids)
        ).fetchall()
    return [
        LegacyAsset(r[0], r[1], r[2], r[3], recorded_sha256=r[4], recorded_size=r[5], recorded_md5=r[6])
        for r in rows
    ]


def count_drive_assets(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT count(*) FROM media_assets WHERE storage_provider = %s", (PROVIDER_DRIVE,)
    ).fetchone()
    return int(row[0]) if row else 0


def register_assets(
    conn: psycopg.Connection, assets: list[LegacyAsset], bucket: str, prefix: str, run_id: str
) -> None:
    """Write-ahead: a ``pending`` row with the fixed target key for every asset not yet known."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO storage_migration (asset_id, drive_file_id, target_bucket, target_key, last_run_id) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (asset_id) DO UPDATE "
            "SET drive_file_id = EXCLUDED.drive_file_id, updated_at = now() "
            "WHERE storage_migration.status <> 'switched'",
            [
                (a.key, a.drive_file_id, bucket, object_key_for(a.key, a.filename, prefix), run_id)
                for a in assets
            ],
        )


def _set_status(conn: psycopg.Connection, asset_id: str, status: str, **columns: Any) -> None:
    stamp = {"copied": "copied_at", "verified": "verified_at", "switched": "switched_at"}.get(status)
    sets = ["status = %s", "updated_at = now()"] + [f"{name} = %s" for name in columns]
    if stamp:
        sets.append(f"{stamp} = now()")
    with conn.transaction():
        conn.execute(
            f"UPDATE storage_migration SET {', '.join(sets)} WHERE asset_id = %s",  # type: ignore[arg-type]
            (status, *columns.values(), asset_id),
        )


# --- one asset ---------------------------------------------------------------------------


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


# --- batches and runs --------------------------------------------------------------------


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


# --- storage status ----------------------------------------------------------------------


@dataclass
class BucketUsage:
    name: str
    objects: int
    bytes: int
    truncated: bool = False


@dataclass
class StorageStatus:
    """Primary storage at a glance: is MinIO usable, what it holds, what is still in Drive."""

    endpoint: str
    reachable: bool
    error: str | None
    buckets: list[BucketUsage]
    primary_bucket: str
    primary_bucket_exists: bool
    assets_in_drive: int | None
    assets_in_minio: int | None
    settings_provider: str | None
    migration_status: dict[str, int]

    @property
    def healthy(self) -> bool:
        return self.reachable and self.primary_bucket_exists

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["healthy"] = self.healthy
        return data


def storage_status(
    connect: Callable[[], psycopg.Connection],
    minio: Minio,
    endpoint: str,
    primary_bucket: str,
    *,
    max_objects_per_bucket: int = 100_000,
) -> StorageStatus:
    """Never raises for an unreachable MinIO: the status says so (the caller decides severity)."""
    buckets: list[BucketUsage] = []
    error = None
    try:
        for bucket in minio.list_buckets():
            usage = BucketUsage(bucket.name, 0, 0)
            for obj in minio.list_objects(bucket.name, recursive=True):
                usage.objects += 1
                usage.bytes += obj.size or 0
                if usage.objects >= max_objects_per_bucket:
                    usage.truncated = True
                    break
            buckets.append(usage)
    except S3_ERRORS as exc:
        error = s3_error_reason(exc, endpoint, "listing buckets and objects")
    in_drive = in_minio = None
    provider = None
    counts: dict[str, int] = {}
    with connect() as conn:
        rows: dict[str, int] = dict(
            conn.execute(
                "SELECT storage_provider, count(*) FROM media_assets GROUP BY storage_provider"
            ).fetchall()
        )
        in_drive, in_minio = int(rows.get(PROVIDER_DRIVE, 0)), int(rows.get(PROVIDER_MINIO, 0))
        setting = conn.execute("SELECT storage_provider FROM media_asset_settings LIMIT 1").fetchone()
        provider = setting[0] if setting else None
        if _status_table_exists(conn):
            counts = {
                str(s): int(n)
                for s, n in conn.execute(
                    "SELECT status, count(*) FROM storage_migration GROUP BY status"
                ).fetchall()
            }
    return StorageStatus(
        endpoint=endpoint,
        reachable=error is None,
        error=error,
        buckets=buckets,
        primary_bucket=primary_bucket,
        primary_bucket_exists=any(b.name == primary_bucket for b in buckets),
        assets_in_drive=in_drive,
        assets_in_minio=in_minio,
        settings_provider=provider,
        migration_status=counts,
    )
