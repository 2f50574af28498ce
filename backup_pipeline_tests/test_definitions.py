"""The code location loads exactly as dagster-webserver loads it (workspace.yaml), and fails
to load with a message naming the field when a setting is bad."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from backup_pipeline.definitions import build_definitions
from backup_pipeline.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).parent / "dagster")


def _validate(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_PIPELINE_")}
    base["DAGSTER_HOME"] = str(tmp_path)
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return subprocess.run(
        [DAGSTER, "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO_ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_workspace_loads_like_the_webserver(tmp_path: Path) -> None:
    result = _validate({}, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "backup_pipeline" in result.stdout + result.stderr


def test_bad_setting_fails_the_location_naming_the_field(tmp_path: Path) -> None:
    result = _validate({"BACKUP_PIPELINE_SCHEDULE_TIMEZONE": "Mars/Olympus"}, tmp_path)
    assert result.returncode != 0
    assert "BACKUP_PIPELINE_SCHEDULE_TIMEZONE" in result.stdout + result.stderr


def test_definitions_hold_jobs_and_resources() -> None:
    defs = build_definitions(load_settings(env={}))
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_job_def("storage_health_job") is not None
    assert {"app_db", "s3", "destination", "keys"} <= set(defs.resources or {})


def test_secrets_are_env_vars_not_values() -> None:
    defs = build_definitions(load_settings(env={}))
    s3 = (defs.resources or {})["s3"]
    # An EnvVar is kept by name: the UI shows the variable, never its value.
    assert isinstance(s3.access_key, dg.EnvVar) and isinstance(s3.secret_key, dg.EnvVar)
    assert s3.secret_key.env_var_name == "BACKUP_PIPELINE_S3_SECRET_KEY"
