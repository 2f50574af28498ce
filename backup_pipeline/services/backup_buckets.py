"""Bucket discovery and object streaming for the bucket parts.

Every object is read with one GET whose response headers (size, ETag, content type,
user metadata) describe exactly the bytes that follow, so an object overwritten between
the listing and the read is archived consistently (the new version) and recorded as
changed; an object deleted in between is recorded as vanished. Neither fails the backup:
the application keeps writing while a backup runs.

Small objects are read ahead on a few threads (:class:`ReadAhead`): one GET costs a round
trip and the server's per-request work, which for buckets of many small files dominates
the export when done one at a time. The archive still receives the objects in listing
order, one at a time, and memory stays bounded by the read-ahead window whatever the
bucket holds. Objects above the read-ahead size are streamed when their turn comes.
Tags are read with a second request only for objects whose GET says they have some
(``x-amz-tagging-count``, sent by AWS S3, MinIO and Ceph RGW); ``always`` reads them for
every object on a server that does not send that header.

Fidelity: bodies are read raw (``decode_content=False``: an object stored with
``Content-Encoding: gzip`` is archived as the gzip bytes S3 holds, never inflated); every
listed key is archived, including keys ending in ``/``; the standard headers and user
metadata are recorded as the wire carries them (``object_headers``) with the last-modified
time. An object that cannot be read for a reason of its own (see :data:`UNREADABLE_CODES`,
keys the S3 client cannot address) is skipped and reported as ``unreadable``, never silently.
A versioned bucket is reported (:func:`bucket_versioning`): only current versions are kept.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from minio import Minio
from minio.error import S3Error

from ..destinations.base import Destination
from .backup_index import upload_bucket_part
from .backup_parts import UNDO_PREFIX, BackupError, ErrorCode, bucket_part_name, shard_part_name
from .backup_upload import Encryptor, UploadedPart
from .bucket_versioning import VersioningReport, bucket_versioning, s3_failure
from .errors import S3_ERRORS, s3_endpoint
from .object_headers import record_headers, wire_text
from .progress import ProgressTracker

if TYPE_CHECKING:
    from .bucket_shards import ShardRange

READ_SIZE = 1024 * 1024
_TAG_COUNT_HEADER = "x-amz-tagging-count"
#: GET errors that concern one object, not the server: the object is skipped and reported.
#: InvalidObjectState: archived (Glacier-class) objects that must be restored before a GET.
UNREADABLE_CODES = frozenset({"InvalidObjectState"})

#: ``when_counted``: a tagging request only for objects whose GET reports tags;
#: ``always``: one for every object (servers that do not send x-amz-tagging-count).
TagReading = Literal["when_counted", "always"]


@dataclass(frozen=True)
class ReadAhead:
    """How far the export reads small objects ahead of the archive writer.

    Memory held by read-ahead is at most ``window_bytes`` (plus the object being archived);
    ``workers`` GETs are in flight at once. ``workers=1`` reads one object at a time.
    """

    workers: int = 8
    object_max_bytes: int = 2 * 1024 * 1024
    window_bytes: int = 16 * 1024 * 1024
    window_objects: int = 64

    def __post_init__(self) -> None:
        if self.workers < 1 or self.object_max_bytes < 0 or self.window_bytes < self.object_max_bytes:
            raise ValueError("ReadAhead needs workers >= 1 and window_bytes >= object_max_bytes >= 0")


NO_READ_AHEAD = ReadAhead(workers=1, object_max_bytes=0, window_bytes=0, window_objects=1)


@dataclass(frozen=True)
class BucketSummary:
    name: str
    objects: int
    bytes: int
    #: The listing ascended strictly by key (UTF-8 byte order): its inventory can be a streamed part
    #: (BACKUP-FORMAT.md §5.3), which needs that order. SeaweedFS lists keys under a ``/`` in
    #: directory order, which can differ.
    in_key_order: bool = True


@dataclass(frozen=True)
class ListedObject:
    key: str
    size: int
    etag: str
    last_modified: dt.datetime | None = None


@dataclass
class ObjectRecord:
    """One archived object as the manifest inventory records it."""

    key: str
    size: int
    sha256: str
    etag: str
    content_type: str
    # For the inventory part (``archive/inventory.py``): what the tar's pax records hold.
    last_modified: dt.datetime | None = None
    headers: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


#: Yielded by a listing given to :func:`iter_bucket_objects` when it wants the archive writer to
#: catch up (the incremental export holds inventory lines until the objects before them are archived).
PAUSE = ListedObject("", -1, "")


@dataclass
class BucketExportReport:
    """What an export saw: archived objects, and the anomalies the manifest records.

    Each anomaly is ``{"key", "declared_size" (listing), "actual_size" (GET; None when not
    read)}``, plus ``"detail"`` for ``unreadable`` (why it was skipped) and ``inexact``
    (which headers were not UTF-8; the object itself was archived).
    """

    bucket: str
    objects: list[ObjectRecord] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)
    vanished: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[dict[str, Any]] = field(default_factory=list)
    inexact: list[dict[str, Any]] = field(default_factory=list)
    listed: int = 0
    #: False: archived objects are counted, not kept (the inventory part records them instead).
    keep_records: bool = True
    archived: int = 0
    archived_bytes: int = 0

    @property
    def object_count(self) -> int:
        return self.archived

    @property
    def plaintext_bytes(self) -> int:
        return self.archived_bytes


def select_buckets(available: Sequence[str], include: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """The buckets to back up: ``include`` (all when empty) minus ``exclude``; a missing included bucket fails."""
    if include:
        missing = sorted(set(include) - set(available))
        if missing:
            raise BackupError(
                ErrorCode.BUCKET_NOT_FOUND,
                f"BACKUP_PIPELINE_BUCKETS_INCLUDE names buckets that do not exist: {', '.join(missing)}",
            )
        chosen = [b for b in available if b in set(include)]
    else:
        chosen = list(available)
    return sorted(b for b in chosen if b not in set(exclude))


def discover_buckets(client: Minio, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
    try:
        available = sorted(b.name for b in client.list_buckets())
    except S3_ERRORS as exc:
        raise s3_failure(exc, "listing buckets", s3_endpoint(client)) from None
    return select_buckets(available, include, exclude)


def iter_listing(client: Minio, bucket: str) -> Iterator[ListedObject]:
    """Every object of ``bucket`` (minio follows continuation tokens page by page, 1 000 keys each)."""
    try:
        # No delimiter (recursive): every item is an object, including keys ending in "/"
        # (minio-py calls those is_dir, but without a delimiter they are not prefixes).
        for obj in client.list_objects(bucket, recursive=True):
            if obj.object_name is None or obj.object_name.startswith(UNDO_PREFIX):
                continue  # a restore's undo copies (left by a killed one) are not the application's
            yield ListedObject(
                key=obj.object_name,
                size=int(obj.size or 0),
                etag=(obj.etag or "").strip('"'),
                last_modified=obj.last_modified,
            )
    except S3_ERRORS as exc:
        raise s3_failure(exc, f"listing bucket {bucket!r}", s3_endpoint(client)) from None


class ObjectBody:
    """A GET response as a binary reader that hashes and counts what passes through.

    A body cut short (S3 stopped mid-object) raises BackupError, never a silently short read.
    """

    def __init__(
        self,
        response: Any,
        expected_size: int,
        *,
        what: str,
        endpoint: str,
        on_bytes: Callable[[int], None] | None = None,
    ):
        self._response = response
        self._expected = expected_size
        self._what = what
        self._endpoint = endpoint
        self.on_bytes = on_bytes
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        if self.closed:
            return b""
        want = READ_SIZE if n is None or n < 0 else n
        try:
            # Raw: the bytes S3 stores, never inflated per Content-Encoding.
            data = self._response.read(min(want, READ_SIZE), decode_content=False)
        except S3_ERRORS as exc:
            raise s3_failure(exc, f"reading {self._what}", self._endpoint) from None
        if not data:
            if self.size != self._expected:
                raise BackupError(
                    ErrorCode.S3_UNREACHABLE,
                    f"S3 endpoint {self._endpoint}: {self._what} ended after {self.size} of "
                    f"{self._expected} bytes",
                    retryable=True,
                )
            return b""
        self.size += len(data)
        self.sha256.update(data)
        if self.on_bytes:
            self.on_bytes(len(data))
        return bytes(data)

    def read_all(self) -> bytes:
        """The whole remaining body (for objects small enough to hold), then closed."""
        try:
            return b"".join(iter(lambda: self.read(READ_SIZE), b""))
        finally:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            # urllib3 already returned the connection of a fully read body to the pool; close()
            # drops only one with unread bytes on the wire.
            self._response.close()
            self._response.release_conn()


class BufferedObjectBody:
    """A body read ahead into memory by a worker thread, handed out like :class:`ObjectBody`.

    ``sha256`` covers the whole body (computed while it was read); ``size`` counts what the
    archive has read so far, so the check that the archive consumed every byte still holds.
    """

    def __init__(self, data: bytes, sha256: Any) -> None:
        self._data = memoryview(data)
        self.sha256 = sha256
        self.size = 0
        self.closed = False
        self.on_bytes: Callable[[int], None] | None = None

    def read(self, n: int = -1) -> bytes:
        if self.closed:
            return b""
        want = READ_SIZE if n is None or n < 0 else n
        data = bytes(self._data[self.size : self.size + want])
        self.size += len(data)
        if data and self.on_bytes:
            self.on_bytes(len(data))
        return data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._data = memoryview(b"")


@dataclass
class OpenedObject:
    """An object whose GET is under way: headers known, body not yet read."""

    bucket: str
    key: str
    size: int
    etag: str
    content_type: str
    metadata: dict[str, str]
    tags: dict[str, str]
    last_modified: dt.datetime | None
    body: ObjectBody | BufferedObjectBody
    #: Recorded standard headers (``object_headers.RECORDED_HEADERS``).
    headers: dict[str, str] = field(default_factory=dict)
    #: Header names whose value was not UTF-8 (recorded with replacements).
    inexact_headers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class UnreadableObject:
    """A listed object skipped for a reason of its own (reported, never silently dropped)."""

    reason: str


#: The anomaly ``detail`` of such a key (also in the test vectors' manifest: keep the wording).
DOT_SEGMENT_REASON = "the S3 client library cannot address a key with a '.' or '..' segment"
#: What the run's warning tells the operator to do about them (docs/ARCHITECTURE.md, known gaps).
DOT_SEGMENT_ADVICE = (
    "a key with a '.' or '..' path segment is legal on AWS S3 but minio-py, the S3 library this "
    "pipeline uses, cannot read it: such objects are in no backup until the application gives them "
    "keys without those segments (copy each to its new key with a client that sends the key "
    "unchanged, then delete the original); the next backup then includes them"
)


def client_cannot_address(key: str) -> bool:
    """minio-py refuses every request for a key with a ``.`` or ``..`` path segment."""
    return any(segment in (".", "..") for segment in key.split("/"))


def last_modified_of(header: str | None, listed: dt.datetime | None) -> dt.datetime | None:
    """The object's last-modified time: the listing's (millisecond precision) when it is the
    same second as the GET's ``Last-Modified``, else the GET's (the listing saw an older version)."""
    parsed: dt.datetime | None = None
    if header:
        try:
            parsed = email.utils.parsedate_to_datetime(header).astimezone(dt.UTC)
        except (TypeError, ValueError):
            parsed = None
    if listed is not None:
        listed = listed.astimezone(dt.UTC)
        if parsed is None or listed.replace(microsecond=0) == parsed:
            return listed
    return parsed


def _has_tags(headers: Any, tag_reading: TagReading) -> bool:
    if tag_reading == "always":
        return True
    count = headers.get(_TAG_COUNT_HEADER)
    return bool(count) and count.strip() != "0"


def open_object(
    client: Minio,
    bucket: str,
    listed: ListedObject,
    *,
    on_bytes: Callable[[int], None] | None = None,
    tag_reading: TagReading = "when_counted",
) -> OpenedObject | UnreadableObject | None:
    """GET one object; None when it vanished since the listing."""
    endpoint = s3_endpoint(client)
    what = f"s3://{bucket}/{listed.key}"
    if client_cannot_address(listed.key):
        return UnreadableObject(DOT_SEGMENT_REASON)
    try:
        response = client.get_object(bucket, listed.key)
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchObject", "NoSuchVersion"):
            return None
        if exc.code in UNREADABLE_CODES:
            return UnreadableObject(f"the server refused to read it: {exc.code}")
        raise s3_failure(exc, f"reading {what}", endpoint) from None
    except S3_ERRORS as exc:
        raise s3_failure(exc, f"reading {what}", endpoint) from None
    try:
        headers = response.headers
        size = int(headers.get("Content-Length", "0"))
        etag = (headers.get("ETag") or "").strip('"')
        try:
            tags_obj = client.get_object_tags(bucket, listed.key) if _has_tags(headers, tag_reading) else None
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                # Deleted between GET and tagging read; the body is still readable from the GET.
                tags_obj = None
            else:
                raise
        tags = dict(tags_obj or {})
    except S3_ERRORS as exc:
        response.close()
        response.release_conn()
        raise s3_failure(exc, f"reading tags of {what}", endpoint) from None
    recorded = record_headers(headers.items())
    return OpenedObject(
        bucket=bucket,
        key=listed.key,
        size=size,
        etag=etag,
        content_type=wire_text(headers.get("Content-Type") or "application/octet-stream")[0],
        metadata=recorded.metadata,
        tags=tags,
        last_modified=last_modified_of(headers.get("Last-Modified"), listed.last_modified),
        body=ObjectBody(response, size, what=what, endpoint=endpoint, on_bytes=on_bytes),
        headers=recorded.headers,
        inexact_headers=recorded.inexact,
    )


def read_object_ahead(
    client: Minio, bucket: str, listed: ListedObject, read_ahead: ReadAhead, tag_reading: TagReading
) -> OpenedObject | UnreadableObject | None:
    """GET one object on a read-ahead thread; a body within ``object_max_bytes`` is read into memory.

    An object that grew beyond that since the listing keeps its streaming body: the consumer
    reads it when its turn comes, as it would a large object.
    """
    opened = open_object(client, bucket, listed, tag_reading=tag_reading)
    if not isinstance(opened, OpenedObject) or opened.size > read_ahead.object_max_bytes:
        return opened
    streaming = opened.body
    assert isinstance(streaming, ObjectBody)
    data = streaming.read_all()
    opened.body = BufferedObjectBody(data, streaming.sha256)
    return opened


def _discard_result(future: Future[OpenedObject | UnreadableObject | None]) -> None:
    """Done-callback of an abandoned read-ahead: close its body so its connection is freed."""
    if future.cancelled() or future.exception() is not None:
        return
    opened = future.result()
    if isinstance(opened, OpenedObject):
        opened.body.close()


class _ReadAheadQueue:
    """Listed objects in listing order, the small ones already being fetched on a thread pool."""

    def __init__(
        self,
        client: Minio,
        bucket: str,
        read_ahead: ReadAhead,
        tag_reading: TagReading,
        pool: ThreadPoolExecutor | None,
        listing: Iterator[ListedObject] | None = None,
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._read_ahead = read_ahead
        self._tag_reading = tag_reading
        self._pool = pool
        self._listing = listing if listing is not None else iter_listing(client, bucket)
        self._held: ListedObject | None = None
        self._exhausted = False
        self._pending: deque[tuple[ListedObject, Future[OpenedObject | UnreadableObject | None] | None]] = (
            deque()
        )
        self._pending_bytes = 0

    def _fill(self) -> None:
        ahead = self._read_ahead
        while not self._exhausted and len(self._pending) < ahead.window_objects:
            if self._held is None:
                self._held = next(self._listing, None)
                if self._held is None:
                    self._exhausted = True
                    return
                if self._held is PAUSE:
                    self._held = None
                    if self._pending:
                        return
                    continue
            listed = self._held
            if self._pool is None or listed.size > ahead.object_max_bytes:
                # Opened only when its turn comes: a large response left unread for long
                # could be timed out by the server.
                self._pending.append((listed, None))
            elif self._pending and self._pending_bytes + listed.size > ahead.window_bytes:
                return
            else:
                future = self._pool.submit(
                    read_object_ahead, self._client, self._bucket, listed, ahead, self._tag_reading
                )
                self._pending.append((listed, future))
                self._pending_bytes += listed.size
            self._held = None

    def next(self) -> tuple[ListedObject, OpenedObject | UnreadableObject | None] | None:
        """The next listed object and its opened GET (None when it vanished); None at the end."""
        self._fill()
        if not self._pending:
            return None
        listed, future = self._pending.popleft()
        if future is None:
            opened = open_object(self._client, self._bucket, listed, tag_reading=self._tag_reading)
        else:
            self._pending_bytes -= listed.size
            opened = future.result()
        # Start the following GETs while the consumer archives this one.
        self._fill()
        return listed, opened

    def abandon(self) -> None:
        for _, future in self._pending:
            if future is not None and not future.cancel():
                future.add_done_callback(_discard_result)
        self._pending.clear()


def iter_bucket_objects(
    client: Minio,
    bucket: str,
    report: BucketExportReport,
    *,
    on_bytes: Callable[[int], None] | None = None,
    on_object_done: Callable[[ObjectRecord], None] | None = None,
    read_ahead: ReadAhead = ReadAhead(),
    tag_reading: TagReading = "when_counted",
    listing: Iterator[ListedObject] | None = None,
    on_skipped: Callable[[str], None] | None = None,
) -> Generator[OpenedObject, None, None]:
    """Every listed object in listing order, recording vanished/changed ones in ``report``.

    The consumer reads each body to its end before asking for the next object; meanwhile
    up to ``read_ahead.workers`` GETs of the following small objects are under way. The
    inventory record of an object is appended when the consumer asks for the next one
    (i.e. after its body was fully read). Closing the generator abandons the read-ahead:
    fetched bodies are closed, GETs not yet started are cancelled. ``listing`` replaces the
    bucket's own listing (the incremental export passes only new and changed objects, and
    :data:`PAUSE`); ``on_skipped`` hears of every listed object that was not archived.
    """
    pool = (
        ThreadPoolExecutor(max_workers=read_ahead.workers, thread_name_prefix=f"s3-read-{bucket}")
        if read_ahead.workers > 1 and read_ahead.object_max_bytes > 0
        else None
    )
    queue = _ReadAheadQueue(client, bucket, read_ahead, tag_reading, pool, listing)
    try:
        while (item := queue.next()) is not None:
            listed, opened = item
            report.listed += 1
            if opened is None:
                report.vanished.append({"key": listed.key, "declared_size": listed.size, "actual_size": None})
                if on_skipped:
                    on_skipped(listed.key)
                continue
            if isinstance(opened, UnreadableObject):
                report.unreadable.append(
                    {
                        "key": listed.key,
                        "declared_size": listed.size,
                        "actual_size": None,
                        "detail": opened.reason,
                    }
                )
                if on_skipped:
                    on_skipped(listed.key)
                continue
            if opened.etag != listed.etag or opened.size != listed.size:
                report.changed.append(
                    {"key": listed.key, "declared_size": listed.size, "actual_size": opened.size}
                )
            if opened.inexact_headers:
                report.inexact.append(
                    {
                        "key": listed.key,
                        "declared_size": listed.size,
                        "actual_size": opened.size,
                        "detail": "not UTF-8, recorded with U+FFFD: " + ", ".join(opened.inexact_headers),
                    }
                )
            opened.body.on_bytes = on_bytes
            try:
                yield opened
                # The consumer must have read the body to its end (the archive writer does).
                if opened.body.size != opened.size:
                    raise BackupError(
                        ErrorCode.INTERNAL,
                        f"s3://{bucket}/{listed.key}: archive consumed {opened.body.size} of {opened.size} bytes",
                    )
                record = ObjectRecord(
                    key=opened.key,
                    size=opened.size,
                    sha256=opened.body.sha256.hexdigest(),
                    etag=opened.etag,
                    content_type=opened.content_type,
                    last_modified=opened.last_modified,
                    headers=opened.headers,
                    metadata=opened.metadata,
                    tags=opened.tags,
                )
                report.archived += 1
                report.archived_bytes += record.size
                if report.keep_records:
                    report.objects.append(record)
                if on_object_done:
                    on_object_done(record)
            finally:
                opened.body.close()
    finally:
        queue.abandon()
        if pool is not None:
            # Not waiting: a GET stuck on a frozen server must not hold up the failure.
            pool.shutdown(wait=False, cancel_futures=True)


#: (opened objects, one at a time[, part index writer]) -> plaintext tar.gz chunks. Built by the op from
#: ``archive.write_bucket_archive`` and the configured compression level.
ArchiveWriter = Callable[..., Iterable[bytes]]


@dataclass(frozen=True)
class BucketExportResult:
    bucket: str
    part: UploadedPart
    object_count: int
    plaintext_bytes: int
    changed: list[dict[str, Any]]
    vanished: list[dict[str, Any]]
    inventory: list[dict[str, Any]]
    seconds: float
    unreadable: list[dict[str, Any]] = field(default_factory=list)
    inexact: list[dict[str, Any]] = field(default_factory=list)
    versioning: VersioningReport | None = None
    #: The ``index-<name>`` part (BACKUP-FORMAT.md §8); ``None`` when written without one.
    index_part: UploadedPart | None = None
    #: Sets with an inventory part (``services/backup_incremental.py``): the part and the diff.
    inventory_part: UploadedPart | None = None
    incremental: dict[str, Any] | None = None
    #: A shard of a sharded bucket (``bucket_shards.ShardRange.to_dict()``); None: the whole bucket.
    shard: dict[str, Any] | None = None

    @property
    def what(self) -> str:
        """``bucket photos`` or ``bucket photos shard 2/3`` (log and warning texts)."""
        if self.shard is None:
            return f"bucket {self.bucket}"
        return f"bucket {self.bucket} shard {self.shard['number']}/{self.shard['count']}"

    def warnings(self) -> list[str]:
        """What the operator must be told about this bucket's part (empty when it is exact)."""
        found = []
        if self.changed or self.vanished:
            found.append(
                f"{self.what}: {len(self.changed)} object(s) changed and {len(self.vanished)} "
                "vanished during the backup (recorded in the manifest)"
            )
        if self.unreadable:
            text = (
                f"{self.what}: {len(self.unreadable)} object(s) NOT backed up (recorded in the "
                "manifest): " + _some_anomalies(self.unreadable)
            )
            if any(a.get("detail") == DOT_SEGMENT_REASON for a in self.unreadable):
                text += f". What to do: {DOT_SEGMENT_ADVICE}"
            found.append(text)
        if self.inexact:
            found.append(
                f"{self.what}: {len(self.inexact)} object(s) backed up with a header that is not "
                "UTF-8 and could not be recorded exactly: " + _some_anomalies(self.inexact)
            )
        if self.versioning is not None:
            found.append(self.versioning.message())
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "part": self.part.to_dict(),
            "index_part": self.index_part.to_dict() if self.index_part else None,
            "object_count": self.object_count,
            "object_bytes": self.plaintext_bytes,
            "changed": self.changed,
            "vanished": self.vanished,
            "unreadable": self.unreadable,
            "inexact": self.inexact,
            "versioning": self.versioning.to_dict() if self.versioning else None,
            "inventory": self.inventory,
            "seconds": round(self.seconds, 3),
            **(
                {"inventory_part": self.inventory_part.to_dict(), "incremental": self.incremental}
                if self.inventory_part is not None
                else {}
            ),
            **({"shard": self.shard} if self.shard is not None else {}),
        }


def _some_anomalies(anomalies: list[dict[str, Any]], shown: int = 5) -> str:
    named = "; ".join(f"{a['key']!r} ({a['detail']})" for a in anomalies[:shown])
    return named + (f"; and {len(anomalies) - shown} more" if len(anomalies) > shown else "")


def export_bucket(
    client: Minio,
    bucket: str,
    destination: Destination,
    encryptor: Encryptor,
    archive_writer: ArchiveWriter,
    *,
    installation_id: str,
    backup_id: str,
    progress: ProgressTracker | None = None,
    on_object_done: Callable[[ObjectRecord], None] | None = None,
    read_ahead: ReadAhead = ReadAhead(),
    tag_reading: TagReading = "when_counted",
    with_index: bool = False,
    shard: ShardRange | None = None,
) -> BucketExportResult:
    """The ``bucket-<name>`` part: listing → GET per object → tar.gz → encrypt → destination, verified.

    ``with_index``: ``archive_writer`` is called with a second argument, the part index writer,
    and the ``index-<name>`` part is uploaded alongside (``backup_index.IndexUpload``).
    ``shard``: only the objects of that key range, into ``bucket-<name>~<nnnn>`` (``bucket_shards``).
    """
    from .bucket_shards import shard_listing

    started = time.monotonic()
    report = BucketExportReport(bucket)
    versioning = bucket_versioning(client, bucket)

    def object_done(record: ObjectRecord) -> None:
        if progress is not None:
            progress.add(objects=1)
        if on_object_done is not None:
            on_object_done(record)

    objects = iter_bucket_objects(
        client,
        bucket,
        report,
        on_bytes=(lambda n: progress.add(n)) if progress is not None else None,
        on_object_done=object_done,
        read_ahead=read_ahead,
        tag_reading=tag_reading,
        listing=shard_listing(iter_listing(client, bucket), shard) if shard is not None else None,
    )
    try:
        part, index_part = upload_bucket_part(
            destination,
            encryptor,
            archive_writer,
            objects,
            installation_id=installation_id,
            backup_id=backup_id,
            part_name=shard_part_name(bucket, shard.number)
            if shard is not None
            else bucket_part_name(bucket),
            with_index=with_index,
        )
    finally:
        objects.close()
    if progress is not None:
        progress.finish()
    return BucketExportResult(
        bucket=bucket,
        part=part,
        object_count=report.object_count,
        plaintext_bytes=report.plaintext_bytes,
        changed=report.changed,
        vanished=report.vanished,
        inventory=[{"key": o.key, "size": o.size, "sha256": o.sha256} for o in report.objects],
        seconds=time.monotonic() - started,
        unreadable=report.unreadable,
        inexact=report.inexact,
        versioning=versioning,
        index_part=index_part,
        shard=shard.to_dict() if shard is not None else None,
    )
