"""What the PITR archive health alerts on, from the archiver's numbers (the same numbers
test_pitr_integration.py reads from a real server during an S3 outage): lag at its limit, failures
newer than the last success, pg_wal growth, archiving off."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from backup_pipeline.services.pitr_status import ArchiverStatus, archive_problems

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
LIMITS = {"lag_limit_seconds": 300.0, "wal_limit_bytes": 2048 * 2**20}

HEALTHY = ArchiverStatus(
    checked_at=NOW,
    archive_mode="on",
    archive_command="pgbackrest --config=/etc/pgbackrest/pgbackrest.conf --stanza=app archive-push %p",
    archive_timeout="60s",
    in_recovery=False,
    archived_count=120,
    last_archived_wal="000000010000000000000078",
    last_archived_time=NOW - timedelta(seconds=20),
    failed_count=0,
    last_failed_wal=None,
    last_failed_time=None,
    wal_dir_bytes=5 * 16 * 2**20,
    wal_dir_files=5,
    waiting_segments=0,
    oldest_waiting_since=None,
)


def _kinds(status: ArchiverStatus) -> set[str]:
    return {p.kind for p in archive_problems(status, **LIMITS)}


def test_a_healthy_archiver_raises_nothing() -> None:
    assert _kinds(HEALTHY) == set()
    assert HEALTHY.archive_lag_seconds == 0.0


@pytest.mark.parametrize(("waiting_for", "alerts"), [(299, False), (300, False), (301, True)])
def test_lag_alerts_above_its_limit_only(waiting_for: int, alerts: bool) -> None:
    status = replace(HEALTHY, waiting_segments=3, oldest_waiting_since=NOW - timedelta(seconds=waiting_for))
    assert status.archive_lag_seconds == waiting_for
    assert ("archive_lag" in _kinds(status)) is alerts


def test_the_lag_message_says_how_many_wait_and_for_how_long() -> None:
    status = replace(HEALTHY, waiting_segments=3, oldest_waiting_since=NOW - timedelta(seconds=900))
    [problem] = archive_problems(status, **LIMITS)
    assert "3 WAL segment(s)" in problem.message and "900 s (limit 300 s)" in problem.message


def test_failing_means_the_last_failure_is_newer_than_the_last_success() -> None:
    failed_then_recovered = replace(
        HEALTHY,
        failed_count=4,
        last_failed_wal="000000010000000000000070",
        last_failed_time=NOW - timedelta(minutes=5),
    )
    assert not failed_then_recovered.failing and _kinds(failed_then_recovered) == set()
    failing = replace(failed_then_recovered, last_failed_time=NOW - timedelta(seconds=5))
    assert failing.failing and _kinds(failing) == {"archive_failing"}
    never_archived = replace(failing, last_archived_time=None, last_archived_wal=None)
    assert never_archived.failing


def test_pg_wal_growth_alerts_above_its_limit() -> None:
    assert "pg_wal_size" not in _kinds(replace(HEALTHY, wal_dir_bytes=2048 * 2**20))
    grown = replace(HEALTHY, wal_dir_bytes=2049 * 2**20, wal_dir_files=129)
    [problem] = archive_problems(grown, **LIMITS)
    assert problem.kind == "pg_wal_size" and "2049 MiB in 129 files (limit 2048 MiB)" in problem.message


@pytest.mark.parametrize(
    ("mode", "command"), [("off", "pgbackrest archive-push %p"), ("on", ""), ("on", "(disabled)")]
)
def test_archiving_off_is_a_problem(mode: str, command: str) -> None:
    assert _kinds(replace(HEALTHY, archive_mode=mode, archive_command=command)) == {"not_archiving"}


def test_an_outage_raises_every_kind_at_once() -> None:
    outage = replace(
        HEALTHY,
        failed_count=30,
        last_failed_wal="000000010000000000000079",
        last_failed_time=NOW - timedelta(seconds=2),
        waiting_segments=140,
        oldest_waiting_since=NOW - timedelta(hours=2),
        wal_dir_bytes=145 * 16 * 2**20,
        wal_dir_files=145,
    )
    assert _kinds(outage) == {"archive_failing", "archive_lag", "pg_wal_size"}
    shown = outage.metadata()  # what the pitr_archiving check shows in the UI
    assert shown["archive_lag_seconds"] == 7200 and shown["waiting_segments"] == 140
    assert shown["pg_wal_bytes"] == 145 * 16 * 2**20
