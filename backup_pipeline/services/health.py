"""Connection checks of the app's PostgreSQL and S3, shared by ``backup-pipeline check`` and
``storage_health_job``. Each returns small facts or raises an error naming the endpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from backup_pipeline.resources.postgres import PostgresResource, check_tools_against_server
from backup_pipeline.resources.s3 import S3Resource
from backup_pipeline.services.backup_database import read_schema_version


@dataclass(frozen=True)
class PostgresHealth:
    endpoint: str
    server_version: str
    pg_dump_version: str
    pg_restore_version: str
    pg_bin_dir: str
    database_size_bytes: int
    table_count: int
    schema_version: str | None
    schema_version_note: str | None = None  # why a configured query recorded nothing

    def as_metadata(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.endpoint}: PostgreSQL {self.server_version}, {self.table_count} tables, "
            f"{self.database_size_bytes / 2**20:.1f} MiB; pg_dump {self.pg_dump_version}, "
            f"pg_restore {self.pg_restore_version} ({self.pg_bin_dir})"
        )


@dataclass(frozen=True)
class S3Health:
    endpoint: str
    bucket_count: int
    buckets: list[str]

    def as_metadata(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "bucket_count": self.bucket_count,
            "buckets": ", ".join(self.buckets),
        }

    def summary(self) -> str:
        shown = ", ".join(self.buckets[:10]) + (", ..." if len(self.buckets) > 10 else "")
        return f"{self.endpoint}: {self.bucket_count} buckets ({shown or 'none'})"


def check_postgres(db: PostgresResource, schema_version_query: str = "") -> PostgresHealth:
    """Connect, read the server version and size, and check pg_dump/pg_restore against the server.

    Raises PostgresUnavailable or PgToolsError with a message naming the endpoint/tool, and
    ``BackupError`` (``SCHEMA_VERSION_QUERY_FAILED``) when the schema-version query is broken.
    """
    major, version = db.server_version()
    tools = db.pg_tools(check_server=False)
    check_tools_against_server(tools, major, db.endpoint)
    with db.connect() as conn:
        size_row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        tables_row = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchone()
        # What a backup will record; a missing migrations table is a note, a broken query a BackupError.
        schema = read_schema_version(conn, schema_version_query)
    return PostgresHealth(
        endpoint=db.endpoint,
        server_version=version,
        pg_dump_version=tools.pg_dump.version,
        pg_restore_version=tools.pg_restore.version,
        pg_bin_dir=str(tools.bin_dir),
        database_size_bytes=int(size_row[0]) if size_row else 0,
        table_count=int(tables_row[0]) if tables_row else 0,
        schema_version=schema.value,
        schema_version_note=schema.note,
    )


def check_s3(s3: S3Resource) -> S3Health:
    """List the buckets the credentials can see. Raises S3Unavailable naming the endpoint."""
    names = s3.list_bucket_names()
    return S3Health(endpoint=s3.endpoint, bucket_count=len(names), buckets=names)
