"""The application's PostgreSQL: connections, the pg_dump/pg_restore tools, and the data lease.

Everything here reports the endpoint it talked to as ``user@host:port/dbname`` and never
the password: the password comes from ``BACKUP_PIPELINE_APP_DATABASE_PASSWORD`` (a Dagster
``EnvVar``, shown in the UI by name only) or from ``~/.pgpass``, and reaches the tools
through ``PGPASSWORD`` in their environment, never on a command line.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
from dagster import ConfigurableResource
from pydantic import Field

from backup_pipeline.services import data_lease
from backup_pipeline.services.data_lease import DataLockBusy as DataLockBusy  # the error type callers catch
from backup_pipeline.services.data_lease import HolderFinished

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


class PostgresUnavailable(Exception):
    """The server could not be reached or refused us; the message names the endpoint, never the password."""


class PgToolsError(Exception):
    """pg_dump/pg_restore are missing or older than the server."""


@dataclass(frozen=True)
class PgTool:
    name: str
    path: Path
    version: str  # e.g. "15.20"

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


@dataclass(frozen=True)
class PgTools:
    pg_dump: PgTool
    pg_restore: PgTool

    @property
    def bin_dir(self) -> Path:
        return self.pg_dump.path.parent


def redact_url(url: str) -> str:
    """``user@host:port/db`` without scheme, password or query (for messages)."""
    parts = urlsplit(url)
    user = unquote(parts.username) if parts.username else os.environ.get("PGUSER", "")
    host = parts.hostname or "localhost"
    port = parts.port or 5432
    db = parts.path.strip("/")
    return f"{user + '@' if user else ''}{host}:{port}/{db}"


def libpq_reason(exc: BaseException) -> str:
    """Why libpq could not connect, in one line, without the endpoint (the caller names it).

    libpq writes ``connection to server at "h", port p failed: <reason>`` per address it tried,
    then hint lines (``\tIs the server running on that host ...?``); the reason ("Connection
    refused", ``FATAL:  password authentication failed for user "app"``) is what an operator
    acts on, so it leads, with the first hint after it.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    reasons: list[str] = []
    hints: list[str] = []
    for line in lines:
        _, marker, reason = line.rpartition(" failed: ")
        if marker:
            if reason not in reasons:
                reasons.append(reason)
        elif line.startswith("connection failed"):
            continue
        else:
            hints.append(line)
    if not reasons:
        return " ".join(lines)
    text = "; ".join(" ".join(r.split()) for r in reasons)
    if not hints:
        return text
    hint = hints[0].rstrip("?")
    return f"{text} ({hint[:1].lower()}{hint[1:]}?)"


def tool_version(path: Path) -> str:
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise PgToolsError(f"cannot run {path} --version: {exc}") from None
    match = _VERSION_RE.search(out)
    if not match:
        raise PgToolsError(f"{path} --version printed no PostgreSQL version: {out.strip()!r}")
    return f"{match.group(1)}.{match.group(2) or 0}"


def _candidate_dirs(pg_bin_dir: str | None) -> list[Path]:
    if pg_bin_dir:
        return [Path(pg_bin_dir)]
    dirs: list[Path] = []
    on_path = shutil.which("pg_dump")
    if on_path:
        dirs.append(Path(on_path).parent)
    dirs += [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]
    return dirs


def locate_pg_tools(pg_bin_dir: str | None = None) -> PgTools:
    """The newest pg_dump/pg_restore pair: from ``pg_bin_dir`` if given, else PATH and /usr/lib/postgresql/*/bin.

    The newest is chosen because pg_dump dumps servers of its own and older major versions only.
    """
    found: list[PgTools] = []
    problems: list[str] = []
    for directory in _candidate_dirs(pg_bin_dir):
        dump, restore = directory / "pg_dump", directory / "pg_restore"
        if not (os.access(dump, os.X_OK) and os.access(restore, os.X_OK)):
            problems.append(f"{directory}: no executable pg_dump and pg_restore")
            continue
        try:
            found.append(
                PgTools(
                    PgTool("pg_dump", dump, tool_version(dump)),
                    PgTool("pg_restore", restore, tool_version(restore)),
                )
            )
        except PgToolsError as exc:
            problems.append(str(exc))
    if not found:
        where = (
            f"BACKUP_PIPELINE_PG_BIN_DIR={pg_bin_dir}" if pg_bin_dir else "PATH or /usr/lib/postgresql/*/bin"
        )
        detail = "; ".join(problems) or "nothing found"
        raise PgToolsError(
            f"pg_dump/pg_restore not found in {where} ({detail}); install postgresql-client "
            "of the server's major version or set BACKUP_PIPELINE_PG_BIN_DIR"
        )
    return max(found, key=lambda t: tuple(int(x) for x in t.pg_dump.version.split(".")))


def check_tools_against_server(tools: PgTools, server_major: int, endpoint: str) -> None:
    """Fail clearly when a tool is older than the server: pg_dump refuses newer servers, and a
    dump restored by an older pg_restore may not be readable."""
    for tool in (tools.pg_dump, tools.pg_restore):
        if tool.major < server_major:
            raise PgToolsError(
                f"{tool.name} {tool.version} ({tool.path}) is older than the PostgreSQL {server_major} server "
                f"at {endpoint}; install postgresql-client-{server_major} or set BACKUP_PIPELINE_PG_BIN_DIR "
                f"to a directory with version {server_major} or newer"
            )


class PostgresResource(ConfigurableResource):
    """The application's PostgreSQL database.

    ``password`` is meant to be ``EnvVar("BACKUP_PIPELINE_APP_DATABASE_PASSWORD")``; when it
    is empty libpq falls back to ``~/.pgpass``/trust auth.
    """

    database_url: str = Field(description="libpq URL of the application database, without password.")
    password: str | None = Field(default=None, description="Database password (an EnvVar, never literal).")
    pg_bin_dir: str | None = Field(default=None, description="Directory with pg_dump/pg_restore.")
    connect_timeout_seconds: int = Field(default=10, ge=1)
    application_name: str = Field(default="backup_pipeline")

    @property
    def endpoint(self) -> str:
        return redact_url(self.database_url)

    @property
    def database_name(self) -> str:
        return urlsplit(self.database_url).path.strip("/")

    def url_for(self, dbname: str) -> str:
        """The same server with another database (e.g. ``postgres`` to create/drop databases)."""
        return urlunsplit(urlsplit(self.database_url)._replace(path="/" + dbname))

    def _redact(self, text: str) -> str:
        if self.password:
            text = text.replace(self.password, "***")
        return text

    def connect(
        self, dbname: str | None = None, *, autocommit: bool = False, application_name: str | None = None
    ) -> psycopg.Connection:
        """A new connection; ``PostgresUnavailable`` (naming the endpoint) when it cannot be made."""
        url = self.url_for(dbname) if dbname else self.database_url
        kwargs: dict[str, object] = {
            "autocommit": autocommit,
            "connect_timeout": self.connect_timeout_seconds,
            "application_name": application_name or self.application_name,
        }
        if self.password:
            kwargs["password"] = self.password
        try:
            return psycopg.connect(url, **kwargs)  # type: ignore[arg-type]
        except psycopg.Error as exc:
            reason = self._redact(libpq_reason(exc))
            raise PostgresUnavailable(
                f"cannot connect to PostgreSQL at {redact_url(url)}: {reason}"
            ) from None

    def server_version(self) -> tuple[int, str]:
        """(major, full version string) of the server, e.g. (15, "15.20")."""
        with self.connect() as conn:
            num = conn.info.server_version  # e.g. 150020
            row = conn.execute("SHOW server_version").fetchone()
        return num // 10000, str(row[0]).split()[0] if row else str(num)

    def pg_tools(self, *, check_server: bool = True) -> PgTools:
        """pg_dump/pg_restore, checked against the server's major version unless ``check_server`` is false."""
        tools = locate_pg_tools(self.pg_bin_dir)
        if check_server:
            major, _ = self.server_version()
            check_tools_against_server(tools, major, self.endpoint)
        return tools

    def libpq_env(self, dbname: str | None = None) -> dict[str, str]:
        """Environment for pg_dump/pg_restore/psql subprocesses: connection via PG* variables,
        the password via PGPASSWORD (never argv, which other users and compute logs see)."""
        parts = urlsplit(self.url_for(dbname) if dbname else self.database_url)
        env = dict(os.environ)
        env.update(
            {
                "PGHOST": parts.hostname or "localhost",
                "PGPORT": str(parts.port or 5432),
                "PGDATABASE": parts.path.strip("/"),
                "PGCONNECT_TIMEOUT": str(self.connect_timeout_seconds),
                "PGAPPNAME": self.application_name,
            }
        )
        if parts.username:
            env["PGUSER"] = unquote(parts.username)
        if self.password:
            env["PGPASSWORD"] = self.password
        return env

    def _lease_connect(self) -> psycopg.Connection:
        return self.connect(application_name="backup_pipeline data lease")

    def acquire_data_lease(
        self, run_id: str, *, job: str, holder: str, holder_finished: HolderFinished | None = None
    ) -> data_lease.Acquisition:
        """Take (or share, or take over from a dead holder) the run-level data lease; ``DataLockBusy`` at once
        when a live holder has it (``services/data_lease.py``)."""
        return data_lease.acquire(
            self._lease_connect,
            run_id=run_id,
            job=job,
            holder=holder,
            endpoint=self.endpoint,
            holder_finished=holder_finished,
        )

    def data_lease_heartbeat(
        self,
        run_id: str,
        on_lost: Callable[[str], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> data_lease.LeaseHeartbeat:
        """A context manager refreshing ``run_id``'s lease from a background thread."""
        return data_lease.LeaseHeartbeat(self._lease_connect, run_id, on_lost=on_lost, on_error=on_error)

    def release_data_lease(self, run_id: str) -> bool:
        return data_lease.release(self._lease_connect, run_id)

    def data_lease_holder(self) -> data_lease.LeaseHolder | None:
        return data_lease.current_holder(self._lease_connect)

    @contextmanager
    def data_lock(self, owner: str, *, job: str = "backup-pipeline (outside Dagster)") -> Iterator[None]:
        """Hold the data lease as ``owner`` for the block (one process: the CLI migration, tests).

        Raises ``DataLockBusy`` at once (no waiting) naming the holder run and job. A heartbeat
        thread keeps the lease fresh; if this process dies, the lease is taken over once its
        heartbeat is older than ``DATA_LEASE_STALE_SECONDS``.
        """
        holder = f"{socket.gethostname()} pid {os.getpid()}"
        with data_lease.hold(
            self._lease_connect, run_id=owner, job=job, holder=holder, endpoint=self.endpoint
        ):
            yield
