"""``backup-pipeline restore --target-time``: point-in-time recovery from the PITR repository.

``--pitr-source drive``: the S3 repository is gone; it is rebuilt from the base backups and WAL
bundles on the Google Drive destination (``services/pitr_drive_restore.py``) with Drive's
credentials and the recovery key alone.

Not a command module (no ``cmd_`` prefix): ``cmd_restore.py`` calls :func:`restore_to_time` when
``--target-time`` is given. Needs the PITR settings, the repository's S3 keys
(``BACKUP_PIPELINE_PITR_S3_*``) and the recovery key (or the org secret): the repository
passphrase is opened from the key store beside the repository. Restores into a NEW data directory
started on another port; never over the live server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from backup_pipeline.cli.destination_options import fail
from backup_pipeline.services.restore import RestoreKeys
from backup_pipeline.settings import BackupSettings

if TYPE_CHECKING:
    from backup_pipeline.services.pitr_restore import RestoreReport, RestoreRequest


def restore_to_time(
    settings: BackupSettings,
    keys: RestoreKeys,
    *,
    target_time: str,
    data_dir: Path | None,
    port: int | None,
    database: str | None,
    as_json: bool,
    source: str = "s3",
    repo_as_of: str | None = None,
) -> None:
    from backup_pipeline.services import pitr
    from backup_pipeline.services.pitr_engine import PitrEngineError
    from backup_pipeline.services.pitr_keys import PitrKeyError
    from backup_pipeline.services.pitr_restore import (
        PitrRestoreFailed,
        PitrRestoreRefused,
        RestoreRequest,
        parse_target,
    )

    if data_dir is None or port is None:
        fail("--target-time needs --data-dir (a new, empty directory) and --port (not the live server's)", 2)
    from backup_pipeline.services.pitr_lock import parse_as_of

    try:
        target = parse_target(target_time, field="--target-time")
        as_of = parse_as_of(repo_as_of, "--pitr-repo-as-of") if repo_as_of is not None else None
    except ValueError as exc:
        fail(str(exc), 2)
    if as_of is not None and source != "s3":
        fail(
            "--pitr-repo-as-of reads the S3 repository's object versions: it does not apply to --pitr-source drive",
            2,
        )
    request = RestoreRequest(
        target=target, data_dir=data_dir, port=port, database=database or settings.app_database_name
    )
    from backup_pipeline.archive.errors import ArchiveError
    from backup_pipeline.destinations.base import DestinationError
    from backup_pipeline.services.pitr_drive import PitrDriveError
    from backup_pipeline.settings import SettingsError

    try:
        if source == "drive":
            report = _restore_from_drive(settings, keys, request)
        else:
            report = pitr.restore_database_to_moment(
                settings,
                request,
                keyring=keys.org_keyring,
                recovery=keys.recovery_identity,
                log=lambda message: click.echo(message, err=True),
                field="--target-time",
                repo_as_of=as_of,
                as_of_field="--pitr-repo-as-of",
            )
    except (pitr.PitrSetupError, SettingsError) as exc:
        fail(str(exc), 2)
    except PitrRestoreRefused as exc:
        fail(f"refused, nothing was changed: {exc}", 1)
    except (
        PitrRestoreFailed,
        PitrEngineError,
        PitrKeyError,
        PitrDriveError,
        DestinationError,
        ArchiveError,
    ) as exc:
        fail(str(exc), 1)
    result = report.as_dict()
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    click.echo(
        f"restored to {result['reached']} (target {result['target']}, base backup {result['backup_set']})"
    )
    if result.get("repo_as_of"):
        click.echo(f"  from the repository as it was at {result['repo_as_of']}")
    click.echo(f"  {result['tables']} tables, {result['rows']} rows readable in {result['database']}")
    click.echo(f"  running on port {result['port']}: {result['connect']}")
    click.echo(f"  stop it with: {result['stop']}")


def _restore_from_drive(
    settings: BackupSettings, keys: RestoreKeys, request: RestoreRequest
) -> RestoreReport:
    """The S3 repository is gone: rebuild it from Drive's base backup + WAL bundles, then restore."""
    from backup_pipeline.ops.pitr_drive import restore_database_from_drive

    return restore_database_from_drive(
        settings,
        request,
        keyring=keys.org_keyring,
        recovery=keys.recovery_identity,
        log=lambda message: click.echo(message, err=True),
    )
