"""``backup-pipeline audit``: query the audit trail (``<state_dir>/audit.jsonl``)."""

from __future__ import annotations

import datetime as dt
import json

import click

from backup_pipeline.audit import AuditLog
from backup_pipeline.settings import SettingsError, load_settings


def _parse_since(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"must be an ISO date or time such as 2026-01-31, got {value!r}", param_hint="--since"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@click.command("audit")
@click.option("--action", help="Only records of this action, e.g. recovery_key_exported, backup_deleted.")
@click.option("--since", help="Only records at or after this ISO date/time (UTC if no zone).")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Newest N records.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (one JSON array).")
def audit_command(action: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """Show the audit trail: settings changes, manual runs, deletions, restores, key exports."""
    settings = load_settings()
    if settings.state_dir.exists() and not settings.state_dir.is_dir():
        # Reading nothing from a file would print "no audit records": a wrong setting, not an empty trail.
        raise SettingsError([f"BACKUP_PIPELINE_STATE_DIR: {settings.state_dir} is a file, not a folder"])
    log = AuditLog(settings.state_dir)
    records = log.records(action=action, since=_parse_since(since))[-limit:]
    if as_json:
        click.echo(json.dumps([r.to_json() for r in records], indent=2, sort_keys=True))
        return
    if not records:
        click.echo(f"no audit records in {log.path}")
        return
    for record in records:
        summary = ", ".join(
            f"{k}={v}"
            for k, v in record.details.items()
            if k not in ("settings", "digest") and not isinstance(v, dict)
        )
        if record.action == "settings_changed":
            summary = "changed: " + ", ".join(sorted(record.details.get("changed", {})))
        click.echo(f"{record.ts}  {record.action:<28} {record.actor:<24} {summary}")


def register(group: click.Group) -> None:
    group.add_command(audit_command)
