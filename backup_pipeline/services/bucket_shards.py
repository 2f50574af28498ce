"""Sharded bucket export: one big bucket split by key range into parts exported by parallel steps.

``plan_backup`` lists each bucket once anyway (object count and bytes for the room check);
:func:`summarize_and_shard` cuts that same streamed listing every ``max_objects`` objects or
``max_bytes`` bytes and keeps only the cut keys, so memory grows with the number of shards,
never with the number of objects. Shard *i* holds the keys ``start_after < key <= end``
(``None`` = open), compared as Python ``str`` (code point order = UTF-8 byte order, the order
S3 lists in). The first shard starts at the beginning and the last one has no end, so the
ranges tile the whole key space: an object written after the plan still lands in exactly one
shard, and no key can be in two.

Each shard's export reads the bucket's listing and keeps the keys of its range
(:func:`shard_listing`). It does not ask the server to start after the range's first key:
some S3 servers (SeaweedFS among them) list keys containing ``/`` in directory order, not
byte order, so a server-side start-after could skip keys of the range, and stopping at the
first key past the end could miss later ones. The cost is one listing of the bucket per
shard (1 000 keys a request): for a bucket of a million objects in 10 shards, 10 000 list
requests, against a million GETs for the bodies.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..shard_settings import DEFAULT_MAX_BYTES, DEFAULT_MAX_OBJECTS
from .backup_buckets import BucketSummary, ListedObject


@dataclass(frozen=True)
class ShardLimits:
    """A shard is closed once it holds ``max_objects`` objects or ``max_bytes`` bytes."""

    max_objects: int = DEFAULT_MAX_OBJECTS
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if self.max_objects < 1 or self.max_bytes < 1:
            raise ValueError("shard limits must be at least 1")


@dataclass(frozen=True)
class ShardRange:
    """Shard ``number`` (1-based) of ``count``: keys ``start_after < key <= end``."""

    number: int
    count: int
    start_after: str | None
    end: str | None
    #: What the plan's listing saw in the range (progress totals; the export counts anew).
    objects: int = 0
    bytes: int = 0

    def contains(self, key: str) -> bool:
        return (self.start_after is None or key > self.start_after) and (self.end is None or key <= self.end)

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "count": self.count,
            "start_after": self.start_after,
            "end": self.end,
            "objects": self.objects,
            "bytes": self.bytes,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ShardRange:
        return cls(
            number=int(raw["number"]),
            count=int(raw["count"]),
            start_after=raw["start_after"],
            end=raw["end"],
            objects=int(raw.get("objects", 0)),
            bytes=int(raw.get("bytes", 0)),
        )


def summarize_and_shard(
    bucket: str, listing: Iterable[ListedObject], limits: ShardLimits | None
) -> tuple[BucketSummary, list[ShardRange]]:
    """The bucket's totals and its shards (empty: not sharded, one part as before).

    ``limits`` None: never sharded (incremental object backups). A cut is made only at a key
    above the previous cut, so the ranges stay increasing even on a server whose listing is
    not in byte order (the export filters by range, so the objects still all land somewhere).
    """
    count = total = 0
    cuts: list[tuple[str, int, int]] = []  # (end key, objects, bytes) of each closed shard
    in_shard = shard_bytes = 0
    last_key: str | None = None
    ordered = True
    for obj in listing:
        if last_key is not None and obj.key <= last_key:
            ordered = False
        count += 1
        total += obj.size
        if limits is not None and in_shard > 0 and last_key is not None:
            full = in_shard >= limits.max_objects or shard_bytes + obj.size > limits.max_bytes
            above = not cuts or last_key > cuts[-1][0]
            if full and above and obj.key > last_key:
                cuts.append((last_key, in_shard, shard_bytes))
                in_shard = shard_bytes = 0
        in_shard += 1
        shard_bytes += obj.size
        last_key = obj.key
    summary = BucketSummary(bucket, count, total, in_key_order=ordered)
    if not cuts:
        return summary, []
    n = len(cuts) + 1
    shards = []
    start: str | None = None
    for i, (end, objects, size) in enumerate(cuts, start=1):
        shards.append(ShardRange(i, n, start, end, objects, size))
        start = end
    shards.append(ShardRange(n, n, start, None, in_shard, shard_bytes))
    return summary, shards


def shard_listing(listing: Iterable[ListedObject], shard: ShardRange) -> Iterator[ListedObject]:
    """The objects of ``listing`` in the shard's key range (see the module doc for why a filter)."""
    return (obj for obj in listing if shard.contains(obj.key))
