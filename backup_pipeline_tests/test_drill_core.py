"""The reliability drill's core rows in CI (reduced data), through the drill's own code:
the run worker SIGKILLed during pg_dump, and a restore of a set whose database part has a
flipped header bit (refused before anything changes). ``bash scripts/drill.sh`` runs them all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backup_pipeline import ledger
from backup_pipeline_tests.drill import scenarios as sc
from backup_pipeline_tests.drill.matrix import CASES, run_cases
from backup_pipeline_tests.drill.report import now, render
from backup_pipeline_tests.drill.world import INSTALLATION, DrillData, World
from backup_pipeline_tests.fixtures.drive import DriveFixture

pytestmark = pytest.mark.e2e
CORE = ("run worker killed during pg_dump", "database part: header bit")
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[sc.Row]]:
    data = DrillData(large_object_bytes=(4 * MiB,), small_objects=40, filler_rows=150_000)
    with World(tmp_path_factory.mktemp("drill"), data, max_runtime_seconds=90) as world:
        yield run_cases(world, [c for c in CASES if c.name in CORE])


def test_core_rows_fail_cleanly_and_the_next_run_succeeds(rows: list[sc.Row]) -> None:
    assert [r.name for r in rows] == list(CORE)
    for row in rows:
        assert row.outcome is sc.Outcome.FAILED_CLEANLY, (row.name, row.outcome, row.detail, row.notes)
        assert row.ledger_true, (row.name, row.detail)
        assert row.next_run_ok, (row.name, row.notes)


def test_report_lists_every_row_with_totals(rows: list[sc.Row]) -> None:
    text = render(rows, "bash scripts/drill.sh", now(), 1.0, "test data")
    assert "| backup kill | run worker killed during pg_dump | SIGKILL | failed cleanly |" in text
    assert "failed cleanly: 2" in text and "Ledger stayed true: 2 of 2" in text


def test_the_drills_destination_retries_as_the_products_does(drive: DriveFixture, tmp_path: Path) -> None:
    """The drill judges the ledger through World.destination(): on main a bare
    GoogleDriveDestination, so one 503 on a listing failed the check although the product retries."""
    world = World(tmp_path)
    world.drive = drive.server
    world.destination_kind = "google_drive"
    drive.fault("unavailable", route="list", count=2)
    assert ledger.from_destination(world.destination(), INSTALLATION) == []
    assert drive.stats()["faults_fired"] == 2
