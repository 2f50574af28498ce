"""Restore one object, some named objects, or one prefix of a bucket from a set, reading only
the byte ranges of the bucket part that hold them (the part index, BACKUP-FORMAT.md §8).

Order, per object: the index part is streamed (authenticated; its SHA-256 against the manifest
at its end) → the bucket part's header is fetched and authenticated once → per matching entry,
the sealed chunks covering its gzip members are fetched with one ranged ``get``, each chunk
authenticated alone (final flag enforced), inflated from the member start, the entry checked to
carry the indexed key and size → the body is streamed to the target while hashed → its SHA-256
is compared with the index's and the manifest inventory's. A folder target renames the file into
place only after that check; an S3 put fails without creating the object when the read fails
(chunk tampered) — the SHA-256 comparison after a put can only fail when the manifest and the
authenticated part disagree.

A set without an index (written before indexes existed) is restored the old way: the whole
bucket part streamed, the wanted entries picked out. A sharded bucket (BACKUP-FORMAT.md §6.1)
is read shard by shard, each through its own index; for exact keys only the shards whose key
range holds one are read, a prefix reads every shard's index.

A format-2 set (incremental objects, :func:`locate_parts`) names in its inventory part which part holds each body: its
own bucket part or an older set's; each such part is read through its own index (the set's
manifest copies that index's sizes and hashes, ``ReferencedPart.index_*``), and every index
entry must agree with the inventory (size, SHA-256). When one of those parts has no index (an
older set written before incremental sets had them), the set's objects are read the old way.
Existing objects of the same key in the target are overwritten (no undo journal: use
``restore_job`` for whole-bucket restores).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from minio import Minio

from backup_pipeline.archive.errors import ArchiveError
from backup_pipeline.archive.inventory import read_inventory
from backup_pipeline.archive.part_index import INDEX_PART_PREFIX, IndexEntry, index_part_name, read_index
from backup_pipeline.archive.stream_crypto import ArchiveHeader, open_header, read_header
from backup_pipeline.archive.tar_parts import ArchivedObject, read_indexed_object, safe_tar_path
from backup_pipeline.destinations.base import Destination
from backup_pipeline.durable_files import fsync_dir
from backup_pipeline.services.backup_parts import BUCKET_PART_PREFIX, bucket_part_name
from backup_pipeline.services.restore.buckets import RestoreEntry, bucket_entries, put_entry
from backup_pipeline.services.restore.common import RestoreError, RestoreRefused
from backup_pipeline.services.restore.sets import (
    PartRef,
    ResolvedBackup,
    RestoreKeys,
    open_part,
    referenced_key,
)

#: A header is at most 13 + 128 + 1 + 128 + 32 + 1 + 8 × (3 + 121) + 32 = 1 327 bytes (§2).
HEADER_FETCH_BYTES = 2048


class SingleObjectError(RestoreError):
    """An object could not be restored: named, with the reason (damage, mismatch, target)."""


@dataclass(frozen=True)
class Selection:
    """Which objects: exact ``keys``, and/or every key starting with ``prefix``."""

    keys: frozenset[str] = frozenset()
    prefix: str | None = None

    def __post_init__(self) -> None:
        if not self.keys and self.prefix is None:
            raise RestoreRefused("keys / prefix: name at least one object key or a prefix to restore")

    def matches(self, key: str) -> bool:
        return key in self.keys or (self.prefix is not None and key.startswith(self.prefix))


@dataclass(frozen=True)
class ObjectLocation:
    """Where one object of a set is: the bucket part and its index entry."""

    bucket: str
    part: PartRef
    entry: IndexEntry


class NoIndex(RestoreError):
    """The set has no index for this bucket (written before indexes existed)."""


@dataclass(frozen=True)
class PartLocations:
    """The selected objects of one bucket part, in the part's order (a lazy stream)."""

    part: PartRef
    owner: str  # the set the part belongs to (its header is bound to that backup id)
    locations: Iterator[ObjectLocation]


def locate_parts(
    destination: Destination, keys: RestoreKeys, resolved: ResolvedBackup, bucket: str, selection: Selection
) -> list[PartLocations]:
    """Format 2: per bucket part the inventory names (the set's own and the older sets' it
    references), the index entries of the selected objects it holds; raises :class:`NoIndex`
    when one of those parts has no index."""
    part_name = bucket_part_name(bucket)
    if part_name not in resolved.parts:
        raise RestoreRefused(
            f"bucket: backup {resolved.backup_id} has no bucket {bucket!r} "
            f"(it has: {', '.join(resolved.buckets) or 'no buckets'})"
        )
    info = resolved.manifest["incremental"][bucket]
    out = []
    for owner, part in info["locations"]:
        mine = owner == resolved.backup_id
        part_key = part if mine else referenced_key(owner, part)
        index_key = index_part_name(part) if mine else referenced_key(owner, index_part_name(part))
        if index_key not in resolved.parts:
            raise NoIndex(f"part {part!r} of backup {owner} has no index")
        located = _located_by_inventory(
            destination, keys, resolved, bucket, selection, owner, part_key, index_key, info
        )
        out.append(PartLocations(resolved.parts[part_key], owner, located))
    return out


def _located_by_inventory(
    destination: Destination,
    keys: RestoreKeys,
    resolved: ResolvedBackup,
    bucket: str,
    selection: Selection,
    owner: str,
    part_key: str,
    index_key: str,
    info: dict[str, Any],
) -> Iterator[ObjectLocation]:
    """The selected objects the inventory places in this part, joined with the part's index.

    Both streams ascend by key (the part was written in listing order), so memory holds one
    record of each; the index is read only when the inventory places a selected object here.
    """
    part = resolved.parts[part_key]
    where = f"backup {resolved.backup_id}, part {part.part_name!r} of backup {owner}"
    try:
        records = read_inventory(open_part(destination, keys, resolved, info["inventory_part"]))
        wanted = (r for r in records if r.backup_id == owner and r.part == part.part_name)
        want = next((r for r in wanted if selection.matches(r.key)), None)
        if want is None:
            return
        for entry in read_index(open_part(destination, keys, resolved, index_key), part.part_name):
            if want is None or entry.key != want.key:
                continue
            if entry.size != want.size or entry.sha256 != want.sha256:
                raise SingleObjectError(f"{where}: the index and the inventory disagree on {entry.key!r}")
            yield ObjectLocation(bucket, part, entry)
            want = next((r for r in wanted if selection.matches(r.key)), None)
    except ArchiveError as exc:
        raise SingleObjectError(f"{where}: {exc}") from None
    if want is not None:
        raise SingleObjectError(f"{where}: the inventory places {want.key!r} there, its index does not")


def locate_objects(
    destination: Destination,
    keys: RestoreKeys,
    resolved: ResolvedBackup,
    bucket: str,
    selection: Selection,
    part_name: str | None = None,
) -> Iterator[ObjectLocation]:
    """Key → part + index entry, for every selected object, in the part's order.

    Streams the bucket's index part (of ``part_name``, one shard of a sharded bucket); each
    yielded entry comes from authenticated chunks, and the index's SHA-256 is compared with the
    manifest once it ended (a mismatch raises then).
    """
    part_name = part_name or bucket_part_name(bucket)
    if part_name not in resolved.parts:
        raise RestoreRefused(
            f"bucket: backup {resolved.backup_id} has no bucket {bucket!r} "
            f"(it has: {', '.join(resolved.buckets) or 'no buckets'})"
        )
    name = index_part_name(part_name)
    if name not in resolved.parts:
        raise NoIndex(f"backup {resolved.backup_id} has no index of bucket {bucket!r}")
    part = resolved.parts[part_name]
    try:
        for entry in read_index(open_part(destination, keys, resolved, name), part_name):
            if selection.matches(entry.key):
                yield ObjectLocation(bucket, part, entry)
    except ArchiveError as exc:
        raise SingleObjectError(f"backup {resolved.backup_id}, part {name!r}: {exc}") from None


class ObjectTarget(Protocol):
    @property
    def description(self) -> str: ...

    def write(self, key: str, entry: RestoreEntry, expected_sha256: str) -> int: ...


@dataclass
class S3Target:
    """Objects put into ``bucket`` on an S3 server, with their recorded headers, metadata and tags."""

    client: Minio
    bucket: str

    @property
    def description(self) -> str:
        return f"s3://{self.bucket}"

    def write(self, key: str, entry: RestoreEntry, expected_sha256: str) -> int:
        return put_entry(self.client, self.bucket, key, entry, expected_sha256)


@dataclass
class FolderTarget:
    """Object bodies written under ``root`` at their safe tar paths (BACKUP-FORMAT.md §5.1):
    a temporary file, fsynced, renamed into place only once its SHA-256 matched."""

    root: Path

    @property
    def description(self) -> str:
        return str(self.root)

    def write(self, key: str, entry: RestoreEntry, expected_sha256: str) -> int:
        path = self.root / safe_tar_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        written = 0
        fd, temporary = tempfile.mkstemp(prefix=".bp-restore-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                for block in iter(lambda: entry.fileobj.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
                    written += len(block)
                out.flush()
                os.fsync(out.fileno())
            if written != entry.size or digest.hexdigest() != expected_sha256:
                raise SingleObjectError(f"{key!r}: {written} bytes read, SHA-256 differs from the backup's")
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
        return written


@dataclass
class SingleRestoreReport:
    backup_id: str
    bucket: str
    target: str
    indexed: bool
    objects: list[dict[str, object]] = field(default_factory=list)
    object_bytes: int = 0
    #: Bytes fetched from the bucket part (header + ranges); the whole part without an index.
    part_bytes_downloaded: int = 0
    #: Bytes of the index parts (each read whole).
    index_bytes_downloaded: int = 0
    #: Format 2: bytes of the inventory part (read once per part it places selected objects in).
    inventory_bytes_downloaded: int = 0
    missing: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "backup_id": self.backup_id,
            "bucket": self.bucket,
            "target": self.target,
            "indexed": self.indexed,
            "objects": len(self.objects),
            "object_bytes": self.object_bytes,
            "part_bytes_downloaded": self.part_bytes_downloaded,
            "index_bytes_downloaded": self.index_bytes_downloaded,
            "inventory_bytes_downloaded": self.inventory_bytes_downloaded,
            "missing": self.missing,
            "restored": self.objects,
        }


class _CountingDestination:
    """Counts the bytes every ``get`` returns (what was downloaded), per file."""

    def __init__(self, inner: Destination) -> None:
        self.inner = inner
        self.served: dict[str, int] = {}

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def get(self, file_id: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        for block in self.inner.get(file_id, start, end):
            self.served[file_id] = self.served.get(file_id, 0) + len(block)
            yield block


def restore_objects(
    destination: Destination,
    keys: RestoreKeys,
    resolved: ResolvedBackup,
    bucket: str,
    selection: Selection,
    target: ObjectTarget,
    *,
    on_object: Callable[[str, int], None] | None = None,
) -> SingleRestoreReport:
    """Restore the selected objects of ``bucket`` from ``resolved`` into ``target``.

    Exact keys that the set does not hold are listed in ``missing`` (and the call raises
    ``RestoreRefused`` when nothing at all matched). Any damage raises ``SingleObjectError``
    naming the object and the part.
    """
    counting = _CountingDestination(destination)
    source: Destination = counting  # type: ignore[assignment]
    inventory = resolved.inventory(bucket)
    report = SingleRestoreReport(resolved.backup_id, bucket, target.description, indexed=True)
    seen: set[str] = set()

    def done(key: str, size: int, sha256: str, written: int) -> None:
        recorded = inventory.get(key)
        if recorded is not None and recorded.sha256 != sha256:
            raise SingleObjectError(
                f"{key!r}: the index and the manifest's inventory disagree on its SHA-256"
            )
        seen.add(key)
        report.objects.append({"key": key, "size": size, "sha256": sha256})
        report.object_bytes += written
        if on_object is not None:
            on_object(key, written)

    if bucket in resolved.manifest.get("incremental", {}):
        _restore_by_inventory(source, keys, resolved, bucket, selection, target, report, done)
    else:
        for shard in resolved.shards(bucket):
            if selection.prefix is None and not any(_in_range(k, shard) for k in selection.keys):
                continue  # a sharded bucket: only the shards whose key range holds a wanted key are read
            _restore_from_part(
                source, keys, resolved, bucket, selection, target, shard["part_name"], report, done
            )
    # Every part read (the bucket's, its shards', or the older sets' an inventory names).
    inventory_part = resolved.manifest.get("incremental", {}).get(bucket, {}).get("inventory_part")
    for name, ref in resolved.parts.items():
        served = counting.served.get(ref.file_id, 0)
        if ref.part_name.startswith(BUCKET_PART_PREFIX):
            report.part_bytes_downloaded += served
        elif ref.part_name.startswith(INDEX_PART_PREFIX):
            report.index_bytes_downloaded += served
        elif name == inventory_part:
            report.inventory_bytes_downloaded += served
    report.missing = sorted(selection.keys - seen)
    if not report.objects:
        what = ", ".join(repr(k) for k in sorted(selection.keys)) if selection.keys else ""
        if selection.prefix is not None:
            what += (" and " if what else "") + f"no key starts with {selection.prefix!r}"
        raise RestoreRefused(
            f"keys / prefix: backup {resolved.backup_id}, bucket {bucket!r} holds none of: {what}"
        )
    return report


def _in_range(key: str, shard: dict[str, object]) -> bool:
    start, end = shard.get("start_after"), shard.get("end")
    return (not isinstance(start, str) or key > start) and (not isinstance(end, str) or key <= end)


def _restore_by_inventory(
    source: Destination,
    keys: RestoreKeys,
    resolved: ResolvedBackup,
    bucket: str,
    selection: Selection,
    target: ObjectTarget,
    report: SingleRestoreReport,
    done: Callable[[str, int, str, int], None],
) -> None:
    """Format 2: each part the inventory names, through its own index (its header opened under
    the backup id of the set it belongs to); all parts whole when one has no index."""
    try:
        groups = locate_parts(source, keys, resolved, bucket, selection)
    except NoIndex:
        report.indexed = False
        _restore_inventory_without_index(source, keys, resolved, bucket, selection, target, done)
        return
    for group in groups:
        first = next(group.locations, None)
        if first is None:
            continue
        fetch = _ranged(source, group.part)
        header, aead = _open_bucket_header(fetch, keys, group.owner, group.part)
        for location in _chain(first, group.locations):
            entry = location.entry
            try:
                found = read_indexed_object(fetch, header, aead, group.part.size, entry)
                restored = _as_entry(found)
                written = target.write(entry.key, restored, entry.sha256)
            except ArchiveError as exc:
                raise SingleObjectError(
                    f"backup {group.owner}, part {group.part.part_name!r}, object {entry.key!r}: "
                    f"{type(exc).__name__}: {exc}; the object was not restored"
                ) from None
            done(entry.key, entry.size, entry.sha256, written)


def _restore_from_part(
    source: Destination,
    keys: RestoreKeys,
    resolved: ResolvedBackup,
    bucket: str,
    selection: Selection,
    target: ObjectTarget,
    part_name: str,
    report: SingleRestoreReport,
    done: Callable[[str, int, str, int], None],
) -> None:
    """The selected objects of one bucket part (the bucket's, or one shard's) through its index."""
    try:
        located = locate_objects(source, keys, resolved, bucket, selection, part_name)
        first = next(located, None)
    except NoIndex:
        report.indexed = False
        _restore_without_index(source, keys, resolved, bucket, selection, target, done, part_name)
        return
    if first is None:
        return
    fetch = _ranged(source, first.part)
    header, aead = _open_bucket_header(fetch, keys, resolved.backup_id, first.part)
    for location in _chain(first, located):
        entry = location.entry
        try:
            found = read_indexed_object(fetch, header, aead, first.part.size, entry)
            restored = _as_entry(found)
            written = target.write(entry.key, restored, entry.sha256)
        except ArchiveError as exc:
            raise SingleObjectError(
                f"backup {resolved.backup_id}, part {part_name!r}, object {entry.key!r}: "
                f"{type(exc).__name__}: {exc}; the object was not restored"
            ) from None
        done(entry.key, entry.size, entry.sha256, written)


def _chain(first: ObjectLocation, rest: Iterable[ObjectLocation]) -> Iterator[ObjectLocation]:
    yield first
    yield from rest


def _ranged(destination: Destination, part: PartRef) -> Callable[[int, int], Iterable[bytes]]:
    def fetch(start: int, end: int) -> Iterable[bytes]:
        return destination.get(part.file_id, start, end)

    return fetch


def _open_bucket_header(
    fetch: Callable[[int, int], Iterable[bytes]], keys: RestoreKeys, owner: str, part: PartRef
) -> tuple[ArchiveHeader, AESGCM]:
    try:
        header = read_header(fetch(0, min(part.size, HEADER_FETCH_BYTES)))[0]
        aead = open_header(
            header,
            org_keyring=keys.org_keyring,
            recovery_identity=keys.recovery_identity,
            expected_backup_id=owner,
            expected_part_name=part.part_name,
        )
    except ArchiveError as exc:
        raise SingleObjectError(
            f"backup {owner}, part {part.part_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    return header, aead


def _as_entry(found: ArchivedObject) -> RestoreEntry:
    return RestoreEntry(
        key=found.key,
        size=found.size,
        content_type=found.content_type or "application/octet-stream",
        metadata=found.metadata,
        tags=found.tags,
        fileobj=found.fileobj,
        headers=found.headers,
    )


def _restore_without_index(
    destination: Destination,
    keys: RestoreKeys,
    resolved: ResolvedBackup,
    bucket: str,
    selection: Selection,
    target: ObjectTarget,
    done: Callable[[str, int, str, int], None],
    part_name: str,
) -> None:
    """The old way: the whole bucket part streamed (pass 1 verifies it against the manifest
    first, as every restore does), the selected entries written in pass 2."""
    inventory = resolved.inventory(bucket)
    try:
        for _ in open_part(destination, keys, resolved, part_name):
            pass
        for entry in bucket_entries(open_part(destination, keys, resolved, part_name)):
            if not selection.matches(entry.key):
                _drain(entry.fileobj)
                continue
            recorded = inventory.get(entry.key)
            if recorded is None:
                raise SingleObjectError(f"{entry.key!r} is in the part but not in the manifest's inventory")
            written = target.write(entry.key, entry, recorded.sha256)
            done(entry.key, entry.size, recorded.sha256, written)
    except ArchiveError as exc:
        raise SingleObjectError(
            f"backup {resolved.backup_id}, part {part_name!r}: {type(exc).__name__}: {exc}"
        ) from None


def _restore_inventory_without_index(
    destination: Destination,
    keys: RestoreKeys,
    resolved: ResolvedBackup,
    bucket: str,
    selection: Selection,
    target: ObjectTarget,
    done: Callable[[str, int, str, int], None],
) -> None:
    """Format 2 with a part lacking its index: every part the inventory names streamed whole
    (``restore.incremental.bucket_source``: authenticated, checked against the manifest at its
    end), the selected entries written with the inventory's SHA-256."""
    from backup_pipeline.services.restore.incremental import bucket_source

    source = bucket_source(destination, keys, resolved, bucket)
    try:
        for entry in source.entries:
            if not selection.matches(entry.key):
                _drain(entry.fileobj)
                continue
            recorded = source.inventory[entry.key]
            written = target.write(entry.key, entry, recorded.sha256)
            done(entry.key, entry.size, recorded.sha256, written)
    except ArchiveError as exc:
        raise SingleObjectError(
            f"backup {resolved.backup_id}, bucket {bucket!r}: {type(exc).__name__}: {exc}"
        ) from None


def _drain(fileobj: IO[bytes]) -> None:
    while fileobj.read(1 << 20):
        pass


def restore_selection(keys_wanted: Sequence[str] = (), prefix: str | None = None) -> Selection:
    return Selection(frozenset(keys_wanted), prefix)
