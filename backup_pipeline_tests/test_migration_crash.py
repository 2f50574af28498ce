"""The migration survives a SIGKILL mid-batch and a MinIO outage mid-run.

500 legacy assets (an empty file, unicode and slashes in names, a bad content type, three
missing in the source, one whose recorded checksum the content does not have, a few large
files) are migrated by a separate process that is SIGKILLed part-way; a rerun finishes.
"Large" is tens of MB by default; ``MIGRATION_TEST_LARGE_BYTES=2147483648`` makes the first
large file 2 GiB (minutes, and 2 GiB of disk for the source and for the S3 server).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from backup_pipeline.destinations.base import RetryingDestination
from backup_pipeline.destinations.local_folder import LocalFolderDestination
from backup_pipeline.resources.s3 import S3Resource
from backup_pipeline.sample_app.content import GeneratedStream
from backup_pipeline.services import migration as mig
from backup_pipeline_tests.fixtures.ports import wait_until
from backup_pipeline_tests.fixtures.postgres import PgDatabase, create_database, drop_database
from backup_pipeline_tests.fixtures.s3 import S3Server
from backup_pipeline_tests.migration_data import LegacyRow, MiB, create_legacy_assets, standard_specs

BUCKET = "media"


@pytest.fixture()
def db() -> Iterator[PgDatabase]:
    database = create_database("bp_migcrash")
    yield database
    drop_database(database.name)


def _large_sizes() -> list[int]:
    first = int(os.environ.get("MIGRATION_TEST_LARGE_BYTES", str(24 * MiB)))
    return [first, 20 * MiB, 7 * MiB]


def _make(db: PgDatabase, folder: Path, count: int, large: list[int]) -> list[LegacyRow]:
    source = LocalFolderDestination(folder)

    def put(name: str, stream: GeneratedStream) -> str:
        return source.put(f"f{uuid.uuid4().hex}", stream, {}).id

    with db.connect() as conn:
        return create_legacy_assets(conn, standard_specs(count, large), put)


def _switched(db: PgDatabase) -> int:
    with db.connect() as conn:
        row = conn.execute("SELECT count(*) FROM storage_migration WHERE status = 'switched'").fetchone()
        return int(row[0]) if row else 0


def _runner(db: PgDatabase, s3: S3Server, folder: Path, **extra: object) -> subprocess.Popen[str]:
    args = {
        "db_url": db.url,
        "s3_endpoint": s3.endpoint,
        "s3_access_key": s3.access_key,
        "s3_secret_key": s3.secret_key,
        "source_folder": str(folder),
        "batch_size": 40,
        "concurrency": 4,
        "part_size": 5 * MiB,
        **extra,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "backup_pipeline_tests.migration_runner", json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _assert_nothing_points_to_a_missing_object(db: PgDatabase, s3: S3Server) -> dict[int, tuple[str, str]]:
    """Every MinIO row's object exists with the row's size and SHA-256; the bucket holds nothing else."""
    client = s3.client()
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT id, bucket, object_key, size_bytes, checksum_sha256 FROM media_assets "
            "WHERE storage_provider = 'minio'"
        ).fetchall()
    pointed = {}
    for asset_id, bucket, key, size, sha256 in rows:
        assert client.stat_object(bucket, key).size == size
        response = client.get_object(bucket, key)
        try:
            reader = mig.HashingReader(response.stream(1 << 20))
            while reader.read(1 << 20):
                pass
        finally:
            response.close()
            response.release_conn()
        assert reader.sha256.hexdigest() == sha256, f"asset {asset_id}: object content differs"
        pointed[int(asset_id)] = (key, sha256)
    return pointed


def test_sigkill_mid_batch_then_rerun_completes(db: PgDatabase, s3: S3Server, tmp_path: Path) -> None:
    folder = tmp_path / "drive"
    rows = _make(db, folder, 500, _large_sizes())
    migratable = {r.asset_id: r for r in rows if r.migratable}
    assert len(rows) == 500 and len(migratable) == 496

    first = _runner(db, s3, folder)
    try:
        wait_until(
            lambda: _switched(db) >= 150 or first.poll() is not None, timeout=120, what="150 switched assets"
        )
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.wait(30)
    assert first.returncode == -signal.SIGKILL, first.stderr.read() if first.stderr else ""
    killed_at = _switched(db)
    assert 150 <= killed_at < 496
    _assert_nothing_points_to_a_missing_object(db, s3)
    with db.connect() as conn:
        assert conn.execute("SELECT storage_provider FROM media_asset_settings").fetchone() == (
            "google_drive",
        )

    second = _runner(db, s3, folder)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 1, err  # four assets cannot be migrated: not complete
    summary = json.loads(out)
    assert summary["moved"] + summary["adopted"] == 496 - killed_at
    assert summary["remaining_in_drive"] == 4 and not summary["settings_flipped"]
    assert summary["failure_reasons"] == {
        "not found in Google Drive": 3,
        "recorded values differ from Google Drive": 1,
    }
    assert "4 assets are still in Google Drive" in summary["settings_message"]

    pointed = _assert_nothing_points_to_a_missing_object(db, s3)
    assert set(pointed) == set(migratable)
    for asset_id, (key, sha256) in pointed.items():
        assert sha256 == migratable[asset_id].sha256
        assert key.startswith(f"drive-migrated/{asset_id}/")
    objects = {o.object_name for o in s3.client().list_objects(BUCKET, recursive=True)}
    assert objects == {key for key, _ in pointed.values()}  # no duplicates, no strays
    assert s3.client()._list_multipart_uploads(BUCKET).uploads == []  # killed uploads were aborted
    with db.connect() as conn:
        errors = dict(
            conn.execute(
                "SELECT m.original_filename, s.error FROM storage_migration s "
                "JOIN media_assets m ON m.id::text = s.asset_id WHERE s.status = 'failed'"
            ).fetchall()
        )
    assert set(errors) == {"gone-1.jpg", "gone-2.jpg", "gone-3.png", "tampered.jpg"}
    assert all("404" in errors[n] for n in ("gone-1.jpg", "gone-2.jpg", "gone-3.png"))
    assert errors["tampered.jpg"].startswith("recorded values differ from Google Drive: ")
    assert "checksum_sha256" in errors["tampered.jpg"]

    # Nothing is left once the operator has dealt with the four (here: removed them).
    with db.connect() as conn:
        conn.execute("DELETE FROM media_assets WHERE storage_provider = 'google_drive'")
        conn.commit()
    third = _runner(db, s3, folder)
    out, err = third.communicate(timeout=120)
    assert third.returncode == 0, err
    assert json.loads(out)["settings_flipped"] is True
    with db.connect() as conn:
        assert conn.execute("SELECT storage_provider FROM media_asset_settings").fetchone() == ("minio",)


def test_minio_stopped_mid_run_fails_cleanly_and_rerun_continues(
    db: PgDatabase, s3: S3Server, tmp_path: Path
) -> None:
    folder = tmp_path / "drive"
    rows = _make(db, folder, 80, [12 * MiB])
    migratable = {r.asset_id for r in rows if r.migratable}
    resource = S3Resource(
        endpoint=s3.endpoint,
        access_key=s3.access_key,
        secret_key=s3.secret_key,
        connect_timeout_seconds=2,
        read_timeout_seconds=3,
        retries=0,
    )

    def context() -> mig.MigrationContext:
        return mig.MigrationContext(
            connect=db.connect,
            drive=lambda: RetryingDestination(LocalFolderDestination(folder)),
            minio=resource.client(),
            bucket=BUCKET,
            options=mig.MigrationOptions(batch_size=10, concurrency=2, part_size=5 * MiB),
            run_id=f"t-{uuid.uuid4().hex[:6]}",
            endpoint=s3.endpoint,
        )

    outcome: dict[str, mig.MigrationSummary] = {}
    worker = threading.Thread(target=lambda: outcome.update(summary=mig.run_migration(context())))
    assert s3.process is not None
    worker.start()
    try:
        wait_until(lambda: _switched(db) >= 20, timeout=60, what="20 switched assets")
        os.killpg(s3.process.pid, signal.SIGSTOP)  # MinIO stops answering mid-run
        worker.join(120)
    finally:
        os.killpg(s3.process.pid, signal.SIGCONT)
    assert not worker.is_alive()
    summary = outcome["summary"]
    assert not summary.complete and not summary.settings_flipped
    assert summary.not_attempted > 0 or summary.remaining_in_drive > 4
    assert "the run stopped" in summary.settings_message and s3.endpoint in summary.settings_message
    time.sleep(0.5)
    _assert_nothing_points_to_a_missing_object(db, s3)

    rerun = mig.run_migration(context())
    assert rerun.remaining_in_drive == 4 and rerun.failure_reasons == {
        "not found in Google Drive": 3,
        "recorded values differ from Google Drive": 1,
    }
    pointed = _assert_nothing_points_to_a_missing_object(db, s3)
    assert set(pointed) == migratable
    objects = {o.object_name for o in s3.client().list_objects(BUCKET, recursive=True)}
    assert objects == {key for key, _ in pointed.values()}
