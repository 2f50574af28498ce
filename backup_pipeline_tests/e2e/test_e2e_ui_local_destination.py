"""Google Drive not configured: the UI says plainly that backups go to a local folder and are
NOT off-site, with what is needed — on the backup_set's backup_destination check (recorded by
the backup_status_checks sensor, no click needed) and in backup_job's description.

Real dagster-webserver + dagster-daemon on dagster-postgres, SeaweedFS S3, Debian's Chromium.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetCheckKey, AssetCheckSeverity, AssetKey

from backup_pipeline import admin_view
from backup_pipeline_tests.fixtures.dagster import StartDagster, dismiss_community_dialog, open_chromium
from backup_pipeline_tests.fixtures.ports import wait_until
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server

pytestmark = pytest.mark.e2e

DOCS_DIR = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def test_local_destination_is_shown_as_not_off_site(
    pg_database: PgDatabase, s3: S3Server, dagster_stack: StartDagster, artifacts_dir: Path, tmp_path: Path
) -> None:
    local = tmp_path / "nas-backups"
    stack = dagster_stack(
        {
            **s3.env(),
            "BACKUP_PIPELINE_APP_DATABASE_URL": pg_database.url,
            "BACKUP_PIPELINE_STATE_DIR": str(tmp_path / "state"),
            "BACKUP_PIPELINE_LOCAL_DESTINATION_PATH": str(local),
        }
    )
    key = AssetCheckKey(AssetKey("backup_set"), admin_view.DESTINATION_CHECK)

    def recorded() -> Any:
        with stack.home.instance() as instance:
            return instance.event_log_storage.get_latest_asset_check_execution_by_key([key]).get(key)

    wait_until(lambda: recorded() is not None, timeout=120, what="backup_destination recorded", interval=1)
    evaluation = recorded().event.dagster_event.event_specific_data
    assert evaluation.passed is False and evaluation.severity is AssetCheckSeverity.WARN
    assert "NOT off-site" in evaluation.description and str(local) in evaluation.description
    assert "GOOGLE-DRIVE-SETUP.md" in evaluation.description

    with open_chromium(viewport=(1400, 1000)) as page:
        page.set_default_timeout(120_000)  # the first page of a fresh webserver is slow on a busy machine
        page.goto(stack.url + "/assets/backup_set?view=checks")
        dismiss_community_dialog(page)
        page.get_by_text(admin_view.DESTINATION_CHECK).first.click()
        page.get_by_text(f"backups go to the local folder {local}").first.wait_for(state="visible")
        shot = artifacts_dir / "ui-15-local-destination-warning.png"
        page.screenshot(path=str(shot))
        for text in (page.inner_text("body"), page.content()):
            assert s3.secret_key not in text

        page.goto(stack.job_url("backup_job"))
        page.get_by_text("are NOT off-site").first.wait_for(state="visible")
    if os.environ.get("UPDATE_DOC_SCREENSHOTS") == "1":
        shutil.copyfile(shot, DOCS_DIR / shot.name)
