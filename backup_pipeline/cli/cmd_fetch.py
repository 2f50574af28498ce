"""``backup-pipeline fetch``: download a backup set (or some parts) to a folder for offline work.

The files are the encrypted parts as stored; ``decrypt``/``verify``/``inspect`` then work on
them on any machine with the recovery key. Reads no secret but the destination's
credentials (the Drive credentials file of the settings); ``--recovery-key-file`` or
``--org-secret-file`` only adds a check of the parts against the set's manifest.
Downloads are ranged and resumable: run the command again after an interruption.

Exit codes: 0 fetched (or already here), 1 the fetch failed (destination unreachable, a file
differs from the listing or the manifest, disk full), 2 bad input (settings, options, key
file, an unknown part, an unusable folder).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from backup_pipeline.settings import DestinationKind, SettingsError, load_settings

if TYPE_CHECKING:
    from backup_pipeline.services.restore import RestoreKeys


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


_KEY_FILE = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)


@click.command("fetch")
@click.option("--backup-id", required=True, help="The backup id, or 'latest' for the newest complete set.")
@click.option(
    "--to",
    "to_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to download into (created if missing); an interrupted fetch resumes here.",
)
@click.option(
    "--part",
    "parts",
    multiple=True,
    help="Only this part, e.g. database or bucket-photos (repeatable); the manifest always comes along.",
)
@click.option("--installation-id", default=None, help="Only sets of this installation (default: any).")
@click.option(
    "--from-destination",
    "destination_kind",
    type=click.Choice([k.value for k in DestinationKind]),
    default=None,
    help="Where the backups are (default: BACKUP_PIPELINE_DESTINATION).",
)
@click.option(
    "--local-path", type=click.Path(path_type=Path), default=None, help="Folder of the local destination."
)
@click.option(
    "--settings-file",
    type=click.Path(dir_okay=False),
    help="dotenv file (default: $BACKUP_PIPELINE_SETTINGS_FILE).",
)
@click.option(
    "--recovery-key-file", type=_KEY_FILE, default=None, help="Also check the parts against the manifest."
)
@click.option(
    "--org-secret-file", type=_KEY_FILE, default=None, help="Or the org secret file, for the same check."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def fetch_command(
    backup_id: str,
    to_dir: Path,
    parts: tuple[str, ...],
    installation_id: str | None,
    destination_kind: str | None,
    local_path: Path | None,
    settings_file: str | None,
    recovery_key_file: Path | None,
    org_secret_file: Path | None,
    as_json: bool,
) -> None:
    """Download a backup set (or some of its parts), checking each file's size and SHA-256."""
    from backup_pipeline.archive.errors import ArchiveError, ArchiveKeyError
    from backup_pipeline.destinations import DestinationError
    from backup_pipeline.resources.destination import DestinationResource
    from backup_pipeline.services import fetch as svc
    from backup_pipeline.services.restore import RestoreError

    overrides: dict[str, str] = {}
    if destination_kind:
        overrides["BACKUP_PIPELINE_DESTINATION"] = destination_kind
    if local_path:
        overrides["BACKUP_PIPELINE_LOCAL_DESTINATION_PATH"] = str(local_path)
    try:
        settings = load_settings({**os.environ, **overrides}, settings_file=settings_file)
    except SettingsError as exc:
        _fail(str(exc), 2)
    keys = _keys(recovery_key_file, org_secret_file)
    destination = DestinationResource.from_settings(settings).get_destination()
    try:
        report = svc.fetch_backup(
            destination,
            backup_id,
            to_dir,
            part_names=parts,
            installation_id=installation_id,
            keys=keys,
            log=lambda message: click.echo(message, err=True),
        )
    except svc.FetchInputError as exc:
        _fail(str(exc), 2)
    except ArchiveKeyError as exc:
        _fail(f"key: {exc}", 2)
    except (svc.FetchError, DestinationError, RestoreError, ArchiveError) as exc:
        _fail(str(exc), 1)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=1))
        return
    total = sum(f.size for f in report.files)
    fetched = sum(f.downloaded for f in report.files)
    click.echo(
        f"backup {report.backup_id} ({report.installation_id}): {len(report.files)} file(s), {total} bytes in "
        f"{to_dir} ({fetched} bytes downloaded now); sizes and SHA-256 match {report.destination}"
        + ("; parts match the manifest" if report.manifest_checked else "")
    )
    manifest = next((f.path for f in report.files if f.part_name == "manifest"), None)
    for fetched_file in report.files:
        if fetched_file.part_name != "manifest" and manifest is not None:
            click.echo(
                f"  offline: backup-pipeline verify {fetched_file.path} --manifest {manifest} --recovery-key-file KEY"
            )


def _keys(recovery_key_file: Path | None, org_secret_file: Path | None) -> RestoreKeys | None:
    from backup_pipeline.archive.errors import ArchiveKeyError
    from backup_pipeline.archive.keys import OrgKeyring, RecoveryIdentity
    from backup_pipeline.services.restore import RestoreKeys

    if recovery_key_file and org_secret_file:
        _fail("give either --recovery-key-file or --org-secret-file, not both", 2)
    if not (recovery_key_file or org_secret_file):
        return None
    try:
        return RestoreKeys(
            org_keyring=OrgKeyring.from_file(org_secret_file) if org_secret_file else None,
            recovery_identity=RecoveryIdentity.from_file(recovery_key_file) if recovery_key_file else None,
        )
    except (ArchiveKeyError, OSError) as exc:
        _fail(f"key file: {exc}", 2)


def register(group: click.Group) -> None:
    group.add_command(fetch_command)
