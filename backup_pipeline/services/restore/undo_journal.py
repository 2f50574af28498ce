"""The undo journal of a bucket restore: a run that fails or is killed leaves the buckets as before.

A bucket restore changes objects one by one; the journal is what makes the run all-or-nothing.
Write ordering and failure behaviour (MUST; BACKUP-STRATEGY.md § "Bucket restore undo journal"):

* **Where.** One directory per run, ``<state_dir>/restore-undo/<token>/`` (the token of
  ``scratch.py``: ``r<run id>`` for a Dagster run, ``p<random>`` for the CLI), one append-only
  JSON Lines file per bucket (``<n>.jsonl``; the bucket is named in its first line) and the
  markers ``COMMITTED`` / ``ABORTED``. Old versions are kept as server-side copies in the SAME
  bucket under the reserved prefix ``.bp-restore-undo/<token>/<sequence>``: a copy within a bucket
  needs no right beyond those the restore already uses on it (no second bucket to create, name
  globally or grant), stays on the same storage, and the short sequence keys never hit a key
  length rule the original key passed. Backups skip the prefix (``backup_buckets.iter_listing``).
* **Before each change** the entry is durable (written and fsynced; concurrent puts share one
  fsync): ``created <key>`` before an object is added, ``saved <key> <undo key>`` before the old
  version is copied aside and then overwritten, ``bucket_created`` before a bucket is made. An
  entry whose change never happened is harmless to undo (nothing to delete, no copy to put back).
* **Rollback** (the run failed): entries newest first — put each saved copy back (CopyObject,
  metadata and tags COPY), delete each created object, remove a bucket the run created if it is
  empty — then every object left under the run's undo prefix, then the journal. Each step is
  idempotent, so a rollback that stops (S3 down) is simply run again later.
* **Commit** (the whole run succeeded, database swap included): ``COMMITTED`` durable FIRST, then
  the undo copies are deleted, then the directory. A journal found with ``COMMITTED`` is only
  cleaned up, never rolled back.
* **Killed process.** The next real restore (job or CLI) calls ``recover_journals`` before doing
  anything else: a journal of a process provably gone (``p``: its owner lock is free; ``r``: its
  Dagster run is finished) is rolled back (or cleaned up when committed) and reported.

Memory stays constant: entries go to the file as they happen and rollback reads it backwards in
blocks, whatever the number of objects.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minio import Minio
from minio.commonconfig import COPY, CopySource
from minio.error import S3Error

from backup_pipeline.durable_files import fsync_dir
from backup_pipeline.services.backup_parts import UNDO_PREFIX as UNDO_PREFIX  # re-exported
from backup_pipeline.services.errors import S3_ERRORS, first_line
from backup_pipeline.services.object_headers import put_headers, record_headers, wire_value
from backup_pipeline.services.restore.common import RestoreError

JOURNAL_DIR = "restore-undo"
COMMITTED = "COMMITTED"
ABORTED = "ABORTED"
_OWNER_LOCK = "owner.lock"
_RUN_LOCK = "run.lock"
_TOKEN = re.compile(r"^[pr][0-9a-f]{32}$")
_MISSING = ("NoSuchKey", "NoSuchObject", "NoSuchBucket", "NoSuchVersion")
#: ``run_id`` → True when that Dagster run is finished, False while it runs, None when unknown.
RunFinished = Callable[[str], bool | None]


class UndoError(RestoreError):
    """The journal could not be written, or a rollback could not finish (it is kept to retry)."""


def _write_marker(directory: Path, name: str) -> None:
    path = directory / name
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(name + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    fsync_dir(directory)


def _run_id(token: str) -> str:
    h = token[1:]
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def undo_prefix(token: str) -> str:
    return f"{UNDO_PREFIX}{token}/"


class BucketJournal:
    """The append-only journal of one bucket in one run; open while the bucket is restored.

    The file is held under an exclusive ``flock`` while open, so a rollback from another
    process (the job's failure hook) leaves a bucket being restored to its own step.
    """

    def __init__(self, path: Path, client: Minio, bucket: str, token: str) -> None:
        self.path = path
        self.bucket = bucket
        self.token = token
        self._client = client
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            raise UndoError(f"the undo journal {path} is in use by another process") from None
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._written = 0  # entries written
        self._synced = 0  # entries known durable
        # Reopened (a retried step): undo keys continue after the lines already there, so an
        # earlier entry's copy is never overwritten.
        self._sequence = _count_lines(path)
        self.entries = 0
        if os.fstat(self._fd).st_size == 0:
            self._append({"op": "begin", "bucket": bucket, "token": token})
            self.durable()
            fsync_dir(path.parent)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # frees the flock
            self._fd = -1

    def __enter__(self) -> BucketJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _append(self, entry: dict[str, Any]) -> int:
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            # O_APPEND and one write per line: a line is never interleaved with another.
            os.write(self._fd, line)
            self._written += 1
            return self._written

    def durable(self, upto: int | None = None) -> None:
        """Every entry up to number ``upto`` (default: all written) is on disk (one fsync covers many)."""
        target = self._written if upto is None else upto
        if self._synced >= target:
            return
        with self._sync_lock:
            if self._synced >= target:
                return
            written = self._written
            os.fsync(self._fd)
            self._synced = max(self._synced, written)

    def bucket_created(self) -> None:
        self.durable(self._append({"op": "bucket_created"}))

    def will_create(self, key: str) -> int:
        """Record that ``key`` did not exist; returns the entry number to make durable before the put."""
        self.entries += 1
        return self._append({"op": "created", "key": key})

    def will_overwrite(self, key: str) -> tuple[int, str]:
        """Record that ``key`` existed; returns (entry number, undo key) — copy aside before the put."""
        with self._lock:
            self._sequence += 1
            undo = f"{undo_prefix(self.token)}{self._sequence}"
        self.entries += 1
        return self._append({"op": "saved", "key": key, "undo": undo}), undo

    def save_copy(self, key: str, undo: str) -> None:
        """The current version of ``key`` copied aside to ``undo`` (headers, metadata, tags kept)."""
        try:
            copy_exactly(self._client, self.bucket, key, undo)
        except ValueError as exc:  # minio: over 5 GiB a copy cannot keep metadata (multipart copy)
            raise UndoError(
                f"s3://{self.bucket}/{key}: no exact undo copy can be made ({exc}); nothing was changed for it"
            ) from None


class _RawBody:
    """A GET response read as the bytes on the wire (a gzip-encoded body is never inflated)."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def read(self, n: int = -1) -> bytes:
        return bytes(self._response.read(None if n < 0 else n, decode_content=False))


def copy_exactly(client: Minio, bucket: str, source: str, target: str) -> None:
    """``source`` copied to ``target`` in ``bucket`` with its bytes, headers, metadata and tags.

    CopyObject (directives COPY) where it is exact. A folder marker (a key ending in ``/``) is
    streamed instead (GET, then PUT of the recorded headers, as a restore writes objects):
    SeaweedFS answers NoSuchKey when copying from one and writes an empty
    ``application/x-directory`` object when copying to one.
    """
    if not (source.endswith("/") or target.endswith("/")):
        client.copy_object(
            bucket, target, CopySource(bucket, source), metadata_directive=COPY, tagging_directive=COPY
        )
        return
    stat = client.stat_object(bucket, source)
    recorded = record_headers((stat.metadata or {}).items())
    tags = client.get_object_tags(bucket, source)
    response = client.get_object(bucket, source)
    try:
        client.put_object(
            bucket,
            target,
            _RawBody(response),  # type: ignore[arg-type]
            int(stat.size or 0),
            content_type=wire_value(stat.content_type or "application/octet-stream"),
            sse=put_headers(recorded.headers, recorded.metadata),
            tags=tags,
            part_size=16 * 1024 * 1024,
        )
    finally:
        response.close()
        response.release_conn()


@dataclass
class RollbackReport:
    token: str
    committed: bool = False
    buckets: list[str] = field(default_factory=list)
    restored: int = 0  # old versions put back
    deleted: int = 0  # objects the run had created, removed
    undo_copies_removed: int = 0
    buckets_removed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "committed": self.committed,
            "buckets": self.buckets,
            "restored": self.restored,
            "deleted": self.deleted,
            "undo_copies_removed": self.undo_copies_removed,
            "buckets_removed": self.buckets_removed,
            "notes": self.notes[:20],
        }

    def message(self) -> str:
        if self.committed:
            return (
                f"restore {self.token} had succeeded: removed its {self.undo_copies_removed} undo copies "
                f"({', '.join(self.buckets) or 'no bucket'})"
            )
        return (
            f"rolled back the buckets of restore {self.token} ({', '.join(self.buckets) or 'no bucket'}): "
            f"{self.restored} objects put back as they were, {self.deleted} objects it created deleted"
            + (
                f", buckets it created removed: {', '.join(self.buckets_removed)}"
                if self.buckets_removed
                else ""
            )
        )


def _count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as handle:
        while block := handle.read(1024 * 1024):
            count += block.count(b"\n")
    return count


def _lines_reversed(path: Path, block: int = 64 * 1024) -> Iterator[str]:
    """The lines of ``path`` last first, reading blocks from the end (constant memory per line)."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        position = handle.tell()
        tail = b""
        while position > 0:
            step = min(block, position)
            position -= step
            handle.seek(position)
            chunk = handle.read(step) + tail
            lines = chunk.split(b"\n")
            tail = lines[0]
            for line in reversed(lines[1:]):
                if line:
                    yield line.decode("utf-8")
        if tail:
            yield tail.decode("utf-8")


def _first_line(path: Path) -> dict[str, Any] | None:
    with open(path, encoding="utf-8") as handle:
        line = handle.readline()
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _missing(exc: BaseException) -> bool:
    return isinstance(exc, S3Error) and exc.code in _MISSING


def _remove_undo_copies(client: Minio, bucket: str, token: str) -> int:
    removed = 0
    try:
        for obj in client.list_objects(bucket, prefix=undo_prefix(token), recursive=True):
            if obj.object_name is not None:
                client.remove_object(bucket, obj.object_name)
                removed += 1
    except S3Error as exc:
        if not _missing(exc):
            raise
    return removed


def _rollback_bucket(client: Minio, path: Path, report: RollbackReport) -> None:
    head = _first_line(path)
    if head is None or head.get("op") != "begin":
        # A file cut before its first line was durable: nothing was changed after it.
        path.unlink()
        return
    bucket = str(head["bucket"])
    token = str(head["token"])
    report.buckets.append(bucket)
    created_bucket = False
    for line in _lines_reversed(path):
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a torn last line: its change was never made (the entry comes first)
        op = entry.get("op")
        if op == "saved":
            try:
                copy_exactly(client, bucket, entry["undo"], entry["key"])
                report.restored += 1
            except S3Error as exc:
                if not _missing(exc):  # no copy: the object was never changed
                    raise
        elif op == "created":
            try:
                client.remove_object(bucket, entry["key"])
                report.deleted += 1
            except S3Error as exc:
                if not _missing(exc):  # the bucket is gone: nothing of it to delete
                    raise
        elif op == "bucket_created":
            created_bucket = True
    report.undo_copies_removed += _remove_undo_copies(client, bucket, token)
    if created_bucket and client.bucket_exists(bucket):
        if next(iter(client.list_objects(bucket, recursive=True)), None) is None:
            client.remove_bucket(bucket)
            report.buckets_removed.append(bucket)
        else:
            report.notes.append(f"bucket {bucket} was created by the restore but holds other objects: kept")
    path.unlink()


def _cleanup_bucket(client: Minio, path: Path, report: RollbackReport) -> None:
    head = _first_line(path)
    if head is not None and head.get("op") == "begin":
        report.buckets.append(str(head["bucket"]))
        report.undo_copies_removed += _remove_undo_copies(client, str(head["bucket"]), str(head["token"]))
    path.unlink()


class RunJournal:
    """The undo journals of one restore run (one file per bucket) and its markers."""

    def __init__(self, state_dir: Path | str, token: str) -> None:
        if not _TOKEN.match(token):
            raise ValueError(f"not a restore token: {token!r}")
        self.token = token
        self.directory = Path(state_dir) / JOURNAL_DIR / token
        self._owner: int | None = None

    def exists(self) -> bool:
        return self.directory.is_dir()

    def create(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fsync_dir(self.directory.parent)

    def hold(self) -> None:
        """A single process (the CLI) holds the run for its lifetime: a free lock proves it gone."""
        self.create()
        fd = os.open(self.directory / _OWNER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._owner = fd

    def release(self) -> None:
        if self._owner is not None:
            os.close(self._owner)
            self._owner = None

    @contextlib.contextmanager
    def run_lock(self) -> Iterator[None]:
        """Serialises the decisions of the run's processes (a bucket step finishing, a failure hook)."""
        self.create()
        fd = os.open(self.directory / _RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _bucket_files(self) -> list[Path]:
        if not self.exists():
            return []
        return sorted(self.directory.glob("*.jsonl"))

    def open_bucket(self, client: Minio, bucket: str) -> BucketJournal:
        self.create()
        for path in self._bucket_files():
            head = _first_line(path)
            if head is not None and head.get("bucket") == bucket:
                return BucketJournal(path, client, bucket, self.token)
        number = len(self._bucket_files()) + 1
        while (self.directory / f"{number}.jsonl").exists():
            number += 1
        return BucketJournal(self.directory / f"{number}.jsonl", client, bucket, self.token)

    @property
    def aborted(self) -> bool:
        return (self.directory / ABORTED).exists()

    @property
    def committed(self) -> bool:
        return (self.directory / COMMITTED).exists()

    def mark_aborted(self) -> None:
        self.create()
        _write_marker(self.directory, ABORTED)

    def rollback(self, client: Minio, *, only_idle: bool = False) -> RollbackReport:
        """Undo every bucket of the run (``only_idle``: those no process is restoring right now).

        Raises ``UndoError`` (the journal kept, to be rolled back again) when S3 does not answer.
        """
        report = RollbackReport(self.token)
        if self.committed:
            raise UndoError(f"restore {self.token} was committed: it is not rolled back")
        busy = 0
        for path in self._bucket_files():
            fd = os.open(path, os.O_RDONLY)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    if only_idle:
                        busy += 1
                        continue
                    raise UndoError(f"the undo journal {path} is in use by another process") from None
                try:
                    _rollback_bucket(client, path, report)
                except S3_ERRORS as exc:
                    raise UndoError(
                        f"rollback of restore {self.token} stopped ({first_line(exc)}): "
                        f"the undo journal {self.directory} is kept and the next restore rolls back first"
                    ) from None
            finally:
                os.close(fd)
        if not busy:
            self._remove_directory()
        return report

    def commit(self, client: Minio) -> RollbackReport:
        """The run succeeded: ``COMMITTED`` durable first, then the undo copies and the journal go."""
        report = RollbackReport(self.token, committed=True)
        if not self.exists():
            return report
        _write_marker(self.directory, COMMITTED)
        return self._finish_commit(client, report)

    def _finish_commit(self, client: Minio, report: RollbackReport) -> RollbackReport:
        for path in self._bucket_files():
            try:
                _cleanup_bucket(client, path, report)
            except S3_ERRORS as exc:
                raise UndoError(
                    f"restore {self.token} succeeded, but removing its undo copies stopped ({first_line(exc)}); "
                    "the next restore removes them"
                ) from None
        self._remove_directory()
        return report

    def _remove_directory(self) -> None:
        for name in (ABORTED, _OWNER_LOCK, _RUN_LOCK):
            with contextlib.suppress(FileNotFoundError):
                (self.directory / name).unlink()
        # COMMITTED goes last: until then a crash resumes the cleanup, never a rollback.
        with contextlib.suppress(FileNotFoundError):
            (self.directory / COMMITTED).unlink()
        with contextlib.suppress(OSError):
            self.directory.rmdir()

    def recover(self, client: Minio) -> RollbackReport:
        """A dead run's journal: finish its commit, or roll it back."""
        if self.committed:
            return self._finish_commit(client, RollbackReport(self.token, committed=True))
        return self.rollback(client)


def _owner_gone(directory: Path) -> bool:
    path = directory / _OWNER_LOCK
    if not path.exists():
        return True
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def recover_journals(
    state_dir: Path | str,
    client: Minio,
    *,
    run_finished: RunFinished | None = None,
    exclude: str | None = None,
) -> tuple[list[RollbackReport], list[str]]:
    """Roll back (or finish committing) the journals of restores that are provably gone.

    Returns (what was done, journals left alone with why). ``p`` tokens: their owner lock is free.
    ``r`` tokens: ``run_finished(run id)`` is True (without ``run_finished``, or when the run is
    unknown, the journal is left alone and named). ``exclude``: this run's own token.
    """
    root = Path(state_dir) / JOURNAL_DIR
    done: list[RollbackReport] = []
    left: list[str] = []
    if not root.is_dir():
        return done, left
    for directory in sorted(root.iterdir()):
        token = directory.name
        if not directory.is_dir() or not _TOKEN.match(token) or token == exclude:
            continue
        if token.startswith("p"):
            gone = _owner_gone(directory)
        else:
            gone = bool(run_finished(_run_id(token))) if run_finished is not None else False
        if not gone:
            left.append(f"{directory}: its restore may still be running")
            continue
        done.append(RunJournal(state_dir, token).recover(client))
    return done, left


def pending_journals(state_dir: Path | str) -> list[Path]:
    root = Path(state_dir) / JOURNAL_DIR
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.is_dir() and _TOKEN.match(d.name))
