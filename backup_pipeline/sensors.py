"""Sensors: retention after each backup (+ a daily safety net), failure alerts, freshness alerts.

All are built from validated settings at load and start RUNNING (the UI toggle wins once used).
Alert delivery failures raise, so the sensor tick shows as failed in the UI rather than
silently dropping an alert.
"""

import json
import time
from datetime import UTC, datetime

import dagster as dg

from backup_pipeline.alerts import Alert, configured_channels, send_alert
from backup_pipeline.ops.retention import BACKUP_SET_ASSET, DELETE_BACKUP_JOB_NAME, retention_job
from backup_pipeline.schedules import BACKUP_JOB_NAME, RESTORE_JOB_NAME
from backup_pipeline.settings import BackupSettings

RETENTION_AFTER_BACKUP_SENSOR = "retention_after_backup"
RETENTION_DAILY_SENSOR = "retention_daily_safety_net"
RUN_FAILURE_ALERT_SENSOR = "alert_on_run_failure"
FRESHNESS_SENSOR = "backup_freshness"
MIGRATION_JOB_NAME = "migrate_drive_to_minio"

ALERTED_JOBS = frozenset(
    {BACKUP_JOB_NAME, RESTORE_JOB_NAME, retention_job.name, DELETE_BACKUP_JOB_NAME, MIGRATION_JOB_NAME}
)


def build_retention_after_backup_sensor() -> dg.SensorDefinition:
    @dg.run_status_sensor(
        name=RETENTION_AFTER_BACKUP_SENSOR,
        run_status=dg.DagsterRunStatus.SUCCESS,
        request_job=retention_job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Requests retention_job after each successful backup_job run (run key = the backup run).",
    )
    def retention_after_backup(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
        run = context.dagster_run
        if run.job_name != BACKUP_JOB_NAME:
            return dg.SkipReason(f"{run.job_name} is not {BACKUP_JOB_NAME}")
        # The run key makes a re-evaluated event request nothing new.
        return dg.RunRequest(
            run_key=f"retention-after-{run.run_id}", tags={"backup_pipeline/after_run": run.run_id}
        )

    return retention_after_backup


def build_retention_daily_sensor() -> dg.SensorDefinition:
    @dg.sensor(
        name=RETENTION_DAILY_SENSOR,
        job=retention_job,
        minimum_interval_seconds=3600,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Safety net: one retention_job run per UTC day, in case the after-backup trigger was missed "
        "or a deletion failed and must be retried.",
    )
    def retention_daily(context: dg.SensorEvaluationContext) -> dg.RunRequest:
        day = datetime.now(UTC).date().isoformat()
        return dg.RunRequest(run_key=f"retention-daily-{day}")

    return retention_daily


def _failure_text(context: dg.RunFailureSensorContext) -> tuple[str, dict[str, str]]:
    details: dict[str, str] = {}
    messages = []
    for event in context.get_step_failure_events():
        data = event.step_failure_data
        step = event.step_key or "?"
        text = data.error.message.strip() if data.error else "failed"
        if data.user_failure_data and data.user_failure_data.description:
            text = data.user_failure_data.description
        details[f"step {step}"] = text
        messages.append(f"{step}: {text}")
    if not messages:
        messages.append(context.failure_event.message or "run failed")
    return "; ".join(messages), details


def build_run_failure_alert_sensor(settings: BackupSettings) -> dg.SensorDefinition:
    @dg.run_failure_sensor(
        name=RUN_FAILURE_ALERT_SENSOR,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Alerts (e-mail / signed webhook) when a backup, restore, retention, delete or migration run "
        f"fails. Channels: {', '.join(configured_channels(settings)) or 'none configured'}.",
    )
    def alert_on_run_failure(context: dg.RunFailureSensorContext) -> None:
        run = context.dagster_run
        if run.job_name not in ALERTED_JOBS:
            return
        message, details = _failure_text(context)
        if run.tags.get("backup_pipeline/backup_id"):
            details["backup_id"] = run.tags["backup_pipeline/backup_id"]
        alert = Alert(
            kind="run_failure",
            title=f"{run.job_name} failed",
            message=message,
            installation_id=settings.installation_id,
            job_name=run.job_name,
            run_id=run.run_id,
            details=details,
        )
        delivered = send_alert(settings, alert)
        context.log.info(f"alert for {run.run_id} sent via {', '.join(delivered) or 'no channel'}")

    return alert_on_run_failure


def latest_complete_backup_time(instance: dg.DagsterInstance) -> float | None:
    event = instance.get_latest_materialization_event(BACKUP_SET_ASSET)
    return event.timestamp if event else None


def build_freshness_sensor(settings: BackupSettings) -> dg.SensorDefinition:
    max_age_hours = 2 * settings.schedule_interval_hours

    @dg.sensor(
        name=FRESHNESS_SENSOR,
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Alerts when no complete backup exists for {max_age_hours} h "
        "(2 × the schedule interval); one alert per stale period.",
    )
    def backup_freshness(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        now = time.time()
        state = json.loads(context.cursor) if context.cursor else {}
        watching_since = float(state.get("watching_since", now))
        latest = latest_complete_backup_time(context.instance)
        reference = latest if latest is not None else watching_since
        age_hours = (now - reference) / 3600
        marker = str(latest) if latest is not None else "none"
        state["watching_since"] = watching_since
        if age_hours <= max_age_hours:
            context.update_cursor(json.dumps(state))
            return dg.SkipReason(
                f"fresh: last complete backup {age_hours:.1f} h ago (limit {max_age_hours} h)"
            )
        if state.get("alerted_for") == marker:
            context.update_cursor(json.dumps(state))
            return dg.SkipReason(f"stale for {age_hours:.1f} h; already alerted")
        last = (
            datetime.fromtimestamp(latest, UTC).isoformat(timespec="seconds")
            if latest is not None
            else "never"
        )
        alert = Alert(
            kind="stale_backup",
            title=f"no complete backup for {age_hours:.0f} h",
            message=f"The last complete backup was {last}; backups are expected every "
            f"{settings.schedule_interval_hours} h and the limit is {max_age_hours} h. Check the schedule "
            "toggle, the daemon and recent backup_job runs.",
            installation_id=settings.installation_id,
            job_name=BACKUP_JOB_NAME,
            details={"last_complete_backup": last, "limit_hours": str(max_age_hours)},
        )
        delivered = send_alert(settings, alert)
        state["alerted_for"] = marker
        context.update_cursor(json.dumps(state))
        return dg.SkipReason(
            f"stale for {age_hours:.1f} h; alert sent via {', '.join(delivered) or 'no channel'}"
        )

    return backup_freshness


def build_sensors(settings: BackupSettings) -> list[dg.SensorDefinition]:
    return [
        build_retention_after_backup_sensor(),
        build_retention_daily_sensor(),
        build_run_failure_alert_sensor(settings),
        build_freshness_sensor(settings),
    ]
