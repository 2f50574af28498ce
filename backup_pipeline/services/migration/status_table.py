"""The database side: the ``storage_migration`` status table and the application's legacy rows."""

from __future__ import annotations

from importlib import resources
from typing import Any

import psycopg

from backup_pipeline.services.migration.keys import (
    object_key_for,
)
from backup_pipeline.services.migration.model import (
    PROVIDER_DRIVE,
    LegacyAsset,
)


def migration_sql() -> str:
    return resources.files("backup_pipeline.sql").joinpath("storage_migration.sql").read_text("utf-8")


def ensure_schema(conn: psycopg.Connection) -> None:
    """Create the ``storage_migration`` table if needed (idempotent; commits)."""
    with conn.transaction():
        conn.execute(migration_sql())  # type: ignore[call-overload]


def _status_table_exists(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('storage_migration') IS NOT NULL").fetchone()
    return bool(row and row[0])


_SELECT_LEGACY = (
    "SELECT id, drive_file_id, original_filename, content_type, checksum_sha256, size_bytes, checksum_md5 "
    "FROM media_assets WHERE storage_provider = %s AND drive_file_id IS NOT NULL"
)


def find_drive_assets(conn: psycopg.Connection, asset_ids: list[str] | None = None) -> list[LegacyAsset]:
    """Rows still in Google Drive (all, or those among ``asset_ids``), in id order."""
    if asset_ids is None:
        rows = conn.execute(_SELECT_LEGACY + " ORDER BY id", (PROVIDER_DRIVE,)).fetchall()
    else:
        rows = conn.execute(
            _SELECT_LEGACY + " AND id::text = ANY(%s) ORDER BY id", (PROVIDER_DRIVE, asset_ids)
        ).fetchall()
    return [
        LegacyAsset(r[0], r[1], r[2], r[3], recorded_sha256=r[4], recorded_size=r[5], recorded_md5=r[6])
        for r in rows
    ]


def count_drive_assets(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT count(*) FROM media_assets WHERE storage_provider = %s", (PROVIDER_DRIVE,)
    ).fetchone()
    return int(row[0]) if row else 0


def register_assets(
    conn: psycopg.Connection, assets: list[LegacyAsset], bucket: str, prefix: str, run_id: str
) -> None:
    """Write-ahead: a ``pending`` row with the fixed target key for every asset not yet known."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO storage_migration (asset_id, drive_file_id, target_bucket, target_key, last_run_id) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (asset_id) DO UPDATE "
            "SET drive_file_id = EXCLUDED.drive_file_id, updated_at = now() "
            "WHERE storage_migration.status <> 'switched'",
            [
                (a.key, a.drive_file_id, bucket, object_key_for(a.key, a.filename, prefix), run_id)
                for a in assets
            ],
        )


def _set_status(conn: psycopg.Connection, asset_id: str, status: str, **columns: Any) -> None:
    stamp = {"copied": "copied_at", "verified": "verified_at", "switched": "switched_at"}.get(status)
    sets = ["status = %s", "updated_at = now()"] + [f"{name} = %s" for name in columns]
    if stamp:
        sets.append(f"{stamp} = now()")
    with conn.transaction():
        conn.execute(
            f"UPDATE storage_migration SET {', '.join(sets)} WHERE asset_id = %s",  # type: ignore[arg-type]
            (status, *columns.values(), asset_id),
        )
