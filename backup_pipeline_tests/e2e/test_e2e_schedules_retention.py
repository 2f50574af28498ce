"""End to end through a real dagster-webserver + dagster-daemon: the schedule, retention and alerts.

One scenario, one Dagster home, one webserver + daemon for the module (the tests below assert
on different aspects of it):

1. ``backup_schedule`` is daily at HH:MM in Europe/Berlin. To see it fire without waiting a
   day, the servers start with ``schedule_time`` = the next whole minute (Berlin time) far
   enough ahead for the daemon to be up, and the daemon fires once: the real daemon evaluating
   the real cron (the scheduler daemon wakes at the start of each minute, so this is mostly idle
   waiting). What a changed ``schedule_time`` does after a reload, and the time-zone and DST
   rules, are asserted on the same definitions with Dagster's schedule evaluation in
   ``test_schedules.py``: a second real tick here would only add a restart and another minute.
2. Four manual backups follow over GraphQL; the second of them names a bucket that does not
   exist, so it fails in ``plan_backup`` (the "one failed in between").
3. ``retention_keep_last`` = 3: the run-status sensor requests ``retention_job`` after every
   successful backup (daemon), so five backups (four complete) end with the newest three
   complete sets, on the destination and in the ledger.
4. The failed backup triggers the run-failure sensor, whose alert reaches a real SMTP server
   (aiosmtpd) and a real HTTP webhook receiver.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from aiosmtpd.controller import Controller
from dagster._core.scheduler.instigation import InstigatorType, ScheduleInstigatorData
from dagster._core.storage.tags import SCHEDULED_EXECUTION_TIME_TAG as SCHEDULED_TIME_TAG

from backup_pipeline import ledger
from backup_pipeline.alerts import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_webhook_signature
from backup_pipeline.destinations.local_folder import LocalFolderDestination
from backup_pipeline.ops.verification import VERIFY_AFTER_BACKUP_SENSOR
from backup_pipeline.sample_app import SeedSpec, seed_sample_app
from backup_pipeline.sensors import RUN_FAILURE_ALERT_SENSOR
from backup_pipeline.services.backup_upload import has_manifest, list_sets
from backup_pipeline_tests.fixtures.alert_receivers import SmtpSink, WebhookReceiver
from backup_pipeline_tests.fixtures.dagster import DagsterStack
from backup_pipeline_tests.fixtures.ports import free_port
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server

from .e2e_support import (
    INSTALLATION,
    module_stack,
    product_env,
    product_files,
    queue_is_idle,
    runs_of,
    wait_for,
    wait_for_first_ticks,
)

pytestmark = pytest.mark.e2e

ZONE = ZoneInfo("Europe/Berlin")
# The daemon must have loaded the location before the tick's minute starts, or it never sees it.
STARTUP_MARGIN = timedelta(seconds=45)
SCHEDULE_TAG = "dagster/schedule_name"
SENSOR_TAG = "dagster/sensor_name"
AFTER_RUN_TAG = "backup_pipeline/after_run"
BACKUP_ID_TAG = "backup_pipeline/backup_id"
WEBHOOK_KEY = b"e2e-webhook-hmac-key-0123456789"


def next_minute_after(margin: timedelta) -> datetime:
    """The first whole minute at least ``margin`` from now, in Berlin time."""
    earliest = datetime.now(ZONE) + margin
    return earliest.replace(second=0, microsecond=0) + timedelta(minutes=1)


@dataclass
class Scenario:
    stack: DagsterStack
    instance: dg.DagsterInstance
    tick_time: datetime
    backups: list[dg.DagsterRun]  # all five, oldest first
    destination: LocalFolderDestination
    smtp: SmtpSink
    webhook: WebhookReceiver


def _schedule_seen_at(instance: dg.DagsterInstance) -> float | None:
    """When the scheduler daemon first saw ``backup_schedule`` (it fires the ticks after that)."""
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SCHEDULE):
        if state.instigator_name == "backup_schedule":
            return cast(ScheduleInstigatorData, state.instigator_data).start_timestamp
    return None


def _settled(instance: dg.DagsterInstance, backups: int, successes: int) -> bool:
    """``backups`` backup runs finished and the retention each success triggers finished too."""
    done = runs_of(instance, "backup_job", finished=True)
    retention = [
        r
        for r in runs_of(instance, "retention_job", finished=True)
        if r.tags.get(AFTER_RUN_TAG) in {b.run_id for b in done}
    ]
    return (
        len(done) >= backups
        and len(retention) >= sum(b.status is dg.DagsterRunStatus.SUCCESS for b in done)
        and sum(b.status is dg.DagsterRunStatus.SUCCESS for b in done) >= successes
        and queue_is_idle(instance)
    )


def _wait_for_tick(
    stack: DagsterStack, instance: dg.DagsterInstance, tick: datetime, backups: int, *, with_retention: bool
) -> None:
    """Wait for the ``backups``-th scheduled backup to finish (and, if asked, the retention it triggers)."""

    def done() -> bool:
        scheduled = [r for r in runs_of(instance, "backup_job", finished=True) if SCHEDULE_TAG in r.tags]
        return len(scheduled) >= backups and (not with_retention or _settled(instance, backups, backups))

    # Generous: on a loaded 2-core machine a backup and its retention can take minutes.
    timeout = (tick - datetime.now(ZONE)).total_seconds() + 360
    wait_for(done, timeout=timeout, what=f"the scheduled backup of {tick.isoformat()}", stack=stack)


@pytest.fixture(scope="module")
def scenario(
    pg_database: PgDatabase,
    s3_server: S3Server,
    tmp_path_factory: pytest.TempPathFactory,
    artifacts_dir: Path,
) -> Iterator[Scenario]:
    s3_server.ensure_running()
    s3_server.reset()
    with pg_database.connect() as conn:
        seed_sample_app(
            conn,
            s3_server.client(),
            SeedSpec(small_objects=20, large_object_bytes=(), users=10, comments=20, audit_events=20),
        )
    root = tmp_path_factory.mktemp("e2e_schedules")
    files = product_files(root)
    (root / "webhook.key").write_bytes(WEBHOOK_KEY)

    smtp = SmtpSink(port=free_port())
    controller = Controller(smtp, hostname="127.0.0.1", port=smtp.port)
    controller.start()
    webhook = WebhookReceiver()
    webhook.start()

    first_tick = next_minute_after(STARTUP_MARGIN)
    env = product_env(
        files,
        pg_database.url,
        s3_server.env(),
        schedule_time=first_tick.strftime("%H:%M"),
        schedule_timezone="Europe/Berlin",
        schedule_enabled="true",
        retention_keep_last="3",
        min_manual_backup_interval_minutes="0",
        # The scenario waits for the retention (run-status sensor) after every successful backup and
        # for the failure alert: 5 s between sensor evaluations instead of Dagster's 30 s.
        run_sensor_interval_seconds="5",
        alert_smtp_host="127.0.0.1",
        alert_smtp_port=str(smtp.port),
        # pydantic-settings reads list settings from the environment as JSON.
        alert_email_to='["ops@example.com"]',
        alert_webhook_url=webhook.url,
        alert_webhook_secret_file=str(root / "webhook.key"),
    )
    try:
        # verify_after_backup is off in this scenario (switched off over GraphQL before the daemon
        # starts): retention keeps the newest *verified* set until a newer one is verified, so the
        # first backup, verified right after it finished, would outlive the keep-3 rule this
        # scenario checks (covered in test_e2e_ui_local_destination.py).
        with module_stack(
            root, env, artifacts_dir, "e2e-schedules", sensors_off=(VERIFY_AFTER_BACKUP_SENSOR,)
        ) as stack:
            instance = stack.home.instance()
            # The daemon fires only the ticks after it first saw the schedule. On a loaded machine
            # the servers can come up after the chosen minute: then the operator's reload (restart
            # with a later time). The schedule's state now predates that tick, so it fires even if
            # the daemon is slow to come back (Dagster catches up a missed tick).
            wait_for(
                lambda: _schedule_seen_at(instance) is not None,
                timeout=300,
                what="the scheduler daemon to see backup_schedule",
                stack=stack,
            )
            if (_schedule_seen_at(instance) or 0) >= first_tick.timestamp():
                wait_for(lambda: queue_is_idle(instance), timeout=300, what="an idle queue", stack=stack)
                stack.stop()
                first_tick = next_minute_after(timedelta(seconds=30))
                stack.env["BACKUP_PIPELINE_SCHEDULE_TIME"] = first_tick.strftime("%H:%M")
                stack.start()
            _wait_for_tick(stack, instance, first_tick, backups=1, with_retention=True)

            # The failure alert comes from a run-status sensor: it sees only runs that end after its
            # first tick (long past on an idle machine, not guaranteed under load).
            wait_for_first_ticks(stack, RUN_FAILURE_ALERT_SENSOR)
            # Manual backups: the second names a missing bucket and fails in plan_backup.
            failing = {
                "ops": {
                    "plan_backup": {
                        "config": {"installation_id": INSTALLATION, "buckets_include": ["no-such-bucket"]}
                    }
                }
            }
            # Queued together: the run queue runs them one at a time in this order, and the
            # sensor's retention runs queue up behind them.
            stack.submit_job("backup_job")
            stack.submit_job("backup_job", run_config=failing)
            stack.submit_job("backup_job")
            stack.submit_job("backup_job")
            wait_for(lambda: _settled(instance, 5, 4), timeout=480, what="the manual backups", stack=stack)

            yield Scenario(
                stack=stack,
                instance=instance,
                tick_time=first_tick,
                backups=runs_of(instance, "backup_job"),
                destination=LocalFolderDestination(str(files.backups_dir)),
                smtp=smtp,
                webhook=webhook,
            )
    finally:
        controller.stop()
        webhook.stop()


def test_the_schedule_fired_once_at_the_berlin_minute_and_made_one_backup(scenario: Scenario) -> None:
    scheduled = [r for r in scenario.backups if SCHEDULE_TAG in r.tags]
    assert len(scheduled) == 1
    assert all(r.status is dg.DagsterRunStatus.SUCCESS for r in scheduled)
    assert [r.tags[SCHEDULE_TAG] for r in scheduled] == ["backup_schedule"]
    # The run belongs to the configured Berlin-time tick (UTC in Dagster's tag).
    fired = datetime.fromisoformat(scheduled[0].tags[SCHEDULED_TIME_TAG]).astimezone(UTC)
    assert fired == scenario.tick_time.astimezone(UTC)
    # The manual runs are the other four, none carries the schedule's tag.
    assert len(scenario.backups) == 5
    assert [SCHEDULE_TAG in r.tags for r in scenario.backups] == [True, False, False, False, False]


def test_retention_keeps_the_newest_three_complete_sets_on_the_destination_and_in_the_ledger(
    scenario: Scenario,
) -> None:
    backups = scenario.backups
    statuses = [r.status for r in backups]
    success, failure = dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE
    assert statuses == [success, success, failure, success, success]
    ids = [r.tags[BACKUP_ID_TAG] for r in backups]
    complete_ids = [i for i, r in zip(ids, backups, strict=True) if r.status is success]
    expected_kept = set(complete_ids[-3:])  # backups 2, 4, 5: the failed one is not counted
    assert expected_kept == {ids[1], ids[3], ids[4]}

    on_destination = list_sets(scenario.destination, INSTALLATION)
    assert set(on_destination) == expected_kept
    assert all(has_manifest(files) for files in on_destination.values())

    entries = {e.backup_id: e for e in ledger.from_dagster(scenario.instance)}
    assert {b for b, e in entries.items() if e.status is ledger.SetStatus.COMPLETE} == expected_kept
    assert entries[ids[0]].status is ledger.SetStatus.DELETED
    assert entries[ids[2]].status is ledger.SetStatus.INCOMPLETE
    deletion = entries[ids[0]].metadata["deletion"]
    assert deletion["files"] >= 2 and deletion["bytes_freed"] > 0

    # Retention ran once per successful backup, requested by the run-status sensor in the daemon.
    after_backup = [
        r
        for r in runs_of(scenario.instance, "retention_job")
        if r.tags.get(SENSOR_TAG) == "retention_after_backup"
    ]
    assert sorted(r.tags[AFTER_RUN_TAG] for r in after_backup) == sorted(
        r.run_id for r in backups if r.status is success
    )
    assert all(r.status is success for r in after_backup)
    deleting_run = deletion["deleted_by_run"]
    assert deleting_run in {r.run_id for r in after_backup}


def test_the_failed_backup_reached_smtp_and_the_signed_webhook(scenario: Scenario) -> None:
    failed = [r for r in scenario.backups if r.status is dg.DagsterRunStatus.FAILURE]
    assert len(failed) == 1
    run = failed[0]

    mails = scenario.smtp.wait_for(1, timeout=60)
    hooks = scenario.webhook.wait_for(1, timeout=60)
    # Exactly one failure, so exactly one alert per channel (nothing else failed or went stale).
    assert len(mails) == 1 and len(hooks) == 1
    mail = mails[0]
    assert mail["To"] == "ops@example.com"
    assert "backup_job failed" in str(mail["Subject"])
    text = mail.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert run.run_id in text and "no-such-bucket" in text

    hook = hooks[0]
    headers = {k.lower(): v for k, v in hook.headers.items()}
    assert verify_webhook_signature(
        WEBHOOK_KEY,
        headers[TIMESTAMP_HEADER.lower()],
        hook.body,
        headers[SIGNATURE_HEADER.lower()],
        now=float(headers[TIMESTAMP_HEADER.lower()]),
    )
    body = json.loads(hook.body)
    assert body["run_id"] == run.run_id and body["job_name"] == "backup_job"
    assert "no-such-bucket" in body["message"]
    assert body["details"]["backup_id"] == run.tags[BACKUP_ID_TAG]
    # A tampered body does not verify with the same signature.
    assert not verify_webhook_signature(
        WEBHOOK_KEY,
        headers[TIMESTAMP_HEADER.lower()],
        hook.body.replace(b"backup_job", b"restore_job"),
        headers[SIGNATURE_HEADER.lower()],
        now=time.time(),
    )
