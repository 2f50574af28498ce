"""What the disaster-recovery commands (``restore``, ``fetch``) share: the options that aim
them at a destination (:func:`destination_options`) and name the key files
(:func:`key_file_options`), the settings those options override, and the key files read.

Not a command module (no ``cmd_`` prefix): ``cli/__init__.py`` does not register it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar

import click

from backup_pipeline.settings import BackupSettings, DestinationKind, load_settings

if TYPE_CHECKING:
    from backup_pipeline.services.restore import RestoreKeys


F = TypeVar("F", bound=Callable[..., object])

#: A key file the operator names: must exist and be readable (click says so, exit 2).
KEY_FILE = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)


def destination_options(fn: F) -> F:
    """``--from-destination``, ``--local-path`` and ``--installation-id``: where the backups are,
    over the settings (:func:`settings_for`), and whose sets to consider."""
    fn = click.option(
        "--installation-id", default=None, help="Only sets of this installation (default: any)."
    )(fn)
    fn = click.option(
        "--local-path",
        type=click.Path(path_type=Path),
        default=None,
        help="Folder of the local destination (BACKUP_PIPELINE_LOCAL_DESTINATION_PATH).",
    )(fn)
    return click.option(
        "--from-destination",
        "destination_kind",
        type=click.Choice([k.value for k in DestinationKind]),
        default=None,
        help="Where the backups are (default: BACKUP_PIPELINE_DESTINATION). Google Drive credentials come "
        "from the BACKUP_PIPELINE_DRIVE_* settings.",
    )(fn)


def key_file_options(*, recovery_help: str, org_secret_help: str) -> Callable[[F], F]:
    """``--recovery-key-file`` and ``--org-secret-file`` (read by :func:`load_keys`)."""

    def decorate(fn: F) -> F:
        fn = click.option("--org-secret-file", type=KEY_FILE, default=None, help=org_secret_help)(fn)
        return click.option("--recovery-key-file", type=KEY_FILE, default=None, help=recovery_help)(fn)

    return decorate


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
    if overrides:
        # Aimed at one destination by hand: the named destinations of the settings do not apply.
        overrides["BACKUP_PIPELINE_DESTINATIONS"] = ""
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
