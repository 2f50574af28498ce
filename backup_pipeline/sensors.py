"""Sensors: retention after each backup (+ a daily safety net), failure alerts, freshness alerts,
the heartbeat (dead-man's switch) after every backup and verification, and failing the run of a
dead data-lease holder (a host crash) so the queue moves on.

All are built from validated settings at load and start RUNNING (the UI toggle wins once used).
Alert delivery failures raise, so the sensor tick shows as failed in the UI rather than
silently dropping an alert. A failed heartbeat ping or success notice is a warning in the
tick's log: it never fails anything (the external monitor notices the missing ping itself).
"""

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
import psycopg

from backup_pipeline import ledger
from backup_pipeline.alerts import Alert, AlertDeliveryError, configured_channels, send_alert
from backup_pipeline.concurrency import DATA_LEASE_STALE_SECONDS, EXCLUSIVE_TAG_KEY
from backup_pipeline.heartbeat import HeartbeatError, configured_heartbeat, ping
from backup_pipeline.ops import pitr as pitr_ops
from backup_pipeline.ops.retention import BACKUP_SET_ASSET, DELETE_BACKUP_JOB_NAME, retention_job
from backup_pipeline.ops.step_errors import is_refused
from backup_pipeline.ops.verification import VERIFY_JOB_NAME
from backup_pipeline.resources.postgres import PostgresResource, PostgresUnavailable
from backup_pipeline.schedules import BACKUP_JOB_NAME, RESTORE_JOB_NAME
from backup_pipeline.services.backup_seed import OUTCOME_SEEDING, OUTCOME_TAG
from backup_pipeline.services.data_lease import LeaseHolder
from backup_pipeline.services.errors import first_line
from backup_pipeline.services.pitr_status import Problem
from backup_pipeline.settings import DEFAULT_RUN_SENSOR_INTERVAL_SECONDS, BackupSettings

RETENTION_AFTER_BACKUP_SENSOR = "retention_after_backup"
RETENTION_DAILY_SENSOR = "retention_daily_safety_net"
RUN_FAILURE_ALERT_SENSOR = "alert_on_run_failure"
FRESHNESS_SENSOR = "backup_freshness"
DEAD_LEASE_HOLDER_SENSOR = "fail_dead_lease_holder"
HEARTBEAT_SUCCESS_SENSOR = "heartbeat_on_success"
HEARTBEAT_FAILURE_SENSOR = "heartbeat_on_failure"
#: The runs that prove we are safe: their success pings the heartbeat, their failure pings /fail.
HEARTBEAT_JOBS = frozenset({BACKUP_JOB_NAME, VERIFY_JOB_NAME})
BACKUP_ID_TAG = "backup_pipeline/backup_id"
MIGRATION_JOB_NAME = "migrate_drive_to_minio"
PITR_ARCHIVE_SENSOR = "pitr_archive_health"

ALERTED_JOBS = frozenset(
    {
        BACKUP_JOB_NAME,
        RESTORE_JOB_NAME,
        retention_job.name,
        DELETE_BACKUP_JOB_NAME,
        MIGRATION_JOB_NAME,
        pitr_ops.PITR_BASE_BACKUP_JOB,
        pitr_ops.PITR_RESTORE_JOB,
        "pitr_drive_copy_job",  # ops/pitr_drive.py PITR_DRIVE_COPY_JOB (loaded only when enabled)
        "copy_backup_job",  # ops/copy.py COPY_JOB_NAME (not imported: the module loads the copy job)
    }
)


def after_backup_sensor(
    name: str, job: dg.JobDefinition, run_key_prefix: str, interval_seconds: int
) -> dg.SensorDefinition:
    """Requests ``job`` after each successful backup_job run (retention, copies)."""

    @dg.run_status_sensor(
        name=name,
        run_status=dg.DagsterRunStatus.SUCCESS,
        minimum_interval_seconds=interval_seconds,
        request_job=job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Requests {job.name} after each successful {BACKUP_JOB_NAME} run (run key = the backup run).",
    )
    def after_backup(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
        run = context.dagster_run
        if run.job_name != BACKUP_JOB_NAME:
            return dg.SkipReason(f"{run.job_name} is not {BACKUP_JOB_NAME}")
        # The run key makes a re-evaluated event request nothing new.
        return dg.RunRequest(
            run_key=f"{run_key_prefix}-after-{run.run_id}", tags={"backup_pipeline/after_run": run.run_id}
        )

    return after_backup


def daily_safety_net_sensor(
    name: str, job: dg.JobDefinition, run_key_prefix: str, description: str
) -> dg.SensorDefinition:
    """One ``job`` run per UTC day (the run key is the date), for what an after-backup trigger missed."""

    @dg.sensor(
        name=name,
        job=job,
        minimum_interval_seconds=3600,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=description,
    )
    def daily(context: dg.SensorEvaluationContext) -> dg.RunRequest:
        return dg.RunRequest(run_key=f"{run_key_prefix}-daily-{datetime.now(UTC).date().isoformat()}")

    return daily


def build_retention_after_backup_sensor(
    interval_seconds: int = DEFAULT_RUN_SENSOR_INTERVAL_SECONDS,
) -> dg.SensorDefinition:
    return after_backup_sensor(RETENTION_AFTER_BACKUP_SENSOR, retention_job, "retention", interval_seconds)


def build_retention_daily_sensor() -> dg.SensorDefinition:
    return daily_safety_net_sensor(
        RETENTION_DAILY_SENSOR,
        retention_job,
        "retention",
        "Safety net: one retention_job run per UTC day, in case the after-backup trigger was missed "
        "or a deletion failed and must be retried.",
    )


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
        minimum_interval_seconds=settings.run_sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Alerts (e-mail / signed webhook) when a backup, restore, retention, delete or migration run "
        f"fails. Channels: {', '.join(configured_channels(settings)) or 'none configured'}.",
    )
    def alert_on_run_failure(context: dg.RunFailureSensorContext) -> None:
        run = context.dagster_run
        if run.job_name not in ALERTED_JOBS:
            return
        if is_refused(run):
            # A refusal ends CANCELED; one that still ended FAILURE (its worker died after the
            # refusal was recorded) is not a failed backup either.
            context.log.info(f"run {run.run_id} was refused, not failed: no alert")
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


def success_status(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    """One line for the heartbeat body and the success notice: what this run proved."""
    backup_id = run.tags.get(BACKUP_ID_TAG, "?")
    if run.job_name == VERIFY_JOB_NAME:
        return f"{run.job_name} ok: backup {backup_id} verified (run {run.run_id})"
    if run.tags.get(OUTCOME_TAG) == OUTCOME_SEEDING:
        # The host works and the seed progressed, but there is no new backup: never say "complete".
        return (
            f"{run.job_name} ok: backup {backup_id} seeding (Drive's daily upload cap spreads the first full over "
            f"several runs): NOT complete yet (run {run.run_id})"
        )
    size = ""
    for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        mat = record.asset_materialization
        if mat is not None and mat.asset_key == BACKUP_SET_ASSET and "size" in mat.metadata:
            size = f", {getattr(mat.metadata['size'], 'value', mat.metadata['size'])}"
    return f"{run.job_name} ok: backup {backup_id} complete{size} (run {run.run_id})"


def send_heartbeat(settings: BackupSettings, log: logging.Logger, *, ok: bool, status: str) -> str:
    """Ping the configured heartbeat; return what happened (a failure is logged as a warning, never raised)."""
    try:
        heartbeat = configured_heartbeat(settings)
        if heartbeat is None:
            return "no heartbeat configured"
        ping(heartbeat, ok=ok, status=status)
    except HeartbeatError as exc:
        log.warning(str(exc))
        return f"heartbeat NOT sent: {exc}"
    return f"heartbeat {'ok' if ok else 'fail'} sent to {heartbeat.where}"


def build_heartbeat_success_sensor(settings: BackupSettings) -> dg.SensorDefinition:
    @dg.run_status_sensor(
        name=HEARTBEAT_SUCCESS_SENSOR,
        minimum_interval_seconds=settings.run_sensor_interval_seconds,
        run_status=dg.DagsterRunStatus.SUCCESS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Dead-man's switch: pings the heartbeat URL (Healthchecks.io / Uptime Kuma push) after every "
        "successful backup_job and verify_backup_job run, so an external monitor alerts when pings stop "
        "(host or daemon gone)."
        + ("" if settings.alert_failures_only else " Also announces each success on the alert channels."),
    )
    def heartbeat_on_success(context: dg.RunStatusSensorContext) -> dg.SkipReason:
        run = context.dagster_run
        if run.job_name not in HEARTBEAT_JOBS:
            return dg.SkipReason(f"{run.job_name} is not a backup or verification")
        status = success_status(context.instance, run)
        outcome = send_heartbeat(settings, context.log, ok=True, status=status)
        if not settings.alert_failures_only and configured_channels(settings):
            kind = "verification_succeeded" if run.job_name == VERIFY_JOB_NAME else "backup_succeeded"
            alert = Alert(
                kind=kind,
                title=status.split(" (run ")[0],
                message=status,
                installation_id=settings.installation_id,
                job_name=run.job_name,
                run_id=run.run_id,
                details={"backup_id": run.tags.get(BACKUP_ID_TAG, "")},
            )
            try:
                outcome += f"; success notice sent via {', '.join(send_alert(settings, alert))}"
            except AlertDeliveryError as exc:  # a missed success notice is not an incident
                context.log.warning(str(exc))
                outcome += f"; success notice NOT delivered: {exc}"
        return dg.SkipReason(outcome)

    return heartbeat_on_success


def build_heartbeat_failure_sensor(settings: BackupSettings) -> dg.SensorDefinition:
    @dg.run_failure_sensor(
        name=HEARTBEAT_FAILURE_SENSOR,
        minimum_interval_seconds=settings.run_sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Dead-man's switch: pings the heartbeat URL as failed (Healthchecks.io <url>/fail, Uptime Kuma "
        "status=down) when a backup_job or verify_backup_job run fails. A refused manual backup is canceled, "
        "not failed, and pings nothing.",
    )
    def heartbeat_on_failure(context: dg.RunFailureSensorContext) -> dg.SkipReason:
        run = context.dagster_run
        if run.job_name not in HEARTBEAT_JOBS:
            return dg.SkipReason(f"{run.job_name} is not a backup or verification")
        message, _ = _failure_text(context)
        backup_id = run.tags.get(BACKUP_ID_TAG)
        status = f"{run.job_name} FAILED" + (f" (backup {backup_id})" if backup_id else "") + f": {message}"
        return dg.SkipReason(send_heartbeat(settings, context.log, ok=False, status=status))

    return heartbeat_on_failure


def latest_complete_backup_time(instance: dg.DagsterInstance) -> float | None:
    """When the newest complete *regular* set was made: a restore's safety set (database only)
    does not make the installation's buckets safe, so it never makes a stale installation fresh.
    The same rule as the ``backup_set_fresh`` check (``safety.freshness_verdict``)."""
    entry = ledger.latest_complete(instance)
    return entry.created_at.timestamp() if entry else None


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


#: Run statuses (``DagsterRunStatus`` values) of a run that Dagster thinks is executing. Only such a
#: run is failed; a finished run's lease is taken over by the next run anyway, and QUEUED/CANCELING
#: runs are the queue's and run monitoring's business.
EXECUTING_RUN_STATUSES = frozenset({"STARTED", "STARTING"})


def _duration(seconds: float) -> str:
    if seconds >= 120:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds:.0f} seconds"


@dataclass(frozen=True)
class DeadHolderVerdict:
    """``fail``: mark the holder's run failed with ``reason`` as the message; else ``reason`` says why not."""

    fail: bool
    reason: str


def dead_lease_holder_verdict(
    holder: LeaseHolder | None,
    run_status: str | None,
    stale_after_seconds: float,
    *,
    run_job: str | None = None,
    last_event_age_seconds: float | None = None,
) -> DeadHolderVerdict:
    """Whether the data-lease holder's Dagster run is dead and must be marked failed (no Dagster here).

    ``run_status`` is the holder run's ``DagsterRunStatus`` value in this instance, None when the
    instance does not know the run (the CLI migration, another Dagster instance): not ours, never
    failed. ``run_job`` (the run's job name) must match the lease's job when given.
    ``last_event_age_seconds`` is the age of the run's newest event-log entry (None: no events): a
    run that logged within the bound is alive even when its heartbeat is stale — while the
    application database is unreachable the heartbeat thread logs a warning at every failed beat, so
    a database outage never reads as a dead run.
    """
    if holder is None:
        return DeadHolderVerdict(False, "no run holds the data lease")
    who = f"run {holder.run_id} of {holder.job}"
    if run_status is None:
        return DeadHolderVerdict(
            False,
            f"the data lease is held by {holder.run_id} ({holder.job}), which is not a run of this Dagster "
            "instance (the CLI migration or another instance): left to the lease's staleness rule",
        )
    if run_job is not None and run_job != holder.job:
        return DeadHolderVerdict(
            False, f"the data lease names {who}, but that run is of job {run_job}: not touched"
        )
    if run_status not in EXECUTING_RUN_STATUSES:
        return DeadHolderVerdict(
            False,
            f"the data lease is held by {who}, which is {run_status}: nothing to fail (the next "
            "data-touching run takes the lease over)",
        )
    age = holder.heartbeat_age_seconds
    if age <= stale_after_seconds:
        return DeadHolderVerdict(
            False,
            f"{who} ({run_status}) holds the data lease; its heartbeat is {age:.0f} s old (stale after "
            f"{stale_after_seconds:.0f} s): alive",
        )
    if last_event_age_seconds is not None and last_event_age_seconds <= stale_after_seconds:
        return DeadHolderVerdict(
            False,
            f"{who} ({run_status}) holds the data lease with a heartbeat {_duration(age)} old, but it "
            f"logged an event {last_event_age_seconds:.0f} s ago: alive (application database unreachable "
            "from the run?), not failed",
        )
    silent = (
        f"; it has logged nothing for {_duration(last_event_age_seconds)}"
        if last_event_age_seconds is not None
        else ""
    )
    return DeadHolderVerdict(
        True,
        f"Marked failed by the {DEAD_LEASE_HOLDER_SENSOR} sensor: this run holds the data lease, but its "
        f"data-lease heartbeat stopped {_duration(age)} ago (stale after {_duration(stale_after_seconds)})"
        f"{silent}: the run's processes are gone (host crash?). Last holder: {holder.holder}. The lease "
        "is left for the next backup, restore, retention, delete or migration run to take over.",
    )


def _last_event_age(instance: dg.DagsterInstance, run_id: str, now: float) -> float | None:
    records = instance.get_records_for_run(run_id, limit=1, ascending=False).records
    return max(0.0, now - records[0].timestamp) if records else None


def build_dead_lease_holder_sensor(
    *,
    stale_after_seconds: float = DATA_LEASE_STALE_SECONDS,
    clock: Callable[[], float] = time.time,
) -> dg.SensorDefinition:
    """The sensor that fails the run of a dead data-lease holder (``clock``: tests age the event log)."""

    @dg.sensor(
        name=DEAD_LEASE_HOLDER_SENSOR,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="After a host crash: marks failed the STARTED run that holds the data lease when its "
        f"heartbeat is older than {stale_after_seconds / 60:.0f} min and it has logged nothing for as long "
        "(its processes are gone), so the failure alert goes out and queued backups/restores "
        f"({EXCLUSIVE_TAG_KEY}, one at a time) can start instead of waiting for run monitoring's "
        "12 h limit. Reads the lease in the application database; launches nothing.",
    )
    def fail_dead_lease_holder(
        context: dg.SensorEvaluationContext, app_db: PostgresResource
    ) -> dg.SkipReason:
        try:
            holder = app_db.data_lease_holder()
        except PostgresUnavailable as exc:  # names user@host:port/db, never the password
            return dg.SkipReason(f"cannot read the data lease: {exc}")
        except psycopg.Error as exc:
            return dg.SkipReason(f"cannot read the data lease on {app_db.endpoint}: {first_line(exc)}")
        run = context.instance.get_run_by_id(holder.run_id) if holder else None
        verdict = dead_lease_holder_verdict(
            holder,
            run.status.value if run else None,
            stale_after_seconds,
            run_job=run.job_name if run else None,
            last_event_age_seconds=_last_event_age(context.instance, run.run_id, clock()) if run else None,
        )
        if not verdict.fail or run is None:
            context.log.info(verdict.reason)
            return dg.SkipReason(verdict.reason)
        # Re-read just before writing: a run that finished meanwhile keeps its own ending.
        current = context.instance.get_run_by_id(run.run_id)
        if current is None or current.status.value not in EXECUTING_RUN_STATUSES:
            return dg.SkipReason(f"run {run.run_id} finished while being checked: not touched")
        # Dagster's own API (as run monitoring does): a RUN_FAILURE event with this message; the run
        # becomes FAILURE, its tag slot is free, and alert_on_run_failure reports it like any failure.
        #
        # The lease row is NOT released here, on purpose: the next data-touching run takes it over at
        # once (its holder run is now finished, and the heartbeat is stale anyway) and logs "took over
        # the data lease from a dead holder", naming the crashed run; this sensor only reads the
        # application database (SELECT suffices) and never competes with a run taking the lease.
        context.instance.report_run_failed(current, verdict.reason)
        context.log.warning(f"run {run.run_id} of {run.job_name}: {verdict.reason}")
        return dg.SkipReason(f"marked run {run.run_id} of {run.job_name} failed: {verdict.reason}")

    return fail_dead_lease_holder


def build_sensors(settings: BackupSettings) -> list[dg.SensorDefinition]:
    return [
        build_retention_after_backup_sensor(settings.run_sensor_interval_seconds),
        build_retention_daily_sensor(),
        build_run_failure_alert_sensor(settings),
        build_freshness_sensor(settings),
        build_dead_lease_holder_sensor(),
        build_heartbeat_success_sensor(settings),
        build_heartbeat_failure_sensor(settings),
    ]


# --- PITR profile (loaded only when pitr_enabled) ------------------------------------------------


def build_pitr_archive_sensor(settings: BackupSettings) -> dg.SensorDefinition:
    """Every minute: the server's archiver status → the pitr_archive checks, and one alert per problem
    kind per incident (archive failing, lag, pg_wal size, server unreachable, archiving off). With the
    Drive copy enabled, also Drive's copy from its listing (no keys): lag past
    ``pitr_drive_lag_alert_seconds``, a gap, no chain, Drive unreachable → the same alerts and the
    ``pitr_drive_lag`` check."""
    drive_text = (
        f", and when Drive's PITR copy lags more than {settings.pitr_drive_lag_alert_seconds} s or has a gap"
        if settings.pitr_drive_copy_enabled
        else ""
    )

    @dg.sensor(
        name=PITR_ARCHIVE_SENSOR,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="PITR: alerts when WAL archiving fails, lags more than "
        f"{settings.pitr_archive_lag_alert_seconds} s, or pg_wal exceeds {settings.pitr_wal_dir_alert_mb} MiB "
        f"(one alert per incident){drive_text}; keeps the {pitr_ops.ARCHIVING_CHECK} and {pitr_ops.WINDOW_CHECK} checks "
        f"current. Channels: {', '.join(configured_channels(settings)) or 'none configured'}.",
    )
    def pitr_archive_health(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        state = json.loads(context.cursor) if context.cursor else {}
        alerted: dict[str, float] = state.get("alerted", {})
        seen: dict[str, str] = state.get("checks", {})
        status, problems = pitr_ops.read_status(settings)
        details = {k: str(v) for k, v in (status.metadata() if status else {}).items()}
        found = [(p, details) for p in problems]

        def alert_new(found: list[tuple[Problem, dict[str, str]]]) -> None:
            for problem, shown in found:
                if problem.kind in alerted:
                    continue
                alert = Alert(
                    kind=f"pitr_{problem.kind}",
                    title=f"PITR: {problem.kind.replace('_', ' ')}",
                    message=problem.message,
                    installation_id=settings.installation_id,
                    details=shown,
                )
                delivered = send_alert(settings, alert)  # raises: the tick fails and the alert is retried
                alerted[problem.kind] = time.time()
                context.log.warning(
                    f"{problem.message} (alert sent via {', '.join(delivered) or 'no channel'})"
                )

        alert_new(found)  # before Drive is listed: a slow or retrying Drive must not delay these
        checks = [
            (
                pitr_ops.PITR_ARCHIVE_ASSET,
                pitr_ops.ARCHIVING_CHECK,
                pitr_ops.archiving_verdict(status, problems),
            ),
            (
                pitr_ops.PITR_ARCHIVE_ASSET,
                pitr_ops.WINDOW_CHECK,
                pitr_ops.window_verdict(context.instance, status),
            ),
        ]
        if settings.pitr_drive_copy_enabled:  # a stopped copy schedule must alert too, not only failed runs
            from backup_pipeline.ops import pitr_drive

            drive_meta, drive_problems = pitr_drive.drive_health(settings, status)
            drive_details = {k: str(v) for k, v in drive_meta.items()}
            alert_new([(p, drive_details) for p in drive_problems])
            found += [(p, drive_details) for p in drive_problems]
            verdict = pitr_drive.drive_verdict(drive_meta, drive_problems)
            checks.append((pitr_drive.PITR_DRIVE_ASSET, pitr_drive.DRIVE_LAG_CHECK, verdict))
        active = {p.kind for p, _shown in found}
        for kind in [k for k in alerted if k not in active]:
            context.log.info(f"PITR {kind} is over")
            del alerted[kind]
        events = [v.evaluation(name, asset_key=key) for key, name, v in checks if seen.get(name) != v.key()]
        seen.update({name: v.key() for _key, name, v in checks})
        return dg.SensorResult(asset_events=events, cursor=json.dumps({"alerted": alerted, "checks": seen}))

    return pitr_archive_health
