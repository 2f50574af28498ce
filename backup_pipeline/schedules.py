"""The backup schedule, built from validated settings when the code location loads.

Changing the time, day, zone or retention needs no code edit: change the settings
(environment or ``BACKUP_PIPELINE_SETTINGS_FILE``) and reload the code location
(UI: Deployment → Reload, or restart ``dagster dev``). Enabling/disabling is the
schedule's toggle in the UI; ``schedule_enabled`` only sets the initial state.
"""

from __future__ import annotations

import zoneinfo

import dagster as dg
from dagster._utils.schedules import is_valid_cron_string

from backup_pipeline.settings import (
    ENV_PREFIX,
    BackupSettings,
    ScheduleFrequency,
    SettingsError,
)

BACKUP_JOB_NAME = "backup_job"
RESTORE_JOB_NAME = "restore_job"
BACKUP_SCHEDULE_NAME = "backup_schedule"
TRIGGER_TAG = "backup_pipeline/trigger"

# Runs in these states hold (or are waiting for) the one data-touching slot.
IN_PROGRESS_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def describe_schedule(settings: BackupSettings) -> str:
    """Human description of the effective schedule, shown in the UI next to the toggle."""
    if settings.schedule_frequency is ScheduleFrequency.WEEKLY:
        when = f"Weekly on {settings.schedule_day.value.capitalize()} at {settings.schedule_time}"
    else:
        when = f"Daily at {settings.schedule_time}"
    return (
        f"{when} ({settings.schedule_timezone}; cron `{settings.cron_schedule}`). "
        f"Retention keeps {describe_retention(settings)}; "
        f"incomplete sets older than {settings.incomplete_grace_hours} h are removed. "
        "A tick while a backup or restore is in progress is skipped, not queued. "
        "Change via settings + code-location reload."
    )


def describe_retention(settings: BackupSettings) -> str:
    """E.g. "the newest 7 complete backup sets, plus the newest set of each of the last 4 weeks"."""
    parts = (
        [f"the newest {settings.retention_keep_last} complete backup sets"]
        if settings.retention_keep_last
        else []
    )
    periods = settings.retention_periods
    units = {"daily": "days", "weekly": "ISO weeks", "monthly": "months", "yearly": "years"}
    parts += [f"the newest set of each of the last {n} {units[rule]}" for rule, n in periods.counts() if n]
    return ", plus ".join(parts)


def _check_schedule_settings(settings: BackupSettings) -> None:
    """Re-check what Dagster would otherwise reject with an opaque load error.

    load_settings() already validates these; settings built another way (e.g.
    ``model_construct`` in tests or scripts) get the same setting-naming message.
    """
    problems = []
    try:
        zoneinfo.ZoneInfo(settings.schedule_timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        problems.append(
            f"{ENV_PREFIX}SCHEDULE_TIMEZONE: must be an IANA time zone such as UTC or Europe/Berlin, "
            f"got {settings.schedule_timezone!r}"
        )
    try:
        cron = settings.cron_schedule
    except ValueError:
        cron = ""
    if not cron or not is_valid_cron_string(cron):
        problems.append(
            f"{ENV_PREFIX}SCHEDULE_TIME: must be HH:MM in 24-hour time (00:00-23:59), "
            f"got {settings.schedule_time!r}"
        )
    if problems:
        raise SettingsError(problems)


def in_progress_runs(
    instance: dg.DagsterInstance, job_names: tuple[str, ...] = (BACKUP_JOB_NAME, RESTORE_JOB_NAME)
) -> list[dg.DagsterRun]:
    runs: list[dg.DagsterRun] = []
    for job_name in job_names:
        runs.extend(
            instance.get_runs(filters=dg.RunsFilter(job_name=job_name, statuses=IN_PROGRESS_STATUSES))
        )
    return runs


def build_backup_schedule(settings: BackupSettings, job_name: str = BACKUP_JOB_NAME) -> dg.ScheduleDefinition:
    _check_schedule_settings(settings)

    @dg.schedule(
        name=BACKUP_SCHEDULE_NAME,
        job_name=job_name,
        cron_schedule=settings.cron_schedule,
        execution_timezone=settings.schedule_timezone,
        description=describe_schedule(settings),
        default_status=(
            dg.DefaultScheduleStatus.RUNNING
            if settings.schedule_enabled
            else dg.DefaultScheduleStatus.STOPPED
        ),
    )
    def backup_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        # Dagster would queue this tick behind the running backup and run two back to back.
        busy = in_progress_runs(context.instance)
        if busy:
            names = ", ".join(f"{r.job_name} {r.run_id[:8]} ({r.status.value})" for r in busy)
            return dg.SkipReason(f"skipped: a data-touching run is still in progress: {names}")
        tick = context.scheduled_execution_time
        return dg.RunRequest(
            # One run per tick even if the daemon evaluates the tick twice.
            run_key=f"scheduled-{tick.isoformat()}" if tick else None,
            tags={TRIGGER_TAG: "schedule"},
        )

    return backup_schedule


VERIFY_JOB_NAME = "verify_backup_job"
VERIFY_SCHEDULE_NAME = "verify_backup_schedule"
VERIFY_DELAY_HOURS = 3  # after the backup's time of day, so the night's set is usually finished


def build_verify_schedule(settings: BackupSettings, job_name: str = VERIFY_JOB_NAME) -> dg.ScheduleDefinition:
    """Daily verification of the newest unverified complete set, ``VERIFY_DELAY_HOURS`` after the backup time."""
    _check_schedule_settings(settings)
    hour, minute = (int(x) for x in settings.schedule_time.split(":"))
    cron = f"{minute} {(hour + VERIFY_DELAY_HOURS) % 24} * * *"

    @dg.schedule(
        name=VERIFY_SCHEDULE_NAME,
        job_name=job_name,
        cron_schedule=cron,
        execution_timezone=settings.schedule_timezone,
        description=f"Daily at {cron} ({settings.schedule_timezone}): verify the newest complete backup set "
        "not verified yet (download, authenticate, scratch restore, row counts, sampled object hashes).",
        default_status=(
            dg.DefaultScheduleStatus.RUNNING
            if settings.schedule_enabled
            else dg.DefaultScheduleStatus.STOPPED
        ),
    )
    def verify_backup_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        busy = in_progress_runs(context.instance, (job_name,))
        if busy:
            return dg.SkipReason(f"skipped: verification run {busy[0].run_id[:8]} is still in progress")
        tick = context.scheduled_execution_time
        return dg.RunRequest(
            run_key=f"verify-{tick.isoformat()}" if tick else None, tags={TRIGGER_TAG: "schedule"}
        )

    return verify_backup_schedule


# --- PITR profile (loaded only when pitr_enabled) ------------------------------------------------

PITR_BASE_BACKUP_JOB_NAME = "pitr_base_backup_job"
PITR_SCHEDULE_NAME = "pitr_base_backup_schedule"


def build_pitr_schedule(
    settings: BackupSettings, job_name: str = PITR_BASE_BACKUP_JOB_NAME
) -> dg.ScheduleDefinition:
    """pgBackRest base backups on ``pitr_base_backup_cron``; WAL archiving itself is continuous."""
    _check_schedule_settings(settings)
    if not is_valid_cron_string(settings.pitr_base_backup_cron):
        raise SettingsError(
            [
                f"{ENV_PREFIX}PITR_BASE_BACKUP_CRON: must be a valid cron expression such as '30 1 * * *', "
                f"got {settings.pitr_base_backup_cron!r}"
            ]
        )

    @dg.schedule(
        name=PITR_SCHEDULE_NAME,
        job_name=job_name,
        cron_schedule=settings.pitr_base_backup_cron,
        execution_timezone=settings.schedule_timezone,
        description=f"PITR base backup ({settings.pitr_base_backup_type}) at cron `{settings.pitr_base_backup_cron}` "
        f"({settings.schedule_timezone}). A tick while one still runs is skipped.",
        default_status=(
            dg.DefaultScheduleStatus.RUNNING
            if settings.schedule_enabled
            else dg.DefaultScheduleStatus.STOPPED
        ),
    )
    def pitr_base_backup_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        busy = in_progress_runs(context.instance, (job_name,))
        if busy:
            return dg.SkipReason(f"skipped: PITR base backup {busy[0].run_id[:8]} is still in progress")
        tick = context.scheduled_execution_time
        return dg.RunRequest(
            run_key=f"pitr-{tick.isoformat()}" if tick else None, tags={TRIGGER_TAG: "schedule"}
        )

    return pitr_base_backup_schedule
