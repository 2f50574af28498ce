"""``restore_job`` with a ``target_time``: refusals that need no server (the PITR path end to end is in
test_pitr_integration.py). Every refusal names the field and the rule, ends the run CANCELED
(refused, not failed), and no backup-set step runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from backup_pipeline.archive.keys import generate_org_secret_file
from backup_pipeline.ops.restore import restore_job
from backup_pipeline.ops.restore_moment import RESTORE_TO_MOMENT_OP, TAG_TARGET_TIME
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.resources.s3 import S3Resource
from backup_pipeline.settings import PITR_S3_ACCESS_KEY_ENV, PITR_S3_SECRET_KEY_ENV

# Nothing listens on port 1: a step that tried to reach a server would fail, not pass by accident.
NOWHERE = "127.0.0.1:1"


def _resources(tmp_path: Path) -> dict[str, Any]:
    secret = tmp_path / "org-secret"
    generate_org_secret_file(secret)
    state = tmp_path / "state"
    return {
        "app_db": PostgresResource(database_url=f"postgresql://postgres@{NOWHERE}/app"),
        "s3": S3Resource(endpoint=f"http://{NOWHERE}", access_key="k", secret_key="s"),
        "destination": DestinationResource(
            kind="local", installation_id="t", state_dir=str(state), local_path=str(tmp_path / "sets")
        ),
        "keys": BackupKeysResource(org_secret_file=str(secret), state_dir=str(state)),
    }


def _run(tmp_path: Path, moment: dict[str, Any]) -> tuple[dg.ExecuteInProcessResult, dg.DagsterInstance]:
    instance = dg.DagsterInstance.ephemeral()
    result = restore_job.execute_in_process(
        instance=instance,
        resources=_resources(tmp_path),
        run_config={"ops": {RESTORE_TO_MOMENT_OP: {"config": moment}}},
        raise_on_error=False,
    )
    return result, instance


def _refusal(result: dg.ExecuteInProcessResult, instance: dg.DagsterInstance) -> str:
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    assert run is not None and run.tags.get("backup_pipeline/outcome") == "refused"
    started = {e.step_key for e in result.all_events if e.is_step_start}
    assert started == {RESTORE_TO_MOMENT_OP}  # start_restore and the backup-set steps never ran
    failure = result.failure_data_for_node(RESTORE_TO_MOMENT_OP)
    assert failure is not None and failure.error is not None
    assert failure.error.stack == []  # an expected refusal, not a crash
    return failure.error.message


@pytest.fixture
def pitr_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BACKUP_PIPELINE_PITR_ENABLED", "true")
    monkeypatch.setenv("BACKUP_PIPELINE_PITR_REPO_S3_ENDPOINT", f"https://{NOWHERE}")
    monkeypatch.setenv("BACKUP_PIPELINE_PITR_CONFIG_DIR", str(tmp_path / "pitr"))
    monkeypatch.setenv("BACKUP_PIPELINE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv(PITR_S3_ACCESS_KEY_ENV, "k")
    monkeypatch.setenv(PITR_S3_SECRET_KEY_ENV, "s")


def test_a_target_time_without_the_pitr_profile_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BACKUP_PIPELINE_PITR_ENABLED", raising=False)
    monkeypatch.setenv("BACKUP_PIPELINE_STATE_DIR", str(tmp_path / "state"))
    result, instance = _run(
        tmp_path, {"target_time": "latest", "data_dir": str(tmp_path / "copy"), "port": 15999}
    )
    message = _refusal(result, instance)
    assert "[PITR_TARGET_INVALID] target_time:" in message and "BACKUP_PIPELINE_PITR_ENABLED" in message
    assert not (tmp_path / "copy").exists()


@pytest.mark.usefixtures("pitr_env")
@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        ({"target_time": "2026-05-04 10:41"}, "target_time: '2026-05-04 10:41' has no UTC offset"),
        ({"target_time": "yesterday"}, "target_time: must be 'latest' or an ISO-8601 moment"),
        ({"target_time": "latest", "port": 15999}, "data_dir and port are required with target_time"),
        ({"target_time": "latest", "data_dir": "/tmp/x"}, "data_dir and port are required with target_time"),
    ],
)
def test_bad_target_time_requests_name_the_field_and_the_rule(
    tmp_path: Path, moment: dict[str, Any], expected: str
) -> None:
    result, instance = _run(tmp_path, moment)
    assert expected in _refusal(result, instance)


@pytest.mark.usefixtures("pitr_env")
def test_a_moment_in_the_future_is_refused_before_the_repository_is_opened(tmp_path: Path) -> None:
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat(timespec="seconds")
    result, instance = _run(tmp_path, {"target_time": future, "data_dir": str(tmp_path / "c"), "port": 15999})
    message = _refusal(result, instance)
    # the repository at NOWHERE was never contacted: the refusal is the rule, not a connection error
    assert f"target_time {future} is in the future" in message
    run = instance.get_run_by_id(result.run_id)
    assert run is not None and run.tags[TAG_TARGET_TIME] == future
    assert not (tmp_path / "c").exists()
