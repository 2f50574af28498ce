"""What an administrator does in the Dagster UI, in Debian's Chromium, against the real thing:
dagster-webserver + dagster-daemon on dagster-postgres, SeaweedFS S3 seeded with the sample app,
the Drive v3 test server as the destination, and a second ``--read-only`` webserver.

One stack for the module (start-up dominates on 2 cores); the tests run in file order and
build on each other: backup → asset → schedule → restore (dry run, real, refused) → read-only
→ the "are we safe?" check. Every page visited is searched for every secret of the stack.
Screenshots go to ``test-artifacts/ui-*.png``; with ``UPDATE_DOC_SCREENSHOTS=1`` the ones the
docs use (``DOC_SCREENSHOTS``) are also copied to ``docs/screenshots/`` — look at them before
committing.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import requests
from dagster import AssetCheckKey, AssetKey, DagsterEventType, DagsterRunStatus
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from backup_pipeline import admin_view
from backup_pipeline.archive.keys import generate_org_secret_file
from backup_pipeline.ops.verification import VERIFY_AFTER_BACKUP_SENSOR
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.sample_app import SeedSpec, seed_sample_app
from backup_pipeline_tests.fixtures.dagster import (
    LOCATION_NAME,
    REPOSITORY_NAME,
    DagsterHome,
    DagsterStack,
    _bin,
    make_dagster_home,
    open_chromium,
)
from backup_pipeline_tests.fixtures.drive import (
    SERVICE_ACCOUNT,
    SHARED_DRIVE_ID,
    DriveFixture,
    DriveTestServer,
    write_oauth_user_file,
    write_service_account_key,
)
from backup_pipeline_tests.fixtures.ports import free_port, stop_process_groups, wait_until
from backup_pipeline_tests.fixtures.postgres import PgDatabase, drop_database
from backup_pipeline_tests.fixtures.s3 import S3Server

from .e2e_support import wait_for_first_ticks

pytestmark = pytest.mark.e2e

RESTORED_BUCKET = "avatars"
DOC_SCREENSHOTS = {
    "04-run-list",
    "05-backup-set-asset",
    "06-restore-launchpad-prefilled",
    "10-restore-real",
    "11-restore-refused",
    "13-backup-set-checks",
}
DOCS_DIR = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on UnauthorizedError { message }
  }
}
"""
SCHEDULE_STATE = """
query {
  scheduleOrError(scheduleSelector: {repositoryLocationName: "backup_pipeline",
      repositoryName: "__repository__", scheduleName: "backup_schedule"}) {
    ... on Schedule { scheduleState { status } }
  }
}
"""


@dataclass
class UiStack:
    stack: DagsterStack
    read_only_url: str
    secrets: list[str]
    shots: Path
    s3: S3Server
    state: dict[str, Any] = field(default_factory=dict)

    def check_page(self, page: Any, name: str) -> None:
        """Screenshot the page and assert no secret is anywhere in its text or HTML."""
        page.wait_for_timeout(300)  # let lazy panels render before the screenshot
        path = self.shots / f"ui-{name}.png"
        page.screenshot(path=str(path), full_page=False)
        text, html = page.inner_text("body"), page.content()
        for secret in self.secrets:
            assert secret not in text and secret not in html, f"a secret is shown on the {name} page"
        if name in DOC_SCREENSHOTS and os.environ.get("UPDATE_DOC_SCREENSHOTS") == "1":
            DOCS_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, DOCS_DIR / path.name)


def _org_secret_values(path: Path) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in path.read_text().splitlines() if ":" in line]


def _private_key_fragments(sa_file: Path) -> list[str]:
    import json

    pem = json.loads(sa_file.read_text())["private_key"]
    return [line for line in pem.splitlines() if len(line) > 40][:3]


def _spawn_read_only_webserver(
    home: DagsterHome, env: dict[str, str], log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """Started alongside the main stack (start-up dominates on 2 cores); see ``_wait_for_webserver``."""
    port = free_port()
    proc = subprocess.Popen(
        [
            _bin("dagster-webserver"),
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "--read-only",
        ],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, **env, **home.env()},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, f"http://127.0.0.1:{port}"


def _wait_for_webserver(proc: subprocess.Popen[bytes], url: str) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the read-only dagster-webserver exited with {proc.returncode}")
        return requests.get(f"{url}/server_info", timeout=2).status_code == 200

    wait_until(up, timeout=180, what="read-only dagster-webserver", interval=0.5)


@pytest.fixture(scope="module")
def ui(
    pg_database: PgDatabase,
    s3_server: S3Server,
    drive_server: DriveTestServer,
    tmp_path_factory: pytest.TempPathFactory,
    artifacts_dir: Path,
) -> Iterator[UiStack]:
    tmp = tmp_path_factory.mktemp("ui")
    s3_server.ensure_running()
    s3_server.reset()
    with pg_database.connect() as conn:
        seed_sample_app(conn, s3_server.client(), SeedSpec(small_objects=40, large_object_bytes=(), users=10))

    drive_server.reset()
    drive_server.add_shared_drive(SHARED_DRIVE_ID, {SERVICE_ACCOUNT: "organizer"})
    drive = DriveFixture(
        server=drive_server,
        tmp=tmp,
        service_account_file=write_service_account_key(tmp / "sa.json", drive_server.token_uri),
        oauth_file=write_oauth_user_file(tmp / "oauth.json", drive_server.token_uri),
    )
    state = tmp / "state"
    org_secret = state / "org-secret"
    generate_org_secret_file(org_secret)
    keys = BackupKeysResource(org_secret_file=str(org_secret), state_dir=str(state))
    keys.recovery_public_key()
    keys.recovery_store().export_secret()  # the administrator's set-up step: the key is off the server
    db_password = "pw-" + secrets.token_hex(12)  # trust auth ignores it; it must still never be shown
    env = {
        **s3_server.env(),
        **drive.env(),
        "BACKUP_PIPELINE_APP_DATABASE_URL": pg_database.url,
        "BACKUP_PIPELINE_APP_DATABASE_PASSWORD": db_password,
        "BACKUP_PIPELINE_ORG_SECRET_FILE": str(org_secret),
        "BACKUP_PIPELINE_INSTALLATION_ID": "acme-prod",
        "BACKUP_PIPELINE_EXECUTOR": "in_process",
        "BACKUP_PIPELINE_SCHEDULE_TIME": "02:30",
        "BACKUP_PIPELINE_SCHEDULE_TIMEZONE": "Europe/Berlin",
        # verify_after_backup follows the first backup within 5 s (default 30): the checks test waits for it.
        "BACKUP_PIPELINE_RUN_SENSOR_INTERVAL_SECONDS": "5",
    }
    home = make_dagster_home(tmp / "dagster_home")
    logs = tmp / "logs"
    logs.mkdir()
    stack = DagsterStack(home=home, port=free_port(), log_dir=logs, env=env)
    read_only: subprocess.Popen[bytes] | None = None
    try:
        read_only, read_only_url = _spawn_read_only_webserver(home, env, logs / "dagster-read-only.log")
        stack.start()
        _wait_for_webserver(read_only, read_only_url)
        # The checks test waits for verify_after_backup's run after the first backup.
        wait_for_first_ticks(stack, VERIFY_AFTER_BACKUP_SENSOR)
        yield UiStack(
            stack=stack,
            read_only_url=read_only_url,
            secrets=[
                s3_server.secret_key,
                db_password,
                *_org_secret_values(org_secret),
                *_private_key_fragments(drive.service_account_file),
            ],
            shots=artifacts_dir,
            s3=s3_server,
        )
    finally:
        if read_only is not None:
            stop_process_groups([read_only], timeout=20)
        stack.stop()
        for log in logs.glob("*.log"):
            (artifacts_dir / f"ui-{log.name}").write_bytes(log.read_bytes())
        drop_database(home.database.name)


@pytest.fixture(scope="module")
def page(ui: UiStack) -> Iterator[Any]:
    with open_chromium(viewport=(1400, 1000)) as p:
        p.set_default_timeout(60_000)
        p.goto(ui.stack.url + "/overview")
        yield p


def _launch_from_launchpad(page: Any) -> str:
    """Click "Launch Run" in the open Launchpad; returns the new run's id from the run page URL."""
    button = page.get_by_role("button", name=re.compile("Launch Run"))
    button.wait_for(state="visible")
    button.click()
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))
    return urlparse(page.url).path.rstrip("/").split("/")[-1]


def _step_metadata(ui: UiStack, run_id: str, step_key: str) -> dict[str, Any]:
    with ui.stack.home.instance() as instance:
        for record in instance.all_logs(run_id, of_type=DagsterEventType.STEP_OUTPUT):
            if record.step_key == step_key:
                data: Any = record.dagster_event.event_specific_data  # type: ignore[union-attr]
                return {k: getattr(v, "value", v) for k, v in data.metadata.items()}
    raise AssertionError(f"no output of {step_key} in run {run_id}")


def _failure_messages(ui: UiStack, run_id: str) -> list[str]:
    with ui.stack.home.instance() as instance:
        out = []
        for record in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):
            data = record.dagster_event.step_failure_data  # type: ignore[union-attr]
            if data.user_failure_data and data.user_failure_data.description:
                out.append(data.user_failure_data.description)
            elif data.error:
                out.append(data.error.message)
        return out


def test_backup_launched_from_the_launchpad_succeeds_and_reads_as_history(ui: UiStack, page: Any) -> None:
    page.goto(ui.stack.job_url("backup_job"))
    page.get_by_text("Google Drive (off-site).").first.wait_for(state="visible")
    ui.check_page(page, "01-backup-job")

    page.goto(ui.stack.job_url("backup_job") + "/playground")
    page.get_by_text("installation_id").first.wait_for(state="visible")  # default config is there
    ui.check_page(page, "02-backup-launchpad")
    run_id = _launch_from_launchpad(page)
    status = ui.stack.wait_for_run(run_id, timeout=240)
    assert status is DagsterRunStatus.SUCCESS, _failure_messages(ui, run_id)

    page.reload()
    page.get_by_text("RUN_SUCCESS").first.wait_for(state="visible")
    ui.check_page(page, "03-backup-run")

    with ui.stack.home.instance() as instance:
        run = instance.get_run_by_id(run_id)
    assert run is not None
    tags = run.tags
    assert tags["backup_pipeline/trigger"] == "manual"
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", tags["backup_pipeline/backup_id"])
    # Only the tags people filter by: the backup id is not cut off in the run list.
    assert {k for k in tags if k.startswith("backup_pipeline/")} == {
        "backup_pipeline/backup_id",
        "backup_pipeline/trigger",
        "backup_pipeline/exclusive",
    }
    summary = _step_metadata(ui, run_id, "finalize_backup")
    assert re.fullmatch(r"[\d.]+ (B|KiB|MiB|GiB)", summary["size"]) and summary["objects"] > 0
    ui.state["backup_id"] = tags["backup_pipeline/backup_id"]
    ui.state["backup_run"] = run_id

    # The run list shows the backup as history: its tags are visible there.
    page.goto(ui.stack.url + "/runs")
    page.get_by_text(ui.state["backup_id"]).first.wait_for(state="visible")
    ui.check_page(page, "04-run-list")


def test_backup_set_asset_shows_the_backup_and_links_to_restore_and_delete(ui: UiStack, page: Any) -> None:
    backup_id = ui.state["backup_id"]
    page.goto(ui.stack.url + "/assets/backup_set")
    page.get_by_text(backup_id).first.wait_for(state="visible")
    for label in ("status", "size", "objects", "duration", "destination_link", "actions"):
        page.get_by_text(label, exact=True).first.wait_for(state="visible")
    ui.check_page(page, "05-backup-set-asset")

    restore = page.get_by_role("link", name=re.compile("Restore this backup"))
    href = restore.first.get_attribute("href")
    assert href is not None and href.startswith(
        "/locations/backup_pipeline/jobs/restore_job/playground/setup"
    )
    assert backup_id in requests.utils.unquote(href)
    delete = page.get_by_role("link", name=re.compile("Delete this backup")).first.get_attribute("href")
    assert delete is not None and "delete_backup_job" in delete

    # The link opens the restore Launchpad with this backup's id filled in (dry run).
    restore.first.click()
    page.wait_for_url(re.compile(r"/jobs/restore_job/playground"))
    page.get_by_text(backup_id).first.wait_for(state="visible")
    page.get_by_text("dry_run").first.wait_for(state="visible")
    ui.check_page(page, "06-restore-launchpad-prefilled")


def _schedule_status(ui: UiStack) -> str:
    return str(ui.stack.graphql(SCHEDULE_STATE)["scheduleOrError"]["scheduleState"]["status"])


def test_schedule_is_toggled_off_and_on(ui: UiStack, page: Any) -> None:
    page.goto(f"{ui.stack.url}/locations/{LOCATION_NAME}/schedules/backup_schedule")
    page.get_by_text("Europe/Berlin").first.wait_for(state="visible")
    assert _schedule_status(ui) == "RUNNING"
    toggle = page.locator("input[type=checkbox]").first
    assert toggle.is_checked()
    ui.check_page(page, "07-schedule-on")

    _click_switch(page)
    wait_until(lambda: _schedule_status(ui) == "STOPPED", timeout=30, what="schedule stopped", interval=0.5)
    page.reload()
    page.get_by_text("Europe/Berlin").first.wait_for(state="visible")
    assert not page.locator("input[type=checkbox]").first.is_checked()
    ui.check_page(page, "08-schedule-off")

    _click_switch(page)
    wait_until(lambda: _schedule_status(ui) == "RUNNING", timeout=30, what="schedule running", interval=0.5)


def _click_switch(page: Any) -> None:
    """The schedule's Running switch: its input is visually hidden, the label is what one clicks."""
    page.locator("label:has(input[type=checkbox])").first.click()


def _open_launchpad(ui: UiStack, page: Any, config: dict[str, Any]) -> None:
    page.goto(
        ui.stack.url
        + admin_view.launchpad_link("restore_job", {"ops": {"start_restore": {"config": config}}})
    )
    page.wait_for_url(re.compile(r"/jobs/restore_job/playground"))
    page.get_by_text("start_restore").first.wait_for(state="visible")


def test_restore_one_bucket_dry_run_then_real_with_confirmation(ui: UiStack, page: Any) -> None:
    backup_id = ui.state["backup_id"]
    client = ui.s3.client()
    lost = sorted(o.object_name for o in client.list_objects(RESTORED_BUCKET, recursive=True))[:3]
    assert lost
    for key in lost:
        client.remove_object(RESTORED_BUCKET, key)
    request = {"backup_id": backup_id, "scope": "files", "buckets": [RESTORED_BUCKET]}

    _open_launchpad(ui, page, {**request, "dry_run": True})
    dry_run = _launch_from_launchpad(page)
    assert ui.stack.wait_for_run(dry_run, timeout=180) is DagsterRunStatus.SUCCESS, _failure_messages(
        ui, dry_run
    )
    predicted = _step_metadata(ui, dry_run, f"restore_bucket_step[{RESTORED_BUCKET}]")
    assert predicted["dry_run"] is True and predicted["added"] == len(lost)
    assert all(not _exists(client, key) for key in lost)  # the dry run touched nothing
    _show_step(page, RESTORED_BUCKET)
    ui.check_page(page, "09-restore-dry-run")

    _open_launchpad(ui, page, {**request, "dry_run": False, "confirm": f"restore {backup_id}"})
    real = _launch_from_launchpad(page)
    assert ui.stack.wait_for_run(real, timeout=180) is DagsterRunStatus.SUCCESS, _failure_messages(ui, real)
    summary = _step_metadata(ui, real, "finish_restore")
    assert summary["dry_run"] is False
    assert summary["buckets"][RESTORED_BUCKET]["added"] == len(lost)
    assert all(_exists(client, key) for key in lost)
    _show_step(page, RESTORED_BUCKET)
    ui.check_page(page, "10-restore-real")


def _guide_step_filter(bucket: str) -> str:
    """The log filter OPERATING-IN-THE-UI.md tells administrators to type, for ``bucket``."""
    guide = (DOCS_DIR.parent / "guides" / "OPERATING-IN-THE-UI.md").read_text()
    match = re.search(r"`(step:restore_bucket_step\[<bucket>\])`", guide)
    assert match, "the guide no longer names the restore_bucket_step log filter"
    return match.group(1).replace("<bucket>", bucket)


def _show_step(page: Any, bucket: str) -> None:
    """The run page's log filtered as the guide says: the step's output shows added/overwritten/skipped."""
    page.reload()
    page.get_by_text("RUN_SUCCESS").first.wait_for(state="visible")
    page.get_by_placeholder("Filter…").or_(page.get_by_placeholder("Filter...")).first.fill(
        _guide_step_filter(bucket)
    )
    page.keyboard.press("Enter")
    page.get_by_text("added", exact=True).first.wait_for(state="visible")


def _exists(client: Any, key: str) -> bool:
    try:
        client.stat_object(RESTORED_BUCKET, key)
    except Exception:
        return False
    return True


def test_restore_without_the_confirmation_is_refused(ui: UiStack, page: Any) -> None:
    backup_id = ui.state["backup_id"]
    _open_launchpad(
        ui, page, {"backup_id": backup_id, "scope": "files", "buckets": [RESTORED_BUCKET], "dry_run": False}
    )
    run_id = _launch_from_launchpad(page)
    assert ui.stack.wait_for_run(run_id, timeout=180) is DagsterRunStatus.FAILURE
    messages = _failure_messages(ui, run_id)
    assert any("restore " + backup_id in m for m in messages), messages
    page.reload()
    page.get_by_text("RUN_FAILURE").first.wait_for(state="visible")
    page.get_by_text(re.compile("confirm")).first.wait_for(state="visible")
    ui.check_page(page, "11-restore-refused")


def test_read_only_webserver_refuses_to_launch(ui: UiStack, page: Any) -> None:
    page.goto(f"{ui.read_only_url}/locations/{LOCATION_NAME}/jobs/backup_job/playground")
    page.get_by_text("backup_job").first.wait_for(state="visible")
    launch = page.get_by_role("button", name=re.compile("Launch Run"))
    assert launch.count() == 0 or launch.first.is_disabled()
    ui.check_page(page, "12-read-only")

    with ui.stack.home.instance() as instance:
        before = len(instance.get_runs())
    response = requests.post(
        f"{ui.read_only_url}/graphql",
        json={
            "query": LAUNCH,
            "variables": {
                "params": {
                    "selector": {
                        "repositoryLocationName": LOCATION_NAME,
                        "repositoryName": REPOSITORY_NAME,
                        "jobName": "backup_job",
                    },
                    "runConfigData": {},
                }
            },
        },
        timeout=60,
    )
    assert response.json()["data"]["launchRun"]["__typename"] == "UnauthorizedError"
    with ui.stack.home.instance() as instance:
        assert len(instance.get_runs()) == before


def test_no_secret_in_anything_the_ui_can_show(ui: UiStack) -> None:
    """Pages render logs lazily, so also search every run's config, tags, full event log and
    captured stdout/stderr (what the run pages, asset pages and GraphQL serve) for the secrets."""
    with ui.stack.home.instance() as instance:
        runs = instance.get_runs()
        assert len(runs) >= 4  # backup, dry run, restore, refused restore (+ retention, checks)
        for run in runs:
            shown = [repr(run.run_config), repr(run.tags)]
            shown += [repr(record) for record in instance.all_logs(run.run_id)]
            # Captured stdout/stderr (the run page's stdout/stderr tabs).
            for log in (ui.stack.home.path / "storage" / run.run_id / "compute_logs").glob("*"):
                shown.append(log.read_text(errors="replace"))
            blob = "\n".join(shown)
            for secret in ui.secrets:
                assert secret not in blob, f"a secret is in run {run.run_id} ({run.job_name})"


def _latest_check(ui: UiStack, name: str) -> Any:
    key = AssetCheckKey(AssetKey("backup_set"), name)
    with ui.stack.home.instance() as instance:
        return instance.event_log_storage.get_latest_asset_check_execution_by_key([key]).get(key)


def test_backup_set_checks_say_whether_we_are_safe(ui: UiStack, page: Any) -> None:
    page.goto(ui.stack.url + "/assets/backup_set?view=checks")
    # An administrator runs the destination check on demand: a run that talks to Drive.
    page.get_by_text(admin_view.DESTINATION_CHECK).first.click()
    page.locator("button", has_text=re.compile(r"^\s*Execute\s*$")).first.click()
    wait_until(
        lambda: (
            _latest_check(ui, admin_view.DESTINATION_CHECK) is not None
            and _latest_check(ui, admin_view.DESTINATION_CHECK).status
            is not AssetCheckExecutionRecordStatus.PLANNED
        ),
        timeout=120,
        what="backup_destination evaluated",
        interval=1,
    )
    destination = _latest_check(ui, admin_view.DESTINATION_CHECK)
    assert destination.status is AssetCheckExecutionRecordStatus.SUCCEEDED
    assert "Google Drive" in (destination.event.dagster_event.event_specific_data.description or "")

    # The other checks were recorded for the newest backup by the backup run and the
    # backup_status_checks sensor; the first backup was verified by verify_after_backup. No click.
    for name in (admin_view.FRESHNESS_CHECK, admin_view.VERIFICATION_CHECK, admin_view.RECOVERY_KEY_CHECK):
        wait_until(
            lambda name=name: (  # type: ignore[misc]
                _latest_check(ui, name) is not None
                and _latest_check(ui, name).status is AssetCheckExecutionRecordStatus.SUCCEEDED
            ),
            timeout=240,
            what=f"{name} passed",
            interval=2,
        )
    page.reload()
    page.get_by_text(admin_view.VERIFICATION_CHECK, exact=True).first.wait_for(state="visible")
    assert "Not evaluated" not in page.inner_text("body")
    page.get_by_text(admin_view.FRESHNESS_CHECK).first.click()
    page.get_by_text(re.compile("OK: newest complete backup")).first.wait_for(state="visible")
    ui.check_page(page, "13-backup-set-checks")
    page.goto(ui.stack.url + "/overview")
    page.get_by_text("backup_job").first.wait_for(state="visible")
    ui.check_page(page, "14-overview")
