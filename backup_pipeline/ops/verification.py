"""``verify_backup_job``, the ``backup_set_verified`` asset check and the failed-verification alert.

Thin wiring over ``services/verification.py``. One run verifies one backup set (config
``backup_id``; empty = the newest complete regular set without a verdict yet, else the newest
complete regular set again; a restore's safety set only when named). The verdict is recorded in the ledger (``ledger.verification_observation``: an
``AssetObservation`` of ``backup_set`` with ``event=verified`` or ``event=verification_failed``
and the checks as details) and in the audit trail. A failed verdict then fails the run, so the
run is red and ``alert_on_failed_verification`` sends the alert (e-mail / signed webhook).
A run that could not verify at all (destination or scratch database unreachable) fails without
recording a verdict. Every expected failure is one line with its code (``[BAD_INPUT] …``,
``[VERIFICATION_FAILED] …``) and no stack trace in the run view (``ops/step_errors.py``).

``verify_after_backup`` (a run-status sensor) launches this job for the set a backup just made
when nothing passed verification yet (a fresh install) or the newest verification is older than
the verification interval, so ``backup_set_verified`` does not wait for the daily schedule.

The job reads the destination and writes only a scratch database, so it does not carry the
exclusive run tag nor take the data lock: backups keep running while a long verification does.
"""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
from pydantic import Field

from backup_pipeline import ledger, safety
from backup_pipeline.alerts import Alert, configured_channels, send_alert
from backup_pipeline.archive.errors import ArchiveError
from backup_pipeline.audit import AuditLog
from backup_pipeline.ops.step_errors import quiet_failure
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.resources.policy import BackupPolicyResource
from backup_pipeline.resources.postgres import PgToolsError, PostgresResource
from backup_pipeline.services import restore as rs
from backup_pipeline.services import verification as svc
from backup_pipeline.services.backup_parts import is_backup_id
from backup_pipeline.services.backup_seed import OUTCOME_SEEDING, OUTCOME_TAG
from backup_pipeline.settings import DEFAULT_RUN_SENSOR_INTERVAL_SECONDS, BackupSettings

VERIFY_JOB_NAME = "verify_backup_job"
VERIFICATION_CHECK_NAME = safety.VERIFICATION_CHECK
VERIFICATION_ALERT_SENSOR = "alert_on_failed_verification"
VERIFY_AFTER_BACKUP_SENSOR = "verify_after_backup"
BACKUP_JOB_NAME = "backup_job"
#: verify_backup_schedule runs daily: a newer verified set than this means the schedule keeps up.
VERIFICATION_INTERVAL_HOURS = 24
DEFAULT_MAX_VERIFICATION_AGE_HOURS = safety.DEFAULT_MAX_VERIFICATION_AGE_HOURS
ERROR_VERIFICATION_FAILED = "VERIFICATION_FAILED"
ERROR_CANNOT_VERIFY = "VERIFICATION_NOT_POSSIBLE"
ERROR_BAD_INPUT = "BAD_INPUT"


class VerifyConfig(dg.Config):
    backup_id: str = Field(
        default="",
        description="Backup id to verify; empty: the newest complete regular set not verified yet "
        "(or, when all have a verdict, the newest complete regular set again). Safety sets only by id.",
    )
    sample_share: float = Field(
        default=svc.DEFAULT_SAMPLE_SHARE,
        description="Share (0-1) of each bucket's objects restored in streaming and compared by SHA-256.",
    )
    seed: int | None = Field(
        default=None, description="Seed of the object sample (empty: a fresh one, recorded in the verdict)."
    )
    max_verification_age_hours: int = Field(
        default=DEFAULT_MAX_VERIFICATION_AGE_HOURS,
        description="The backup_set_verified check is red when no set passed verification within this many hours.",
    )


def choose_backup_id(instance: dg.DagsterInstance, requested: str) -> str:
    requested = requested.strip()
    if requested:
        if not is_backup_id(requested):
            raise quiet_failure(
                f"backup_id: {requested!r} is not a backup id (yyyymmddThhmmssZ-xxxxxxxx)", ERROR_BAD_INPUT
            )
        return requested
    # A restore's safety set (database only) is verified when named, never by default: the
    # default proves the newest regular backup, which is what backup_set_verified judges.
    complete = [e for e in ledger.complete_sets(instance) if not e.is_safety]
    if not complete:
        raise quiet_failure(
            "backup_id: the ledger records no complete regular backup set to verify", ERROR_CANNOT_VERIFY
        )
    statuses = ledger.verification_statuses(instance)
    unverified = [e for e in complete if e.backup_id not in statuses]
    return (unverified or complete)[0].backup_id


def verification_check(
    instance: dg.DagsterInstance, max_age_hours: int, now: datetime | None = None
) -> dg.AssetCheckResult:
    """Red when the newest complete set's last verification failed, or no set verified recently enough."""
    verdict = safety.verification_verdict(instance, max_age_hours, now)
    return dg.AssetCheckResult(
        check_name=VERIFICATION_CHECK_NAME,
        asset_key=ledger.BACKUP_SET_ASSET,
        passed=verdict.passed,
        severity=verdict.severity,
        description=verdict.description,
        metadata=verdict.metadata,
    )


@dg.op(
    description="Verify one backup set: authenticate every part, restore the dump into a scratch database "
    "and compare row counts, restore and hash a sample of objects; record the verdict in the ledger."
)
def verify_backup_set_op(
    context: dg.OpExecutionContext,
    config: VerifyConfig,
    destination: DestinationResource,
    keys: BackupKeysResource,
    app_db: PostgresResource,
    backup_policy: BackupPolicyResource,
) -> dict:
    backup_id = choose_backup_id(context.instance, config.backup_id)
    context.instance.add_run_tags(context.run_id, {ledger.BACKUP_ID_TAG: backup_id})
    try:
        options = svc.VerificationOptions(sample_share=config.sample_share, seed=config.seed)
    except ValueError as exc:
        raise quiet_failure(str(exc), ERROR_BAD_INPUT) from None
    try:
        restore_keys = rs.RestoreKeys(org_keyring=keys.keyring())
        tools = app_db.pg_tools(check_server=False)
    except (ArchiveError, OSError, PgToolsError, rs.RestoreRefused) as exc:
        raise quiet_failure(f"cannot verify: {exc}", ERROR_CANNOT_VERIFY) from None
    scratch = svc.ScratchServer(
        target=rs.PgTarget.from_url(app_db.database_url, password=app_db.password),
        pg_restore=tools.pg_restore.path,
        pg_restore_version=tools.pg_restore.version,
    )
    context.log.info(f"verifying backup set {backup_id} (sample share {options.sample_share})")
    try:
        report = svc.verify_backup_set(
            destination.get_destination(),
            restore_keys,
            backup_id,
            installation_id=backup_policy.installation_id,
            scratch=scratch,
            options=options,
            log=context.log.info,
        )
    except svc.VerificationError as exc:
        raise quiet_failure(
            f"backup {backup_id} could not be verified (no verdict recorded): {exc}", ERROR_CANNOT_VERIFY
        ) from None
    details = report.to_dict()
    context.log_event(
        ledger.verification_observation(
            backup_id, ok=report.ok, summary=report.summary(), details=details, run_id=context.run_id
        )
    )
    AuditLog(Path(backup_policy.state_dir)).append(
        "backup_verified" if report.ok else "backup_verification_failed",
        {"backup_id": backup_id, "run_id": context.run_id, "summary": report.summary()},
    )
    result = verification_check(context.instance, config.max_verification_age_hours)
    evaluation = safety.evaluation_of(result, ledger.BACKUP_SET_ASSET, VERIFICATION_CHECK_NAME)
    # log_event handles AssetCheckEvaluation at runtime; Dagster's UserEvent alias omits it.
    context.log_event(evaluation)  # type: ignore[arg-type]
    for check in report.checks:
        (context.log.info if check.ok else context.log.error)(f"{check.name}: {check.detail}")
    if not report.ok:
        # The failed checks were each logged above; the step's error is the one-line summary.
        raise quiet_failure(report.summary(), ERROR_VERIFICATION_FAILED)
    context.add_output_metadata(
        {
            "backup_id": backup_id,
            "tables_checked": report.tables_checked,
            "rows_checked": report.rows_checked,
            "objects_sampled": report.objects_sampled,
            "seed": report.seed,
            "seconds": report.seconds,
        }
    )
    return {"backup_id": backup_id, "ok": True, "summary": report.summary()}


@dg.job(
    name=VERIFY_JOB_NAME,
    description="Prove a backup set restores: authenticate every part, restore the dump into a scratch database "
    "(bp_verify_<token>, dropped afterwards) and compare tables and row counts with the manifest, restore "
    "a seeded sample of objects in streaming and compare SHA-256. Records verified / verification_failed in "
    "the ledger; nothing production is written.",
    tags={"backup_pipeline/kind": "verification"},
)
def verify_backup_job() -> None:
    verify_backup_set_op()


def build_verification_check(
    max_age_hours: int = DEFAULT_MAX_VERIFICATION_AGE_HOURS,
) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=ledger.BACKUP_SET_ASSET,
        name=VERIFICATION_CHECK_NAME,
        description=f"Red when the newest complete backup set's last verification failed, or no set passed "
        f"verification in the last {max_age_hours} h. Also evaluated at the end of every verify_backup_job run.",
    )
    def backup_set_verified(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        return verification_check(context.instance, max_age_hours)

    return backup_set_verified


def verification_due(
    instance: dg.DagsterInstance,
    interval_hours: float = VERIFICATION_INTERVAL_HOURS,
    now: datetime | None = None,
) -> str | None:
    """Why a new backup should be verified at once, or None when a recent verification covers it.

    On a fresh install nothing is verified until the next scheduled verification, up to a day later;
    after a long gap (schedule off, failures) the same holds. Verifying the new set right away
    makes ``backup_set_verified`` green (or red) within minutes of the first backup.
    """
    now = now or datetime.now(UTC)
    passed = [s.at for s in ledger.verification_statuses(instance).values() if s.verified]
    if not passed:
        return "no backup set has passed verification yet"
    age = now - max(passed)
    if age > timedelta(hours=interval_hours):
        return (
            f"the newest verification passed {age.total_seconds() / 3600:.0f} h ago, more than the "
            f"verification interval ({interval_hours:.0f} h)"
        )
    return None


def build_verify_after_backup_sensor(
    interval_seconds: int = DEFAULT_RUN_SENSOR_INTERVAL_SECONDS,
) -> dg.SensorDefinition:
    @dg.run_status_sensor(
        name=VERIFY_AFTER_BACKUP_SENSOR,
        run_status=dg.DagsterRunStatus.SUCCESS,
        minimum_interval_seconds=interval_seconds,
        request_job=verify_backup_job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="After a successful backup_job run, requests verify_backup_job for the new set when no set "
        f"passed verification yet (a fresh install) or the newest verification is older than "
        f"{VERIFICATION_INTERVAL_HOURS} h; otherwise the daily verify_backup_schedule covers it.",
    )
    def verify_after_backup(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
        run = context.dagster_run
        if run.job_name != BACKUP_JOB_NAME:
            return dg.SkipReason(f"{run.job_name} is not {BACKUP_JOB_NAME}")
        backup_id = run.tags.get(ledger.BACKUP_ID_TAG)
        if not backup_id:
            return dg.SkipReason(f"run {run.run_id} has no backup id tag")
        if run.tags.get(OUTCOME_TAG) == OUTCOME_SEEDING:
            return dg.SkipReason(f"backup {backup_id} is seeding: no complete set to verify yet")
        why = verification_due(context.instance)
        if why is None:
            return dg.SkipReason(
                f"backup {backup_id}: a set was verified recently; the daily schedule covers it"
            )
        context.log.info(f"verifying backup {backup_id} now: {why}")
        return dg.RunRequest(
            # One verification per backup run, however often the event is seen.
            run_key=f"verify-after-{run.run_id}",
            run_config={"ops": {"verify_backup_set_op": {"config": {"backup_id": backup_id}}}},
            # The backup id tag makes retention spare the set while it is read.
            tags={ledger.BACKUP_ID_TAG: backup_id, "backup_pipeline/trigger": "after_backup"},
        )

    return verify_after_backup


def build_verification_alert_sensor(settings: BackupSettings) -> dg.SensorDefinition:
    @dg.run_failure_sensor(
        name=VERIFICATION_ALERT_SENSOR,
        minimum_interval_seconds=settings.run_sensor_interval_seconds,
        monitored_jobs=[verify_backup_job],
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Alerts (e-mail / signed webhook) when verify_backup_job fails: a set failed verification, or "
        f"verification could not run. Channels: {', '.join(configured_channels(settings)) or 'none configured'}.",
    )
    def alert_on_failed_verification(context: dg.RunFailureSensorContext) -> None:
        alert = verification_alert(context, settings)
        delivered = send_alert(settings, alert)
        context.log.info(
            f"alert for {context.dagster_run.run_id} sent via {', '.join(delivered) or 'no channel'}"
        )

    return alert_on_failed_verification


def verification_alert(context: dg.RunFailureSensorContext, settings: BackupSettings) -> Alert:
    run = context.dagster_run
    backup_id = run.tags.get(ledger.BACKUP_ID_TAG, "")
    verdict = next(
        (
            r.asset_observation
            for r in context.instance.fetch_observations(ledger.BACKUP_SET_ASSET, limit=50).records
            if r.run_id == run.run_id and r.asset_observation is not None
        ),
        None,
    )
    if verdict is not None:
        meta = {k: getattr(v, "value", v) for k, v in verdict.metadata.items()}
        return Alert(
            kind=ledger.VERIFICATION_FAILED_EVENT,
            title=f"backup {backup_id} failed verification",
            message=str(meta.get("summary", "")),
            installation_id=settings.installation_id,
            job_name=run.job_name,
            run_id=run.run_id,
            details={"backup_id": backup_id},
        )
    messages = [
        (e.step_failure_data.user_failure_data.description if e.step_failure_data.user_failure_data else None)
        or (e.step_failure_data.error.message.strip() if e.step_failure_data.error else "failed")
        for e in context.get_step_failure_events()
    ]
    return Alert(
        kind="verification_not_possible",
        title=f"{run.job_name} failed" + (f" for backup {backup_id}" if backup_id else ""),
        message="; ".join(m for m in messages if m) or (context.failure_event.message or "run failed"),
        installation_id=settings.installation_id,
        job_name=run.job_name,
        run_id=run.run_id,
        details={"backup_id": backup_id} if backup_id else {},
    )
