"""``backup-pipeline check``: validate the settings and test every connection, without Dagster.

Prints the settings verdict (every bad field named) and exits 2 when the settings are
invalid; otherwise one line per check (PostgreSQL with pg_dump/pg_restore versions, S3,
the destination) and exits 1 when any check failed, 0 when all passed. A ``warn`` line is
what a backup would warn about without failing (e.g. no migrations table for the
schema-version query).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import click

from backup_pipeline.cli.settings_file import apply_settings_file
from backup_pipeline.settings import SettingsError, load_settings


def _line(ok: bool, name: str, detail: str, *, warning: bool = False) -> None:
    if warning:
        mark = click.style("warn", fg="yellow", bold=True)
    else:
        mark = click.style("ok  ", fg="green") if ok else click.style("FAIL", fg="red", bold=True)
    click.echo(f"{mark} {name:<12} {detail}")


def _run_check(name: str, check: Callable[[], str | tuple[str, list[str]]]) -> bool:
    """One line per check (``ok``/``FAIL``), then a ``warn`` line per warning (not a failure)."""
    try:
        outcome = check()
    except Exception as exc:  # every failure becomes one line; the messages name the endpoint
        _line(False, name, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        return False
    detail, warnings = outcome if isinstance(outcome, tuple) else (outcome, [])
    _line(True, name, detail)
    for warning in warnings:
        _line(True, name, warning, warning=True)
    return True


@click.command("check")
@click.option(
    "--settings-file",
    type=click.Path(dir_okay=False),
    help="dotenv file (default: $BACKUP_PIPELINE_SETTINGS_FILE).",
)
@click.option("--no-connections", is_flag=True, help="Only validate the settings.")
def check_command(settings_file: str | None, no_connections: bool) -> None:
    """Validate settings and test the PostgreSQL, S3 and destination connections."""
    apply_settings_file(settings_file)
    try:
        settings = load_settings(settings_file=settings_file)
    except SettingsError as exc:
        click.echo(click.style("settings: invalid", fg="red", bold=True))
        for problem in exc.problems:
            click.echo(f"  - {problem}")
        raise SystemExit(2) from None
    click.echo(
        f"settings: ok (destination={settings.destination.value}, database={settings.app_database_name}, "
        f"s3={settings.s3_endpoint})"
    )
    if no_connections:
        return

    from backup_pipeline.resources import build_postgres_resource, build_s3_resource
    from backup_pipeline.services.health import check_postgres, check_s3

    # EnvVar fields resolve only inside Dagster; resolve them here the same way.
    db = build_postgres_resource(settings)
    db = db.model_copy(update={"password": os.environ.get("BACKUP_PIPELINE_APP_DATABASE_PASSWORD") or None})
    s3 = build_s3_resource(settings).model_copy(
        update={
            "access_key": os.environ.get("BACKUP_PIPELINE_S3_ACCESS_KEY", ""),
            "secret_key": os.environ.get("BACKUP_PIPELINE_S3_SECRET_KEY", ""),
        }
    )

    def s3_check() -> str:
        if not s3.access_key or not s3.secret_key:
            raise RuntimeError(
                f"S3 endpoint {s3.endpoint}: BACKUP_PIPELINE_S3_ACCESS_KEY and BACKUP_PIPELINE_S3_SECRET_KEY must be set"
            )
        return check_s3(s3).summary()

    def destination_check() -> str:
        from backup_pipeline.resources.destination import DestinationResource

        report = DestinationResource.from_settings(settings).get_destination().check()
        if not report.ok:
            failed = "; ".join(f"{s.name}: {s.detail}" for s in report.steps if not s.ok)
            fix = report.fix_to_print()
            raise RuntimeError(f"{report.destination}: {failed}" + (f" — fix: {fix}" if fix else ""))
        return f"{report.destination}: " + "; ".join(f"{s.name}: {s.detail}" for s in report.steps)

    def postgres_check() -> tuple[str, list[str]]:
        health = check_postgres(db, settings.schema_version_query)
        return health.summary(), [health.schema_version_note] if health.schema_version_note else []

    results = [
        _run_check("postgres", postgres_check),
        _run_check("s3", s3_check),
        _run_check("destination", destination_check),
    ]
    if not all(results):
        raise SystemExit(1)


def register(group: click.Group) -> None:
    group.add_command(check_command)
