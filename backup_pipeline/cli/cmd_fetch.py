"""``backup-pipeline fetch``: download a backup set (or some parts) to a folder for offline work.

The files are the encrypted parts as stored; ``decrypt``/``verify``/``inspect`` then work on
them on any machine with the recovery key. The destination comes from the settings (the
environment, or ``BACKUP_PIPELINE_SETTINGS_FILE``) or ``--from-destination``/``--local-path``.
Reads no secret but the destination's credentials (the Drive credentials file of the
settings); ``--recovery-key-file`` or ``--org-secret-file`` only adds a check of the parts
against the set's manifest.
Downloads are ranged and resumable: run the command again after an interruption.

Exit codes: 0 fetched (or already here), 1 the fetch failed (destination unreachable, a file
differs from the listing or the manifest, disk full), 2 bad input (settings, options, key
file, an unknown part, an unusable folder).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from backup_pipeline.cli.destination_options import (
    destination_options,
    fail,
    key_file_options,
    load_keys,
    settings_for,
)


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
@destination_options
@key_file_options(
    recovery_help="Also check the parts against the manifest.",
    org_secret_help="Or the org secret file, for the same check.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def fetch_command(
    backup_id: str,
    to_dir: Path,
    parts: tuple[str, ...],
    installation_id: str | None,
    destination_kind: str | None,
    local_path: Path | None,
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

    settings = settings_for(destination_kind, local_path)
    keys = load_keys(recovery_key_file, org_secret_file)
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
        fail(str(exc), 2)
    except ArchiveKeyError as exc:
        fail(f"key: {exc}", 2)
    except (svc.FetchError, DestinationError, RestoreError, ArchiveError) as exc:
        fail(str(exc), 1)
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


def register(group: click.Group) -> None:
    group.add_command(fetch_command)
