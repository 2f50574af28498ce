"""The part index: where each object of a bucket part can be read on its own (BACKUP-FORMAT.md §8).

A bucket part's plaintext is a series of independent gzip members, and its container seals that
plaintext in independent chunks whose nonces depend only on the chunk number (and the final
flag). So an object can be read from a byte range: the chunks that cover the gzip members
holding its tar entry, authenticated alone, inflated from the first of those members, the entry
found ``skip`` inflated bytes in. The index says, per object, where those members are.

Writing streams: :class:`PartIndexWriter` is told each entry's tar span (by the entry writer)
and each member's tar span and compressed size (as members leave the compressor, in order), and
emits one JSON line per object as soon as the member holding its last byte is out. It keeps
only the entries and members still unresolved: a few members' worth, or the members of one
large object (one small tuple per MiB).

Reading: :func:`read_index` parses an index part's plaintext line by line;
:func:`read_entry_range` turns one entry into the ciphertext byte range to fetch and the
plaintext of its tar entry. Neither touches the network: callers pass a ``fetch(start, end)``.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from backup_pipeline.archive.errors import ArchiveContentError
from backup_pipeline.archive.gzip_members import gunzip_stream
from backup_pipeline.archive.stream_crypto import (
    ArchiveHeader,
    chunk_byte_range,
    chunk_count,
    decrypt_chunks,
)

INDEX_FORMAT = "backup_pipeline.part_index/1"
#: Index part of the bucket part ``bucket-<name>``.
INDEX_PART_PREFIX = "index-"
#: A line of the index never exceeds this (keys are at most 1 024 UTF-8 bytes; JSON escapes may
#: grow one to 6 times): a longer line is malformed, so a reader never buffers without bound.
MAX_LINE_BYTES = 16 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class EntrySpan:
    """One tar entry as the writer placed it: tar-stream offsets of its first byte (the pax
    header), just past its last data byte, and just past its padding."""

    key: str
    size: int
    sha256: str
    tar_start: int
    data_end: int
    tar_end: int


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """Where one object can be read alone. Offsets are in the part's plaintext (the gzip stream)."""

    key: str
    size: int
    sha256: str
    #: Offset of the gzip member that holds the entry's first byte.
    member_offset: int
    #: Inflated bytes of that member before the entry's first byte.
    skip: int
    #: Offset just past the gzip member that holds the entry's last data byte.
    end_offset: int

    def to_line(self) -> bytes:
        fields = {
            "key": self.key,
            "size": self.size,
            "sha256": self.sha256,
            "member_offset": self.member_offset,
            "skip": self.skip,
            "end_offset": self.end_offset,
        }
        return (json.dumps(fields, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def from_fields(cls, raw: Any, line_number: int) -> IndexEntry:
        if not isinstance(raw, dict) or set(raw) != _ENTRY_FIELDS:
            raise ArchiveContentError(
                f"part index line {line_number}: an entry must have exactly the fields {sorted(_ENTRY_FIELDS)}"
            )
        if not isinstance(raw["key"], str):
            raise ArchiveContentError(f"part index line {line_number}: key must be a string")
        numbers = ("size", "member_offset", "skip", "end_offset")
        if not all(type(raw[n]) is int and raw[n] >= 0 for n in numbers):
            raise ArchiveContentError(
                f"part index line {line_number}: {', '.join(numbers)} must be integers >= 0"
            )
        if not isinstance(raw["sha256"], str) or not _SHA256.match(raw["sha256"]):
            raise ArchiveContentError(
                f"part index line {line_number}: sha256 must be 64 lowercase hex digits"
            )
        if raw["end_offset"] <= raw["member_offset"]:
            raise ArchiveContentError(f"part index line {line_number}: end_offset must follow member_offset")
        return cls(**raw)


_ENTRY_FIELDS = frozenset({"key", "size", "sha256", "member_offset", "skip", "end_offset"})


def index_part_name(bucket_part_name: str) -> str:
    """``bucket-<name>`` → ``index-<name>``."""
    return INDEX_PART_PREFIX + bucket_part_name.removeprefix("bucket-")


def header_line(part_name: str) -> bytes:
    return (json.dumps({"format": INDEX_FORMAT, "part": part_name}, sort_keys=True) + "\n").encode("utf-8")


class PartIndexWriter:
    """Resolves entry spans against member spans and emits index lines through ``emit``."""

    def __init__(self, part_name: str, emit: Callable[[bytes], None]) -> None:
        self._emit = emit
        self._pending: deque[EntrySpan] = deque()
        # (tar start, tar end, compressed start, compressed end) of members still needed.
        self._members: deque[tuple[int, int, int, int]] = deque()
        self._compressed = 0
        self._tar_out = 0  # tar bytes whose member is out
        self._last_tar_end = 0
        self.entries = 0
        self._finished = False
        emit(header_line(part_name))

    def entry(self, span: EntrySpan) -> None:
        self._pending.append(span)
        self._last_tar_end = span.tar_end
        self._resolve()

    def member(self, tar_start: int, tar_length: int, compressed_length: int) -> None:
        if tar_start != self._tar_out:
            raise ValueError(f"member at tar offset {tar_start} does not follow {self._tar_out}")
        self._members.append(
            (tar_start, tar_start + tar_length, self._compressed, self._compressed + compressed_length)
        )
        self._compressed += compressed_length
        self._tar_out += tar_length
        self._resolve()

    def finish(self) -> None:
        """Every entry must be resolved once the last member is out (a writer bug otherwise)."""
        self._resolve()
        if self._pending:
            raise ValueError(f"{len(self._pending)} index entries were not resolved at the end of the part")
        self._finished = True

    @property
    def finished(self) -> bool:
        return self._finished

    def _find(self, offset: int) -> tuple[int, int, int, int]:
        for member in self._members:
            if member[0] <= offset < member[1]:
                return member
        raise ValueError(f"no member holds tar offset {offset}")

    def _resolve(self) -> None:
        while self._pending and self._pending[0].data_end <= self._tar_out:
            span = self._pending.popleft()
            first = self._find(span.tar_start)
            last = self._find(span.data_end - 1)
            self._emit(
                IndexEntry(
                    span.key, span.size, span.sha256, first[2], span.tar_start - first[0], last[3]
                ).to_line()
            )
            self.entries += 1
        # Members entirely before every entry still to come are not needed any more.
        horizon = self._pending[0].tar_start if self._pending else self._last_tar_end
        while self._members and self._members[0][1] <= horizon:
            self._members.popleft()


def read_index(plaintext: Iterable[bytes], part_name: str | None = None) -> Iterator[IndexEntry]:
    """The entries of an index part's plaintext, in the bucket part's order (streamed)."""
    line_number = 0
    for line in _lines(plaintext):
        line_number += 1
        try:
            raw = json.loads(line)
        except ValueError:
            raise ArchiveContentError(f"part index line {line_number} is not JSON") from None
        if line_number == 1:
            if not isinstance(raw, dict) or raw.get("format") != INDEX_FORMAT:
                raise ArchiveContentError(f"the part index does not start with format {INDEX_FORMAT!r}")
            if part_name is not None and raw.get("part") != part_name:
                raise ArchiveContentError(
                    f"the part index is the index of {raw.get('part')!r}, not of {part_name!r}"
                )
            continue
        yield IndexEntry.from_fields(raw, line_number)
    if line_number == 0:
        raise ArchiveContentError("the part index is empty (no format line)")


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        while True:
            cut = pending.find(b"\n")
            if cut < 0:
                break
            yield bytes(pending[:cut])
            del pending[: cut + 1]
        if len(pending) > MAX_LINE_BYTES:
            raise ArchiveContentError(f"a part index line is longer than {MAX_LINE_BYTES} bytes")
    if pending:
        raise ArchiveContentError("the part index does not end with a newline (truncated)")


# --- ranged reads ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntryRange:
    """What to fetch for one entry: sealed chunks ``first..last`` = ciphertext ``[start, end)``."""

    first_chunk: int
    last_chunk: int
    chunk_count: int
    start: int
    end: int


def entry_range(header: ArchiveHeader, ciphertext_size: int, entry: IndexEntry) -> EntryRange:
    count = chunk_count(header, ciphertext_size)
    size = header.chunk_size
    first, last = entry.member_offset // size, (entry.end_offset - 1) // size
    if last >= count:
        raise ArchiveContentError(
            f"index entry {entry.key!r} points past the end of its part (chunk {last} of {count})"
        )
    start, end = chunk_byte_range(header, ciphertext_size, first, last)
    return EntryRange(first, last, count, start, end)


def read_entry_range(
    fetch: Callable[[int, int], Iterable[bytes]],
    header: ArchiveHeader,
    aead: AESGCM,
    ciphertext_size: int,
    entry: IndexEntry,
) -> Iterator[bytes]:
    """The tar stream from the entry's first byte (its pax header) to at least its last data
    byte: ranged fetch → chunks authenticated alone → the members sliced out → inflated → skip."""
    where = entry_range(header, ciphertext_size, entry)
    plaintext = decrypt_chunks(
        fetch(where.start, where.end),
        aead,
        header,
        first=where.first_chunk,
        last=where.last_chunk,
        count=where.chunk_count,
    )
    base = where.first_chunk * header.chunk_size
    members = _slice(plaintext, entry.member_offset - base, entry.end_offset - base)
    return _skip(gunzip_stream(members), entry.skip)


def _slice(chunks: Iterable[bytes], start: int, end: int) -> Iterator[bytes]:
    position = 0
    for chunk in chunks:
        lo, hi = max(start - position, 0), min(end - position, len(chunk))
        if lo < hi:
            yield chunk[lo:hi]
        position += len(chunk)
    if position < end:
        raise ArchiveContentError(
            f"the part's plaintext ends at {position}, before the indexed range ({end})"
        )


def _skip(chunks: Iterable[bytes], count: int) -> Iterator[bytes]:
    for chunk in chunks:
        if count >= len(chunk):
            count -= len(chunk)
            continue
        yield chunk[count:] if count else chunk
        count = 0
    if count:
        raise ArchiveContentError("the indexed members end before the entry starts")
