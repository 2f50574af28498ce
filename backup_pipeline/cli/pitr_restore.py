"""``backup-pipeline restore --target-time``: point-in-time recovery from the PITR repository.

Not a command module (no ``cmd_`` prefix): ``cmd_restore.py`` calls :func:`restore_to_time` when
``--target-time`` is given. Needs the PITR settings, the repository's S3 keys
(``BACKUP_PIPELINE_PITR_S3_*``) and the recovery key (or the org secret): the repository
passphrase is opened from the key store beside the repository. Restores into a NEW data directory
started on another port; never over the live server.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from backup_pipeline.cli.destination_options import fail
from backup_pipeline.services.restore import RestoreKeys
from backup_pipeline.settings import BackupSettings


def restore_to_time(
    settings: BackupSettings,
    keys: RestoreKeys,
    *,
    target_time: str,
    data_dir: Path | None,
    port: int | None,
    database: str | None,
    as_json: bool,
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
    try:
        target = parse_target(target_time, field="--target-time")
    except ValueError as exc:
        fail(str(exc), 2)
    request = RestoreRequest(
        target=target, data_dir=data_dir, port=port, database=database or settings.app_database_name
    )
    try:
        report = pitr.restore_database_to_moment(
            settings,
            request,
            keyring=keys.org_keyring,
            recovery=keys.recovery_identity,
            log=lambda message: click.echo(message, err=True),
            field="--target-time",
        )
    except pitr.PitrSetupError as exc:
        fail(str(exc), 2)
    except PitrRestoreRefused as exc:
        fail(f"refused, nothing was changed: {exc}", 1)
    except (PitrRestoreFailed, PitrEngineError, PitrKeyError) as exc:
        fail(str(exc), 1)
    result = report.as_dict()
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    click.echo(
        f"restored to {result['reached']} (target {result['target']}, base backup {result['backup_set']})"
    )
    click.echo(f"  {result['tables']} tables, {result['rows']} rows readable in {result['database']}")
    click.echo(f"  running on port {result['port']}: {result['connect']}")
    click.echo(f"  stop it with: {result['stop']}")
