"""Scratch databases: named so a later run can prove them its own, claimed while in use, swapped in.

A database restore never writes into the target. It restores into a new database
``bp_restore_<token>`` (verification: ``bp_verify_<token>``), checks it, and only then swaps
names with the target in ONE transaction (``swap_into_place``). Write ordering and failure
behaviour (MUST):

* The token says who made the database: ``r<Dagster run id, 32 hex>`` or ``p<random, 32 hex>`` for
  a single process (the CLI, a verification). Nothing else is ever dropped automatically: only a
  name that matches ``bp_(restore|verify)_[pr]<32 hex>`` exactly.
* Whoever works with a scratch database holds a session advisory lock keyed by its name
  (``claim_scratch``) on the server's ``postgres`` database from before it is created until it is
  dropped or swapped in. A killed process loses its session, hence the lock.
* ``cleanup_leftovers`` (at the start of every real restore and every verification) drops a
  scratch database only when its lock is free AND, for an ``r`` token, the Dagster run is known
  to be finished (between the steps of a live run nobody holds the lock). Unknown runs are left
  alone and reported.
* The swap renames the target to ``bp_replaced_<token>`` and the scratch to the target's name,
  and applies the database-level properties, in one transaction: a failure or a kill at any
  point leaves both names as they were. ``bp_replaced_*`` holds the previous database: it is
  dropped right after the swap unless kept on request, and never dropped by a cleanup (a run
  killed between swap and drop leaves it; the operator decides).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors, sql

from backup_pipeline.concurrency import DATA_LEASE_TABLE
from backup_pipeline.services.data_lease import CREATE_LEASE_TABLE, advisory_lock_key
from backup_pipeline.services.errors import first_line
from backup_pipeline.services.restore.common import Ownership, RestoreError, RestoreRefused
from backup_pipeline.services.restore.dump_info import DatabaseFacts

RESTORE = "restore"
VERIFY = "verify"
REPLACED_PREFIX = "bp_replaced_"
_TOKEN = r"[pr][0-9a-f]{32}"
_SCRATCH_NAME = re.compile(rf"^bp_(?:{RESTORE}|{VERIFY})_(?P<token>{_TOKEN})$")
_REPLACED_NAME = re.compile(rf"^{REPLACED_PREFIX}(?P<token>{_TOKEN})$")
#: How often the swap ends the target's sessions and tries again when new ones came in between.
SWAP_ATTEMPTS = 6
#: RENAME waits this long (inside the server) for ended sessions to go away.
_SWAP_LOCK_TIMEOUT = "10s"
_LEASE_TABLE = sql.Identifier("public", DATA_LEASE_TABLE)
#: The swap works from the maintenance database and cannot rename it or the templates.
_NOT_RESTORABLE = frozenset({"postgres", "template0", "template1"})
#: ``run_id`` → True when that Dagster run is finished, False when it still runs, None when unknown.
RunFinished = Callable[[str], bool | None]


class ScratchUnavailable(RestoreError):
    """The scratch database cannot be claimed or created: says nothing about the backup."""


def run_token(run_id: str) -> str:
    """The token of a Dagster run's databases: ``r`` + its run id without dashes."""
    hex_id = run_id.replace("-", "").lower()
    if not re.fullmatch(r"[0-9a-f]{32}", hex_id):
        raise ValueError(f"not a Dagster run id: {run_id!r}")
    return "r" + hex_id


def process_token() -> str:
    """A fresh token for a single process (CLI restore, verification)."""
    return "p" + uuid.uuid4().hex


def scratch_name(purpose: str, token: str) -> str:
    name = f"bp_{purpose}_{token}"
    if not _SCRATCH_NAME.match(name):
        raise ValueError(f"not a scratch database name: {name!r}")
    return name


def replaced_name(token: str) -> str:
    return REPLACED_PREFIX + token


def _run_id(token: str) -> str:
    h = token[1:]
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _admin(target: Any, *, autocommit: bool = True) -> psycopg.Connection:
    """A connection to the server's ``postgres`` database (never the target or a scratch)."""
    return psycopg.connect(
        target.conninfo("postgres"),
        autocommit=autocommit,
        client_encoding="utf8",
        application_name="backup_pipeline restore",
    )


def _claim_key(name: str) -> int:
    return advisory_lock_key(f"backup_pipeline/scratch:{name}")


@contextmanager
def claim_scratch(target: Any, name: str) -> Iterator[None]:
    """Hold the scratch database ``name`` for this process (see the module docstring)."""
    try:
        conn = _admin(target)
    except psycopg.OperationalError as exc:
        raise ScratchUnavailable(
            f"cannot reach the database server to claim {name}: {first_line(exc)}"
        ) from None
    try:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (_claim_key(name),)).fetchone()
        if not row or not row[0]:
            raise ScratchUnavailable(f"the scratch database {name} is in use by another process")
        yield
    finally:
        conn.close()  # ends the session, which frees the lock


def database_exists(target: Any, name: str) -> bool:
    with _admin(target) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def drop_database(target: Any, name: str) -> None:
    """Drop ``name`` if it exists, ending its sessions (servers before 13: without)."""
    with _admin(target) as conn:
        try:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        except errors.SyntaxError:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def _tablespace(conn: psycopg.Connection, dbname: str) -> str | None:
    row = conn.execute(
        "SELECT t.spcname FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace "
        "WHERE d.datname = %s",
        (dbname,),
    ).fetchone()
    return None if row is None or row[0] == "pg_default" else str(row[0])


def create_scratch(target: Any, name: str, facts: DatabaseFacts) -> None:
    """Create the empty scratch database from ``template0`` with the dump's encoding and locale
    (as ``pg_restore --create`` would), in the tablespace of the target if it has one.

    A leftover of the same name is this run's own (a retried step) and is dropped first.
    """
    with _admin(target) as conn:
        tablespace = _tablespace(conn, target.dbname)
    drop_database(target, name)
    options = facts.create_options or "TEMPLATE = template0"
    statement = f"CREATE DATABASE {sql.Identifier(name).as_string(None)} WITH {options}"
    if tablespace:
        statement += f" TABLESPACE = {sql.Identifier(tablespace).as_string(None)}"
    try:
        with _admin(target) as conn:
            conn.execute(statement.encode())
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ScratchUnavailable(
            f"cannot create the scratch database {name} on {target.host}:{target.port}: {first_line(exc)} "
            f"(the database role needs CREATEDB); database {target.dbname!r} was not touched"
        ) from None
    except psycopg.Error as exc:
        raise ScratchUnavailable(
            f"cannot create the scratch database {name} WITH {options} on {target.host}:{target.port} "
            f"(the backup's encoding and locale; a locale missing on this server must be installed): "
            f"{first_line(exc)}; database {target.dbname!r} was not touched"
        ) from None


# --------------------------------------------------------------------------------------
# Checks before anything is touched
# --------------------------------------------------------------------------------------
def check_or_note(dry_run: bool, notes: list[str], check: Callable[..., object], *args: Any) -> None:
    """A real run: ``check(*args)`` refuses (``RestoreRefused``). A dry run touches nothing and
    refuses nothing: the refusal is added to ``notes``, what the real run would say."""
    try:
        check(*args)
    except RestoreRefused as exc:
        if not dry_run:
            raise
        notes.append(str(exc))


def check_can_create(target: Any) -> tuple[str, bool]:
    """Refuse, naming the fix, when this role cannot create a scratch database: (role, superuser)."""
    with _admin(target) as conn:
        me = conn.execute(
            "SELECT current_user, rolsuper, rolcreatedb FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    assert me is not None
    user, superuser, createdb = str(me[0]), bool(me[1]), bool(me[2])
    if not (superuser or createdb):
        raise RestoreRefused(
            f"database role {user!r} may not create databases (CREATEDB): a restore or verification builds the "
            "database under a temporary name and checks it before anything else. Grant it "
            f"(ALTER ROLE {sql.Identifier(user).as_string(None)} CREATEDB) or use a role that has CREATEDB"
        )
    return user, superuser


def check_privileges(target: Any) -> dict[str, Any]:
    """Refuse, naming the fix, when this role cannot create the scratch or swap the target."""
    if target.dbname in _NOT_RESTORABLE:
        raise RestoreRefused(
            f"target database: {target.dbname!r} is one of the server's own databases; restore into the "
            "application's database or another name"
        )
    user, superuser = check_can_create(target)
    with _admin(target) as conn:
        owner_row = conn.execute(
            "SELECT pg_get_userbyid(datdba), pg_has_role(datdba, 'USAGE') FROM pg_database WHERE datname = %s",
            (target.dbname,),
        ).fetchone()
    if owner_row is not None and not superuser and not owner_row[1]:
        raise RestoreRefused(
            f"database role {user!r} does not own database {target.dbname!r} (owner: {owner_row[0]!r}): only "
            "its owner or a superuser can swap the restored database in; restore as that role or a superuser"
        )
    return {"role": user, "superuser": superuser, "target_exists": owner_row is not None}


def check_roles(target: Any, facts: DatabaseFacts, ownership: Ownership) -> list[str]:
    """Refuse when the dump needs roles this server lacks (or this role may not act for);
    returns the roles the restore relies on."""
    needed = sorted(facts.roles_needed(ownership))
    if not needed:
        return []
    with _admin(target) as conn:
        rows = conn.execute(
            "SELECT rolname, pg_has_role(rolname, 'MEMBER') FROM pg_roles WHERE rolname = ANY(%s)", (needed,)
        ).fetchall()
        superuser_row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    existing = {str(name): bool(member) for name, member in rows}
    missing = [role for role in needed if role not in existing]
    if missing and ownership is Ownership.SOURCE:
        raise RestoreRefused(
            "ownership: the backup's objects belong or are granted to roles this server does not have: "
            f"{_names(missing)}. Create them first (CREATE ROLE …), or restore with ownership none "
            "(CLI: --ownership none): the restoring role then owns everything and the backup's grants are skipped"
        )
    if missing:
        raise RestoreRefused(
            "row-level security policies or user mappings of the backup name roles this server does not "
            f"have: {_names(missing)}. Create them first (ownership none cannot leave them out)"
        )
    superuser = bool(superuser_row and superuser_row[0])
    if ownership is Ownership.SOURCE and not superuser:
        # pg_database_owner stands for the owner of the database being restored: the restoring role.
        foreign = sorted(
            role for role in facts.owners if role != "pg_database_owner" and not existing.get(role, False)
        )
        if foreign:
            raise RestoreRefused(
                f"ownership: source gives objects to {_names(foreign)}, which only a superuser or a member "
                "of those roles may do: restore as a superuser, or with ownership none (CLI: --ownership none)"
            )
    return needed


def _names(roles: list[str]) -> str:
    shown = ", ".join(repr(r) for r in roles[:20])
    return shown + (f" and {len(roles) - 20} more" if len(roles) > 20 else "")


# --------------------------------------------------------------------------------------
# Leftovers of killed runs
# --------------------------------------------------------------------------------------
@dataclass
class Cleanup:
    dropped: list[str]
    in_use: list[str]  # claimed by a live process, or of a Dagster run still running
    unproven: list[str]  # of a Dagster run this caller cannot look up: left alone
    replaced: list[str]  # previous databases of swapped restores: never dropped automatically
    failed: list[str]

    def as_dict(self) -> dict[str, list[str]]:
        return {k: v for k, v in vars(self).items() if v}


def cleanup_leftovers(target: Any, *, run_finished: RunFinished | None = None) -> Cleanup:
    """Drop the scratch databases whose makers are provably gone (see the module docstring)."""
    result = Cleanup([], [], [], [], [])
    with _admin(target) as conn:
        names = [str(r[0]) for r in conn.execute("SELECT datname FROM pg_database ORDER BY 1").fetchall()]
        for name in names:
            if _REPLACED_NAME.match(name):
                result.replaced.append(name)
                continue
            match = _SCRATCH_NAME.match(name)
            if not match:
                continue
            token = match["token"]
            key = _claim_key(name)
            free = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            if not free or not free[0]:
                result.in_use.append(name)
                continue
            try:
                if token.startswith("r"):
                    finished = run_finished(_run_id(token)) if run_finished else None
                    if finished is None:
                        result.unproven.append(name)
                        continue
                    if not finished:
                        result.in_use.append(name)
                        continue
                try:
                    conn.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                    )
                    result.dropped.append(name)
                except psycopg.Error:
                    result.failed.append(name)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
    return result


# --------------------------------------------------------------------------------------
# The swap
# --------------------------------------------------------------------------------------
def _carry_data_lease(target: Any, scratch: str) -> int:
    """Copy the data lease rows of the target into the scratch database before the swap: the
    running restore holds the lease in the database being replaced (pg_dump leaves the table out)."""
    try:
        with psycopg.connect(target.conninfo(), autocommit=True) as conn:
            exists = conn.execute("SELECT to_regclass(%s)", (f"public.{DATA_LEASE_TABLE}",)).fetchone()
            if not exists or exists[0] is None:
                return 0
            rows = conn.execute(
                sql.SQL("SELECT name, run_id, job, holder, acquired_at, heartbeat_at FROM {}").format(
                    _LEASE_TABLE
                )
            ).fetchall()
    except psycopg.OperationalError:
        return 0
    with psycopg.connect(target.conninfo(scratch), autocommit=False) as conn:
        schema = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'public'").fetchone()
        if schema is None:
            conn.execute("CREATE SCHEMA public")
        conn.execute(CREATE_LEASE_TABLE)
        for row in rows:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (name, run_id, job, holder, acquired_at, heartbeat_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING"
                ).format(_LEASE_TABLE),
                row,
            )
    return len(rows)


def _end_sessions(conn: psycopg.Connection, dbnames: list[str]) -> list[str]:
    """Terminate every other session of these databases; the ``role (pid)`` it may not end."""
    left = []
    rows = conn.execute(
        "SELECT pid, usename FROM pg_stat_activity WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
        (dbnames,),
    ).fetchall()
    for pid, role in rows:
        try:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        except psycopg.errors.InsufficientPrivilege:
            left.append(f"{role} (pid {pid})")
    return left


def swap_into_place(
    target: Any,
    scratch: str,
    *,
    token: str,
    source_facts: DatabaseFacts,
    ownership: Ownership,
    target_facts: DatabaseFacts | None,
    keep_previous: bool = False,
) -> dict[str, Any]:
    """Make the checked scratch database the target, in one transaction.

    ``target_facts``: the database-level properties of the existing target (``None``: there is no
    target yet). The restored database keeps the target's owner, comment, settings and grants;
    a new database gets the backup's (``source_facts``; with ``ownership: none`` without roles).
    Other sessions of the target are ended first (the application's connections are closed; it
    reconnects to the restored database). Returns what happened, including the replaced name.
    """
    exists = target_facts is not None
    previous = replaced_name(token) if exists else None
    statements = (
        list(target_facts.statements)
        if target_facts is not None
        else source_facts.statements_for(target.dbname, ownership)
    )
    lease_rows = _carry_data_lease(target, scratch) if exists else 0
    rename = sql.SQL("ALTER DATABASE {} RENAME TO {}")
    blocked: list[str] = []
    with _admin(target) as admin, _admin(target, autocommit=False) as conn:
        for attempt in range(SWAP_ATTEMPTS):
            blocked = _end_sessions(admin, [target.dbname, scratch])
            try:
                with conn.transaction():
                    conn.execute(
                        sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(_SWAP_LOCK_TIMEOUT))
                    )
                    if previous is not None:
                        conn.execute(rename.format(sql.Identifier(target.dbname), sql.Identifier(previous)))
                    conn.execute(rename.format(sql.Identifier(scratch), sql.Identifier(target.dbname)))
                    if statements:
                        conn.execute("\n".join(statements).encode())
                break
            except (errors.ObjectInUse, errors.LockNotAvailable):
                time.sleep(0.2 * (attempt + 1))
            except psycopg.Error as exc:
                raise RestoreError(
                    f"swapping the restored database into {target.dbname!r} failed, nothing was renamed: "
                    f"{first_line(exc)}"
                ) from None
        else:
            who = f"; sessions this role may not end: {', '.join(blocked[:10])}" if blocked else ""
            raise RestoreError(
                f"database {target.dbname!r} kept getting new sessions, so the restored database could not be "
                f"swapped in after {SWAP_ATTEMPTS} attempts{who}. Stop the application (or grant this role "
                "pg_signal_backend) and run the restore again; nothing was renamed"
            )
    result: dict[str, Any] = {
        "database": target.dbname,
        "replaced_database": previous,
        "previous_kept": bool(previous and keep_previous),
        "data_lease_rows_carried": lease_rows,
        "database_properties_from": "target" if exists else "backup",
    }
    if previous is not None and not keep_previous:
        try:
            drop_database(target, previous)
        except psycopg.Error as exc:
            result["previous_kept"] = True
            result["previous_drop_error"] = first_line(exc)
    return result
