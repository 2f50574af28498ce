"""The harness itself: real PostgreSQL and a real S3 HTTP endpoint."""

from __future__ import annotations

import io

from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server


def test_pg_database_is_fresh_and_writable(pg_database: PgDatabase) -> None:
    with pg_database.connect() as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.execute("SELECT sum(x) FROM t").fetchone() == (1,)


def test_s3_server_round_trip(s3: S3Server) -> None:
    client = s3.client()
    client.make_bucket("harness")
    client.put_object("harness", "a/ü b.txt", io.BytesIO(b"hello"), 5, metadata={"x-amz-meta-k": "v"})
    response = client.get_object("harness", "a/ü b.txt")
    try:
        assert response.read() == b"hello"
    finally:
        response.close()
        response.release_conn()
    assert [b.name for b in client.list_buckets()] == ["harness"]
