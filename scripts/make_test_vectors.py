#!/usr/bin/env python3
"""Write the committed archive test vectors to ``backup_pipeline_tests/vectors/``.

All randomness (data keys, salts, ephemeral X25519 keys) comes from a seeded SHAKE-256 stream,
so running this again reproduces the same bytes unless the format changed — which is exactly
what ``backup_pipeline_tests/test_archive_vectors.py`` detects. Re-run it only for a deliberate,
versioned format change.

    .venv/bin/python scripts/make_test_vectors.py
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from backup_pipeline.archive.inventory import InventoryRecord, write_inventory
from backup_pipeline.archive.keys import OrgKeyring, RecoveryIdentity
from backup_pipeline.archive.manifest import (
    MANIFEST_FORMAT_V2,
    MANIFEST_FORMAT_V3,
    BucketShard,
    BucketSummary,
    InventoryEntry,
    Manifest,
    ObjectAnomaly,
    PartRecord,
)
from backup_pipeline.archive.part_index import PartIndexWriter, index_part_name
from backup_pipeline.archive.stream_crypto import encrypt_stream
from backup_pipeline.archive.tar_parts import SourceObject, write_bucket_archive

VECTORS = Path(__file__).resolve().parent.parent / "backup_pipeline_tests" / "vectors"
ORG_KEYS_TEXT = (
    "# test vector org secrets: NOT SECRET\n"
    "k2024:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
    "k2025:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=\n"
)
RECOVERY_RAW = bytes(range(64, 96))
BACKUP_ID = "vectors-20260101T000000Z"


def deterministic_rng(seed: str) -> Callable[[int], bytes]:
    counter = 0

    def rng(size: int) -> bytes:
        nonlocal counter
        counter += 1
        return hashlib.shake_256(f"{seed}/{counter}".encode()).digest(size)

    return rng


def pattern(size: int) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(size))


def bucket_plaintext() -> bytes:
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    objects = [
        SourceObject(
            "hello.txt",
            13,
            "text/plain",
            {"author": "vectors", "title": "Résumé"},
            {"k": "v"},
            "e1",
            when,
            lambda: [b"Hello, world\n"],
            headers={
                "Cache-Control": "no-cache",
                "Content-Disposition": "attachment; filename*=UTF-8''h%C3%A9llo.txt",
                "Content-Language": "en",
            },
        ),
        SourceObject(
            "folder/",
            0,
            "application/octet-stream",
            etag="d41d8cd98f00b204e9800998ecf8427e",
            last_modified=dt.datetime(2026, 1, 1, 0, 0, 1, 250000, tzinfo=dt.UTC),
        ),
        SourceObject("dir/../odd key.bin", 600, "application/octet-stream", open=lambda: [pattern(600)]),
    ]
    return b"".join(write_bucket_archive(objects, compress_level=6, workers=1))


def vector_manifest() -> Manifest:
    """A manifest with every field in use (BACKUP-FORMAT.md §6 describes each)."""
    return Manifest(
        backup_id=BACKUP_ID,
        installation="vectors",
        started_at="2026-01-01T00:00:00+00:00",
        finished_at="2026-01-01T00:01:00+00:00",
        versions={
            "backup_pipeline": "0.1.0",
            "pg_server": "17.2",
            "pg_dump": "17.2",
            "schema_version": "20251231_a",
            "set_format_version": "1",
            "org_key_id": "k2025",
            "recovery_key_id": "0011223344556677",
        },
        parts=[
            PartRecord(
                "database",
                "database",
                1234,
                "0" * 64,
                1100,
                "1" * 64,
                ciphertext_md5="2" * 32,
                file_name="vectors-20260101T000000Z-vectors-20260101T000000Z/database.bpa",
            ),
            PartRecord(
                "bucket-photos",
                "bucket",
                2048,
                "3" * 64,
                2000,
                "4" * 64,
                bucket="photos",
                file_name="vectors-20260101T000000Z-vectors-20260101T000000Z/bucket-photos.bpa",
            ),
        ],
        buckets=[BucketSummary("photos", "bucket-photos", 2, 13)],
        inventory=[
            InventoryEntry("photos", "a.jpg", 13, "5" * 64),
            InventoryEntry("photos", "folder/", 0, hashlib.sha256(b"").hexdigest()),
        ],
        anomalies=[
            ObjectAnomaly("photos", "a.jpg", "changed", 12, 13),
            ObjectAnomaly("photos", "b.jpg", "vanished", 7, None),
            ObjectAnomaly(
                "photos",
                "c/../d.jpg",
                "unreadable",
                9,
                None,
                "the S3 client library cannot address a key with a '.' or '..' segment",
            ),
        ],
        table_rows={"public.users": 20, "app.Weird Table": 0},
    )


def inventory_plaintext() -> bytes:
    """The inventory part (BACKUP-FORMAT.md §5.3) of the bucket vector's objects in a full set:
    every line names this set's ``bucket-photos``; keys ascend by UTF-8 bytes."""
    hello = {
        "Cache-Control": "no-cache",
        "Content-Disposition": "attachment; filename*=UTF-8''h%C3%A9llo.txt",
        "Content-Language": "en",
    }
    records = [
        InventoryRecord(
            "dir/../odd key.bin",
            600,
            hashlib.sha256(pattern(600)).hexdigest(),
            "",
            None,
            "application/octet-stream",
            BACKUP_ID,
            "bucket-photos",
        ),
        InventoryRecord(
            "folder/",
            0,
            hashlib.sha256(b"").hexdigest(),
            "d41d8cd98f00b204e9800998ecf8427e",
            "2026-01-01T00:00:01.250000+00:00",
            "application/octet-stream",
            BACKUP_ID,
            "bucket-photos",
        ),
        InventoryRecord(
            "hello.txt",
            13,
            hashlib.sha256(b"Hello, world\n").hexdigest(),
            "e1",
            "2026-01-01T00:00:00+00:00",
            "text/plain",
            BACKUP_ID,
            "bucket-photos",
            headers=hello,
            metadata={"author": "vectors", "title": "Résumé"},
            tags={"k": "v"},
        ),
    ]
    return b"".join(write_inventory(records, level=6))


def vector_manifest_v2() -> Manifest:
    """The manifest a full set is written with since issue 18 (format 2, the bucket's objects in
    its inventory part, ``mode`` full with incremental object backups off; BACKUP-FORMAT.md §6)."""
    base = vector_manifest()
    files = "vectors-20260101T000000Z-vectors-20260101T000000Z"
    parts = [
        *base.parts,
        PartRecord(
            "index-photos",
            "index",
            512,
            "6" * 64,
            400,
            "7" * 64,
            bucket="photos",
            file_name=f"{files}/index-photos.bpa",
        ),
        PartRecord(
            "inventory-photos",
            "inventory",
            640,
            "8" * 64,
            500,
            "9" * 64,
            bucket="photos",
            file_name=f"{files}/inventory-photos.bpa",
        ),
    ]
    counts = {"new": 3, "new_bytes": 613, "changed": 0, "changed_bytes": 0}
    counts |= {"unchanged": 0, "unchanged_bytes": 0, "deleted": 0, "deleted_bytes": 0}
    return Manifest(
        backup_id=base.backup_id,
        installation=base.installation,
        started_at=base.started_at,
        finished_at=base.finished_at,
        versions=base.versions,
        parts=parts,
        buckets=[
            BucketSummary(
                "photos",
                "bucket-photos",
                3,
                613,
                inventory_part="inventory-photos",
                mode="full",
                mode_reason="incremental object backups off",
                base_backup_id=None,
                since_full=0,
                total_objects=3,
                total_bytes=613,
                diff=counts,
                referenced_parts=[],
            )
        ],
        inventory=[],
        anomalies=[],
        format=MANIFEST_FORMAT_V2,
        table_rows=base.table_rows,
    )


# --- format 3: a complete set with one sharded bucket (BACKUP-FORMAT.md §6.1) ---------------

SHARDED_BUCKET = "media"
#: (start_after, end) of each shard: keys ≤ "m" (UTF-8 bytes) in the first, the rest in the second.
SHARD_BOUNDS: list[tuple[str | None, str | None]] = [(None, "m"), ("m", None)]


def sharded_objects() -> list[tuple[str, bytes, str]]:
    """(key, body, content type) of the sharded bucket, in key order (UTF-8 bytes). "m" itself
    is a key: it belongs to the shard that ends there; "m/" and "é" sort after it."""
    return [
        ("a.txt", b"first shard\n", "text/plain"),
        ("docs/b.json", b'{"shard": 0}', "application/json"),
        ("m", pattern(5000), "application/octet-stream"),
        ("m/after.bin", pattern(70_000), "application/octet-stream"),
        ("z.txt", b"second shard\n", "text/plain"),
        ("\u00e9t\u00e9.txt", "été\n".encode(), "text/plain"),
    ]


def _in_shard(key: str, bounds: tuple[str | None, str | None]) -> bool:
    start, end = bounds
    k = key.encode()
    return (start is None or k > start.encode()) and (end is None or k <= end.encode())


def shard_part_name(i: int) -> str:
    return f"bucket-{SHARDED_BUCKET}@{i:04d}"


def shard_plaintexts() -> list[tuple[bytes, bytes]]:
    """(bucket part plaintext, index part plaintext) of every shard."""
    when = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    out = []
    for i, bounds in enumerate(SHARD_BOUNDS):
        objects = [
            SourceObject(
                key,
                len(body),
                content_type,
                {"shard": str(i)},
                {},
                hashlib.md5(body).hexdigest(),
                when,
                lambda body=body: [body],  # type: ignore[misc]
            )
            for key, body, content_type in sharded_objects()
            if _in_shard(key, bounds)
        ]
        lines: list[bytes] = []
        index = PartIndexWriter(shard_part_name(i), lines.append)
        part = b"".join(write_bucket_archive(objects, compress_level=6, workers=1, index=index))
        out.append((part, b"".join(lines)))
    return out


def sharded_parts_cases() -> list[dict[str, object]]:
    """The parts of the format-3 set except its manifest: database, shard parts, shard indexes."""
    cases: list[dict[str, object]] = [
        {"name": "sharded-database", "part": "database", "log2": 16, "plaintext": b"not a dump: a stand-in\n"}
    ]
    for i, (part, index) in enumerate(shard_plaintexts()):
        cases.append({"name": f"sharded-{i}", "part": shard_part_name(i), "log2": 16, "plaintext": part})
        cases.append(
            {
                "name": f"sharded-{i}-index",
                "part": index_part_name(shard_part_name(i)),
                "log2": 16,
                "plaintext": index,
            }
        )
    return cases


def sharded_manifest(parts: list[tuple[dict[str, object], bytes]]) -> Manifest:
    """The format-3 manifest of the set whose parts are ``parts`` ((case, ciphertext)): their real
    sizes and hashes, so a reader can check the whole set."""
    records = []
    for case, ciphertext in parts:
        plaintext: bytes = case["plaintext"]  # type: ignore[assignment]
        name = str(case["part"])
        kind = "database" if name == "database" else "bucket" if name.startswith("bucket-") else "index"
        records.append(
            PartRecord(
                name,
                kind,  # type: ignore[arg-type]
                len(ciphertext),
                hashlib.sha256(ciphertext).hexdigest(),
                len(plaintext),
                hashlib.sha256(plaintext).hexdigest(),
                ciphertext_md5=hashlib.md5(ciphertext).hexdigest(),
                bucket=None if kind == "database" else SHARDED_BUCKET,
            )
        )
    objects = sharded_objects()
    shards = []
    for i, bounds in enumerate(SHARD_BOUNDS):
        inside = [body for key, body, _ in objects if _in_shard(key, bounds)]
        shards.append(
            BucketShard(
                shard_part_name(i),
                bounds[0],
                bounds[1],
                len(inside),
                sum(map(len, inside)),
                index_part=index_part_name(shard_part_name(i)),
            )
        )
    return Manifest(
        backup_id=BACKUP_ID,
        installation="vectors",
        started_at="2026-01-02T00:00:00+00:00",
        finished_at="2026-01-02T00:01:00+00:00",
        versions={
            "backup_pipeline": "0.1.0",
            "pg_server": "17.2",
            "pg_dump": "17.2",
            "schema_version": "20251231_a",
            "set_format_version": "1",
            "org_key_id": "k2025",
            "recovery_key_id": "0011223344556677",
        },
        parts=records,
        buckets=[
            BucketSummary(
                SHARDED_BUCKET,
                shard_part_name(0),
                len(objects),
                sum(len(body) for _, body, _ in objects),
                shards=shards,
            )
        ],
        inventory=[
            InventoryEntry(SHARDED_BUCKET, key, len(body), hashlib.sha256(body).hexdigest())
            for key, body, _ in objects
        ],
        table_rows={"public.users": 2},
        format=MANIFEST_FORMAT_V3,
    )


def vector_cases() -> list[dict[str, object]]:
    """(name, part name, chunk size log2, plaintext) of every vector; the test imports this too."""
    c = 1 << 16
    return [
        {"name": "empty", "part": "database", "log2": 16, "plaintext": b""},
        {"name": "one-byte", "part": "database", "log2": 16, "plaintext": b"\x2a"},
        {"name": "chunk-minus-1", "part": "database", "log2": 16, "plaintext": pattern(c - 1)},
        {"name": "chunk", "part": "database", "log2": 16, "plaintext": pattern(c)},
        {"name": "chunk-plus-1", "part": "database", "log2": 16, "plaintext": pattern(c + 1)},
        {"name": "three-chunks", "part": "database", "log2": 16, "plaintext": pattern(3 * c)},
        {"name": "bucket", "part": "bucket-photos", "log2": 16, "plaintext": bucket_plaintext()},
        {"name": "manifest", "part": "manifest", "log2": 20, "plaintext": vector_manifest().to_bytes()},
        {"name": "inventory", "part": "inventory-photos", "log2": 16, "plaintext": inventory_plaintext()},
        {"name": "manifest-v2", "part": "manifest", "log2": 20, "plaintext": vector_manifest_v2().to_bytes()},
        *sharded_parts_cases(),
    ]


def sharded_manifest_case(keyring: OrgKeyring, recovery: RecoveryIdentity) -> dict[str, object]:
    """The format-3 manifest vector: it records the other sharded vectors' ciphertext hashes."""
    parts = [(case, encrypt_case(case, keyring, recovery)) for case in sharded_parts_cases()]
    plaintext = sharded_manifest(parts).to_bytes()
    return {"name": "sharded-manifest", "part": "manifest", "log2": 20, "plaintext": plaintext}


def encrypt_case(case: dict[str, object], keyring: OrgKeyring, recovery: RecoveryIdentity) -> bytes:
    return b"".join(
        encrypt_stream(
            [case["plaintext"]],  # type: ignore[list-item]
            backup_id=BACKUP_ID,
            part_name=str(case["part"]),
            org_keyring=keyring,
            recovery_public_key=recovery.public_key,
            chunk_size_log2=int(case["log2"]),  # type: ignore[call-overload]
            rng=deterministic_rng(str(case["name"])),
        )
    )


def main() -> None:
    VECTORS.mkdir(parents=True, exist_ok=True)
    keyring = OrgKeyring.from_text(ORG_KEYS_TEXT)
    recovery = RecoveryIdentity(RECOVERY_RAW)
    (VECTORS / "org-secret.txt").write_text(ORG_KEYS_TEXT)
    (VECTORS / "recovery-key.txt").write_text(
        "# test vector recovery key: NOT SECRET\n" + recovery.to_bech32() + "\n"
    )
    index = []
    for case in [*vector_cases(), sharded_manifest_case(keyring, recovery)]:
        part = encrypt_case(case, keyring, recovery)
        plaintext: bytes = case["plaintext"]  # type: ignore[assignment]
        (VECTORS / f"{case['name']}.bpa").write_bytes(part)
        (VECTORS / f"{case['name']}.plain").write_bytes(plaintext)
        index.append(
            {
                "name": case["name"],
                "backup_id": BACKUP_ID,
                "part_name": case["part"],
                "chunk_size_log2": case["log2"],
                "plaintext_size": len(plaintext),
                "plaintext_sha256": hashlib.sha256(plaintext).hexdigest(),
                "ciphertext_sha256": hashlib.sha256(part).hexdigest(),
            }
        )
    (VECTORS / "vectors.json").write_text(json.dumps(index, indent=1) + "\n")
    print(f"wrote {len(index)} vectors to {VECTORS}")


if __name__ == "__main__":
    main()
