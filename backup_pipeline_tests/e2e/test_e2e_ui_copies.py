"""Two destinations in the UI: a local folder (the primary) and SeaweedFS with object lock under the
product's least-privilege credentials. After one backup, with no click, the ``copy_after_backup``
sensor runs ``copy_backup_job``; ``backup_set`` → Checks shows ``backup_3_2_1`` green (2 copies, 1
off-site, 1 immutable) and its Events show where the newest set is complete.

Real dagster-webserver + dagster-daemon on dagster-postgres, the suite's SeaweedFS, Debian's Chromium.
Screenshots: ``test-artifacts/``; with ``UPDATE_DOC_SCREENSHOTS=1`` also ``docs/screenshots/``.
"""

import os
import re
import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from backup_pipeline import ledger, safety
from backup_pipeline.copy_sensors import COPY_AFTER_BACKUP_SENSOR
from backup_pipeline.copy_status import COPY_POLICY_CHECK
from backup_pipeline.ops.verification import VERIFICATION_ALERT_SENSOR, VERIFY_AFTER_BACKUP_SENSOR
from backup_pipeline.sample_app import SeedSpec, seed_sample_app
from backup_pipeline.sensors import (
    DEAD_LEASE_HOLDER_SENSOR,
    FRESHNESS_SENSOR,
    HEARTBEAT_FAILURE_SENSOR,
    HEARTBEAT_SUCCESS_SENSOR,
    RETENTION_AFTER_BACKUP_SENSOR,
    RUN_FAILURE_ALERT_SENSOR,
)
from backup_pipeline_tests.fixtures import s3_destination as sd
from backup_pipeline_tests.fixtures.dagster import StartDagster, open_chromium
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server

from .e2e_support import product_env, product_files, runs_of, wait_for, wait_for_first_ticks

pytestmark = pytest.mark.e2e

DOCS_DIR = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
DOC_SCREENSHOTS = {"ui-20-backup-3-2-1", "ui-21-backup-set-copies"}


def _shot(page: Any, artifacts_dir: Path, name: str, secrets: list[str]) -> None:
    page.wait_for_timeout(300)  # let lazy panels render
    path = artifacts_dir / f"{name}.png"
    page.screenshot(path=str(path))
    for text in (page.inner_text("body"), page.content()):
        for secret in secrets:
            assert secret not in text, f"a secret is shown on {name}"
    if name in DOC_SCREENSHOTS and os.environ.get("UPDATE_DOC_SCREENSHOTS") == "1":
        shutil.copyfile(path, DOCS_DIR / path.name)


@pytest.mark.timeout(1200)
def test_the_copies_and_the_3_2_1_verdict_of_the_newest_set_show_without_a_click(
    pg_database: PgDatabase,
    s3: S3Server,
    dagster_stack: StartDagster,
    artifacts_dir: Path,
    tmp_path: Path,
) -> None:
    with pg_database.connect() as conn:
        seed_sample_app(conn, s3.client(), SeedSpec(small_objects=12, large_object_bytes=(), users=5))
    sd.make_bucket(s3, object_lock=True)
    files = product_files(tmp_path)
    credentials = files.state_dir / "s3lock-credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = {sd.WRITER_ACCESS_KEY}\naws_secret_access_key = {sd.WRITER_SECRET_KEY}\n"
    )
    credentials.chmod(0o600)
    env = product_env(
        files,
        pg_database.url,
        s3.env(),
        schedule_enabled="false",
        destinations="nas,s3lock",
        destination_nas_kind="local",
        destination_nas_path=str(files.backups_dir),
        destination_s3lock_kind="s3",
        destination_s3lock_s3_endpoint=s3.endpoint,
        destination_s3lock_s3_bucket=sd.BUCKET,
        destination_s3lock_s3_prefix=sd.PREFIX,
        destination_s3lock_s3_credentials_file=str(credentials),
        destination_s3lock_s3_lock_days="1",
        copy_policy="copies=2,offsite=1,immutable=1",
        copy_policy_severity="error",
        # The test waits for copy_after_backup and verify_after_backup (run-status sensors).
        run_sensor_interval_seconds="5",
    )
    # Only the sensors this test is about run besides the status checks (backup_status_checks):
    # every other run-status sensor would be evaluated every 5 s as well (each evaluation a
    # DagsterInstance in the code server and a few PostgreSQL sessions) and retention_after_backup
    # would launch a retention run (a run worker) after the backup; the test asserts neither.
    unused = (
        RETENTION_AFTER_BACKUP_SENSOR,
        RUN_FAILURE_ALERT_SENSOR,
        FRESHNESS_SENSOR,
        DEAD_LEASE_HOLDER_SENSOR,
        HEARTBEAT_SUCCESS_SENSOR,
        HEARTBEAT_FAILURE_SENSOR,
        VERIFICATION_ALERT_SENSOR,
    )
    stack = dagster_stack(env, sensors_off=unused)

    wait_for_first_ticks(stack, COPY_AFTER_BACKUP_SENSOR, VERIFY_AFTER_BACKUP_SENSOR)
    backup_run = stack.submit_job("backup_job")
    assert stack.wait_for_run(backup_run, timeout=300) is dg.DagsterRunStatus.SUCCESS
    with stack.home.instance() as instance:
        backup_id = ledger.complete_sets(instance)[0].backup_id

    def copies_after_the_backup(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
        # Not copy_daily_safety_net's run: it fires when the daemon starts and can end before the
        # backup is complete, copying nothing.
        runs = runs_of(instance, "copy_backup_job", finished=True)
        return [run for run in runs if run.tags.get("backup_pipeline/after_run") == backup_run]

    def copied() -> bool:
        with stack.home.instance() as instance:
            return bool(copies_after_the_backup(instance))

    wait_for(copied, timeout=300, what="copy_backup_job launched by copy_after_backup", stack=stack)
    with stack.home.instance() as instance:
        [copy_run] = copies_after_the_backup(instance)
        assert copy_run.status is dg.DagsterRunStatus.SUCCESS
        states = ledger.copy_states(instance)[backup_id]
        assert states["nas"].complete and states["s3lock"].complete
        key = dg.AssetCheckKey(safety.BACKUP_SET_ASSET, COPY_POLICY_CHECK)
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
        target = safety.latest_materialization(instance, safety.BACKUP_SET_ASSET)
    assert record.evaluation is not None and record.evaluation.passed and safety.judges(record, target)
    # A local primary with an off-site copy is not the "NOT off-site" warning of a lone local folder.
    with stack.home.instance() as instance:
        key = dg.AssetCheckKey(safety.BACKUP_SET_ASSET, safety.DESTINATION_CHECK)
        where = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key].evaluation
    assert where is not None and where.passed and "copied off-site to s3lock" in (where.description or "")

    def verified() -> bool:
        # verify_after_backup verifies the first backup (from the primary) beside the copies; waiting
        # for it makes the screenshots show the installation as it settles, not mid-way.
        with stack.home.instance() as instance:
            key = dg.AssetCheckKey(safety.BACKUP_SET_ASSET, safety.VERIFICATION_CHECK)
            found = instance.event_log_storage.get_latest_asset_check_execution_by_key([key]).get(key)
            newest = safety.latest_materialization(instance, safety.BACKUP_SET_ASSET)
        return bool(found and found.evaluation and found.evaluation.passed and safety.judges(found, newest))

    wait_for(verified, timeout=300, what="backup_set_verified passed (verify_after_backup)", stack=stack)

    secrets = [s3.secret_key, sd.WRITER_SECRET_KEY]
    with open_chromium(viewport=(1400, 1000)) as page:
        page.set_default_timeout(120_000)  # the first page of a fresh webserver is slow on a busy machine
        page.goto(stack.url + "/assets/backup_set?view=checks")
        page.get_by_text(COPY_POLICY_CHECK, exact=True).first.wait_for(state="visible")
        page.get_by_text(COPY_POLICY_CHECK, exact=True).first.click()
        page.get_by_text("3-2-1 OK: 2 of 2 destinations hold a complete copy", exact=False).first.wait_for(
            state="visible"
        )
        _shot(page, artifacts_dir, "ui-20-backup-3-2-1", secrets)
        page.goto(stack.url + "/assets/backup_set?view=events")
        _select_event_showing(page, f"s3lock holds a complete, verified copy of {backup_id}")
        _shot(page, artifacts_dir, "ui-21-backup-set-copies", secrets)


_EVENT_TIME = re.compile(r"^[A-Z][a-z]{2} \d{1,2}, \d{1,2}:\d{2} [AP]M$")


def _select_event_showing(page: Page, text: str, rows_to_try: int = 12) -> None:
    """Dagster's Events tab details one event at a time, the newest selected: the s3lock copy event can
    sit under a newer one (the nas copy, a second copy run, the verification), so select rows in turn."""
    wanted = page.get_by_text(text, exact=False).first
    rows = page.get_by_text(_EVENT_TIME)
    rows.first.wait_for(state="visible")
    for index in range(min(rows.count(), rows_to_try)):
        try:
            wanted.wait_for(state="visible", timeout=3_000)
            return
        except PlaywrightTimeoutError:
            rows.nth(index).click()
    wanted.wait_for(state="visible", timeout=5_000)  # fails naming the text no event showed
