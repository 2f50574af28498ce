"""``backup-pipeline restore``: disaster recovery on a fresh machine.

Needs only the destination's credentials (Drive, or a local folder) and the recovery key
file — no ledger, no org secret, no Dagster instance. Lists the backup sets it finds by
their file properties, then restores the chosen one into the configured PostgreSQL and S3
endpoint with the same verification, conflict policies and dry run as the restore job.

Exit codes: 0 success, 1 the restore failed or was refused (damaged or incomplete set,
pg_restore error, destination, S3 or PostgreSQL unreachable), 2 bad input (missing or mistyped
key, bad option, bad settings). ``--list`` reads only file properties and needs no key. Errors
not handled here are reported by the group (``cli/__init__.py``): one line, no traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from backup_pipeline.archive.errors import ArchiveError, ArchiveKeyError
from backup_pipeline.cli.destination_options import (
    destination_options,
    fail,
    key_file_options,
    load_keys,
    settings_for,
)
from backup_pipeline.services import restore as svc
from backup_pipeline.settings import (
    APP_DATABASE_PASSWORD_ENV,
    S3_ACCESS_KEY_ENV,
    S3_SECRET_KEY_ENV,
    load_settings,
)


def _load_keys(recovery_key_file: Path | None, org_secret_file: Path | None) -> svc.RestoreKeys:
    keys = load_keys(recovery_key_file, org_secret_file)
    if keys is None:
        fail("--recovery-key-file (or --org-secret-file) is required", 2)
    return keys


@click.command("restore")
@destination_options
@key_file_options(
    recovery_help="File holding the recovery key (BP-RECOVERY-SECRET-1…) exported at set-up.",
    org_secret_help="Alternatively the org secret file, when the server's keys survived.",
)
@click.option("--list", "list_only", is_flag=True, help="Only list the backup sets found, newest first.")
@click.option(
    "--destination",
    "destination_name",
    default=None,
    help="With several destinations (BACKUP_PIPELINE_DESTINATIONS): read only this one. Default: every "
    "destination in settings order, the set read from the first reachable one holding it complete.",
)
@click.option("--backup-id", default=svc.LATEST, show_default=True, help="Backup id to restore, or latest.")
@click.option(
    "--scope", type=click.Choice([s.value for s in svc.RestoreScope]), default="full", show_default=True
)
@click.option("--bucket", "buckets", multiple=True, help="Restore only this bucket (repeatable).")
@click.option("--key-prefix", default="", help="Restore only objects whose key starts with this.")
@click.option(
    "--conflict-policy",
    type=click.Choice([p.value for p in svc.ConflictPolicy]),
    default="skip",
    show_default=True,
    help="What to do with objects that already exist.",
)
@click.option("--target-database", default=None, help="Restore into this database (default: the app's).")
@click.option("--schema-only", is_flag=True, help="Restore the database schema only.")
@click.option(
    "--ownership",
    type=click.Choice([o.value for o in svc.Ownership]),
    default=svc.Ownership.SOURCE.value,
    show_default=True,
    help="source: objects keep the backup's owners and grants (the roles must exist here); "
    "none: the restoring role owns everything, grants are skipped (a new server without those roles).",
)
@click.option(
    "--keep-previous-database",
    is_flag=True,
    help="Keep the database the restore replaces as bp_replaced_<token> (also allows replacing a "
    "non-empty database without a safety backup).",
)
@click.option(
    "--on-unrestorable",
    type=click.Choice([o.value for o in svc.OnUnrestorable]),
    default=svc.OnUnrestorable.FAIL.value,
    show_default=True,
    help="An object the target S3 server cannot hold exactly (refused key, other headers served): fail "
    "stops and rolls the buckets back; continue restores the rest and lists each such object.",
)
@click.option(
    "--dry-run/--no-dry-run", default=True, show_default=True, help="Only report what would change."
)
@click.option("--confirm", default="", help="For --no-dry-run: 'restore <backup id>'.")
@click.option(
    "--skip-safety-backup",
    is_flag=True,
    help="Replace a non-empty database without a safety backup (needed when no org secret is available).",
)
@click.option(
    "--target-time",
    default=None,
    help="PITR: restore the database to this moment (ISO-8601 with offset) or 'latest' from the PITR "
    "repository, into --data-dir on --port. Other options except the keys do not apply.",
)
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="PITR: a new data directory.")
@click.option(
    "--pitr-source",
    type=click.Choice(["s3", "drive"]),
    default="s3",
    show_default=True,
    help="PITR: restore from the S3 repository, or rebuild it from the base backups and WAL bundles on the "
    "Google Drive destination (needs only Drive's credentials and the recovery key).",
)
@click.option(
    "--pitr-repo-as-of",
    default=None,
    help="PITR: restore from the S3 repository as it was at this moment (ISO-8601 with offset), read from its "
    "bucket's object versions: the way back after the repository was damaged or tampered with (object lock).",
)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="PITR: port of the restored cluster."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def restore_command(
    destination_kind: str | None,
    local_path: Path | None,
    recovery_key_file: Path | None,
    org_secret_file: Path | None,
    list_only: bool,
    destination_name: str | None,
    backup_id: str,
    installation_id: str | None,
    scope: str,
    buckets: tuple[str, ...],
    key_prefix: str,
    conflict_policy: str,
    target_database: str | None,
    schema_only: bool,
    ownership: str,
    keep_previous_database: bool,
    on_unrestorable: str,
    dry_run: bool,
    confirm: str,
    skip_safety_backup: bool,
    target_time: str | None,
    data_dir: Path | None,
    pitr_source: str,
    pitr_repo_as_of: str | None,
    port: int | None,
    as_json: bool,
) -> None:
    """Disaster recovery: list backup sets on the destination and restore one (dry run by default)."""
    settings = settings_for(destination_kind, local_path)
    if pitr_repo_as_of is not None and target_time is None:
        fail(
            "--pitr-repo-as-of needs --target-time (a moment or 'latest'): it applies to PITR restores only",
            2,
        )
    if target_time is not None:
        from backup_pipeline.cli.pitr_restore import restore_to_time

        restore_to_time(
            settings,
            _load_keys(recovery_key_file, org_secret_file),
            target_time=target_time,
            data_dir=data_dir,
            port=port,
            database=target_database,
            as_json=as_json,
            source=pitr_source,
            repo_as_of=pitr_repo_as_of,
        )
        return
    from backup_pipeline.resources.destination import DestinationResource

    configured = DestinationResource.from_settings(settings)
    try:
        resources = [configured.named(destination_name)] if destination_name else configured.all_named()
    except ValueError as exc:
        fail(f"--destination: {str(exc).removeprefix('destination: ')}", 2)
    destination = resources[0].get_destination()
    if list_only:  # file properties only: no key is read
        if len(resources) > 1:
            _list_across(resources, installation_id, as_json)
            return
        sets = svc.list_backups(destination, installation_id=installation_id)
        if as_json:
            click.echo(json.dumps([s.as_dict() for s in sets], indent=1))
        else:
            click.echo(f"{len(sets)} backup set(s) on {destination.description}:")
            for s in sets:
                click.echo(f"  {s.backup_id}  {s.installation_id}  {s.size} bytes  {_set_label(s)}")
        return
    keys = _load_keys(recovery_key_file, org_secret_file)
    if len(resources) > 1:
        from backup_pipeline.cli.destination_choice import NoCompleteCopy, list_across, pick_copy

        try:
            chosen, backup_id = pick_copy(
                list_across(resources, installation_id), backup_id, lambda m: click.echo(m, err=True)
            )
        except NoCompleteCopy as exc:
            fail(str(exc), 1)
        destination = chosen.destination
    try:
        options = svc.RestoreOptions(
            backup_id=backup_id,
            scope=svc.RestoreScope(scope),
            buckets=buckets,
            key_prefix=key_prefix,
            conflict_policy=svc.ConflictPolicy(conflict_policy),
            target_database=target_database,
            schema_only=schema_only,
            ownership=svc.Ownership(ownership),
            keep_previous_database=keep_previous_database,
            on_unrestorable=svc.OnUnrestorable(on_unrestorable),
            dry_run=dry_run,
            confirm=confirm,
        )
        report = svc.run_restore(
            destination,
            keys,
            options,
            pg_target=svc.PgTarget.from_url(
                settings.app_database_url,
                dbname=target_database or settings.app_database_name,
                password=os.environ.get(APP_DATABASE_PASSWORD_ENV),
            ),
            pg_restore=_pg_restore(settings.pg_bin_dir),
            s3_client=_s3_client(settings.s3_endpoint, settings.s3_region),
            installation_id=installation_id,
            safety_backup=None if not skip_safety_backup else _no_safety_backup,
            log=lambda message: click.echo(message, err=True),
            # The undo journal of the buckets: a failed or killed restore leaves them as before.
            state_dir=settings.state_dir,
        )
    except svc.RestoreRefused as exc:
        fail(f"refused, nothing was changed: {exc}", 1)
    except svc.RestoreError as exc:
        fail(str(exc), 1)
    except ArchiveKeyError as exc:
        fail(f"key: {exc}", 2)
    except ArchiveError as exc:
        fail(str(exc), 1)
    _audit(report, options)
    if as_json:
        click.echo(json.dumps(report, indent=1, default=str))
    else:
        _print_report(report)


def _list_across(resources: list[Any], installation_id: str | None, as_json: bool) -> None:
    from backup_pipeline.cli.destination_choice import list_across

    listings = list_across(resources, installation_id)
    if as_json:
        click.echo(
            json.dumps(
                {
                    li.name: {"error": li.error}
                    if li.sets is None
                    else {"description": li.destination.description, "sets": [s.as_dict() for s in li.sets]}
                    for li in listings
                },
                indent=1,
            )
        )
        return
    for li in listings:
        if li.sets is None:
            click.echo(f"destination {li.name}: UNREACHABLE ({li.error})")
            continue
        click.echo(f"destination {li.name}: {len(li.sets)} backup set(s) on {li.destination.description}:")
        for s in li.sets:
            click.echo(f"  {s.backup_id}  {s.installation_id}  {s.size} bytes  {_set_label(s)}")


def _set_label(info: svc.BackupSetInfo) -> str:
    state = "complete" if info.complete else "INCOMPLETE (no manifest)"
    if info.is_safety:
        return f"{state}, SAFETY backup of a restore (database only; never 'latest': restore it by id)"
    return state


def _no_safety_backup(target: svc.PgTarget) -> str:
    return "skipped (--skip-safety-backup)"


def _pg_restore(bin_dir: Path | None) -> Path:
    from backup_pipeline.resources.postgres import PgToolsError, locate_pg_tools

    try:
        return locate_pg_tools(str(bin_dir) if bin_dir else None).pg_restore.path
    except PgToolsError as exc:
        fail(str(exc), 1)


def _s3_client(endpoint: str, region: str) -> Any:
    from backup_pipeline.resources.s3 import S3Resource

    access, secret = os.environ.get(S3_ACCESS_KEY_ENV), os.environ.get(S3_SECRET_KEY_ENV)
    if not access or not secret:
        return None  # run_restore refuses a restore of files without S3, naming the variables
    return S3Resource(endpoint=endpoint, access_key=access, secret_key=secret, region=region).client()


def _audit(report: dict[str, Any], options: svc.RestoreOptions) -> None:
    try:
        from backup_pipeline.audit import audit_log

        details = {
            "backup_id": report["backup_id"],
            "dry_run": options.dry_run,
            "scope": options.scope.value,
            "conflict_policy": options.conflict_policy.value,
            "on_unrestorable": options.on_unrestorable.value,
            "via": "cli",
        }
        audit_log(load_settings()).append("restore_dry_run" if options.dry_run else "restore", details)
    except Exception:  # a fresh machine may not have a writable state dir; the output still says it all
        pass


def _print_report(report: dict[str, Any]) -> None:
    verb = "would change (dry run)" if report["dry_run"] else "restored"
    click.echo(f"backup {report['backup_id']}: {len(report['verified'])} part(s) verified")
    database = report.get("database")
    if database:
        if report["dry_run"]:
            for table in database["tables"]:
                click.echo(
                    f"  table {table['table']}: {table['rows_in_backup']} rows in backup, "
                    f"{'absent' if table['rows_now'] is None else table['rows_now']} now"
                )
        else:
            click.echo(
                f"  database {database['database']}: restored ({database['bytes']} bytes of dump, "
                f"{len(database['tables'])} tables, {database['rows']} rows checked)"
            )
            if database.get("previous_kept"):
                click.echo(f"  the replaced database is kept as {database['replaced_database']}")
    for item in report.get("recovered_undo_journals") or []:
        if "pending" in item:
            click.echo(f"  an interrupted restore left {item['pending']}: a real restore rolls it back first")
    for bucket, summary in report.get("buckets", {}).items():
        click.echo(
            f"  bucket {bucket} {verb}: {summary['added']} added, {summary['overwritten']} overwritten, "
            f"{summary['skipped']} skipped, {summary['kept_both']} kept both, {summary['failed']} refused"
            + (f", {summary['inexact']} served differently" if summary.get("inexact") else "")
        )
        for line in summary.get("unrestorable") or []:
            click.echo(f"    not restored exactly: {svc.shown_key(line, 200)}")
        if summary.get("at_risk"):
            click.echo(f"    {summary['at_risk']} keys some S3 servers refuse or rewrite:")
            for line in summary["at_risk_keys"]:
                click.echo(f"      {svc.shown_key(line, 200)}")
    for warning in report.get("warnings") or []:
        click.echo(f"  WARNING: {warning}")
    for note in report.get("would_refuse") or []:
        click.echo(f"  a real restore would be refused: {note}")
    consistency = report.get("consistency")
    if consistency:
        click.echo(
            f"  consistency: {consistency['rows_pointing_to_missing_objects']} rows point to missing objects, "
            f"{consistency['unreferenced_objects']} objects unreferenced"
        )


def register(group: click.Group) -> None:
    group.add_command(restore_command)
