"""The benchmark's reproducible dataset: media-like objects, small compressible objects, a pgbench database.

Everything derives from one seed: media bytes are an AES-256-CTR keystream keyed by the seed and
the object key (incompressible like real media, reproducible, ~1 GB/s, never held in memory); the
small objects are JSON/log text from ``random.Random(seed)``; the database is ``pgbench -i`` at a
given scale (deterministic content).
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from minio import Minio
from minio.commonconfig import Tags

MIB = 1 << 20
KIB = 1 << 10

MEDIA_TYPES = [("mp4", "video/mp4"), ("jpg", "image/jpeg"), ("png", "image/png"), ("zip", "application/zip")]


@dataclass(frozen=True)
class DatasetSpec:
    seed: int
    large_object_bytes: int
    media_sizes: tuple[tuple[int, int], ...]  # (count, bytes) groups
    small_objects: int
    small_min_bytes: int
    small_max_bytes: int
    pgbench_scale: int

    @property
    def media_bytes(self) -> int:
        return self.large_object_bytes + sum(count * size for count, size in self.media_sizes)

    def describe(self) -> str:
        groups = ", ".join(f"{c} × {s / MIB:g} MiB" for c, s in self.media_sizes)
        return (
            f"seed {self.seed}; bucket `bench-large`: 1 × {self.large_object_bytes / MIB:g} MiB; "
            f"bucket `bench-media`: {groups} (incompressible, media content types); "
            f"bucket `bench-docs`: {self.small_objects} compressible JSON/log objects of "
            f"{self.small_min_bytes / KIB:g}–{self.small_max_bytes / KIB:g} KiB; "
            f"database: `pgbench -i -s {self.pgbench_scale}`"
        )


FULL = DatasetSpec(
    seed=20261127,
    large_object_bytes=512 * MIB,
    media_sizes=((3, 64 * MIB), (12, 16 * MIB), (64, 2 * MIB)),  # + 512 MiB = 1 GiB
    small_objects=5000,
    small_min_bytes=1 * KIB,
    small_max_bytes=16 * KIB,
    pgbench_scale=20,
)

QUICK = DatasetSpec(
    seed=20261127,
    large_object_bytes=32 * MIB,
    media_sizes=((2, 8 * MIB), (4, 2 * MIB), (8, 512 * KIB)),
    small_objects=300,
    small_min_bytes=1 * KIB,
    small_max_bytes=16 * KIB,
    pgbench_scale=1,
)

BUCKET_LARGE = "bench-large"
BUCKET_MEDIA = "bench-media"
BUCKET_DOCS = "bench-docs"
BUCKETS = (BUCKET_LARGE, BUCKET_MEDIA, BUCKET_DOCS)


class KeystreamReader(io.RawIOBase):
    """``size`` incompressible, reproducible bytes for one object, produced as they are read."""

    def __init__(self, seed: int, key: str, size: int) -> None:
        digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        self._encryptor = Cipher(algorithms.AES(digest), modes.CTR(bytes(16))).encryptor()
        self._left = size

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        step = self._left if size is None or size < 0 else min(size, self._left)
        self._left -= step
        return self._encryptor.update(bytes(step)) if step else b""


WORDS = [
    "order",
    "invoice",
    "payment",
    "shipped",
    "pending",
    "customer",
    "account",
    "session",
    "created",
    "updated",
    "status",
    "total",
    "amount",
]


def small_document(rng: random.Random, index: int, size: int) -> tuple[bytes, str, str]:
    """A compressible JSON or log object of about ``size`` bytes."""
    if index % 2:
        lines = []
        length = 0
        while length < size:
            line = (
                f"2026-11-{rng.randint(1, 27):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z "
                f"{rng.choice(['INFO', 'WARN', 'DEBUG'])} "
                + " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10)))
                + f" id={rng.randint(0, 10**6)}\n"
            )
            lines.append(line)
            length += len(line)
        return "".join(lines).encode()[:size], "text/plain", "log"
    records: list[dict[str, Any]] = []
    length = 2
    while length < size:
        record = {
            "id": rng.randint(0, 10**9),
            "status": rng.choice(WORDS),
            "amount": round(rng.random() * 1000, 2),
            "note": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))),
        }
        records.append(record)
        length += len(json.dumps(record)) + 2
    return json.dumps(records).encode(), "application/json", "json"


def load_objects(client: Minio, spec: DatasetSpec) -> tuple[int, int]:
    """Create the three buckets and upload every object; returns (objects, bytes)."""
    for bucket in BUCKETS:
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
    count = total = 0

    def put_media(bucket: str, key: str, size: int, content_type: str) -> None:
        nonlocal count, total
        client.put_object(
            bucket,
            key,
            KeystreamReader(spec.seed, f"{bucket}/{key}", size),  # type: ignore[arg-type]
            size,
            content_type=content_type,
            metadata={"origin": "bench", "seed": str(spec.seed)},
            part_size=64 * MIB,
        )
        count += 1
        total += size

    put_media(BUCKET_LARGE, "videos/2026/all-hands-recording.mp4", spec.large_object_bytes, "video/mp4")
    index = 0
    for group, (n, size) in enumerate(spec.media_sizes):
        for _ in range(n):
            ext, content_type = MEDIA_TYPES[index % len(MEDIA_TYPES)]
            put_media(BUCKET_MEDIA, f"group-{group}/asset {index:04d}.{ext}", size, content_type)
            index += 1
    rng = random.Random(spec.seed)
    for i in range(spec.small_objects):
        size = rng.randint(spec.small_min_bytes, spec.small_max_bytes)
        body, content_type, ext = small_document(rng, i, size)
        tags = Tags.new_object_tags()
        if i % 5 == 0:
            tags["class"] = "report"
        client.put_object(
            BUCKET_DOCS,
            f"docs/{i // 500:02d}/doc-{i:05d}.{ext}",
            io.BytesIO(body),
            len(body),
            content_type=content_type,
            metadata={"origin": "bench"},
            tags=tags if i % 5 == 0 else None,
        )
        count += 1
        total += len(body)
    return count, total


def load_database(dbname: str, scale: int) -> None:
    """(Re)create ``dbname`` and fill it with ``pgbench -i -s scale`` (primary keys included)."""
    subprocess.run(["dropdb", "--if-exists", "-h", "127.0.0.1", "-U", "postgres", dbname], check=True)
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", dbname], check=True)
    subprocess.run(
        ["pgbench", "-h", "127.0.0.1", "-U", "postgres", "-i", "-q", "-s", str(scale), dbname],
        check=True,
        capture_output=True,
    )


def database_bytes(dbname: str) -> int:
    out = subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-At",
            "-d",
            dbname,
            "-c",
            f"SELECT pg_database_size('{dbname}')",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(out.strip())
