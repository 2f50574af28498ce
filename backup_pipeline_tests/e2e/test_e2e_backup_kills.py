"""Backup (and restore) runs killed and starved for real, through dagster-webserver + dagster-daemon.

One world per module (``backup_pipeline_tests/drill/world.py``): SeaweedFS S3, the machine's
PostgreSQL, a tmpfs local destination, a Dagster home on dagster-postgres whose run monitoring
polls every 2 s with a 90 s maximum runtime, and one webserver + daemon. Each test applies one
fault from outside through the drill's scenario functions (the same code as
``python -m backup_pipeline_tests.drill``) and asserts what issue 5 / issue 7 require: the run is
marked failed, no partial set remains or is listed as a backup, the ledger reconciles with the
destination, and the next run succeeds.

The reliability drill's core rows (``scripts/drill.sh``'s matrix code, ``run_cases``) run in the
same world: the run worker SIGKILLed during pg_dump, and a restore of a set whose database part
has a flipped header bit (refused before anything changes). They had a world of their own in
test_drill_core (SeaweedFS, seeding, a Dagster home and three Dagster servers); the drill runs all
its rows in one world too. pg_dump of this world's filler table lasts long enough to be hit: the
pg_terminate_backend test below needs the same window.
"""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import pytest

from backup_pipeline_tests.drill import scenarios as sc
from backup_pipeline_tests.drill.matrix import CASES, run_cases
from backup_pipeline_tests.drill.report import now, render
from backup_pipeline_tests.drill.world import DrillData, World

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
FAILED = dg.DagsterRunStatus.FAILURE.value
#: The drill's core rows (``backup_pipeline_tests.drill.matrix.CASES``) that CI runs.
CORE = ("run worker killed during pg_dump", "database part: header bit")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data = DrillData(large_object_bytes=(12 * MiB,), small_objects=80, filler_rows=100_000)
    with World(tmp_path_factory.mktemp("kills"), data, max_runtime_seconds=90) as w:
        yield w


def assert_failed_cleanly(world: World, row: sc.Row) -> None:
    assert row.outcome is sc.Outcome.FAILED_CLEANLY, (row.outcome, row.run_status, row.detail, row.notes)
    assert row.run_status == FAILED
    assert row.ledger_true, row.detail
    assert row.next_run_ok, row.notes
    assert world.incomplete_sets() == [], "a partial set is still on the destination"


def test_run_worker_sigkilled_mid_upload(world: World) -> None:
    row = sc.kill_backup_worker(world, sc.Row("backup kill", "mid-upload"), "upload")
    assert_failed_cleanly(world, row)


def test_whole_dagster_tree_killed_and_restarted(world: World) -> None:
    row = sc.kill_whole_tree(world, sc.Row("backup kill", "whole tree"))
    assert any("after the restart" in n for n in row.notes), row.notes
    assert_failed_cleanly(world, row)


def test_database_connection_terminated_mid_dump(world: World) -> None:
    row = sc.terminate_pg_dump(world, sc.Row("backup sources", "pg_terminate_backend"))
    terminated = [n for n in row.notes if n.startswith("pg_terminate_backend")]
    assert terminated and "on 0 " not in terminated[0], row.notes
    assert_failed_cleanly(world, row)


def test_s3_server_stopped_during_the_run(world: World) -> None:
    row = sc.stop_s3_during_run(world, sc.Row("backup sources", "S3 stopped"))
    assert_failed_cleanly(world, row)


def test_restore_killed_mid_restore_then_rerun_completes(world: World) -> None:
    baseline = sc.restore_baseline(world)
    row = sc.kill_restore_worker(world, sc.Row("restore kill", "buckets"), baseline, "buckets")
    assert row.run_status == FAILED, (row.outcome, row.notes)
    assert row.outcome is sc.Outcome.FAILED_CLEANLY, (row.detail, row.notes)
    # The rerun restored exactly the backed-up database rows and objects.
    assert row.next_run_ok, row.notes
    assert row.ledger_true, row.detail


@pytest.fixture(scope="module")
def core_rows(world: World) -> list[sc.Row]:
    """The drill's core rows, through the drill's own code (the matrix's ``run_cases``)."""
    return run_cases(world, [c for c in CASES if c.name in CORE])


def test_drill_core_rows_fail_cleanly_and_the_next_run_succeeds(core_rows: list[sc.Row]) -> None:
    assert [r.name for r in core_rows] == list(CORE)
    for row in core_rows:
        assert row.outcome is sc.Outcome.FAILED_CLEANLY, (row.name, row.outcome, row.detail, row.notes)
        assert row.ledger_true, (row.name, row.detail)
        assert row.next_run_ok, (row.name, row.notes)


def test_drill_report_lists_every_row_with_totals(core_rows: list[sc.Row]) -> None:
    text = render(core_rows, "bash scripts/drill.sh", now(), 1.0, "test data")
    assert "| backup kill | run worker killed during pg_dump | SIGKILL | failed cleanly |" in text
    assert "failed cleanly: 2" in text and "Ledger stayed true: 2 of 2" in text


def test_backup_under_the_multiprocess_executor(world: World) -> None:
    """One backup through the daemon with the multiprocess executor: the dump and every bucket
    export run in their own step process (up to max_concurrent = CPU count at once), each taking
    the run's share of the data lock, and the set verifies."""
    world.reconfigure(executor="multiprocess")
    run_id = world.submit_backup()
    assert world.wait(run_id) is dg.DagsterRunStatus.SUCCESS
    backup_id = world.backup_id(run_id)
    assert backup_id and sc.verify_set(world, backup_id) is None
    records = world.instance.all_logs(run_id)
    workers = {
        r.step_key: r.message
        for r in records
        if r.step_key and r.dagster_event and r.dagster_event.event_type_value == "STEP_WORKER_STARTED"
    }
    exports = sorted(k for k in workers if k.startswith("export_bucket["))
    assert len(exports) == 3 and "dump_database" in workers, workers
    ok, detail = world.ledger_check()
    assert ok, detail
