"""Bucket restore: reading a bucket part's entries, conflict decisions, the dry-run plan and the
parallel writes of objects into the target bucket."""

from __future__ import annotations

import contextlib
import functools
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
    OnUnrestorable,
    RestoreError,
    _safe,
)
from backup_pipeline.services.restore.fidelity import (
    key_risk,
    normalisable,
    served_differently,
    shown_key,
)
from backup_pipeline.services.restore.undo_journal import BucketJournal

log = logging.getLogger(__name__)

#: Keys of unrestorable objects kept in a summary (metadata stays small; the log names them all).
LISTED_KEYS = 20


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
    #: Objects written but served differently than written (headers, type, size).
    inexact: int = 0
    #: The first ``LISTED_KEYS`` objects refused or served differently: "key: why".
    unrestorable: list[str] = field(default_factory=list)

    def note_unrestorable(self, key: str, why: str, *, refused: bool) -> str:
        line = f"{key}: {why}"
        if refused:
            self.failed += 1
            if len(self.failures) < LISTED_KEYS:
                self.failures.append(line)
        else:
            self.inexact += 1
        if len(self.unrestorable) < LISTED_KEYS:
            self.unrestorable.append(line)
        return line

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
            "failures": self.failures[:LISTED_KEYS],
            "inexact": self.inexact,
            "unrestorable": self.unrestorable[:LISTED_KEYS],
        }

    def counts(self) -> dict[str, int]:
        return {
            "added": self.added,
            "overwritten": self.overwritten,
            "skipped": self.skipped,
            "kept_both": self.kept_both,
        }


def keep_both_key(key: str, backup_id: str) -> str:
    """``<key>.restored-<id>``; a folder marker ``a/b/`` stays one: ``a/b.restored-<id>/``."""
    stem = key.rstrip("/")
    if stem and stem != key:
        return stem + KEEP_BOTH_SUFFIX.format(backup_id=backup_id) + key[len(stem) :]
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
    at_risk: list[str] = []
    risky = 0
    for item in inventory:
        if not item.key.startswith(key_prefix):
            continue
        risk = key_risk(item.key)
        if risk is not None:
            risky += 1
            if len(at_risk) < LISTED_KEYS:
                at_risk.append(f"{item.key}: {risk}")
        action = decide(
            policy,
            item,
            _size_now(client, bucket, item.key, existing),
            lambda key=item.key: object_sha256(client, bucket, key),  # type: ignore[misc]
        )
        summary.count(action)
    summary.completed = True
    # Only key shapes can be predicted: whether this server rewrites a header shows on writing.
    return {**summary.as_dict(), "at_risk": risky, "at_risk_keys": at_risk}


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


def _size_now(client: Minio, bucket: str, key: str, existing: ExistingSizes) -> int | None:
    """The size of ``key`` in the bucket now. A key the listing lacks but the server may normalise
    is also asked for (a HEAD of ``x//y`` on such a server answers for ``x/y``, which the write would
    replace: it must be journaled and, under ``skip``, kept)."""
    size = existing.size(key)
    if size is None and normalisable(key):
        size = _existing_size(client, bucket, key)
    return size


@dataclass(frozen=True)
class _Change:
    """How one object is written: its journal entry (made durable first) and undo copy, if any."""

    target: str
    journal: BucketJournal | None = None
    entry_no: int = 0
    undo: str | None = None
    verify: bool = True


@dataclass(frozen=True)
class _Written:
    bytes: int
    problem: str | None = None  # refused or served differently: the object is unrestorable
    refused: bool = False


def _apply(
    client: Minio, bucket: str, change: _Change, entry: RestoreEntry, write: Callable[[], int]
) -> _Written:
    """Journal entry durable → old version copied aside → put → HEAD (the write ordering)."""
    if change.journal is not None:
        change.journal.durable(change.entry_no)
        if change.undo is not None:
            change.journal.save_copy(change.target, change.undo)
    try:
        written = write()
    except S3Error as exc:
        # The server refused this object (its key, a header, …): one object, not the server gone.
        return _Written(0, f"refused by the server: {exc.code}", refused=True)
    problem = (
        served_differently(
            client, bucket, change.target, entry.size, entry.content_type, entry.headers, entry.metadata
        )
        if change.verify
        else None
    )
    return _Written(written, problem)


def _put_body(client: Minio, bucket: str, change: _Change, entry: RestoreEntry, body: bytes) -> _Written:
    def write() -> int:
        # BytesIO over the whole body hands minio the same bytes object: no copy per put.
        _put(client, bucket, change.target, entry, io.BytesIO(body))
        return len(body)

    return _apply(client, bucket, change, entry, write)


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


class Unrestorable(RestoreError):
    """An object the target cannot hold exactly, with ``on_unrestorable=fail``: the run stops."""


@dataclass
class _InFlight:
    future: Future[_Written]
    key: str  # the archive key, as failures name it
    action: ObjectAction
    size: int


class _Outcomes:
    """Counts each finished write in the caller's thread; an unrestorable object is listed and,
    under ``fail``, stops the bucket."""

    def __init__(
        self,
        summary: BucketSummary,
        on_progress: Callable[[BucketSummary], None] | None,
        on_unrestorable: OnUnrestorable,
        report: Callable[[str], None] | None,
    ) -> None:
        self.summary = summary
        self._on_progress = on_progress
        self._policy = on_unrestorable
        self._report = report

    def record(self, key: str, action: ObjectAction, written: _Written) -> None:
        summary = self.summary
        summary.bytes_written += written.bytes
        if written.problem is not None:
            line = summary.note_unrestorable(key, written.problem, refused=written.refused)
            if self._report is not None:
                self._report(f"s3://{summary.bucket}/{line}")
            if self._policy is OnUnrestorable.FAIL:
                raise Unrestorable(
                    f"s3://{summary.bucket}/{shown_key(key)}: {written.problem} — the target cannot hold "
                    "it exactly (on_unrestorable=continue restores the other objects and lists such ones)"
                )
        if not written.refused:
            summary.count(action)
        if self._on_progress is not None:
            self._on_progress(summary)


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
        outcomes: _Outcomes,
        *,
        workers: int,
        max_objects: int,
        max_bytes: int,
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._outcomes = outcomes
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

    def submit(
        self, key: str, change: _Change, entry: RestoreEntry, body: bytes, action: ObjectAction
    ) -> None:
        self.make_room(len(body))
        future = self._pool.submit(_put_body, self._client, self._bucket, change, entry, body)
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
        self._outcomes.record(item.key, item.action, item.future.result())

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
    journal: BucketJournal | None = None,
    on_unrestorable: OnUnrestorable = OnUnrestorable.CONTINUE,
    report_unrestorable: Callable[[str], None] | None = None,
    verify: bool = True,
) -> BucketSummary:
    """Write the entries of one bucket part according to ``policy``.

    Whether each object exists comes from ``ExistingSizes`` (one streamed listing, see there).
    Bodies of at most ``small_object_bytes`` are read here, checked against the manifest's
    SHA-256 and put by ``workers`` threads, at most ``window_bytes`` of them held at once;
    larger ones are streamed from the archive in this thread after the window drained, so
    memory is the larger of the two rather than their sum.

    With a ``journal`` every change is recorded (and the old version copied aside) before it
    is made, so the caller can roll the bucket back (``undo_journal``). ``verify``: one HEAD
    per written object checks what the server serves. An object the server refuses or serves
    differently is unrestorable: named to ``report_unrestorable`` (all of them) and in the
    summary (the first ``LISTED_KEYS``); ``on_unrestorable=fail`` then stops the bucket
    (``BucketRestoreFailed`` caused by ``Unrestorable``), ``continue`` goes on. Callers pass
    the operator's choice (``RestoreOptions.on_unrestorable``, default ``fail``). An S3 server
    that stops answering ends the bucket (every following object would fail too) with the
    summary of what was written attached to the raised ``BucketRestoreFailed``.
    """
    summary = BucketSummary(bucket)
    outcomes = _Outcomes(summary, on_progress, on_unrestorable, report_unrestorable)
    put_workers = _put_workers(client, workers)
    try:
        if not _bucket_exists(client, bucket):
            if journal is not None:
                journal.bucket_created()
            client.make_bucket(bucket)
            summary.bucket_created = True
        existing = ExistingSizes(
            () if summary.bucket_created else _listing(client, bucket, key_prefix),
            lambda key: _existing_size(client, bucket, key),
        )
        with _PutWindow(
            client,
            bucket,
            outcomes,
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
                size_now = _size_now(client, bucket, entry.key, existing)
                action = decide(
                    policy,
                    incoming,
                    size_now,
                    lambda key=entry.key: object_sha256(client, bucket, key),  # type: ignore[misc]
                )
                if action is ObjectAction.SKIP:
                    _drain(entry.fileobj)
                    summary.count(action)
                    if on_progress is not None:
                        on_progress(summary)
                    continue
                target = entry.key
                if action is ObjectAction.KEEP_BOTH:
                    target = keep_both_key(entry.key, backup_id)
                    # An earlier restore of this backup may have left that key: it is overwritten.
                    size_now = _existing_size(client, bucket, target)
                change = _journal_change(journal, target, size_now is not None, verify)
                if entry.size <= small_object_bytes:
                    window.make_room(entry.size)
                    body = _read_body(bucket, target, entry, incoming.sha256 or None)
                    window.submit(entry.key, change, entry, body, action)
                    continue
                window.drain()
                written = _apply(
                    client,
                    bucket,
                    change,
                    entry,
                    functools.partial(
                        put_entry, client, bucket, change.target, entry, incoming.sha256 or None
                    ),
                )
                if written.refused:
                    _drain(entry.fileobj)
                outcomes.record(entry.key, action, written)
            window.drain()
        summary.completed = True
        return summary
    except BucketRestoreFailed:
        raise
    except Exception as exc:
        raise BucketRestoreFailed(summary, exc, s3_endpoint(client)) from exc


def _journal_change(journal: BucketJournal | None, target: str, exists: bool, verify: bool) -> _Change:
    if journal is None:
        return _Change(target, verify=verify)
    if exists:
        entry_no, undo = journal.will_overwrite(target)
        return _Change(target, journal, entry_no, undo, verify)
    return _Change(target, journal, journal.will_create(target), None, verify)


class BucketRestoreFailed(RestoreError):
    def __init__(self, summary: BucketSummary, cause: BaseException, endpoint: str = "S3"):
        self.summary = summary
        self.cause = cause
        # An OSError may as well come from reading the backup part; only minio/urllib3 errors are S3's.
        from_s3 = isinstance(cause, S3_ERRORS) and not isinstance(cause, OSError)
        if from_s3:
            why = s3_error_reason(cause, endpoint, "writing objects")
        elif isinstance(cause, RestoreError):
            why = str(cause)[:1000]  # our own wording: no secret in it
        else:
            why = f"{type(cause).__name__}: {_safe(cause)}"
        super().__init__(
            f"bucket {summary.bucket}: restore stopped after "
            f"{summary.added} added, {summary.overwritten} overwritten, {summary.skipped} skipped, "
            f"{summary.kept_both} kept both, {summary.failed} failed: {why}"
        )


def _drain(fileobj: IO[bytes]) -> None:
    while fileobj.read(1024 * 1024):
        pass
