"""The ``fail_dead_lease_holder`` sensor on a real PostgreSQL and a real Dagster instance.

After a host crash the holder's run stays STARTED, holding the ``backup_pipeline/exclusive`` queue
slot, and its lease row stops being heartbeated. The sensor marks exactly such a run failed; a
fresh heartbeat, a finished run, a run unknown to the instance, a run that still logs, an empty
lease table and an unreachable database leave everything as it is.

Heartbeat ages are set in SQL (``heartbeat_at`` moved back); event-log ages through the sensor's
``clock``. Nothing here asserts on timing.
"""

import json
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.sensor_definition import SensorExecutionData
from dagster._core.instance.ref import InstanceRef

from backup_pipeline.concurrency import DATA_LEASE_TABLE, EXCLUSIVE_RUN_TAGS
from backup_pipeline.ops.data_lease import holder_finished, run_data_lease
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.schedules import BACKUP_JOB_NAME
from backup_pipeline.sensors import (
    DEAD_LEASE_HOLDER_SENSOR,
    build_dead_lease_holder_sensor,
    build_run_failure_alert_sensor,
    build_sensors,
    dead_lease_holder_verdict,
)
from backup_pipeline.services import data_lease
from backup_pipeline.services.data_lease import LeaseHolder
from backup_pipeline.settings import load_settings

from .backup_helpers import evaluate_on_run_failure
from .fixtures.alert_receivers import WebhookReceiver
from .fixtures.postgres import PgDatabase

STALE = 600.0
URL_ENV = "BACKUP_PIPELINE_TEST_DEAD_RUN_DB_URL"
READY_ENV = "BACKUP_PIPELINE_TEST_DEAD_RUN_READY"
HOUR_LATER = 3600.0


def _holder(age: float, *, run_id: str = "r1", job: str = BACKUP_JOB_NAME) -> LeaseHolder:
    return LeaseHolder(
        run_id=run_id,
        job=job,
        holder="step dump_database on host-a pid 4242",
        acquired_at=datetime.now(UTC),
        heartbeat_age_seconds=age,
    )


# --- the decision on its own ---------------------------------------------------------------------


def test_verdict_fails_an_executing_run_with_a_stale_heartbeat() -> None:
    for status in ("STARTED", "STARTING"):
        verdict = dead_lease_holder_verdict(_holder(1500.0), status, STALE)
        assert verdict.fail
        assert "its data-lease heartbeat stopped 25 minutes ago" in verdict.reason
        assert "the run's processes are gone (host crash?)" in verdict.reason
        assert "step dump_database on host-a pid 4242" in verdict.reason
    silent = dead_lease_holder_verdict(
        _holder(1500.0), "STARTED", STALE, run_job=BACKUP_JOB_NAME, last_event_age_seconds=1440.0
    )
    assert silent.fail and "it has logged nothing for 24 minutes" in silent.reason


def test_verdict_leaves_everything_else_alone() -> None:
    cases = {
        "no holder": dead_lease_holder_verdict(None, None, STALE),
        "fresh heartbeat": dead_lease_holder_verdict(_holder(30.0), "STARTED", STALE),
        "exactly at the bound": dead_lease_holder_verdict(_holder(STALE), "STARTED", STALE),
        "unknown run": dead_lease_holder_verdict(_holder(99999.0), None, STALE),
        "other job": dead_lease_holder_verdict(
            _holder(99999.0), "STARTED", STALE, run_job="storage_health_job"
        ),
        "still logging": dead_lease_holder_verdict(
            _holder(99999.0), "STARTED", STALE, last_event_age_seconds=20.0
        ),
    }
    for status in ("SUCCESS", "FAILURE", "CANCELED", "CANCELING", "QUEUED", "NOT_STARTED"):
        cases[status] = dead_lease_holder_verdict(_holder(99999.0), status, STALE)
    failing = [name for name, verdict in cases.items() if verdict.fail]
    assert failing == []
    assert cases["no holder"].reason == "no run holds the data lease"
    assert "not a run of this Dagster instance" in cases["unknown run"].reason
    assert "which is SUCCESS" in cases["SUCCESS"].reason
    assert "logged an event 20 s ago" in cases["still logging"].reason
    assert "job storage_health_job" in cases["other job"].reason


# --- the sensor against PostgreSQL and a Dagster instance -----------------------------------------


@dg.op
def hold_data(context: dg.OpExecutionContext, app_db: PostgresResource) -> None:
    with run_data_lease(context, app_db):
        ready = os.environ.get(READY_ENV)
        if ready:  # the crash test: say the lease is taken, then wait to be SIGKILLed
            Path(ready).write_text(context.run_id)
            time.sleep(600)


@dg.job(
    name=BACKUP_JOB_NAME,
    tags=EXCLUSIVE_RUN_TAGS,
    resource_defs={"app_db": PostgresResource(database_url=dg.EnvVar(URL_ENV))},
)
def lease_holding_job() -> None:
    hold_data()


@pytest.fixture()
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture()
def app_db(fresh_pg_database: PgDatabase, monkeypatch: pytest.MonkeyPatch) -> PostgresResource:
    monkeypatch.setenv(URL_ENV, fresh_pg_database.url)
    return PostgresResource(database_url=fresh_pg_database.url)


def _started_run_holding_the_lease(
    instance: dg.DagsterInstance, app_db: PostgresResource, status: dg.DagsterRunStatus
) -> dg.DagsterRun:
    run = instance.create_run_for_job(lease_holding_job, status=status, tags=EXCLUSIVE_RUN_TAGS)
    acquisition = app_db.acquire_data_lease(
        run.run_id, job=run.job_name, holder="step hold_data on crashed-host pid 777"
    )
    assert acquisition.outcome == "acquired"
    return run


def _age_heartbeat(db: PgDatabase, minutes: int) -> None:
    with db.connect(autocommit=True) as conn:
        conn.execute(
            f"UPDATE public.{DATA_LEASE_TABLE} SET heartbeat_at = now() - make_interval(mins => %s)",
            (minutes,),
        )


def _tick(
    instance: dg.DagsterInstance, app_db: PostgresResource, *, clock_offset: float = 0.0
) -> SensorExecutionData:
    sensor = build_dead_lease_holder_sensor(clock=lambda: time.time() + clock_offset)
    return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources={"app_db": app_db}))


def _status(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus:
    run = instance.get_run_by_id(run_id)
    assert run is not None
    return run.status


def _run_failures(instance: dg.DagsterInstance, run_id: str) -> list[dg.EventLogEntry]:
    return instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)


def test_a_dead_holder_run_is_failed_and_its_lease_taken_over(
    instance: dg.DagsterInstance, app_db: PostgresResource, fresh_pg_database: PgDatabase
) -> None:
    run = _started_run_holding_the_lease(instance, app_db, dg.DagsterRunStatus.STARTED)
    _age_heartbeat(fresh_pg_database, 30)

    data = _tick(instance, app_db)

    assert _status(instance, run.run_id) == dg.DagsterRunStatus.FAILURE
    [failure] = _run_failures(instance, run.run_id)
    assert "its data-lease heartbeat stopped 30 minutes ago" in failure.message
    assert "the run's processes are gone (host crash?)" in failure.message
    assert f"marked run {run.run_id} of {BACKUP_JOB_NAME} failed" in (data.skip_message or "")
    assert not data.run_requests
    # The sensor left the row; the next run takes it over (its holder's run is finished now).
    holder = app_db.data_lease_holder()
    assert holder is not None and holder.run_id == run.run_id
    taken = data_lease.acquire(
        lambda: fresh_pg_database.connect(),
        run_id="the-queued-backup",
        job=BACKUP_JOB_NAME,
        holder="step plan on host-b pid 1",
        endpoint=app_db.endpoint,
        holder_finished=holder_finished(instance),
    )
    assert taken.outcome == "taken_over"
    assert taken.previous is not None and taken.previous.run_id == run.run_id
    # The next tick sees the new, live holder: nothing more happens.
    again = _tick(instance, app_db)
    assert "the-queued-backup" in (again.skip_message or "")
    assert len(_run_failures(instance, run.run_id)) == 1


def test_a_fresh_heartbeat_leaves_the_run_started(
    instance: dg.DagsterInstance, app_db: PostgresResource
) -> None:
    run = _started_run_holding_the_lease(instance, app_db, dg.DagsterRunStatus.STARTED)
    data = _tick(instance, app_db, clock_offset=HOUR_LATER)
    assert _status(instance, run.run_id) == dg.DagsterRunStatus.STARTED
    assert _run_failures(instance, run.run_id) == []
    assert "alive" in (data.skip_message or "")


@pytest.mark.parametrize(
    "status",
    [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.CANCELING],
)
def test_a_holder_run_that_is_not_executing_is_untouched(
    instance: dg.DagsterInstance,
    app_db: PostgresResource,
    fresh_pg_database: PgDatabase,
    status: dg.DagsterRunStatus,
) -> None:
    run = _started_run_holding_the_lease(instance, app_db, status)
    _age_heartbeat(fresh_pg_database, 30)
    data = _tick(instance, app_db, clock_offset=HOUR_LATER)
    assert _status(instance, run.run_id) == status
    assert _run_failures(instance, run.run_id) == []
    assert f"which is {status.value}" in (data.skip_message or "")


def test_a_run_that_still_logs_is_not_failed_despite_a_stale_heartbeat(
    instance: dg.DagsterInstance, app_db: PostgresResource, fresh_pg_database: PgDatabase
) -> None:
    # E.g. the application database was unreachable from the run: its heartbeat thread logs a
    # warning at every failed beat while the step carries on.
    run = _started_run_holding_the_lease(instance, app_db, dg.DagsterRunStatus.STARTED)
    _age_heartbeat(fresh_pg_database, 30)
    instance.report_engine_event("data lease heartbeat failed: OperationalError", run)
    data = _tick(instance, app_db)
    assert _status(instance, run.run_id) == dg.DagsterRunStatus.STARTED
    assert "logged an event" in (data.skip_message or "")


def test_no_holder_is_a_skip(instance: dg.DagsterInstance, app_db: PostgresResource) -> None:
    data = _tick(instance, app_db)  # the lease table does not even exist yet
    assert data.skip_message == "no run holds the data lease"
    app_db.acquire_data_lease("r", job=BACKUP_JOB_NAME, holder="h")
    assert app_db.release_data_lease("r")
    assert _tick(instance, app_db).skip_message == "no run holds the data lease"


def test_a_lease_of_a_run_unknown_to_the_instance_is_untouched(
    instance: dg.DagsterInstance, app_db: PostgresResource, fresh_pg_database: PgDatabase
) -> None:
    other = instance.create_run_for_job(lease_holding_job, status=dg.DagsterRunStatus.STARTED)
    app_db.acquire_data_lease("cli-migration-1234", job="backup-pipeline (outside Dagster)", holder="h")
    _age_heartbeat(fresh_pg_database, 30)
    data = _tick(instance, app_db, clock_offset=HOUR_LATER)
    assert "not a run of this Dagster instance" in (data.skip_message or "")
    holder = app_db.data_lease_holder()
    assert holder is not None and holder.run_id == "cli-migration-1234"
    assert _status(instance, other.run_id) == dg.DagsterRunStatus.STARTED  # an unrelated STARTED run


def test_an_unreachable_database_is_a_skip_naming_the_endpoint(
    instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(URL_ENV, "postgresql://backup@127.0.0.1:1/appdb")
    run = instance.create_run_for_job(lease_holding_job, status=dg.DagsterRunStatus.STARTED)
    unreachable = PostgresResource(
        database_url="postgresql://backup@127.0.0.1:1/appdb", password="pw-never-shown-9f3k"
    )
    data = _tick(instance, unreachable)
    message = data.skip_message or ""
    assert "cannot read the data lease" in message and "127.0.0.1:1" in message
    assert "backup@127.0.0.1:1/appdb" in message
    assert "pw-never-shown-9f3k" not in message
    assert _status(instance, run.run_id) == dg.DagsterRunStatus.STARTED


def test_the_sensor_is_registered_for_the_code_location() -> None:
    sensors = {s.name: s for s in build_sensors(load_settings(env={}))}
    sensor = sensors[DEAD_LEASE_HOLDER_SENSOR]
    assert sensor.minimum_interval_seconds == 60
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert "host crash" in (sensor.description or "")
    assert "app_db" in sensor.required_resource_keys


# --- a real crash: the run's process is SIGKILLed while it holds the lease ------------------------


def _run_until_killed(instance_ref: InstanceRef, url: str, ready: str) -> None:
    os.setsid()  # the run and its helpers (compute-log tails) form a process group killed as one
    os.environ[URL_ENV], os.environ[READY_ENV] = url, ready
    with dg.DagsterInstance.from_ref(instance_ref) as instance:
        lease_holding_job.execute_in_process(instance=instance)


def test_a_killed_run_is_failed_and_the_failure_alert_sees_it(
    instance: dg.DagsterInstance,
    app_db: PostgresResource,
    fresh_pg_database: PgDatabase,
    tmp_path: Path,
    webhook_receiver: WebhookReceiver,
) -> None:
    ready = tmp_path / "ready"
    ref = instance.get_ref()
    process = multiprocessing.get_context("spawn").Process(
        target=_run_until_killed, args=(ref, fresh_pg_database.url, str(ready))
    )
    process.start()
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and process.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), "the run never took the lease"
        run_id = ready.read_text()
    finally:
        # SIGKILL to the whole tree, as in a host crash: no hook, no release, no RUN_FAILURE.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:  # not yet its own group
            process.kill()
        process.join()

    assert _status(instance, run_id) == dg.DagsterRunStatus.STARTED
    holder = app_db.data_lease_holder()
    assert holder is not None and holder.run_id == run_id
    # Right after the crash the heartbeat is fresh: the sensor waits.
    assert "alive" in (_tick(instance, app_db).skip_message or "")
    assert _status(instance, run_id) == dg.DagsterRunStatus.STARTED

    # Eleven minutes later: heartbeat and event log both silent for longer than the bound.
    _age_heartbeat(fresh_pg_database, 11)
    _tick(instance, app_db, clock_offset=11 * 60)
    assert _status(instance, run_id) == dg.DagsterRunStatus.FAILURE

    # alert_on_run_failure reports it with the sensor's message.
    (tmp_path / "hook.key").write_bytes(b"dead-run-webhook-key-0123456789")
    settings = load_settings(
        env={
            "BACKUP_PIPELINE_INSTALLATION_ID": "acme",
            "BACKUP_PIPELINE_ALERT_WEBHOOK_URL": webhook_receiver.url,
            "BACKUP_PIPELINE_ALERT_WEBHOOK_SECRET_FILE": str(tmp_path / "hook.key"),
        }
    )
    evaluate_on_run_failure(build_run_failure_alert_sensor(settings), instance, run_id)
    [hook] = webhook_receiver.wait_for(1)
    payload = json.loads(hook.body)
    assert payload["run_id"] == run_id and payload["kind"] == "run_failure"
    assert "its data-lease heartbeat stopped 11 minutes ago" in payload["message"]
    assert "host crash?" in payload["message"]
