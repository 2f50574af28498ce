"""A demo-like installation (local destination, recovery key made but never exported, schedule off):
after the first backup, with no click, the UI tells the truth.

- ``backup_set`` → Checks: every check has a verdict for the newest backup (none "Not evaluated"):
  ``backup_destination`` yellow (NOT off-site), ``recovery_key_exported`` yellow (the host command),
  ``backup_set_fresh`` green and ``backup_set_verified`` green — the verification was launched by the
  ``verify_after_backup`` sensor right after the first backup.
- The Catalog: ``backup_health`` is red (NOT SAFE) while those warnings stand.
- A second manual backup within the minimum interval is refused: the run is CANCELED, labelled, and
  its page shows the reason without a Python stack trace.
- The heartbeat URL (a real HTTP receiver in this process) got a ping for the backup and one for the
  verification.

Real dagster-webserver + dagster-daemon on dagster-postgres, the suite's S3 server, Debian's Chromium.
Screenshots: ``test-artifacts/``; with ``UPDATE_DOC_SCREENSHOTS=1`` also ``docs/screenshots/``.
"""

import os
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import dagster as dg
import pytest

from backup_pipeline import ledger, safety
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
from backup_pipeline_tests.fixtures.alert_receivers import WebhookReceiver
from backup_pipeline_tests.fixtures.dagster import (
    DagsterStack,
    StartDagster,
    open_chromium,
)
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server

from .e2e_support import product_env, product_files, runs_of, wait_for, wait_for_first_ticks

pytestmark = pytest.mark.e2e

DOCS_DIR = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
DOC_SCREENSHOTS = {
    "ui-15-local-destination-warning",
    "ui-16-recovery-key-warning",
    "ui-17-backup-set-verified",
    "ui-18-catalog-backup-health",
    "ui-19-manual-backup-refused",
}
CHECKS = (
    safety.FRESHNESS_CHECK,
    safety.DESTINATION_CHECK,
    safety.VERIFICATION_CHECK,
    safety.RECOVERY_KEY_CHECK,
)


def _latest_check(stack: DagsterStack, asset: dg.AssetKey, name: str) -> Any:
    key = dg.AssetCheckKey(asset, name)
    with stack.home.instance() as instance:
        return instance.event_log_storage.get_latest_asset_check_execution_by_key([key]).get(key)


def _current(stack: DagsterStack, name: str) -> Any:
    """The check's latest execution if it judges the newest backup_set materialization, else None."""
    record = _latest_check(stack, safety.BACKUP_SET_ASSET, name)
    with stack.home.instance() as instance:
        target = safety.latest_materialization(instance, safety.BACKUP_SET_ASSET)
    if record is None or record.evaluation is None or not safety.judges(record, target):
        return None
    return record.evaluation


CHECK_STATUS = """
query ($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode {
      assetChecksOrError {
        ... on AssetChecks {
          checks { name executionForLatestMaterialization { status evaluation { severity } } }
        }
      }
    }
  }
}
"""


def _catalog_check_status(stack: DagsterStack, asset: str, check: str) -> tuple[str, str]:
    data = stack.graphql(CHECK_STATUS, {"path": [asset]})
    checks = data["assetNodeOrError"]["assetChecksOrError"]["checks"]
    [execution] = [c["executionForLatestMaterialization"] for c in checks if c["name"] == check]
    assert execution is not None, f"{check} reads 'Not evaluated'"
    return execution["status"], execution["evaluation"]["severity"]


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
def test_first_backup_shows_the_warnings_and_a_verified_set_without_a_click(
    pg_database: PgDatabase,
    s3: S3Server,
    dagster_stack: StartDagster,
    webhook_receiver: WebhookReceiver,
    artifacts_dir: Path,
    tmp_path: Path,
) -> None:
    with pg_database.connect() as conn:
        seed_sample_app(conn, s3.client(), SeedSpec(small_objects=12, large_object_bytes=(), users=5))
    files = product_files(tmp_path)  # `backup-pipeline keys init`: the key exists, never exported
    heartbeat = tmp_path / "heartbeat-url"
    heartbeat.write_text(webhook_receiver.url.replace("/hooks/backup", "/ping/demo-check-token"))
    env = product_env(
        files,
        pg_database.url,
        s3.env(),
        schedule_enabled="false",
        heartbeat_url_file=str(heartbeat),
        # The test waits for verify_after_backup and the heartbeat pings (run-status sensors).
        run_sensor_interval_seconds="5",
    )
    # Only the sensors this test is about run, besides backup_status_checks (the Checks and
    # backup_health): every other run-status sensor would be evaluated every 5 s as well (each
    # evaluation a DagsterInstance in the code server and a few PostgreSQL sessions), and
    # retention_after_backup would launch a retention run (a run worker) after each backup; the
    # test asserts neither.
    unused = (
        RETENTION_AFTER_BACKUP_SENSOR,
        RUN_FAILURE_ALERT_SENSOR,
        FRESHNESS_SENSOR,
        DEAD_LEASE_HOLDER_SENSOR,
        HEARTBEAT_FAILURE_SENSOR,
        VERIFICATION_ALERT_SENSOR,
    )
    stack = dagster_stack(env, sensors_off=unused)
    wait_for_first_ticks(stack, VERIFY_AFTER_BACKUP_SENSOR, HEARTBEAT_SUCCESS_SENSOR)

    # The demo's first backup: launched over GraphQL, as scripts/demo.sh does. No click from here on.
    backup_run = stack.submit_job("backup_job")
    assert stack.wait_for_run(backup_run, timeout=300) is dg.DagsterRunStatus.SUCCESS
    with stack.home.instance() as instance:
        backup_id = ledger.complete_sets(instance)[0].backup_id

    def verified() -> bool:
        with stack.home.instance() as instance:
            done = runs_of(instance, "verify_backup_job", finished=True)
        return bool(done)

    wait_for(verified, timeout=300, what="verify_backup_job launched by verify_after_backup", stack=stack)
    with stack.home.instance() as instance:
        [verify_run] = runs_of(instance, "verify_backup_job", finished=True)
    assert verify_run.status is dg.DagsterRunStatus.SUCCESS
    assert verify_run.tags[ledger.BACKUP_ID_TAG] == backup_id
    wait_for(
        lambda: bool(
            _current(stack, safety.VERIFICATION_CHECK) and _current(stack, safety.VERIFICATION_CHECK).passed
        ),
        timeout=120,
        what="backup_set_verified passed for the newest backup",
        stack=stack,
    )
    # Every safety check judges the newest backup: none reads "Not evaluated".
    verdicts = {name: _current(stack, name) for name in CHECKS}
    assert all(verdicts.values()), {k: v for k, v in verdicts.items() if v is None}
    assert verdicts[safety.FRESHNESS_CHECK].passed
    for warning in (safety.DESTINATION_CHECK, safety.RECOVERY_KEY_CHECK):
        assert not verdicts[warning].passed and verdicts[warning].severity is dg.AssetCheckSeverity.WARN
    # What the UI itself asks (executionForLatestMaterialization): a status, never "Not evaluated".
    for name in CHECKS:
        _catalog_check_status(stack, "backup_set", name)
    assert str(files.backups_dir) in verdicts[safety.DESTINATION_CHECK].description
    assert safety.EXPORT_RECOVERY_COMMAND in verdicts[safety.RECOVERY_KEY_CHECK].description
    wait_for(
        lambda: _latest_check(stack, safety.HEALTH_ASSET, safety.HEALTH_CHECK) is not None,
        timeout=120,
        what="backup_health recorded",
        stack=stack,
    )
    health = _latest_check(stack, safety.HEALTH_ASSET, safety.HEALTH_CHECK).evaluation
    assert not health.passed and health.severity is dg.AssetCheckSeverity.ERROR

    # The dead-man's switch: one ping for the backup, one for the verification.
    pings = webhook_receiver.wait_for(2, timeout=120)
    assert [(p.method, p.path) for p in pings[:2]] == [("POST", "/ping/demo-check-token")] * 2
    bodies = " ".join(p.body.decode() for p in pings)
    assert f"backup {backup_id} complete" in bodies and f"backup {backup_id} verified" in bodies

    secrets = [
        s3.secret_key,
        *[line.split(":", 1)[1] for line in files.org_secret_file.read_text().splitlines()],
    ]
    with open_chromium(viewport=(1400, 1000)) as page:
        page.set_default_timeout(120_000)  # the first page of a fresh webserver is slow on a busy machine
        page.goto(stack.url + "/assets/backup_set?view=checks")
        for name in CHECKS:
            page.get_by_text(name, exact=True).first.wait_for(state="visible")
        assert "Not evaluated" not in page.inner_text("body")
        # On a busy machine the "Join the Dagster community" dialog can open after the first look.
        page.get_by_text(safety.DESTINATION_CHECK, exact=True).first.click()
        page.get_by_text(f"backups go to the local folder {files.backups_dir}").first.wait_for(
            state="visible"
        )
        _shot(page, artifacts_dir, "ui-15-local-destination-warning", secrets)
        page.get_by_text(safety.RECOVERY_KEY_CHECK, exact=True).first.click()
        page.get_by_text(re.compile("was never exported")).first.wait_for(state="visible")
        _shot(page, artifacts_dir, "ui-16-recovery-key-warning", secrets)
        page.get_by_text(safety.VERIFICATION_CHECK, exact=True).first.click()
        page.get_by_text(f"newest complete set {backup_id}: verified").first.wait_for(state="visible")
        _shot(page, artifacts_dir, "ui-17-backup-set-verified", secrets)

        page.goto(stack.url + "/assets")
        page.get_by_text("backup_health", exact=True).first.wait_for(state="visible")
        page.get_by_text(re.compile("Are we safe")).first.wait_for(state="visible")
        # Both backups rows carry a status (not "Loading…"): the Catalog colours backup_health red.
        page.get_by_text("Materialized", exact=True).nth(1).wait_for(state="visible")
        _shot(page, artifacts_dir, "ui-18-catalog-backup-health", secrets)
        # What the Catalog's status column reads: a failed check on the newest materialization.
        assert _catalog_check_status(stack, "backup_health", safety.HEALTH_CHECK) == ("FAILED", "ERROR")

        page.goto(stack.job_url("backup_job"))
        page.get_by_text("are NOT off-site").first.wait_for(state="visible")

        # A second manual backup right away is refused: CANCELED, labelled, no stack trace.
        page.goto(stack.job_url("backup_job") + "/playground")
        page.get_by_text("installation_id").first.wait_for(state="visible")
        page.get_by_role("button", name=re.compile("Launch Run")).click()
        page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))
        refused_id = urlparse(page.url).path.rstrip("/").split("/")[-1]
        assert stack.wait_for_run(refused_id, timeout=240) is dg.DagsterRunStatus.CANCELED
        page.reload()
        page.get_by_text(re.compile("MANUAL_BACKUP_TOO_SOON")).first.wait_for(state="visible")
        page.get_by_text("RUN_CANCELED").first.wait_for(state="visible")
        body = page.inner_text("body")
        assert "Stack Trace" not in body and "Traceback" not in body
        _shot(page, artifacts_dir, "ui-19-manual-backup-refused", secrets)
    with stack.home.instance() as instance:
        refused = instance.get_run_by_id(refused_id)
        assert refused is not None and refused.tags["backup_pipeline/outcome"] == "refused"
        assert not instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
