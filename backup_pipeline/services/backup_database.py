"""The database part: ``pg_dump --format=custom`` streamed from stdout, never staged on disk.

The password reaches pg_dump through ``PGPASSWORD`` in its environment only; the command
line (which ``ps`` and logs can show) carries a password-free URL.
"""

from __future__ import annotations

import collections
import fnmatch
import subprocess
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from ..concurrency import DATA_LEASE_TABLE
from ..destinations.base import Destination
from ..resources.postgres import (
    PgTools,
    PgToolsError,
    PostgresResource,
    PostgresUnavailable,
    check_tools_against_server,
    locate_pg_tools,
)
from .backup_parts import PART_DATABASE, SET_KIND_REGULAR, BackupError, ErrorCode
from .backup_upload import Encryptor, UploadedPart, upload_part
from .errors import first_line
from .progress import ProgressTracker
from .table_rows import TableRef, count_rows, user_tables

DUMP_CHUNK_SIZE = 1024 * 1024
LEASE_TABLE = TableRef("public", DATA_LEASE_TABLE)
# Phrases libpq/pg_dump print when the server cannot be reached or drops the connection.
_CONNECTION_TROUBLE = (
    "could not connect",
    "connection to server",
    "server closed the connection",
    "terminating connection",
    "connection refused",
    "no such file or directory",
    "could not translate host name",
)


def locate_and_check_pg_dump(pg: PostgresResource) -> tuple[PgTools, int, str]:
    """pg_dump/pg_restore located and checked against the server: (tools, server major, server version)."""
    try:
        tools = locate_pg_tools(pg.pg_bin_dir)
    except PgToolsError as exc:
        raise BackupError(ErrorCode.PG_DUMP_NOT_FOUND, str(exc)) from None
    try:
        major, full = pg.server_version()
    except PostgresUnavailable as exc:
        raise BackupError(ErrorCode.DATABASE_UNREACHABLE, str(exc), retryable=True) from None
    try:
        check_tools_against_server(tools, major, pg.endpoint)
    except PgToolsError as exc:
        raise BackupError(ErrorCode.PG_DUMP_TOO_OLD, str(exc)) from None
    return tools, major, full


SCHEMA_VERSION_SETTING = "BACKUP_PIPELINE_SCHEMA_VERSION_QUERY"


@dataclass(frozen=True)
class SchemaVersion:
    """The app's schema version, or None with ``note`` saying why it could not be recorded."""

    value: str | None
    note: str | None = None


def read_schema_version(conn: psycopg.Connection[Any], query: str) -> SchemaVersion:
    """Run the schema-version query on ``conn``.

    An application without the table (or column) the query reads — a new user's database and
    the default query, or an app that has not created its migrations table yet — is not a
    reason to fail a backup: the version is not recorded and ``note`` names the setting. Any
    other error (syntax, permissions) is a misconfiguration: ``SCHEMA_VERSION_QUERY_FAILED``.
    """
    if not query.strip():
        return SchemaVersion(None)
    try:
        row = conn.execute(query).fetchone()  # type: ignore[call-overload]
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as exc:
        conn.rollback()
        return SchemaVersion(
            None,
            f"schema version not recorded: {first_line(exc)} — {SCHEMA_VERSION_SETTING} is {query!r}; set it "
            "to the query giving your application's latest migration, or empty to skip",
        )
    except psycopg.OperationalError:
        raise  # the connection broke: the caller reports the database unreachable
    except psycopg.Error as exc:
        raise BackupError(
            ErrorCode.SCHEMA_VERSION_QUERY_FAILED,
            f"schema version query failed ({first_line(exc)}); fix {SCHEMA_VERSION_SETTING} or set it empty to skip",
        ) from None
    return SchemaVersion(None if row is None or row[0] is None else str(row[0]))


def query_schema_version(pg: PostgresResource, query: str) -> SchemaVersion:
    """The app's latest applied migration (``read_schema_version``) on a connection of its own."""
    if not query.strip():
        return SchemaVersion(None)
    try:
        with pg.connect(autocommit=True) as conn:
            return read_schema_version(conn, query)
    except PostgresUnavailable as exc:
        raise BackupError(ErrorCode.DATABASE_UNREACHABLE, str(exc), retryable=True) from None
    except psycopg.OperationalError as exc:
        raise BackupError(
            ErrorCode.DATABASE_UNREACHABLE, f"reading the schema version: {first_line(exc)}", retryable=True
        ) from None


def pg_dump_command(
    pg_dump: Path, exclude_table_data: Sequence[str], snapshot: str | None = None
) -> list[str]:
    """The argv. The connection comes from PG* variables, so it holds no secret and may be logged."""
    cmd = [str(pg_dump), "--format=custom", "--no-password"]
    if snapshot:
        cmd.append(f"--snapshot={snapshot}")
    cmd += [f"--exclude-table-data={pattern}" for pattern in exclude_table_data]
    # The data lease is the pipeline's, not the app's: a restore must not bring back an old holder.
    cmd.append(f"--exclude-table=public.{DATA_LEASE_TABLE}")
    return cmd


def stream_pg_dump(
    pg_dump: Path,
    env: Mapping[str, str],
    exclude_table_data: Sequence[str] = (),
    *,
    chunk_size: int = DUMP_CHUNK_SIZE,
    on_start: Callable[[list[str]], None] | None = None,
    snapshot: str | None = None,
) -> Generator[bytes, None, None]:
    """Yield pg_dump's stdout chunk by chunk; raise BackupError after the last chunk if it failed.

    ``env`` carries the connection (PGHOST, PGDATABASE, PGPASSWORD, ... from
    ``PostgresResource.libpq_env()``). Closing the generator early (the upload failed)
    kills pg_dump, so no orphan keeps a snapshot open on the server.
    """
    cmd = pg_dump_command(pg_dump, exclude_table_data, snapshot)
    if on_start:
        on_start(cmd)
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(env), stdin=subprocess.DEVNULL
        )
    except OSError as exc:
        raise BackupError(ErrorCode.PG_DUMP_NOT_FOUND, f"cannot start {pg_dump}: {exc}") from None
    assert proc.stdout is not None and proc.stderr is not None
    stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
    stderr_reader = threading.Thread(
        target=_drain_lines, args=(proc.stderr, stderr_tail), name="pg_dump-stderr", daemon=True
    )
    stderr_reader.start()
    completed = False
    try:
        while True:
            chunk = proc.stdout.read(chunk_size)
            if not chunk:
                break
            yield chunk
        rc = proc.wait()
        stderr_reader.join(timeout=10)
        completed = True
        if rc != 0:
            detail = " | ".join(stderr_tail) or f"exit status {rc}"
            password = env.get("PGPASSWORD")
            if password:
                detail = detail.replace(password, "***")
            lowered = detail.lower()
            unreachable = any(p in lowered for p in _CONNECTION_TROUBLE)
            raise BackupError(
                ErrorCode.DATABASE_UNREACHABLE if unreachable else ErrorCode.PG_DUMP_FAILED,
                f"pg_dump failed (exit {rc}): {detail}",
                retryable=unreachable,
            )
    finally:
        if not completed and proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _drain_lines(stream: Any, sink: collections.deque[str]) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").strip()
        if line:
            sink.append(line)
    stream.close()


@dataclass(frozen=True)
class DatabaseDumpResult:
    part: UploadedPart
    server_version: str
    pg_dump_version: str
    schema_version: str | None
    exclude_table_data: tuple[str, ...]
    seconds: float
    # schema.table -> rows in the dump (tables whose data is dumped); what verification compares.
    table_rows: dict[str, int] = field(default_factory=dict)
    # Why schema_version is None although a query is configured (a warning for the run's log).
    schema_version_note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "part": self.part.to_dict(),
            "server_version": self.server_version,
            "pg_dump_version": self.pg_dump_version,
            "schema_version": self.schema_version,
            "schema_version_note": self.schema_version_note,
            "exclude_table_data": list(self.exclude_table_data),
            "seconds": round(self.seconds, 3),
            "table_rows": dict(self.table_rows),
        }


def table_data_excluded(schema: str, table: str, patterns: Sequence[str]) -> bool:
    """Whether pg_dump's ``--exclude-table-data`` patterns cover the table (``*``/``?`` wildcards;
    an unqualified pattern matches the table in any schema, a simplification of search_path)."""
    for pattern in patterns:
        pat = pattern.replace('"', "").lower()
        name = f"{schema}.{table}".lower() if "." in pat else table.lower()
        if fnmatch.fnmatchcase(name, pat):
            return True
    return False


def count_table_rows(conn: psycopg.Connection, exclude_table_data: Sequence[str]) -> dict[str, int]:
    """Exact row counts (``ONLY``: each leaf table by itself) of every table whose data is dumped.

    Run inside the transaction whose snapshot pg_dump uses, so they are the dump's counts;
    the cost is one sequential scan per table. Keys are ``TableRef.display`` labels.
    """
    counts: dict[str, int] = {}
    for table in user_tables(conn):
        if table_data_excluded(table.schema, table.name, exclude_table_data) or table == LEASE_TABLE:
            continue
        counts[table.display] = count_rows(conn, table)
    return counts


def dump_database(
    pg: PostgresResource,
    destination: Destination,
    encryptor: Encryptor,
    *,
    installation_id: str,
    backup_id: str,
    exclude_table_data: Sequence[str] = (),
    schema_version_query: str = "",
    progress: ProgressTracker | None = None,
    on_start: Callable[[list[str]], None] | None = None,
    set_kind: str = SET_KIND_REGULAR,
) -> DatabaseDumpResult:
    """The ``database`` part: pg_dump -Fc stdout → encrypt → destination, verified.

    The schema version is read before the dump starts: a migration applied while the dump
    runs is then *newer* than recorded, never older (pg_dump's snapshot is taken at its start).
    """
    started = time.monotonic()
    tools, _, server_version = locate_and_check_pg_dump(pg)
    schema_version = query_schema_version(pg, schema_version_query)

    def counted(chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            if progress is not None:
                progress.add(len(chunk))
            yield chunk

    # pg_dump runs in this transaction's exported snapshot, so the row counts recorded in the
    # manifest (checked by verification) are exactly what the dump holds.
    try:
        snapshot_conn = pg.connect(application_name="backup_pipeline dump snapshot")
        snapshot_conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        snapshot_conn.read_only = True
    except PostgresUnavailable as exc:
        raise BackupError(ErrorCode.DATABASE_UNREACHABLE, str(exc), retryable=True) from None
    with snapshot_conn:
        try:
            row = snapshot_conn.execute("SELECT pg_export_snapshot()").fetchone()
            snapshot = str(row[0]) if row else None
            table_rows = count_table_rows(snapshot_conn, exclude_table_data)
        except psycopg.Error as exc:
            raise BackupError(
                ErrorCode.PG_DUMP_FAILED, f"counting table rows for the manifest failed: {first_line(exc)}"
            ) from None
        dump = stream_pg_dump(
            tools.pg_dump.path, pg.libpq_env(), exclude_table_data, on_start=on_start, snapshot=snapshot
        )
        try:
            part = upload_part(
                destination,
                encryptor,
                installation_id=installation_id,
                backup_id=backup_id,
                part_name=PART_DATABASE,
                plaintext=counted(dump),
                set_kind=set_kind,
            )
        finally:
            dump.close()  # kills pg_dump if the upload failed half-way
    if progress is not None:
        progress.finish()
    return DatabaseDumpResult(
        part=part,
        server_version=server_version,
        pg_dump_version=tools.pg_dump.version,
        schema_version=schema_version.value,
        exclude_table_data=tuple(exclude_table_data),
        seconds=time.monotonic() - started,
        table_rows=table_rows,
        schema_version_note=schema_version.note,
    )
