"""Sensors with Dagster's sensor test contexts, real failing runs, a real SMTP server and HTTP receiver."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from backup_pipeline.alerts import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_webhook_signature
from backup_pipeline.ops.retention import BACKUP_SET_ASSET
from backup_pipeline.sensors import (
    build_freshness_sensor,
    build_retention_after_backup_sensor,
    build_retention_daily_sensor,
    build_run_failure_alert_sensor,
)
from backup_pipeline.services.backup_parts import backup_id_time, new_backup_id
from backup_pipeline.settings import BackupSettings, SettingsError, load_settings
from backup_pipeline_tests.backup_helpers import evaluate_on_run_failure
from backup_pipeline_tests.fixtures.alert_receivers import SmtpSink, WebhookReceiver

KEY = b"sensor-webhook-key-0123456789"


@pytest.fixture()
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture()
def settings(tmp_path: Path, smtp_server: SmtpSink, webhook_receiver: WebhookReceiver) -> BackupSettings:
    (tmp_path / "hook.key").write_bytes(KEY)
    return load_settings(
        env={
            "BACKUP_PIPELINE_INSTALLATION_ID": "acme",
            "BACKUP_PIPELINE_ALERT_SMTP_HOST": "127.0.0.1",
            "BACKUP_PIPELINE_ALERT_SMTP_PORT": str(smtp_server.port),
            "BACKUP_PIPELINE_ALERT_EMAIL_TO": "ops@example.com",
            "BACKUP_PIPELINE_ALERT_WEBHOOK_URL": webhook_receiver.url,
            "BACKUP_PIPELINE_ALERT_WEBHOOK_SECRET_FILE": str(tmp_path / "hook.key"),
        }
    )


def _job(name: str, fail: bool) -> dg.JobDefinition:
    @dg.op(name=f"{name}_step")
    def step() -> None:
        if fail:
            raise dg.Failure(description="pg_dump exited with 1: connection refused")

    @dg.job(name=name)
    def job() -> None:
        step()

    return job


def _run(instance: dg.DagsterInstance, name: str, fail: bool) -> dg.ExecuteInProcessResult:
    return _job(name, fail).execute_in_process(instance=instance, raise_on_error=False)


def _run_event(
    instance: dg.DagsterInstance, run_id: str, event_type: dg.DagsterEventType
) -> dg.EventLogEntry:
    [entry] = [e for e in instance.all_logs(run_id) if e.dagster_event_type == event_type]
    return entry


def test_retention_requested_after_successful_backup_only(instance: dg.DagsterInstance) -> None:
    sensor = build_retention_after_backup_sensor()
    backup = _run(instance, "backup_job", fail=False)
    run = instance.get_run_by_id(backup.run_id)
    assert run is not None
    event = _run_event(instance, backup.run_id, dg.DagsterEventType.RUN_SUCCESS).dagster_event
    assert event is not None
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name, dagster_instance=instance, dagster_run=run, dagster_event=event
    )
    result = sensor(context)
    assert isinstance(result, dg.RunRequest)
    assert result.run_key == f"retention-after-{backup.run_id}"

    other = _run(instance, "storage_health_job", fail=False)
    other_run = instance.get_run_by_id(other.run_id)
    assert other_run is not None
    other_event = _run_event(instance, other.run_id, dg.DagsterEventType.RUN_SUCCESS).dagster_event
    assert other_event is not None
    skipped = sensor(
        dg.build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_instance=instance,
            dagster_run=other_run,
            dagster_event=other_event,
        )
    )
    assert isinstance(skipped, dg.SkipReason)


def test_daily_safety_net_requests_one_run_per_day(instance: dg.DagsterInstance) -> None:
    sensor = build_retention_daily_sensor()
    data = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
    assert len(data.run_requests or []) == 1
    assert (data.run_requests or [])[0].run_key.startswith("retention-daily-")  # type: ignore[union-attr]
    assert sensor.job_name == "retention_job"


def test_backup_failure_reaches_smtp_and_signed_webhook(
    instance: dg.DagsterInstance,
    settings: BackupSettings,
    smtp_server: SmtpSink,
    webhook_receiver: WebhookReceiver,
) -> None:
    sensor = build_run_failure_alert_sensor(settings)
    failed = _run(instance, "backup_job", fail=True)
    run = instance.get_run_by_id(failed.run_id)
    assert run is not None
    event = _run_event(instance, failed.run_id, dg.DagsterEventType.RUN_FAILURE).dagster_event
    assert event is not None
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name, dagster_instance=instance, dagster_run=run, dagster_event=event
    ).for_run_failure()
    sensor(context)

    [mail] = smtp_server.wait_for(1)
    assert mail["Subject"] == "[acme] backup_job failed"
    assert "pg_dump exited with 1" in mail.get_content()
    [hook] = webhook_receiver.wait_for(1)
    payload = json.loads(hook.body)
    assert payload["run_id"] == failed.run_id and payload["kind"] == "run_failure"
    assert "pg_dump exited with 1" in payload["message"]
    assert verify_webhook_signature(
        KEY, hook.headers[TIMESTAMP_HEADER], hook.body, hook.headers[SIGNATURE_HEADER]
    )


def test_a_refused_backup_sends_no_failure_alert(
    instance: dg.DagsterInstance,
    settings: BackupSettings,
    smtp_server: SmtpSink,
    webhook_receiver: WebhookReceiver,
) -> None:
    @dg.op(name="plan_backup")
    def refused_step() -> None:
        raise dg.Failure(description="manual backup refused: too soon")

    @dg.job(name="backup_job", tags={"backup_pipeline/outcome": "refused"})
    def refused_job() -> None:
        refused_step()

    failed = refused_job.execute_in_process(instance=instance, raise_on_error=False)
    evaluate_on_run_failure(build_run_failure_alert_sensor(settings), instance, failed.run_id)
    assert smtp_server.messages == [] and webhook_receiver.requests == []


def test_failure_of_an_unrelated_job_sends_nothing(
    instance: dg.DagsterInstance,
    settings: BackupSettings,
    smtp_server: SmtpSink,
    webhook_receiver: WebhookReceiver,
) -> None:
    sensor = build_run_failure_alert_sensor(settings)
    failed = _run(instance, "storage_health_job", fail=True)
    run = instance.get_run_by_id(failed.run_id)
    event = _run_event(instance, failed.run_id, dg.DagsterEventType.RUN_FAILURE).dagster_event
    assert run is not None and event is not None
    sensor(
        dg.build_run_status_sensor_context(
            sensor_name=sensor.name, dagster_instance=instance, dagster_run=run, dagster_event=event
        ).for_run_failure()
    )
    assert smtp_server.messages == [] and webhook_receiver.requests == []


def test_freshness_alerts_once_per_stale_period(
    instance: dg.DagsterInstance,
    settings: BackupSettings,
    smtp_server: SmtpSink,
    webhook_receiver: WebhookReceiver,
) -> None:
    sensor = build_freshness_sensor(settings)
    # Watching for 3 days with no complete backup: daily schedule → limit 48 h → stale.
    cursor = json.dumps({"watching_since": time.time() - 3 * 86400})
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    data = sensor.evaluate_tick(context)
    assert "alert sent via email, webhook" in (data.skip_message or "")
    [mail] = smtp_server.wait_for(1)
    assert "no complete backup" in mail["Subject"]
    assert json.loads(webhook_receiver.wait_for(1)[0].body)["kind"] == "stale_backup"

    # Next tick: still stale, but the alert is not repeated.
    again = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=data.cursor))
    assert "already alerted" in (again.skip_message or "")
    assert len(smtp_server.messages) == 1 and len(webhook_receiver.requests) == 1

    # A complete backup lands: fresh again.
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=BACKUP_SET_ASSET, metadata={"backup_id": new_backup_id()})
    )
    fresh = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=again.cursor))
    assert (fresh.skip_message or "").startswith("fresh")


def test_a_restores_safety_set_does_not_make_a_stale_installation_fresh(
    instance: dg.DagsterInstance,
    settings: BackupSettings,
    smtp_server: SmtpSink,
    webhook_receiver: WebhookReceiver,
) -> None:
    """main took the newest backup_set materialization of any kind: a restore's database-only
    safety set, made a minute ago, hid that the last regular backup was three days old."""
    sensor = build_freshness_sensor(settings)
    old = new_backup_id(datetime.now(UTC) - timedelta(days=3))
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=BACKUP_SET_ASSET, metadata={"backup_id": old, "set_kind": "regular"}
        )
    )
    safety = new_backup_id()
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=BACKUP_SET_ASSET,
            metadata={"backup_id": safety, "set_kind": "safety", "trigger": "pre-restore"},
        )
    )
    data = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
    assert "alert sent via email, webhook" in (data.skip_message or ""), data.skip_message
    [mail] = smtp_server.wait_for(1)
    assert "no complete backup for 72 h" in mail["Subject"]
    body = json.loads(webhook_receiver.wait_for(1)[0].body)
    assert body["details"]["last_complete_backup"] == backup_id_time(old).isoformat(timespec="seconds")


def test_freshness_fresh_on_first_tick_without_backups(
    instance: dg.DagsterInstance, settings: BackupSettings
) -> None:
    sensor = build_freshness_sensor(settings)
    data = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
    assert (data.skip_message or "").startswith("fresh")
    assert "watching_since" in json.loads(data.cursor or "{}")


def test_run_sensor_interval_setting_reaches_every_run_status_sensor(tmp_path: Path) -> None:
    """BACKUP_PIPELINE_RUN_SENSOR_INTERVAL_SECONDS sets how often the daemon evaluates the sensors
    reacting to finished runs; the others keep their own intervals; Dagster's 30 s by default."""
    from backup_pipeline.definitions import build_definitions

    run_sensors = {
        "retention_after_backup",
        "verify_after_backup",
        "alert_on_run_failure",
        "alert_on_failed_verification",
        "heartbeat_on_success",
        "heartbeat_on_failure",
        "copy_after_backup",
    }
    # Two destinations, so that the copy sensors load too.
    two_destinations = {
        "BACKUP_PIPELINE_STATE_DIR": str(tmp_path),
        "BACKUP_PIPELINE_DESTINATIONS": "a,b",
        **{f"BACKUP_PIPELINE_DESTINATION_{n}_KIND": "local" for n in "AB"},
        **{f"BACKUP_PIPELINE_DESTINATION_{n}_PATH": str(tmp_path / n) for n in "AB"},
    }

    def intervals(env: dict[str, str]) -> dict[str, int | None]:
        defs = build_definitions(load_settings(env={**two_destinations, **env}))
        return {s.name: s.minimum_interval_seconds for s in defs.sensors}

    default = intervals({})
    assert {name: default[name] for name in run_sensors} == dict.fromkeys(run_sensors, 30)
    fast = intervals({"BACKUP_PIPELINE_RUN_SENSOR_INTERVAL_SECONDS": "5"})
    assert {name: fast[name] for name in run_sensors} == dict.fromkeys(run_sensors, 5)
    others = set(default) - run_sensors
    assert others and {n: fast[n] for n in others} == {n: default[n] for n in others}
    with pytest.raises(
        SettingsError, match="RUN_SENSOR_INTERVAL_SECONDS: Input should be greater than or equal to 5"
    ):
        load_settings(env={"BACKUP_PIPELINE_RUN_SENSOR_INTERVAL_SECONDS": "1"})
