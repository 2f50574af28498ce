"""The ``backup-pipeline`` command.

Each command group lives in its own ``cmd_*.py`` module exposing ``register(group)``;
they are discovered here so areas of the product add commands without touching this file.
Exit codes: 0 success, 1 the operation failed, 2 bad input (click's usage errors).
"""

from __future__ import annotations

import importlib
import pkgutil

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="backup_pipeline")
def main() -> None:
    """Back up, verify, restore and migrate an application's PostgreSQL + MinIO data."""


def _register_commands() -> None:
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("cmd_"):
            module = importlib.import_module(f"{__name__}.{module_info.name}")
            module.register(main)


_register_commands()
