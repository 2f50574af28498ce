"""Bucket restore: reading a bucket part's entries, conflict decisions, the dry-run plan and the
parallel writes of objects into the target bucket."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from minio import Minio
from minio.commonconfig import Tags
from minio.error import S3Error

from backup_pipeline.archive.gzip_members import gunzip_stream
from backup_pipeline.archive.tar_parts import read_bucket_archive
from backup_pipeline.services.errors import S3_ERRORS, s3_endpoint, s3_error_reason
from backup_pipeline.services.object_headers import put_headers, wire_value
from backup_pipeline.services.restore.common import (
    KEEP_BOTH_SUFFIX,
    ConflictPolicy,
    IncomingObject,
    ObjectAction,
    RestoreError,
    _safe,
)

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)


def decompress_backup(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """Gunzip a bucket part's (multi-member) gzip stream with bounded output per step."""
    return gunzip_stream(blocks)


def bucket_entries(plaintext: Iterable[bytes]) -> Iterator[RestoreEntry]:
    """The objects of a bucket part's plaintext (``.tar.gz``), one at a time, streamed."""
    for obj in read_bucket_archive(plaintext):
        yield RestoreEntry(
            key=obj.key,
            size=obj.size,
            content_type=obj.content_type or "application/octet-stream",
            metadata=obj.metadata,
            tags=obj.tags,
            fileobj=obj.fileobj,
            headers=obj.headers,
        )


@dataclass
class BucketSummary:
    bucket: str
    added: int = 0
    overwritten: int = 0
    skipped: int = 0
    kept_both: int = 0
    failed: int = 0
    bytes_written: int = 0
    failures: list[str] = field(default_factory=list)
    bucket_created: bool = False
    completed: bool = False

    def count(self, action: ObjectAction) -> None:
        if action is ObjectAction.ADD:
            self.added += 1
        elif action is ObjectAction.OVERWRITE:
            self.overwritten += 1
        elif action is ObjectAction.SKIP:
            self.skipped += 1
        else:
            self.kept_both += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "added": self.added,
            "overwritten": self.overwritten,
            "skipped": self.skipped,
            "kept_both": self.kept_both,
            "failed": self.failed,
            "bytes_written": self.bytes_written,
            "bucket_created": self.bucket_created,
            "completed": self.completed,
            "failures": self.failures[:20],
        }

    def counts(self) -> dict[str, int]:
        return {
            "added": self.added,
            "overwritten": self.overwritten,
            "skipped": self.skipped,
            "kept_both": self.kept_both,
        }


def keep_both_key(key: str, backup_id: str) -> str:
    return key + KEEP_BOTH_SUFFIX.format(backup_id=backup_id)


def decide(
    policy: ConflictPolicy,
    incoming: IncomingObject,
    existing_size: int | None,
    existing_sha256: Callable[[], str],
) -> ObjectAction:
    """What happens to one object; ``existing_sha256`` is called only when the sizes match.

    ``keep_both`` keeps an identical current object as is (skipped) and writes a differing
    restored copy under ``<key>.restored-<backup id>``.
    """
    if existing_size is None:
        return ObjectAction.ADD
    if policy is ConflictPolicy.SKIP:
        return ObjectAction.SKIP
    if policy is ConflictPolicy.OVERWRITE:
        return ObjectAction.OVERWRITE
    identical = existing_size == incoming.size and existing_sha256() == incoming.sha256
    if identical:
        return ObjectAction.SKIP
    return ObjectAction.OVERWRITE if policy is ConflictPolicy.IF_DIFFERENT else ObjectAction.KEEP_BOTH


# Restore of bucket objects (``restore_bucket``). Memory: at most PUT_WINDOW_BYTES of small
# bodies are held at once, or one PUT_PART_BYTES part of a large object being streamed.
PUT_WORKERS = 8  # with the main thread, within the S3 resource's pool of 16 connections


PUT_WINDOW_BYTES = 32 * 1024 * 1024


SMALL_OBJECT_BYTES = 8 * 1024 * 1024  # larger bodies are streamed, never held whole


PUT_PART_BYTES = 16 * 1024 * 1024


LISTING_LOOKAHEAD = 1000  # listing items checked for order beyond the key being decided


def object_sha256(client: Minio, bucket: str, key: str) -> str:
    digest = hashlib.sha256()
    response = client.get_object(bucket, key)
    try:
        # Raw bytes, as the backup hashed them (a gzip-encoded object is never inflated).
        for block in response.stream(1024 * 1024, decode_content=False):
            digest.update(block)
    finally:
        # urllib3 already returned a fully read body's connection to the pool (keep-alive);
        # close() drops only a connection with unread bytes on the wire.
        response.close()
        response.release_conn()
    return digest.hexdigest()


def _existing_size(client: Minio, bucket: str, key: str) -> int | None:
    try:
        return int(client.stat_object(bucket, key).size or 0)
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
            return None
        raise


def _bucket_exists(client: Minio, bucket: str) -> bool:
    return bool(client.bucket_exists(bucket))


def _listing(client: Minio, bucket: str, key_prefix: str) -> Iterator[tuple[str, int]]:
    """(key, size) of the objects in ``bucket`` under ``key_prefix``, page by page as consumed."""
    for obj in client.list_objects(bucket, prefix=key_prefix or None, recursive=True):
        if obj.object_name is not None:
            yield obj.object_name, int(obj.size or 0)


class ExistingSizes:
    """Sizes of the objects already in the target bucket, asked for key by key.

    A merge-join of the keys asked (the archive's entries, which the backup wrote in S3
    listing order) with a streamed listing of the target bucket: no request per object, and
    memory bounded by ``lookahead`` listing items however many objects the bucket holds.

    The merge is sound only while both sequences are non-decreasing in one order (S3 lists
    in UTF-8 binary order, which is Python's ``str`` order). As soon as a key is asked out of
    order (an old archive) or the listing goes out of order (another server's ordering),
    this key and every later one are answered by ``fallback`` (one ``stat_object`` each):
    from a broken merge "absent" could be wrong, and "absent" means the object is written
    even under the ``skip`` policy. The listing is checked ``lookahead`` items beyond the key
    being decided, so a misplaced listing item is caught before a decision relies on it
    unless it sits farther than that behind a larger key; S3's ordering guarantee is what
    rules that case out.
    """

    def __init__(
        self,
        listing: Iterable[tuple[str, int]],
        fallback: Callable[[str], int | None],
        *,
        lookahead: int = LISTING_LOOKAHEAD,
    ) -> None:
        if lookahead < 1:
            raise ValueError("lookahead must be at least 1")
        self._listing: Iterator[tuple[str, int]] | None = iter(listing)
        self._fallback = fallback
        self._lookahead = lookahead
        self._ahead: deque[tuple[str, int]] = deque()
        self._last_listed: str | None = None
        self._last_asked: str | None = None
        #: Why the merge was given up (None while it holds).
        self.fallback_reason: str | None = None

    def size(self, key: str) -> int | None:
        """The size of ``key`` in the bucket, or None when it is not there."""
        if self.fallback_reason is None:
            if self._last_asked is not None and key < self._last_asked:
                self._give_up("the archive's keys are not in listing order")
            elif not self._advance_to(key):
                self._give_up("the bucket listing is not in key order")
            else:
                self._last_asked = key
                if self._ahead and self._ahead[0][0] == key:
                    return self._ahead[0][1]
                return None
        return self._fallback(key)

    def _advance_to(self, key: str) -> bool:
        """Drop listed keys below ``key`` and hold up to ``lookahead`` from it on; False if out of order."""
        while True:
            while self._ahead and self._ahead[0][0] < key:
                self._ahead.popleft()
            if self._listing is None or len(self._ahead) >= self._lookahead:
                return True
            item = next(self._listing, None)
            if item is None:
                self._listing = None
                return True
            name, size = item
            if self._last_listed is not None and name < self._last_listed:
                return False
            self._last_listed = name
            self._ahead.append((name, size))

    def _give_up(self, reason: str) -> None:
        self.fallback_reason = reason
        log.warning("%s: checking each remaining object with a stat request instead", reason)
        self._ahead.clear()
        close = getattr(self._listing, "close", None)
        if close is not None:
            close()
        self._listing = None


def plan_bucket(
    client: Minio,
    bucket: str,
    inventory: Iterable[IncomingObject],
    policy: ConflictPolicy,
    key_prefix: str = "",
) -> dict[str, Any]:
    """Dry run of one bucket: counts per action, nothing written.

    Decides with the same ``decide`` and the same ``ExistingSizes`` merge as ``restore_bucket``
    (the inventory is in the archive's order), so the prediction matches the real run.
    """
    summary = BucketSummary(bucket)
    exists = _bucket_exists(client, bucket)
    summary.bucket_created = not exists
    existing = ExistingSizes(
        _listing(client, bucket, key_prefix) if exists else (),
        lambda key: _existing_size(client, bucket, key),
    )
    for item in inventory:
        if not item.key.startswith(key_prefix):
            continue
        action = decide(
            policy,
            item,
            existing.size(item.key),
            lambda key=item.key: object_sha256(client, bucket, key),  # type: ignore[misc]
        )
        summary.count(action)
    summary.completed = True
    return summary.as_dict()


@dataclass
class RestoreEntry:
    """One object read from a bucket part, its bytes readable once from ``fileobj``."""

    key: str
    size: int
    content_type: str
    metadata: Mapping[str, str]
    tags: Mapping[str, str]
    fileobj: IO[bytes]
    #: Recorded standard headers (Cache-Control, Content-Disposition, …); none in older archives.
    headers: Mapping[str, str] = field(default_factory=dict)


class _HashingReader:
    """Read-through SHA-256, so the bytes written are checked against the manifest."""

    def __init__(self, raw: IO[bytes]):
        self._raw = raw
        self.digest = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.digest.update(data)
        self.count += len(data)
        return data


def _tags_for(values: Mapping[str, str]) -> Tags | None:
    if not values:
        return None
    tags = Tags.new_object_tags()
    for k, v in values.items():
        tags[k] = v
    return tags


def _put(client: Minio, bucket: str, key: str, entry: RestoreEntry, data: IO[bytes]) -> None:
    client.put_object(
        bucket,
        key,
        data,  # type: ignore[arg-type]
        entry.size,
        content_type=wire_value(entry.content_type or "application/octet-stream"),
        # Headers and user metadata byte for byte, through minio's sse hook (object_headers).
        sse=put_headers(entry.headers, entry.metadata),
        tags=_tags_for(entry.tags),
        part_size=PUT_PART_BYTES,
        num_parallel_uploads=1,
    )


def put_entry(client: Minio, bucket: str, key: str, entry: RestoreEntry, expected_sha256: str | None) -> int:
    """Stream one entry's body into ``bucket/key``; the SHA-256 is checked once it was sent."""
    reader = _HashingReader(entry.fileobj)
    _put(client, bucket, key, entry, reader)  # type: ignore[arg-type]
    if expected_sha256 and reader.digest.hexdigest() != expected_sha256:
        # Cannot happen with an authenticated part unless the manifest and part disagree.
        raise RestoreError(f"s3://{bucket}/{key}: SHA-256 written differs from the manifest's")
    return reader.count


def _read_body(bucket: str, key: str, entry: RestoreEntry, expected_sha256: str | None) -> bytes:
    """A small entry's whole body, checked against the manifest before anything is written."""
    blocks: list[bytes] = []
    got = 0
    while got < entry.size:
        block = entry.fileobj.read(entry.size - got)
        if not block:
            break
        blocks.append(block)
        got += len(block)
    body = blocks[0] if len(blocks) == 1 else b"".join(blocks)
    if len(body) != entry.size:
        raise RestoreError(
            f"s3://{bucket}/{key}: the archive holds {len(body)} bytes, its header says {entry.size}"
        )
    if expected_sha256 and hashlib.sha256(body).hexdigest() != expected_sha256:
        raise RestoreError(f"s3://{bucket}/{key}: SHA-256 in the archive differs from the manifest's")
    return body


def _put_body(client: Minio, bucket: str, key: str, entry: RestoreEntry, body: bytes) -> int:
    # BytesIO over the whole body hands minio the same bytes object: no copy per put.
    _put(client, bucket, key, entry, io.BytesIO(body))
    return len(body)


def _put_workers(client: Minio, wanted: int) -> int:
    """``wanted`` capped so the puts and the main thread fit the client's connection pool.

    urllib3's pool does not block when it is exhausted: it opens an extra connection and
    discards it after the request, so a put more than the pool holds would reconnect each time.
    """
    pool_kw = getattr(getattr(client, "_http", None), "connection_pool_kw", None) or {}
    maxsize = pool_kw.get("maxsize")
    if isinstance(maxsize, int) and maxsize > 1:
        wanted = min(wanted, maxsize - 1)  # one for the main thread's listing, stats and streams
    return max(1, wanted)


@dataclass
class _InFlight:
    future: Future[int]
    key: str  # the archive key, as failures name it
    action: ObjectAction
    size: int


class _PutWindow:
    """Puts of small bodies on a thread pool, at most ``max_objects`` and ``max_bytes`` held.

    Results are collected oldest first in the caller's thread: only that thread touches the
    summary and calls ``on_progress``, and a put is counted once it completed. Leaving the
    ``with`` block on an error cancels the puts not started, waits for the running ones
    (counting those that succeeded, so the summary matches what is in the bucket) and shuts
    the pool down.
    """

    def __init__(
        self,
        client: Minio,
        bucket: str,
        summary: BucketSummary,
        on_progress: Callable[[BucketSummary], None] | None,
        *,
        workers: int,
        max_objects: int,
        max_bytes: int,
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._summary = summary
        self._on_progress = on_progress
        self._max_objects = max(1, max_objects)
        self._max_bytes = max_bytes
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"restore-put-{bucket}")
        self._pending: deque[_InFlight] = deque()
        self._pending_bytes = 0

    def __enter__(self) -> _PutWindow:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc_type is not None:
                self._abandon()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def make_room(self, size: int) -> None:
        """Block on the oldest puts until one of ``size`` bytes fits the window."""
        while self._pending and (
            len(self._pending) >= self._max_objects or self._pending_bytes + size > self._max_bytes
        ):
            self._finish(self._pending.popleft())

    def submit(self, key: str, target: str, entry: RestoreEntry, body: bytes, action: ObjectAction) -> None:
        self.make_room(len(body))
        future = self._pool.submit(_put_body, self._client, self._bucket, target, entry, body)
        self._pending.append(_InFlight(future, key, action, len(body)))
        self._pending_bytes += len(body)

    def collect_done(self) -> None:
        """Count the oldest puts that already completed, without waiting."""
        while self._pending and self._pending[0].future.done():
            self._finish(self._pending.popleft())

    def drain(self) -> None:
        while self._pending:
            self._finish(self._pending.popleft())

    def _finish(self, item: _InFlight) -> None:
        self._pending_bytes -= item.size
        summary = self._summary
        try:
            summary.bytes_written += item.future.result()
        except S3Error as exc:
            summary.failed += 1
            summary.failures.append(f"{item.key}: {exc.code}")
        else:
            summary.count(item.action)
        if self._on_progress is not None:
            self._on_progress(summary)

    def _abandon(self) -> None:
        for item in self._pending:
            item.future.cancel()
        while self._pending:
            item = self._pending.popleft()
            if item.future.cancelled():
                continue
            with contextlib.suppress(Exception):
                # The error being raised is the one reported; a running put that fails
                # as well (the same unreachable server) is simply not counted.
                self._finish(item)
        self._pending_bytes = 0


def restore_bucket(
    client: Minio,
    bucket: str,
    entries: Iterable[RestoreEntry],
    inventory: Mapping[str, IncomingObject],
    policy: ConflictPolicy,
    backup_id: str,
    *,
    key_prefix: str = "",
    on_progress: Callable[[BucketSummary], None] | None = None,
    workers: int = PUT_WORKERS,
    window_bytes: int = PUT_WINDOW_BYTES,
    small_object_bytes: int = SMALL_OBJECT_BYTES,
) -> BucketSummary:
    """Write the entries of one bucket part according to ``policy``.

    Whether each object exists comes from ``ExistingSizes`` (one streamed listing, see there).
    Bodies of at most ``small_object_bytes`` are read here, checked against the manifest's
    SHA-256 and put by ``workers`` threads, at most ``window_bytes`` of them held at once;
    larger ones are streamed from the archive in this thread after the window drained, so
    memory is the larger of the two rather than their sum.

    A failed object is counted and named, the rest continue; an S3 server that stops
    answering ends the bucket (every following object would fail too) with the summary of
    what was written attached to the raised ``BucketRestoreFailed``.
    """
    summary = BucketSummary(bucket)
    put_workers = _put_workers(client, workers)
    try:
        if not _bucket_exists(client, bucket):
            client.make_bucket(bucket)
            summary.bucket_created = True
        existing = ExistingSizes(
            () if summary.bucket_created else _listing(client, bucket, key_prefix),
            lambda key: _existing_size(client, bucket, key),
        )
        with _PutWindow(
            client,
            bucket,
            summary,
            on_progress,
            workers=put_workers,
            max_objects=2 * put_workers,
            max_bytes=window_bytes,
        ) as window:
            for entry in entries:
                window.collect_done()
                if not entry.key.startswith(key_prefix):
                    _drain(entry.fileobj)
                    continue
                incoming = inventory.get(entry.key) or IncomingObject(entry.key, entry.size, "")
                action = decide(
                    policy,
                    incoming,
                    existing.size(entry.key),
                    lambda key=entry.key: object_sha256(client, bucket, key),  # type: ignore[misc]
                )
                if action is ObjectAction.SKIP:
                    _drain(entry.fileobj)
                    summary.count(action)
                    if on_progress is not None:
                        on_progress(summary)
                    continue
                target = (
                    keep_both_key(entry.key, backup_id) if action is ObjectAction.KEEP_BOTH else entry.key
                )
                if entry.size <= small_object_bytes:
                    window.make_room(entry.size)
                    body = _read_body(bucket, target, entry, incoming.sha256 or None)
                    window.submit(entry.key, target, entry, body, action)
                    continue
                window.drain()
                try:
                    summary.bytes_written += put_entry(client, bucket, target, entry, incoming.sha256 or None)
                except S3Error as exc:
                    summary.failed += 1
                    summary.failures.append(f"{entry.key}: {exc.code}")
                    _drain(entry.fileobj)
                else:
                    summary.count(action)
                if on_progress is not None:
                    on_progress(summary)
            window.drain()
        summary.completed = True
        return summary
    except BucketRestoreFailed:
        raise
    except Exception as exc:
        raise BucketRestoreFailed(summary, exc, s3_endpoint(client)) from exc


class BucketRestoreFailed(RestoreError):
    def __init__(self, summary: BucketSummary, cause: BaseException, endpoint: str = "S3"):
        self.summary = summary
        self.cause = cause
        # An OSError may as well come from reading the backup part; only minio/urllib3 errors are S3's.
        from_s3 = isinstance(cause, S3_ERRORS) and not isinstance(cause, OSError)
        why = (
            s3_error_reason(cause, endpoint, "writing objects")
            if from_s3
            else f"{type(cause).__name__}: {_safe(cause)}"
        )
        super().__init__(
            f"bucket {summary.bucket}: restore stopped after "
            f"{summary.added} added, {summary.overwritten} overwritten, {summary.skipped} skipped, "
            f"{summary.kept_both} kept both, {summary.failed} failed: {why}"
        )


def _drain(fileobj: IO[bytes]) -> None:
    while fileobj.read(1024 * 1024):
        pass
