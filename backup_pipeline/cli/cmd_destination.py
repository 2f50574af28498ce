"""``backup-pipeline destination check|ls|policy|retention``: test the configured destination, list what
it holds, print the S3 policy, preview retention (which sets the rules keep and why).

``check`` writes, reads back and deletes a small file (creating a folder proves nothing:
Drive service accounts may create folders but not store bytes; on Drive the write is a
resumable upload of several chunks with a status query between them), reports the free
space and what is left of the daily upload allowance, and prints one line per step, the
warnings, and for a failure the fix. The verdict is FAILED when a backup would be refused
(nothing free, no upload allowance left), even if the test file went through.
Exit codes: 0 ok, 1 failed, 2 bad settings.
"""

from __future__ import annotations

import json
from typing import Any
from zoneinfo import ZoneInfo

import click

from backup_pipeline.cli.settings_file import apply_settings_file
from backup_pipeline.destinations.base import Capacity
from backup_pipeline.settings import SettingsError, load_settings


def _settings(settings_file: str | None):  # type: ignore[no-untyped-def]
    apply_settings_file(settings_file)
    try:
        return load_settings(settings_file=settings_file)
    except SettingsError as exc:
        click.echo(click.style("settings: invalid", fg="red", bold=True), err=True)
        for problem in exc.problems:
            click.echo(f"  - {problem}", err=True)
        raise SystemExit(2) from None


@click.group("destination")
def destination_group() -> None:
    """The backup destination (Google Drive, an S3 bucket or a local folder)."""


_settings_option = click.option(
    "--settings-file",
    type=click.Path(dir_okay=False),
    help="dotenv file (default: $BACKUP_PIPELINE_SETTINGS_FILE).",
)
_name_option = click.option(
    "--destination",
    "destination_name",
    default=None,
    help="With several destinations (BACKUP_PIPELINE_DESTINATIONS): this one; default: the primary.",
)


def _named(settings: Any, name: str | None) -> Any:
    """The ``DestinationResource`` of ``name`` (the primary when empty); an unknown name is bad input."""
    from backup_pipeline.resources.destination import DestinationResource

    try:
        return DestinationResource.from_settings(settings).named(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix("destination: "), param_hint="--destination") from None


@destination_group.command("check")
@_settings_option
@_name_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check_command(settings_file: str | None, destination_name: str | None, as_json: bool) -> None:
    """Write, read back and delete a small file; print a verdict and the fix."""
    settings = _settings(settings_file)
    resource = _named(settings, destination_name)
    destination = resource.get_destination()
    report = destination.check()
    if report.ok:
        from backup_pipeline.services.download_estimate import newest_set_download_note

        # Drive's ~1 TB/day download threshold: what restoring the newest set would read (a warning).
        note = newest_set_download_note(destination, resource.installation_id)
        if note:
            report.warnings.append(note)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": report.ok,
                    "destination": report.destination,
                    "steps": [{"name": s.name, "ok": s.ok, "detail": s.detail} for s in report.steps],
                    "warnings": report.warnings,
                    "fix": report.fix_to_print(),
                    "capacity": None
                    if report.capacity is None
                    else {
                        "free_bytes": report.capacity.free_bytes,
                        "daily_upload_remaining": report.capacity.daily_upload_remaining,
                    },
                },
                indent=2,
            )
        )
    else:
        click.echo(f"destination: {report.destination}")
        for step in report.steps:
            mark = click.style("ok  ", fg="green") if step.ok else click.style("FAIL", fg="red", bold=True)
            click.echo(f"  {mark} {step.name:<11} {step.detail}")
        for warning in report.warnings:
            click.echo(click.style("  warning: ", fg="yellow") + warning)
        if report.ok:
            room = _room(report.capacity)
            click.echo(
                click.style("verdict: OK — backups can be written here", fg="green", bold=True)
                + (f" ({room})" if room else "")
            )
        else:
            click.echo(click.style("verdict: FAILED", fg="red", bold=True))
            fix = report.fix_to_print()
            if fix:
                click.echo(f"fix: {fix}")
    if not report.ok:
        raise SystemExit(1)


def _room(capacity: Capacity | None) -> str:
    if capacity is None:
        return ""
    parts = []
    if capacity.free_bytes is not None:
        parts.append(f"{capacity.size(capacity.free_bytes)} free")
    if capacity.daily_upload_remaining is not None:
        parts.append(f"{capacity.size(capacity.daily_upload_remaining)} of today's upload allowance left")
    return "; ".join(parts)


@destination_group.command("ls")
@_settings_option
@_name_option
@click.option("--property", "properties", multiple=True, metavar="KEY=VALUE", help="Filter (repeatable).")
def ls_command(settings_file: str | None, destination_name: str | None, properties: tuple[str, ...]) -> None:
    """List the files on the destination (optionally those with given properties)."""
    from backup_pipeline.destinations import DestinationError

    wanted: dict[str, str] = {}
    for item in properties:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--property")
        wanted[key] = value
    settings = _settings(settings_file)
    try:
        for stored in _named(settings, destination_name).get_destination().list(wanted or None):
            created = stored.created.isoformat(timespec="seconds") if stored.created else "-"
            click.echo(f"{stored.id}\t{stored.size}\t{created}\t{stored.name}")
    except DestinationError as exc:
        click.echo(click.style("error: ", fg="red", bold=True) + str(exc), err=True)
        raise SystemExit(1) from None


@destination_group.command("policy")
@_settings_option
@click.option("--bucket", default=None, help="Bucket (default: BACKUP_PIPELINE_S3_DESTINATION_BUCKET).")
@click.option("--prefix", default=None, help="Key prefix (default: BACKUP_PIPELINE_S3_DESTINATION_PREFIX).")
def policy_command(settings_file: str | None, bucket: str | None, prefix: str | None) -> None:
    """Print the least-privilege IAM policy for the S3 destination's credentials (JSON).

    It lets the product put, read and list, and denies deleting and weakening the bucket's
    protection (docs/guides/S3-DESTINATION.md explains every statement).
    """
    from backup_pipeline.destinations.s3 import least_privilege_policy

    if bucket is None:
        settings = _settings(settings_file)
        bucket = settings.s3_destination_bucket
        prefix = settings.s3_destination_prefix if prefix is None else prefix
    if not bucket:
        click.echo("error: --bucket (or BACKUP_PIPELINE_S3_DESTINATION_BUCKET) is required", err=True)
        raise SystemExit(2)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    click.echo(json.dumps(least_privilege_policy(bucket, prefix or ""), indent=2))


_CLI_NAMES = {
    "keep_last": "--keep-last",
    "daily": "--keep-daily",
    "weekly": "--keep-weekly",
    "monthly": "--keep-monthly",
    "yearly": "--keep-yearly",
    "timezone": "BACKUP_PIPELINE_SCHEDULE_TIMEZONE",
}


@destination_group.command("retention")
@_settings_option
@click.option("--keep-last", type=int, default=None, help="Try another retention_keep_last.")
@click.option("--keep-daily", type=int, default=None, help="Try another retention_keep_daily.")
@click.option("--keep-weekly", type=int, default=None, help="Try another retention_keep_weekly.")
@click.option("--keep-monthly", type=int, default=None, help="Try another retention_keep_monthly.")
@click.option("--keep-yearly", type=int, default=None, help="Try another retention_keep_yearly.")
@click.option("--json", "as_json", is_flag=True, help="Print every set's decision as JSON.")
def retention_command(
    settings_file: str | None,
    keep_last: int | None,
    keep_daily: int | None,
    keep_weekly: int | None,
    keep_monthly: int | None,
    keep_yearly: int | None,
    as_json: bool,
) -> None:
    """Dry run of retention: which sets the rules keep and why, which would be deleted. Deletes nothing.

    The plan is the retention_job's, minus what only the Dagster instance knows (verification
    verdicts, restores in progress): with verification in use the job counts verified sets only,
    so it may keep more than shown here.
    """
    from datetime import UTC, datetime, timedelta

    from backup_pipeline.destinations import DestinationError
    from backup_pipeline.resources.destination import DestinationResource
    from backup_pipeline.services.retention import discover_sets, plan_retention
    from backup_pipeline.services.retention_rules import PeriodRules, rule_counts, rule_problems

    settings = _settings(settings_file)

    def pick(override: int | None, setting: int) -> int:
        return setting if override is None else override

    keep = pick(keep_last, settings.retention_keep_last)
    periods = PeriodRules(
        daily=pick(keep_daily, settings.retention_keep_daily),
        weekly=pick(keep_weekly, settings.retention_keep_weekly),
        monthly=pick(keep_monthly, settings.retention_keep_monthly),
        yearly=pick(keep_yearly, settings.retention_keep_yearly),
        timezone=settings.schedule_timezone,
    )
    problems = rule_problems(keep, periods, _CLI_NAMES)
    if problems:
        for problem in problems:
            click.echo(f"error: {problem}", err=True)
        raise SystemExit(2)
    destination = DestinationResource.from_settings(settings).get_destination()
    try:
        sets = discover_sets(destination, settings.installation_id)
    except DestinationError as exc:
        click.echo(click.style("error: ", fg="red", bold=True) + str(exc), err=True)
        raise SystemExit(1) from None
    plan = plan_retention(
        sets,
        keep_last=keep,
        incomplete_grace=timedelta(hours=settings.incomplete_grace_hours),
        now=datetime.now(UTC),
        periods=periods,
        seed_abandon=timedelta(days=settings.seed_abandon_days),
    )
    if as_json:
        rows = [
            {
                "backup_id": d.backup_id,
                "created": d.created.isoformat(timespec="seconds"),
                "kind": d.kind,
                "complete": d.complete,
                "decision": d.action,
                "why": list(d.reasons),
            }
            for d in plan.decisions
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    rules = ([f"newest {keep}"] if keep else []) + ([periods.describe()] if periods.active else [])
    click.echo(f"retention dry run on {destination.description}: {', '.join(rules)}; nothing is deleted")
    zone = ZoneInfo(periods.timezone)
    click.echo(f"{'BACKUP SET':<26} {'CREATED (' + periods.timezone + ')':<26} {'DECISION':<17} WHY")
    for d in plan.decisions:
        when = d.created.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")
        what = (
            d.action
            + ("" if d.complete else " (incomplete)")
            + ("" if d.kind == "regular" else f" ({d.kind})")
        )
        click.echo(f"{d.backup_id:<26} {when:<26} {what:<17} {'; '.join(d.reasons)}")
    counts = rule_counts(plan.decisions)
    kept = ", ".join(f"{rule}: {n}" for rule, n in counts.items() if rule not in ("to delete", "locked"))
    click.echo(
        f"{len(plan.keep)} kept ({kept or 'none'}), {len(plan.delete)} to delete, {len(plan.locked)} due but locked"
    )


def register(group: click.Group) -> None:
    group.add_command(destination_group)
