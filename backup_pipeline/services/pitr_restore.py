"""Restore the application's cluster to a moment: a NEW data directory, started on another port.

Order (MUST): refuse before touching anything (:func:`check_request`: the directory is new or
empty and not the live server's, the port is free and not the live server's, the moment lies in
the recoverable window) → ``pgbackrest restore`` (it picks the base backup before the target) →
overrides appended to ``postgresql.auto.conf`` (port, sockets, no archiving, our own hba file) →
start with the repository secrets in the server's environment only (``restore_command`` needs
them while WAL is replayed) → wait until recovery ended and the server was promoted → verify (no
longer in recovery, the last replayed commit is not after the target, every table of the
application database is readable, rows counted) → restart WITHOUT the secrets → report.

Never the live server: the restored cluster is a copy to inspect, dump or switch to; switching the
application to it is the operator's step (BACKUP-RESTORE-GUIDE.md, PITR).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from backup_pipeline.services.pitr_engine import (
    EngineConfig,
    PgBackRest,
    PitrEngineError,
    PitrSecrets,
    RepoInfo,
)

LATEST = "latest"
#: Overrides appended after pgBackRest's recovery settings; later lines win in postgresql.auto.conf.
HBA_FILE_NAME = "pg_hba.pitr-restore.conf"
HBA = (
    "# Written by backup-pipeline for a restored copy: local socket (a 0700 folder) trusted,\n"
    "# TCP on loopback with the restored roles' passwords.\n"
    "local all all trust\n"
    "host all all 127.0.0.1/32 scram-sha-256\n"
)
MAX_SOCKET_PATH = 100
SERVER_LOG_NAME = "pitr-restore-server.log"
DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")
#: PostgreSQL's FATAL when the archived WAL ends before a commit past recovery_target_time.
TARGET_NOT_REACHED = "recovery ended before configured recovery target was reached"


class PitrRestoreRefused(Exception):
    """The request is unsafe or impossible; nothing was touched."""


class PitrRestoreFailed(Exception):
    """The restore or the recovery failed; the message says where and what the server logged."""


def parse_target(text: str, field: str = "target time") -> datetime | None:
    """``latest`` → None; else an ISO-8601 moment WITH a UTC offset (a bare time is ambiguous).

    ``field`` names the setting in the error (``target_time`` in job config)."""
    value = text.strip()
    if value.lower() == LATEST:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{field}: must be 'latest' or an ISO-8601 moment with a UTC offset, e.g. "
            f"2026-05-04T10:41:30+02:00 or 2026-05-04T08:41:30Z; got {text!r}"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(
            f"{field}: {text!r} has no UTC offset; add one (Z, +00:00, +02:00) so the moment is unambiguous"
        )
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class RestoreRequest:
    target: datetime | None  # None: the end of the archive ("latest")
    data_dir: Path
    port: int
    database: str  # the application database whose tables are checked
    superuser: str = "postgres"  # a superuser role of the restored cluster (its initdb -U)
    timeout_seconds: float = 3600.0
    #: restore this base backup (pgBackRest ``--set``); None: pgBackRest picks the newest before the target
    backup_set: str | None = None


@dataclass
class RestoreReport:
    target: str
    reached: str | None
    backup_set: str | None
    data_dir: str
    port: int
    socket_dir: str
    database: str
    tables: dict[str, int] = field(default_factory=dict)
    restore_seconds: float = 0.0
    recovery_seconds: float = 0.0
    server_log: str = ""
    #: the moment of the repository restored from (``pitr_repo_as_of``); None: its current state
    repo_as_of: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "reached": self.reached,
            "backup_set": self.backup_set,
            "data_dir": self.data_dir,
            "port": self.port,
            "socket_dir": self.socket_dir,
            "database": self.database,
            "tables": len(self.tables),
            "rows": sum(self.tables.values()),
            "restore_seconds": round(self.restore_seconds, 1),
            "recovery_seconds": round(self.recovery_seconds, 1),
            "server_log": self.server_log,
            "repo_as_of": self.repo_as_of,
            "connect": f"psql -h {self.socket_dir} -p {self.port} -d {self.database}",
            "stop": f"pg_ctl -D {self.data_dir} stop",
        }


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _inside(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return True


def check_request(
    req: RestoreRequest,
    *,
    live_data_dir: Path,
    live_port: int,
    info: RepoInfo,
    latest: datetime | None = None,
    field: str = "target",
) -> None:
    """Refuse (nothing touched) when the restore could harm the live server or cannot succeed.

    ``latest``: the newest restorable moment (the server's last archived segment) when the server
    answers; a target after it cannot be reached (no archived commit follows it), so it is refused
    here rather than after the copy of the base backup. ``field``: how the caller names the target
    (``target_time``, ``--target-time``) in the refusal.
    """
    check_location(req, live_data_dir=live_data_dir, live_port=live_port)
    earliest = info.earliest_restorable
    if earliest is None:
        raise PitrRestoreRefused(
            f"the repository holds no usable base backup for stanza {info.stanza}: nothing to restore from"
        )
    if req.target is None:
        return
    window = window_text(earliest, latest)
    if req.target < earliest:
        raise PitrRestoreRefused(
            f"{field} {req.target.isoformat()} is before the recoverable window {window}, which starts at "
            "the end of the oldest kept base backup"
        )
    check_not_future(req.target, field, f"; the recoverable window is {window}")
    if latest is not None and req.target > latest:
        raise PitrRestoreRefused(
            f"{field} {req.target.isoformat()} is after the recoverable window {window}: no archived WAL "
            "reaches it yet (the segment being written is archived within archive_timeout). Choose "
            "`latest` or an earlier moment, or retry in a minute"
        )


def check_location(req: RestoreRequest, *, live_data_dir: Path, live_port: int) -> None:
    """The refusals about where the copy goes (directory, port): nothing read or touched yet."""
    if _inside(req.data_dir, live_data_dir) or _inside(live_data_dir, req.data_dir):
        raise PitrRestoreRefused(
            f"data directory {req.data_dir} is (or contains, or lies inside) the live server's data "
            f"directory {live_data_dir}: restore into a new directory"
        )
    if req.data_dir.exists() and any(req.data_dir.iterdir()):
        raise PitrRestoreRefused(f"data directory {req.data_dir} is not empty: give a new or empty directory")
    if req.port == live_port:
        raise PitrRestoreRefused(f"port {req.port} is the live server's: choose another port")
    if _port_in_use(req.port):
        raise PitrRestoreRefused(f"port {req.port} is in use on 127.0.0.1: choose a free port")


def check_not_future(target: datetime | None, field: str, hint: str = "") -> None:
    now = datetime.now(UTC)
    if target is not None and target > now:
        raise PitrRestoreRefused(
            f"{field} {target.isoformat()} is in the future (now {now.isoformat(timespec='seconds')}){hint}"
        )


def window_text(earliest: datetime, latest: datetime | None) -> str:
    """``[earliest, latest]`` in UTC seconds; ``latest`` unknown when the live server does not answer."""
    end = latest.astimezone(UTC).isoformat(timespec="seconds") if latest else "the newest archived WAL"
    return f"[{earliest.astimezone(UTC).isoformat(timespec='seconds')}, {end}]"


def _socket_dir_for(data_dir: Path, port: int) -> Path:
    if len(str(data_dir / f".s.PGSQL.{port}.lock")) <= MAX_SOCKET_PATH:
        return data_dir
    return Path(tempfile.mkdtemp(prefix="bp-pitr-sock-"))


def _overrides(port: int, socket_dir: Path, hba: Path) -> str:
    return (
        "\n# backup-pipeline: a restored copy, not the live server\n"
        f"port = {port}\n"
        "listen_addresses = '127.0.0.1'\n"
        f"unix_socket_directories = '{socket_dir}'\n"
        "archive_mode = 'off'\n"
        f"hba_file = '{hba}'\n"
    )


def _prepare_data_dir(engine: PgBackRest, data_dir: Path, port: int) -> Path:
    """Config files a Debian cluster keeps in /etc, our overrides, and the socket folder."""
    user = engine.run_as_user()
    conf = data_dir / "postgresql.conf"
    if not conf.exists():  # Debian: the original lives in /etc/postgresql/<v>/<cluster>
        conf.write_text("# backup-pipeline: the restored copy's settings are in postgresql.auto.conf\n")
    hba = data_dir / HBA_FILE_NAME
    hba.write_text(HBA)
    socket_dir = _socket_dir_for(data_dir, port)
    socket_dir.chmod(0o700)
    with (data_dir / "postgresql.auto.conf").open("a") as handle:
        handle.write(_overrides(port, socket_dir, hba))
    if user is not None:
        for path in (conf, hba, socket_dir):
            os.chown(path, *_ids(user))
    return socket_dir


def _ids(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _pg_ctl(
    engine: PgBackRest, pg_bin: Path, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    argv = [str(pg_bin / "pg_ctl"), *args]
    user = engine.run_as_user()
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PGBACKREST_")}


def _log_tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no server log)"
    important = [ln for ln in text if re.search(r"FATAL|PANIC|ERROR|recovery|stopping", ln)]
    return "\n".join((important or text)[-lines:])


def _connect(socket_dir: Path, port: int, dbname: str, user: str = "postgres") -> psycopg.Connection[Any]:
    """Over the restored copy's socket (trusted, in a 0700 folder) as a superuser of the cluster."""
    return psycopg.connect(host=str(socket_dir), port=port, dbname=dbname, user=user, connect_timeout=5)


def _wait_promoted(
    engine: PgBackRest,
    pg_bin: Path,
    data_dir: Path,
    socket_dir: Path,
    port: int,
    superuser: str,
    log_path: Path,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _pg_ctl(engine, pg_bin, "-D", str(data_dir), "status", env=_clean_env())
        if status.returncode == 3:  # no server running: recovery failed and the postmaster exited
            tail = _log_tail(log_path)
            if TARGET_NOT_REACHED in tail:
                raise PitrRestoreFailed(
                    "the archive does not reach the target yet: no transaction after the target has been "
                    "archived (the newest WAL is shipped within archive_timeout). Choose an earlier moment or "
                    f"`latest`, or retry in a minute. The copy in {data_dir} is unusable: delete it.\n{tail}"
                )
            raise PitrRestoreFailed(f"the restored server stopped during recovery:\n{tail}")
        try:
            with _connect(socket_dir, port, "postgres", superuser) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if row is not None and not row[0]:
                return
        except psycopg.OperationalError:
            pass  # still starting, or not yet consistent
        time.sleep(0.5)
    raise PitrRestoreFailed(
        f"recovery did not finish within {timeout:.0f} s (the server is left running: "
        f"pg_ctl -D {data_dir} stop):\n{_log_tail(log_path)}"
    )


def _tables(socket_dir: Path, port: int, database: str, superuser: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    with _connect(socket_dir, port, database, superuser) as conn:
        rows = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2"
        ).fetchall()
        for schema, table in rows:
            query = sql.SQL("SELECT count(*) FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            result = conn.execute(query).fetchone()
            counts[f"{schema}.{table}"] = int(result[0]) if result else 0
    return counts


def _reached(socket_dir: Path, port: int, superuser: str) -> datetime | None:
    with _connect(socket_dir, port, "postgres", superuser) as conn:
        row = conn.execute("SELECT pg_last_xact_replay_timestamp()").fetchone()
    return row[0] if row else None


BACKUP_SET_LINE = re.compile(r"restore backup set ([0-9]{8}-[0-9]{6}F(?:_[0-9]{8}-[0-9]{6}[DI])?)")


def restore_to_moment(
    engine: PgBackRest,
    req: RestoreRequest,
    *,
    pg_bin: Path | None,
    secrets_env: dict[str, str],
    log: Callable[[str], None] = lambda _m: None,
) -> RestoreReport:
    """Restore, start, verify, restart without secrets. The caller ran :func:`check_request`.

    ``pg_bin``: folder of ``pg_ctl``; None: the Debian folder of the restored cluster's major version.
    """
    target_text = req.target.isoformat() if req.target else LATEST
    started = time.monotonic()
    req.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    req.data_dir.chmod(0o700)
    user = engine.run_as_user()
    if user is not None:
        os.chown(req.data_dir, *_ids(user))
    log(f"pgbackrest restore into {req.data_dir} (target {target_text})")
    try:
        output = engine.restore(req.data_dir, req.target, req.backup_set)
    except PitrEngineError as exc:
        raise PitrRestoreFailed(str(exc)) from None
    found = BACKUP_SET_LINE.search(output)
    restored = time.monotonic()
    pg_bin = pg_bin or server_bin_dir(req.data_dir)
    socket_dir = _prepare_data_dir(engine, req.data_dir, req.port)
    log_path = req.data_dir / SERVER_LOG_NAME
    log(f"starting the restored server on port {req.port}; WAL is replayed from the repository")
    start = _pg_ctl(
        engine,
        pg_bin,
        "-D",
        str(req.data_dir),
        "-l",
        str(log_path),
        "start",
        env={**_clean_env(), **secrets_env},
    )
    if start.returncode != 0:
        raise PitrRestoreFailed(f"pg_ctl start failed: {start.stderr.strip()}\n{_log_tail(log_path)}")
    try:
        _wait_promoted(
            engine, pg_bin, req.data_dir, socket_dir, req.port, req.superuser, log_path, req.timeout_seconds
        )
    finally:
        # Recovery is over (or failed): the WAL prefetcher it started holds the repository secrets
        # and would keep fetching for nobody.
        engine.stop_wal_prefetch()
    recovered = time.monotonic()
    reached = _reached(socket_dir, req.port, req.superuser)
    if req.target is not None and reached is not None and reached > req.target:
        raise PitrRestoreFailed(
            f"recovery went past the target: last replayed commit {reached.isoformat()} > {req.target.isoformat()}"
        )
    tables = _tables(socket_dir, req.port, req.database, req.superuser)
    log(
        f"recovered to {reached.isoformat() if reached else 'an unknown moment'}; {len(tables)} tables readable"
    )
    # The postmaster's environment held the repository secrets for restore_command: restart without.
    restart = _pg_ctl(
        engine,
        pg_bin,
        "-D",
        str(req.data_dir),
        "-l",
        str(log_path),
        "-m",
        "fast",
        "-w",
        "restart",
        env=_clean_env(),
    )
    if restart.returncode != 0:
        raise PitrRestoreFailed(f"restart of the restored server failed: {restart.stderr.strip()}")
    return RestoreReport(
        target=target_text,
        reached=reached.astimezone(UTC).isoformat() if reached else None,
        backup_set=found.group(1) if found else None,
        data_dir=str(req.data_dir),
        port=req.port,
        socket_dir=str(socket_dir),
        database=req.database,
        tables=tables,
        restore_seconds=restored - started,
        recovery_seconds=recovered - restored,
        server_log=str(log_path),
    )


def server_bin_dir(data_dir: Path) -> Path:
    """``/usr/lib/postgresql/<major>/bin`` for the cluster in ``data_dir`` (its PG_VERSION file)."""
    try:
        major = (data_dir / "PG_VERSION").read_text().strip()
    except OSError as exc:
        raise PitrRestoreFailed(
            f"{data_dir} holds no PostgreSQL cluster (PG_VERSION: {exc.strerror})"
        ) from None
    folder = DEBIAN_PG_ROOT / major / "bin"
    if not (folder / "pg_ctl").exists():
        raise PitrRestoreFailed(
            f"pg_ctl of PostgreSQL {major} not found in {folder}: install postgresql-{major} or set "
            "BACKUP_PIPELINE_PG_BIN_DIR"
        )
    return folder


def stop_restored(engine: PgBackRest, pg_bin: Path | None, data_dir: Path) -> None:
    """Stop a restored copy (tests, and the operator's clean-up through the same code)."""
    if not (data_dir / "postmaster.pid").exists():
        return
    pg_bin = pg_bin or server_bin_dir(data_dir)
    _pg_ctl(engine, pg_bin, "-D", str(data_dir), "-m", "fast", "-w", "stop", env=_clean_env())


@contextlib.contextmanager
def scratch_repository(scratch_root: Path | None, prefix: str) -> Iterator[Path]:
    """A temporary directory holding an empty ``repo`` folder (0700) for a posix repository rebuilt
    from elsewhere (Drive units, object versions); removed afterwards, whatever happens."""
    if scratch_root is not None:
        scratch_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=prefix, dir=scratch_root))
    try:
        (scratch / "repo").mkdir(mode=0o700)
        yield scratch
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(scratch)


def scratch_repository_engine(
    cfg: EngineConfig, scratch: Path, passphrase: str
) -> tuple[PgBackRest, PitrSecrets]:
    """pgBackRest on the scratch's posix repository, the scratch handed to the cluster's OS user."""
    secrets = PitrSecrets("", "", passphrase)
    engine = PgBackRest(replace(cfg, posix_repo_path=scratch / "repo", work_dir=scratch / "work"), secrets)
    engine.write_config()
    user = engine.run_as_user()
    if user is not None:  # pgbackrest runs as the cluster's OS user and must read the repository
        for path in (scratch, *scratch.rglob("*")):
            shutil.chown(path, user)
    return engine, secrets
