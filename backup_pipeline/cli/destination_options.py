"""What the disaster-recovery commands (``restore``, ``fetch``) share: settings aimed at a
destination by their options, and the key files (recovery key or org secret).

Not a command module (no ``cmd_`` prefix): ``cli/__init__.py`` does not register it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from backup_pipeline.settings import BackupSettings, load_settings

if TYPE_CHECKING:
    from backup_pipeline.services.restore import RestoreKeys


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def settings_for(destination_kind: str | None, local_path: Path | None) -> BackupSettings:
    """The settings, with ``--from-destination`` / ``--local-path`` over the environment.

    A ``SettingsError`` is reported by the group (``cli/errors.py``): one line naming every
    bad field, exit 2.
    """
    overrides: dict[str, str] = {}
    if destination_kind:
        overrides["BACKUP_PIPELINE_DESTINATION"] = destination_kind
    if local_path:
        overrides["BACKUP_PIPELINE_LOCAL_DESTINATION_PATH"] = str(local_path)
    return load_settings({**os.environ, **overrides})


def load_keys(recovery_key_file: Path | None, org_secret_file: Path | None) -> RestoreKeys | None:
    """The keys from the given files, ``None`` when neither is given; a bad key file exits 2."""
    from backup_pipeline.archive.errors import ArchiveKeyError
    from backup_pipeline.archive.keys import OrgKeyring, RecoveryIdentity
    from backup_pipeline.services.restore import RestoreKeys

    if recovery_key_file is None and org_secret_file is None:
        return None
    try:
        return RestoreKeys(
            org_keyring=OrgKeyring.from_file(org_secret_file) if org_secret_file else None,
            recovery_identity=RecoveryIdentity.from_file(recovery_key_file) if recovery_key_file else None,
        )
    except (ArchiveKeyError, OSError) as exc:
        fail(f"key file: {exc}", 2)
