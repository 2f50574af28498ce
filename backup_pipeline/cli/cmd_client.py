"""``backup-pipeline run backup|history|show|delete|settings``: the client over Dagster's GraphQL API.

Exit codes: 0 ok, 1 the operation failed (run failed, server unreachable), 2 bad input.
A ``ClientError`` (server unreachable, request refused) is reported by the group
(``cli/__init__.py``) as one line. A run that did not succeed is reported with its errors and
the address of the run in the UI.
Proxy options: ``--header 'Name: value'`` (repeatable) and ``--user name`` (basic auth; the
password comes from ``BACKUP_PIPELINE_CLIENT_PASSWORD`` or a prompt, never the command line).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import click

from backup_pipeline.settings import load_settings

if TYPE_CHECKING:  # client.py imports Dagster: only when a command runs (cli/__init__.py)
    from backup_pipeline.client import PipelineClient

URL_ENV = "BACKUP_PIPELINE_URL"
PASSWORD_ENV = "BACKUP_PIPELINE_CLIENT_PASSWORD"
RUN_STATUSES = ["queued", "not_started", "starting", "started", "success", "failure", "canceling", "canceled"]


def _client_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")(fn)
    fn = click.option(
        "--user",
        help="Basic-auth user for an authenticating proxy (password: $" + PASSWORD_ENV + " or prompt).",
    )(fn)
    fn = click.option(
        "--header", "headers", multiple=True, help="Extra HTTP header 'Name: value' (repeatable)."
    )(fn)
    fn = click.option(
        "--url",
        envvar=URL_ENV,
        default="http://127.0.0.1:3000",
        show_default=True,
        help=f"Dagster webserver (or ${URL_ENV}).",
    )(fn)
    return fn


def _make_client(url: str, headers: tuple[str, ...], user: str | None) -> PipelineClient:
    parsed: dict[str, str] = {}
    for header in headers:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(f"expected 'Name: value', got {header!r}", param_hint="--header")
        parsed[name.strip()] = value.strip()
    auth = None
    if user:
        password = os.environ.get(PASSWORD_ENV) or click.prompt(f"password for {user}", hide_input=True)
        auth = (user, password)
    from backup_pipeline.client import PipelineClient

    try:
        return PipelineClient(url, headers=parsed, basic_auth=auth)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--url") from None


def run_url(url: str, run_id: str) -> str:
    """The run's page in the Dagster UI (the webserver serves the UI and the API on one address)."""
    base = url if "://" in url else f"http://{url}"
    return f"{base.rstrip('/')}/runs/{run_id}"


def _report_unsuccessful(what: str, url: str, run_id: str, status: str, errors: list[str]) -> None:
    """Why a run did not succeed, one line per failed step, and where to read the rest."""
    if not errors:
        errors = [f"the run ended {status} without a failed step"]
    for error in errors:
        click.echo(f"error: {what}: {' '.join(error.split())}", err=True)
    click.echo(f"see {run_url(url, run_id)}", err=True)


def _ts(value: float | None) -> str:
    return dt.datetime.fromtimestamp(value, dt.UTC).isoformat(timespec="seconds") if value else "-"


_MARKDOWN_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def _ledger_line(key: str, value: Any, base_url: str) -> str:
    """One ``show`` line; Markdown links (the ``actions`` entry) become ``label: absolute URL`` lines."""
    if isinstance(value, dict | list):
        return f"  {key}: {json.dumps(value)}"
    links = _MARKDOWN_LINK.findall(value) if isinstance(value, str) else []
    if links:
        base = base_url.rstrip("/")
        return f"  {key}:" + "".join(
            f"\n    {label}: {base + url if url.startswith('/') else url}" for label, url in links
        )
    return f"  {key}: {value}"


def _changes_text(c: Mapping[str, Any]) -> str:
    """``+new ~changed -deleted objects (bytes each), uploaded, shared with older sets``."""
    return (
        f"+{c['objects_new']} ({_size(c['objects_new_bytes'])}) "
        f"~{c['objects_changed']} ({_size(c['objects_changed_bytes'])}) "
        f"-{c['objects_deleted']} ({_size(c['objects_deleted_bytes'])}) objects, "
        f"{_size(c['uploaded_bytes'])} uploaded, {_size(c['shared_bytes'])} shared with older sets"
    )


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _emit(data: Any, as_json: bool, text: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        text()


@click.group("run")
def run_group() -> None:
    """Launch jobs on the Dagster webserver."""


@run_group.command("backup")
@_client_options
@click.option("--wait", is_flag=True, help="Wait for the run to finish; exit 1 if it failed.")
@click.option("--force", is_flag=True, help="Ignore the manual-backup minimum interval.")
def run_backup(
    url: str, headers: tuple[str, ...], user: str | None, as_json: bool, wait: bool, force: bool
) -> None:
    """Start a backup (a backup_job run)."""
    client = _make_client(url, headers, user)
    run_id = client.run_backup(force=force)
    status = client.wait(run_id).value if wait else "QUEUED"
    backup_id = client.find_backup_id(run_id) if wait else None
    failed = wait and status != "SUCCESS"
    errors = client.errors(run_id) if failed else []
    data: dict[str, Any] = {
        "run_id": run_id,
        "status": status,
        "backup_id": backup_id,
        "url": run_url(url, run_id),
    }
    if failed:
        data["errors"] = errors
    _emit(
        data,
        as_json,
        lambda: click.echo(
            f"backup run {run_id}: {status}" + (f" (backup {backup_id})" if backup_id else "")
        ),
    )
    if failed:
        if not as_json:
            _report_unsuccessful(f"backup run {status}", url, run_id, status, errors)
        raise SystemExit(1)


@click.command("history")
@_client_options
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(RUN_STATUSES, case_sensitive=False),
    help="Filter backup runs (repeatable); safety sets are listed unless the filter leaves out success.",
)
@click.option(
    "--limit", type=click.IntRange(1, 500), default=20, show_default=True, help="Backup runs per page."
)
@click.option("--cursor", help="Run id to continue after (the last run id of the previous page).")
def history(
    url: str,
    headers: tuple[str, ...],
    user: str | None,
    as_json: bool,
    statuses: tuple[str, ...],
    limit: int,
    cursor: str | None,
) -> None:
    """List backup runs, and the safety sets restores made, newest first."""
    client = _make_client(url, headers, user)
    entries, next_cursor = client.backup_history(statuses=list(statuses), limit=limit, cursor=cursor)

    def text() -> None:
        if not entries:
            click.echo("no backup runs")
        for entry in entries:
            run = entry.run
            if entry.kind == "safety":
                restored = entry.restore_of or "?"
                click.echo(
                    f"{_ts(run.creation_time)}  {'SAFETY':<10} {entry.backup_id:<26} made by restore run "
                    f"{run.run_id} ({run.status}) before restoring {restored}"
                )
            else:
                # A seeding run succeeded but made no backup yet: never shown as a plain SUCCESS.
                status = "SEEDING" if run.outcome == "seeding" else run.status
                click.echo(
                    f"{_ts(run.start_time)}  {status:<10} {run.backup_id or '-':<26} run {run.run_id}"
                    + (f"  {_changes_text(run.changes)}" if run.changes else "")
                    + ("  not restorable yet: the next run continues the seed" if status == "SEEDING" else "")
                )
        if next_cursor:
            click.echo(f"more: --cursor {next_cursor}")

    _emit({"runs": [e.to_json() for e in entries], "next_cursor": next_cursor}, as_json, text)


@click.command("show")
@_client_options
@click.argument("backup_id")
def show(url: str, headers: tuple[str, ...], user: str | None, as_json: bool, backup_id: str) -> None:
    """Status, sizes, counts, parts and errors of one backup."""
    client = _make_client(url, headers, user)
    try:
        detail = client.show(backup_id)
    except LookupError as exc:
        raise click.BadParameter(str(exc), param_hint="BACKUP_ID") from None

    from backup_pipeline.change_counts import CHANGE_KEYS

    def text() -> None:
        click.echo(f"backup {backup_id}: {detail['status']} (run {detail['run_id']})")
        if detail.get("outcome") == "seeding":
            click.echo(
                "  outcome: seeding — NOT a backup yet (Drive's daily upload cap spreads the first full over "
                "several runs); the next run continues it. Progress: backup_set's latest observation in the UI"
            )
        click.echo(f"  started {_ts(detail['start_time'])}, ended {_ts(detail['end_time'])}")
        ledger = detail["ledger"]
        if all(isinstance(ledger.get(k), int) for k in CHANGE_KEYS):
            click.echo(f"  changes: {_changes_text(ledger)}")
        for key, value in sorted(detail["ledger"].items()):
            click.echo(_ledger_line(key, value, url))
        for step, status in sorted(detail["steps"].items()):
            click.echo(f"  step {step}: {status}")
        for error in detail["errors"]:
            click.echo(f"  error: {error}")

    _emit(detail, as_json, text)


@click.command("delete")
@_client_options
@click.argument("backup_id")
@click.option("--force", is_flag=True, help="Allow deleting the newest complete backup.")
@click.option("--yes", is_flag=True, help="Skip the typed confirmation (scripts).")
def delete(
    url: str,
    headers: tuple[str, ...],
    user: str | None,
    as_json: bool,
    backup_id: str,
    force: bool,
    yes: bool,
) -> None:
    """Delete one backup set (runs delete_backup_job and waits for it)."""
    if not yes:
        typed = click.prompt(f"type 'delete {backup_id}' to confirm", default="", show_default=False)
        if typed.strip() != f"delete {backup_id}":
            raise click.BadParameter("confirmation did not match; nothing deleted", param_hint="confirmation")
    client = _make_client(url, headers, user)
    run_id = client.delete_backup(backup_id, force=force)
    status = client.wait(run_id)
    errors = client.errors(run_id) if status.value != "SUCCESS" else []
    _emit(
        {
            "run_id": run_id,
            "status": status.value,
            "backup_id": backup_id,
            "errors": errors,
            "url": run_url(url, run_id),
        },
        as_json,
        lambda: click.echo(f"delete {backup_id}: {status.value} (run {run_id})"),
    )
    if status.value != "SUCCESS":
        if not as_json:
            _report_unsuccessful(f"delete {status.value}", url, run_id, status.value, errors)
        raise SystemExit(1)


@click.command("settings")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
def settings_command(as_json: bool) -> None:
    """Effective settings of this host (secrets are never settings: only env-var names and file paths)."""
    values = load_settings().redacted()

    def text() -> None:
        for key, value in sorted(values.items()):
            click.echo(f"{key} = {value}")

    _emit(values, as_json, text)


def register(group: click.Group) -> None:
    group.add_command(run_group)
    group.add_command(history)
    group.add_command(show)
    group.add_command(delete)
    group.add_command(settings_command)
