"""Close a backup set: verify every part on the destination, then write the manifest LAST.

Until the manifest exists the set is not a backup (restore, retention and the ledger all
say so); once it exists every part it lists has been verified on the destination.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..archive.manifest import (
    ANOMALY_KINDS,
    MANIFEST_FORMAT,
    MANIFEST_FORMAT_V2,
    MANIFEST_FORMAT_V3,
    BucketShard,
    BucketSummary,
    InventoryEntry,
    Manifest,
    ObjectAnomaly,
    PartRecord,
    ReferencedPart,
)
from ..change_counts import CHANGE_KEYS
from ..destinations.base import Destination, DestinationError, LockedError, NotFoundError
from .backup_parts import (
    PART_MANIFEST,
    PART_SEED,
    PROP_PART_NAME,
    SET_FORMAT_VERSION,
    SET_KIND_REGULAR,
    BackupError,
    ErrorCode,
    set_name,
    set_properties,
)
from .backup_upload import Encryptor, UploadedPart, destination_failure, upload_part


def verify_parts(destination: Destination, parts: Sequence[UploadedPart]) -> None:
    """Each part exists with the size and SHA-256 recorded at upload (what the destination reports now)."""
    for part in parts:
        try:
            stored = destination.stat(part.file_id)
        except NotFoundError:
            raise BackupError(
                ErrorCode.PART_MISSING,
                f"part {part.part_name!r} ({part.file_name}) is no longer on {destination.description}",
            ) from None
        except DestinationError as exc:
            raise destination_failure(exc, f"verifying part {part.part_name!r}") from None
        if stored.size != part.size or (stored.sha256 is not None and stored.sha256 != part.sha256):
            raise BackupError(
                ErrorCode.VERIFY_FAILED,
                f"part {part.part_name!r} on {destination.description}: {stored.size} bytes / sha256 "
                f"{stored.sha256}, expected {part.size} / {part.sha256}",
            )


def remove_strays(
    destination: Destination, installation_id: str, backup_id: str, parts: Sequence[UploadedPart]
) -> list[str]:
    """Files of this set that are not one of ``parts`` (a failed attempt's upload, an old manifest).

    A stray the destination keeps (``LockedError``) stays: the manifest names the parts of the
    set, and retention removes the stray with the set once the lock ends.
    """
    keep = {p.file_id for p in parts}
    removed = []
    for stored in list(destination.list(set_properties(installation_id, backup_id))):
        if stored.id not in keep:
            try:
                destination.delete(stored.id)
            except LockedError:
                continue
            removed.append(stored.properties.get(PROP_PART_NAME, stored.name))
    return removed


@dataclass(frozen=True)
class FinalizeInput:
    installation_id: str
    backup_id: str
    started_at: str  # ISO 8601 UTC
    database: dict[str, Any]  # DatabaseDumpResult.to_dict()
    # BucketExportResult.to_dict() per bucket, or per shard of a sharded bucket (in key order)
    buckets: list[dict[str, Any]]
    key_ids: dict[str, Any]
    versions: dict[str, Any]
    set_kind: str = SET_KIND_REGULAR  # SET_KIND_SAFETY: a restore's pre-restore backup


def data_parts(data: FinalizeInput) -> list[UploadedPart]:
    """Every data part of the set: database, bucket parts, their indexes and inventories (format 2).

    A seeding run planned as such has no database part (``backup_seed.DUMP_NOT_NEEDED``)."""
    parts = [UploadedPart.from_dict(data.database["part"])] if data.database.get("part") else []
    for b in data.buckets:
        parts.append(UploadedPart.from_dict(b["part"]))
        if b.get("index_part"):
            parts.append(UploadedPart.from_dict(b["index_part"]))
        if b.get("inventory_part"):
            parts.append(UploadedPart.from_dict(b["inventory_part"]))
    return parts


def _versions(data: FinalizeInput) -> dict[str, str]:
    return {
        **{k: str(v) for k, v in data.versions.items()},
        "pg_server": str(data.database["server_version"]),
        "pg_dump": str(data.database["pg_dump_version"]),
        "schema_version": str(data.database["schema_version"] or ""),
        "set_format_version": SET_FORMAT_VERSION,
        **{k: str(v) for k, v in data.key_ids.items()},
    }


def build_manifest(data: FinalizeInput, finished_at: str) -> Manifest:
    """The archive's Manifest (BACKUP-FORMAT.md) of this set: parts, bucket summaries, inventory, anomalies."""

    def record(part: dict[str, Any], kind: Any, bucket: str | None) -> PartRecord:
        return PartRecord(
            name=part["part_name"],
            kind=kind,
            ciphertext_size=part["size"],
            ciphertext_sha256=part["sha256"],
            plaintext_size=part["plaintext_size"],
            plaintext_sha256=part["plaintext_sha256"],
            bucket=bucket,
            file_name=part["file_name"],
        )

    parts = [record(data.database["part"], "database", None)] if data.database.get("part") else []
    parts += [record(b["part"], "bucket", b["bucket"]) for b in data.buckets]
    # Part indexes (BACKUP-FORMAT.md §8) after the bucket parts: older results have none.
    parts += [record(b["index_part"], "index", b["bucket"]) for b in data.buckets if b.get("index_part")]
    parts += [
        record(b["inventory_part"], "inventory", b["bucket"]) for b in data.buckets if b.get("inventory_part")
    ]
    if any(b.get("shard") for b in data.buckets):
        if any(b.get("inventory_part") for b in data.buckets):
            raise BackupError(ErrorCode.INTERNAL, "a set cannot have both sharded buckets and inventories")
        manifest_format = MANIFEST_FORMAT_V3
    elif any(b.get("inventory_part") for b in data.buckets):
        manifest_format = MANIFEST_FORMAT_V2
    else:
        manifest_format = MANIFEST_FORMAT
    return Manifest(
        format=manifest_format,
        backup_id=data.backup_id,
        installation=data.installation_id,
        started_at=data.started_at,
        finished_at=finished_at,
        versions=_versions(data),
        parts=parts,
        buckets=[_bucket_summary(results) for results in by_bucket(data.buckets).values()],
        inventory=[
            InventoryEntry(b["bucket"], o["key"], o["size"], o["sha256"])
            for b in data.buckets
            for o in b["inventory"]
        ],
        anomalies=[
            ObjectAnomaly(b["bucket"], a["key"], kind, a["declared_size"], a["actual_size"], a.get("detail"))
            for kind in ANOMALY_KINDS
            for b in data.buckets
            # Results of older code (a retried run's earlier steps) have only changed/vanished.
            for a in b.get(kind, ())
        ],
        table_rows=dict(data.database.get("table_rows") or {}),
    )


def by_bucket(results: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Export results grouped by bucket, each bucket's shards in key order."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for b in results:
        grouped.setdefault(b["bucket"], []).append(b)
    for shards in grouped.values():
        shards.sort(key=lambda b: (b.get("shard") or {}).get("number", 0))
    return grouped


def _bucket_summary(results: list[dict[str, Any]]) -> BucketSummary:
    """Format 1 keys, plus the inventory part and the diff for a set with inventories, or the
    shards of a sharded bucket (format 3)."""
    b = results[0]
    if b.get("shard"):
        shards = [
            BucketShard(
                part_name=r["part"]["part_name"],
                start_after=r["shard"]["start_after"],
                end=r["shard"]["end"],
                object_count=r["object_count"],
                object_bytes=r["object_bytes"],
                index_part=r["index_part"]["part_name"] if r.get("index_part") else None,
            )
            for r in results
        ]
        if [r["shard"]["number"] for r in results] != list(range(1, b["shard"]["count"] + 1)):
            raise BackupError(
                ErrorCode.INTERNAL,
                f"bucket {b['bucket']}: shards {[r['shard']['number'] for r in results]} of "
                f"{b['shard']['count']} (a shard step's result is missing)",
            )
        return BucketSummary(
            b["bucket"],
            shards[0].part_name,
            sum(s.object_count for s in shards),
            sum(s.object_bytes for s in shards),
            shards=shards,
        )
    if not b.get("inventory_part"):
        return BucketSummary(b["bucket"], b["part"]["part_name"], b["object_count"], b["object_bytes"])
    inc = b["incremental"]
    return BucketSummary(
        b["bucket"],
        b["part"]["part_name"],
        b["object_count"],
        b["object_bytes"],
        inventory_part=b["inventory_part"]["part_name"],
        mode=inc["mode"],
        mode_reason=inc["mode_reason"],
        base_backup_id=inc["base_backup_id"],
        since_full=inc["since_full"],
        total_objects=inc["total_objects"],
        total_bytes=inc["total_bytes"],
        diff=dict(inc["diff"]),
        referenced_parts=[ReferencedPart(**r) for r in inc["referenced_parts"]],
    )


def ledger_entry(
    data: FinalizeInput, manifest: UploadedPart, finished_at: str, seconds: float
) -> dict[str, Any]:
    """The ``backup_set`` materialization metadata: small, no inventory, no secrets."""
    parts = data_parts(data)
    return {
        "backup_id": data.backup_id,
        "installation_id": data.installation_id,
        "set_name": set_name(data.installation_id, data.backup_id),
        "set_format_version": SET_FORMAT_VERSION,
        "set_kind": data.set_kind,
        "started_at": data.started_at,
        "finished_at": finished_at,
        "finalize_seconds": round(seconds, 3),
        "manifest_file_id": manifest.file_id,
        "part_file_ids": {p.part_name: p.file_id for p in [*parts, manifest]},
        "part_sizes": {p.part_name: p.size for p in [*parts, manifest]},
        "total_bytes": sum(p.size for p in [*parts, manifest]),
        "database_seconds": data.database["seconds"],
        "buckets": {name: _ledger_bucket(results) for name, results in by_bucket(data.buckets).items()},
        "object_count": sum(b["object_count"] for b in data.buckets),
        **set_changes(data.buckets, sum(p.size for p in [*parts, manifest])),
        "versions": _versions(data),
        "key_ids": data.key_ids,
    }


def set_changes(buckets: list[dict[str, Any]], uploaded_bytes: int) -> dict[str, int]:
    """What the set changed against the set it was diffed with, summed over its buckets.

    ``*_bytes`` of objects are their sizes in S3; ``uploaded_bytes`` is what the set stored on the
    destination (every part's ciphertext, database and manifest included); ``shared_bytes`` the
    object bytes it uses from older sets' parts (unchanged objects, not uploaded again). A bucket
    backed up in full (format 1, or a format-2 full) counts every object as new and shares nothing:
    its diff was made against an empty inventory.
    """
    out = dict.fromkeys(CHANGE_KEYS, 0)
    for b in buckets:
        diff = (b.get("incremental") or {}).get("diff")
        if diff is None:
            out["objects_new"] += b["object_count"]
            out["objects_new_bytes"] += b["object_bytes"]
            continue
        for kind in ("new", "changed", "deleted"):
            out[f"objects_{kind}"] += diff[kind]
            out[f"objects_{kind}_bytes"] += diff[f"{kind}_bytes"]
        out["shared_bytes"] += diff["unchanged_bytes"]
    out["uploaded_bytes"] = uploaded_bytes
    return out


def _ledger_bucket(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One bucket's line of the ledger: a sharded bucket's shards added up (seconds: the slowest)."""
    b = results[0]
    return {
        "objects": sum(r["object_count"] for r in results),
        "bytes": sum(r["object_bytes"] for r in results),
        "changed": sum(len(r["changed"]) for r in results),
        "vanished": sum(len(r["vanished"]) for r in results),
        "unreadable": sum(len(r.get("unreadable", ())) for r in results),
        "inexact": sum(len(r.get("inexact", ())) for r in results),
        "seconds": max(r["seconds"] for r in results),
        **({"shards": len(results)} if b.get("shard") else {}),
        **({"mode": b["incremental"]["mode"], **b["incremental"]["diff"]} if b.get("incremental") else {}),
    }


def finalize_backup(
    destination: Destination,
    encryptor: Encryptor,
    data: FinalizeInput,
) -> dict[str, Any]:
    """Verify every part, drop strays, upload the manifest last; return the ledger entry.

    A seeding run (objects deferred, or no database dumped: ``services/backup_seed.py``) is closed
    the same way, but its last file is the seed checkpoint (``PART_SEED``) instead of the manifest:
    not a backup, the base the next run continues from. A set without a database part never gets a
    manifest.
    """
    from .backup_seed import writes_seed_checkpoint

    started = time.monotonic()
    parts = data_parts(data)
    verify_parts(destination, parts)
    try:
        remove_strays(destination, data.installation_id, data.backup_id, parts)
    except DestinationError as exc:
        raise destination_failure(exc, "removing files of failed attempts") from None
    finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    manifest_bytes = build_manifest(data, finished_at).to_bytes()
    manifest = upload_part(
        destination,
        encryptor,
        installation_id=data.installation_id,
        backup_id=data.backup_id,
        part_name=PART_SEED if writes_seed_checkpoint(data.database, data.buckets) else PART_MANIFEST,
        plaintext=[manifest_bytes],
        set_kind=data.set_kind,
    )
    return ledger_entry(data, manifest, finished_at, time.monotonic() - started)
