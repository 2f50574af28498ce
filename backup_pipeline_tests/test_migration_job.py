"""Dagster wiring of ``migrate_drive_to_minio`` and the primary-storage check (execute_in_process).

The legacy source here is a local-folder destination (same contract as the Drive client);
the Drive test server run, the SIGKILL and the MinIO outage are in ``test_migration_drive.py``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from backup_pipeline.destinations.local_folder import LocalFolderDestination
from backup_pipeline.ops import migration as ops
from backup_pipeline.resources import PostgresResource, S3Resource
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.sample_app.content import GeneratedStream
from backup_pipeline_tests.backup_helpers import expected_failures
from backup_pipeline_tests.fixtures.postgres import PgDatabase, create_database, drop_database
from backup_pipeline_tests.fixtures.s3 import S3Server
from backup_pipeline_tests.migration_data import LegacyRow, create_legacy_assets, standard_specs


@pytest.fixture()
def db() -> Iterator[PgDatabase]:
    database = create_database("bp_migjob")
    yield database
    drop_database(database.name)


def _setup(db: PgDatabase, folder: Path, count: int) -> list[LegacyRow]:
    source = LocalFolderDestination(folder)

    def put(name: str, stream: GeneratedStream) -> str:
        return source.put(f"f{uuid.uuid4().hex}", stream, {}).id

    with db.connect() as conn:
        return create_legacy_assets(conn, standard_specs(count, []), put)


def _resources(db: PgDatabase, s3: S3Server, folder: Path) -> dict[str, Any]:
    return {
        "app_db": PostgresResource(database_url=db.url),
        "s3": S3Resource(endpoint=s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key),
        ops.LEGACY_DRIVE: DestinationResource(kind="local", local_path=str(folder)),
    }


def _run(resources: dict[str, Any], instance: dg.DagsterInstance, **config: Any) -> dg.ExecuteInProcessResult:
    run_config = {
        "ops": {
            name: {"config": config}
            for name in ("plan_drive_migration", "migrate_batch", "finish_drive_migration")
        }
    }
    return ops.migrate_drive_to_minio.execute_in_process(
        run_config=run_config, resources=resources, instance=instance, raise_on_error=False
    )


def _latest_summary(instance: dg.DagsterInstance) -> dict[str, Any]:
    event = instance.get_latest_materialization_event(ops.STORAGE_MIGRATION_ASSET)
    assert event is not None and event.asset_materialization is not None
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_job_dry_run_then_real_runs(db: PgDatabase, s3: S3Server, tmp_path: Path) -> None:
    rows = _setup(db, tmp_path / "drive", 30)
    resources = _resources(db, s3, tmp_path / "drive")
    with dg.instance_for_test() as instance:
        dry = _run(resources, instance, dry_run=True)
        assert dry.success
        summary = _latest_summary(instance)
        assert (summary["would_move"], summary["would_fail"]) == (26, 4)  # what the real run moves
        warnings = [e.user_message for e in instance.all_logs(dry.run_id) if e.level == logging.WARNING]
        assert sum("would fail: not found in Google Drive: file" in m for m in warnings) == 3, warnings
        assert sum("would fail: recorded values differ from Google Drive" in m for m in warnings) == 1
        with db.connect() as conn:
            assert conn.execute("SELECT to_regclass('storage_migration')").fetchone() == (None,)

        real = _run(resources, instance, batch_size=8, concurrency=2)
        assert real.success
        steps = {e.step_key for e in real.all_events if e.step_key}
        assert {f"migrate_batch[batch_{i:04d}]" for i in range(4)} <= steps
        summary = _latest_summary(instance)
        assert (summary["moved"], summary["failed"], summary["remaining_in_drive"]) == (26, 4, 4)
        assert summary["failure_reasons"] == {
            "not found in Google Drive": 3,
            "recorded values differ from Google Drive": 1,
        }
        assert summary["settings_flipped"] is False
        assert summary["bytes_moved"] == sum(r.spec.size for r in rows if r.migratable)

        # Status check: MinIO fine, but assets remain in Drive -> a failed WARN check.
        check = ops.build_storage_status_check("media")
        result = check(dg.build_asset_check_context(resources=resources))  # type: ignore[call-arg]
        assert isinstance(result, dg.AssetCheckResult)
        assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
        assert result.metadata["assets_in_drive"].value == 4
        assert result.metadata["objects_total"].value == 26

        with db.connect() as conn:
            conn.execute("DELETE FROM media_assets WHERE storage_provider = 'google_drive'")
            conn.commit()
        again = _run(resources, instance)
        assert again.success
        summary = _latest_summary(instance)
        assert summary["settings_flipped"] is True and summary["moved"] == 0
        result = check(dg.build_asset_check_context(resources=resources))  # type: ignore[call-arg]
        assert isinstance(result, dg.AssetCheckResult) and result.passed


def test_job_refuses_bad_confirmation_and_busy_lock(db: PgDatabase, s3: S3Server, tmp_path: Path) -> None:
    _setup(db, tmp_path / "drive", 12)
    resources = _resources(db, s3, tmp_path / "drive")
    with dg.instance_for_test() as instance:
        bad = _run(resources, instance, delete_source=True, confirmation="yes please")
        assert not bad.success
        # One line with its code, no stack trace in the run view (main: dg.Failure's frames).
        [refused] = expected_failures(bad)
        assert refused.code == ops.MIGRATION_REFUSED and "confirmation phrase" in refused.message

        with resources["app_db"].data_lock("someone-else"):
            busy = _run(resources, instance)
        assert not busy.success
        [locked] = expected_failures(busy)
        assert locked.code == "BACKUP_LOCKED" and "held by" in locked.message
        with db.connect() as conn:
            assert conn.execute(
                "SELECT count(*) FROM media_assets WHERE storage_provider = 'minio'"
            ).fetchone() == (0,)


def test_status_check_reports_unreachable_minio(db: PgDatabase, tmp_path: Path) -> None:
    _setup(db, tmp_path / "drive", 10)
    resources = {
        "app_db": PostgresResource(database_url=db.url),
        "s3": S3Resource(endpoint="http://127.0.0.1:9", access_key="a", secret_key="b", retries=0),
    }
    result = ops.build_storage_status_check("media")(dg.build_asset_check_context(resources=resources))  # type: ignore[call-arg]
    assert isinstance(result, dg.AssetCheckResult)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.ERROR
    assert "127.0.0.1:9" in (result.description or "")
    assert result.metadata["assets_in_drive"].value == 10
