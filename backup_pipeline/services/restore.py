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
import logging
import os
import re
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Protocol

import psycopg
from minio import Minio
from minio.commonconfig import Tags
from minio.error import S3Error
from psycopg import sql

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
# Decompression of bucket parts (multi-member gzip) into a readable stream
# --------------------------------------------------------------------------------------
class IterStream(IO[bytes]):
    """A read-only file object over an iterator of byte blocks (for tarfile / put_object)."""

    def __init__(self, blocks: Iterable[bytes]):
        self._blocks = iter(blocks)
        self._buffer = b""
        self._position = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = [self._buffer, *self._blocks]
            self._buffer = b""
            data = b"".join(parts)
            self._position += len(data)
            return data
        while len(self._buffer) < n:
            try:
                self._buffer += next(self._blocks)
            except StopIteration:
                break
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        self._position += len(data)
        return data

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        close = getattr(self._blocks, "close", None)
        if close is not None:
            close()


def decompress_backup(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """Gunzip a (multi-member) gzip stream block by block."""
    import zlib

    decomp = zlib.decompressobj(wbits=31)
    for block in blocks:
        data = block
        while data:
            out = decomp.decompress(data)
            if out:
                yield out
            if decomp.eof:
                data = decomp.unused_data
                decomp = zlib.decompressobj(wbits=31)
            else:
                data = b""
    tail = decomp.flush()
    if tail:
        yield tail


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


def object_sha256(client: Minio, bucket: str, key: str) -> str:
    digest = hashlib.sha256()
    response = client.get_object(bucket, key)
    try:
        for block in response.stream(1024 * 1024):
            digest.update(block)
    finally:
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


def plan_bucket(
    client: Minio,
    bucket: str,
    inventory: Iterable[IncomingObject],
    policy: ConflictPolicy,
    key_prefix: str = "",
) -> dict[str, Any]:
    """Dry run of one bucket: counts per action, nothing written. Uses the same ``decide``."""
    summary = BucketSummary(bucket)
    exists = _bucket_exists(client, bucket)
    summary.bucket_created = not exists
    current: dict[str, int] = {}
    if exists:
        for obj in client.list_objects(bucket, prefix=key_prefix or None, recursive=True):
            if obj.object_name is not None:
                current[obj.object_name] = int(obj.size or 0)
    for item in inventory:
        if not item.key.startswith(key_prefix):
            continue
        action = decide(
            policy,
            item,
            current.get(item.key),
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


def put_entry(client: Minio, bucket: str, key: str, entry: RestoreEntry, expected_sha256: str | None) -> int:
    reader = _HashingReader(entry.fileobj)
    client.put_object(
        bucket,
        key,
        reader,  # type: ignore[arg-type]
        entry.size,
        content_type=entry.content_type or "application/octet-stream",
        metadata=dict(entry.metadata) or None,  # type: ignore[arg-type]
        tags=_tags_for(entry.tags),
        part_size=16 * 1024 * 1024,
        num_parallel_uploads=1,
    )
    if expected_sha256 and reader.digest.hexdigest() != expected_sha256:
        # Cannot happen with an authenticated part unless the manifest and part disagree.
        raise RestoreError(f"s3://{bucket}/{key}: SHA-256 written differs from the manifest's")
    return reader.count


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
) -> BucketSummary:
    """Write the entries of one bucket part according to ``policy``.

    A failed object is counted and named, the rest continue; an S3 server that stops
    answering ends the bucket (every following object would fail too) with the summary of
    what was written attached to the raised ``BucketRestoreFailed``.
    """
    summary = BucketSummary(bucket)
    try:
        if not _bucket_exists(client, bucket):
            client.make_bucket(bucket)
            summary.bucket_created = True
        for entry in entries:
            if not entry.key.startswith(key_prefix):
                _drain(entry.fileobj)
                continue
            incoming = inventory.get(entry.key) or IncomingObject(entry.key, entry.size, "")
            action = decide(
                policy,
                incoming,
                _existing_size(client, bucket, entry.key),
                lambda key=entry.key: object_sha256(client, bucket, key),  # type: ignore[misc]
            )
            if action is ObjectAction.SKIP:
                _drain(entry.fileobj)
            else:
                target = (
                    keep_both_key(entry.key, backup_id) if action is ObjectAction.KEEP_BOTH else entry.key
                )
                try:
                    summary.bytes_written += put_entry(client, bucket, target, entry, incoming.sha256 or None)
                except S3Error as exc:
                    summary.failed += 1
                    summary.failures.append(f"{entry.key}: {exc.code}")
                    _drain(entry.fileobj)
                    continue
            summary.count(action)
            if on_progress is not None:
                on_progress(summary)
        summary.completed = True
        return summary
    except BucketRestoreFailed:
        raise
    except Exception as exc:
        raise BucketRestoreFailed(summary, exc) from exc


class BucketRestoreFailed(RestoreError):
    def __init__(self, summary: BucketSummary, cause: BaseException):
        self.summary = summary
        self.cause = cause
        super().__init__(
            f"bucket {summary.bucket}: restore stopped ({type(cause).__name__}: {_safe(cause)}) after "
            f"{summary.added} added, {summary.overwritten} overwritten, {summary.skipped} skipped, "
            f"{summary.kept_both} kept both, {summary.failed} failed"
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
