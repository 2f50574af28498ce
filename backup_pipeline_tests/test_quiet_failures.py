"""Expected failures show one line and no Python stack trace in the run view.

Dagster's run view prints "Stack Trace:" under every step failure whose recorded error has
frames. An expected refusal or an unavailable store (restore refused, pg tools missing, the
data lease busy, a store unreachable) records ``[CODE] message`` with an empty stack
(``ops/step_errors.py``); an unexpected exception keeps its trace. Runs through Dagster's own
execution (``execute_in_process``) with the machine's PostgreSQL, moto and a local folder.
The retention, delete, migration, data-lease and backup-job tests assert the same through
``backup_helpers.expected_failures``.
"""

from pathlib import Path

import dagster as dg
import pytest

from backup_pipeline.archive.keys import generate_org_secret_file
from backup_pipeline.ops.backup import build_backup_job
from backup_pipeline.ops.health import storage_health_job
from backup_pipeline.ops.step_errors import expected_failure
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.resources.s3 import S3Resource
from backup_pipeline.services.backup_parts import ErrorCode
from backup_pipeline_tests.backup_helpers import expected_failures, run_config
from backup_pipeline_tests.fixtures.ports import free_port
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server
from backup_pipeline_tests.restore_support import Installation, confirm


def _retrying_job(*, retryable: bool, unexpected: bool = False) -> dg.JobDefinition:
    @dg.op(retry_policy=dg.RetryPolicy(max_retries=2, delay=0))
    def flaky_step(context: dg.OpExecutionContext) -> None:
        if unexpected:
            raise KeyError("a bug")
        raise expected_failure(
            context,
            "S3 endpoint http://s3.invalid: connection refused",
            "S3_UNREACHABLE",
            retryable=retryable,
        )

    @dg.job(name="retrying_job")
    def retrying_job() -> None:
        flaky_step()

    return retrying_job


def _retries(result: dg.ExecuteInProcessResult) -> int:
    return sum(1 for e in result.all_events if e.event_type is dg.DagsterEventType.STEP_UP_FOR_RETRY)


def test_a_retryable_failure_is_retried_by_the_policy_and_its_last_attempt_is_quiet() -> None:
    with dg.instance_for_test() as instance:
        result = _retrying_job(retryable=True).execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    assert _retries(result) == 2  # the op's policy still acts: a quiet failure alone is never retried
    [failure] = expected_failures(result)
    assert failure.code == "S3_UNREACHABLE" and failure.message.startswith("S3 endpoint http://s3.invalid")


def test_a_refusal_is_not_retried_and_an_unexpected_error_keeps_its_trace() -> None:
    with dg.instance_for_test() as instance:
        refused = _retrying_job(retryable=False).execute_in_process(instance=instance, raise_on_error=False)
        bug = _retrying_job(retryable=False, unexpected=True).execute_in_process(
            instance=instance, raise_on_error=False
        )
    assert _retries(refused) == 0 and [f.code for f in expected_failures(refused)] == ["S3_UNREACHABLE"]
    [event] = bug.get_step_failure_events()
    error = event.step_failure_data.error
    assert error is not None
    frames = "".join(error.stack) + "".join(error.cause.stack if error.cause else [])
    assert "KeyError" in str(error) and "flaky_step" in frames  # a developer still gets the frames


def test_a_backup_without_pg_tools_fails_in_one_line(pg_database: PgDatabase, tmp_path: Path) -> None:
    generate_org_secret_file(tmp_path / "org-secret")
    (tmp_path / "no-tools").mkdir()
    resources = {
        "app_db": PostgresResource(database_url=pg_database.url, pg_bin_dir=str(tmp_path / "no-tools")),
        "s3": S3Resource(endpoint=f"http://127.0.0.1:{free_port()}", access_key="k", secret_key="s"),
        "destination": DestinationResource(kind="local", local_path=str(tmp_path / "dest")),
        "keys": BackupKeysResource(org_secret_file=str(tmp_path / "org-secret"), state_dir=str(tmp_path)),
    }
    with dg.instance_for_test() as instance:
        result = build_backup_job(executor_def=dg.in_process_executor).execute_in_process(
            run_config=run_config(), resources=resources, instance=instance, raise_on_error=False
        )
    assert not result.success
    [failure] = expected_failures(result)
    assert (failure.step, failure.code) == ("plan_backup", ErrorCode.PG_DUMP_NOT_FOUND)
    assert str(tmp_path / "no-tools") in failure.message


def test_storage_health_against_a_closed_database_port_fails_in_one_line() -> None:
    closed = free_port()
    with dg.instance_for_test() as instance:
        result = storage_health_job.execute_in_process(
            instance=instance,
            resources={
                "app_db": PostgresResource(database_url=f"postgresql://app@127.0.0.1:{closed}/appdb"),
                "s3": S3Resource(endpoint=f"http://127.0.0.1:{free_port()}", access_key="k", secret_key="s"),
            },
            raise_on_error=False,
        )
    failures = {f.step: f for f in expected_failures(result)}
    assert failures["check_app_database"].code == ErrorCode.DATABASE_UNREACHABLE
    assert str(closed) in failures["check_app_database"].message
    assert failures["check_object_storage"].code == ErrorCode.S3_UNREACHABLE


@pytest.fixture()
def installation(pg_database: PgDatabase, s3: S3Server, tmp_path: Path) -> Installation:
    return Installation(pg_database, s3, tmp_path)


def test_restore_refusals_are_one_line(installation: Installation) -> None:
    with dg.instance_for_test() as instance:
        unknown = installation.restore(
            instance,
            backup_id="20260101T000000Z-aaaaaaaa",
            dry_run=False,
            confirm="restore 20260101T000000Z-aaaaaaaa",
        )
        [failure] = expected_failures(unknown)
        assert (failure.step, failure.code) == ("start_restore", "RESTORE_REFUSED")
        assert "20260101T000000Z-aaaaaaaa" in failure.message

        # A real set (an empty database, no buckets), restored without the typed confirmation.
        backup_id = installation.backup(instance)
        unconfirmed = installation.restore(instance, backup_id=backup_id, dry_run=False, confirm="yes")
        [failure] = expected_failures(unconfirmed)
        assert (failure.step, failure.code) == ("start_restore", "RESTORE_REFUSED")
        assert confirm(backup_id) in failure.message
