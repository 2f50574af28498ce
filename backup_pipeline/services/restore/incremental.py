"""What a bucket restore reads: the set's own part (format 1), or the inventory and every part it names (format 2).

A format-2 set (incremental object backups, ``services/backup_incremental.py``) lists each
object once in its inventory part with the part that holds its body: the set's own bucket
part or a bucket part of an older set. The restore streams each of those parts once and keeps
only the members the inventory names there (a member superseded by a later set is skipped);
the per-part streams are merged by key, so the restore sees one stream in S3 listing order (its
merge with the target's listing stays valid) and memory holds one entry per part, never the
inventory. Each part is authenticated under its own backup id and compared with the sizes and
hashes recorded in the manifest (``open_part``); the verify pass reads them all before
anything is changed.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from backup_pipeline.archive.errors import ArchiveError
from backup_pipeline.archive.inventory import InventoryRecord, read_inventory
from backup_pipeline.destinations.base import Destination
from backup_pipeline.services.restore.buckets import RestoreEntry, bucket_entries
from backup_pipeline.services.restore.common import IncomingObject, RestoreRefused
from backup_pipeline.services.restore.sets import (
    PartVerificationError,
    ResolvedBackup,
    RestoreKeys,
    open_part,
    referenced_key,
)


class _Current(Mapping[str, IncomingObject]):
    """The inventory entry of the member being restored (``restore_bucket`` asks for it by key)."""

    def __init__(self, total: int) -> None:
        self.entry: IncomingObject | None = None
        self._total = total

    def __getitem__(self, key: str) -> IncomingObject:
        if self.entry is None or self.entry.key != key:
            raise KeyError(key)
        return self.entry

    def __iter__(self) -> Iterator[str]:
        return iter([self.entry.key] if self.entry is not None else [])

    def __len__(self) -> int:
        return self._total


@dataclass
class BucketSource:
    """The entries to restore, their expected sizes/hashes, and the inventory for a dry run."""

    entries: Iterator[RestoreEntry]
    inventory: Mapping[str, IncomingObject]
    planned: Callable[[], Iterator[IncomingObject]]
    count: int


def bucket_source(
    destination: Destination, keys: RestoreKeys, resolved: ResolvedBackup, bucket: str
) -> BucketSource:
    info = resolved.manifest.get("incremental", {}).get(bucket)
    if info is None:
        inventory = resolved.inventory(bucket)
        return BucketSource(
            # A sharded bucket's parts one after the other: in key order as the shards are.
            itertools.chain.from_iterable(
                bucket_entries(open_part(destination, keys, resolved, part))
                for part in resolved.bucket_parts(bucket)
            ),
            inventory,
            lambda: iter(inventory.values()),
            len(inventory),
        )

    def records() -> Iterator[InventoryRecord]:
        try:
            yield from read_inventory(open_part(destination, keys, resolved, info["inventory_part"]))
        except ArchiveError as exc:
            raise PartVerificationError(resolved.backup_id, info["inventory_part"], str(exc)) from None

    current = _Current(int(info["total_objects"]))

    def planned() -> Iterator[IncomingObject]:
        return (IncomingObject(r.key, r.size, r.sha256) for r in records())

    def from_part(backup_id: str, part: str) -> Iterator[tuple[str, RestoreEntry, IncomingObject]]:
        wanted = (r for r in records() if r.backup_id == backup_id and r.part == part)
        want = next(wanted, None)
        if want is None:
            return
        name = part if backup_id == resolved.backup_id else referenced_key(backup_id, part)
        for entry in bucket_entries(open_part(destination, keys, resolved, name)):
            if want is not None and want.key < entry.key:
                break
            if want is not None and want.key == entry.key:
                yield entry.key, entry, IncomingObject(want.key, want.size, want.sha256)
                want = next(wanted, None)
            else:
                # Superseded in a later set (or deleted): its body is skipped, not restored.
                while entry.fileobj.read(1024 * 1024):
                    pass
        if want is not None:
            raise RestoreRefused(
                f"backup {resolved.backup_id}, bucket {bucket}: the inventory names {want.key!r} in part "
                f"{part!r} of backup {backup_id}, which does not hold it; nothing more is restored"
            )

    def entries() -> Iterator[RestoreEntry]:
        sources = [from_part(backup_id, part) for backup_id, part in info["locations"]]
        for _, entry, expected in heapq.merge(*sources, key=lambda item: item[0]):
            current.entry = expected
            yield entry

    return BucketSource(entries(), current, planned, int(info["total_objects"]))
