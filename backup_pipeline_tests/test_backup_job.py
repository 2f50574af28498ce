"""backup_job end to end with execute_in_process: real PostgreSQL, SeaweedFS S3, the Drive v3 test server.

The first test is the issue's "Must show"; the others break one component each and check
that the run fails with a stable error code, leaves no partial set, and the next backup works.
"""

from __future__ import annotations

import dataclasses
import hashlib
import stat
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from backup_pipeline import ledger
from backup_pipeline.archive.inventory import read_inventory
from backup_pipeline.ops.backup import build_backup_job
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.sample_app.seed import MiB, SeedSpec, seed_sample_app
from backup_pipeline.services.backup_parts import ErrorCode

from . import backup_helpers as h
from .fixtures.drive import DriveFixture
from .fixtures.postgres import PgDatabase
from .fixtures.s3 import S3Server


def failure_codes(result: dg.ExecuteInProcessResult) -> list[str]:
    """The codes of the run's step failures, each one line without a stack trace (main: a trace)."""
    return [failure.code for failure in h.expected_failures(result)]


def run_backup(
    env: h.BackupEnv, instance: dg.DagsterInstance, executor: Any = dg.in_process_executor, **config: Any
) -> dg.ExecuteInProcessResult:
    job = build_backup_job(executor_def=executor)
    return job.execute_in_process(
        run_config=h.run_config(**config), resources=env.resources(), instance=instance, raise_on_error=False
    )


def test_backup_of_the_sample_app_to_drive_is_restorable_with_the_recovery_key_alone(
    fresh_pg_database: PgDatabase, s3: S3Server, drive: DriveFixture, tmp_path: Path
) -> None:
    spec = SeedSpec(small_objects=5000, small_object_max_bytes=8 * 1024, large_object_bytes=(200 * MiB,))
    with fresh_pg_database.connect() as conn:
        seeded = seed_sample_app(conn, s3.client(), spec)
    assert len(seeded.objects) >= 5000 and len({o.bucket for o in seeded.objects}) == 3
    assert sum(seeded.table_rows.values()) > 5000
    env = h.make_env(tmp_path, fresh_pg_database, s3, h.drive_destination(drive, tmp_path))

    with dg.instance_for_test() as instance:
        result = run_backup(env, instance)
        assert result.success, failure_codes(result)
        entries = ledger.complete_sets(instance)
    assert len(entries) == 1
    entry = entries[0]
    backup_id = entry.backup_id
    assert entry.metadata["object_count"] == len(seeded.objects)
    assert set(entry.metadata["buckets"]) == {o.bucket for o in seeded.objects}

    dest = env.dest()
    files = h.set_files(dest, backup_id)
    assert set(files) == {"database", "manifest"} | {
        f"{k}-{b}" for b in spec.buckets for k in ("bucket", "index", "inventory")
    }
    assert all(f.properties["installationId"] == h.INSTALLATION for f in files.values())
    # The manifest is the last file written.
    created = {name: f.created for name, f in files.items()}
    if all(created.values()):
        assert created["manifest"] == max(created.values())  # type: ignore[type-var]

    identity = env.recovery_identity()  # nothing else of the server is used from here on
    manifest = h.read_manifest(dest, backup_id, identity)
    assert manifest.backup_id == backup_id
    assert {p.name: p.ciphertext_sha256 for p in manifest.parts} == {
        name: f.sha256 for name, f in files.items() if name != "manifest"
    }
    listing = h.pg_restore_list(dest, backup_id, identity)
    assert "TABLE DATA public media_assets" in listing and "TABLE DATA public users" in listing

    for bucket in spec.buckets:
        expected = {o.key: o for o in seeded.objects_in(bucket)}
        seen = set()
        for obj in h.iter_bucket_part(dest, backup_id, bucket, identity):
            want = expected[obj.key]
            digest = hashlib.sha256()
            while block := obj.fileobj.read(1 << 20):
                digest.update(block)
            assert digest.hexdigest() == want.sha256, obj.key
            assert obj.content_type == want.content_type
            assert obj.metadata == want.metadata
            assert obj.tags == want.tags
            seen.add(obj.key)
        assert seen == set(expected), bucket
        # The object list is an inventory part of its own (issue 18), not in the manifest.
        assert [e for e in manifest.inventory if e.bucket == bucket] == []
        summary = manifest.bucket(bucket)
        assert summary is not None and summary.mode == "full" and summary.total_objects == len(expected)
        records = list(
            read_inventory(h.decrypt_part(dest, files[f"inventory-{bucket}"], backup_id, identity))
        )
        assert {r.key: r.sha256 for r in records} == {k: o.sha256 for k, o in expected.items()}
        assert {r.backup_id for r in records} == {backup_id}


@pytest.fixture()
def small_app(fresh_pg_database: PgDatabase, s3: S3Server) -> PgDatabase:
    spec = SeedSpec(small_objects=60, large_object_bytes=(2 * MiB,), users=20, comments=50, audit_events=50)
    with fresh_pg_database.connect() as conn:
        seed_sample_app(conn, s3.client(), spec)
    return fresh_pg_database


def _fake_old_pg_tools(directory: Path) -> Path:
    directory.mkdir()
    for name in ("pg_dump", "pg_restore"):
        path = directory / name
        path.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) 9.6.24'\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return directory


def test_pg_dump_too_old_fails_the_run_with_its_code_and_writes_nothing(
    small_app: PgDatabase, s3: S3Server, drive: DriveFixture, tmp_path: Path
) -> None:
    env = h.make_env(tmp_path, small_app, s3, h.drive_destination(drive, tmp_path))
    good_db = env.app_db
    env.app_db = PostgresResource(
        database_url=small_app.url, pg_bin_dir=str(_fake_old_pg_tools(tmp_path / "old"))
    )
    with dg.instance_for_test() as instance:
        result = run_backup(env, instance)
        assert not result.success
        assert failure_codes(result) == [ErrorCode.PG_DUMP_TOO_OLD]
        assert h.only_backup_ids(env.dest()) == []
        assert ledger.complete_sets(instance) == []

        env.app_db = good_db
        assert run_backup(env, instance).success
        assert len(ledger.complete_sets(instance)) == 1


def test_destination_quota_mid_backup_removes_the_partial_set_and_the_next_backup_succeeds(
    small_app: PgDatabase, s3: S3Server, drive: DriveFixture, tmp_path: Path
) -> None:
    env = h.make_env(tmp_path, small_app, s3, h.drive_destination(drive, tmp_path))
    # Let two parts through, then every upload start is refused for lack of space.
    drive.fault("storage_quota", route="upload_start", skip=2, count=100)
    with dg.instance_for_test() as instance:
        result = run_backup(env, instance)
        assert not result.success
        assert ErrorCode.DESTINATION_QUOTA in failure_codes(result)
        assert h.only_backup_ids(env.dest()) == []  # the two uploaded parts were removed
        history = ledger.from_dagster(instance)
        assert [e.status for e in history] == [ledger.SetStatus.INCOMPLETE]

        drive.clear_faults()
        assert run_backup(env, instance).success
        assert next(e.status for e in ledger.from_dagster(instance)) is ledger.SetStatus.COMPLETE
        assert len(h.only_backup_ids(env.dest())) == 1


def test_the_daily_upload_cap_fails_the_backup_with_its_code_and_throttling_in_its_words_does_not(
    small_app: PgDatabase, s3: S3Server, drive: DriveFixture, tmp_path: Path
) -> None:
    env = h.make_env(
        tmp_path, small_app, s3, h.drive_destination(drive, tmp_path, drive_daily_upload_cap_bytes=1000)
    )
    with dg.instance_for_test() as instance:
        result = run_backup(env, instance)
        assert not result.success
        assert failure_codes(result) == [ErrorCode.DAILY_CAP]  # refused by the pre-flight, before any upload
        assert h.only_backup_ids(env.dest()) == []

        # "User rate limit exceeded." at 429 with the allowance unused is throttling: retried, not fatal.
        env = dataclasses.replace(env, destination=h.drive_destination(drive, tmp_path))
        drive.fault("daily_cap", route="upload_chunk", status=429, count=3)
        result = run_backup(env, instance)
        assert result.success, failure_codes(result)
    assert drive.stats()["faults_fired"] == 3
    assert list((tmp_path / "dest-state" / "drive-upload-sessions").glob("*")) == []


def test_drive_cutting_mid_upload_is_resumed_and_the_set_is_intact(
    small_app: PgDatabase, s3: S3Server, drive: DriveFixture, tmp_path: Path
) -> None:
    env = h.make_env(tmp_path, small_app, s3, h.drive_destination(drive, tmp_path))
    drive.fault("cut", after_bytes=100_000, count=2)
    with dg.instance_for_test() as instance:
        result = run_backup(env, instance)
        assert result.success, failure_codes(result)
        backup_id = ledger.complete_sets(instance)[0].backup_id
    assert drive.stats()["cuts"] >= 1
    identity = env.recovery_identity()
    assert "TABLE DATA public users" in h.pg_restore_list(env.dest(), backup_id, identity)
    assert sum(1 for _ in h.iter_bucket_part(env.dest(), backup_id, "media", identity)) > 0


def test_ledger_rebuilt_from_the_destination_alone_matches_dagster(
    small_app: PgDatabase, s3: S3Server, drive: DriveFixture, tmp_path: Path
) -> None:
    env = h.make_env(tmp_path, small_app, s3, h.drive_destination(drive, tmp_path))
    with dg.instance_for_test() as instance:
        assert run_backup(env, instance).success
        dagster_view = ledger.from_dagster(instance)
    from_dest = ledger.from_destination(env.dest(), h.INSTALLATION)
    assert [e.backup_id for e in from_dest] == [e.backup_id for e in dagster_view]
    assert from_dest[0].complete
    assert set(from_dest[0].metadata["parts"]) == {
        "database",
        "manifest",
        "bucket-media",
        "bucket-avatars",
        "bucket-documents",
        "index-media",
        "index-avatars",
        "index-documents",
        "inventory-media",
        "inventory-avatars",
        "inventory-documents",
    }
    recon = ledger.reconcile(dagster_view, from_dest)
    assert recon.missing_on_destination == [] and recon.unknown_to_dagster == []
