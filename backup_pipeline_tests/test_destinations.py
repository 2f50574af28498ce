"""One conformance suite, run against every destination (restic's backend test style).

Drive runs against the project's Drive v3 test server over HTTP in each Workspace setup. S3 runs
on the suite's SeaweedFS twice: on a plain bucket, and on a bucket created with object lock
(versioned) where the destination writes no retention, so listing by oldest live version,
version-pinned ids and deleting every version are held to the same contract.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from backup_pipeline.destinations import (
    Destination,
    LocalFolderDestination,
    NotFoundError,
    PermanentError,
    RetryingDestination,
)
from backup_pipeline.destinations.s3 import LockMode
from backup_pipeline.settings import DriveAuthMode
from backup_pipeline_tests.fixtures import s3_destination
from backup_pipeline_tests.fixtures.drive import FAST_RETRY, DriveFixture
from backup_pipeline_tests.fixtures.s3 import SeaweedFSServer

KINDS = ["local", "drive-shared", "drive-delegation", "drive-oauth", "s3", "s3-versioned"]


@pytest.fixture(params=KINDS)
def destination(request: pytest.FixtureRequest, tmp_path: Path) -> Destination:
    kind = request.param
    inner: Destination
    if kind == "local":
        inner = LocalFolderDestination(tmp_path / "backups")
    elif kind.startswith("s3"):
        server: SeaweedFSServer = request.getfixturevalue("s3")
        s3_destination.make_bucket(server, object_lock=kind == "s3-versioned")
        inner = s3_destination.destination(
            server,
            tmp_path / "state",
            lock_mode=LockMode.NONE if kind == "s3-versioned" else LockMode.GOVERNANCE,
        )
    else:
        drive: DriveFixture = request.getfixturevalue("drive")
        mode = {
            "drive-shared": DriveAuthMode.SHARED_DRIVE,
            "drive-delegation": DriveAuthMode.DELEGATION,
            "drive-oauth": DriveAuthMode.OAUTH,
        }[kind]
        inner = drive.destination(mode)
    return RetryingDestination(inner, FAST_RETRY)


def _blocks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize(
    "length",
    [0, 1, 256 * 1024, 256 * 1024 * 2, 256 * 1024 * 3 + 17],  # empty, tiny, exact chunk multiples, ragged
)
def test_round_trip_reports_size_and_checksums(destination: Destination, length: int) -> None:
    data = os.urandom(length)
    stored = destination.put(f"set-1/part-{length}", _blocks(data, 100_000), {"backupId": "b1", "part": "db"})
    assert stored.size == length
    assert stored.md5 == hashlib.md5(data).hexdigest()
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert b"".join(destination.get(stored.id)) == data
    assert destination.stat(stored.id).sha256 == stored.sha256
    assert destination.stat(stored.id).properties == {"backupId": "b1", "part": "db"}


def test_put_accepts_a_binary_file_object(destination: Destination) -> None:
    data = os.urandom(600_000)
    stored = destination.put("from-file", io.BytesIO(data), {})
    assert b"".join(destination.get(stored.id)) == data


def test_ranged_reads(destination: Destination) -> None:
    data = os.urandom(700_000)
    stored = destination.put("ranged", [data], {})
    for start, end in [(0, 1), (5, 300_000), (299_999, 700_000), (650_000, None), (0, None), (10, 10)]:
        assert b"".join(destination.get(stored.id, start, end)) == data[start:end], (start, end)
    assert b"".join(destination.get(stored.id, 700_000)) == b""
    assert b"".join(destination.get(stored.id, 600_000, 10**9)) == data[600_000:]
    # The last bytes alone, and one byte past the end (what a part index's ranged restore asks).
    assert b"".join(destination.get(stored.id, 699_990, 700_000)) == data[699_990:]
    assert b"".join(destination.get(stored.id, 700_001, 700_100)) == b""
    destination.delete(stored.id)
    with pytest.raises(NotFoundError):
        destination.get(stored.id, 10, 20)


def test_list_pages_over_more_than_one_page_and_filters_by_properties(destination: Destination) -> None:
    for i in range(7):
        destination.put(f"set-{i % 2}/part-{i}", [b"x" * i], {"backupId": f"b{i % 2}", "part": f"p{i}"})
    everything = list(destination.list(page_size=2))
    assert sorted(f.name for f in everything) == sorted(f"set-{i % 2}/part-{i}" for i in range(7))
    assert len({f.id for f in everything}) == 7
    odd = list(destination.list({"backupId": "b1"}, page_size=2))
    assert sorted(f.name for f in odd) == ["set-1/part-1", "set-1/part-3", "set-1/part-5"]
    one = list(destination.list({"backupId": "b0", "part": "p4"}))
    assert [(f.name, f.size, f.properties) for f in one] == [
        ("set-0/part-4", 4, {"backupId": "b0", "part": "p4"})
    ]
    assert list(destination.list({"backupId": "nope"})) == []


def test_list_page_tokens_can_be_asked_again_without_gaps_or_repeats(destination: Destination) -> None:
    # What lets RetryingDestination retry one failed page: the same token gives the same page.
    for i in range(5):
        destination.put(f"paged/part-{i}", [b"x"], {"backupId": "p"})
    seen: list[str] = []
    token: str | None = None
    while True:
        page = destination.list_page({"backupId": "p"}, 2, token)
        again = destination.list_page({"backupId": "p"}, 2, token)
        assert [f.id for f in again.files] == [f.id for f in page.files]
        assert again.next_token == page.next_token
        assert len(page.files) <= 2
        seen += [f.name for f in page.files]
        if page.next_token is None:
            break
        token = page.next_token
    assert seen == [f"paged/part-{i}" for i in range(5)]


def test_find_a_backup_from_the_destination_alone(destination: Destination) -> None:
    props = {"backupId": "01J9ZK", "part": "manifest", "formatVersion": "1", "installationId": "acme"}
    destination.put("acme-20250101T000000Z-01J9ZK/manifest", [b"{}"], props)
    destination.put("acme-20250101T000000Z-01J9ZK/database", [b"db"], dict(props, part="database"))
    found = list(destination.list({"backupId": "01J9ZK", "part": "manifest"}))
    assert len(found) == 1 and found[0].properties == props
    assert b"".join(destination.get(found[0].id)) == b"{}"


def test_delete_is_idempotent_and_stat_get_raise_not_found(destination: Destination) -> None:
    stored = destination.put("doomed", [b"bye"], {"backupId": "d"})
    destination.delete(stored.id)
    destination.delete(stored.id)
    with pytest.raises(NotFoundError):
        destination.stat(stored.id)
    with pytest.raises(NotFoundError):
        destination.get(stored.id)
    assert list(destination.list({"backupId": "d"})) == []


def test_check_writes_reads_back_and_deletes(destination: Destination) -> None:
    before = {f.id for f in destination.list()}
    report = destination.check()
    assert report.ok, report
    assert [s.name for s in report.steps][-4:] == ["space", "write", "read back", "delete"]
    assert {f.id for f in destination.list()} == before


def test_capacity_is_known_or_none(destination: Destination) -> None:
    cap = destination.capacity()
    assert cap is None or cap.free_bytes is None or cap.free_bytes > 0


def test_properties_over_drive_limits_are_refused_everywhere(destination: Destination) -> None:
    with pytest.raises(PermanentError, match="at most 124"):
        destination.put("bad", [b"x"], {"k": "v" * 200})
    with pytest.raises(PermanentError, match="at most 30"):
        destination.put("bad", [b"x"], {f"k{i}": "v" for i in range(31)})
    assert list(destination.list()) == []


def test_failed_stream_leaves_nothing_complete(destination: Destination) -> None:
    def broken() -> Iterator[bytes]:
        yield os.urandom(600_000)
        raise OSError("source died")

    with pytest.raises(OSError, match="source died"):
        destination.put("half", broken(), {"backupId": "h"})
    assert list(destination.list({"backupId": "h"})) == []
