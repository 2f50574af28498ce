"""The drill's own code, without a drill world. The drill's core rows (the run worker SIGKILLed
during pg_dump, a restore of a set whose database part has a flipped header bit) run in CI in
e2e/test_e2e_backup_kills.py, in that module's world; ``bash scripts/drill.sh`` runs them all."""

from __future__ import annotations

from pathlib import Path

from backup_pipeline import ledger
from backup_pipeline_tests.drill.world import INSTALLATION, World
from backup_pipeline_tests.fixtures.drive import DriveFixture


def test_the_drills_destination_retries_as_the_products_does(drive: DriveFixture, tmp_path: Path) -> None:
    """The drill judges the ledger through World.destination(): on main a bare
    GoogleDriveDestination, so one 503 on a listing failed the check although the product retries."""
    world = World(tmp_path)
    world.drive = drive.server
    world.destination_kind = "google_drive"
    drive.fault("unavailable", route="list", count=2)
    assert ledger.from_destination(world.destination(), INSTALLATION) == []
    assert drive.stats()["faults_fired"] == 2
