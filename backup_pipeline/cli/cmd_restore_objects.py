"""``backup-pipeline restore-objects``: one object, some objects or one prefix of a bucket from a
set, into an S3 bucket or a local folder, reading only the byte ranges that hold them.

Uses the set's part index (BACKUP-FORMAT.md §8); an incremental set's inventory says which part
(its own or an older set's) holds each object, read through that part's index. A set written
before indexes existed is read whole (slower, same result). Each chunk read is authenticated, each object's SHA-256 compared
with the index and the manifest. Objects of the same key in the target are overwritten.

Exit codes: 0 restored, 1 the restore failed or was refused (no such object, damaged part,
destination or S3 unreachable), 2 bad input (missing or mistyped key, bad option, settings).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from backup_pipeline.cli.destination_options import (
    destination_options,
    fail,
    key_file_options,
    load_keys,
    settings_for,
)
from backup_pipeline.settings import S3_ACCESS_KEY_ENV, S3_SECRET_KEY_ENV


@click.command("restore-objects")
@destination_options
@key_file_options(
    recovery_help="File holding the recovery key (BP-RECOVERY-SECRET-1…).",
    org_secret_help="Alternatively the org secret file.",
)
@click.option("--backup-id", default="latest", show_default=True, help="Backup id, or latest.")
@click.option("--bucket", required=True, help="The bucket the objects were backed up from.")
@click.option("--key", "object_keys", multiple=True, help="Exact object key to restore (repeatable).")
@click.option("--prefix", default=None, help="Restore every object whose key starts with this.")
@click.option("--to-bucket", default=None, help="Put the objects into this bucket of the app's S3 server.")
@click.option(
    "--to-folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Or write the object bodies under this folder (at their safe tar paths).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def restore_objects_command(
    destination_kind: str | None,
    local_path: Path | None,
    installation_id: str | None,
    recovery_key_file: Path | None,
    org_secret_file: Path | None,
    backup_id: str,
    bucket: str,
    object_keys: tuple[str, ...],
    prefix: str | None,
    to_bucket: str | None,
    to_folder: Path | None,
    as_json: bool,
) -> None:
    """Restore one object, named objects or a prefix of one bucket, reading only their byte ranges."""
    if not object_keys and prefix is None:
        fail("--key or --prefix: name at least one object key or a prefix", 2)
    if (to_bucket is None) == (to_folder is None):
        fail("--to-bucket or --to-folder: give exactly one target", 2)
    keys = load_keys(recovery_key_file, org_secret_file)
    if keys is None:
        fail("--recovery-key-file (or --org-secret-file) is required", 2)
    settings = settings_for(destination_kind, local_path)

    from backup_pipeline.archive.errors import ArchiveError, ArchiveKeyError
    from backup_pipeline.resources.destination import DestinationResource
    from backup_pipeline.services.restore import RestoreError, RestoreRefused, resolve_backup
    from backup_pipeline.services.restore.single_object import (
        FolderTarget,
        ObjectTarget,
        S3Target,
        restore_objects,
        restore_selection,
    )

    target: ObjectTarget
    if to_folder is not None:
        target = FolderTarget(to_folder)
    else:
        from backup_pipeline.resources.s3 import S3Resource

        access, secret = os.environ.get(S3_ACCESS_KEY_ENV), os.environ.get(S3_SECRET_KEY_ENV)
        if not access or not secret:
            fail(f"--to-bucket needs the S3 credentials in {S3_ACCESS_KEY_ENV} and {S3_SECRET_KEY_ENV}", 2)
        client = S3Resource(
            endpoint=settings.s3_endpoint, access_key=access, secret_key=secret, region=settings.s3_region
        ).client()
        assert to_bucket is not None
        target = S3Target(client, to_bucket)
    destination = DestinationResource.from_settings(settings).get_destination()
    try:
        resolved = resolve_backup(destination, keys, backup_id, installation_id=installation_id)
        report = restore_objects(
            destination,
            keys,
            resolved,
            bucket,
            restore_selection(object_keys, prefix),
            target,
            on_object=None if as_json else lambda key, n: click.echo(f"restored {key!r} ({n} bytes)"),
        )
    except RestoreRefused as exc:
        fail(f"refused, nothing was changed: {exc}", 1)
    except RestoreError as exc:
        fail(str(exc), 1)
    except ArchiveKeyError as exc:
        fail(f"key: {exc}", 2)
    except ArchiveError as exc:
        fail(str(exc), 1)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=1))
        return
    how = (
        "ranged reads through the part index"
        if report.indexed
        else "whole parts (a part the set reads has no index)"
    )
    inventory = (
        f" + {report.inventory_bytes_downloaded} bytes of the inventory"
        if report.inventory_bytes_downloaded
        else ""
    )
    click.echo(
        f"{len(report.objects)} object(s), {report.object_bytes} bytes, restored from backup {report.backup_id} "
        f"into {report.target}; downloaded {report.part_bytes_downloaded} bytes of bucket parts "
        f"+ {report.index_bytes_downloaded} bytes of their index{inventory} ({how})"
    )
    for key in report.missing:
        click.echo(f"not in the backup: {key!r}")


def register(group: click.Group) -> None:
    group.add_command(restore_objects_command)
