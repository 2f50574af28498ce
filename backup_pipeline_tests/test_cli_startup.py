"""The CLI starts without importing Dagster.

On main every ``backup-pipeline`` call imported Dagster (about 1.2 s of CPU, more than 10 s on a
loaded host) because the group loads every command module and some imported the Dagster
client or resources at load. Commands now import those when they run; the offline tools
(``decrypt``, ``verify``, ``inspect``, ``keys``, ``audit``) never need them. Checked in a fresh
interpreter, where ``sys.modules`` shows what was imported.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from backup_pipeline.cli import main

COMMANDS = {"audit", "check", "decrypt", "delete", "destination", "fetch", "history", "inspect", "keys"}
COMMANDS |= {"pitr", "restore", "restore-objects", "run", "settings", "show", "storage", "verify"}


def _imports_dagster(code: str) -> bool:
    probe = f"{code}\nimport sys\nprint('dagster' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1] == "True"


def test_importing_the_cli_and_its_help_do_not_import_dagster() -> None:
    assert not _imports_dagster("import backup_pipeline.cli")
    assert not _imports_dagster(
        "from backup_pipeline.cli import main\n"
        "for args in (['--help'], ['decrypt', '--help'], ['restore', '--help'], ['restore-objects', '--help'], ['history', '--help']):\n"
        "    main(args, standalone_mode=False)"
    )


def test_an_offline_command_runs_without_dagster(tmp_path: Path) -> None:
    garbage = tmp_path / "not-a-part"
    garbage.write_bytes(b"not an encrypted backup part" * 20)
    assert not _imports_dagster(
        "from click.testing import CliRunner\n"
        "from backup_pipeline.cli import main\n"
        f"result = CliRunner().invoke(main, ['inspect', {str(garbage)!r}])\n"
        "assert result.exit_code == 1 and 'not a backup_pipeline archive part' in result.output, result.output"
    )


def test_every_command_is_still_registered() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == COMMANDS
