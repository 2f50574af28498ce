"""PITR copies on Google Drive in Dagster: ``pitr_drive_copy_job``, its schedule, the ``pitr_drive`` asset.

Loaded only when ``pitr_enabled`` AND ``pitr_drive_copy_enabled`` (``definitions.py``). Thin over
``services/pitr_drive.py`` (write ordering and bundle index there). Each run: strays of an
interrupted run removed → new base backups → one WAL bundle → ``pitr_drive`` materialized with
Drive's recoverable window next to the S3 repository's and the lag between them → the run fails
(after the materialization, so the numbers stay visible and ``alert_on_run_failure`` alerts) when
Drive lags the S3 window by more than ``pitr_drive_lag_alert_seconds`` or its WAL chain has a gap.
"""

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from dagster._utils.schedules import is_valid_cron_string

from backup_pipeline.archive.keys import OrgKeyring, RecoveryIdentity
from backup_pipeline.destinations.base import DestinationError
from backup_pipeline.ops.pitr import ENGINE_ERRORS, _recovery_keys, read_status
from backup_pipeline.ops.step_errors import quiet_failure
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.safety import Verdict
from backup_pipeline.schedules import in_progress_runs
from backup_pipeline.services import pitr as svc
from backup_pipeline.services import pitr_drive as drive
from backup_pipeline.services.errors import first_line
from backup_pipeline.services.pitr_restore import RestoreReport, RestoreRequest
from backup_pipeline.services.pitr_status import ArchiverStatus, Problem
from backup_pipeline.settings import BackupSettings, SettingsError

PITR_DRIVE_ASSET = dg.AssetKey("pitr_drive")
PITR_DRIVE_COPY_JOB = "pitr_drive_copy_job"
PITR_DRIVE_SCHEDULE = "pitr_drive_copy_schedule"
DRIVE_LAG_CHECK = "pitr_drive_lag"
#: Runs that may be writing to Drive now (a queued run has not touched anything yet).
RUNNING_STATUSES = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]

PITR_DRIVE_SPEC = dg.AssetSpec(
    PITR_DRIVE_ASSET,
    description="PITR copies on Google Drive: base backups and WAL bundles (one file per bundle). Metadata: "
    "the window Drive alone restores (drive_earliest/latest_restorable) next to the S3 repository's, the "
    "lag between them and gaps in Drive's WAL chain.",
    group_name="pitr",
)


def drive_resource(settings: BackupSettings) -> DestinationResource:
    """The google_drive destination PITR copies go to (``pitr_drive_destination`` or the first one)."""
    for named in settings.named_destinations():
        wanted = settings.pitr_drive_destination
        if (wanted and named.name == wanted) or (not wanted and named.kind == "google_drive"):
            if named.kind != "google_drive":
                break
            return DestinationResource.for_named(named)
    raise SettingsError(
        [
            "pitr_drive_destination: no google_drive destination "
            + (
                f"named {settings.pitr_drive_destination!r}"
                if settings.pitr_drive_destination
                else "configured"
            )
        ]
    )


def lag_seconds(s3_latest: datetime | None, drive_latest: datetime | None) -> float | None:
    """How far Drive's newest restorable moment is behind the S3 repository's (None: unknown)."""
    if s3_latest is None:
        return None
    if drive_latest is None:
        return float("inf")
    return max((s3_latest - drive_latest).total_seconds(), 0.0)


def drive_problems(meta: dict[str, Any], limit_seconds: int) -> list[Problem]:
    """What is wrong with Drive's copy, one Problem per kind (the sensor alerts once per kind)."""
    problems: list[Problem] = []
    empty = meta.get("drive_latest_restorable") in (None, "none")
    if empty:
        problems.append(Problem("drive_empty", "Drive holds no restorable base backup + WAL chain yet."))
    gaps = int(meta.get("drive_wal_gaps", 0) or 0)
    if gaps:
        problems.append(
            Problem(
                "drive_gap", f"Drive's WAL chain has {gaps} gap(s): {meta.get('drive_wal_gap_examples')}."
            )
        )
    lag = meta.get("drive_lag_seconds")
    # Without any chain the lag is infinite and says nothing the empty problem does not.
    if not empty and isinstance(lag, int | float) and lag > limit_seconds:
        problems.append(
            Problem(
                "drive_lag",
                f"Drive's copy lags the S3 repository by {lag:.0f} s (limit {limit_seconds} s): Drive "
                f"restores up to {meta.get('drive_latest_restorable')}, S3 up to "
                f"{meta.get('s3_latest_restorable')}.",
            )
        )
    return problems


def lag_verdict(meta: dict[str, Any], limit_seconds: int) -> tuple[bool, str]:
    problems = drive_problems(meta, limit_seconds)
    if problems:
        return False, "NOT SAFE: " + " ".join(p.message for p in problems)
    return True, _ok_text(meta)


def _ok_text(meta: dict[str, Any]) -> str:
    lag = meta.get("drive_lag_seconds")
    shown = f"{lag:.0f}" if isinstance(lag, int | float) else "unknown"
    return (
        f"OK: Drive restores {meta.get('drive_earliest_restorable')} to {meta.get('drive_latest_restorable')} "
        f"(S3 up to {meta.get('s3_latest_restorable')}; lag {shown} s)."
    )


def watch_meta(index: drive.DriveIndex, s3_latest: datetime | None, now: datetime) -> dict[str, Any]:
    """Drive's window from the bundle index (no keys) against the S3 repository's newest moment.

    The S3 side is the archiver's ``last_archived_time`` (what ``pitr_archiving`` shows); when the
    server does not answer, Drive is compared with ``now`` so a stopped copy still alerts.
    """
    window = drive.drive_window(index)
    return {
        **window.metadata(),
        "s3_latest_restorable": _iso(s3_latest) if s3_latest else f"unknown (compared with now, {_iso(now)})",
        "drive_lag_seconds": lag_seconds(s3_latest or now, window.latest),
    }


def drive_health(
    settings: BackupSettings, status: ArchiverStatus | None, now: datetime | None = None
) -> tuple[dict[str, Any], list[Problem]]:
    """For the pitr_archive_health sensor: Drive's copy judged from a listing, as each copy run does."""
    try:
        destination = drive_resource(settings).get_destination()
        index = drive.read_index(destination, settings.installation_id, settings.pitr_stanza)
    except Exception as exc:  # Drive or credential errors of every kind: the archive alerts must still go out
        return {}, [Problem("drive_unreachable", f"cannot list the PITR copies on Drive: {first_line(exc)}")]
    last = status.last_archived_time if status else None
    meta = watch_meta(index, last, now or datetime.now(UTC))
    return meta, drive_problems(meta, settings.pitr_drive_lag_alert_seconds)


def drive_verdict(meta: dict[str, Any], problems: list[Problem]) -> Verdict:
    """The ``pitr_drive_lag`` evaluation; ``state`` changes with the problems or Drive's window only,
    so the sensor records a new evaluation when something changed, not every minute."""
    shown = {
        k: _shown(v)
        for k, v in meta.items()
        if k.endswith("restorable") or any(w in k for w in ("lag", "gap", "segment"))
    }
    if problems:
        text = "NOT SAFE: " + " ".join(p.message for p in problems)
        return Verdict(
            False, dg.AssetCheckSeverity.ERROR, text, shown, state=",".join(p.kind for p in problems)
        )
    state = f"ok|{meta.get('drive_earliest_restorable')}|{meta.get('drive_latest_restorable')}"
    return Verdict(True, dg.AssetCheckSeverity.ERROR, _ok_text(meta), shown, state=state)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _shown(value: Any) -> Any:
    if isinstance(value, float):
        return -1 if value == float("inf") else round(value, 1)
    return value


def restore_database_from_drive(
    settings: BackupSettings,
    request: RestoreRequest,
    *,
    keyring: OrgKeyring | None = None,
    recovery: RecoveryIdentity | None = None,
    log: Callable[[str], None] = lambda _m: None,
    actor: str | None = None,
    field: str = "--target-time",
) -> RestoreReport:
    """The restore from Drive for the CLI (``--pitr-source drive``) and the jobs (``pitr_source: drive``):
    the S3 repository is rebuilt from Drive's base backup + WAL bundles, then restored; audited."""
    from backup_pipeline.services.pitr_drive_restore import restore_from_drive

    report = restore_from_drive(
        drive_resource(settings).get_destination(),
        installation_id=settings.installation_id,
        cfg=svc.engine_config(settings),
        request=request,
        pg_bin=settings.pg_bin_dir,
        keyring=keyring,
        recovery=recovery,
        scratch_root=settings.pitr_config_dir.absolute() / "drive-restore",
        log=log,
        field=field,
    )
    svc.record_restore(settings, report, actor)
    return report


def earlier_live_copy(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """The id of a copy run in progress that was created before ``run_id`` (None: this one is first).

    Of two copies started together the older one goes on and the younger one stops, so one of
    them always does the work.
    """
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=PITR_DRIVE_COPY_JOB, statuses=RUNNING_STATUSES)
    )
    mine = next((r.create_timestamp for r in records if r.dagster_run.run_id == run_id), None)
    for record in records:
        other = record.dagster_run.run_id
        if other != run_id and (mine is None or (record.create_timestamp, other) < (mine, run_id)):
            return other
    return None


def build_pitr_drive_job(settings: BackupSettings) -> dg.JobDefinition:
    resource = drive_resource(settings)  # a bad destination choice fails the code location at load

    @dg.op(name="pitr_drive_copy", out=dg.Out(dg.Nothing))
    def pitr_drive_copy(context: dg.OpExecutionContext, keys: BackupKeysResource) -> None:
        started = time.monotonic()
        # The copy removes an interrupted run's strays first: beside a live copy those strays are
        # that copy's half-written bundle. The schedule skips busy ticks; this covers hand launches.
        if earlier := earlier_live_copy(context.instance, context.run_id):
            raise quiet_failure(
                f"another {PITR_DRIVE_COPY_JOB} run ({earlier}) is still in progress: this run copies nothing; "
                "launch it again once that one ended",
                "PITR_DRIVE_COPY_BUSY",
            )
        try:
            ctx = svc.open_repo(settings, keyring=keys.keyring())
            info = ctx.engine.info()
            report = drive.copy_to_drive(
                resource.get_destination(),
                ctx.client,
                ctx.engine.cfg,
                info,
                installation_id=settings.installation_id,
                keys=drive.CopyKeys(keys.keyring(), _recovery_keys(keys)),
                log=context.log.info,
            )
        except (*ENGINE_ERRORS, drive.PitrDriveError, DestinationError) as exc:
            raise quiet_failure(f"PITR copy to Drive failed: {exc}", "PITR_DRIVE_COPY_FAILED") from None
        status, _problems = read_status(settings)
        segments = svc.archive_segments(ctx.client, ctx.engine.cfg)
        s3_window = svc.recoverable_window(info, segments, status)
        lag = lag_seconds(s3_window.latest, report.window.latest)
        meta: dict[str, Any] = {
            **report.metadata(),
            "s3_earliest_restorable": s3_window.metadata()["earliest_restorable"],
            "s3_latest_restorable": s3_window.metadata()["latest_restorable"],
            "drive_lag_seconds": round(lag, 1) if lag is not None and lag != float("inf") else -1,
            "drive_destination": resource.label,
            "stanza": settings.pitr_stanza,
            "duration_seconds": round(time.monotonic() - started, 1),
        }
        context.log_event(dg.AssetMaterialization(asset_key=PITR_DRIVE_ASSET, metadata=meta))
        passed, text = lag_verdict({**meta, "drive_lag_seconds": lag}, settings.pitr_drive_lag_alert_seconds)
        # Dagster accepts a check evaluation from an op (its stubs do not say so).
        context.log_event(
            dg.AssetCheckEvaluation(  # type: ignore[arg-type]
                asset_key=PITR_DRIVE_ASSET,
                check_name=DRIVE_LAG_CHECK,
                passed=passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description=text,
                metadata={k: v for k, v in meta.items() if k.endswith("restorable") or "lag" in k},
            )
        )
        if not passed:
            raise quiet_failure(text, "PITR_DRIVE_LAG")

    @dg.job(
        name=PITR_DRIVE_COPY_JOB,
        description="Copy new PITR base backups and a bundle of the WAL archived since the last bundle to "
        f"Google Drive ({resource.label}); records Drive's recoverable window on pitr_drive.",
        tags={"backup_pipeline/profile": "pitr"},
    )
    def pitr_drive_copy_job() -> None:
        pitr_drive_copy()

    return pitr_drive_copy_job


def build_pitr_drive_check(settings: BackupSettings) -> dg.AssetChecksDefinition:
    limit = settings.pitr_drive_lag_alert_seconds

    @dg.asset_check(
        asset=PITR_DRIVE_ASSET,
        name=DRIVE_LAG_CHECK,
        description=f"Drive's recoverable window vs the S3 repository's: red when Drive lags by more than {limit} s, "
        "has no restorable base + WAL chain, or its chain has a gap. Evaluated by each pitr_drive_copy_job run and, "
        "from Drive's listing, every minute by the pitr_archive_health sensor.",
    )
    def pitr_drive_lag() -> dg.AssetCheckResult:
        # Judged live from Drive's listing (as the sensor does), not from the last copy run's numbers.
        status, _problems = read_status(settings)
        return drive_verdict(*drive_health(settings, status)).result()

    return pitr_drive_lag


def build_pitr_drive_schedule(settings: BackupSettings) -> dg.ScheduleDefinition:
    if not is_valid_cron_string(settings.pitr_drive_copy_cron):
        raise SettingsError(
            [f"pitr_drive_copy_cron: not a valid cron expression: {settings.pitr_drive_copy_cron!r}"]
        )

    @dg.schedule(
        name=PITR_DRIVE_SCHEDULE,
        job_name=PITR_DRIVE_COPY_JOB,
        cron_schedule=settings.pitr_drive_copy_cron,
        execution_timezone=settings.schedule_timezone,
        description=f"PITR copy to Drive at cron `{settings.pitr_drive_copy_cron}`: new base backups and one "
        "WAL bundle. A tick while one still runs is skipped.",
        default_status=(
            dg.DefaultScheduleStatus.RUNNING
            if settings.schedule_enabled
            else dg.DefaultScheduleStatus.STOPPED
        ),
    )
    def pitr_drive_copy_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        # One copy at a time: a second run would remove the first one's data part as a stray.
        busy = in_progress_runs(context.instance, (PITR_DRIVE_COPY_JOB,))
        if busy:
            return dg.SkipReason(f"skipped: PITR Drive copy {busy[0].run_id[:8]} is still in progress")
        tick = context.scheduled_execution_time
        return dg.RunRequest(run_key=f"pitr-drive-{tick.isoformat()}" if tick else None)

    return pitr_drive_copy_schedule
