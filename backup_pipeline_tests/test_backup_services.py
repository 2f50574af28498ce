"""Backup services without Dagster: pg_dump streaming, bucket export, progress, the set contract.

Real PostgreSQL, SeaweedFS's S3 server, a real local-folder destination and the real archive format.
"""

from __future__ import annotations

import io
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import urllib3
from minio import Minio
from minio.commonconfig import Tags

from backup_pipeline.archive.stream_crypto import decrypt_stream
from backup_pipeline.archive.tar_parts import read_bucket_archive
from backup_pipeline.destinations.local_folder import LocalFolderDestination
from backup_pipeline.ops.backup import build_archive_writer, build_encryptor
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.services.backup_buckets import (
    NO_READ_AHEAD,
    BucketExportReport,
    ReadAhead,
    TagReading,
    export_bucket,
    iter_bucket_objects,
    select_buckets,
)
from backup_pipeline.services.backup_database import (
    dump_database,
    locate_and_check_pg_dump,
    pg_dump_command,
    stream_pg_dump,
)
from backup_pipeline.services.backup_parts import (
    BackupError,
    ErrorCode,
    backup_id_time,
    mapping_key,
    new_backup_id,
    part_properties,
)
from backup_pipeline.services.backup_upload import list_sets
from backup_pipeline.services.progress import ProgressSnapshot, ProgressTracker

from .backup_helpers import INSTALLATION, make_env
from .fixtures.ports import free_port
from .fixtures.postgres import PgDatabase
from .fixtures.s3 import S3Server

BACKUP_ID = "20260101T000000Z-0123abcd"


# --- contract and progress ------------------------------------------------------------------


def test_mapping_keys_are_dagster_safe_and_unique() -> None:
    taken: set[str] = set()
    keys = [mapping_key(b, taken) for b in ["my.bucket-2", "my-bucket.2", "plain"]]
    assert keys == ["my_bucket_2", "my_bucket_2_2", "plain"]


def test_backup_id_sorts_by_time_and_carries_the_run() -> None:
    backup_id = new_backup_id(run_id="1a2b3c4d-0000-0000-0000-000000000000")
    assert backup_id.endswith("-1a2b3c4d")
    assert backup_id_time(backup_id).year >= 2024
    with pytest.raises(ValueError, match="not a backup id"):
        backup_id_time("nope")


def test_part_properties_fit_drive_limits() -> None:
    props = part_properties("x" * 40, BACKUP_ID, "bucket-" + "b" * 63)
    assert props["partKind"] == "bucket" and props["formatVersion"] == "1"
    assert all(len(k.encode()) + len(v.encode()) <= 124 for k, v in props.items())


def test_progress_is_reported_at_a_bounded_rate() -> None:
    now = [0.0]
    seen: list[ProgressSnapshot] = []
    tracker = ProgressTracker(
        "bucket x", seen.append, bytes_total=1000, objects_total=100, min_interval=10, clock=lambda: now[0]
    )
    for _ in range(100):  # 100 updates over 50 s → at most one report per 10 s
        now[0] += 0.5
        tracker.add(10, 1)
    final = tracker.finish()
    assert 4 <= len(seen) <= 6
    assert final.final and final.bytes_done == 1000 and final.objects_done == 100
    middle = seen[1]
    assert middle.eta_seconds is not None and middle.eta_seconds > 0
    assert "ETA" in middle.message() and "objects" in middle.message()


def test_bucket_selection() -> None:
    assert select_buckets(["a1a", "b2b", "c3c"], [], ["b2b"]) == ["a1a", "c3c"]
    with pytest.raises(BackupError) as err:
        select_buckets(["a1a"], ["zzz"], [])
    assert err.value.code == ErrorCode.BUCKET_NOT_FOUND


# --- database ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_db(pg_database: PgDatabase) -> PgDatabase:
    with pg_database.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int primary key, name text)")
        conn.execute("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 2000) g")
        conn.execute("CREATE TABLE sessions (id int primary key, token text)")
        conn.execute("INSERT INTO sessions SELECT g, md5(g::text) FROM generate_series(1, 50) g")
        conn.execute("CREATE TABLE schema_migrations (version text)")
        conn.execute("INSERT INTO schema_migrations VALUES ('20250101_a'), ('20250102_b')")
    return pg_database


def test_pg_dump_streams_a_custom_dump_without_password_on_the_command_line(small_db: PgDatabase) -> None:
    pg = PostgresResource(database_url=small_db.url, password="not-on-argv")
    tools, _, _ = locate_and_check_pg_dump(PostgresResource(database_url=small_db.url))
    cmd = pg_dump_command(tools.pg_dump.path, ["public.sessions"])
    assert "not-on-argv" not in " ".join(cmd) and "--format=custom" in cmd
    env = pg.libpq_env()
    assert env["PGPASSWORD"] == "not-on-argv"
    env.pop("PGPASSWORD")  # trust auth on the test server
    dump = b"".join(stream_pg_dump(tools.pg_dump.path, env, ["public.sessions"]))
    listing = subprocess.run(
        ["pg_restore", "--list"], input=dump, capture_output=True, check=True
    ).stdout.decode()
    assert "TABLE DATA public items" in listing
    assert "TABLE public sessions" in listing and "TABLE DATA public sessions" not in listing


def test_dump_database_uploads_an_encrypted_part_readable_by_pg_restore(
    small_db: PgDatabase, s3: S3Server, tmp_path: Path
) -> None:
    env = make_env(tmp_path, small_db, s3)
    encryptor, _ = build_encryptor(env.keys)
    dest = env.dest()
    result = dump_database(
        env.app_db,
        dest,
        encryptor,
        installation_id=INSTALLATION,
        backup_id=BACKUP_ID,
        exclude_table_data=["public.sessions"],
        schema_version_query="SELECT max(version) FROM schema_migrations",
    )
    assert result.schema_version == "20250102_b"
    assert result.part.plaintext_size > 0 and result.part.size > result.part.plaintext_size
    identity = env.recovery_identity()
    plain = b"".join(
        decrypt_stream(
            dest.get(result.part.file_id),
            expected_backup_id=BACKUP_ID,
            expected_part_name="database",
            recovery_identity=identity,
        )
    )
    listing = subprocess.run(["pg_restore", "--list"], input=plain, capture_output=True, check=True).stdout
    assert b"TABLE DATA public items" in listing


def _fake_pg_tools(directory: Path, version: str) -> None:
    """Executables that report an old version: the only way to meet an old pg_dump on this machine."""
    directory.mkdir(parents=True)
    for name in ("pg_dump", "pg_restore"):
        path = directory / name
        path.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {version}'\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_pg_dump_missing_or_too_old_fails_with_a_clear_code(small_db: PgDatabase, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BackupError) as missing:
        locate_and_check_pg_dump(PostgresResource(database_url=small_db.url, pg_bin_dir=str(empty)))
    assert missing.value.code == ErrorCode.PG_DUMP_NOT_FOUND
    assert "BACKUP_PIPELINE_PG_BIN_DIR" in str(missing.value)

    old = tmp_path / "old"
    _fake_pg_tools(old, "9.6.24")
    with pytest.raises(BackupError) as too_old:
        locate_and_check_pg_dump(PostgresResource(database_url=small_db.url, pg_bin_dir=str(old)))
    assert too_old.value.code == ErrorCode.PG_DUMP_TOO_OLD
    assert "9.6" in str(too_old.value) and "15" in str(too_old.value)


def test_unreachable_database_is_reported_as_such() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(BackupError) as err:
        locate_and_check_pg_dump(PostgresResource(database_url=url, connect_timeout_seconds=2))
    assert err.value.code == ErrorCode.DATABASE_UNREACHABLE


# --- buckets ----------------------------------------------------------------------------------


def _fill_bucket(s3: S3Server, bucket: str, n: int, size: int = 2000) -> dict[str, bytes]:
    client = s3.client()
    client.make_bucket(bucket)
    content = {}
    for i in range(n):
        key = f"dir {i % 3}/ünï {i}.txt"
        data = (f"{i}:".encode() * size)[:size]
        tags = Tags.new_object_tags()
        tags["n"] = str(i)
        client.put_object(
            bucket,
            key,
            io.BytesIO(data),
            len(data),
            content_type="text/plain",
            metadata={"idx": str(i)},
            tags=tags,
        )
        content[key] = data
    return content


# A window of two objects: the last of twelve is fetched only after the first is archived,
# so deleting it then is seen (with read-ahead and without).
SHORT_READ_AHEAD = ReadAhead(workers=2, window_objects=2)


@pytest.mark.parametrize("read_ahead", [NO_READ_AHEAD, SHORT_READ_AHEAD], ids=["serial", "read_ahead"])
def test_export_records_an_object_deleted_during_the_backup(
    small_db: PgDatabase, s3: S3Server, tmp_path: Path, read_ahead: ReadAhead
) -> None:
    bucket = f"photos-{read_ahead.workers}"
    content = _fill_bucket(s3, bucket, 12)
    keys = sorted(content)
    victim = keys[-1]
    client = s3.client()
    env = make_env(tmp_path, small_db, s3)
    encryptor, _ = build_encryptor(env.keys)
    dest = env.dest()

    def delete_victim_after_first(record: object) -> None:
        if victim in content:
            client.remove_object(bucket, victim)
            content.pop(victim)

    result = export_bucket(
        client,
        bucket,
        dest,
        encryptor,
        build_archive_writer(1),
        installation_id=INSTALLATION,
        backup_id=BACKUP_ID,
        on_object_done=delete_victim_after_first,
        read_ahead=read_ahead,
    )
    assert [v["key"] for v in result.vanished] == [victim]
    assert result.object_count == len(keys) - 1
    identity = env.recovery_identity()
    archived = {}
    plain = decrypt_stream(
        dest.get(result.part.file_id),
        expected_backup_id=BACKUP_ID,
        expected_part_name=f"bucket-{bucket}",
        recovery_identity=identity,
    )
    for obj in read_bucket_archive(plain):
        archived[obj.key] = (obj.fileobj.read(), obj.metadata, obj.tags, obj.content_type)
    assert set(archived) == set(content)
    for key, data in content.items():
        body, meta, tags, ctype = archived[key]
        assert body == data and ctype == "text/plain"
        assert meta == {"idx": key.rsplit(" ", 1)[1].removesuffix(".txt")}
        assert tags == {"n": meta["idx"]}


def test_s3_stopped_mid_export_fails_and_leaves_no_part(
    small_db: PgDatabase, s3: S3Server, tmp_path: Path
) -> None:
    _fill_bucket(s3, "docs", 6, size=300_000)
    client = s3.client()
    env = make_env(tmp_path, small_db, s3)
    encryptor, _ = build_encryptor(env.keys)
    dest = LocalFolderDestination(tmp_path / "dest")

    def stop_s3(record: object) -> None:
        if s3.process is not None:
            s3.stop()

    from backup_pipeline.resources.s3 import S3Resource

    quick = S3Resource(
        endpoint=s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key, retries=0
    ).client()
    with pytest.raises(BackupError) as err:
        export_bucket(
            quick,
            "docs",
            dest,
            encryptor,
            build_archive_writer(1),
            installation_id=INSTALLATION,
            backup_id=BACKUP_ID,
            on_object_done=stop_s3,
            # Objects 4-6 are not fetched yet when S3 stops after the first.
            read_ahead=SHORT_READ_AHEAD,
        )
    assert err.value.code == ErrorCode.S3_UNREACHABLE
    assert s3.endpoint.split("//")[1] in str(err.value)
    assert list_sets(dest, INSTALLATION) == {}
    del client


# --- read-ahead -------------------------------------------------------------------------------


class _RecordingPool(urllib3.PoolManager):
    """A real HTTP client that remembers each request's method and URL."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def urlopen(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.requests.append((method, url))
        return super().urlopen(method, url, *args, **kwargs)


def _recording_client(s3: S3Server) -> tuple[Minio, _RecordingPool]:
    pool = _RecordingPool(maxsize=16)
    client = Minio(**s3.client_args(), http_client=pool)
    return client, pool


def _mixed_bucket(s3: S3Server, bucket: str) -> dict[str, tuple[bytes, dict[str, str]]]:
    """40 small objects (every third tagged) and three above the test's read-ahead size."""
    client = s3.client()
    client.make_bucket(bucket)
    content: dict[str, tuple[bytes, dict[str, str]]] = {}
    sizes = [0, 1, 5000, 70_000, 300_000] + [1000 + i * 37 for i in range(38)]
    for i, size in enumerate(sizes):
        key = f"{'ab'[i % 2]}/{i:03d} é.bin"
        data = bytes((i * 7 + j) % 251 for j in range(size))
        tags: dict[str, str] = {"n": str(i)} if i % 3 == 0 else {}
        minio_tags = None
        if tags:
            minio_tags = Tags.new_object_tags()
            minio_tags.update(tags)
        client.put_object(bucket, key, io.BytesIO(data), len(data), metadata={"i": str(i)}, tags=minio_tags)
        content[key] = (data, tags)
    return content


def _archived(
    env: Any, dest: Any, result: Any, bucket: str, backup_id: str
) -> list[tuple[str, bytes, dict, dict]]:
    plain = decrypt_stream(
        dest.get(result.part.file_id),
        expected_backup_id=backup_id,
        expected_part_name=f"bucket-{bucket}",
        recovery_identity=env.recovery_identity(),
    )
    return [(o.key, o.fileobj.read(), o.metadata, o.tags) for o in read_bucket_archive(plain)]


def test_read_ahead_archives_the_same_objects_in_listing_order_as_one_at_a_time(
    small_db: PgDatabase, s3: S3Server, tmp_path: Path
) -> None:
    bucket = "mixed-sizes"
    content = _mixed_bucket(s3, bucket)
    listing_order = [o.object_name for o in s3.client().list_objects(bucket, recursive=True)]
    env = make_env(tmp_path, small_db, s3)
    encryptor, _ = build_encryptor(env.keys)
    dest = env.dest()
    # 64 KiB read-ahead size: the 70 kB and 300 kB objects stream, the rest are read ahead
    # four at a time in a 128 KiB window.
    read_ahead = ReadAhead(workers=4, object_max_bytes=64 * 1024, window_bytes=128 * 1024)
    results = {
        label: export_bucket(
            s3.client(),
            bucket,
            dest,
            encryptor,
            build_archive_writer(1),
            installation_id=INSTALLATION,
            backup_id=BACKUP_ID[:-8] + suffix,
            read_ahead=ahead,
        )
        for label, suffix, ahead in (("serial", "0000000a", NO_READ_AHEAD), ("ahead", "0000000b", read_ahead))
    }
    ahead_archive = _archived(env, dest, results["ahead"], bucket, BACKUP_ID[:-8] + "0000000b")
    assert [key for key, *_ in ahead_archive] == listing_order
    for key, body, meta, tags in ahead_archive:
        assert body == content[key][0], key
        assert tags == content[key][1], key
        assert meta == {"i": str(int(key[2:5]))}
    assert results["ahead"].inventory == results["serial"].inventory
    assert results["ahead"].object_count == len(content)
    assert not results["ahead"].changed and not results["ahead"].vanished


@pytest.mark.parametrize("tag_reading", ["when_counted", "always"])
def test_tags_are_requested_only_for_objects_whose_get_reports_some(
    small_db: PgDatabase, s3: S3Server, tmp_path: Path, tag_reading: TagReading
) -> None:
    bucket = f"tag-count-{tag_reading.replace('_', '-')}"
    content = _mixed_bucket(s3, bucket)
    client, pool = _recording_client(s3)
    report = BucketExportReport(bucket)
    seen: dict[str, dict[str, str]] = {}
    for opened in iter_bucket_objects(
        client, bucket, report, read_ahead=ReadAhead(workers=4), tag_reading=tag_reading
    ):
        while opened.body.read(1 << 20):
            pass
        seen[opened.key] = opened.tags
    assert seen == {key: tags for key, (_, tags) in content.items()}
    tag_requests = [url for method, url in pool.requests if method == "GET" and "tagging" in url]
    tagged = sum(1 for _, tags in content.values() if tags)
    assert 0 < tagged < len(content)
    assert len(tag_requests) == (len(content) if tag_reading == "always" else tagged)


def test_closing_the_export_midway_stops_the_read_ahead_threads(s3: S3Server) -> None:
    bucket = "abandoned"
    _mixed_bucket(s3, bucket)
    report = BucketExportReport(bucket)
    objects = iter_bucket_objects(s3.client(), bucket, report, read_ahead=ReadAhead(workers=4))
    first = next(objects)
    first.body.read()
    objects.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(
        t.name.startswith(f"s3-read-{bucket}") for t in threading.enumerate()
    ):
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate() if t.name.startswith(f"s3-read-{bucket}")]
    assert report.objects == [] and report.listed == 1
