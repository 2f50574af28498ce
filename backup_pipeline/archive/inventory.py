"""The inventory part of a bucket (``inventory-<bucket>``): every object of the bucket at backup time.

Plaintext: gzip of JSON Lines, one object per line, sorted by key in UTF-8 byte order (the
order of ListObjectsV2). Each record says where the object's body lives (backup id + part
name), so an incremental set points at the bucket parts of older sets for unchanged objects.
Spec: BACKUP-FORMAT.md §5.3.

Everything here streams: a writer turns records into compressed chunks, a reader turns
plaintext chunks into records, and :func:`merge_listing` diffs a previous inventory with the
current listing as a merge of two sorted streams, so memory does not grow with the bucket.
Python compares ``str`` by code point, which is the same order as UTF-8 bytes.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from backup_pipeline.archive.errors import ArchiveContentError
from backup_pipeline.archive.gzip_members import gunzip_stream

INVENTORY_PART_PREFIX = "inventory-"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: A line longer than this is refused before it is parsed (a key is at most 1 024 bytes, metadata 2 KB, tags 10).
MAX_LINE_BYTES = 64 * 1024
_FIELDS = frozenset(
    {
        "key",
        "size",
        "sha256",
        "etag",
        "last_modified",
        "content_type",
        "headers",
        "metadata",
        "tags",
        "backup_id",
        "part",
    }
)


def inventory_part_name(bucket: str) -> str:
    return f"{INVENTORY_PART_PREFIX}{bucket}"


@dataclass(frozen=True, slots=True)
class InventoryRecord:
    """One object as the inventory records it, and where its body is (``backup_id``, ``part``)."""

    key: str
    size: int
    sha256: str
    etag: str
    last_modified: str | None  # ISO 8601 UTC, as in the tar's pax record
    content_type: str
    backup_id: str
    part: str
    headers: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def to_line(self) -> bytes:
        document = {
            "key": self.key,
            "size": self.size,
            "sha256": self.sha256,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "content_type": self.content_type,
            "headers": self.headers,
            "metadata": self.metadata,
            "tags": self.tags,
            "backup_id": self.backup_id,
            "part": self.part,
        }
        return (
            json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n"
        ).encode()

    @classmethod
    def from_line(cls, line: bytes, number: int) -> InventoryRecord:
        where = f"inventory line {number}"
        try:
            raw = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ArchiveContentError(f"{where} is not JSON: {exc}") from None
        if not isinstance(raw, dict) or set(raw) != _FIELDS:
            raise ArchiveContentError(f"{where}: must be an object with exactly the fields {sorted(_FIELDS)}")
        for name in ("key", "sha256", "etag", "content_type", "backup_id", "part"):
            if not isinstance(raw[name], str):
                raise ArchiveContentError(f"{where}: field {name!r} must be a string")
        if not isinstance(raw["size"], int) or isinstance(raw["size"], bool) or raw["size"] < 0:
            raise ArchiveContentError(f"{where}: field 'size' must be an integer >= 0")
        if not _SHA256.match(raw["sha256"]):
            raise ArchiveContentError(f"{where}: field 'sha256' must be 64 lower-case hex digits")
        if raw["last_modified"] is not None and not isinstance(raw["last_modified"], str):
            raise ArchiveContentError(f"{where}: field 'last_modified' must be a string or null")
        for name in ("headers", "metadata", "tags"):
            value = raw[name]
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise ArchiveContentError(f"{where}: field {name!r} must be an object of strings")
        return cls(**raw)


def write_inventory(records: Iterable[InventoryRecord], *, level: int = 6) -> Iterator[bytes]:
    """Records → gzip (one member) of JSON Lines, in bounded chunks; refuses records out of key order."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    previous: str | None = None
    pending: list[bytes] = []
    pending_size = 0
    for record in records:
        if previous is not None and record.key <= previous:
            raise ArchiveContentError(
                f"inventory records out of order: {record.key!r} after {previous!r} (keys must ascend)"
            )
        previous = record.key
        line = record.to_line()
        pending.append(line)
        pending_size += len(line)
        if pending_size >= 256 * 1024:
            out = compressor.compress(b"".join(pending))
            pending, pending_size = [], 0
            if out:
                yield out
    tail = compressor.compress(b"".join(pending)) + compressor.flush()
    if tail:
        yield tail


def read_inventory(plaintext: Iterable[bytes]) -> Iterator[InventoryRecord]:
    """The records of an inventory part's plaintext, one at a time; checks the key order."""
    buffer = b""
    number = 0
    previous: str | None = None
    for block in gunzip_stream(plaintext):
        buffer += block
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) > MAX_LINE_BYTES:
                    raise ArchiveContentError(
                        f"inventory line {number + 1} is longer than {MAX_LINE_BYTES} bytes"
                    )
                break
            line, buffer = buffer[:end], buffer[end + 1 :]
            number += 1
            record = InventoryRecord.from_line(line, number)
            if previous is not None and record.key <= previous:
                raise ArchiveContentError(
                    f"inventory line {number}: key {record.key!r} is not after {previous!r}"
                )
            previous = record.key
            yield record
    if buffer:
        raise ArchiveContentError("the inventory ends inside a line (truncated)")


Change = Literal["new", "changed", "unchanged"]


@dataclass(frozen=True, slots=True)
class Listed:
    """What the diff needs of one listed object (ListObjectsV2: key, size, ETag, last-modified)."""

    key: str
    size: int
    etag: str
    last_modified: str | None


@dataclass
class DiffCounts:
    new: int = 0
    new_bytes: int = 0
    changed: int = 0
    changed_bytes: int = 0
    unchanged: int = 0
    unchanged_bytes: int = 0
    deleted: int = 0
    deleted_bytes: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def same_object(listed: Listed, previous: InventoryRecord) -> bool:
    """Unchanged iff size, ETag and last-modified all agree (an overwrite with equal bytes is a new object)."""
    return (
        listed.size == previous.size
        and listed.etag == previous.etag
        and listed.last_modified is not None
        and listed.last_modified == previous.last_modified
    )


def merge_listing(
    listing: Iterable[Listed], previous: Iterable[InventoryRecord], counts: DiffCounts
) -> Iterator[tuple[Listed, InventoryRecord | None, Change]]:
    """Each listed object with its previous record (when unchanged) and its change; counts deletions.

    Both streams must ascend by key; a listing that does not is refused (the merge would
    otherwise call objects deleted that are not).
    """
    old = iter(previous)
    current = next(old, None)
    last: str | None = None
    for item in listing:
        if last is not None and item.key <= last:
            raise ArchiveContentError(
                f"the bucket listing is not in key order ({item.key!r} after {last!r}): cannot diff it"
            )
        last = item.key
        while current is not None and current.key < item.key:
            counts.deleted += 1
            counts.deleted_bytes += current.size
            current = next(old, None)
        if current is not None and current.key == item.key:
            matched, current = current, next(old, None)
            if same_object(item, matched):
                counts.unchanged += 1
                counts.unchanged_bytes += item.size
                yield item, matched, "unchanged"
            else:
                yield item, None, "changed"
        else:
            yield item, None, "new"
    while current is not None:
        counts.deleted += 1
        counts.deleted_bytes += current.size
        current = next(old, None)
