"""What the Drive → MinIO migration tells the operator, and that its dry run tells the same.

A trashed Drive file is reported as in the trash (restorable), not as gone; a Google Docs file
as having no binary content; a row whose recorded size or MD5 disagrees with Drive fails and
is left as it is; and the dry run counts exactly what the real run then moves. Real
PostgreSQL, the S3 test server, the Drive v3 test server (and a local folder as a quick
source with the same destination contract).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backup_pipeline.destinations.local_folder import LocalFolderDestination
from backup_pipeline.sample_app.content import GeneratedStream
from backup_pipeline.services import migration as mig
from backup_pipeline_tests.fixtures.drive import SHARED_DRIVE_ID, DriveFixture
from backup_pipeline_tests.fixtures.postgres import PgDatabase, create_database, drop_database
from backup_pipeline_tests.fixtures.s3 import S3Server
from backup_pipeline_tests.migration_data import LegacyRow, LegacySpec, create_legacy_assets

BUCKET = "media"
CLI = str(Path(sys.executable).parent / "backup-pipeline")


@pytest.fixture()
def db() -> Iterator[PgDatabase]:
    database = create_database("bp_migmsg")
    yield database
    drop_database(database.name)


def _context(db: PgDatabase, s3: S3Server, drive: Any, **options: Any) -> mig.MigrationContext:
    return mig.MigrationContext(
        connect=db.connect,
        drive=drive,
        minio=s3.client(),
        bucket=BUCKET,
        options=mig.MigrationOptions(**options),
        run_id=f"test-{uuid.uuid4().hex[:8]}",
        endpoint=s3.endpoint,
    )


def _rows(db: PgDatabase) -> dict[int, tuple[Any, ...]]:
    with db.connect() as conn:
        return {
            r[0]: tuple(r[1:])
            for r in conn.execute(
                "SELECT id, storage_provider, drive_file_id, size_bytes, checksum_md5, checksum_sha256 "
                "FROM media_assets"
            ).fetchall()
        }


def _migration_rows(db: PgDatabase) -> dict[str, tuple[str, str | None]]:
    with db.connect() as conn:
        return {
            r[0]: (r[1], r[2])
            for r in conn.execute("SELECT asset_id, status, error FROM storage_migration").fetchall()
        }


def test_recorded_size_or_md5_that_differs_from_drive_fails_and_the_row_is_kept(
    db: PgDatabase, s3: S3Server, tmp_path: Path
) -> None:
    """Main compared only checksum_sha256: these two moved and their recorded values were rewritten."""
    source = LocalFolderDestination(tmp_path / "drive")
    with db.connect() as conn:
        ok, wrong_size, wrong_md5 = create_legacy_assets(
            conn,
            [
                LegacySpec("ok.jpg", 1_000),
                LegacySpec("size.jpg", 2_000, wrong_size=True),
                LegacySpec("md5.jpg", 3_000, wrong_md5=True),
            ],
            lambda name, stream: source.put(f"f{uuid.uuid4().hex}", stream, {}).id,
        )
    recorded = _rows(db)

    dry = mig.run_migration(_context(db, s3, lambda: source, dry_run=True))
    assert (dry.would_move, dry.would_fail, dry.would_move_bytes) == (1, 2, 1_000)
    assert dry.failure_reasons == {mig.REASON_RECORDED_MISMATCH: 2}

    real = mig.run_migration(_context(db, s3, lambda: source))
    assert (real.moved, real.failed, real.remaining_in_drive) == (dry.would_move, dry.would_fail, 2)
    assert real.failure_reasons == {mig.REASON_RECORDED_MISMATCH: 2}

    after = _rows(db)
    for row in (wrong_size, wrong_md5):  # left exactly as the application recorded it
        assert after[row.asset_id] == recorded[row.asset_id]
        assert after[row.asset_id][0] == "google_drive"
    assert after[ok.asset_id][0] == "minio"
    status = _migration_rows(db)
    assert status[str(ok.asset_id)] == ("switched", None)
    size_status, size_error = status[str(wrong_size.asset_id)]
    assert size_status == "failed" and size_error is not None
    assert size_error.startswith(f"{mig.REASON_RECORDED_MISMATCH}: ")
    assert "size_bytes 2001 recorded, Drive reports 2000" in size_error
    md5_status, md5_error = status[str(wrong_md5.asset_id)]
    assert md5_status == "failed" and md5_error is not None
    assert f"checksum_md5 {recorded[wrong_md5.asset_id][3]} recorded" in md5_error
    assert "the row was left unchanged" in md5_error
    keys = [o.object_name for o in s3.client().list_objects(BUCKET, recursive=True)]
    assert keys == [mig.object_key_for(str(ok.asset_id), "ok.jpg")]  # nothing copied for the others


def _trash(drive: DriveFixture, file_id: str) -> None:
    service = drive.destination().client.service()
    service.files().update(fileId=file_id, body={"trashed": True}, supportsAllDrives=True).execute()


def _google_doc(drive: DriveFixture) -> str:
    service = drive.destination().client.service()
    created = (
        service.files()
        .create(
            body={
                "name": "Meeting notes",
                "mimeType": "application/vnd.google-apps.document",
                "parents": [SHARED_DRIVE_ID],
            },
            supportsAllDrives=True,
            fields="id",
        )
        .execute()
    )
    return str(created["id"])


def _legacy_on_drive(db: PgDatabase, drive: DriveFixture) -> tuple[LegacyRow, LegacyRow, int]:
    source = drive.destination()

    def put(name: str, stream: GeneratedStream) -> str:
        return source.put(name, stream, {}).id

    with db.connect() as conn:
        kept, trashed = create_legacy_assets(
            conn, [LegacySpec("kept.jpg", 5_000), LegacySpec("trashed.jpg", 6_000)], put
        )
        doc_id = _google_doc(drive)
        row = conn.execute(
            "INSERT INTO media_assets (storage_provider, drive_file_id, original_filename, content_type, "
            "size_bytes) VALUES ('google_drive', %s, 'Meeting notes', 'application/pdf', 0) RETURNING id",
            (doc_id,),
        ).fetchone()
        conn.commit()
    assert row is not None
    _trash(drive, trashed.drive_file_id)
    return kept, trashed, int(row[0])


def test_trashed_and_google_docs_files_are_named_as_such_and_the_dry_run_agrees(
    db: PgDatabase, s3: S3Server, drive: DriveFixture
) -> None:
    """Main said "not found (HTTP 404)" for the trashed file and counted the Google Doc as movable."""
    kept, trashed, doc_asset = _legacy_on_drive(db, drive)

    env = {
        **os.environ,
        **drive.env(),
        **s3.env(),
        "BACKUP_PIPELINE_APP_DATABASE_URL": db.url,
        "BACKUP_PIPELINE_PRIMARY_BUCKET": BUCKET,
        "BACKUP_PIPELINE_SETTINGS_FILE": "",
    }
    dry = subprocess.run(
        [CLI, "storage", "migrate-drive", "--dry-run"], env=env, capture_output=True, text=True, timeout=300
    )
    assert dry.returncode == 0, dry.stdout + dry.stderr
    lines = dry.stderr.splitlines()
    trash_line = next(line for line in lines if line.startswith(f"asset {trashed.asset_id} would fail: "))
    assert "in the Google Drive trash" in trash_line and "Restore" in trash_line and "30 days" in trash_line
    assert "404" not in trash_line
    doc_line = next(line for line in lines if line.startswith(f"asset {doc_asset} would fail: "))
    assert mig.REASON_NO_CONTENT in doc_line
    assert "1 assets (4.9 KiB) would move, 2 would fail" in dry.stdout, dry.stdout
    assert f"1 × {mig.REASON_TRASHED}" in dry.stdout and f"1 × {mig.REASON_NO_CONTENT}" in dry.stdout

    real = mig.run_migration(_context(db, s3, drive.destination))
    assert (real.moved, real.failed, real.remaining_in_drive) == (1, 2, 2)  # what the dry run said
    assert real.failure_reasons == {mig.REASON_TRASHED: 1, mig.REASON_NO_CONTENT: 1}
    status = _migration_rows(db)
    assert status[str(kept.asset_id)] == ("switched", None)
    trash_status, trash_error = status[str(trashed.asset_id)]
    assert trash_status == "failed" and trash_error is not None
    assert trash_error.startswith(f"{mig.REASON_TRASHED}: file {trashed.drive_file_id} is in the trash")

    # Restored from the trash, the file moves on the next run.
    drive.destination().client.service().files().update(
        fileId=trashed.drive_file_id, body={"trashed": False}, supportsAllDrives=True
    ).execute()
    again = mig.run_migration(_context(db, s3, drive.destination))
    assert (again.moved, again.failed, again.failure_reasons) == (1, 1, {mig.REASON_NO_CONTENT: 1})
