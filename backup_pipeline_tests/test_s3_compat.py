"""The S3 behaviour the product relies on, on each S3 implementation the suite runs
(SeaweedFS, the suite's server, and moto, an emulator): a backup → restore of the sample app
on both, and probes of the properties listed in docs/S3-COMPATIBILITY.md. Where the servers
differ, the test says what each one does, so the matrix cells "tested here" stay true."""

from __future__ import annotations

import base64
import hashlib
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from minio import Minio
from minio.commonconfig import COMPLIANCE, ENABLED, Tags
from minio.error import S3Error
from minio.retention import Retention
from minio.versioningconfig import VersioningConfig

from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server
from backup_pipeline_tests.restore_support import (
    BUCKETS,
    Installation,
    confirm,
    normalised_dump,
    s3_snapshot,
    wipe_database,
)

BUCKET = "compat"
MiB = 1024 * 1024


def _put(client: Minio, key: str, body: bytes = b"x", **kwargs: object) -> str:
    """``ok`` or the S3 error code the server answered."""
    try:
        client.put_object(BUCKET, key, io.BytesIO(body), len(body), **kwargs)  # type: ignore[arg-type]
    except S3Error as exc:
        return str(exc.code)
    return "ok"


def _keys(client: Minio, prefix: str = "") -> list[str]:
    return [str(o.object_name) for o in client.list_objects(BUCKET, prefix=prefix, recursive=True)]


@pytest.fixture()
def client(any_s3: S3Server) -> Minio:
    minio = any_s3.client()
    minio.make_bucket(BUCKET)
    return minio


def test_sample_app_backup_then_restore(any_s3: S3Server, pg_database: PgDatabase, tmp_path: Path) -> None:
    wipe_database(pg_database)
    inst = Installation(pg_database, any_s3, tmp_path)
    inst.seed()
    client = any_s3.client()
    db_before, s3_before = normalised_dump(pg_database.url), s3_snapshot(client)
    assert {bucket for bucket, _ in s3_before} == set(BUCKETS)
    with dg.instance_for_test() as instance:
        backup_id = inst.backup(instance)
        any_s3.reset()
        wipe_database(pg_database)

        result = inst.restore(instance, backup_id=backup_id, dry_run=False, confirm=confirm(backup_id))

    assert result.success
    assert normalised_dump(pg_database.url) == db_before
    assert s3_snapshot(client) == s3_before


def test_listing_pages_every_key_once_in_the_servers_order(any_s3: S3Server, client: Minio) -> None:
    keys = ["a", "a b", "a/b", "a+b", "ab", "B", "e\u0301", "z", "~", "é", "日本", "\U0001f600"]
    for key in keys:
        assert _put(client, key) == "ok"
    paged = [str(o.object_name) for o in client._list_objects(BUCKET, max_keys=2)]  # ListObjectsV2
    assert sorted(paged) == sorted(keys), "every key once across pages"
    byte_order = sorted(keys, key=lambda k: k.encode())
    if any_s3.kind == "seaweedfs":
        # Folder by folder: "a/b" (the folder "a") is listed where "a" sorts, before "a b"
        # (0x20 < 0x2f), not in UTF-8 byte order as S3 documents.
        assert paged != byte_order
        assert paged == ["B", "a", "a/b", "a b", "a+b", "ab", "e\u0301", "z", "~", "é", "日本", "\U0001f600"]
    else:
        assert paged == byte_order


def test_tags_and_the_tagging_count_header(any_s3: S3Server, client: Minio) -> None:
    tags = Tags.new_object_tags()
    tags.update({"a": "1", "b": "two words"})
    assert _put(client, "tagged", tags=tags) == "ok"
    assert _put(client, "untagged") == "ok"
    response = client.get_object(BUCKET, "tagged")
    try:
        assert response.headers.get("x-amz-tagging-count") == "2"
    finally:
        response.close()
        response.release_conn()
    stat = client.stat_object(BUCKET, "tagged")
    assert stat.metadata is not None and stat.metadata.get("x-amz-tagging-count") == "2"
    untagged = client.stat_object(BUCKET, "untagged")
    assert untagged.metadata is not None and untagged.metadata.get("x-amz-tagging-count") is None
    assert dict(client.get_object_tags(BUCKET, "tagged") or {}) == {"a": "1", "b": "two words"}


def test_tag_rules(any_s3: S3Server, client: Minio) -> None:
    """S3 refuses a tag key starting with "aws:", more than 10 tags and values over 256 characters."""
    eleven = "&".join(f"k{i}=v" for i in range(11))
    answers = {
        "aws: prefix": _put(client, "t1", metadata={"x-amz-tagging": "aws%3Areserved=x"}),
        "11 tags": _put(client, "t2", metadata={"x-amz-tagging": eleven}),
        "value of 300": _put(client, "t3", metadata={"x-amz-tagging": "k=" + "v" * 300}),
    }
    if any_s3.kind == "seaweedfs":
        assert answers == {"aws: prefix": "ok", "11 tags": "ok", "value of 300": "ok"}
        assert dict(client.get_object_tags(BUCKET, "t1") or {}) == {"aws:reserved": "x"}
    else:
        assert answers == {"aws: prefix": "InvalidTag", "11 tags": "BadRequest", "value of 300": "InvalidTag"}


def test_key_rules(any_s3: S3Server, client: Minio) -> None:
    answers = {
        "segment of 255 bytes": _put(client, "s/" + "x" * 255),
        "segment of 256 bytes": _put(client, "s/" + "y" * 256),
        "1 025 bytes in short segments": _put(client, "/".join(["q" * 200] * 5) + "/" + "q" * 19),
    }
    written = ["d//double", "/lead", "back\\slash", "dir/", "ctl\x01char", "n/a", "n/a/b"]
    for key in written:
        assert _put(client, key) == "ok", key
    listed = set(_keys(client)) - {k for k in _keys(client) if k.startswith(("s/", "q"))}
    if any_s3.kind == "seaweedfs":
        # A path segment is a file name on the filer (255 bytes at most); the key is normalised
        # like a path: "//" and a leading "/" collapse, "\" becomes "/".
        assert answers == {
            "segment of 255 bytes": "ok",
            "segment of 256 bytes": "KeyTooLongError",
            "1 025 bytes in short segments": "ok",
        }
        assert listed == {"d/double", "lead", "back/slash", "dir/", "ctl\x01char", "n/a", "n/a/b"}
    else:
        assert answers == {
            "segment of 255 bytes": "ok",
            "segment of 256 bytes": "ok",
            "1 025 bytes in short segments": "ok",
        }
        assert listed == set(written)


def test_user_metadata(any_s3: S3Server, client: Minio) -> None:
    meta = {"x-amz-meta-Camel-Case": "Value", "x-amz-meta-plain": "a b%20c"}
    assert _put(client, "m", metadata=meta) == "ok"
    stat = client.stat_object(BUCKET, "m")
    assert stat.metadata is not None
    got = {k.lower(): v for k, v in stat.metadata.items() if k.lower().startswith("x-amz-meta-")}
    assert got == {"x-amz-meta-camel-case": "Value", "x-amz-meta-plain": "a b%20c"}
    # minio-py sends a non-ASCII value raw (Latin-1 on the wire) but signs its UTF-8 form.
    raw = _put(client, "m2", metadata={"x-amz-meta-name": "Übersicht"})
    assert raw == ("SignatureDoesNotMatch" if any_s3.kind == "seaweedfs" else "ok")


def test_content_type(any_s3: S3Server, client: Minio) -> None:
    sent = {
        "a.jpg": "application/octet-stream",
        "b.txt": "application/octet-stream",
        "c.bin": "application/octet-stream",
        "d.jpg": "text/plain",
        "e.jpg": "binary/octet-stream",
    }
    for key, content_type in sent.items():
        assert _put(client, key, content_type=content_type) == "ok"
    served = {key: client.stat_object(BUCKET, key).content_type for key in sent}
    if any_s3.kind == "seaweedfs":
        # application/octet-stream is taken for "unknown": served as the extension's type.
        assert served == {**sent, "a.jpg": "image/jpeg", "b.txt": "text/plain; charset=utf-8"}
    else:
        assert served == sent


def test_multipart_etag_is_not_an_md5(any_s3: S3Server, client: Minio) -> None:
    body = hashlib.sha256(b"seed").digest() * (11 * MiB // 32)
    result = client.put_object(BUCKET, "multi", io.BytesIO(body), -1, part_size=5 * MiB)
    etag = str(result.etag).strip('"')
    assert etag.endswith("-3") and len(etag) == 34 and etag[:32] != hashlib.md5(body).hexdigest()
    assert client.stat_object(BUCKET, "multi").etag == etag
    single = client.put_object(BUCKET, "single", io.BytesIO(b"hello"), 5)
    assert str(single.etag).strip('"') == hashlib.md5(b"hello").hexdigest()


def test_versioning_and_object_lock(any_s3: S3Server) -> None:
    client = any_s3.client()
    client.make_bucket("versioned")
    client.set_bucket_versioning("versioned", VersioningConfig(ENABLED))
    for body in (b"v1", b"v2"):
        client.put_object("versioned", "k", io.BytesIO(body), len(body))
    versions = list(client.list_objects("versioned", include_version=True))
    assert len(versions) == 2 and len({v.version_id for v in versions}) == 2

    client.make_bucket("locked", object_lock=True)
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    retention = Retention(COMPLIANCE, until)
    # S3 wants a Content-MD5 (or checksum) with a retention; SeaweedFS does without.
    try:
        client.put_object("locked", "no-md5", io.BytesIO(b"l"), 1, retention=retention)
        without_md5 = "ok"
    except S3Error as exc:
        without_md5 = str(exc.code)
    assert without_md5 == ("ok" if any_s3.kind == "seaweedfs" else "MissingUploadObjectWithObjectLockHeaders")
    # minio-py signs plain-HTTP bodies with SHA-256 and sends no Content-MD5: add it by hand.
    written = client._execute(
        "PUT",
        "locked",
        "k",
        body=b"l",
        headers={
            "Content-MD5": base64.b64encode(hashlib.md5(b"l").digest()).decode(),
            "x-amz-object-lock-mode": COMPLIANCE,
            "x-amz-object-lock-retain-until-date": until.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    )
    version_id = written.headers.get("x-amz-version-id")
    assert version_id
    with pytest.raises(S3Error) as refused:
        client.remove_object("locked", "k", version_id=version_id)
    assert refused.value.code == "AccessDenied"
