"""``restore_job``'s first step: a ``target_time`` routes the run to point-in-time recovery (issue 20).

Without ``target_time`` (the default) this step only emits ``backup_set`` and the backup-set restore
runs exactly as before. With it, the PITR restore runs here — the same code as ``pitr_restore_job``
(``ops/pitr.restore_in_run``): a NEW data directory started on another port, verified, the moment
reached reported — and ``backup_set`` is not emitted, so Dagster skips ``start_restore`` and every
step after it (they wait on that output). The live server is never written on this path, which is
why it needs neither the confirmation phrase nor the safety backup of a backup-set restore:
switching the application to the restored copy is the operator's step (BACKUP-RESTORE-GUIDE.md §7).

Kept out of ``ops/restore.py`` so the profile's modules load only when a run asks for a moment.
"""

from collections.abc import Iterator
from enum import Enum
from typing import Any

import dagster as dg
from pydantic import Field

from backup_pipeline.ops.step_errors import refuse_run
from backup_pipeline.resources.keys import BackupKeysResource

RESTORE_TO_MOMENT_OP = "restore_to_moment"
#: The output ``start_restore`` waits on: emitted only when no target time was given.
BACKUP_SET_OUTPUT = "backup_set"
TAG_TARGET_TIME = "backup_pipeline/target_time"
TAG_PITR_SOURCE = "backup_pipeline/pitr_source"


class PitrSource(Enum):
    """Where a PITR restore reads base backups and WAL from (an enum: Dagster refuses other values at launch)."""

    s3 = "s3"  # the pgBackRest repository (the normal case)
    drive = "drive"  # the copies on Google Drive (pitr_drive_copy_job), when the S3 repository is lost


PITR_SOURCE_HELP = (
    "s3 (default): the pgBackRest repository; drive: rebuilt from the base backups and WAL bundles "
    "pitr_drive_copy_job put on the Google Drive destination (when the S3 repository is lost)."
)

PITR_REPO_AS_OF_HELP = (
    "Empty (default): the repository as it is. A moment (ISO-8601 with a UTC offset) before the repository "
    "was damaged or tampered with: restore from the repository as it was then, read from its bucket's object "
    "versions (needs versioning / object lock on the repository bucket; s3 source only)."
)


class RestoreToMomentConfig(dg.Config):
    target_time: str = Field(
        default="",
        description="Empty: restore a backup set (configure start_restore). Otherwise point-in-time recovery "
        "(PITR profile): `latest` or a moment, ISO-8601 with a UTC offset (2026-05-04T10:41:30+02:00), inside "
        "the recoverable window; the backup-set steps are then skipped.",
    )
    data_dir: str = Field(
        default="",
        description="With target_time: a NEW (absent or empty) data directory for the restored copy.",
    )
    port: int = Field(
        default=0, description="With target_time: a free port for the restored copy, not the live server's."
    )
    database: str = Field(
        default="",
        description="With target_time: database whose tables are verified; empty: the application's.",
    )
    pitr_source: PitrSource = Field(
        default=PitrSource.s3, description="With target_time: " + PITR_SOURCE_HELP
    )
    pitr_repo_as_of: str = Field(default="", description="With target_time: " + PITR_REPO_AS_OF_HELP)


@dg.op(
    name=RESTORE_TO_MOMENT_OP,
    out={
        BACKUP_SET_OUTPUT: dg.Out(dg.Nothing, is_required=False),
        "moment": dg.Out(dict, is_required=False),
    },
    description="With target_time: point-in-time recovery into a NEW data directory, verified, the moment "
    "reached reported; the backup-set steps are skipped. Without: nothing (the backup-set restore runs).",
)
def restore_to_moment(
    context: dg.OpExecutionContext, config: RestoreToMomentConfig, keys: BackupKeysResource
) -> Iterator[dg.Output[Any]]:
    if not config.target_time.strip():
        if config.pitr_repo_as_of.strip():
            refuse_run(
                context,
                "pitr_repo_as_of needs target_time (`latest` or a moment): without it restore_job restores a "
                "backup set",
                code="PITR_TARGET_INVALID",
            )
        if PitrSource(config.pitr_source) is not PitrSource.s3:
            # a source without a moment would silently restore a backup set from the usual destination
            refuse_run(
                context,
                "pitr_source drive needs target_time (`latest` or a moment): without it restore_job restores "
                "a backup set",
                code="PITR_TARGET_INVALID",
            )
        yield dg.Output(None, BACKUP_SET_OUTPUT)
        return
    from backup_pipeline.ops import pitr as pitr_ops
    from backup_pipeline.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        refuse_run(context, f"target_time: the settings do not load: {exc}", code="PITR_TARGET_INVALID")
    if not settings.pitr_enabled:
        refuse_run(
            context,
            "target_time: point-in-time recovery is off (BACKUP_PIPELINE_PITR_ENABLED=false), so there is no "
            "WAL archive to restore from; leave target_time empty to restore a backup set, or set up the "
            "PITR profile (DEPLOYMENT.md)",
            code="PITR_TARGET_INVALID",
        )
    source = PitrSource(config.pitr_source)
    context.instance.add_run_tags(
        context.run_id, {TAG_TARGET_TIME: config.target_time.strip(), TAG_PITR_SOURCE: source.value}
    )
    request = pitr_ops.PitrRestoreConfig(
        target_time=config.target_time,
        data_dir=config.data_dir,
        port=config.port,
        database=config.database,
        pitr_source=source,
        pitr_repo_as_of=config.pitr_repo_as_of,
    )
    yield dg.Output(pitr_ops.restore_in_run(context, settings, request, keys, output_name="moment"), "moment")
