"""Backup (and restore) runs killed and starved for real, through dagster-webserver + dagster-daemon.

One world per module (``backup_pipeline_tests/drill/world.py``): SeaweedFS S3, the machine's
PostgreSQL, a tmpfs local destination, a Dagster home on dagster-postgres whose run monitoring
polls every 2 s with a 90 s maximum runtime, and one webserver + daemon. Each test applies one
fault from outside through the drill's scenario functions (the same code as
``python -m backup_pipeline_tests.drill``) and asserts what issue 5 / issue 7 require: the run is
marked failed, no partial set remains or is listed as a backup, the ledger reconciles with the
destination, and the next run succeeds.
"""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import pytest

from backup_pipeline_tests.drill import scenarios as sc
from backup_pipeline_tests.drill.world import DrillData, World

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
FAILED = dg.DagsterRunStatus.FAILURE.value


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
