"""Postgres and S3 resources against the real servers (PostgreSQL, SeaweedFS): versions, errors, the data lock."""

from __future__ import annotations

import stat
from pathlib import Path

import dagster as dg
import pytest

from backup_pipeline.ops.health import storage_health_job
from backup_pipeline.resources import PostgresResource, S3Resource
from backup_pipeline.resources.postgres import (
    DataLockBusy,
    PgToolsError,
    PostgresUnavailable,
    locate_pg_tools,
)
from backup_pipeline.resources.s3 import S3Unavailable
from backup_pipeline_tests.fixtures.ports import free_port
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server

SECRET = "pa55-w0rd-that-must-not-leak"


def _fake_tools(directory: Path, version: str) -> Path:
    """Executables that report an old PostgreSQL version (as an outdated client package would)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("pg_dump", "pg_restore"):
        path = directory / name
        path.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {version}'\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return directory


def test_server_and_tool_versions_match(pg_database: PgDatabase) -> None:
    db = PostgresResource(database_url=pg_database.url)
    major, version = db.server_version()
    tools = db.pg_tools()
    assert version.startswith(f"{major}.")
    assert tools.pg_dump.major >= major and tools.pg_restore.major >= major
    assert tools.pg_dump.path.name == "pg_dump" and tools.pg_dump.path.is_file()


def test_too_old_pg_dump_fails_naming_tool_and_server(pg_database: PgDatabase, tmp_path: Path) -> None:
    db = PostgresResource(database_url=pg_database.url, pg_bin_dir=str(_fake_tools(tmp_path / "bin", "9.6")))
    with pytest.raises(PgToolsError) as err:
        db.pg_tools()
    message = str(err.value)
    assert "pg_dump 9.6" in message and str(tmp_path / "bin") in message
    assert f"PostgreSQL {db.server_version()[0]} server" in message
    assert "BACKUP_PIPELINE_PG_BIN_DIR" in message


def test_missing_pg_bin_dir_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(PgToolsError, match="BACKUP_PIPELINE_PG_BIN_DIR="):
        locate_pg_tools(str(tmp_path / "nowhere"))


def test_unreachable_postgres_names_endpoint_without_password() -> None:
    port = free_port()
    db = PostgresResource(database_url=f"postgresql://app@127.0.0.1:{port}/appdb", password=SECRET)
    with pytest.raises(PostgresUnavailable) as err:
        db.connect()
    assert f"app@127.0.0.1:{port}/appdb" in str(err.value)
    assert SECRET not in str(err.value)


def test_libpq_env_carries_password_only_in_pgpassword(pg_database: PgDatabase) -> None:
    db = PostgresResource(database_url=pg_database.url, password=SECRET)
    env = db.libpq_env()
    assert env["PGPASSWORD"] == SECRET
    assert env["PGDATABASE"] == pg_database.name
    assert SECRET not in db.database_url and SECRET not in db.endpoint


def test_data_lock_is_exclusive_and_released(pg_database: PgDatabase) -> None:
    db = PostgresResource(database_url=pg_database.url)
    with db.data_lock("run-aaaa"), pytest.raises(DataLockBusy, match="run-aaaa"), db.data_lock("run-bbbb"):
        pass
    with db.data_lock("run-cccc"):  # released after the first block
        pass


def test_data_lock_released_when_block_raises(pg_database: PgDatabase) -> None:
    db = PostgresResource(database_url=pg_database.url)
    with pytest.raises(RuntimeError), db.data_lock("run-1"):
        raise RuntimeError("boom")
    with db.data_lock("run-2"):
        pass


def test_s3_lists_buckets_path_style(s3: S3Server) -> None:
    s3.client().make_bucket("my.bucket-2")
    resource = S3Resource(endpoint=s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key)
    assert resource.list_bucket_names() == ["my.bucket-2"]


def test_unreachable_s3_names_endpoint() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    resource = S3Resource(
        endpoint=endpoint, access_key="a", secret_key=SECRET, retries=0, connect_timeout_seconds=2
    )
    with pytest.raises(S3Unavailable) as err:
        resource.list_bucket_names()
    assert endpoint in str(err.value) and SECRET not in str(err.value)


def test_health_job_fails_naming_unreachable_endpoints(pg_database: PgDatabase) -> None:
    pg_port, s3_port = free_port(), free_port()
    result = storage_health_job.execute_in_process(
        resources={
            "app_db": PostgresResource(
                database_url=f"postgresql://app@127.0.0.1:{pg_port}/appdb", password=SECRET
            ),
            "s3": S3Resource(
                endpoint=f"http://127.0.0.1:{s3_port}", access_key="a", secret_key=SECRET, retries=0
            ),
        },
        raise_on_error=False,
    )
    assert not result.success
    failures = {
        e.step_key: e.step_failure_data.error.message  # type: ignore[union-attr]
        for e in result.all_events
        if e.event_type is dg.DagsterEventType.STEP_FAILURE
    }
    assert f"127.0.0.1:{pg_port}/appdb" in failures["check_app_database"]
    assert f"http://127.0.0.1:{s3_port}" in failures["check_object_storage"]
    assert all(SECRET not in m for m in failures.values())
