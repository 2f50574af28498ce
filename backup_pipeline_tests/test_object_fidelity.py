"""Every byte, key, header, metadata value, tag and last-modified time of an object survives
backup → restore, and what cannot is reported, never dropped silently (issue 15, object side).

Source objects are made with the minio client or with raw signed requests (``s3_raw``: exact
header bytes, ``Expires``, non-ASCII values), as other applications make them; the backup and
restore run through the product's services against the fixture's S3 server, with a real
local destination and the real archive format.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import gzip
import hashlib
import io
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from minio import Minio
from minio.commonconfig import ENABLED, Tags
from minio.datatypes import Object
from minio.error import S3Error
from minio.versioningconfig import VersioningConfig

from backup_pipeline.archive.manifest import Manifest
from backup_pipeline.archive.stream_crypto import decrypt_stream
from backup_pipeline.archive.tar_parts import (
    ArchivedObject,
    SourceObject,
    read_bucket_archive,
    write_bucket_archive,
)
from backup_pipeline.ops.backup import build_archive_writer, build_backup_job, build_encryptor
from backup_pipeline.sample_app.seed import read_object
from backup_pipeline.services import restore as svc
from backup_pipeline.services.backup_buckets import (
    NO_READ_AHEAD,
    BucketExportResult,
    ReadAhead,
    export_bucket,
)
from backup_pipeline.services.backup_finalize import FinalizeInput, build_manifest
from backup_pipeline.services.migration.copy import _hash_object

from . import backup_helpers as h
from . import s3_raw
from .fixtures.postgres import PgDatabase
from .fixtures.s3 import S3Server

BACKUP_ID = "20260102T000000Z-0b1ec7ed"
MiB = 1024 * 1024
RECORDED = ("cache-control", "content-disposition", "content-encoding", "content-language", "expires")

GZIP_BODY = gzip.compress(b"a line of text that compresses well\n" * 40, mtime=0)
NFC = unicodedata.normalize("NFC", "caf\u00e9/r\u00e9sum\u00e9.txt")
NFD = unicodedata.normalize("NFD", NFC)
# 1 024 bytes in segments of at most 220 (SeaweedFS 4.48 refuses a 255-byte segment).
LONG_KEY = "/".join(["x" * 200] * 5) + "y" * 20
assert len(LONG_KEY.encode()) == 1024 and NFC != NFD


def _export(
    env: h.BackupEnv,
    client: Minio,
    bucket: str,
    *,
    backup_id: str = BACKUP_ID,
    read_ahead: ReadAhead = ReadAhead(),
) -> BucketExportResult:
    encryptor, _ = build_encryptor(env.keys)
    return export_bucket(
        client,
        bucket,
        env.dest(),
        encryptor,
        build_archive_writer(1),
        installation_id=h.INSTALLATION,
        backup_id=backup_id,
        read_ahead=read_ahead,
    )


def _plaintext(env: h.BackupEnv, result: BucketExportResult, backup_id: str = BACKUP_ID) -> Iterator[bytes]:
    return decrypt_stream(
        env.dest().get(result.part.file_id),
        expected_backup_id=backup_id,
        expected_part_name=f"bucket-{result.bucket}",
        # The org keyring: the recovery secret can be exported only once per test.
        org_keyring=env.keys.keyring(),
    )


def _archived(env: h.BackupEnv, result: BucketExportResult) -> dict[str, tuple[ArchivedObject, bytes]]:
    return {obj.key: (obj, obj.fileobj.read()) for obj in read_bucket_archive(_plaintext(env, result))}


def _restore(env: h.BackupEnv, result: BucketExportResult, client: Minio, target: str) -> svc.BucketSummary:
    inventory = {o["key"]: svc.IncomingObject(o["key"], o["size"], o["sha256"]) for o in result.inventory}
    return svc.restore_bucket(
        client,
        target,
        svc.bucket_entries(_plaintext(env, result)),
        inventory,
        svc.ConflictPolicy.SKIP,
        BACKUP_ID,
    )


def _served(s3: S3Server, client: Minio, bucket: str, key: str) -> dict[str, Any]:
    """What a client is served for ``key``: exact header bytes, body bytes, tags."""
    head = s3_raw.head_object(s3, bucket, key)
    headers = {
        name.lower(): value
        for name, value in head.headers
        if name.lower() in RECORDED
        or name.lower() == "content-type"
        or name.lower().startswith("x-amz-meta-")
    }
    return {
        "headers": headers,
        "body": read_object(client, bucket, key),
        "tags": dict(client.get_object_tags(bucket, key) or {}),
    }


def _tags(**values: str) -> Tags:
    tags = Tags.new_object_tags()
    tags.update(values)
    return tags


# --- bodies are read raw -----------------------------------------------------------------------


@pytest.mark.parametrize("read_ahead", [NO_READ_AHEAD, ReadAhead(workers=2)], ids=["streamed", "read_ahead"])
def test_gzip_encoded_object_is_archived_as_stored_not_inflated(
    pg_database: PgDatabase, s3: S3Server, tmp_path: Path, read_ahead: ReadAhead
) -> None:
    client = s3.client()
    client.make_bucket("encoded")
    client.put_object(
        "encoded",
        "page.html",
        io.BytesIO(GZIP_BODY),
        len(GZIP_BODY),
        content_type="text/html",
        metadata={"Content-Encoding": "gzip"},
    )
    env = h.make_env(tmp_path, pg_database, s3)
    result = _export(env, client, "encoded", read_ahead=read_ahead)
    assert not result.changed and not result.unreadable
    obj, body = _archived(env, result)["page.html"]
    assert body == GZIP_BODY
    assert obj.headers == {"Content-Encoding": "gzip"}
    assert result.inventory == [
        {"key": "page.html", "size": len(GZIP_BODY), "sha256": hashlib.sha256(GZIP_BODY).hexdigest()}
    ]


def test_restore_and_migration_hash_the_stored_bytes_of_a_gzip_encoded_object(s3: S3Server) -> None:
    client = s3.client()
    client.make_bucket("encoded")
    client.put_object(
        "encoded", "data.json", io.BytesIO(GZIP_BODY), len(GZIP_BODY), metadata={"Content-Encoding": "gzip"}
    )
    stored = hashlib.sha256(GZIP_BODY).hexdigest()
    # The restore's if_different/keep_both decision compares this with the backup's SHA-256.
    assert svc.object_sha256(client, "encoded", "data.json") == stored
    # The migration adopts an object after a crash by these digests.
    digests = _hash_object(client, "encoded", "data.json")
    assert (digests.size, digests.sha256) == (len(GZIP_BODY), stored)
    assert digests.md5 == hashlib.md5(GZIP_BODY).hexdigest()


# --- keys --------------------------------------------------------------------------------------


def test_keys_ending_in_a_slash_are_backed_up(pg_database: PgDatabase, s3: S3Server, tmp_path: Path) -> None:
    client = s3.client()
    client.make_bucket("folders")
    for key, data in (("photos/", b""), ("photos/cat.jpg", b"\xff\xd8 jpeg"), ("empty/", b"")):
        client.put_object("folders", key, io.BytesIO(data), len(data))
    env = h.make_env(tmp_path, pg_database, s3)
    result = _export(env, client, "folders")
    assert sorted(o["key"] for o in result.inventory) == ["empty/", "photos/", "photos/cat.jpg"]
    archived = _archived(env, result)
    assert {k: body for k, (_, body) in archived.items()} == {
        "empty/": b"",
        "photos/": b"",
        "photos/cat.jpg": b"\xff\xd8 jpeg",
    }
    summary = _restore(env, result, client, "folders-restored")
    assert summary.added == 3 and summary.failed == 0
    restored = sorted(o.object_name or "" for o in client.list_objects("folders-restored", recursive=True))
    assert restored == ["empty/", "photos/", "photos/cat.jpg"]


# --- the whole object --------------------------------------------------------------------------


def _hostile_bucket(s3: S3Server, client: Minio, bucket: str) -> None:
    """Objects whose keys, headers, metadata and tags a restore must give back exactly."""
    client.make_bucket(bucket)
    s3_raw.put_object(
        s3,
        bucket,
        "site/index.html",
        GZIP_BODY,
        {
            "Content-Type": b"text/html; charset=utf-8",
            "Content-Encoding": b"gzip",
            "Cache-Control": b"public, max-age=31536000, immutable",
            "Content-Disposition": "attachment; filename=\"resume.html\"; filename*=UTF-8''r%C3%A9sum%C3%A9.html",
            "Content-Language": b"fr-CA, en",
            "Expires": b"Thu, 01 Dec 2094 16:00:00 GMT",
        },
    )
    # Non-ASCII user metadata as raw UTF-8 (minio-go, MinIO, SeaweedFS) and as RFC 2047 (AWS S3
    # returns it so); a user key named like a standard header must stay user metadata.
    s3_raw.put_object(
        s3,
        bucket,
        "docs/report.pdf",
        b"%PDF-1.7 not really",
        {
            "Content-Type": b"application/pdf",
            "x-amz-meta-title": "Résumé – 履歴書 ✓".encode(),
            "x-amz-meta-author": b"=?UTF-8?B?Q2Fmw6kgTcO8bGxlcg==?=",
            "x-amz-meta-content-type": b"not-the-content-type",
            "x-amz-meta-plain": b"ascii value",
        },
    )
    # A non-ASCII Content-Type parameter, as raw UTF-8.
    s3_raw.put_object(
        s3, bucket, "notes/été.txt", b"summer", {"Content-Type": 'text/plain; name="été.txt"'.encode()}
    )
    client.put_object(bucket, "folder/", io.BytesIO(b""), 0)
    client.put_object(bucket, "zero-bytes.bin", io.BytesIO(b""), 0, metadata={"kind": "empty"})
    client.put_object(bucket, NFC, io.BytesIO(b"composed"), 8)
    client.put_object(bucket, NFD, io.BytesIO(b"decomposed"), 10)
    client.put_object(bucket, LONG_KEY, io.BytesIO(b"long key"), 8)
    client.put_object(bucket, "ctl\x01\x1f\x7f key", io.BytesIO(b"control"), 7)
    # moto accepts only ASCII tag values (AWS S3 allows any Unicode letter).
    ten_tags = {f"tag-{i}": f"value {i} a=b+c-d@e:f/g_h.i" for i in range(10)}
    client.put_object(bucket, "tagged.txt", io.BytesIO(b"tags"), 4, tags=_tags(**ten_tags))
    big = bytes(range(256)) * (5 * MiB // 256) + b"!"
    client.put_object(bucket, "multipart.bin", io.BytesIO(big), len(big), part_size=5 * MiB)


def test_round_trip_keeps_every_key_header_metadata_value_and_tag(
    pg_database: PgDatabase, s3: S3Server, tmp_path: Path
) -> None:
    client = s3.client()
    _hostile_bucket(s3, client, "hostile")
    keys = sorted(o.object_name or "" for o in client.list_objects("hostile", recursive=True))
    assert len(keys) == 11 and NFC in keys and NFD in keys and "folder/" in keys
    assert (client.stat_object("hostile", "multipart.bin").etag or "").endswith("-2")
    source = {key: _served(s3, client, "hostile", key) for key in keys}
    env = h.make_env(tmp_path, pg_database, s3)

    result = _export(env, client, "hostile")
    assert not (result.changed or result.vanished or result.unreadable or result.inexact)
    archived = _archived(env, result)
    assert sorted(archived) == keys
    page, _ = archived["site/index.html"]
    assert page.headers == {
        "Cache-Control": "public, max-age=31536000, immutable",
        "Content-Disposition": "attachment; filename=\"resume.html\"; filename*=UTF-8''r%C3%A9sum%C3%A9.html",
        "Content-Encoding": "gzip",
        "Content-Language": "fr-CA, en",
        "Expires": "Thu, 01 Dec 2094 16:00:00 GMT",
    }
    report, _ = archived["docs/report.pdf"]
    assert report.metadata["title"] == "Résumé – 履歴書 ✓"
    assert report.metadata["author"] == "=?UTF-8?B?Q2Fmw6kgTcO8bGxlcg==?="
    assert report.metadata["content-type"] == "not-the-content-type"
    assert report.content_type == "application/pdf"

    summary = _restore(env, result, client, "hostile-restored")
    assert summary.added == len(keys) and summary.failed == 0, summary.failures
    restored_keys = sorted(
        o.object_name or "" for o in client.list_objects("hostile-restored", recursive=True)
    )
    assert restored_keys == keys
    for key in keys:
        assert _served(s3, client, "hostile-restored", key) == source[key], key


def test_last_modified_is_recorded_in_the_pax_record_and_the_tar_mtime(
    pg_database: PgDatabase, s3: S3Server, tmp_path: Path
) -> None:
    client = s3.client()
    client.make_bucket("dated")
    client.put_object("dated", "a.txt", io.BytesIO(b"a"), 1)
    listed = next(iter(client.list_objects("dated", recursive=True)))
    header = s3_raw.head_object(s3, "dated", "a.txt").header("Last-Modified")
    assert header is not None and listed.last_modified is not None
    served = email.utils.parsedate_to_datetime(header.decode())
    env = h.make_env(tmp_path, pg_database, s3)
    result = _export(env, client, "dated")
    obj, _ = _archived(env, result)["a.txt"]
    assert obj.last_modified is not None
    assert obj.last_modified.replace(microsecond=0) == served
    assert obj.last_modified == listed.last_modified.astimezone(dt.UTC)  # the listing's finer time
    # The tar header's mtime (what `tar -tv` shows) is the same time in whole seconds.
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(b"".join(_plaintext(env, result))), mode="r:gz") as tar:
        assert tar.getmember("a.txt").mtime == int(served.timestamp())


def test_archive_written_before_headers_were_recorded_still_restores(s3: S3Server) -> None:
    # What today's main writes: no headers record, no last-modified (tar mtime 0).
    old = [
        SourceObject("a/old.txt", 3, "text/plain", {"who": "old"}, {"t": "1"}, "etag", open=lambda: [b"old"]),
        SourceObject("b.bin", 0, None, open=lambda: []),
    ]
    plaintext = b"".join(write_bucket_archive(old, compress_level=1, workers=1))
    entries = list(svc.bucket_entries([plaintext]))
    assert [(e.key, dict(e.headers)) for e in entries] == [("a/old.txt", {}), ("b.bin", {})]
    client = s3.client()
    summary = svc.restore_bucket(
        client, "old-archive", svc.bucket_entries([plaintext]), {}, svc.ConflictPolicy.SKIP, BACKUP_ID
    )
    assert summary.added == 2 and summary.failed == 0
    assert read_object(client, "old-archive", "a/old.txt") == b"old"
    stat = client.stat_object("old-archive", "a/old.txt")
    assert stat.content_type == "text/plain" and stat.metadata.get("x-amz-meta-who") == "old"


# --- anomalies are reported, never silent --------------------------------------------------------


class _ListsMoreThanItServes(Minio):
    """The fixture's S3 server, plus what AWS S3 holds and this client cannot read there:

    a key with a ``..`` segment (legal on AWS S3; minio-py refuses to address it) listed in its
    place, and an archived (Glacier-class) object whose GET the server refuses.
    """

    DOT_KEY = "b/../escaped.txt"
    ARCHIVED_KEY = "c-archived.bin"

    def list_objects(self, bucket_name: str, *args: Any, **kwargs: Any) -> Iterator[Object]:  # type: ignore[override]
        extra = Object(bucket_name, self.DOT_KEY, size=7, etag="e1")
        for obj in super().list_objects(bucket_name, *args, **kwargs):
            if extra is not None and (obj.object_name or "") > self.DOT_KEY:
                yield extra
                extra = None
            yield obj

    def get_object(self, bucket_name: str, object_name: str, *args: Any, **kwargs: Any) -> Any:
        if object_name == self.ARCHIVED_KEY:
            raise S3Error(
                None,  # type: ignore[arg-type]
                "InvalidObjectState",
                "The operation is not valid for the object's storage class",
                f"/{bucket_name}/{object_name}",
                "request-id",
                "host-id",
                bucket_name,
                object_name,
            )
        return super().get_object(bucket_name, object_name, *args, **kwargs)


def test_objects_that_cannot_be_read_are_anomalies_in_the_manifest_and_warnings(
    pg_database: PgDatabase, s3: S3Server, tmp_path: Path
) -> None:
    client = _ListsMoreThanItServes(**s3.client_args())
    client.make_bucket("partly")
    for key in ("a.txt", _ListsMoreThanItServes.ARCHIVED_KEY, "d.txt"):
        client.put_object("partly", key, io.BytesIO(b"payload"), 7)
    env = h.make_env(tmp_path, pg_database, s3)
    result = _export(env, client, "partly")
    assert sorted(o["key"] for o in result.inventory) == ["a.txt", "d.txt"]
    assert [(a["key"], a["declared_size"]) for a in result.unreadable] == [
        (_ListsMoreThanItServes.DOT_KEY, 7),
        (_ListsMoreThanItServes.ARCHIVED_KEY, 7),
    ]
    assert "'.' or '..'" in result.unreadable[0]["detail"]
    assert "InvalidObjectState" in result.unreadable[1]["detail"]
    warnings = result.warnings()
    assert len(warnings) == 1 and "2 object(s) NOT backed up" in warnings[0]
    assert _ListsMoreThanItServes.DOT_KEY in warnings[0]
    # What the operator can do about such a key (main: only that it was not backed up).
    assert "What to do:" in warnings[0] and "keys without those segments" in warnings[0]
    assert "the next backup then includes them" in warnings[0]

    database = {
        "part": {**result.part.to_dict(), "part_name": "database"},
        "server_version": "17",
        "pg_dump_version": "17",
        "schema_version": None,
        "seconds": 0.1,
    }
    manifest = build_manifest(
        FinalizeInput(
            h.INSTALLATION, BACKUP_ID, "2026-01-02T00:00:00+00:00", database, [result.to_dict()], {}, {}
        ),
        "2026-01-02T00:01:00+00:00",
    )
    again = Manifest.from_json(manifest.to_json())
    assert [(a.kind, a.key, a.detail is not None) for a in again.anomalies] == [
        ("unreadable", _ListsMoreThanItServes.DOT_KEY, True),
        ("unreadable", _ListsMoreThanItServes.ARCHIVED_KEY, True),
    ]


def test_versioned_bucket_says_what_is_not_kept(
    pg_database: PgDatabase, s3: S3Server, tmp_path: Path
) -> None:
    client = s3.client()
    client.make_bucket("versioned")
    client.set_bucket_versioning("versioned", VersioningConfig(ENABLED))
    client.put_object("versioned", "doc.txt", io.BytesIO(b"v1"), 2)
    client.put_object("versioned", "doc.txt", io.BytesIO(b"v2!"), 3)
    client.put_object("versioned", "gone.txt", io.BytesIO(b"x"), 1)
    client.remove_object("versioned", "gone.txt")  # a delete marker over a noncurrent version
    env = h.make_env(tmp_path, pg_database, s3)
    result = _export(env, client, "versioned")
    assert {k: body for k, (_, body) in _archived(env, result).items()} == {"doc.txt": b"v2!"}
    assert result.versioning is not None
    assert (result.versioning.noncurrent_versions, result.versioning.delete_markers) == (2, 1)
    assert result.warnings() == [
        "bucket versioned is versioned (Enabled): only current versions are backed up; "
        "2 noncurrent version(s) and 1 delete marker(s) are not kept"
    ]


def test_backup_run_warns_about_a_versioned_bucket_in_its_log_and_metadata(
    fresh_pg_database: PgDatabase, s3: S3Server, tmp_path: Path
) -> None:
    with fresh_pg_database.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_migrations (version text)")
        conn.execute("INSERT INTO schema_migrations VALUES ('1')")
    client = s3.client()
    client.make_bucket("plain")
    client.put_object("plain", "a.txt", io.BytesIO(b"a"), 1)
    client.make_bucket("history")
    client.set_bucket_versioning("history", VersioningConfig(ENABLED))
    client.put_object("history", "a.txt", io.BytesIO(b"1"), 1)
    client.put_object("history", "a.txt", io.BytesIO(b"2"), 1)
    env = h.make_env(tmp_path, fresh_pg_database, s3)
    with dg.instance_for_test() as instance:
        result = build_backup_job(executor_def=dg.in_process_executor).execute_in_process(
            run_config=h.run_config(), resources=env.resources(), instance=instance, raise_on_error=False
        )
        assert result.success
        warnings = [
            event.message
            for event in instance.all_logs(result.run_id)
            if event.level == 30 and event.message  # logging.WARNING
        ]
    expected = "bucket history is versioned (Enabled): only current versions are backed up; 1 noncurrent"
    assert any(expected in w for w in warnings), warnings
    assert not any("bucket plain" in w for w in warnings)
    versioning = sorted(
        str(event.event_specific_data.metadata["versioning"].value)  # type: ignore[union-attr]
        for event in result.all_events
        if event.event_type is dg.DagsterEventType.STEP_OUTPUT
        and (event.step_key or "").startswith("export_bucket")
    )
    assert versioning == [
        expected + " version(s) and 0 delete marker(s) are not kept",
        "not versioned",
    ]


class _NoVersioningPermission(Minio):
    """Credentials allowed to list and read objects but not s3:GetBucketVersioning (least privilege)."""

    def get_bucket_versioning(self, bucket_name: str) -> Any:
        raise S3Error(
            None,  # type: ignore[arg-type]
            "AccessDenied",
            "Access Denied",
            f"/{bucket_name}",
            "request-id",
            "host-id",
            bucket_name,
        )


def test_credentials_that_may_not_read_versioning_get_a_warning_not_a_failed_backup(
    pg_database: PgDatabase, s3: S3Server, tmp_path: Path
) -> None:
    client = _NoVersioningPermission(**s3.client_args())
    client.make_bucket("restricted")
    client.put_object("restricted", "a.txt", io.BytesIO(b"a"), 1)
    env = h.make_env(tmp_path, pg_database, s3)
    result = _export(env, client, "restricted")
    assert [o["key"] for o in result.inventory] == ["a.txt"]
    assert result.warnings() == [
        "bucket restricted: its versioning could not be read (S3 answered AccessDenied); if it is "
        "versioned, only current versions are backed up and noncurrent versions and delete markers "
        "are not kept"
    ]
