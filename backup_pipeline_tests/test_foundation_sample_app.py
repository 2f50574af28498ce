"""The sample app seeding: rows point at real objects with the recorded size/checksum/metadata."""

from __future__ import annotations

import hashlib

from minio.commonconfig import Tags

from backup_pipeline.sample_app import (
    SeedSpec,
    generated_bytes,
    legacy_drive_content,
    read_object,
    seed_sample_app,
)
from backup_pipeline.sample_app.seed import MiB
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server

SPEC = SeedSpec(small_objects=60, large_object_bytes=(20 * MiB,), users=30, legacy_drive_files=4)


def test_seed_database_and_buckets(pg_database: PgDatabase, s3: S3Server) -> None:
    client = s3.client()
    with pg_database.connect() as conn:
        report = seed_sample_app(conn, client, SPEC)

        # Every object the report lists exists with its size, content type, metadata and tags.
        listed = {
            (b, o.object_name): o.size for b in SPEC.buckets for o in client.list_objects(b, recursive=True)
        }
        assert listed == {(o.bucket, o.key): o.size for o in report.objects}
        keys = {o.key for o in report.objects}
        assert "users/12/日本語/ファイル名.png" in keys and "users/3/notes & plans (draft) #1.txt" in keys
        large = [o for o in report.objects if o.size == 20 * MiB]
        assert len(large) == 1
        tagged = next(o for o in report.objects if o.tags)
        got_tags = client.get_object_tags(tagged.bucket, tagged.key)
        assert isinstance(got_tags, Tags) and dict(got_tags) == tagged.tags
        stat = client.stat_object(tagged.bucket, tagged.key)
        assert stat.content_type == tagged.content_type
        assert stat.metadata["x-amz-meta-uploaded-by"] == tagged.metadata["uploaded-by"]
        small = next(o for o in report.objects if 0 < o.size < 10_000 and o.compressible)
        data = read_object(client, small.bucket, small.key)
        assert hashlib.sha256(data).hexdigest() == small.sha256
        assert data == generated_bytes(small.content_seed, small.size, compressible=True)

        # media_assets rows match the objects in media/documents (avatars are unreferenced).
        rows = conn.execute(
            "SELECT bucket, object_key, size_bytes, checksum_sha256 FROM media_assets WHERE storage_provider = 'minio'"
        ).fetchall()
        expected = {(o.bucket, o.key, o.size, o.sha256) for o in report.objects if o.bucket != "avatars"}
        assert set(rows) == expected

        # Legacy Drive rows: reproducible content with the recorded digests.
        legacy = conn.execute(
            "SELECT drive_file_id, size_bytes, checksum_md5 FROM media_assets WHERE storage_provider = 'google_drive'"
        ).fetchall()
        assert sorted(legacy) == sorted((f.drive_file_id, f.size, f.md5) for f in report.legacy_files)
        first = report.legacy_files[0]
        assert hashlib.md5(legacy_drive_content(first).read(), usedforsecurity=False).hexdigest() == first.md5
        setting = conn.execute("SELECT storage_provider FROM media_asset_settings").fetchone()
        assert setting == ("google_drive",)

        # Thousands of ordinary rows for a realistic dump.
        assert report.table_rows["audit_log"] == SPEC.audit_events
        assert report.table_rows["comments"] == SPEC.comments
        assert report.table_rows["schema_migrations"] >= 1


def test_seed_is_deterministic(s3: S3Server, fresh_pg_database: PgDatabase) -> None:
    spec = SeedSpec(
        small_objects=10, large_object_bytes=(), users=5, comments=10, audit_events=10, sessions=5
    )
    with fresh_pg_database.connect() as conn:
        first = seed_sample_app(conn, s3.client(), spec)
    s3.reset()
    with fresh_pg_database.connect() as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        conn.commit()
        second = seed_sample_app(conn, s3.client(), spec)
    assert [(o.key, o.sha256) for o in first.objects] == [(o.key, o.sha256) for o in second.objects]
