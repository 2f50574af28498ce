"""The README's settings table is generated from BackupSettings and must not drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_readme_settings_table_is_current() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/settings_table.py", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_setting_is_documented() -> None:
    from backup_pipeline.settings import ENV_PREFIX, BackupSettings

    readme = (REPO_ROOT / "README.md").read_text()
    for name, field in BackupSettings.model_fields.items():
        assert field.description, f"{name} has no description"
        assert f"`{ENV_PREFIX}{name.upper()}`" in readme
