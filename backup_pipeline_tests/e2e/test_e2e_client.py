"""The ``backup-pipeline`` client CLI (the seed's REST endpoints) against a live webserver + daemon.

The installed console script is run as a subprocess, as an operator or a cron job would run it:
``run backup --wait``, ``history`` (status filter, limit/cursor), ``show <backup id>``; and the
manual-backup minimum interval: a second manual backup right after the first is refused with
its reason (exit 1; the run is CANCELED, not FAILURE), and ``--force`` runs it anyway.

Last, on the same live stack (formerly ``test_e2e_smoke.py``, which started a webserver + daemon
of its own for it): a run submitted over GraphQL goes through the queue and succeeds, and the UI
renders the job in Debian's Chromium (screenshots saved to test-artifacts/).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterEventType, DagsterRunStatus

from backup_pipeline.client import PipelineClient
from backup_pipeline.destinations.local_folder import LocalFolderDestination
from backup_pipeline.sample_app import SeedSpec, seed_sample_app
from backup_pipeline.services.backup_upload import has_manifest, list_sets
from backup_pipeline_tests.fixtures.dagster import DagsterStack, open_chromium
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server

from .e2e_support import INSTALLATION, module_stack, product_env, product_files

pytestmark = pytest.mark.e2e

CLI = str(Path(sys.executable).parent / "backup-pipeline")


JOBS_QUERY = """
query {
  repositoryOrError(repositorySelector: {repositoryLocationName: "backup_pipeline", repositoryName: "__repository__"}) {
    ... on Repository { jobs { name } }
    ... on PythonError { message }
  }
}
"""


@dataclass
class Live:
    stack: DagsterStack
    backups_dir: Path
    object_count: int
    database_name: str
    artifacts_dir: Path

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_PIPELINE_")}
        env["BACKUP_PIPELINE_URL"] = self.stack.url
        return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)

    def cli_json(self, *args: str) -> dict[str, Any]:
        result = self.cli(*args, "--json")
        assert result.returncode == 0, result.stderr + result.stdout
        return dict(json.loads(result.stdout))

    def sets(self) -> dict[str, Any]:
        return list_sets(LocalFolderDestination(str(self.backups_dir)), INSTALLATION)


@pytest.fixture(scope="module")
def live(
    pg_database: PgDatabase,
    s3_server: S3Server,
    tmp_path_factory: pytest.TempPathFactory,
    artifacts_dir: Path,
) -> Iterator[Live]:
    s3_server.ensure_running()
    s3_server.reset()
    with pg_database.connect() as conn:
        seeded = seed_sample_app(
            conn,
            s3_server.client(),
            SeedSpec(small_objects=15, large_object_bytes=(), users=10, comments=20, audit_events=20),
        )
    root = tmp_path_factory.mktemp("e2e_client")
    files = product_files(root)
    env = product_env(
        files,
        pg_database.url,
        s3_server.env(),
        schedule_enabled="false",
        min_manual_backup_interval_minutes="30",
    )
    with module_stack(root, env, artifacts_dir, "e2e-client") as stack:
        yield Live(
            stack=stack,
            backups_dir=files.backups_dir,
            object_count=len(seeded.objects),
            database_name=pg_database.name,
            artifacts_dir=artifacts_dir,
        )


def test_run_backup_wait_history_and_show_against_the_live_webserver(live: Live) -> None:
    first = live.cli_json("run", "backup", "--wait")
    assert first["status"] == "SUCCESS"
    backup_id = first["backup_id"]
    assert backup_id and backup_id in live.sets() and has_manifest(live.sets()[backup_id])

    shown = live.cli_json("show", backup_id)
    assert shown["status"] == "SUCCESS" and shown["run_id"] == first["run_id"]
    assert shown["errors"] == []
    ledger = shown["ledger"]
    assert ledger["backup_id"] == backup_id
    assert ledger["object_count"] == live.object_count and ledger["total_bytes"] > 0
    assert {"plan_backup", "dump_database", "finalize_backup"} <= set(shown["steps"])
    assert all(status == "SUCCESS" for status in shown["steps"].values())
    assert "Restore this backup" in ledger["actions"]  # was None: Markdown entries were not queried
    text = live.cli("show", backup_id)
    assert text.returncode == 0
    assert f"backup {backup_id}: SUCCESS" in text.stdout and "step finalize_backup: SUCCESS" in text.stdout
    assert "actions: None" not in text.stdout
    assert (
        f"Restore this backup (dry run first): {live.stack.url}/locations/backup_pipeline/jobs/restore_job"
        in (text.stdout)
    )

    # A manual backup within the minimum interval is refused, with the reason, exit 1: a CANCELED
    # run (labelled refused), not a failure.
    refused = live.cli("run", "backup", "--wait", "--json")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    refused_run = json.loads(refused.stdout)
    assert refused_run["status"] == "CANCELED"
    assert live.cli_json("history", "--status", "failure")["runs"] == []
    canceled = live.cli_json("history", "--status", "canceled")["runs"]
    assert [r["run_id"] for r in canceled] == [refused_run["run_id"]]
    errors = PipelineClient(live.stack.url).errors(refused_run["run_id"])
    assert any("minimum interval" in e and "force" in e for e in errors), errors
    assert refused_run["errors"] == errors  # --wait reports why, and where to look
    assert refused_run["url"] == f"{live.stack.url.rstrip('/')}/runs/{refused_run['run_id']}"
    assert len(live.sets()) == 1

    # --force runs it anyway, with the installation's settings (same installation id).
    forced = live.cli_json("run", "backup", "--wait", "--force")
    assert forced["status"] == "SUCCESS"
    assert set(live.sets()) == {backup_id, forced["backup_id"]}

    history = live.cli_json("history")["runs"]
    assert [r["run_id"] for r in history] == [forced["run_id"], refused_run["run_id"], first["run_id"]]
    successes = live.cli_json("history", "--status", "success")["runs"]
    assert [r["backup_id"] for r in successes] == [forced["backup_id"], backup_id]

    page1 = live.cli_json("history", "--limit", "2")
    assert [r["run_id"] for r in page1["runs"]] == [forced["run_id"], refused_run["run_id"]]
    assert page1["next_cursor"] == refused_run["run_id"]
    page2 = live.cli_json("history", "--limit", "2", "--cursor", page1["next_cursor"])
    assert [r["run_id"] for r in page2["runs"]] == [first["run_id"]]
    assert page2["next_cursor"] is None

    table = live.cli("history")
    assert table.returncode == 0 and backup_id in table.stdout and "CANCELED" in table.stdout

    # As text, a run that did not succeed says why (each failed step) and links the run (main: status only).
    again = live.cli("run", "backup", "--wait")
    assert again.returncode == 1, again.stdout + again.stderr
    run_id = again.stdout.split()[2].rstrip(":")
    assert again.stdout.startswith(f"backup run {run_id}: ")
    reasons = [line for line in again.stderr.splitlines() if line.startswith("error: ")]
    assert reasons and all("minimum interval" in line for line in reasons), again.stderr
    assert f"see {live.stack.url.rstrip('/')}/runs/{run_id}" in again.stderr
    assert "Traceback" not in again.stdout + again.stderr


def test_show_of_an_unknown_backup_is_bad_input(live: Live) -> None:
    result = live.cli("show", "20200101T000000Z-deadbeef")
    assert result.returncode == 2
    assert "no backup run with backup id" in result.stderr


# Last in the module: the backup history assertions above count the runs of the stack.
def test_health_job_runs_through_webserver_and_daemon(live: Live) -> None:
    stack = live.stack
    jobs = stack.graphql(JOBS_QUERY)["repositoryOrError"]["jobs"]
    assert "storage_health_job" in {j["name"] for j in jobs}

    run_id = stack.submit_job("storage_health_job")
    status = stack.wait_for_run(run_id)
    assert status is DagsterRunStatus.SUCCESS, stack.log_tail("code-server")

    with stack.home.instance() as instance:
        outputs = {
            e.step_key: e.dagster_event.event_specific_data.metadata  # type: ignore[union-attr]
            for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_OUTPUT)
        }
    assert outputs["check_object_storage"]["buckets"].value == "avatars, documents, media"
    assert outputs["check_app_database"]["schema_version"].value == "20250102080000_media_asset_settings"
    assert outputs["check_app_database"]["endpoint"].value.endswith(f"/{live.database_name}")

    with open_chromium() as page:
        page.goto(stack.job_url("storage_health_job"))
        page.get_by_text("check_object_storage").first.wait_for(state="visible", timeout=60_000)
        page.screenshot(path=str(live.artifacts_dir / "e2e-storage_health_job.png"), full_page=True)
        page.goto(stack.run_url(run_id))
        page.get_by_text("Success").first.wait_for(state="visible", timeout=60_000)
        page.screenshot(path=str(live.artifacts_dir / "e2e-storage_health_job-run.png"), full_page=True)
