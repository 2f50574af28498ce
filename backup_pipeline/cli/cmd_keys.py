"""``backup-pipeline keys init | export-recovery | status | rotate-recovery`` — on the host only.

The recovery secret never passes through Dagster (run config, logs and compute logs are visible
to everyone who reaches the UI): it is exported here, from the key store in ``state_dir``,
which needs the org-secret file (to unwrap the held copy) and a typed confirmation — the host
equivalent of re-authentication. It is printed once; the held copy is erased; the export is
recorded in the audit trail (``<state_dir>/audit.jsonl``); a second export is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from backup_pipeline.archive.errors import (
    ArchiveKeyError,
    RecoveryKeyStoreError,
    RecoverySecretAlreadyExportedError,
)
from backup_pipeline.archive.keys import OrgKeyring, RecoveryKeyStore, generate_org_secret_file
from backup_pipeline.audit import AuditLog
from backup_pipeline.settings import BackupSettings, load_settings

EXPORT_PHRASE = "export recovery key"
ROTATE_PHRASE = "rotate recovery key"


def _settings() -> BackupSettings:
    return load_settings()  # a SettingsError is reported by the group (exit 2)


def _refuse_inside_dagster() -> None:
    # A run worker's stdout is captured into Dagster's compute logs, visible in the UI.
    if os.environ.get("DAGSTER_RUN_ID") or os.environ.get("DAGSTER_CURRENT_RUN_ID"):
        click.echo("error: keys commands run on the host, never inside a Dagster run", err=True)
        raise SystemExit(2)


def _keyring(path: Path | None) -> OrgKeyring:
    if path is None:
        raise click.UsageError("--org-secret-file (or BACKUP_PIPELINE_ORG_SECRET_FILE) is required")
    try:
        return OrgKeyring.from_file(path)
    except ArchiveKeyError as exc:
        raise click.BadParameter(str(exc), param_hint="--org-secret-file") from None


def _confirm(phrase: str) -> None:
    typed = click.prompt(f"Type '{phrase}' to continue", default="", show_default=False)
    if typed.strip() != phrase:
        click.echo("confirmation did not match; nothing changed", err=True)
        raise SystemExit(2)


def _org_secret_option(fn: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--org-secret-file",
        type=click.Path(path_type=Path, dir_okay=False),
        help="File with the org secret(s); default: BACKUP_PIPELINE_ORG_SECRET_FILE.",
    )(fn)


@click.group("keys")
def keys_group() -> None:
    """The recovery key: one-time export, status, rotation (host only)."""


@keys_group.command("init")
@_org_secret_option
def keys_init(org_secret_file: Path | None) -> None:
    """Set-up: create the org secret file if it does not exist, and the recovery key pair.

    Idempotent: an existing org secret or recovery key is kept. Run it once at installation so the
    recovery key can be exported before the first backup, and so every backup carries a recovery stanza.
    """
    _refuse_inside_dagster()
    settings = _settings()
    path = org_secret_file or settings.org_secret_file
    if path is None:
        raise click.UsageError("--org-secret-file (or BACKUP_PIPELINE_ORG_SECRET_FILE) is required")
    audit = AuditLog(settings.state_dir)
    if path.exists():
        click.echo(f"org secret file {path} exists; kept")
    else:
        key_id = generate_org_secret_file(path)
        audit.append("org_secret_created", {"key_id": key_id, "path": str(path)})
        click.echo(f"created org secret file {path} (key id {key_id}, mode 0600); back it up offline too")
    store = RecoveryKeyStore(settings.state_dir, _keyring(path))
    try:
        had_key = store.status() is not None
    except RecoveryKeyStoreError:
        had_key = False
    try:
        public = store.ensure()
    except ArchiveKeyError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    if had_key:
        click.echo(f"recovery key {public.key_id} exists; kept")
    else:
        audit.append("recovery_key_created", {"key_id": public.key_id})
        click.echo(f"created recovery key {public.key_id}")
    click.echo(
        "next: 'backup-pipeline keys export-recovery' prints the recovery secret once; store it offline"
    )


@keys_group.command("export-recovery")
@_org_secret_option
def export_recovery(org_secret_file: Path | None) -> None:
    """Print the recovery secret ONCE, erase the server's copy, record the export."""
    _refuse_inside_dagster()
    settings = _settings()
    keyring = _keyring(org_secret_file or settings.org_secret_file)
    store = RecoveryKeyStore(settings.state_dir, keyring)
    audit = AuditLog(settings.state_dir)
    try:
        status = store.status()
    except RecoveryKeyStoreError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    if not status.secret_held:
        previous = audit.records(action="recovery_key_exported")
        who = f" by {previous[-1].actor} at {previous[-1].ts}" if previous else f" at {status.exported_at}"
        audit.append("recovery_key_export_refused", {"key_id": status.current_key_id})
        click.echo(
            f"error: recovery key {status.current_key_id} was already exported{who}; the server no longer "
            "holds it. Use 'backup-pipeline keys rotate-recovery' to make a new pair for future backups.",
            err=True,
        )
        raise SystemExit(1)
    click.echo(
        f"This prints recovery key {status.current_key_id} once. It decrypts every backup made since "
        f"{status.created_at} with nothing else. After this the server no longer holds it."
    )
    _confirm(EXPORT_PHRASE)
    try:
        secret = store.export_secret()
    except RecoverySecretAlreadyExportedError as exc:  # another process won the race
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    except ArchiveKeyError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    audit.append(
        "recovery_key_exported",
        {"key_id": status.current_key_id, "public_key": status.current_public_key, "cwd": os.getcwd()},
    )
    click.echo("")
    click.echo(secret)
    click.echo("")
    click.echo(
        "Store it OFFLINE now (printed paper in a safe, or a password manager not on this server); it is "
        "not shown again. To recover without this server:\n"
        "  backup-pipeline decrypt --recovery-key-file KEYFILE PART > PART.out"
    )


@keys_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
def keys_status(as_json: bool) -> None:
    """Whether the recovery key was exported, by whom, when, and its fingerprint."""
    settings = _settings()
    # status() reads only public data; the store's constructor wants a keyring it will not use.
    store = RecoveryKeyStore(settings.state_dir, OrgKeyring([("status-only", bytes(32))]))
    try:
        status = store.status()
    except RecoveryKeyStoreError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    exports = [
        r
        for r in AuditLog(settings.state_dir).records(action="recovery_key_exported")
        if r.details.get("key_id") == status.current_key_id
    ]
    data = {
        "key_id": status.current_key_id,
        "fingerprint": status.current_key_id,
        "public_key": status.current_public_key,
        "created_at": status.created_at,
        "exported": not status.secret_held,
        "exported_at": status.exported_at,
        "exported_by": exports[-1].actor if exports else None,
        "previous_key_ids": status.previous_key_ids,
    }
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    click.echo(f"recovery key {data['key_id']} (created {data['created_at']})")
    click.echo(f"  public key: {data['public_key']}")
    if data["exported"]:
        click.echo(
            f"  exported at {data['exported_at']} by {data['exported_by'] or 'unknown'}; not held by the server"
        )
    else:
        click.echo("  NOT exported yet: run 'backup-pipeline keys export-recovery' and store it offline")


@keys_group.command("rotate-recovery")
@_org_secret_option
def rotate_recovery(org_secret_file: Path | None) -> None:
    """Make a new recovery key pair for future backups (older backups keep their stanzas)."""
    _refuse_inside_dagster()
    settings = _settings()
    store = RecoveryKeyStore(settings.state_dir, _keyring(org_secret_file or settings.org_secret_file))
    _confirm(ROTATE_PHRASE)
    try:
        old = store.status().current_key_id
        new = store.rotate()
    except ArchiveKeyError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    AuditLog(settings.state_dir).append("recovery_key_rotated", {"old_key_id": old, "new_key_id": new.key_id})
    click.echo(f"new recovery key {new.key_id}; export it with 'backup-pipeline keys export-recovery'")


def register(group: click.Group) -> None:
    group.add_command(keys_group)
