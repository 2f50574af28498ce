"""``storage status``: MinIO health, buckets with object counts and bytes, assets still in Google Drive."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from minio import Minio

from backup_pipeline.services.errors import S3_ERRORS, s3_error_reason
from backup_pipeline.services.migration.model import (
    PROVIDER_DRIVE,
    PROVIDER_MINIO,
)
from backup_pipeline.services.migration.status_table import (
    _status_table_exists,
)


@dataclass
class BucketUsage:
    name: str
    objects: int
    bytes: int
    truncated: bool = False


@dataclass
class StorageStatus:
    """Primary storage at a glance: is MinIO usable, what it holds, what is still in Drive."""

    endpoint: str
    reachable: bool
    error: str | None
    buckets: list[BucketUsage]
    primary_bucket: str
    primary_bucket_exists: bool
    assets_in_drive: int | None
    assets_in_minio: int | None
    settings_provider: str | None
    migration_status: dict[str, int]

    @property
    def healthy(self) -> bool:
        return self.reachable and self.primary_bucket_exists

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["healthy"] = self.healthy
        return data


def storage_status(
    connect: Callable[[], psycopg.Connection],
    minio: Minio,
    endpoint: str,
    primary_bucket: str,
    *,
    max_objects_per_bucket: int = 100_000,
) -> StorageStatus:
    """Never raises for an unreachable MinIO: the status says so (the caller decides severity)."""
    buckets: list[BucketUsage] = []
    error = None
    try:
        for bucket in minio.list_buckets():
            usage = BucketUsage(bucket.name, 0, 0)
            for obj in minio.list_objects(bucket.name, recursive=True):
                usage.objects += 1
                usage.bytes += obj.size or 0
                if usage.objects >= max_objects_per_bucket:
                    usage.truncated = True
                    break
            buckets.append(usage)
    except S3_ERRORS as exc:
        error = s3_error_reason(exc, endpoint, "listing buckets and objects")
    in_drive = in_minio = None
    provider = None
    counts: dict[str, int] = {}
    with connect() as conn:
        rows: dict[str, int] = dict(
            conn.execute(
                "SELECT storage_provider, count(*) FROM media_assets GROUP BY storage_provider"
            ).fetchall()
        )
        in_drive, in_minio = int(rows.get(PROVIDER_DRIVE, 0)), int(rows.get(PROVIDER_MINIO, 0))
        setting = conn.execute("SELECT storage_provider FROM media_asset_settings LIMIT 1").fetchone()
        provider = setting[0] if setting else None
        if _status_table_exists(conn):
            counts = {
                str(s): int(n)
                for s, n in conn.execute(
                    "SELECT status, count(*) FROM storage_migration GROUP BY status"
                ).fetchall()
            }
    return StorageStatus(
        endpoint=endpoint,
        reachable=error is None,
        error=error,
        buckets=buckets,
        primary_bucket=primary_bucket,
        primary_bucket_exists=any(b.name == primary_bucket for b in buckets),
        assets_in_drive=in_drive,
        assets_in_minio=in_minio,
        settings_provider=provider,
        migration_status=counts,
    )
