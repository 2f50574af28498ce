"""``backup-pipeline check`` as an operator runs it (a real subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from backup_pipeline_tests.fixtures.ports import free_port
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server

CLI = str(Path(sys.executable).parent / "backup-pipeline")


def _run(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_PIPELINE_")}
    base.update(
        {
            "BACKUP_PIPELINE_STATE_DIR": str(tmp_path / "state"),
            "BACKUP_PIPELINE_LOCAL_DESTINATION_PATH": str(tmp_path / "backups"),
            "NO_COLOR": "1",
        }
    )
    return subprocess.run([CLI, "check"], env={**base, **env}, capture_output=True, text=True, timeout=120)


def test_check_names_every_bad_setting_and_exits_2(tmp_path: Path) -> None:
    result = _run(
        {
            "BACKUP_PIPELINE_SCHEDULE_TIME": "25:61",
            "BACKUP_PIPELINE_APP_DATABASE_URL": "mysql://x/y",
            "BACKUP_PIPELINE_RETENTION_KEEP_LAST": "0",
        },
        tmp_path,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    for field in ("SCHEDULE_TIME", "APP_DATABASE_URL", "RETENTION_KEEP_LAST"):
        assert f"BACKUP_PIPELINE_{field}" in result.stdout


def test_check_passes_against_real_postgres_and_s3(
    pg_database: PgDatabase, s3: S3Server, tmp_path: Path
) -> None:
    s3.client().make_bucket("media")
    result = _run({**s3.env(), "BACKUP_PIPELINE_APP_DATABASE_URL": pg_database.url}, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("settings: ok")
    pg_line = next(line for line in lines if "postgres" in line.split()[1:2])
    assert pg_line.startswith("ok") and "pg_dump" in pg_line and pg_database.name in pg_line
    assert any(line.startswith("ok") and "1 buckets (media)" in line for line in lines)
    assert any(line.startswith("ok") and "destination" in line for line in lines)


def test_check_fails_naming_unreachable_endpoints(tmp_path: Path) -> None:
    pg_port, s3_port = free_port(), free_port()
    result = _run(
        {
            "BACKUP_PIPELINE_APP_DATABASE_URL": f"postgresql://app@127.0.0.1:{pg_port}/appdb",
            "BACKUP_PIPELINE_APP_DATABASE_PASSWORD": "never-print-me",
            "BACKUP_PIPELINE_S3_ENDPOINT": f"http://127.0.0.1:{s3_port}",
            "BACKUP_PIPELINE_S3_ACCESS_KEY": "a",
            "BACKUP_PIPELINE_S3_SECRET_KEY": "never-print-me-either",
        },
        tmp_path,
    )
    assert result.returncode == 1
    assert f"FAIL postgres     cannot connect to PostgreSQL at app@127.0.0.1:{pg_port}/appdb" in result.stdout
    assert f"FAIL s3           S3 endpoint http://127.0.0.1:{s3_port}" in result.stdout
    assert "never-print-me" not in result.stdout + result.stderr
