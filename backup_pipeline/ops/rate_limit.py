"""Manual-backup rate limit: called by ``plan_backup`` before any work.

A *manual* backup is a run of ``backup_job`` not launched by a schedule or sensor (Launchpad,
the ``backup-pipeline run backup`` client, GraphQL). One that starts within
``min_manual_backup_interval_minutes`` of the last successful backup is *refused*, not failed,
unless its config sets ``force: true``: the run ends CANCELED, tagged
``backup_pipeline/outcome=refused``, with the reason (``MANUAL_BACKUP_TOO_SOON``, when to try
again) as its canceling message and as the step's one-line error, without a stack trace; no
failure alert goes out (``ops/step_errors.py``). Every manual backup that proceeds is recorded
in the audit trail.
"""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from backup_pipeline.audit import AuditLog
from backup_pipeline.ops.step_errors import is_refused, refuse_run

BACKUP_JOB_NAME = "backup_job"
AUTOMATIC_RUN_TAGS = ("dagster/schedule_name", "dagster/sensor_name")
MANUAL_BACKUP_TOO_SOON = "MANUAL_BACKUP_TOO_SOON"


def is_manual_run(run: dg.DagsterRun) -> bool:
    return not any(tag in run.tags for tag in AUTOMATIC_RUN_TAGS)


def manual_backup_refusal(
    last_finished: datetime | None, now: datetime, min_interval_minutes: int, *, force: bool
) -> str | None:
    """Why a manual backup must not start now, or None."""
    if force or last_finished is None or min_interval_minutes <= 0:
        return None
    elapsed = now - last_finished
    if elapsed >= timedelta(minutes=min_interval_minutes):
        return None
    wait = timedelta(minutes=min_interval_minutes) - elapsed
    return (
        f"manual backup refused: the last backup finished {int(elapsed.total_seconds() // 60)} min ago "
        f"({last_finished.isoformat(timespec='seconds')}), less than the minimum interval of "
        f"{min_interval_minutes} min (BACKUP_PIPELINE_MIN_MANUAL_BACKUP_INTERVAL_MINUTES). Try again in "
        f"{int(wait.total_seconds() // 60) + 1} min, or set force: true in the plan_backup config."
    )


def last_successful_backup_end(
    instance: dg.DagsterInstance, job_name: str = BACKUP_JOB_NAME
) -> datetime | None:
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=job_name, statuses=[dg.DagsterRunStatus.SUCCESS]), limit=5
    )
    # A refused run never ends SUCCESS today; the filter keeps that true should it ever do.
    ended = [r.end_time for r in records if r.end_time is not None and not is_refused(r.dagster_run)]
    return datetime.fromtimestamp(ended[0], UTC) if ended else None


def enforce_manual_backup_interval(
    context: dg.OpExecutionContext, min_interval_minutes: int, *, force: bool, state_dir: str | Path
) -> None:
    """Refuse (end the run CANCELED) a manual backup too soon after the last one; audit manual runs."""
    run = context.instance.get_run_by_id(context.run_id)
    if run is None or not is_manual_run(run):
        return
    refusal = manual_backup_refusal(
        last_successful_backup_end(context.instance, run.job_name),
        datetime.now(UTC),
        min_interval_minutes,
        force=force,
    )
    if refusal:
        AuditLog(Path(state_dir)).append(
            "manual_backup_refused", {"run_id": context.run_id, "reason": refusal}
        )
        refuse_run(context, refusal, code=MANUAL_BACKUP_TOO_SOON)
    AuditLog(Path(state_dir)).append("manual_backup", {"run_id": context.run_id, "forced": force})
