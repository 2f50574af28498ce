"""The schema-version query on an application database without the table it reads.

The default ``SELECT max(version) FROM schema_migrations`` fits Rails-style apps only; on main
a new user's first backup of any other database failed with ``SCHEMA_VERSION_QUERY_FAILED``.
Now the version is not recorded (``""`` in the manifest's ``versions``), the run warns naming
the setting, and ``backup-pipeline check`` says so beforehand. A query that is broken in
another way (syntax, permissions) still fails: that is a setting to fix.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from backup_pipeline.cli import main
from backup_pipeline.ops.backup import build_backup_job, build_encryptor
from backup_pipeline.services.backup_database import dump_database
from backup_pipeline.services.backup_parts import BackupError, ErrorCode
from backup_pipeline.services.health import check_postgres

from . import backup_helpers as h
from .fixtures.postgres import PgDatabase
from .fixtures.s3 import S3Server

DEFAULT_QUERY = "SELECT max(version) FROM schema_migrations"
SETTING = "BACKUP_PIPELINE_SCHEMA_VERSION_QUERY"


@pytest.fixture()
def app_without_migrations(fresh_pg_database: PgDatabase) -> PgDatabase:
    with fresh_pg_database.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 100) g")
    return fresh_pg_database


def test_the_dump_records_no_version_and_says_why(
    app_without_migrations: PgDatabase, s3: S3Server, tmp_path: Path
) -> None:
    env = h.make_env(tmp_path, app_without_migrations, s3)
    encryptor, _ = build_encryptor(env.keys)
    result = dump_database(
        env.app_db,
        env.dest(),
        encryptor,
        installation_id=h.INSTALLATION,
        backup_id="20260101T000000Z-0123abcd",
        schema_version_query=DEFAULT_QUERY,
    )
    assert result.schema_version is None and result.table_rows == {"public.notes": 100}
    assert result.schema_version_note is not None
    assert (
        SETTING in result.schema_version_note
        and '"schema_migrations" does not exist' in result.schema_version_note
    )

    with pytest.raises(BackupError) as broken:
        dump_database(
            env.app_db,
            env.dest(),
            encryptor,
            installation_id=h.INSTALLATION,
            backup_id="20260101T000001Z-0123abcd",
            schema_version_query="SELEC max(version) FROM notes",
        )
    assert broken.value.code == ErrorCode.SCHEMA_VERSION_QUERY_FAILED and SETTING in broken.value.message


def test_the_backup_job_succeeds_and_warns_naming_the_setting(
    app_without_migrations: PgDatabase, s3: S3Server, tmp_path: Path
) -> None:
    env = h.make_env(tmp_path, app_without_migrations, s3)
    with dg.instance_for_test() as instance:
        result = build_backup_job(executor_def=dg.in_process_executor).execute_in_process(
            run_config=h.run_config(schema_version_query=DEFAULT_QUERY),
            resources=env.resources(),
            instance=instance,
            raise_on_error=False,
        )
        assert result.success, [f.message for f in h.expected_failures(result)]
        warnings = [
            str(record.user_message)
            for record in instance.all_logs(result.run_id)
            if record.level == 30 and record.step_key == "dump_database"  # logging.WARNING
        ]
    assert any(SETTING in w and "schema_migrations" in w for w in warnings), warnings
    backup_id = result.dagster_run.tags["backup_pipeline/backup_id"]
    manifest = h.read_manifest(env.dest(), backup_id, env.recovery_identity())
    assert manifest.versions["schema_version"] == ""  # BACKUP-FORMAT: "" when none


def test_check_warns_before_the_first_backup(
    app_without_migrations: PgDatabase, s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = h.make_env(tmp_path, app_without_migrations, s3)
    health = check_postgres(env.app_db, DEFAULT_QUERY)
    assert (
        health.schema_version is None and health.schema_version_note and SETTING in health.schema_version_note
    )

    for name, value in {
        "BACKUP_PIPELINE_APP_DATABASE_URL": app_without_migrations.url,
        "BACKUP_PIPELINE_SCHEMA_VERSION_QUERY": DEFAULT_QUERY,
        "BACKUP_PIPELINE_LOCAL_DESTINATION_PATH": str(tmp_path / "backups"),
        "BACKUP_PIPELINE_STATE_DIR": str(tmp_path / "cli-state"),
        **s3.env(),
    }.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["check"], env={"NO_COLOR": "1"})
    assert result.exit_code == 0, result.output  # a warning, not a failure
    [warning] = [line for line in result.output.splitlines() if line.startswith("warn")]
    assert "postgres" in warning and SETTING in warning and "schema_migrations" in warning

    monkeypatch.setenv("BACKUP_PIPELINE_SCHEMA_VERSION_QUERY", "SELEC 1")
    broken = CliRunner().invoke(main, ["check"], env={"NO_COLOR": "1"})
    assert broken.exit_code == 1
    assert any(line.startswith("FAIL postgres") and SETTING in line for line in broken.output.splitlines())
