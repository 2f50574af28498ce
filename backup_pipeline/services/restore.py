"""Restore: plain functions the restore job and the disaster-recovery CLI call.

Nothing here knows Dagster. The order a caller MUST follow (the ops and the CLI do):

1. ``resolve_backup`` — find the set (ledger or destination), read and authenticate its
   manifest, refuse an incomplete set naming what is missing.
2. ``verify_parts`` — stream every needed part once, end to end: download → authenticate
   every chunk (AEAD) → compare ciphertext and plaintext SHA-256 with the manifest. No
   plaintext is kept; nothing is touched. Any damage refuses the restore here.
3. Only then act: ``restore_database`` (one ``pg_restore --single-transaction``) and
   ``restore_bucket`` per bucket, each streaming the part a second time.

Why stream twice rather than stage: plaintext never touches disk (invariant 1) and no
staging space is needed. The second pass is as safe as the first for what it emits: every
chunk is authenticated before a byte is handed on, the header binds backup id and part
name, and truncation is caught by the final-chunk flag. A part changed on the destination
between the passes fails the second pass: the database restore is one transaction (left as
it was); a bucket restore stops with a summary of what it wrote, and a rerun completes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import logging
import os
import re
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Protocol

import psycopg
from minio import Minio
from minio.commonconfig import Tags
from minio.error import S3Error
from psycopg import sql

from backup_pipeline.archive.errors import ArchiveError, ArchiveKeyError
from backup_pipeline.archive.gzip_members import gunzip_stream
from backup_pipeline.archive.keys import OrgKeyring, RecoveryIdentity
from backup_pipeline.archive.manifest import MANIFEST_FORMAT, Manifest
from backup_pipeline.archive.stream_crypto import decrypt_stream
from backup_pipeline.archive.tar_parts import read_bucket_archive
from backup_pipeline.destinations.base import Destination, StoredFile
from backup_pipeline.services.backup_parts import (
    APP_NAME,
    BUCKET_PART_PREFIX,
    PART_DATABASE,
    PART_MANIFEST,
    PROP_APP,
    PROP_BACKUP_ID,
    PROP_INSTALLATION,
    PROP_PART_NAME,
    bucket_part_name,
)
from backup_pipeline.services.errors import S3_ERRORS, s3_endpoint, s3_error_reason

log = logging.getLogger(__name__)

DOWNLOAD_CHUNK_BYTES = 8 * 1024 * 1024
KEEP_BOTH_SUFFIX = ".restored-{backup_id}"
DEFAULT_CONSISTENCY_QUERY = (
    "SELECT bucket, object_key FROM media_assets WHERE bucket IS NOT NULL AND object_key IS NOT NULL"
)


# --------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------
class RestoreScope(StrEnum):
    FULL = "full"
    FILES = "files"
    DATABASE = "database"


class ConflictPolicy(StrEnum):
    SKIP = "skip"
    OVERWRITE = "overwrite"
    KEEP_BOTH = "keep_both"
    IF_DIFFERENT = "if_different"


class ObjectAction(StrEnum):
    ADD = "added"
    OVERWRITE = "overwritten"
    SKIP = "skipped"
    KEEP_BOTH = "kept_both"  # restored copy written under a suffixed key next to the current one


LATEST = "latest"


@dataclass(frozen=True)
class RestoreOptions:
    """What to restore; shared by the Dagster config and the CLI flags."""

    backup_id: str = LATEST
    scope: RestoreScope = RestoreScope.FULL
    buckets: tuple[str, ...] = ()  # empty: every bucket in the set
    key_prefix: str = ""
    conflict_policy: ConflictPolicy = ConflictPolicy.SKIP
    target_database: str | None = None  # None: the app's database
    schema_only: bool = False
    dry_run: bool = True
    confirm: str = ""

    @property
    def restores_database(self) -> bool:
        return self.scope in (RestoreScope.FULL, RestoreScope.DATABASE)

    @property
    def restores_files(self) -> bool:
        return self.scope in (RestoreScope.FULL, RestoreScope.FILES)


def confirmation_phrase(backup_id: str) -> str:
    """The phrase an operator types to allow a destructive restore of ``backup_id``."""
    return f"restore {backup_id}"


class RestoreError(Exception):
    """A restore failed; the message says what and where, never a secret."""


class RestoreRefused(RestoreError):
    """Refused before anything was changed (bad input, incomplete or damaged set, versions)."""


def check_confirmation(options: RestoreOptions, backup_id: str) -> None:
    """Destructive runs need ``confirm`` to equal the phrase naming the resolved backup."""
    if options.dry_run:
        return
    expected = confirmation_phrase(backup_id)
    if options.confirm.strip() != expected:
        raise RestoreRefused(
            f"confirm: a restore that changes data needs confirm={expected!r} "
            f"(got {options.confirm!r}); or set dry_run=true to only see what would change"
        )


# --------------------------------------------------------------------------------------
# Download: ranged, resumable, streamed
# --------------------------------------------------------------------------------------
class RangedSource(Protocol):
    def get(self, file_id: str, start: int = 0, end: int | None = None) -> Any: ...


_TRANSIENT: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    http.client.IncompleteRead,
    http.client.HTTPException,
)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _TRANSIENT):
        return True
    # The destinations package classifies its errors; a class named *Retryable* is transient.
    return any("retryable" in cls.__name__.lower() for cls in type(exc).__mro__)


def _iter_body(body: Any, chunk_size: int) -> Iterator[bytes]:
    if isinstance(body, (bytes, bytearray)):
        yield bytes(body)
        return
    if hasattr(body, "read"):
        try:
            while True:
                block = body.read(chunk_size)
                if not block:
                    return
                yield block
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
    else:
        yield from body


def download_backup(
    source: RangedSource,
    file_id: str,
    size: int,
    *,
    start: int = 0,
    chunk_size: int = DOWNLOAD_CHUNK_BYTES,
    max_attempts: int = 6,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[bytes]:
    """Stream ``file_id`` from ``start`` to ``size``; a dropped connection resumes at the offset reached.

    Transient errors are retried with exponential backoff; each retry asks only for the
    bytes not yet yielded, so nothing is downloaded twice and memory stays one chunk.
    """
    offset = start
    failures = 0
    while offset < size:
        try:
            body = source.get(file_id, offset, size)  # end exclusive (destination contract)
            for block in _iter_body(body, chunk_size):
                if not block:
                    continue
                if offset + len(block) > size:
                    raise RestoreRefused(
                        f"part {file_id}: the destination sent more than the {size} bytes the manifest lists"
                    )
                offset += len(block)
                failures = 0
                if on_progress is not None:
                    on_progress(offset)
                yield block
            if offset < size:
                raise http.client.IncompleteRead(b"", size - offset)
        except BaseException as exc:
            if not _is_transient(exc) or failures + 1 >= max_attempts:
                raise
            failures += 1
            delay = min(30.0, 0.2 * 2**failures)
            log.warning(
                "download of %s interrupted at byte %d (%s); resuming in %.1fs",
                file_id,
                offset,
                type(exc).__name__,
                delay,
            )
            time.sleep(delay)


# --------------------------------------------------------------------------------------
# Decompression and reading of bucket parts
# --------------------------------------------------------------------------------------
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
        )


# --------------------------------------------------------------------------------------
# Conflict decisions — one function for the dry run and the real run
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IncomingObject:
    """An object of the backup as the manifest's inventory lists it."""

    key: str
    size: int
    sha256: str


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
        for block in response.stream(1024 * 1024):
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


# --------------------------------------------------------------------------------------
# Writing objects
# --------------------------------------------------------------------------------------
@dataclass
class RestoreEntry:
    """One object read from a bucket part, its bytes readable once from ``fileobj``."""

    key: str
    size: int
    content_type: str
    metadata: Mapping[str, str]
    tags: Mapping[str, str]
    fileobj: IO[bytes]


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
        content_type=entry.content_type or "application/octet-stream",
        metadata=dict(entry.metadata) or None,  # type: ignore[arg-type]
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


def _safe(exc: BaseException) -> str:
    return re.sub(r"(?i)(password|secret|token|signature)=\S+", r"\1=***", str(exc))[:300]


def _drain(fileobj: IO[bytes]) -> None:
    while fileobj.read(1024 * 1024):
        pass


# --------------------------------------------------------------------------------------
# Database
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PgTarget:
    """Where ``pg_restore`` writes. The password comes from the environment, never a flag."""

    host: str
    port: int
    user: str
    dbname: str
    password: str | None = None

    @classmethod
    def from_url(cls, url: str, dbname: str | None = None, password: str | None = None) -> PgTarget:
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(url)
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5432,
            user=unquote(parts.username or "postgres"),
            dbname=dbname or parts.path.strip("/"),
            password=password,
        )

    def conninfo(self, dbname: str | None = None) -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.host,
            port=self.port,
            user=self.user,
            dbname=dbname or self.dbname,
            password=self.password,
        )

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user})
        if self.password:
            env["PGPASSWORD"] = self.password
        return env


def _major(version: str | None) -> int | None:
    if not version:
        return None
    match = re.search(r"(\d+)(?:\.(\d+))?", str(version))
    if not match:
        return None
    major = int(match.group(1))
    # Before PostgreSQL 10 the major version had two parts (9.6).
    return major * 10 + int(match.group(2) or 0) if major < 10 else major


def server_version(target: PgTarget) -> str:
    with psycopg.connect(target.conninfo("postgres"), autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]).split()[0] if row else ""


def check_restore_versions(
    pg_restore_version: str,
    dump_pg_dump_version: str | None,
    dump_server_version: str | None,
    target_server: str,
) -> dict[str, str]:
    """Refuse a combination that cannot restore faithfully, naming the versions.

    ``pg_restore`` must be at least the major of the ``pg_dump`` that wrote the archive (older
    ones cannot read newer archive formats), and the target server at least the major of the
    server that was dumped (a dump may use syntax an older server rejects).
    """
    tool, dumper = _major(pg_restore_version), _major(dump_pg_dump_version)
    server, source = _major(target_server), _major(dump_server_version)
    if tool is not None and dumper is not None and tool < dumper:
        raise RestoreRefused(
            f"pg_restore {pg_restore_version} is older than the pg_dump {dump_pg_dump_version} that made "
            f"this backup: install postgresql-client {dumper} or newer (BACKUP_PIPELINE_PG_BIN_DIR)"
        )
    if server is not None and source is not None and server < source:
        raise RestoreRefused(
            f"target server is PostgreSQL {target_server}, older than the dumped server "
            f"{dump_server_version}: restore into PostgreSQL {source} or newer"
        )
    return {
        "pg_restore": pg_restore_version,
        "dump_pg_dump": dump_pg_dump_version or "unknown",
        "dump_server": dump_server_version or "unknown",
        "target_server": target_server,
    }


def ensure_database(target: PgTarget) -> bool:
    """Create the target database when missing (restore for inspection); True if created."""
    with psycopg.connect(target.conninfo("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target.dbname,)).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.dbname)))
        return True


class _StderrTail(threading.Thread):
    """Drains a process's stderr so it never blocks, keeping the last lines for the error."""

    def __init__(self, stream: IO[bytes]):
        super().__init__(daemon=True)
        self._stream = stream
        self.lines: deque[str] = deque(maxlen=30)

    def run(self) -> None:
        for raw in iter(self._stream.readline, b""):
            self.lines.append(raw.decode("utf-8", "replace").rstrip())

    def text(self) -> str:
        return "\n".join(self.lines)


def restore_database(
    dump_blocks: Iterable[bytes],
    target: PgTarget,
    *,
    pg_restore: Path,
    schema_only: bool = False,
) -> dict[str, Any]:
    """Feed a plaintext ``pg_dump -Fc`` stream to ``pg_restore`` in ONE transaction.

    ``--single-transaction`` (which implies ``--exit-on-error``): a failure at any point —
    a pg_restore error, the source stream failing, this process being killed — rolls back
    and leaves the target exactly as it was.
    """
    cmd = [
        str(pg_restore),
        "--single-transaction",
        "--clean",
        "--if-exists",
        "--no-owner",
        "--dbname",
        target.dbname,
    ]
    if schema_only:
        cmd.append("--schema-only")
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=target.env()
    )
    assert proc.stdin is not None and proc.stderr is not None
    tail = _StderrTail(proc.stderr)
    tail.start()
    written = 0
    try:
        for block in dump_blocks:
            proc.stdin.write(block)
            written += len(block)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # pg_restore stopped reading: its exit status and stderr say why
    except BaseException:
        # The source failed mid-stream: kill pg_restore so its transaction is rolled back
        # instead of letting it commit whatever a truncated archive would still parse to.
        proc.kill()
        proc.wait()
        tail.join(5)
        raise
    code = proc.wait()
    tail.join(5)
    if code != 0:
        raise RestoreError(
            f"pg_restore into database {target.dbname!r} failed (exit {code}); the transaction was "
            f"rolled back, the database is unchanged:\n{_safe(Exception(tail.text()))}"
        )
    return {
        "database": target.dbname,
        "bytes": written,
        "schema_only": schema_only,
        "seconds": round(time.monotonic() - started, 2),
    }


_COPY = re.compile(r"^COPY (.+?) \(.*\) FROM stdin;$")


def dump_row_counts(dump_blocks: Iterable[bytes], *, pg_restore: Path) -> dict[str, int]:
    """Tables and row counts in a dump, by streaming its SQL rendering (nothing stored)."""
    proc = subprocess.Popen(
        [str(pg_restore), "--data-only", "--file", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdin = proc.stdin
    errors: list[BaseException] = []

    def feed() -> None:
        try:
            for block in dump_blocks:
                stdin.write(block)
        except BrokenPipeError:
            pass
        except BaseException as exc:
            errors.append(exc)
            proc.kill()
        finally:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    tail = _StderrTail(proc.stderr)
    tail.start()
    counts: dict[str, int] = {}
    current: str | None = None
    for raw in proc.stdout:
        if current is None:
            match = _COPY.match(raw.decode("utf-8", "replace").rstrip("\n"))
            if match:
                current = match.group(1).replace('"', "")
                counts.setdefault(current, 0)
        elif raw.rstrip(b"\n") == b"\\.":
            current = None
        else:
            counts[current] += 1
    code = proc.wait()
    feeder.join()
    tail.join(5)
    if errors:
        raise errors[0]
    if code != 0:
        raise RestoreError(f"pg_restore could not read the dump (exit {code}): {tail.text()}")
    return counts


def current_row_counts(target: PgTarget, tables: Iterable[str]) -> dict[str, int | None]:
    """Row counts of ``tables`` (``schema.table``) in the target; None where absent."""
    result: dict[str, int | None] = {}
    try:
        conn = psycopg.connect(target.conninfo(), autocommit=True)
    except psycopg.OperationalError:
        return dict.fromkeys(tables)
    with conn:
        for name in tables:
            schema, _, table = name.rpartition(".")
            exists = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
            if not exists or exists[0] is None:
                result[name] = None
                continue
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}.{}").format(
                    sql.Identifier(schema or "public"), sql.Identifier(table)
                )
            ).fetchone()
            result[name] = int(row[0]) if row else 0
    return result


def plan_database(dump_blocks: Iterable[bytes], target: PgTarget, *, pg_restore: Path) -> dict[str, Any]:
    """Dry run of the database: per table, rows in the dump against rows in the target now."""
    in_dump = dump_row_counts(dump_blocks, pg_restore=pg_restore)
    now = current_row_counts(target, in_dump)
    tables = [
        {"table": name, "rows_in_backup": in_dump[name], "rows_now": now.get(name)}
        for name in sorted(in_dump)
    ]
    return {"database": target.dbname, "tables": tables}


# --------------------------------------------------------------------------------------
# Consistency report
# --------------------------------------------------------------------------------------
def consistency_report(
    conninfo: str,
    client: Minio,
    buckets: Sequence[str],
    *,
    query: str = DEFAULT_CONSISTENCY_QUERY,
    examples: int = 20,
) -> dict[str, Any]:
    """Rows whose object is missing, and objects no row points to, in ``buckets``.

    ``query`` returns (bucket, object key) pairs the application references; other
    applications configure their own.
    """
    referenced: set[tuple[str, str]] = set()
    with psycopg.connect(conninfo) as conn:
        for bucket, key in conn.execute(query):  # type: ignore[arg-type]
            referenced.add((str(bucket), str(key)))
    present: set[tuple[str, str]] = set()
    for bucket in sorted(set(buckets) | {b for b, _ in referenced}):
        if not _bucket_exists(client, bucket):
            continue
        for obj in client.list_objects(bucket, recursive=True):
            if obj.object_name is not None:
                present.add((bucket, obj.object_name))
    in_scope = set(buckets)
    missing = sorted(referenced - present)
    unreferenced = sorted(p for p in present - referenced if p[0] in in_scope)
    return {
        "rows_checked": len(referenced),
        "objects_checked": len(present),
        "rows_pointing_to_missing_objects": len(missing),
        "unreferenced_objects": len(unreferenced),
        "missing_examples": [f"{b}/{k}" for b, k in missing[:examples]],
        "unreferenced_examples": [f"{b}/{k}" for b, k in unreferenced[:examples]],
    }


# --------------------------------------------------------------------------------------
# Backup sets: listing, resolving, verifying, opening parts
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RestoreKeys:
    """What can open a part: the org keyring (normal operation) or the recovery key (disaster recovery)."""

    org_keyring: OrgKeyring | None = None
    recovery_identity: RecoveryIdentity | None = None

    def __post_init__(self) -> None:
        if self.org_keyring is None and self.recovery_identity is None:
            raise RestoreRefused("restore needs the org secret file or the recovery key file")


@dataclass(frozen=True)
class BackupSetInfo:
    """One backup set as found on the destination (or the ledger)."""

    backup_id: str
    installation_id: str
    complete: bool  # a manifest exists
    parts: tuple[str, ...]
    size: int
    created: str | None
    source: str  # "ledger" or "destination"

    def as_dict(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "installation_id": self.installation_id,
            "complete": self.complete,
            "parts": list(self.parts),
            "size": self.size,
            "created": self.created,
            "source": self.source,
        }


def list_backups(
    destination: Destination,
    *,
    installation_id: str | None = None,
    ledger_backup_ids: Sequence[str] | None = None,
) -> list[BackupSetInfo]:
    """Backup sets, newest first.

    With ``ledger_backup_ids`` (from Dagster's records) only those sets are listed; without
    (a fresh installation, the ledger lost) every set is found on the destination by its file
    properties alone. Either way completeness is judged from the destination: a set without
    a manifest is listed as incomplete and never chosen as ``latest``.
    """
    props = {PROP_APP: APP_NAME}
    if installation_id:
        props[PROP_INSTALLATION] = installation_id
    grouped: dict[tuple[str, str], list[StoredFile]] = {}
    for stored in destination.list(props):
        backup_id = stored.properties.get(PROP_BACKUP_ID)
        if not backup_id:
            continue
        key = (stored.properties.get(PROP_INSTALLATION, ""), backup_id)
        grouped.setdefault(key, []).append(stored)
    wanted = set(ledger_backup_ids) if ledger_backup_ids is not None else None
    sets = []
    for (installation, backup_id), files in grouped.items():
        if wanted is not None and backup_id not in wanted:
            continue
        names = tuple(sorted(f.properties.get(PROP_PART_NAME, f.name) for f in files))
        created = min((f.created for f in files if f.created is not None), default=None)
        sets.append(
            BackupSetInfo(
                backup_id=backup_id,
                installation_id=installation,
                complete=PART_MANIFEST in names,
                parts=names,
                size=sum(f.size for f in files),
                created=created.isoformat() if created else None,
                source="ledger" if wanted is not None else "destination",
            )
        )
    sets.sort(key=lambda s: s.backup_id, reverse=True)
    return sets


@dataclass(frozen=True)
class PartRef:
    """One part as the manifest describes it, with the destination file that holds it."""

    part_name: str
    file_id: str
    size: int
    sha256: str
    plaintext_size: int
    plaintext_sha256: str


@dataclass
class ResolvedBackup:
    """A set whose manifest was authenticated and whose listed parts all exist on the destination."""

    backup_id: str
    installation_id: str
    manifest: dict[str, Any]
    parts: dict[str, PartRef]

    @property
    def buckets(self) -> list[str]:
        return sorted(
            name.removeprefix(BUCKET_PART_PREFIX)
            for name in self.parts
            if name.startswith(BUCKET_PART_PREFIX)
        )

    def inventory(self, bucket: str) -> dict[str, IncomingObject]:
        return {o.key: o for o in manifest_inventory(self.manifest, bucket)}

    def versions(self) -> dict[str, Any]:
        return dict(self.manifest.get("versions") or {})


def _read_all(blocks: Iterable[bytes], limit: int) -> bytes:
    out = bytearray()
    for block in blocks:
        out += block
        if len(out) > limit:
            raise RestoreRefused(f"manifest larger than {limit} bytes: refusing to read it")
    return bytes(out)


MANIFEST_LIMIT_BYTES = 512 * 1024 * 1024


def resolve_backup(
    destination: Destination,
    keys: RestoreKeys,
    backup_id: str = LATEST,
    *,
    installation_id: str | None = None,
    ledger_backup_ids: Sequence[str] | None = None,
) -> ResolvedBackup:
    """Find the set, authenticate its manifest, and check every part it lists is on the destination.

    Refuses (``RestoreRefused``) an unknown backup id, a set without manifest, and a set
    whose manifest lists parts that are missing (named) or whose files disagree in size.
    """
    sets = list_backups(destination, installation_id=installation_id, ledger_backup_ids=ledger_backup_ids)
    if backup_id == LATEST:
        complete = [s for s in sets if s.complete]
        if not complete:
            raise RestoreRefused(
                f"backup_id: no complete backup set found on {destination.description}"
                + (f" for installation {installation_id!r}" if installation_id else "")
            )
        chosen = complete[0]
    else:
        matches = [s for s in sets if s.backup_id == backup_id]
        if not matches:
            raise RestoreRefused(f"backup_id: no backup {backup_id!r} on {destination.description}")
        chosen = matches[0]
        if not chosen.complete:
            raise RestoreRefused(
                f"backup {backup_id} is incomplete: it has no manifest (parts found: {', '.join(chosen.parts)}); "
                "it is not a backup and cannot be restored"
            )
    files = {
        f.properties.get(PROP_PART_NAME, ""): f
        for f in destination.list(
            {PROP_APP: APP_NAME, PROP_INSTALLATION: chosen.installation_id, PROP_BACKUP_ID: chosen.backup_id}
        )
    }
    manifest_file = files[PART_MANIFEST]
    plaintext = decrypt_stream(
        download_backup(destination, manifest_file.id, manifest_file.size),
        expected_backup_id=chosen.backup_id,
        expected_part_name=PART_MANIFEST,
        org_keyring=keys.org_keyring,
        recovery_identity=keys.recovery_identity,
    )
    try:
        manifest = parse_manifest(_read_all(plaintext, MANIFEST_LIMIT_BYTES))
    except ArchiveKeyError:
        raise  # wrong or mistyped key: the caller reports it as bad input, apart from damage
    except ArchiveError as exc:
        raise RestoreRefused(
            f"backup {chosen.backup_id}: the manifest does not authenticate: {exc}"
        ) from None
    parts: dict[str, PartRef] = {}
    missing: list[str] = []
    for entry in manifest_parts(manifest):
        stored = files.get(entry["part_name"])
        if stored is None:
            missing.append(entry["part_name"])
            continue
        if stored.size != int(entry["size"]):
            raise RestoreRefused(
                f"backup {chosen.backup_id}: part {entry['part_name']!r} is {stored.size} bytes on the "
                f"destination, the manifest says {entry['size']} (truncated or replaced)"
            )
        parts[entry["part_name"]] = PartRef(
            part_name=entry["part_name"],
            file_id=stored.id,
            size=int(entry["size"]),
            sha256=str(entry["sha256"]),
            plaintext_size=int(entry["plaintext_size"]),
            plaintext_sha256=str(entry["plaintext_sha256"]),
        )
    if missing:
        raise RestoreRefused(
            f"backup {chosen.backup_id} is incomplete: the manifest lists parts missing on the destination: "
            + ", ".join(sorted(missing))
        )
    return ResolvedBackup(chosen.backup_id, chosen.installation_id, manifest, parts)


def needed_parts(resolved: ResolvedBackup, options: RestoreOptions) -> list[str]:
    """The parts a restore with ``options`` reads; unknown buckets are refused by name."""
    names: list[str] = []
    if options.restores_database:
        if PART_DATABASE not in resolved.parts:
            raise RestoreRefused(f"backup {resolved.backup_id} has no database part")
        names.append(PART_DATABASE)
    if options.restores_files:
        available = resolved.buckets
        unknown = sorted(set(options.buckets) - set(available))
        if unknown:
            raise RestoreRefused(
                f"buckets: {', '.join(unknown)} not in backup {resolved.backup_id} "
                f"(it has: {', '.join(available) or 'no buckets'})"
            )
        names += [bucket_part_name(b) for b in (options.buckets or available)]
    return names


class _Counter:
    def __init__(self) -> None:
        self.size = 0
        self.sha256 = hashlib.sha256()

    def wrap(self, blocks: Iterable[bytes]) -> Iterator[bytes]:
        for block in blocks:
            self.size += len(block)
            self.sha256.update(block)
            yield block


def open_part(
    destination: Destination,
    keys: RestoreKeys,
    resolved: ResolvedBackup,
    part_name: str,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[bytes]:
    """The authenticated plaintext of one part, streamed.

    Every chunk is authenticated before it is yielded; after the last one the ciphertext and
    plaintext SHA-256 and sizes are compared with the manifest, and a mismatch raises
    ``PartVerificationError`` *before* the iterator ends — so a consumer that acts only once
    the stream ended cleanly (pg_restore's transaction, the verify pass) never acts on it.
    """
    ref = resolved.parts[part_name]
    cipher, plain = _Counter(), _Counter()
    try:
        ciphertext = cipher.wrap(download_backup(destination, ref.file_id, ref.size, on_progress=on_progress))
        yield from plain.wrap(
            decrypt_stream(
                ciphertext,
                expected_backup_id=resolved.backup_id,
                expected_part_name=part_name,
                org_keyring=keys.org_keyring,
                recovery_identity=keys.recovery_identity,
            )
        )
    except ArchiveError as exc:
        raise PartVerificationError(resolved.backup_id, part_name, f"{type(exc).__name__}: {exc}") from None
    problems = []
    if cipher.size != ref.size or cipher.sha256.hexdigest() != ref.sha256:
        problems.append(f"ciphertext {cipher.size} bytes / sha256 {cipher.sha256.hexdigest()[:16]}…")
    if plain.size != ref.plaintext_size or plain.sha256.hexdigest() != ref.plaintext_sha256:
        problems.append(f"plaintext {plain.size} bytes / sha256 {plain.sha256.hexdigest()[:16]}…")
    if problems:
        raise PartVerificationError(
            resolved.backup_id, part_name, "does not match the manifest: " + "; ".join(problems)
        )


class PartVerificationError(RestoreRefused):
    def __init__(self, backup_id: str, part_name: str, detail: str):
        self.part_name = part_name
        super().__init__(f"backup {backup_id}, part {part_name!r}: {detail}; nothing was restored from it")


def verify_part(
    destination: Destination, keys: RestoreKeys, resolved: ResolvedBackup, part_name: str
) -> dict[str, Any]:
    """Authenticate one part end to end against the manifest, keeping no plaintext."""
    started = time.monotonic()
    size = 0
    for block in open_part(destination, keys, resolved, part_name):
        size += len(block)
    ref = resolved.parts[part_name]
    return {
        "part": part_name,
        "bytes": ref.size,
        "plaintext_bytes": size,
        "sha256": ref.sha256,
        "seconds": round(time.monotonic() - started, 2),
    }


def verify_parts(
    destination: Destination, keys: RestoreKeys, resolved: ResolvedBackup, part_names: Sequence[str]
) -> list[dict[str, Any]]:
    """Every needed part verified before anything is touched (the first failure refuses all)."""
    return [verify_part(destination, keys, resolved, name) for name in part_names]


def decrypt_backup(
    ciphertext: Iterable[bytes], keys: RestoreKeys, backup_id: str, part_name: str
) -> Iterator[bytes]:
    """Authenticated decryption of one part's ciphertext stream (see ``archive.stream_crypto``)."""
    return decrypt_stream(
        ciphertext,
        expected_backup_id=backup_id,
        expected_part_name=part_name,
        org_keyring=keys.org_keyring,
        recovery_identity=keys.recovery_identity,
    )


# --------------------------------------------------------------------------------------
# Manifest reading (the document ``services/backup_finalize.manifest_document`` writes)
# --------------------------------------------------------------------------------------
def parse_manifest(plaintext: bytes) -> dict[str, Any]:
    """The manifest, normalised to ``{backup_id, versions, parts: [...], inventory: {bucket: [...]}}``.

    Reads the archive's ``Manifest`` schema (``backup_pipeline.manifest/1``) and the backup
    job's finalize document (``services/backup_finalize.manifest_document``).
    """
    import json

    try:
        raw = json.loads(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RestoreRefused(f"the manifest is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise RestoreRefused("the manifest is not a JSON object")
    if raw.get("format") == MANIFEST_FORMAT:
        try:
            m = Manifest.from_json(plaintext)
        except ArchiveError as exc:
            raise RestoreRefused(str(exc)) from None
        inventory: dict[str, list[list[Any]]] = {}
        for e in m.inventory:
            inventory.setdefault(e.bucket, []).append([e.key, e.size, e.sha256])
        return {
            "backup_id": m.backup_id,
            "versions": dict(m.versions),
            "parts": [
                {
                    "part_name": p.name,
                    "size": p.ciphertext_size,
                    "sha256": p.ciphertext_sha256,
                    "plaintext_size": p.plaintext_size,
                    "plaintext_sha256": p.plaintext_sha256,
                }
                for p in m.parts
            ],
            "inventory": inventory,
        }
    if not isinstance(raw.get("parts"), list):
        raise RestoreRefused("the manifest has no list of parts")
    try:
        return {
            "backup_id": str(raw.get("backup_id", "")),
            "versions": {str(k): str(v) for k, v in (raw.get("versions") or {}).items() if v is not None},
            "parts": [
                {k: p[k] for k in ("part_name", "size", "sha256", "plaintext_size", "plaintext_sha256")}
                for p in raw["parts"]
            ],
            "inventory": {
                str(b["bucket"]): [[o["key"], int(o["size"]), o["sha256"]] for o in b.get("objects", [])]
                for b in raw.get("buckets", [])
            },
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise RestoreRefused(f"the manifest does not follow the schema: {exc!r}") from None


def manifest_parts(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [dict(p) for p in manifest.get("parts", [])]


def manifest_inventory(manifest: Mapping[str, Any], bucket: str) -> list[IncomingObject]:
    return [
        IncomingObject(str(k), int(n), str(h)) for k, n, h in manifest.get("inventory", {}).get(bucket, [])
    ]


def database_has_tables(target: PgTarget) -> bool:
    """Whether the target database exists and holds at least one user table (worth a safety backup)."""
    try:
        with psycopg.connect(target.conninfo(), autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
            ).fetchone()
    except psycopg.OperationalError:
        return False
    return bool(row and row[0])


# --------------------------------------------------------------------------------------
# The whole procedure in one call (the disaster-recovery CLI; the job runs it as steps)
# --------------------------------------------------------------------------------------
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
    """Resolve → confirm → verify every needed part → (safety backup) → database → buckets → report.

    Nothing is changed before every needed part verified. ``safety_backup`` is called with the
    target before a non-empty database is replaced; without one, such a restore is refused.
    """
    resolved = resolve_backup(destination, keys, options.backup_id, installation_id=installation_id)
    check_confirmation(options, resolved.backup_id)
    parts = needed_parts(resolved, options)
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
    if options.restores_files and s3_client is None:
        raise RestoreRefused("buckets: no S3 endpoint configured (BACKUP_PIPELINE_S3_ENDPOINT)")
    report: dict[str, Any] = {"backup_id": resolved.backup_id, "dry_run": options.dry_run, "verified": []}
    for name in parts:
        log(f"verifying {name} …")
        report["verified"].append(verify_part(destination, keys, resolved, name))
    if options.restores_database:
        assert pg_target is not None and pg_restore is not None
        dump = open_part(destination, keys, resolved, PART_DATABASE)  # lazy: nothing read yet
        if options.dry_run:
            report["database"] = plan_database(dump, pg_target, pg_restore=pg_restore)
        else:
            if database_has_tables(pg_target):
                if safety_backup is None:
                    raise RestoreRefused(
                        f"target database {pg_target.dbname!r} is not empty and no safety backup can be made "
                        "(no org secret): restore into a new database (--target-database) or pass "
                        "--skip-safety-backup to replace it without one"
                    )
                report["safety_backup_id"] = safety_backup(pg_target)
                log(f"safety backup {report['safety_backup_id']} made")
            ensure_database(pg_target)
            log(f"restoring the database into {pg_target.dbname} …")
            report["database"] = restore_database(
                dump, pg_target, pg_restore=pg_restore, schema_only=options.schema_only
            )
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
    report["buckets"] = buckets
    if (
        options.scope is RestoreScope.FULL
        and not options.dry_run
        and not options.schema_only
        and pg_target is not None
        and s3_client is not None
    ):
        report["consistency"] = consistency_report(
            pg_target.conninfo(), s3_client, list(buckets), query=consistency_query
        )
    return report
