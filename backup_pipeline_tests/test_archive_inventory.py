"""The inventory part's plaintext (archive/inventory.py): JSON Lines in key order, and the diff merge."""

from __future__ import annotations

import gzip
import json
import tracemalloc

import pytest

from backup_pipeline.archive.errors import ArchiveContentError
from backup_pipeline.archive.inventory import (
    DiffCounts,
    InventoryRecord,
    Listed,
    merge_listing,
    read_inventory,
    write_inventory,
)

SHA = "ab" * 32
T1 = "2026-01-01T00:00:00.123000+00:00"
T2 = "2026-02-01T00:00:00+00:00"


def record(
    key: str, size: int = 1, etag: str = "e1", lm: str | None = T1, owner: str = "A"
) -> InventoryRecord:
    return InventoryRecord(key, size, SHA, etag, lm, "text/plain", owner, "bucket-b", metadata={"k": "v"})


def test_round_trip_keeps_every_field_and_the_order() -> None:
    records = [record("a"), record("a/b", 5), record("\u00e9t\u00e9"), record("\U0001f600")]
    data = b"".join(write_inventory(records))
    assert list(read_inventory([data[:7], data[7:]])) == records
    lines = gzip.decompress(data).splitlines()
    assert json.loads(lines[0]) == {
        "backup_id": "A",
        "content_type": "text/plain",
        "etag": "e1",
        "headers": {},
        "key": "a",
        "last_modified": T1,
        "metadata": {"k": "v"},
        "part": "bucket-b",
        "sha256": SHA,
        "size": 1,
        "tags": {},
    }


def test_keys_must_ascend_in_utf8_byte_order() -> None:
    with pytest.raises(ArchiveContentError, match="out of order"):
        b"".join(write_inventory([record("b"), record("a")]))
    # Python orders str by code point, which is UTF-8 byte order: U+FFFF < U+10000 as bytes too.
    assert "\uffff".encode() < "\U00010000".encode() and "\uffff" < "\U00010000"
    unsorted = gzip.compress(record("b").to_line() + record("a").to_line())
    with pytest.raises(ArchiveContentError, match="not after"):
        list(read_inventory([unsorted]))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json\n", "not JSON"),
        (b'{"key": "a"}\n', "exactly the fields"),
        (record("a").to_line().replace(b'"size":1', b'"size":-1'), "size"),
        (record("a").to_line().replace(SHA.encode(), b"AB" * 32), "sha256"),
        (record("a").to_line().replace(b'{"k":"v"}', b'{"k":1}'), "metadata"),
    ],
)
def test_malformed_lines_are_refused_with_their_number(line: bytes, message: str) -> None:
    with pytest.raises(ArchiveContentError, match=message):
        list(read_inventory([gzip.compress(line)]))


def test_a_truncated_inventory_is_refused() -> None:
    data = gzip.compress(record("a").to_line() + record("b").to_line()[:-1])
    with pytest.raises(ArchiveContentError, match="truncated"):
        list(read_inventory([data]))


def listed(key: str, size: int = 1, etag: str = "e1", lm: str | None = T1) -> Listed:
    return Listed(key, size, etag, lm)


def test_merge_classifies_new_changed_unchanged_and_counts_deletions() -> None:
    previous = [record("a"), record("b", 3), record("c"), record("d", 7), record("f", 2)]
    listing = [
        listed("a"),  # unchanged
        listed("b", 3, "e2"),  # same size, new ETag: changed
        listed("c", lm=T2),  # overwritten with equal bytes: a new last-modified is a change
        listed("e"),  # new
        listed("f", 2),  # unchanged
        listed("g", lm=None),  # new
    ]
    counts = DiffCounts()
    out = [
        (item.key, prev is not None, change)
        for item, prev, change in merge_listing(listing, previous, counts)
    ]
    assert out == [
        ("a", True, "unchanged"),
        ("b", False, "changed"),
        ("c", False, "changed"),
        ("e", False, "new"),
        ("f", True, "unchanged"),
        ("g", False, "new"),
    ]
    assert (counts.unchanged, counts.unchanged_bytes, counts.deleted, counts.deleted_bytes) == (2, 3, 1, 7)


def test_merge_without_last_modified_never_calls_an_object_unchanged() -> None:
    counts = DiffCounts()
    [(_, _, change)] = merge_listing([listed("a", lm=None)], [record("a", lm=None)], counts)
    assert change == "changed"


def test_merge_refuses_a_listing_out_of_order() -> None:
    with pytest.raises(ArchiveContentError, match="not in key order"):
        list(merge_listing([listed("b"), listed("a")], [], DiffCounts()))


def test_merge_holds_one_record_at_a_time() -> None:
    """The previous inventory is consumed lazily: a million records pass without a list."""

    def previous():  # type: ignore[no-untyped-def]
        for n in range(1_000_000):
            yield record(f"k{n:07d}")

    def listing():  # type: ignore[no-untyped-def]
        for n in range(0, 1_000_000, 2):
            yield listed(f"k{n:07d}")

    counts = DiffCounts()
    tracemalloc.start()
    try:
        unchanged = sum(1 for _ in merge_listing(listing(), previous(), counts))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert unchanged == 500_000 and counts.deleted == 500_000
    assert peak < 1024 * 1024  # held as a list, a million records would take hundreds of MB
