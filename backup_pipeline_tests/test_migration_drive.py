"""Must-show: 500 legacy assets in the Drive v3 test server, migrated by the real CLI, SIGKILLed
mid-batch, rerun: every migratable row points to a MinIO object with matching SHA-256, the rest
are reported with reasons, nothing points to a missing object, the setting flips only when
nothing is left. ``MIGRATION_TEST_LARGE_BYTES=2147483648`` makes the first large file 2 GiB.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from backup_pipeline.sample_app.content import GeneratedStream
from backup_pipeline_tests.fixtures.drive import DriveFixture
from backup_pipeline_tests.fixtures.ports import wait_until
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server
from backup_pipeline_tests.migration_data import MiB, create_legacy_assets, standard_specs
from backup_pipeline_tests.test_migration_crash import (
    _assert_nothing_points_to_a_missing_object,
    _large_sizes,
    _switched,
)

BUCKET = "media"


def _cli(database: PgDatabase, s3: S3Server, drive: DriveFixture, *args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        **drive.env(),
        **s3.env(),
        "BACKUP_PIPELINE_APP_DATABASE_URL": database.url,
        "BACKUP_PIPELINE_PRIMARY_BUCKET": BUCKET,
        "BACKUP_PIPELINE_SETTINGS_FILE": "",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "backup_pipeline.cli", "storage", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_500_assets_from_drive_sigkill_rerun(
    fresh_pg_database: PgDatabase, s3: S3Server, drive: DriveFixture, tmp_path: Path
) -> None:
    db = fresh_pg_database
    source = drive.destination(chunk_size=8 * MiB)

    def put(name: str, stream: GeneratedStream) -> str:
        return source.put(name, stream, {}).id

    with db.connect() as conn:
        rows = create_legacy_assets(conn, standard_specs(500, _large_sizes()), put)
    migratable = {r.asset_id: r for r in rows if r.migratable}
    assert len(migratable) == 496

    dry = _cli(db, s3, drive, "migrate-drive", "--dry-run", "--json")
    out, err = dry.communicate(timeout=120)
    assert dry.returncode == 0, err
    # The dry run agrees with the real run: Drive's sha256Checksum already differs from the
    # tampered row's recorded sha256.
    assert (json.loads(out)["would_move"], json.loads(out)["would_fail"]) == (496, 4)

    first = _cli(db, s3, drive, "migrate-drive", "--batch-size", "40", "--concurrency", "4")
    try:
        wait_until(lambda: _switched(db) >= 150 or first.poll() is not None, timeout=120, what="150 switched")
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.wait(30)
    assert first.returncode == -signal.SIGKILL
    killed_at = _switched(db)
    assert 150 <= killed_at < 496
    _assert_nothing_points_to_a_missing_object(db, s3)

    second = _cli(db, s3, drive, "migrate-drive", "--json")
    out, err = second.communicate(timeout=300)
    assert second.returncode == 1, err  # four remain: not complete
    summary = json.loads(out)
    assert summary["moved"] + summary["adopted"] == 496 - killed_at
    assert summary["failure_reasons"] == {
        "not found in Google Drive": 3,
        "recorded values differ from Google Drive": 1,
    }
    assert (
        not summary["settings_flipped"]
        and "4 assets are still in Google Drive" in summary["settings_message"]
    )

    pointed = _assert_nothing_points_to_a_missing_object(db, s3)
    assert set(pointed) == set(migratable)
    assert all(sha == migratable[a].sha256 for a, (_, sha) in pointed.items())
    objects = {o.object_name for o in s3.client().list_objects(BUCKET, recursive=True)}
    assert objects == {key for key, _ in pointed.values()}

    status = _cli(db, s3, drive, "status", "--json")
    out, err = status.communicate(timeout=60)
    assert status.returncode == 0, err
    report = json.loads(out)
    assert report["assets_in_drive"] == 4 and report["settings_provider"] == "google_drive"
    assert {b["name"]: b["objects"] for b in report["buckets"]}[BUCKET] == 496

    with db.connect() as conn:
        conn.execute("DELETE FROM media_assets WHERE storage_provider = 'google_drive'")
        conn.commit()
    last = _cli(db, s3, drive, "migrate-drive", "--json")
    out, err = last.communicate(timeout=120)
    assert last.returncode == 0, err
    assert json.loads(out)["settings_flipped"] is True
    with db.connect() as conn:
        assert conn.execute("SELECT storage_provider FROM media_asset_settings").fetchone() == ("minio",)
