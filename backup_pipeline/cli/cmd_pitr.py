"""``backup-pipeline pitr``: set up and watch point-in-time recovery (opt-in profile).

* ``pitr server-config --output DIR``: on the database host, as the server's OS user: the key
  store (created on first use), the pgbackrest.conf WITH the repository secrets (0600) that
  ``archive_command`` reads, and the postgresql.conf lines to add.
* ``pitr status``: the recoverable window, the archive lag and what is wrong, as text or JSON.

Exit codes: 0 fine, 1 the repository or the server failed or is unhealthy, 2 bad settings/keys.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from backup_pipeline.cli.destination_options import fail
from backup_pipeline.settings import BackupSettings, SettingsError, load_settings


def _settings() -> BackupSettings:
    try:
        settings = load_settings()
    except SettingsError as exc:
        fail(str(exc), 2)
    if not settings.pitr_enabled:
        fail(
            "PITR is not enabled: set BACKUP_PIPELINE_PITR_ENABLED=true (docs/guides/DEPLOYMENT.md, PITR)", 2
        )
    return settings


def _open(settings: BackupSettings, *, create: bool) -> Any:
    from backup_pipeline.archive.errors import ArchiveKeyError
    from backup_pipeline.archive.keys import OrgKeyring, RecoveryKeyStore
    from backup_pipeline.services import pitr
    from backup_pipeline.services.pitr_engine import PitrEngineError
    from backup_pipeline.services.pitr_keys import PitrKeyError

    if settings.org_secret_file is None:
        fail("BACKUP_PIPELINE_ORG_SECRET_FILE is required: the repository passphrase is derived from it", 2)
    try:
        keyring = OrgKeyring.from_file(settings.org_secret_file)
        recovery = [RecoveryKeyStore(settings.state_dir, keyring).ensure()] if create else []
        return pitr.open_repo(settings, keyring=keyring, recovery_keys=recovery, create_keystore=create)
    except (ArchiveKeyError, pitr.PitrSetupError) as exc:
        fail(str(exc), 2)
    except (PitrKeyError, PitrEngineError) as exc:
        fail(str(exc), 1)


@click.group("pitr")
def pitr_group() -> None:
    """Point-in-time recovery: server set-up and status (restore: `restore --target-time`)."""


@pitr_group.command("server-config")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for the server's pgbackrest.conf (with secrets, 0600) and its spool/lock/log folders.",
)
def server_config(output: Path) -> None:
    """Write the database server's pgBackRest config and print the postgresql.conf lines."""
    from backup_pipeline.services import pitr
    from backup_pipeline.services.pitr_engine import archive_command
    from backup_pipeline.services.pitr_lock import read_repo_protection

    settings = _settings()
    ctx = _open(settings, create=True)
    path = pitr.write_server_config(ctx, output.absolute())
    click.echo(f"wrote {path} (0600; it holds the repository keys and passphrase)")
    protection = read_repo_protection(ctx.client, settings.pitr_repo_s3_bucket)
    # the keys in that file can delete the repository unless its bucket locks what they write
    click.echo(protection.summary(), err=not protection.object_lock or not protection.default_mode)
    click.echo("add to postgresql.conf and restart the server:")
    click.echo("  wal_level = replica\n  archive_mode = on\n  archive_timeout = 60")
    # lz4 shrinks the full-page images that dominate WAL at light loads: less to archive and to
    # replay in a restore to a moment (docs/bench/pitr.md). Needs a server built --with-lz4.
    click.echo("  wal_compression = lz4")
    click.echo(f"  archive_command = '{archive_command(output.absolute(), settings.pitr_stanza)}'")


@pitr_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(as_json: bool) -> None:
    """The recoverable window and the archive's health."""
    from backup_pipeline.ops.pitr import limits
    from backup_pipeline.services import pitr
    from backup_pipeline.services.pitr_engine import PitrEngineError
    from backup_pipeline.services.pitr_lock import read_repo_protection
    from backup_pipeline.services.pitr_status import ArchiverStatus, archive_problems

    settings = _settings()
    ctx = _open(settings, create=False)
    try:
        info = ctx.engine.info()
        segments = pitr.archive_segments(ctx.client, ctx.engine.cfg)
    except PitrEngineError as exc:
        fail(str(exc), 1)
    server: ArchiverStatus | None = None
    try:
        server = pitr.server_status(settings)
    except Exception as exc:  # psycopg's errors: reported, the repository side still shown
        problems = [f"application server unreachable: {exc}"]
    else:
        problems = [p.message for p in archive_problems(server, **limits(settings))]
    window = pitr.recoverable_window(info, segments, server)
    protection = read_repo_protection(ctx.client, settings.pitr_repo_s3_bucket)
    result = {
        **window.metadata(),
        **(server.metadata() if server else {}),
        **protection.metadata(),
        "problems": problems,
    }
    if settings.pitr_drive_copy_enabled:  # what Drive alone restores, from its listing (no keys)
        drive_meta, drive_problems = _drive_status(settings, window.latest)
        result.update(drive_meta)
        problems += drive_problems
    if as_json:
        click.echo(json.dumps(result, indent=1))
    else:
        click.echo(f"restorable from {result['earliest_restorable']} to {result['latest_restorable']}")
        click.echo(f"  base backups: {result['base_backups']} (newest {result['newest_base_backup']})")
        click.echo(f"  missing WAL segments in the window: {result['wal_missing_segments']}")
        click.echo(f"  {protection.summary()}")
        if server:
            click.echo(
                f"  archive lag: {result['archive_lag_seconds']} s, pg_wal {result['pg_wal_bytes']} bytes"
            )
        if "drive_latest_restorable" in result:
            click.echo(
                f"Drive restores from {result['drive_earliest_restorable']} to {result['drive_latest_restorable']} "
                f"({result['drive_base_backups']} base backups, {result['drive_wal_bundles']} WAL bundles, "
                f"lag {result['drive_lag_seconds']} s, gaps {result['drive_wal_gaps']})"
            )
        for problem in problems:
            click.echo(f"  PROBLEM: {problem}")
    if problems or window.missing:
        raise SystemExit(1)


def _drive_status(settings: BackupSettings, s3_latest: datetime | None) -> tuple[dict[str, Any], list[str]]:
    from backup_pipeline.destinations.base import DestinationError
    from backup_pipeline.ops.pitr_drive import drive_resource, lag_seconds, lag_verdict
    from backup_pipeline.services import pitr_drive

    try:
        index = pitr_drive.read_index(
            drive_resource(settings).get_destination(), settings.installation_id, settings.pitr_stanza
        )
    except DestinationError as exc:
        return {}, [f"Google Drive not readable: {exc}"]
    window = pitr_drive.drive_window(index)
    lag = lag_seconds(s3_latest, window.latest)
    meta: dict[str, Any] = {
        **window.metadata(),
        "drive_lag_seconds": -1 if lag is None or lag == float("inf") else round(lag, 1),
    }
    passed, text = lag_verdict({**meta, "drive_lag_seconds": lag}, settings.pitr_drive_lag_alert_seconds)
    return meta, [] if passed else [text.removeprefix("NOT SAFE: ")]


def register(group: click.Group) -> None:
    group.add_command(pitr_group)
