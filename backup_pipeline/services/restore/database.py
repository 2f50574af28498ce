"""Database restore: the target, version checks, ``pg_restore`` into a scratch database, the dry run.

The restore never writes into the target (see ``scratch.py`` for the names and the swap):

1. ``inspect_dump`` reads the dump's table of contents (encoding, locale, database-level
   properties, roles); ``check_privileges`` / ``check_roles`` refuse before anything is touched.
2. ``restore_into_scratch``: ``CREATE DATABASE bp_restore_<token> … TEMPLATE template0`` with the
   dump's encoding and locale, ``pg_restore --exit-on-error`` into it (no ``--clean``: it is
   empty, so any object ``pg_dump`` can dump restores, in dependency order), then the row count of
   every table against the manifest's ``table_rows``. Any failure — a pg_restore error, the
   source stream failing, pg_restore killed — drops the scratch database and leaves the target
   as it was; a killed caller leaves it to ``cleanup_leftovers``.
3. ``swap_into_place`` (at the end of the run) renames in one transaction.

``plan_database`` (dry run) and the real run name and count tables through the same functions
(``services/table_rows.py``), so their tables and row counts agree.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from backup_pipeline.destinations.base import Destination
from backup_pipeline.services.backup_parts import PART_DATABASE
from backup_pipeline.services.restore.common import (
    Ownership,
    RestoreError,
    RestoreOptions,
    RestoreRefused,
    _safe,
)
from backup_pipeline.services.restore.dump_info import (
    IDENT,
    DatabaseFacts,
    database_facts_of,
    inspect_dump,
    unquote_ident,
)
from backup_pipeline.services.restore.pipes import FedProcess, StderrTail
from backup_pipeline.services.restore.scratch import (
    claim_scratch,
    create_scratch,
    database_exists,
    drop_database,
    swap_into_place,
)
from backup_pipeline.services.restore.sets import ResolvedBackup, RestoreKeys, open_part
from backup_pipeline.services.table_rows import (
    TableRef,
    count_rows,
    row_count_problems,
    row_counts,
    user_tables,
)


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


def pg_restore_command(
    pg_restore: Path, dbname: str, *, ownership: Ownership, schema_only: bool
) -> list[str]:
    """The argv (no secret: the connection comes from PG* variables and PGPASSWORD)."""
    cmd = [str(pg_restore), "--exit-on-error", f"--dbname={psycopg.conninfo.make_conninfo(dbname=dbname)}"]
    if ownership is Ownership.NONE:
        cmd += ["--no-owner", "--no-privileges"]
    if schema_only:
        cmd.append("--schema-only")
    return cmd


def _run_pg_restore(cmd: list[str], blocks: Iterable[bytes], env: Mapping[str, str]) -> tuple[int, int, str]:
    """Feed ``blocks`` to pg_restore's stdin: (exit code, bytes written, stderr tail).

    The source failing mid-stream kills pg_restore and re-raises, so nothing of a truncated
    archive is ever taken for a whole one.
    """
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(env)
    )
    assert proc.stdin is not None and proc.stderr is not None
    tail = StderrTail(proc.stderr)
    tail.start()
    written = 0
    try:
        for block in blocks:
            proc.stdin.write(block)
            written += len(block)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # pg_restore stopped reading: its exit status and stderr say why
    except BaseException:
        proc.kill()
        proc.wait()
        tail.join(5)
        raise
    code = proc.wait()
    tail.join(5)
    return code, written, tail.text()


def restore_into_scratch(
    dump_blocks: Iterable[bytes],
    target: PgTarget,
    scratch: str,
    *,
    pg_restore: Path,
    ownership: Ownership = Ownership.SOURCE,
    schema_only: bool = False,
    expected_rows: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Restore the dump into the new database ``scratch`` on ``target``'s server and check it.

    The caller holds ``claim_scratch(target, scratch)``. On success the scratch database holds
    the backup (the caller swaps it in or drops it); on any failure it is dropped and the error
    says the target was not touched. ``expected_rows`` (the manifest's ``table_rows``): every
    table with exactly these rows, else the restore fails before any swap.
    """
    started = time.monotonic()
    facts, blocks = inspect_dump(dump_blocks, pg_restore=pg_restore)
    create_scratch(target, scratch, facts)
    try:
        cmd = pg_restore_command(pg_restore, scratch, ownership=ownership, schema_only=schema_only)
        # Commits of the scratch database need not wait for the disk: a crash discards it anyway,
        # and the swap's own (synchronous) commit flushes all WAL before it.
        env = {**target.env(), "PGOPTIONS": "-c synchronous_commit=off"}
        code, written, stderr = _run_pg_restore(cmd, blocks, env)
        if code != 0:
            raise RestoreError(
                f"pg_restore into the scratch database {scratch} failed (exit {code}); it was dropped and "
                f"database {target.dbname!r} was not touched:\n{_safe(Exception(stderr))}"
            )
        tables = _check_scratch(target, scratch, None if schema_only else expected_rows)
    except BaseException:
        drop_database(target, scratch)
        raise
    return {
        "scratch_database": scratch,
        "target_database": target.dbname,
        "bytes": written,
        "schema_only": schema_only,
        "ownership": ownership.value,
        "tables": tables,
        "rows": sum(t["rows"] or 0 for t in tables),
        "seconds": round(time.monotonic() - started, 2),
        "source_database": facts.to_dict(),
    }


def install_restored_database(
    target: PgTarget,
    restored: Mapping[str, Any],
    *,
    token: str,
    pg_dump: Path,
    options: RestoreOptions,
    claimed: bool = False,
) -> dict[str, Any]:
    """Swap the scratch database ``restore_into_scratch`` returned (``restored``) in as ``target``
    (``scratch.swap_into_place``), with the options' ownership and keep-previous choice.

    The target's own database-level properties (owner, comment, settings, grants), read with
    ``pg_dump --create`` just before, are kept; a target that does not exist yet gets the backup's.
    ``claimed``: the caller holds ``claim_scratch`` already (a single process, the CLI).
    """
    scratch = str(restored["scratch_database"])
    with nullcontext() if claimed else claim_scratch(target, scratch):
        if not database_exists(target, scratch):
            raise RestoreError(
                f"the scratch database {scratch} is gone: nothing was swapped into {target.dbname!r}"
            )
        target_facts = (
            database_facts_of(target.dbname, pg_dump=pg_dump, env=target.env())
            if database_exists(target, target.dbname)
            else None
        )
        return swap_into_place(
            target,
            scratch,
            token=token,
            source_facts=DatabaseFacts.from_dict(restored["source_database"]),
            ownership=options.ownership,
            target_facts=target_facts,
            keep_previous=options.keep_previous_database,
        )


def verify_database_part(
    destination: Destination, keys: RestoreKeys, resolved: ResolvedBackup, *, pg_restore: Path
) -> tuple[dict[str, Any], DatabaseFacts]:
    """``verify_part`` of the database part, reading the dump's ``DatabaseFacts`` on the way
    (roles and privileges are checked with them before anything is touched)."""
    started = time.monotonic()
    facts, blocks = inspect_dump(open_part(destination, keys, resolved, PART_DATABASE), pg_restore=pg_restore)
    size = sum(len(block) for block in blocks)
    ref = resolved.parts[PART_DATABASE]
    result = {
        "part": PART_DATABASE,
        "bytes": ref.size,
        "plaintext_bytes": size,
        "sha256": ref.sha256,
        "seconds": round(time.monotonic() - started, 2),
    }
    return result, facts


def _check_scratch(
    target: PgTarget, scratch: str, expected: Mapping[str, int] | None
) -> list[dict[str, Any]]:
    """Rows per table of the restored database; with ``expected``, any difference fails."""
    with psycopg.connect(target.conninfo(scratch), autocommit=True) as conn:
        if expected:
            counted = row_counts(conn, expected)
            problems = row_count_problems(expected, counted)
            if problems:
                raise RestoreError(
                    f"the database restored into {scratch} does not match the backup's manifest "
                    f"({'; '.join(problems[:10])}); it was dropped and database {target.dbname!r} was not touched"
                )
            return [{"table": label, "rows": counted[label]} for label in sorted(expected)]
        return [{"table": t.display, "rows": count_rows(conn, t)} for t in user_tables(conn)]


_COPY = re.compile(rf"^COPY (?P<schema>{IDENT})\.(?P<table>{IDENT}) (?:\(.*\) )?FROM stdin;$")


def dump_row_counts(dump_blocks: Iterable[bytes], *, pg_restore: Path) -> dict[str, int]:
    """Tables and row counts in a dump, by streaming its SQL rendering (nothing stored).

    For sets whose manifest records no ``table_rows``. Table names are read as the SQL
    identifiers pg_dump writes and labelled like ``TableRef.display``.
    """
    fed = FedProcess([str(pg_restore), "--data-only", "--file", "-"], dump_blocks)
    counts: dict[str, int] = {}
    current: str | None = None
    for raw in fed.stdout:
        if current is None:
            match = _COPY.match(raw.decode("utf-8", "replace").rstrip("\n"))
            if match:
                table = TableRef(unquote_ident(match["schema"]), unquote_ident(match["table"]))
                current = table.display
                counts.setdefault(current, 0)
        elif raw.rstrip(b"\n") == b"\\.":
            current = None
        else:
            counts[current] += 1
    code = fed.wait()
    if fed.failure is not None:
        raise fed.failure
    if code != 0:
        raise RestoreError(f"pg_restore could not read the dump (exit {code}): {fed.tail.text()}")
    return counts


def current_row_counts(target: PgTarget, tables: Iterable[str]) -> dict[str, int | None]:
    """Row counts of the tables labelled ``tables`` in the target now; None where absent."""
    wanted = list(tables)
    try:
        conn = psycopg.connect(target.conninfo(), autocommit=True)
    except psycopg.OperationalError:
        return dict.fromkeys(wanted)
    with conn:
        return row_counts(conn, wanted)


def plan_database(
    dump_blocks: Iterable[bytes],
    target: PgTarget,
    *,
    pg_restore: Path,
    expected_rows: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Dry run of the database: per table, rows in the backup against rows in the target now.

    Rows in the backup are the manifest's ``table_rows`` (what the real run checks the restored
    database against); only for older sets without them is the dump streamed and counted.
    """
    in_backup = dict(expected_rows) if expected_rows else dump_row_counts(dump_blocks, pg_restore=pg_restore)
    now = current_row_counts(target, in_backup)
    tables = [
        {"table": name, "rows_in_backup": in_backup[name], "rows_now": now.get(name)}
        for name in sorted(in_backup)
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
