"""The migration service on real PostgreSQL + SeaweedFS S3, with a local-folder destination as the source.

The local folder implements the same destination contract as the Drive client (stat/get/
delete by id), which makes these edge cases fast; the Drive test server run is in
``test_migration_drive.py``.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from backup_pipeline.destinations.base import NotFoundError
from backup_pipeline.destinations.local_folder import LocalFolderDestination
from backup_pipeline.sample_app.content import GeneratedStream
from backup_pipeline.services import migration as mig
from backup_pipeline_tests.fixtures.postgres import PgDatabase, create_database, drop_database
from backup_pipeline_tests.fixtures.s3 import S3Server
from backup_pipeline_tests.migration_data import LegacyRow, LegacySpec, create_legacy_assets, standard_specs

BUCKET = "media"


@pytest.fixture()
def db() -> Iterator[PgDatabase]:
    database = create_database("bp_mig")
    yield database
    drop_database(database.name)


def _make(db: PgDatabase, folder: Path, specs: list[LegacySpec]) -> list[LegacyRow]:
    source = LocalFolderDestination(folder)

    def put(name: str, stream: GeneratedStream) -> str:
        return source.put(f"f{uuid.uuid4().hex}", stream, {}).id

    with db.connect() as conn:
        return create_legacy_assets(conn, specs, put)


def _ctx(db: PgDatabase, s3: S3Server, folder: Path, **options: object) -> mig.MigrationContext:
    return mig.MigrationContext(
        connect=db.connect,
        drive=lambda: LocalFolderDestination(folder),
        minio=s3.client(),
        bucket=BUCKET,
        options=mig.MigrationOptions(**options),  # type: ignore[arg-type]
        run_id=f"test-{uuid.uuid4().hex[:8]}",
        endpoint=s3.endpoint,
    )


def _pointing(db: PgDatabase) -> list[tuple[int, str, str, str, int]]:
    with db.connect() as conn:
        return conn.execute(
            "SELECT id, bucket, object_key, checksum_sha256, size_bytes FROM media_assets "
            "WHERE storage_provider = 'minio' ORDER BY id"
        ).fetchall()


def _recorded_content_type(db: PgDatabase, asset_id: int) -> str:
    with db.connect() as conn:
        row = conn.execute("SELECT content_type FROM media_assets WHERE id = %s", (asset_id,)).fetchone()
    assert row is not None
    return str(row[0])


def _object_sha256(s3: S3Server, bucket: str, key: str) -> str:
    response = s3.client().get_object(bucket, key)
    try:
        reader = mig.HashingReader(response.stream(1 << 20))
        while reader.read(1 << 20):
            pass
        return reader.sha256.hexdigest()
    finally:
        response.close()
        response.release_conn()


def test_safe_object_names() -> None:
    assert mig.object_key_for("12", "a/b\\c.jpg") == "drive-migrated/12/a_b_c.jpg"
    assert mig.object_key_for("3", "../../etc/passwd") == "drive-migrated/3/.._.._etc_passwd"
    assert mig.object_key_for("4", "..") == "drive-migrated/4/file"
    assert mig.object_key_for("5", "") == "drive-migrated/5/file"
    assert mig.safe_object_name("Cafe\u0301.jpg") == "Café.jpg"
    assert mig.safe_object_name("tab\there\nnl") == "tab_here_nl"
    long = mig.safe_object_name("ü" * 300 + ".jpeg")
    assert long.endswith(".jpeg") and len(long.encode()) <= mig.MAX_KEY_NAME_BYTES
    long.encode("utf-8").decode("utf-8")  # never cut inside a character


def test_content_type_choice() -> None:
    assert mig.choose_content_type("image/png") == "image/png"
    assert mig.choose_content_type("text/plain; charset=utf-8") == "text/plain; charset=utf-8"
    assert mig.choose_content_type("not a content type\r\nX-Injected: 1") == "application/octet-stream"
    assert mig.choose_content_type(None) == "application/octet-stream"
    assert mig.choose_content_type("image/") == "application/octet-stream"


def test_options_are_validated() -> None:
    with pytest.raises(mig.MigrationError, match="confirmation phrase"):
        mig.MigrationOptions(delete_source=True, confirmation="yes").validate()
    with pytest.raises(mig.MigrationError, match="concurrency"):
        mig.MigrationOptions(concurrency=0).validate()
    mig.MigrationOptions(delete_source=True, confirmation=mig.DELETE_SOURCE_CONFIRMATION).validate()


def test_migrate_rerun_and_flip(db: PgDatabase, s3: S3Server, tmp_path: Path) -> None:
    rows = _make(db, tmp_path / "drive", standard_specs(40, [12 * 1024 * 1024]))

    dry = mig.run_migration(_ctx(db, s3, tmp_path / "drive", dry_run=True))
    # The dry run and the real run agree: the tampered row's recorded sha256 disagrees with the
    # source's metadata already (main counted it as movable).
    assert dry.dry_run and dry.would_move == 36 and dry.would_fail == 4
    assert dry.would_move_bytes == sum(r.spec.size for r in rows if r.migratable)
    assert dry.failure_reasons == {
        mig.REASON_NOT_FOUND: 3,
        mig.REASON_RECORDED_MISMATCH: 1,
    }
    assert _pointing(db) == []
    assert not s3.client().bucket_exists(BUCKET)

    first = mig.run_migration(
        _ctx(db, s3, tmp_path / "drive", batch_size=7, concurrency=3, part_size=5 * 1024 * 1024)
    )
    assert (first.moved, first.failed) == (36, 4)
    assert first.failure_reasons == {
        "not found in Google Drive": 3,
        "recorded values differ from Google Drive": 1,
    }
    assert not first.settings_flipped and "4 assets are still in Google Drive" in first.settings_message
    pointing = {r[0]: r for r in _pointing(db)}
    assert set(pointing) == {r.asset_id for r in rows if r.migratable}
    for row in rows:
        if row.migratable:
            _, bucket, key, sha, size = pointing[row.asset_id]
            assert (sha, size) == (row.sha256, row.spec.size)
            assert _object_sha256(s3, bucket, key) == row.sha256
    keys = {o.object_name for o in s3.client().list_objects(BUCKET, recursive=True)}
    assert keys == {r[2] for r in pointing.values()}  # the tampered copy was removed, no strays
    slashed = next(r for r in rows if r.spec.name == "../../etc/passwd")
    assert pointing[slashed.asset_id][2] == f"drive-migrated/{slashed.asset_id}/.._.._etc_passwd"
    odd = next(r for r in rows if r.spec.name == "wrong content type.jpg")
    stat = s3.client().stat_object(BUCKET, pointing[odd.asset_id][2])
    # The recorded type is what is sent. SeaweedFS serves a .jpg key as image/jpeg whatever was
    # sent; moto (and AWS) serve what was sent. Either way the summary tells the truth.
    assert _recorded_content_type(db, odd.asset_id) == "application/octet-stream"
    if stat.content_type == "application/octet-stream":
        assert first.stored_differently == 0
    else:
        assert first.stored_differently >= 1
        assert {
            "asset_id": str(odd.asset_id),
            "sent_content_type": "application/octet-stream",
            "served_content_type": stat.content_type,
        } in first.stored_differently_examples

    with db.connect() as conn:
        statuses = dict(
            conn.execute("SELECT status, count(*) FROM storage_migration GROUP BY status").fetchall()
        )
        assert statuses == {"switched": 36, "failed": 4}
        assert conn.execute("SELECT storage_provider FROM media_asset_settings").fetchone() == (
            "google_drive",
        )

    second = mig.run_migration(_ctx(db, s3, tmp_path / "drive"))
    assert (second.moved, second.adopted, second.failed, second.bytes_moved) == (0, 0, 4, 0)
    with db.connect() as conn:
        attempts = conn.execute("SELECT max(attempts), min(attempts) FROM storage_migration").fetchone()
        assert attempts == (2, 1)  # only the failed ones were tried again

    # The operator deals with the rest (here: removes those rows); the next run flips the setting.
    with db.connect() as conn:
        conn.execute("DELETE FROM media_assets WHERE storage_provider = 'google_drive'")
        conn.commit()
    last = mig.run_migration(_ctx(db, s3, tmp_path / "drive"))
    assert last.settings_flipped and last.remaining_in_drive == 0
    with db.connect() as conn:
        assert conn.execute("SELECT storage_provider FROM media_asset_settings").fetchone() == ("minio",)
        assert conn.execute(
            "SELECT count(*) FROM app_settings WHERE key = 'media.storage_backend'"
        ).fetchone() == (0,)


def test_object_left_by_a_crash_is_adopted_not_uploaded_again(
    db: PgDatabase, s3: S3Server, tmp_path: Path
) -> None:
    rows = _make(db, tmp_path / "drive", [LegacySpec("a.jpg", 300_000), LegacySpec("b.jpg", 200_000)])
    ctx = _ctx(db, s3, tmp_path / "drive")
    with db.connect() as conn:
        mig.plan_batches(conn, ctx.minio, BUCKET, ctx.options, "crashed-run", s3.endpoint)
        keys = dict(conn.execute("SELECT asset_id, target_key FROM storage_migration").fetchall())
    # As if a run died after uploading a.jpg and before recording it; b.jpg's key holds garbage.
    a, b = rows
    content = GeneratedStream(a.spec.seed, a.spec.size).read()
    s3.client().put_object(BUCKET, keys[str(a.asset_id)], io.BytesIO(content), len(content))
    s3.client().put_object(BUCKET, keys[str(b.asset_id)], io.BytesIO(b"x" * 200_000), 200_000)

    summary = mig.run_migration(ctx)
    assert (summary.adopted, summary.moved, summary.bytes_moved) == (1, 1, b.spec.size)
    assert summary.settings_flipped
    for row in rows:
        assert _object_sha256(s3, BUCKET, keys[str(row.asset_id)]) == row.sha256
    assert len(list(s3.client().list_objects(BUCKET, recursive=True))) == 2


def test_delete_source_only_after_switch(db: PgDatabase, s3: S3Server, tmp_path: Path) -> None:
    rows = _make(
        db, tmp_path / "drive", [LegacySpec("a.jpg", 1000), LegacySpec("t.jpg", 900, wrong_checksum=True)]
    )
    summary = mig.run_migration(
        _ctx(db, s3, tmp_path / "drive", delete_source=True, confirmation=mig.DELETE_SOURCE_CONFIRMATION)
    )
    assert summary.sources_deleted == 1
    source = LocalFolderDestination(tmp_path / "drive")
    ok, tampered = rows
    with pytest.raises(NotFoundError):
        source.stat(ok.drive_file_id)
    assert source.stat(tampered.drive_file_id).size == 900  # never verified: kept
