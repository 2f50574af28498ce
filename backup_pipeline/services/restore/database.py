"""Database restore: the target, version checks, ``pg_restore`` and the dry-run plan of tables."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg import sql

from backup_pipeline.services.restore.common import RestoreError, RestoreRefused, _safe


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
