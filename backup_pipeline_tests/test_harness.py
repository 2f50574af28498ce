"""The harness itself: real PostgreSQL and a real S3 HTTP endpoint (SeaweedFS, ``weed mini``)."""

from __future__ import annotations

import io
import os
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from minio.commonconfig import COMPLIANCE, ENABLED
from minio.error import S3Error
from minio.retention import Retention
from minio.versioningconfig import VersioningConfig

from backup_pipeline_tests.fixtures.ports import free_port, port_open
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server, SeaweedFSServer
from backup_pipeline_tests.fixtures.seaweedfs import GRPC_SOCKET_DIR, port_is_free, weed_executable


def test_pg_database_is_fresh_and_writable(pg_database: PgDatabase) -> None:
    with pg_database.connect() as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.execute("SELECT sum(x) FROM t").fetchone() == (1,)


def _read(s3: S3Server, bucket: str, key: str) -> bytes:
    response = s3.client().get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def test_s3_server_round_trip(s3: S3Server) -> None:
    client = s3.client()
    client.make_bucket("harness")
    client.put_object("harness", "a/ü b.txt", io.BytesIO(b"hello"), 5, metadata={"x-amz-meta-k": "v"})
    assert _read(s3, "harness", "a/ü b.txt") == b"hello"
    assert [b.name for b in client.list_buckets()] == ["harness"]


def test_s3_server_checks_credentials(s3: S3Server) -> None:
    """A real server: a wrong secret key is refused, not ignored as moto does by default."""
    client = type(s3.client())(**{**s3.client_args(), "secret_key": "not-the-secret"})
    with pytest.raises(S3Error) as refused:
        client.list_buckets()
    assert refused.value.response.status == 403


def test_a_stopped_s3_server_comes_back_on_its_port_with_its_data(s3: SeaweedFSServer) -> None:
    client = s3.client()
    client.make_bucket("survives")
    client.put_object("survives", "k", io.BytesIO(b"kept"), 4, tags=None)
    endpoint = s3.endpoint

    s3.stop()
    assert not s3.running and not port_open(s3.port)
    s3.start()

    assert s3.endpoint == endpoint
    assert _read(s3, "survives", "k") == b"kept"


def test_reset_removes_every_bucket_whatever_it_holds(s3: SeaweedFSServer) -> None:
    client = s3.client()
    client.make_bucket("plain")
    client.put_object("plain", "a/b", io.BytesIO(b"x"), 1)
    upload_id = client._create_multipart_upload("plain", "unfinished", {})
    client._upload_part("plain", "unfinished", b"y" * 1024, None, upload_id, 1)
    client.make_bucket("versioned")
    client.set_bucket_versioning("versioned", VersioningConfig(ENABLED))
    for body in (b"v1", b"v2"):
        client.put_object("versioned", "k", io.BytesIO(body), len(body))
    client.remove_object("versioned", "k")  # a delete marker over two versions
    client.make_bucket("locked", object_lock=True)
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    client.put_object("locked", "k", io.BytesIO(b"l"), 1, retention=Retention(COMPLIANCE, until))
    with pytest.raises(S3Error):  # the lock holds against S3 requests...
        client.remove_bucket("locked")

    s3.reset()  # ...and the reset still gets rid of it

    assert client.list_buckets() == []
    for name in ("plain", "versioned", "locked"):  # the same names start empty and unlocked
        client.make_bucket(name)
        assert list(client.list_objects(name, recursive=True, include_version=True)) == []
        client.put_object(name, "k", io.BytesIO(b"new"), 3)
        client.remove_object(name, "k")
    assert client._list_multipart_uploads("plain").uploads == []


def _abandoned_socket_file(path: Path) -> None:
    """What a killed weed leaves: a socket file nobody listens on, from a while ago."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
    os.utime(path, (time.time() - 3600, time.time() - 3600))


def test_a_closed_server_leaves_no_process_socket_or_data(tmp_path: Path) -> None:
    # An unused port number, so the name is nobody else's.
    left_over = GRPC_SOCKET_DIR / f"seaweedfs-s3-grpc-{free_port()}.sock"
    _abandoned_socket_file(left_over)
    server = SeaweedFSServer(tmp_path / "weed")
    server.start()
    assert not left_over.exists(), "a start removes socket files of killed servers"
    try:
        assert weed_executable().name == "weed"
        assert server.ports is not None and server.process is not None
        client = server.client()
        client.make_bucket("gone")
        client.put_object("gone", "k", io.BytesIO(b"x"), 1)
        pid, ports = server.process.pid, server.ports
    finally:
        server.close()

    assert not Path(f"/proc/{pid}").exists()
    assert all(port_is_free(port) for port in ports.all())
    assert not any(path.exists() for path in ports.grpc_sockets().values())
    assert list((tmp_path / "weed").rglob("*.sock")) == []
    assert not server.data_dir.exists()
