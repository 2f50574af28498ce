"""End to end: real dagster-webserver + dagster-daemon on a dagster-postgres home, a run
submitted over GraphQL goes through the queue and succeeds, and the UI renders the job in
Debian's Chromium (screenshot saved to test-artifacts/)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterRunStatus

from backup_pipeline.sample_app import SeedSpec, seed_sample_app
from backup_pipeline_tests.fixtures.dagster import StartDagster, dismiss_community_dialog, open_chromium
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server

pytestmark = pytest.mark.e2e

JOBS_QUERY = """
query {
  repositoryOrError(repositorySelector: {repositoryLocationName: "backup_pipeline", repositoryName: "__repository__"}) {
    ... on Repository { jobs { name } }
    ... on PythonError { message }
  }
}
"""


def test_health_job_runs_through_webserver_and_daemon(
    pg_database: PgDatabase, s3: S3Server, dagster_stack: StartDagster, artifacts_dir: Path, tmp_path: Path
) -> None:
    with pg_database.connect() as conn:
        seed_sample_app(conn, s3.client(), SeedSpec(small_objects=12, large_object_bytes=(), users=10))
    env = {
        **s3.env(),
        "BACKUP_PIPELINE_APP_DATABASE_URL": pg_database.url,
        "BACKUP_PIPELINE_STATE_DIR": str(tmp_path / "state"),
        "BACKUP_PIPELINE_LOCAL_DESTINATION_PATH": str(tmp_path / "backups"),
    }
    stack = dagster_stack(env)

    jobs = stack.graphql(JOBS_QUERY)["repositoryOrError"]["jobs"]
    assert "storage_health_job" in {j["name"] for j in jobs}

    run_id = stack.submit_job("storage_health_job")
    status = stack.wait_for_run(run_id)
    assert status is DagsterRunStatus.SUCCESS, stack.log_tail("daemon")

    instance = stack.home.instance()
    outputs = {
        e.step_key: e.dagster_event.event_specific_data.metadata  # type: ignore[union-attr]
        for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_OUTPUT)
    }
    assert outputs["check_object_storage"]["buckets"].value == "avatars, documents, media"
    assert outputs["check_app_database"]["schema_version"].value == "20250102080000_media_asset_settings"
    assert outputs["check_app_database"]["endpoint"].value.endswith(f"/{pg_database.name}")

    with open_chromium() as page:
        page.goto(stack.job_url("storage_health_job"))
        dismiss_community_dialog(page)
        page.get_by_text("check_object_storage").first.wait_for(state="visible", timeout=60_000)
        page.screenshot(path=str(artifacts_dir / "e2e-storage_health_job.png"), full_page=True)
        page.goto(stack.run_url(run_id))
        dismiss_community_dialog(page, timeout_ms=2000)
        page.get_by_text("Success").first.wait_for(state="visible", timeout=60_000)
        page.screenshot(path=str(artifacts_dir / "e2e-storage_health_job-run.png"), full_page=True)
