"""The PITR profile in Dagster: base backups, restore to a moment, the ``pitr_archive`` asset and its checks.

Loaded only when ``pitr_enabled`` (``definitions.py``); thin over ``services/pitr*.py``.

* ``pitr_base_backup_job`` (scheduled by ``pitr_base_backup_schedule``): key store, stanza, base
  backup, expire, then ``pitr_archive`` is materialized with the recoverable window (earliest and
  latest restorable moment), the archive lag and the WAL gap count. A gap in the window fails the
  run after the materialization, so the UI shows the numbers and the failure alert goes out.
* ``pitr_restore_job``: restore to a moment (or ``latest``) into a NEW data directory started on
  another port; reports the moment reached. It never touches the live server, so it needs neither
  the data lease nor a confirmation phrase.
* Checks ``pitr_archiving`` (lag, failures, pg_wal size) and ``pitr_window`` (a base backup exists,
  no gap); the ``pitr_archive_health`` sensor (``sensors.py``) re-evaluates them every minute and
  alerts.

Neither job carries the exclusive run tag: they read the live server (pgBackRest takes its own
lock) and write only the PITR repository or a new directory, so dump backups keep running.
"""

import time
from enum import Enum
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from backup_pipeline.archive.errors import ArchiveError
from backup_pipeline.destinations.base import DestinationError
from backup_pipeline.ops.restore_moment import PITR_REPO_AS_OF_HELP, PITR_SOURCE_HELP, PitrSource
from backup_pipeline.ops.step_errors import quiet_failure, refuse_run
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.safety import Verdict
from backup_pipeline.services import pitr as svc
from backup_pipeline.services.errors import first_line
from backup_pipeline.services.pitr_drive import PitrDriveError
from backup_pipeline.services.pitr_engine import PitrEngineError
from backup_pipeline.services.pitr_keys import PitrKeyError
from backup_pipeline.services.pitr_lock import parse_as_of, read_repo_protection
from backup_pipeline.services.pitr_restore import (
    PitrRestoreFailed,
    PitrRestoreRefused,
    RestoreRequest,
    check_not_future,
    parse_target,
)
from backup_pipeline.services.pitr_status import ArchiverStatus, Problem, archive_problems
from backup_pipeline.settings import BackupSettings, SettingsError

PITR_ARCHIVE_ASSET = dg.AssetKey("pitr_archive")
PITR_BASE_BACKUP_JOB = "pitr_base_backup_job"
PITR_RESTORE_JOB = "pitr_restore_job"
ARCHIVING_CHECK = "pitr_archiving"
WINDOW_CHECK = "pitr_window"
ENGINE_ERRORS = (PitrEngineError, PitrKeyError, svc.PitrSetupError)
#: What a restore from Drive adds (a Drive part missing or changed, a container not opening).
DRIVE_ERRORS = (PitrDriveError, DestinationError, ArchiveError)

PITR_ARCHIVE_SPEC = dg.AssetSpec(
    PITR_ARCHIVE_ASSET,
    description="Point-in-time recovery: the pgBackRest repository (base backups + continuous WAL archive). "
    "Metadata: recoverable window (earliest/latest restorable moment), archive lag, missing WAL segments.",
    group_name="pitr",
)


class BaseBackupType(Enum):
    scheduled = "scheduled"
    full = "full"
    diff = "diff"
    incr = "incr"


class BaseBackupConfig(dg.Config):
    backup_type: BaseBackupType = Field(
        default=BaseBackupType.scheduled,
        description="full, diff or incr; `scheduled`: the pitr_base_backup_type setting.",
    )


class PitrRestoreConfig(dg.Config):
    target_time: str = Field(
        default="latest",
        description="The moment to restore to: ISO-8601 with a UTC offset (2026-05-04T10:41:30+02:00), or `latest`.",
    )
    data_dir: str = Field(description="A NEW (absent or empty) data directory for the restored cluster.")
    port: int = Field(description="Port the restored cluster listens on (127.0.0.1); not the live server's.")
    database: str = Field(
        default="", description="Database whose tables are verified; empty: the application's."
    )
    pitr_source: PitrSource = Field(default=PitrSource.s3, description=PITR_SOURCE_HELP)
    pitr_repo_as_of: str = Field(default="", description=PITR_REPO_AS_OF_HELP)


def limits(settings: BackupSettings) -> dict[str, Any]:
    return {
        "lag_limit_seconds": float(settings.pitr_archive_lag_alert_seconds),
        "wal_limit_bytes": settings.pitr_wal_dir_alert_mb * 2**20,
    }


def read_status(settings: BackupSettings) -> tuple[ArchiverStatus | None, list[Problem]]:
    """The server's archiver status and what is wrong with it (an unreachable server is a problem too)."""
    try:
        status = svc.server_status(settings)
    except Exception as exc:  # psycopg errors of every kind: the verdict must still be produced
        return None, [
            Problem(
                "unreachable",
                f"cannot read the archiver status from the application server as {settings.pitr_pg_user} "
                f"(socket {settings.pitr_pg_socket_dir}, port {settings.pitr_pg_port}): {first_line(exc)}",
            )
        ]
    return status, archive_problems(status, **limits(settings))


def archiving_verdict(status: ArchiverStatus | None, problems: list[Problem]) -> Verdict:
    meta: dict[str, Any] = status.metadata() if status else {}
    if problems:
        return Verdict(
            False, dg.AssetCheckSeverity.ERROR, "NOT SAFE: " + " ".join(p.message for p in problems), meta
        )
    assert status is not None
    return Verdict(
        True,
        dg.AssetCheckSeverity.ERROR,
        f"OK: archive lag {status.archive_lag_seconds:.0f} s; latest restorable moment "
        f"{meta['last_archived_time']} ({status.last_archived_wal or 'nothing archived yet'}).",
        meta,
    )


def _latest_window(instance: dg.DagsterInstance) -> dict[str, Any] | None:
    event = instance.get_latest_materialization_event(PITR_ARCHIVE_ASSET)
    if event is None or event.asset_materialization is None:
        return None
    return {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}


def window_verdict(instance: dg.DagsterInstance, status: ArchiverStatus | None) -> Verdict:
    last = _latest_window(instance)
    if last is None:
        return Verdict(
            False,
            dg.AssetCheckSeverity.ERROR,
            f"NOT SAFE: no PITR base backup yet. Launch {PITR_BASE_BACKUP_JOB}.",
            {},
        )
    latest = status.metadata()["last_archived_time"] if status else last.get("latest_restorable", "none")
    meta = {
        "earliest_restorable": last.get("earliest_restorable", "none"),
        "latest_restorable": latest,
        "newest_base_backup": last.get("newest_base_backup", "none"),
        "wal_missing_segments": last.get("wal_missing_segments", 0),
    }
    if int(meta["wal_missing_segments"] or 0):
        return Verdict(
            False,
            dg.AssetCheckSeverity.ERROR,
            f"NOT SAFE: {meta['wal_missing_segments']} WAL segment(s) missing in the window (e.g. "
            f"{last.get('wal_missing_examples')}): moments after the gap cannot be reached from older base "
            f"backups. Run {PITR_BASE_BACKUP_JOB} (a full backup) to start a gap-free window.",
            meta,
        )
    return Verdict(
        True,
        dg.AssetCheckSeverity.ERROR,
        f"OK: restorable from {meta['earliest_restorable']} to {meta['latest_restorable']}.",
        meta,
    )


def _recovery_keys(keys: BackupKeysResource) -> list[Any]:
    current = keys.recovery_public_key()
    others = [k for k in keys.recovery_store().public_keys().values() if k != current]
    return [current, *others]


def restore_in_run(
    context: dg.OpExecutionContext,
    settings: BackupSettings,
    config: PitrRestoreConfig,
    keys: BackupKeysResource,
    *,
    field: str = "target_time",
    output_name: str | None = None,
) -> dict[str, Any]:
    """The PITR restore of ``pitr_restore_job`` and of ``restore_job`` given a ``target_time``.

    A bad request ends the run refused (nothing touched; the message names the field and, for a
    moment outside it, the recoverable window); a failed restore fails it quietly with its code.
    """
    source = PitrSource(config.pitr_source)
    as_of_field = "pitr_repo_as_of"
    try:
        target = parse_target(config.target_time, field=field)
        check_not_future(target, field)  # before the repository is even opened
        repo_as_of = (
            parse_as_of(config.pitr_repo_as_of, as_of_field) if config.pitr_repo_as_of.strip() else None
        )
        check_not_future(repo_as_of, as_of_field)
    except (ValueError, PitrRestoreRefused) as exc:
        refuse_run(context, str(exc), code="PITR_TARGET_INVALID")
    if repo_as_of is not None and source is not PitrSource.s3:
        refuse_run(
            context,
            f"{as_of_field} reads the S3 repository's object versions; pitr_source {source.value} has none: "
            "leave one of them empty",
            code="PITR_TARGET_INVALID",
        )
    if not config.data_dir.strip() or config.port <= 0:
        refuse_run(
            context,
            f"data_dir and port are required with {field}: a NEW (absent or empty) data directory and a "
            "free port other than the live server's, for the restored copy",
            code="PITR_TARGET_INVALID",
        )
    request = RestoreRequest(
        target=target,
        data_dir=Path(config.data_dir),
        port=config.port,
        database=config.database or settings.app_database_name,
    )
    try:
        if source is PitrSource.drive:
            from backup_pipeline.ops.pitr_drive import restore_database_from_drive

            report = restore_database_from_drive(
                settings,
                request,
                keyring=keys.keyring(),
                log=context.log.info,
                actor=f"dagster run {context.run_id}",
                field=field,
            )
        else:
            report = svc.restore_database_to_moment(
                settings,
                request,
                keyring=keys.keyring(),
                log=context.log.info,
                actor=f"dagster run {context.run_id}",
                field=field,
                repo_as_of=repo_as_of,
                as_of_field=as_of_field,
            )
    except SettingsError as exc:  # no google_drive destination to restore from
        refuse_run(context, f"pitr_source {source.value}: {exc}", code="PITR_RESTORE_REFUSED")
    except PitrRestoreRefused as exc:
        refuse_run(context, f"refused, nothing was changed: {exc}", code="PITR_RESTORE_REFUSED")
    except (PitrRestoreFailed, *ENGINE_ERRORS, *DRIVE_ERRORS) as exc:
        raise quiet_failure(f"PITR restore failed: {exc}", "PITR_RESTORE_FAILED") from None
    result = report.as_dict()
    context.add_output_metadata({k: v for k, v in result.items() if v is not None}, output_name=output_name)
    context.log.info(
        f"restored to {result['reached']} (target {result['target']}) in {result['data_dir']}, port "
        f"{result['port']}: {result['tables']} tables, {result['rows']} rows readable"
    )
    return result


def build_pitr_jobs(settings: BackupSettings) -> list[dg.JobDefinition]:
    @dg.op(name="pitr_base_backup", out=dg.Out(dg.Nothing))
    def pitr_base_backup(
        context: dg.OpExecutionContext, config: BaseBackupConfig, keys: BackupKeysResource
    ) -> None:
        backup_type = (
            settings.pitr_base_backup_type
            if config.backup_type is BaseBackupType.scheduled
            else BaseBackupType(config.backup_type).value
        )
        started = time.monotonic()
        try:
            ctx = svc.open_repo(
                settings, keyring=keys.keyring(), recovery_keys=_recovery_keys(keys), create_keystore=True
            )
            info = svc.run_base_backup(ctx, backup_type)
            segments = svc.archive_segments(ctx.client, ctx.engine.cfg)
        except ENGINE_ERRORS as exc:
            raise quiet_failure(f"PITR base backup failed: {exc}", "PITR_BASE_BACKUP_FAILED") from None
        protection = read_repo_protection(ctx.client, settings.pitr_repo_s3_bucket)
        status, problems = read_status(settings)
        window = svc.recoverable_window(info, segments, status)
        newest = info.usable_backups[-1] if info.usable_backups else None
        metadata: dict[str, Any] = {
            **window.metadata(),
            **(status.metadata() if status else {}),
            "backup_type": backup_type,
            "backup_label": newest.label if newest else "none",
            "backup_bytes": newest.size_bytes if newest else 0,
            "backup_repo_bytes": newest.repo_bytes if newest else 0,
            "duration_seconds": round(time.monotonic() - started, 1),
            "repository": f"{settings.pitr_repo_s3_endpoint}/{settings.pitr_repo_s3_bucket}{settings.pitr_repo_path}",
            "stanza": settings.pitr_stanza,
            # what the bucket says (read each run, never configured): docs/architecture/PITR.md §3
            **protection.metadata(),
        }
        context.log_event(dg.AssetMaterialization(asset_key=PITR_ARCHIVE_ASSET, metadata=metadata))
        for problem in problems:
            context.log.warning(problem.message)
        context.log.info(protection.summary())
        if window.missing:
            raise quiet_failure(
                f"{len(window.missing)} WAL segment(s) missing between {window.first_segment} and "
                f"{window.last_segment} (e.g. {', '.join(window.missing[:3])})",
                "PITR_WAL_GAP",
            )

    @dg.job(
        name=PITR_BASE_BACKUP_JOB,
        description=f"PITR base backup with pgBackRest ({settings.pitr_base_backup_type} by schedule), then "
        f"expire (keeps {max(settings.retention_keep_last, 1)} full backups and the WAL they need) and the "
        "recoverable window recorded on pitr_archive.",
        tags={"backup_pipeline/profile": "pitr"},
    )
    def pitr_base_backup_job() -> None:
        pitr_base_backup()

    @dg.op(name="pitr_restore")
    def pitr_restore(
        context: dg.OpExecutionContext, config: PitrRestoreConfig, keys: BackupKeysResource
    ) -> dict[str, Any]:
        return restore_in_run(context, settings, config, keys)

    @dg.job(
        name=PITR_RESTORE_JOB,
        description="Restore the database to a moment (or latest) into a NEW data directory on another port, "
        "verify it and report the moment reached. Never touches the live server.",
        tags={"backup_pipeline/profile": "pitr"},
    )
    def pitr_restore_job() -> None:
        pitr_restore()

    return [pitr_base_backup_job, pitr_restore_job]


def build_pitr_checks(settings: BackupSettings) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(
        asset=PITR_ARCHIVE_ASSET,
        name=ARCHIVING_CHECK,
        description=f"Is WAL reaching the repository? Red when archiving fails, the oldest waiting segment is "
        f"older than {settings.pitr_archive_lag_alert_seconds} s, or pg_wal exceeds "
        f"{settings.pitr_wal_dir_alert_mb} MiB. Re-evaluated every minute by pitr_archive_health.",
    )
    def pitr_archiving() -> dg.AssetCheckResult:
        return archiving_verdict(*read_status(settings)).result()

    @dg.asset_check(
        asset=PITR_ARCHIVE_ASSET,
        name=WINDOW_CHECK,
        description="The recoverable window: earliest (oldest kept base backup) to latest restorable moment; red "
        "without a base backup or with missing WAL segments.",
    )
    def pitr_window(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        status, _problems = read_status(settings)
        return window_verdict(context.instance, status).result()

    return [pitr_archiving, pitr_window]
