"""``verify_backup_job``, the ``backup_set_verified`` asset check and the failed-verification alert.

Thin wiring over ``services/verification.py``. One run verifies one backup set (config
``backup_id``; empty = the newest complete set without a verdict yet, else the newest complete
set again). The verdict is recorded in the ledger (``ledger.verification_observation``: an
``AssetObservation`` of ``backup_set`` with ``event=verified`` or ``event=verification_failed``
and the checks as details) and in the audit trail. A failed verdict then fails the run, so the
run is red and ``alert_on_failed_verification`` sends the alert (e-mail / signed webhook).
A run that could not verify at all (destination or scratch database unreachable) fails without
recording a verdict.

The job reads the destination and writes only a scratch database, so it does not carry the
exclusive run tag nor take the data lock: backups keep running while a long verification does.
"""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from backup_pipeline import ledger
from backup_pipeline.alerts import Alert, configured_channels, send_alert
from backup_pipeline.archive.errors import ArchiveError
from backup_pipeline.audit import AuditLog
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.resources.policy import BackupPolicyResource
from backup_pipeline.resources.postgres import PgToolsError, PostgresResource
from backup_pipeline.services import restore as rs
from backup_pipeline.services import verification as svc
from backup_pipeline.services.backup_parts import is_backup_id
from backup_pipeline.settings import BackupSettings

VERIFY_JOB_NAME = "verify_backup_job"
VERIFICATION_CHECK_NAME = "backup_set_verified"
VERIFICATION_ALERT_SENSOR = "alert_on_failed_verification"
DEFAULT_MAX_VERIFICATION_AGE_HOURS = 48
ERROR_VERIFICATION_FAILED = "VERIFICATION_FAILED"
ERROR_CANNOT_VERIFY = "VERIFICATION_NOT_POSSIBLE"


class VerifyConfig(dg.Config):
    backup_id: str = Field(
        default="",
        description="Backup id to verify; empty: the newest complete set not verified yet "
        "(or, when all have a verdict, the newest complete set again).",
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
            raise dg.Failure(
                description=f"backup_id: {requested!r} is not a backup id (yyyymmddThhmmssZ-xxxxxxxx)",
                allow_retries=False,
            )
        return requested
    complete = ledger.complete_sets(instance)
    if not complete:
        raise dg.Failure(description="backup_id: the ledger records no complete backup set to verify")
    statuses = ledger.verification_statuses(instance)
    unverified = [e for e in complete if e.backup_id not in statuses]
    return (unverified or complete)[0].backup_id


def verification_check(
    instance: dg.DagsterInstance, max_age_hours: int, now: datetime | None = None
) -> dg.AssetCheckResult:
    """Red when the newest complete set's last verification failed, or no set verified recently enough."""
    now = now or datetime.now(UTC)
    newest = ledger.latest_complete(instance)
    if newest is None:
        return dg.AssetCheckResult(
            check_name=VERIFICATION_CHECK_NAME,
            asset_key=ledger.BACKUP_SET_ASSET,
            passed=True,
            description="no complete backup set yet: nothing to verify",
        )
    statuses = ledger.verification_statuses(instance)
    live = {e.backup_id for e in ledger.complete_sets(instance)}
    newest_status = statuses.get(newest.backup_id)
    fresh = [
        s
        for s in statuses.values()
        if s.verified and s.backup_id in live and now - s.at <= timedelta(hours=max_age_hours)
    ]
    problems = []
    if newest_status is not None and not newest_status.verified:
        problems.append(
            f"the newest complete set {newest.backup_id} failed verification: {newest_status.summary}"
        )
    if not fresh:
        problems.append(f"no backup set passed verification in the last {max_age_hours} h")
    metadata: dict[str, Any] = {
        "newest_complete": newest.backup_id,
        "newest_status": "unverified"
        if newest_status is None
        else (ledger.VERIFIED_EVENT if newest_status.verified else ledger.VERIFICATION_FAILED_EVENT),
        "fresh_verified_sets": dg.MetadataValue.json(sorted(s.backup_id for s in fresh)),
    }
    return dg.AssetCheckResult(
        check_name=VERIFICATION_CHECK_NAME,
        asset_key=ledger.BACKUP_SET_ASSET,
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems)
        or f"newest complete set {newest.backup_id}: {metadata['newest_status']}",
        metadata=metadata,
    )


def _evaluation(result: dg.AssetCheckResult) -> dg.AssetCheckEvaluation:
    return dg.AssetCheckEvaluation(
        asset_key=ledger.BACKUP_SET_ASSET,
        check_name=VERIFICATION_CHECK_NAME,
        passed=result.passed,
        severity=result.severity,
        description=result.description,
        metadata=result.metadata,
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
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    try:
        restore_keys = rs.RestoreKeys(org_keyring=keys.keyring())
        tools = app_db.pg_tools(check_server=False)
    except (ArchiveError, OSError, PgToolsError, rs.RestoreRefused) as exc:
        raise dg.Failure(
            description=f"cannot verify: {exc}", metadata={"error_code": ERROR_CANNOT_VERIFY}
        ) from None
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
        raise dg.Failure(
            description=f"backup {backup_id} could not be verified (no verdict recorded): {exc}",
            metadata={"error_code": ERROR_CANNOT_VERIFY, "backup_id": backup_id},
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
    # log_event handles AssetCheckEvaluation at runtime; Dagster's UserEvent alias omits it.
    context.log_event(_evaluation(verification_check(context.instance, config.max_verification_age_hours)))  # type: ignore[arg-type]
    for check in report.checks:
        (context.log.info if check.ok else context.log.error)(f"{check.name}: {check.detail}")
    if not report.ok:
        raise dg.Failure(
            description=report.summary(),
            metadata={
                "error_code": ERROR_VERIFICATION_FAILED,
                "backup_id": backup_id,
                "failed_checks": dg.MetadataValue.json([c.__dict__ for c in report.failures]),
            },
            allow_retries=False,
        )
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


def build_verification_alert_sensor(settings: BackupSettings) -> dg.SensorDefinition:
    @dg.run_failure_sensor(
        name=VERIFICATION_ALERT_SENSOR,
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
