"""The data lease: one data-touching run (backup, restore, retention, delete, migration, the CLI
migration) at a time, for the whole run, not per step.

A row of ``public.backup_pipeline_data_lease`` in the application database names the run that
holds the data (``run_id``, ``job``, ``holder``, ``acquired_at``, ``heartbeat_at``; the server's
clock). Write ordering and failure behaviour:

* Taking it MUST be atomic: one transaction under the transaction-level advisory lock
  ``DATA_LOCK_NAME`` (which also serialises the idempotent ``CREATE TABLE IF NOT EXISTS``) reads
  the row ``FOR UPDATE`` and then inserts it, refreshes it (same run: a sibling or later step
  shares it) or takes it over.
* A lease held by another holder is taken over only when that holder is provably dead: its Dagster
  run is finished (the caller's ``holder_finished``), its heartbeat is older than
  ``DATA_LEASE_STALE_SECONDS``, or — for a single-process holder (``hold``: the CLI migration) —
  the database session it keeps open for exactly that purpose is gone (a killed process frees the
  lease at once instead of after the staleness bound). Otherwise ``DataLockBusy`` is raised at once, naming the holder run
  and job: no waiting (a queued backup behind a long restore is worse than a clear failure).
* Every process working under the lease MUST heartbeat (``LeaseHeartbeat``, a background thread);
  a heartbeat that finds the lease gone reports it (``on_lost``) and stops.
* Release deletes the row only if this run still holds it, so a late release never frees a lease
  another run took over.

Plain psycopg, no Dagster: ``connect`` returns a new (non-autocommit) connection.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType

import psycopg
from psycopg import errors, sql

from backup_pipeline.concurrency import (
    DATA_LEASE_HEARTBEAT_SECONDS,
    DATA_LEASE_STALE_SECONDS,
    DATA_LEASE_TABLE,
    DATA_LOCK_NAME,
)

Connect = Callable[[], psycopg.Connection]
#: ``run_id`` → True when that run is known and finished, False when known and running, None when unknown.
HolderFinished = Callable[[str], bool | None]

_TABLE = sql.Identifier("public", DATA_LEASE_TABLE)
#: Suffix of ``holder`` for single-process holders whose liveness is a held session advisory lock.
_SESSION_HOLDER_MARK = " [session]"
#: The guard is held for milliseconds (one compare-and-set); a longer wait means something is stuck.
_GUARD_TIMEOUT = "30s"


class DataLockBusy(Exception):
    """Another run holds the data lease (or its guard could not be taken)."""


def advisory_lock_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_*lock`` (hashtext() is not guaranteed stable)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@dataclass(frozen=True)
class LeaseHolder:
    run_id: str
    job: str
    holder: str
    acquired_at: datetime
    heartbeat_age_seconds: float

    def describe(self) -> str:
        return (
            f"run {self.run_id} of job {self.job} ({self.holder}; since "
            f"{self.acquired_at:%Y-%m-%d %H:%M:%S %Z}, last heartbeat {self.heartbeat_age_seconds:.0f} s ago)"
        )


@dataclass(frozen=True)
class Acquisition:
    """``outcome`` is ``acquired``, ``shared`` (this run held it already) or ``taken_over`` (``previous``)."""

    outcome: str
    previous: LeaseHolder | None = None


CREATE_LEASE_TABLE = sql.SQL(
    "CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, run_id text NOT NULL, job text NOT NULL, "
    "holder text NOT NULL, acquired_at timestamptz NOT NULL DEFAULT now(), "
    "heartbeat_at timestamptz NOT NULL DEFAULT now())"
).format(_TABLE)


def _create_table(conn: psycopg.Connection) -> None:
    # CREATE TABLE IF NOT EXISTS needs CREATE on the schema even when the table exists: look first,
    # so a role without it works once an administrator created the table (see the message below).
    row = conn.execute("SELECT to_regclass(%s)", (f"public.{DATA_LEASE_TABLE}",)).fetchone()
    if row and row[0] is not None:
        return
    try:
        with conn.transaction():
            conn.execute(CREATE_LEASE_TABLE)
    except errors.InsufficientPrivilege:
        raise DataLockBusy(
            f"the data lease table public.{DATA_LEASE_TABLE} does not exist and this database role may not "
            "create it; as the database owner run once: "
            + CREATE_LEASE_TABLE.as_string(None)
            + f"; GRANT SELECT, INSERT, UPDATE, DELETE ON public.{DATA_LEASE_TABLE} TO <backup role>"
        ) from None


def _select_holder(conn: psycopg.Connection, name: str, *, for_update: bool) -> LeaseHolder | None:
    query = sql.SQL(
        "SELECT run_id, job, holder, acquired_at, extract(epoch FROM now() - heartbeat_at)::float8 "
        "FROM {} WHERE name = %s" + (" FOR UPDATE" if for_update else "")
    ).format(_TABLE)
    row = conn.execute(query, (name,)).fetchone()
    return LeaseHolder(row[0], row[1], row[2], row[3], float(row[4])) if row else None


def _holder_session_key(name: str, run_id: str) -> int:
    return advisory_lock_key(f"{name}:holder:{run_id}")


def _session_holder_alive(conn: psycopg.Connection, name: str, current: LeaseHolder) -> bool:
    """A single-process holder keeps a session advisory lock while it lives; free means it died."""
    key = _holder_session_key(name, current.run_id)
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
    if row and row[0]:
        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        return False
    return True


def busy_message(name: str, endpoint: str, current: LeaseHolder) -> str:
    return (
        f"the data lock {name!r} on {endpoint} is held by {current.describe()}: another backup, restore, "
        "retention or migration run is touching the data; try again when it has finished"
    )


def acquire(
    connect: Connect,
    *,
    run_id: str,
    job: str,
    holder: str,
    endpoint: str,
    holder_finished: HolderFinished | None = None,
    name: str = DATA_LOCK_NAME,
    stale_after_seconds: float = DATA_LEASE_STALE_SECONDS,
) -> Acquisition:
    """Take the lease for ``run_id``, share it when ``run_id`` holds it, or take it over from a dead holder.

    Raises ``DataLockBusy`` (naming the holder) at once when a live holder has it.
    """
    with connect() as conn:
        try:
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(_GUARD_TIMEOUT)))
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_lock_key(name),))
        except errors.LockNotAvailable:
            raise DataLockBusy(
                f"the data lock {name!r} on {endpoint}: its guard was not free within {_GUARD_TIMEOUT}"
            ) from None
        _create_table(conn)
        current = _select_holder(conn, name, for_update=True)
        values = (run_id, job, holder, name)
        if current is None:
            conn.execute(
                sql.SQL("INSERT INTO {} (run_id, job, holder, name) VALUES (%s, %s, %s, %s)").format(_TABLE),
                values,
            )
            return Acquisition("acquired")
        if current.run_id == run_id:
            conn.execute(
                sql.SQL("UPDATE {} SET heartbeat_at = now() WHERE name = %s").format(_TABLE), (name,)
            )
            return Acquisition("shared")
        finished = holder_finished(current.run_id) if holder_finished else None
        if current.holder.endswith(_SESSION_HOLDER_MARK) and not _session_holder_alive(conn, name, current):
            finished = True
        if not finished and current.heartbeat_age_seconds <= stale_after_seconds:
            raise DataLockBusy(busy_message(name, endpoint, current))
        conn.execute(
            sql.SQL(
                "UPDATE {} SET run_id = %s, job = %s, holder = %s, acquired_at = now(), heartbeat_at = now() "
                "WHERE name = %s"
            ).format(_TABLE),
            values,
        )
        return Acquisition("taken_over", current)


def _holder_update(connect: Connect, statement: str, run_id: str, name: str) -> bool:
    try:
        with connect() as conn:
            cursor = conn.execute(sql.SQL(statement).format(_TABLE), (name, run_id))
            return cursor.rowcount == 1
    except errors.UndefinedTable:  # nothing was ever taken on this database
        return False


def heartbeat(connect: Connect, run_id: str, *, name: str = DATA_LOCK_NAME) -> bool:
    """Refresh the heartbeat; False when ``run_id`` no longer holds the lease (released or taken over)."""
    return _holder_update(
        connect, "UPDATE {} SET heartbeat_at = now() WHERE name = %s AND run_id = %s", run_id, name
    )


def release(connect: Connect, run_id: str, *, name: str = DATA_LOCK_NAME) -> bool:
    """Free the lease if ``run_id`` holds it; True when it did."""
    return _holder_update(connect, "DELETE FROM {} WHERE name = %s AND run_id = %s", run_id, name)


def current_holder(connect: Connect, *, name: str = DATA_LOCK_NAME) -> LeaseHolder | None:
    try:
        with connect() as conn:
            return _select_holder(conn, name, for_update=False)
    except errors.UndefinedTable:
        return None


class LeaseHeartbeat:
    """A daemon thread refreshing the lease every ``interval`` seconds while the block runs.

    Database errors are reported through ``on_error`` and retried at the next beat (the lease
    goes stale only after ``DATA_LEASE_STALE_SECONDS``); a lost lease is reported through
    ``on_lost`` once and ends the thread.
    """

    def __init__(
        self,
        connect: Connect,
        run_id: str,
        *,
        name: str = DATA_LOCK_NAME,
        interval: float = DATA_LEASE_HEARTBEAT_SECONDS,
        on_lost: Callable[[str], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self._connect, self._run_id, self._name, self._interval = connect, run_id, name, interval
        self._on_lost, self._on_error = on_lost, on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"data-lease-heartbeat {run_id}", daemon=True)
        self.lost = False

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                held = heartbeat(self._connect, self._run_id, name=self._name)
            except Exception as exc:  # unreachable database: try again at the next beat
                if self._on_error:
                    self._on_error(f"data lease heartbeat failed: {type(exc).__name__}: {exc}")
                continue
            if not held:
                self.lost = True
                if self._on_lost:
                    self._on_lost(
                        f"the data lease {self._name!r} is no longer held by {self._run_id} (released or "
                        "taken over after its heartbeat went stale): this work is no longer exclusive"
                    )
                return

    def __enter__(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def hold(
    connect: Connect,
    *,
    run_id: str,
    job: str,
    holder: str,
    endpoint: str,
    holder_finished: HolderFinished | None = None,
    name: str = DATA_LOCK_NAME,
    on_lost: Callable[[str], None] | None = None,
) -> Iterator[Acquisition]:
    """Hold the lease for the block (one process, e.g. the CLI migration): take, heartbeat, release.

    A dedicated session holds an advisory lock named after ``run_id`` for the whole block, taken
    before the lease row is written: if this process is killed, the session ends, and the next
    ``acquire`` sees the holder dead at once.
    """
    liveness = connect()
    try:
        liveness.autocommit = True
        liveness.execute("SELECT pg_advisory_lock(%s)", (_holder_session_key(name, run_id),))
        acquisition = acquire(
            connect,
            run_id=run_id,
            job=job,
            holder=holder + _SESSION_HOLDER_MARK,
            endpoint=endpoint,
            holder_finished=holder_finished,
            name=name,
        )
        try:
            with LeaseHeartbeat(connect, run_id, name=name, on_lost=on_lost):
                yield acquisition
        finally:
            # Database gone: the lease is taken over once the liveness session is gone.
            with suppress(Exception):
                release(connect, run_id, name=name)
    finally:
        with suppress(Exception):
            liveness.close()
