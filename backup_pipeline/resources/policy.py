"""Operator policy the retention, delete and backup ops read: no secrets, all from settings."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from backup_pipeline.settings import BackupSettings

POLICY = "backup_policy"  # resource key the ops ask for


class BackupPolicyResource(ConfigurableResource):
    installation_id: str = "backup-pipeline"
    state_dir: str = Field(default=".backup_pipeline_state", description="Where the audit trail lives.")
    retention_keep_last: int = 7
    # Grandfather-father-son counts (0 = rule off) and the zone their days/weeks/months/years are in.
    retention_keep_daily: int = 0
    retention_keep_weekly: int = 0
    retention_keep_monthly: int = 0
    retention_keep_yearly: int = 0
    schedule_timezone: str = "UTC"
    incomplete_grace_hours: int = 24
    seed_abandon_days: int = 14
    min_manual_backup_interval_minutes: int = 10
    copy_policy: str = Field(default="", description="3-2-1 policy of the backup_3_2_1 check (copy_policy).")
    copy_policy_severity: str = Field(default="warn", description="warn or error.")

    @classmethod
    def from_settings(cls, settings: BackupSettings) -> BackupPolicyResource:
        return cls(
            installation_id=settings.installation_id,
            state_dir=str(settings.state_dir),
            retention_keep_last=settings.retention_keep_last,
            retention_keep_daily=settings.retention_keep_daily,
            retention_keep_weekly=settings.retention_keep_weekly,
            retention_keep_monthly=settings.retention_keep_monthly,
            retention_keep_yearly=settings.retention_keep_yearly,
            schedule_timezone=settings.schedule_timezone,
            incomplete_grace_hours=settings.incomplete_grace_hours,
            seed_abandon_days=settings.seed_abandon_days,
            min_manual_backup_interval_minutes=settings.min_manual_backup_interval_minutes,
            copy_policy=settings.copy_policy,
            copy_policy_severity=settings.copy_policy_severity,
        )
