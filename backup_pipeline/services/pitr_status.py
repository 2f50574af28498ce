"""Is the WAL archive keeping up? Read from the application server itself (no Dagster here).

What is measured, and why these numbers:

* **archive lag**: the age of the oldest *completed* WAL segment still waiting for
  ``archive_command`` (its ``pg_wal/archive_status/*.ready`` file, ``pg_ls_archive_statusdir()``).
  0 when nothing waits. The segment being written is not counted: ``archive_timeout`` bounds it.
* **archiving failing**: ``pg_stat_archiver.failed_count`` grew and the last failure is newer than
  the last success.
* **pg_wal size** (``pg_ls_waldir()``): while archiving fails the server keeps every segment, so an
  archive outage slowly becomes a full disk and a database outage.
* **latest restorable moment**: ``last_archived_time``, the moment the newest segment reached the
  repository (every transaction committed before that segment was switched is in it).

The role needs ``pg_monitor`` (docs/guides/DEPLOYMENT.md); pg_stat_archiver alone is public.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

STATUS_SQL = """
SELECT a.archived_count, a.last_archived_wal, a.last_archived_time,
       a.failed_count, a.last_failed_wal, a.last_failed_time,
       now(), current_setting('archive_mode'), current_setting('archive_command'),
       current_setting('archive_timeout'), pg_is_in_recovery()
FROM pg_stat_archiver a
"""
WAL_DIR_SQL = "SELECT coalesce(sum(size), 0)::bigint, count(*) FROM pg_ls_waldir()"
READY_SQL = """
SELECT count(*), min(modification)
FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'
"""


@dataclass(frozen=True)
class ArchiverStatus:
    checked_at: datetime
    archive_mode: str
    archive_command: str
    archive_timeout: str
    in_recovery: bool
    archived_count: int
    last_archived_wal: str | None
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None
    wal_dir_bytes: int
    wal_dir_files: int
    waiting_segments: int
    oldest_waiting_since: datetime | None

    @property
    def archive_lag_seconds(self) -> float:
        if self.oldest_waiting_since is None:
            return 0.0
        return max(0.0, (self.checked_at - self.oldest_waiting_since).total_seconds())

    @property
    def failing(self) -> bool:
        if not self.failed_count or self.last_failed_time is None:
            return False
        return self.last_archived_time is None or self.last_failed_time > self.last_archived_time

    @property
    def archiving_on(self) -> bool:
        return self.archive_mode in ("on", "always") and self.archive_command not in ("", "(disabled)")

    def metadata(self) -> dict[str, Any]:
        """Small, secret-free values for asset metadata and alerts (the archive_command holds no secret)."""
        return {
            "archive_lag_seconds": round(self.archive_lag_seconds, 1),
            "waiting_segments": self.waiting_segments,
            "last_archived_wal": self.last_archived_wal or "none",
            "last_archived_time": _iso(self.last_archived_time),
            "failed_count": self.failed_count,
            "last_failed_wal": self.last_failed_wal or "none",
            "last_failed_time": _iso(self.last_failed_time),
            "pg_wal_bytes": self.wal_dir_bytes,
            "pg_wal_files": self.wal_dir_files,
            "archive_mode": self.archive_mode,
            "archive_timeout": self.archive_timeout,
        }


def _iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds") if value else "never"


def read_archiver_status(conn: psycopg.Connection[Any]) -> ArchiverStatus:
    with conn.cursor() as cur:
        cur.execute(STATUS_SQL)
        row = cur.fetchone()
        assert row is not None
        cur.execute(WAL_DIR_SQL)
        wal = cur.fetchone()
        cur.execute(READY_SQL)
        ready = cur.fetchone()
    assert wal is not None and ready is not None
    return ArchiverStatus(
        archived_count=int(row[0]),
        last_archived_wal=row[1],
        last_archived_time=row[2],
        failed_count=int(row[3]),
        last_failed_wal=row[4],
        last_failed_time=row[5],
        checked_at=row[6],
        archive_mode=row[7],
        archive_command=row[8],
        archive_timeout=row[9],
        in_recovery=bool(row[10]),
        wal_dir_bytes=int(wal[0]),
        wal_dir_files=int(wal[1]),
        waiting_segments=int(ready[0]),
        oldest_waiting_since=ready[1],
    )


@dataclass(frozen=True)
class Problem:
    """One reason to alert; ``kind`` keys the alert (one per kind per incident)."""

    kind: str  # "not_archiving" | "archive_failing" | "archive_lag" | "pg_wal_size" | "unreachable"
    message: str


def archive_problems(
    status: ArchiverStatus, *, lag_limit_seconds: float, wal_limit_bytes: int
) -> list[Problem]:
    problems: list[Problem] = []
    if not status.archiving_on:
        problems.append(
            Problem(
                "not_archiving",
                f"WAL archiving is off on the server (archive_mode={status.archive_mode}): no new moment "
                "becomes restorable. See DEPLOYMENT.md, PITR server set-up.",
            )
        )
    if status.failing:
        problems.append(
            Problem(
                "archive_failing",
                f"archive_command is failing: {status.failed_count} failure(s), the last for "
                f"{status.last_failed_wal} at {_iso(status.last_failed_time)}; last success "
                f"{status.last_archived_wal or 'none'} at {_iso(status.last_archived_time)}. "
                "Check the PITR repository's S3 endpoint and the server's pgbackrest log.",
            )
        )
    if status.archive_lag_seconds > lag_limit_seconds:
        problems.append(
            Problem(
                "archive_lag",
                f"{status.waiting_segments} WAL segment(s) wait to be archived, the oldest for "
                f"{status.archive_lag_seconds:.0f} s (limit {lag_limit_seconds:.0f} s): transactions "
                "since then cannot be restored yet.",
            )
        )
    if status.wal_dir_bytes > wal_limit_bytes:
        problems.append(
            Problem(
                "pg_wal_size",
                f"pg_wal holds {status.wal_dir_bytes / 2**20:.0f} MiB in {status.wal_dir_files} files "
                f"(limit {wal_limit_bytes / 2**20:.0f} MiB): WAL is piling up on the database's disk; "
                "if archiving stays broken the server stops when the disk is full.",
            )
        )
    return problems
