"""Sensors of several destinations (loaded only when ``BACKUP_PIPELINE_DESTINATIONS`` names more than one):
``copy_after_backup`` starts ``copy_backup_job`` after each successful backup, ``copy_daily_safety_net``
once a day (a copy a failed run missed is then made even without a new backup), and
``backup_3_2_1_alert`` alerts through the configured channels when the 3-2-1 verdict fails.
"""

from __future__ import annotations

import json

import dagster as dg

from backup_pipeline.alerts import Alert, send_alert
from backup_pipeline.copy_status import CopyPolicyView, alert_due, copy_policy_verdict
from backup_pipeline.ops.copy import COPY_JOB_NAME, copy_backup_job
from backup_pipeline.sensors import after_backup_sensor, daily_safety_net_sensor
from backup_pipeline.settings import DEFAULT_RUN_SENSOR_INTERVAL_SECONDS, BackupSettings

COPY_AFTER_BACKUP_SENSOR = "copy_after_backup"
COPY_DAILY_SENSOR = "copy_daily_safety_net"
COPY_POLICY_ALERT_SENSOR = "backup_3_2_1_alert"


def build_copy_after_backup_sensor(
    interval_seconds: int = DEFAULT_RUN_SENSOR_INTERVAL_SECONDS,
) -> dg.SensorDefinition:
    return after_backup_sensor(COPY_AFTER_BACKUP_SENSOR, copy_backup_job, "copy", interval_seconds)


def build_copy_daily_sensor() -> dg.SensorDefinition:
    return daily_safety_net_sensor(
        COPY_DAILY_SENSOR,
        copy_backup_job,
        "copy",
        f"Safety net: one {COPY_JOB_NAME} run per UTC day, so a copy a failed run missed is made "
        "without waiting for the next backup.",
    )


def build_copy_policy_alert_sensor(settings: BackupSettings) -> dg.SensorDefinition:
    view = CopyPolicyView.from_settings(settings)

    @dg.sensor(
        name=COPY_POLICY_ALERT_SENSOR,
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Alerts when the backup_3_2_1 verdict fails once every destination was tried (one alert per "
        "failing state: which copies are missing, which counts fall short).",
    )
    def backup_3_2_1_alert(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        verdict = copy_policy_verdict(context.instance, view)
        state = json.loads(context.cursor) if context.cursor else {}
        if not alert_due(verdict):
            context.update_cursor(json.dumps({}))
            return dg.SkipReason(verdict.description)
        if state.get("alerted_for") == verdict.state:
            return dg.SkipReason(f"already alerted: {verdict.description}")
        alert = Alert(
            kind="copy_policy",
            title="3-2-1 not met: " + verdict.summary[:120],
            message=verdict.description,
            installation_id=settings.installation_id,
            job_name=COPY_JOB_NAME,
            details={k: str(getattr(v, "value", v)) for k, v in verdict.metadata.items()},
        )
        delivered = send_alert(settings, alert)
        context.update_cursor(json.dumps({"alerted_for": verdict.state}))
        return dg.SkipReason(f"alert sent via {', '.join(delivered) or 'no channel'}: {verdict.description}")

    return backup_3_2_1_alert


def build_copy_sensors(settings: BackupSettings) -> list[dg.SensorDefinition]:
    return [
        build_copy_after_backup_sensor(settings.run_sensor_interval_seconds),
        build_copy_daily_sensor(),
        build_copy_policy_alert_sensor(settings),
    ]
