"""Bucket parts: a POSIX pax tar of a bucket's objects, as multi-member gzip.

Headers are made by :mod:`tarfile` (``TarInfo.tobuf`` in PAX format); the data, padding and
end-of-archive blocks are streamed here. ``tarfile.open(mode="w|")`` is not used because it
pushes into a writable file (we need a generator) and, when a source yields fewer bytes than
declared, it raises after writing a partial entry — a corrupt tar. Here an object whose length
changed during the backup is truncated or zero-padded to the size announced in its header and
reported as ``changed``, so the tar stays valid.

Each object's exact S3 key, content type, standard headers (Cache-Control, Content-Disposition,
Content-Encoding, Content-Language, Expires), user metadata, tags, ETag and last-modified time
are pax records (``BACKUP_PIPELINE.*``); the tar path is a safe rendering of the key and the
tar mtime the last-modified time in whole seconds.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from backup_pipeline.archive.errors import ArchiveContentError
from backup_pipeline.archive.gzip_members import (
    SAMPLE_SIZE,
    gunzip_stream,
    gzip_member,
    is_already_compressed,
)
from backup_pipeline.archive.part_index import EntrySpan, IndexEntry, PartIndexWriter, read_entry_range
from backup_pipeline.archive.stream_crypto import ArchiveHeader
from backup_pipeline.archive.streams import IterStream, ordered_parallel_map

PAX_KEY = "BACKUP_PIPELINE.key"
PAX_CONTENT_TYPE = "BACKUP_PIPELINE.content_type"
PAX_ETAG = "BACKUP_PIPELINE.etag"
PAX_METADATA = "BACKUP_PIPELINE.metadata"
PAX_TAGS = "BACKUP_PIPELINE.tags"
PAX_LAST_MODIFIED = "BACKUP_PIPELINE.last_modified"
PAX_HEADERS = "BACKUP_PIPELINE.headers"
#: The only names the headers record may hold (canonical spelling).
RECORDED_HEADER_NAMES = frozenset(
    {"Cache-Control", "Content-Disposition", "Content-Encoding", "Content-Language", "Expires"}
)
BLOCK_SIZE = 512
# Input size of one gzip member: the unit of parallel compression.
MEMBER_INPUT_SIZE = 1 << 20
_MAX_SEGMENT_BYTES = 200
#: Objects of at least this size start a gzip member (and so does the entry after them), so a
#: ranged restore reads only their own members. Smaller objects share members: splitting them
#: would cost compression (deflate's window is 32 KiB), and a member is at most ~1 MiB anyway.
NEW_MEMBER_MIN_SIZE = 64 * 1024

ObjectStatus = Literal["ok", "changed", "vanished"]


class ObjectVanishedError(Exception):
    """Raised by :attr:`SourceObject.open` (or its first read) when the object no longer exists."""


@dataclass
class SourceObject:
    key: str
    size: int
    content_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    etag: str | None = None
    last_modified: dt.datetime | None = None
    open: Callable[[], Iterable[bytes]] = field(default=lambda: iter(()), repr=False)
    #: Standard headers by canonical name (``RECORDED_HEADER_NAMES``), values as S3 sent them.
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ArchivedObjectRecord:
    """What happened to one source object. ``size``/``sha256`` describe the bytes in the tar entry."""

    key: str
    tar_path: str | None
    status: ObjectStatus
    size: int
    sha256: str | None
    declared_size: int
    # Bytes the source actually delivered (``None``: more than declared; reading stopped there).
    actual_size: int | None
    stored: bool


def safe_tar_path(key: str) -> str:
    """Render an S3 key as a relative tar path with no ``..``/``.`` segments, no leading ``/``,
    no empty segments and no control characters.

    ``%`` and control characters are percent-encoded; ``.``/``..`` segments become ``%2E``/``%2E%2E``;
    an empty segment (``a//b``, a trailing ``/``) becomes ``%``; segments longer than 200 bytes
    are cut and suffixed with a hash. Not reversible in every case — the exact key is the
    ``BACKUP_PIPELINE.key`` pax record.
    """
    segments = []
    for segment in key.split("/"):
        encoded = "".join(
            f"%{ord(c):02X}" if c == "%" or ord(c) < 0x20 or ord(c) == 0x7F or c == "\\" else c
            for c in segment
        )
        if encoded == "":
            encoded = "%"
        elif encoded == ".":
            encoded = "%2E"
        elif encoded == "..":
            encoded = "%2E%2E"
        raw = encoded.encode("utf-8", "surrogateescape")
        if len(raw) > _MAX_SEGMENT_BYTES:
            digest = hashlib.sha256(raw).hexdigest()[:16]
            encoded = raw[:_MAX_SEGMENT_BYTES].decode("utf-8", "ignore") + "~" + digest
        segments.append(encoded)
    if segments and segments[0] == "%" and len(segments) > 1:
        segments = segments[1:]  # a leading "/" is not a segment of its own
    return "/".join(segments)


def _tar_header(obj: SourceObject, tar_path: str) -> bytes:
    info = tarfile.TarInfo(tar_path)
    info.size = obj.size
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    info.uname = info.gname = ""
    # ustar's mtime field cannot hold a time before 1970 (nor fractions): the pax record is exact.
    info.mtime = max(0, int(obj.last_modified.timestamp())) if obj.last_modified else 0
    pax: dict[str, str] = {PAX_KEY: obj.key}
    if obj.content_type:
        pax[PAX_CONTENT_TYPE] = obj.content_type
    if obj.headers:
        unknown = sorted(set(obj.headers) - RECORDED_HEADER_NAMES)
        if unknown:
            raise ValueError(f"object {obj.key!r}: headers {unknown} are not recorded headers")
        pax[PAX_HEADERS] = json.dumps(obj.headers, sort_keys=True, ensure_ascii=False)
    if obj.etag:
        pax[PAX_ETAG] = obj.etag
    if obj.metadata:
        pax[PAX_METADATA] = json.dumps(obj.metadata, sort_keys=True, ensure_ascii=False)
    if obj.tags:
        pax[PAX_TAGS] = json.dumps(obj.tags, sort_keys=True, ensure_ascii=False)
    if obj.last_modified:
        pax[PAX_LAST_MODIFIED] = obj.last_modified.astimezone(dt.UTC).isoformat()
    info.pax_headers = pax
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class _EntryWriter:
    """Turns source objects into (bytes, gzip level) pieces of the tar stream, hashing as it reads."""

    def __init__(
        self,
        compress_level: int,
        on_object: Callable[[ArchivedObjectRecord], None] | None,
        on_entry: Callable[[EntrySpan], None] | None = None,
    ) -> None:
        self.compress_level = compress_level
        self.on_object = on_object
        self.on_entry = on_entry
        self.offset = 0  # bytes of tar stream yielded so far
        self.last: ArchivedObjectRecord | None = None

    def entries(self, objects: Iterable[SourceObject]) -> Iterator[tuple[bytes, int, bool]]:
        """(bytes, gzip level, starts a new gzip member) pieces of the tar stream."""
        after_large = False
        for obj in objects:
            start = self.offset
            self.last = None
            first = True
            header_size = 0
            large = obj.size >= NEW_MEMBER_MIN_SIZE
            for data, level in self._entry(obj):
                if first:
                    header_size = len(data)
                # An object of NEW_MEMBER_MIN_SIZE or more starts a member of its own, and so does the
                # entry after it: a ranged restore of it then inflates only its own bytes (part index).
                yield data, level, first and (large or after_large)
                first = False
                self.offset += len(data)
            if first:
                continue  # vanished: no entry
            after_large = large
            record = self.last
            if self.on_entry is not None and record is not None and record.sha256 is not None:
                data_end = start + header_size + record.size
                self.on_entry(EntrySpan(record.key, record.size, record.sha256, start, data_end, self.offset))
        yield b"\0" * (2 * BLOCK_SIZE), self.compress_level, False

    def _report(self, record: ArchivedObjectRecord) -> None:
        self.last = record
        if self.on_object is not None:
            self.on_object(record)

    def _entry(self, obj: SourceObject) -> Iterator[tuple[bytes, int]]:
        if obj.size < 0:
            raise ValueError(f"object {obj.key!r}: negative size")
        try:
            source = iter(obj.open())
            first = next(source, b"")
        except ObjectVanishedError:
            self._report(ArchivedObjectRecord(obj.key, None, "vanished", 0, None, obj.size, None, False))
            return
        tar_path = safe_tar_path(obj.key)
        stored = is_already_compressed(obj.content_type, first[:SAMPLE_SIZE])
        level = 0 if stored else self.compress_level
        yield _tar_header(obj, tar_path), level
        digest = hashlib.sha256()
        written = 0
        remaining = obj.size
        delivered: int | None = 0
        piece: bytes = first
        while True:
            if piece:
                assert delivered is not None
                delivered += len(piece)
                if len(piece) > remaining:
                    piece = piece[:remaining]
                    delivered = None  # longer than declared: stop reading
                if piece:
                    digest.update(piece)
                    written += len(piece)
                    remaining -= len(piece)
                    yield piece, level
            if delivered is None:
                break
            if remaining == 0:
                # Declared size reached: one more read tells whether the object grew.
                if next((extra for extra in source if extra), b""):
                    delivered = None
                break
            try:
                piece = next(source)
            except StopIteration:
                break
        if remaining:
            padding_needed = remaining
            while padding_needed:
                step = min(padding_needed, MEMBER_INPUT_SIZE)
                zeros = bytes(step)
                digest.update(zeros)
                yield zeros, level
                padding_needed -= step
        status: ObjectStatus = "ok" if delivered == obj.size else "changed"
        tail = (-obj.size) % BLOCK_SIZE
        if tail:
            yield bytes(tail), level
        self._report(
            ArchivedObjectRecord(
                obj.key, tar_path, status, obj.size, digest.hexdigest(), obj.size, delivered, stored
            )
        )


def _coalesce(pieces: Iterable[tuple[bytes, int, bool]], target: int) -> Iterator[tuple[bytes, int, int]]:
    """Group consecutive pieces of the same level into blocks of about ``target`` bytes (one gzip member each).

    Yields (block, level, tar offset of the block's first byte). A piece flagged ``new member``
    starts a block.
    """
    pending: list[bytes] = []
    pending_size = 0
    pending_level = -1
    position = 0  # tar offset of the first pending byte
    for data, level, new_member in pieces:
        if pending and (level != pending_level or pending_size >= target or new_member):
            yield b"".join(pending), pending_level, position
            position += pending_size
            pending, pending_size = [], 0
        pending_level = level
        view = memoryview(data)
        while pending_size + len(view) > target:
            cut = target - pending_size
            pending.append(bytes(view[:cut]))
            yield b"".join(pending), level, position
            position += target
            pending, pending_size = [], 0
            view = view[cut:]
        if len(view):
            pending.append(bytes(view) if len(view) != len(data) else data)
            pending_size += len(view)
    if pending:
        yield b"".join(pending), pending_level, position


def write_bucket_archive(
    objects: Iterable[SourceObject],
    *,
    compress_level: int,
    on_object: Callable[[ArchivedObjectRecord], None] | None = None,
    inventory: list[ArchivedObjectRecord] | None = None,
    workers: int = 2,
    index: PartIndexWriter | None = None,
) -> Iterator[bytes]:
    """Stream a bucket part's plaintext (``.tar.gz``): pax tar entries as multi-member gzip.

    ``on_object`` (and/or ``inventory.append``) receives one :class:`ArchivedObjectRecord` per
    source object, with status ``ok``, ``changed`` (length differed from the declared size: the
    entry was truncated or zero-padded to the declared size) or ``vanished`` (``open`` raised
    :class:`ObjectVanishedError`; no entry). Compression of ~1 MiB members runs on ``workers``
    threads; memory is bounded by a few members. ``index`` (a :class:`PartIndexWriter`) is told
    where each entry and each member lies, and emits one index entry per object (BACKUP-FORMAT.md §8).
    """
    if not 0 <= compress_level <= 9:
        raise ValueError("compress_level must be in 0..9")

    def report(record: ArchivedObjectRecord) -> None:
        if inventory is not None:
            inventory.append(record)
        if on_object is not None:
            on_object(record)

    writer = _EntryWriter(compress_level, report, index.entry if index is not None else None)
    blocks = _coalesce(writer.entries(objects), MEMBER_INPUT_SIZE)
    members = ordered_parallel_map(
        lambda block: (gzip_member(block[0], block[1]), block[2], len(block[0])),
        blocks,
        workers=workers,
        window=workers + 2,
    )
    return _members_out(members, index)


def _members_out(members: Iterable[tuple[bytes, int, int]], index: PartIndexWriter | None) -> Iterator[bytes]:
    for member, tar_start, tar_length in members:
        if index is not None:
            index.member(tar_start, tar_length, len(member))
        yield member
    if index is not None:
        index.finish()


# --- reading ------------------------------------------------------------------------------------


@dataclass
class ArchivedObject:
    """One object of a bucket part. Read :attr:`fileobj` to the end before asking for the next object."""

    key: str
    tar_path: str
    size: int
    content_type: str | None
    metadata: dict[str, str]
    tags: dict[str, str]
    etag: str | None
    last_modified: dt.datetime | None
    fileobj: IO[bytes] = field(repr=False)
    #: Recorded standard headers; empty for archives written before they were recorded.
    headers: dict[str, str] = field(default_factory=dict)

    def iter_chunks(self, block_size: int = 1 << 20) -> Iterator[bytes]:
        while True:
            block = self.fileobj.read(block_size)
            if not block:
                return
            yield block


def _json_dict(raw: str | None, what: str, key: str) -> dict[str, str]:
    if raw is None:
        return {}
    try:
        value: Any = json.loads(raw)
    except ValueError:
        raise ArchiveContentError(f"entry {key!r}: the {what} pax record is not JSON") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ArchiveContentError(f"entry {key!r}: the {what} pax record is not an object of strings")
    return value


def read_bucket_archive(chunks: Iterable[bytes]) -> Iterator[ArchivedObject]:
    """Read a bucket part's plaintext (``.tar.gz`` chunks) object by object, streaming."""
    return read_tar_entries(gunzip_stream(chunks))


def read_indexed_object(
    fetch: Callable[[int, int], Iterable[bytes]],
    header: ArchiveHeader,
    aead: AESGCM,
    ciphertext_size: int,
    entry: IndexEntry,
) -> ArchivedObject:
    """One object read from a byte range of its part (BACKUP-FORMAT.md §8): the entry found
    where the index says MUST carry the indexed key and size."""
    found = next(read_tar_entries(read_entry_range(fetch, header, aead, ciphertext_size, entry)), None)
    if found is None or found.key != entry.key or found.size != entry.size:
        raise ArchiveContentError(
            f"the part index points object {entry.key!r} at an entry that is "
            + ("missing" if found is None else f"{found.key!r} of {found.size} bytes")
        )
    return found


def read_tar_entries(tar_chunks: Iterable[bytes]) -> Iterator[ArchivedObject]:
    """The entries of a (decompressed) pax tar stream, one at a time."""
    stream = io.BufferedReader(IterStream(tar_chunks), buffer_size=1 << 16)
    try:
        archive = tarfile.open(  # noqa: SIM115 - closed by the `with` below
            fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape"
        )
    except tarfile.TarError as exc:
        raise ArchiveContentError(f"the bucket part is not a tar archive: {exc}") from None
    with archive:
        while True:
            try:
                member = archive.next()
            except tarfile.TarError as exc:
                raise ArchiveContentError(f"corrupt tar stream: {exc}") from None
            if member is None:
                return
            # TarFile.next() appends every header it reads to ``archive.members`` (for random
            # access, which a stream never does): ~1.2 KB per entry kept for the whole part (issue
            # 18: a restore of 145 229 objects peaked at 328 MB). Only the current entry is needed.
            archive.members.clear()  # type: ignore[attr-defined]  # not in typeshed, in every CPython
            if not member.isreg():
                raise ArchiveContentError(
                    f"unexpected tar entry type for {member.name!r} (only regular files)"
                )
            pax = member.pax_headers
            key = pax.get(PAX_KEY, member.name)
            last_modified_raw = pax.get(PAX_LAST_MODIFIED)
            headers = _json_dict(pax.get(PAX_HEADERS), "headers", key)
            unknown = sorted(set(headers) - RECORDED_HEADER_NAMES)
            if unknown:
                raise ArchiveContentError(
                    f"entry {key!r}: the headers pax record holds names that are not recorded headers: "
                    + ", ".join(unknown)
                )
            try:
                last_modified = dt.datetime.fromisoformat(last_modified_raw) if last_modified_raw else None
            except ValueError:
                raise ArchiveContentError(
                    f"entry {key!r}: the last_modified pax record is not an ISO 8601 time"
                ) from None
            fileobj = archive.extractfile(member)
            assert fileobj is not None
            yield ArchivedObject(
                key=key,
                tar_path=member.name,
                size=member.size,
                content_type=pax.get(PAX_CONTENT_TYPE),
                metadata=_json_dict(pax.get(PAX_METADATA), "metadata", key),
                tags=_json_dict(pax.get(PAX_TAGS), "tags", key),
                etag=pax.get(PAX_ETAG),
                last_modified=last_modified,
                fileobj=fileobj,
                headers=headers,
            )
