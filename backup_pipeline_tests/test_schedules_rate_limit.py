"""Manual-backup minimum interval: refused with a clear reason unless forced; scheduled runs pass.
A refusal ends the run CANCELED (not FAILURE), tagged, with a one-line error and no stack trace."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from backup_pipeline.audit import AuditLog
from backup_pipeline.ops.rate_limit import enforce_manual_backup_interval, manual_backup_refusal

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def test_refusal_rules() -> None:
    assert manual_backup_refusal(None, NOW, 10, force=False) is None
    assert manual_backup_refusal(NOW - timedelta(minutes=11), NOW, 10, force=False) is None
    assert manual_backup_refusal(NOW - timedelta(minutes=3), NOW, 10, force=True) is None
    assert manual_backup_refusal(NOW - timedelta(minutes=3), NOW, 0, force=False) is None
    why = manual_backup_refusal(NOW - timedelta(minutes=3), NOW, 10, force=False)
    assert why is not None
    assert "3 min ago" in why and "MIN_MANUAL_BACKUP_INTERVAL_MINUTES" in why and "force: true" in why


class PlanConfig(dg.Config):
    force: bool = False


def _backup_job(state_dir: Path) -> dg.JobDefinition:
    @dg.op
    def plan_backup(context: dg.OpExecutionContext, config: PlanConfig) -> None:
        enforce_manual_backup_interval(context, 10, force=config.force, state_dir=state_dir)

    @dg.job(name="backup_job")
    def backup_job() -> None:
        plan_backup()

    return backup_job


def test_second_manual_backup_is_refused_unless_forced(tmp_path: Path) -> None:
    job = _backup_job(tmp_path)
    with dg.instance_for_test() as instance:
        assert job.execute_in_process(instance=instance).success
        refused = job.execute_in_process(instance=instance, raise_on_error=False)
        assert not refused.success
        failure = refused.failure_data_for_node("plan_backup")
        assert failure is not None and failure.error is not None
        assert failure.error.message.startswith("[MANUAL_BACKUP_TOO_SOON] manual backup refused")
        # What the run view prints under the step: the reason, and no "Stack Trace:" section.
        assert failure.error.stack == [] and failure.error.cause is None
        run = instance.get_run_by_id(refused.run_id)
        assert run is not None
        # Not a failure: CANCELED, labelled, so alert_on_run_failure (FAILURE runs only) never fires.
        assert run.status is dg.DagsterRunStatus.CANCELED
        assert run.tags["backup_pipeline/outcome"] == "refused"
        assert not instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
        canceling = [
            e
            for e in instance.all_logs(refused.run_id)
            if e.dagster_event_type == dg.DagsterEventType.RUN_CANCELING
        ]
        assert canceling and "Try again in" in (canceling[0].message or "")
        forced = job.execute_in_process(
            instance=instance, run_config={"ops": {"plan_backup": {"config": {"force": True}}}}
        )
        assert forced.success
        # A scheduled run is not manual: never refused by the interval.
        scheduled = job.execute_in_process(
            instance=instance, tags={"dagster/schedule_name": "backup_schedule"}
        )
        assert scheduled.success
    audited = AuditLog(tmp_path).records(action="manual_backup")
    assert [r.details["forced"] for r in audited] == [False, True]
    [refusal] = AuditLog(tmp_path).records(action="manual_backup_refused")
    assert refusal.details["run_id"] == refused.run_id
