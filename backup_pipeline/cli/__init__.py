"""The ``backup-pipeline`` command.

Each command group lives in its own ``cmd_*.py`` module exposing ``register(group)``;
they are discovered here so areas of the product add commands without touching this file.
Exit codes: 0 success, 1 the operation failed, 2 bad input (click's usage errors).

Failures are reported in one place: a command lets the product's errors propagate and the
group prints one line and exits with the code ``cli/errors.py`` assigns, so no expected error
ever ends in a traceback (``--debug`` shows it). The group also reads the settings file
(``--settings-file`` / ``BACKUP_PIPELINE_SETTINGS_FILE``) into the environment, so the secrets
an operator keeps there (S3 keys, database password) reach every command the way the
environment of the Dagster processes reaches the UI.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

import click

from backup_pipeline.cli.errors import DEBUG_ENV, describe_failure
from backup_pipeline.cli.settings_file import SETTINGS_FILE_ENV, apply_settings_file


class _ReportingGroup(click.Group):
    """A click group that turns every exception of a command into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, EOFError):
            raise  # click prints these itself (usage errors: exit 2)
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            failure = describe_failure(exc)
            click.echo(f"error: {failure.message}", err=True)
            ctx.exit(failure.exit_code)


@click.group(cls=_ReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="backup_pipeline")
@click.option(
    "--settings-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=SETTINGS_FILE_ENV,
    help=f"dotenv file with the settings and, optionally, the secrets (or ${SETTINGS_FILE_ENV}); "
    "variables set in the environment win.",
)
@click.option(
    "--debug",
    is_flag=True,
    envvar=DEBUG_ENV,
    help=f"On an error, show Python's traceback instead of one line (or {DEBUG_ENV}=1).",
)
def main(settings_file: Path | None, debug: bool) -> None:
    """Back up, verify, restore and migrate an application's PostgreSQL + MinIO data."""
    apply_settings_file(settings_file)


def _register_commands() -> None:
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("cmd_"):
            module = importlib.import_module(f"{__name__}.{module_info.name}")
            module.register(main)


_register_commands()
