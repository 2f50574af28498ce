"""Issue 18, inventories that scale: a full set keeps its object list out of the manifest.

Against real components (PostgreSQL, SeaweedFS, a local folder): every unsharded bucket of a
full (non-incremental) set has an ``inventory-<bucket>`` part (format 2, mode ``full``), so the
manifest is O(buckets + parts) — the same size for 20 objects as for 5 000 — and the set
restores equal through the streamed inventory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from minio import Minio

from backup_pipeline.archive.manifest import MANIFEST_FORMAT_V2, BucketSummary, InventoryEntry, Manifest
from backup_pipeline.services.backup_buckets import ListedObject
from backup_pipeline.services.backup_incremental import INCREMENTAL_OFF
from backup_pipeline.services.bucket_shards import ShardLimits, summarize_and_shard
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server
from backup_pipeline_tests.restore_support import Installation, wipe_database
from backup_pipeline_tests.test_archive_cli import BACKUP as CLI_BACKUP
from backup_pipeline_tests.test_archive_cli import RECOVERY, run, write_part
from backup_pipeline_tests.test_incremental import (
    _files,
    backup,
    inventory_of,
    manifest_of,
    restore_files,
)

BUCKET = "scale-objects"
# Large enough that a format-1 manifest would be ~0.7 MB larger than the 20-object one (the assertion
# allows 200 bytes), small enough for the suite: 20 000 cost 237 CPU-s, mostly PUTs and the restore.
MANY = 5_000
FEW = 20


@pytest.fixture()
def installation(pg_database: PgDatabase, s3: S3Server, tmp_path: Path) -> Installation:
    wipe_database(pg_database)
    with pg_database.connect() as conn:
        conn.execute("CREATE TABLE notes (id int primary key, body text)")
        conn.execute("INSERT INTO notes VALUES (1, 'one')")
        conn.commit()
    return Installation(pg_database, s3, tmp_path)


def _body(i: int) -> bytes:
    return f"object {i}\n".encode() * (1 + i % 7)


def _put_range(client: Minio, start: int, stop: int) -> None:
    def put(i: int) -> None:
        data = _body(i)
        client.put_object(BUCKET, f"o/{i:06d}", io.BytesIO(data), len(data), content_type="text/plain")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(start, stop), chunksize=200))


def _digests(client: Minio) -> dict[str, str]:
    keys = [o.object_name for o in client.list_objects(BUCKET, recursive=True) if o.object_name]

    def get(key: str) -> tuple[str, str]:
        response = client.get_object(BUCKET, key)
        try:
            return key, hashlib.sha256(response.read()).hexdigest()
        finally:
            response.close()
            response.release_conn()

    with ThreadPoolExecutor(16) as pool:
        return dict(pool.map(get, keys, chunksize=200))


def _full_backup(inst: Installation, instance: dg.DagsterInstance, **config: Any) -> str:
    return backup(inst, instance, incremental_objects=False, **config)


def test_a_full_set_of_5000_objects_has_a_manifest_no_larger_than_of_20_and_restores_equal(
    installation: Installation, instance: dg.DagsterInstance
) -> None:
    inst = installation
    client = inst.s3.client()
    client.make_bucket(BUCKET)
    _put_range(client, 0, FEW)
    small = _full_backup(inst, instance)
    _put_range(client, FEW, MANY)
    expected = {f"o/{i:06d}": hashlib.sha256(_body(i)).hexdigest() for i in range(MANY)}
    large = _full_backup(inst, instance)

    sizes = {}
    for backup_id, count in ((small, FEW), (large, MANY)):
        manifest = manifest_of(inst, backup_id)
        assert manifest.format == MANIFEST_FORMAT_V2
        assert manifest.inventory == []
        summary = manifest.bucket(BUCKET)
        assert summary is not None and summary.inventory_part == f"inventory-{BUCKET}"
        assert summary.mode == "full" and summary.mode_reason == INCREMENTAL_OFF
        assert summary.base_backup_id is None and summary.referenced_parts == []
        assert summary.object_count == summary.total_objects == count
        sizes[backup_id] = len(manifest.to_bytes())
    # The manifest does not grow with the object count: only digits of counts and sizes differ.
    assert abs(sizes[large] - sizes[small]) < 200, sizes
    # The object list is the inventory part: every object once, its body in this set's part.
    records = inventory_of(inst, large, BUCKET)
    assert {r.key: r.sha256 for r in records} == expected
    assert {(r.backup_id, r.part) for r in records} == {(large, f"bucket-{BUCKET}")}
    # ~67 B per object compressed: the SHA-256 and ETag hex digits do not compress.
    assert _files(inst, large)[f"inventory-{BUCKET}"].size < 100 * MANY

    inst.s3.reset()
    done = restore_files(inst, instance, large)
    assert sum(m["added"] for m in done.values()) == MANY  # keyed by the step's mapping key
    assert _digests(inst.s3.client()) == expected


def test_the_plan_tells_whether_a_listing_ascends_by_key() -> None:
    """A listing out of key order (SeaweedFS lists keys under a ``/`` in directory order) cannot be
    written as an inventory part, which must ascend: the plan says so, and that bucket keeps its
    objects in the manifest (ops/backup.py)."""

    def listing(*keys: str) -> list[ListedObject]:
        return [ListedObject(k, 1, "e") for k in keys]

    summary, shards = summarize_and_shard("b", listing("a", "a/b", "b"), ShardLimits())
    assert summary.in_key_order and shards == []
    summary, _ = summarize_and_shard("b", listing("a/b", "a-c"), ShardLimits())
    assert not summary.in_key_order
    summary, _ = summarize_and_shard("b", listing("a", "a"), None)
    assert not summary.in_key_order
    summary, _ = summarize_and_shard("b", [], None)
    assert summary.in_key_order


def test_archive_inspect_names_each_buckets_inventory_part(
    tmp_path: Path,
) -> None:
    """``backup-pipeline inspect`` of a format-2 manifest: the object count comes from the bucket
    entry (the list is in the inventory part), and a bucket without one still shows its list."""
    parts = [
        dataclasses.replace(write_part(tmp_path / f"{name}.bpa", [b"x"], name), kind=kind)
        for name, kind in (("bucket-big", "bucket"), ("inventory-big", "inventory"), ("bucket-odd", "bucket"))
    ]
    big = BucketSummary(
        "big",
        "bucket-big",
        20_000,
        123,
        inventory_part="inventory-big",
        mode="full",
        mode_reason=INCREMENTAL_OFF,
        since_full=0,
        total_objects=20_000,
        total_bytes=123,
        diff={k: 0 for k in ("new", "changed", "unchanged", "deleted")}
        | {f"{k}_bytes": 0 for k in ("new", "changed", "unchanged", "deleted")},
        referenced_parts=[],
    )
    manifest = Manifest(
        CLI_BACKUP,
        "test",
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:01:00Z",
        {},
        parts,
        buckets=[big, BucketSummary("odd", "bucket-odd", 1, 1)],
        inventory=[InventoryEntry("odd", "a/b", 1, "0" * 64)],
        format=MANIFEST_FORMAT_V2,
    )
    manifest_part = tmp_path / "manifest.bpa"
    write_part(manifest_part, [manifest.to_bytes()], "manifest")
    recovery = tmp_path / "recovery-key"
    recovery.write_text(RECOVERY.to_bech32() + "\n")
    code, stdout, err = run("inspect", manifest_part, "--recovery-key-file", recovery)
    assert code == 0, err
    assert "inventory part inventory-big (full): 20000 objects, 123 bytes" in stdout
    assert "inventory in the manifest: 1 objects" in stdout
