"""The part index (BACKUP-FORMAT.md §8) without destinations: written while a bucket part is
written, every object read back from a byte range of the encrypted part alone."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Iterable, Iterator

import pytest

from backup_pipeline.archive.errors import ArchiveContentError, ChunkTamperedError
from backup_pipeline.archive.keys import OrgKeyring
from backup_pipeline.archive.part_index import (
    IndexEntry,
    PartIndexWriter,
    entry_range,
    read_index,
)
from backup_pipeline.archive.stream_crypto import (
    decrypt_stream,
    encrypt_stream,
    open_header,
    read_header,
)
from backup_pipeline.archive.tar_parts import (
    NEW_MEMBER_MIN_SIZE,
    SourceObject,
    read_bucket_archive,
    read_indexed_object,
    write_bucket_archive,
)

ORG = OrgKeyring([("k1", bytes(range(32)))])
CHUNK_LOG2 = 16  # 64 KiB chunks: many chunks with small test data


def _objects(seed: int = 7) -> list[tuple[str, bytes, str]]:
    rng = random.Random(seed)
    text = b"".join(b"line %d of a log file, compressible\n" % i for i in range(40_000))
    found: list[tuple[str, bytes, str]] = []
    for i in range(120):
        kind = rng.choice(["tiny", "small", "text", "random", "big"])
        size = {
            "tiny": rng.randint(0, 40),
            "small": rng.randint(100, 20_000),
            "text": rng.randint(50_000, 300_000),
            "random": rng.randint(60_000, 200_000),
            "big": rng.randint(300_000, 1_500_000),
        }[kind]
        body = text[:size] if kind == "text" else rng.randbytes(size)
        found.append(
            (f"dir{i % 5}/obj-{i:03d}-{kind}", body, "image/jpeg" if kind == "random" else "text/plain")
        )
    return sorted(found)


def _sources(objects: list[tuple[str, bytes, str]]) -> list[SourceObject]:
    return [
        SourceObject(
            k, len(b), t, open=lambda b=b: iter([b[i : i + 50_000] for i in range(0, len(b), 50_000)])
        )
        for k, b, t in objects
    ]


def _part(objects: list[tuple[str, bytes, str]]) -> tuple[bytes, bytes, int]:
    lines: list[bytes] = []
    index = PartIndexWriter("bucket-b", lines.append)
    plaintext = write_bucket_archive(_sources(objects), compress_level=6, index=index)
    ciphertext = b"".join(
        encrypt_stream(
            plaintext,
            backup_id="b1",
            part_name="bucket-b",
            org_keyring=ORG,
            recovery_public_key=None,
            chunk_size_log2=CHUNK_LOG2,
        )
    )
    assert index.finished
    return ciphertext, b"".join(lines), index.entries


class Fetcher:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.served = 0

    def __call__(self, start: int, end: int) -> Iterator[bytes]:
        block = self.data[start:end]
        self.served += len(block)
        for i in range(0, len(block), 10_000):
            yield block[i : i + 10_000]


def _open(ciphertext: bytes):  # type: ignore[no-untyped-def]
    header = read_header([ciphertext[:4096]])[0]
    return header, open_header(
        header, org_keyring=ORG, expected_backup_id="b1", expected_part_name="bucket-b"
    )


def test_every_object_reads_back_alone_from_its_byte_range() -> None:
    objects = _objects()
    ciphertext, index_bytes, count = _part(objects)
    entries = list(read_index([index_bytes], "bucket-b"))
    assert count == len(entries) == len(objects)
    assert [e.key for e in entries] == [k for k, _, _ in objects]
    header, aead = _open(ciphertext)
    chunk = header.chunk_size + 16
    for (key, body, _), entry in zip(objects, entries, strict=True):
        fetch = Fetcher(ciphertext)
        found = read_indexed_object(fetch, header, aead, len(ciphertext), entry)
        assert found.fileobj.read() == body, key
        assert entry.sha256 == hashlib.sha256(body).hexdigest()
        if len(body) >= NEW_MEMBER_MIN_SIZE:
            # Own members: the range is its compressed entry plus at most the two chunks it straddles.
            assert fetch.served <= len(body) + 2 * chunk + 4096, (key, len(body), fetch.served)
            if len(body) >= chunk:
                assert fetch.served <= 2 * len(body) + chunk, (key, len(body), fetch.served)
    # The whole-part path still reads the same archive (one stream, final chunk enforced).
    plain = decrypt_stream(
        [ciphertext], expected_backup_id="b1", expected_part_name="bucket-b", org_keyring=ORG
    )
    assert [(o.key, o.fileobj.read()) for o in read_bucket_archive(plain)] == [(k, b) for k, b, _ in objects]


def test_a_tampered_chunk_in_the_range_fails_and_the_final_flag_is_enforced() -> None:
    objects = _objects()
    ciphertext, index_bytes, _ = _part(objects)
    header, aead = _open(ciphertext)
    entries = list(read_index([index_bytes]))
    big = next(e for e in entries if e.size > 300_000)
    where = entry_range(header, len(ciphertext), big)
    tampered = bytearray(ciphertext)
    tampered[where.start + 100] ^= 1
    with pytest.raises(ChunkTamperedError) as caught:
        read_indexed_object(Fetcher(bytes(tampered)), header, aead, len(ciphertext), big).fileobj.read()
    assert caught.value.index == where.first_chunk
    # The last object's range holds the final chunk: cut one byte off the part and it fails.
    last = entries[-1]
    with pytest.raises(ChunkTamperedError):
        read_indexed_object(Fetcher(ciphertext), header, aead, len(ciphertext) - 1, last).fileobj.read()


def test_an_index_pointing_at_another_entry_is_refused() -> None:
    ciphertext, index_bytes, _ = _part(_objects())
    header, aead = _open(ciphertext)
    a, b = list(read_index([index_bytes]))[3:5]
    forged = IndexEntry(a.key, a.size, a.sha256, b.member_offset, b.skip, b.end_offset)
    with pytest.raises(ArchiveContentError, match="points object"):
        read_indexed_object(Fetcher(ciphertext), header, aead, len(ciphertext), forged)


def test_malformed_index_lines_are_refused() -> None:
    good = b'{"format": "backup_pipeline.part_index/1", "part": "bucket-b"}\n'
    with pytest.raises(ArchiveContentError, match="not of"):
        list(read_index([good], "bucket-c"))
    with pytest.raises(ArchiveContentError, match="exactly the fields"):
        list(read_index([good + b'{"key": "a"}\n']))
    with pytest.raises(ArchiveContentError, match="newline"):
        list(read_index([good + b'{"key": "a"']))
    with pytest.raises(ArchiveContentError, match="longer than"):
        list(read_index([good, b"x" * 20_000]))


def test_index_writer_keeps_memory_bounded_over_many_objects() -> None:
    """50 000 tiny objects: the writer never holds more than a few members' entries."""
    peak = 0
    lines = 0

    def emit(line: bytes) -> None:
        nonlocal lines
        lines += 1

    index = PartIndexWriter("bucket-b", emit)
    sources = (SourceObject(f"k{i:06d}", 10, open=lambda: iter([b"0123456789"])) for i in range(50_000))
    for _ in write_bucket_archive(sources, compress_level=1, index=index):
        peak = max(peak, len(index._pending), len(index._members))
    assert lines == 50_001
    assert peak < 5_000  # one member holds ~1 000 entries of 1 KiB; the window is a few members


def test_cost_of_member_boundaries_is_small(capsys: pytest.CaptureFixture[str]) -> None:
    """Measured, not a timing assertion: the size of the same objects with and without splits."""
    objects = _objects(11)
    total = sum(len(b) for _, b, _ in objects)
    started = time.perf_counter()
    split = sum(len(m) for m in write_bucket_archive(_sources(objects), compress_level=6))
    seconds = time.perf_counter() - started
    import backup_pipeline.archive.tar_parts as tar_parts

    saved = tar_parts.NEW_MEMBER_MIN_SIZE
    tar_parts.NEW_MEMBER_MIN_SIZE = 1 << 62
    try:
        unsplit = sum(len(m) for m in write_bucket_archive(_sources(objects), compress_level=6))
    finally:
        tar_parts.NEW_MEMBER_MIN_SIZE = saved
    with capsys.disabled():
        print(
            f"\n[part index] {total} B of objects: {split} B split vs {unsplit} B unsplit "
            f"({(split - unsplit) / unsplit:+.3%}), {seconds:.2f} s"
        )
    assert split <= unsplit * 1.01


def _chunks(data: bytes, n: int) -> Iterable[bytes]:
    return [data[i : i + n] for i in range(0, len(data), n)]


def test_empty_bucket_has_an_index_with_only_its_format_line() -> None:
    lines: list[bytes] = []
    index = PartIndexWriter("bucket-b", lines.append)
    list(write_bucket_archive([], compress_level=6, index=index))
    assert list(read_index(_chunks(b"".join(lines), 7), "bucket-b")) == []
