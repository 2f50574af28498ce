"""services/copy_sets.py on real destinations: local folders, and SeaweedFS with object lock under the
product's least-privilege credentials; a copy killed mid-upload (SIGKILL) is completed by the next one.

The sets are opaque bytes with the set contract's names and properties: a copy moves ciphertext and
never decrypts, so random bytes exercise it exactly as a backup's parts do.
"""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from backup_pipeline.destinations.base import Destination, LockedError, RetryPolicy, StoredFile
from backup_pipeline.destinations.local_folder import LocalFolderDestination
from backup_pipeline.ledger import SetStatus, from_destination
from backup_pipeline.services.backup_parts import (
    PART_MANIFEST,
    part_file_name,
    part_properties,
    set_properties,
)
from backup_pipeline.services.copy_sets import CopyError, copy_set, copy_sets
from backup_pipeline_tests.backup_helpers import start_child_script
from backup_pipeline_tests.fixtures import s3_destination as sd
from backup_pipeline_tests.fixtures.cutting_proxy import CuttingProxy
from backup_pipeline_tests.fixtures.s3 import S3Server

INSTALLATION = "copy-test"
ID_OLD = "20261201T023000Z-aaaaaaaa"
ID_NEW = "20261202T023000Z-bbbbbbbb"
MiB = 1024 * 1024


def _blocks(seed: str, size: int) -> Iterator[bytes]:
    """Deterministic pseudo-random bytes in 1 MiB blocks (never the whole part in memory)."""
    counter = 0
    left = size
    while left > 0:
        block = b"".join(
            hashlib.sha256(f"{seed}/{counter}/{i}".encode()).digest() for i in range(min(left, MiB) // 32 + 1)
        )[: min(left, MiB)]
        counter += 1
        left -= len(block)
        yield block


def make_set(dest: Destination, backup_id: str, sizes: dict[str, int], *, manifest: bool = True) -> None:
    parts = {**sizes, **({PART_MANIFEST: 4096} if manifest else {})}
    for part, size in parts.items():  # the manifest last, as the backup writes it
        dest.put(
            part_file_name(INSTALLATION, backup_id, part),
            _blocks(f"{backup_id}/{part}", size),
            part_properties(INSTALLATION, backup_id, part),
        )


def _content(dest: Destination, backup_id: str) -> dict[str, str]:
    """part name → SHA-256 of the bytes read back."""
    out = {}
    for stored in dest.list(set_properties(INSTALLATION, backup_id)):
        digest = hashlib.sha256()
        for chunk in dest.get(stored.id):
            digest.update(chunk)
        out[stored.properties["partName"]] = digest.hexdigest()
    return out


def _status(dest: Destination, backup_id: str) -> SetStatus | None:
    return next((e.status for e in from_destination(dest, INSTALLATION) if e.backup_id == backup_id), None)


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[LocalFolderDestination, LocalFolderDestination]:
    return LocalFolderDestination(tmp_path / "primary"), LocalFolderDestination(tmp_path / "nas")


def test_copy_writes_every_part_verified_and_the_manifest_last_then_is_idempotent(
    folders: tuple[LocalFolderDestination, LocalFolderDestination],
) -> None:
    source, target = folders
    make_set(source, ID_NEW, {"database": 300_000, "bucket-media": 2 * MiB + 17, "bucket-empty": 0})
    order: list[str] = []

    def seen(part: str, _stored: StoredFile) -> None:
        # Until the manifest arrives the target holds no backup.
        if part != PART_MANIFEST:
            assert _status(target, ID_NEW) is SetStatus.INCOMPLETE
        order.append(part)

    result = copy_set(source, target, INSTALLATION, ID_NEW, on_file=seen)

    assert order == ["bucket-empty", "bucket-media", "database", PART_MANIFEST]
    assert not result.was_complete and result.copied == tuple(order) and result.kept == ()
    assert _content(target, ID_NEW) == _content(source, ID_NEW)
    assert _status(target, ID_NEW) is SetStatus.COMPLETE
    assert result.files == 4 and result.locked_until is None

    again = copy_set(source, target, INSTALLATION, ID_NEW, on_file=seen)
    assert again.was_complete and again.copied == () and len(order) == 4


def test_a_partial_copy_is_resumed_keeping_verified_parts_and_replacing_damaged_ones(
    folders: tuple[LocalFolderDestination, LocalFolderDestination],
) -> None:
    source, target = folders
    make_set(source, ID_NEW, {"database": 200_000, "bucket-media": 600_000, "bucket-docs": 50_000})
    # What a killed copy leaves: one part complete, one with other bytes under its name, no manifest.
    for stored in source.list(set_properties(INSTALLATION, ID_NEW)):
        if stored.properties["partName"] == "database":
            target.put(stored.name, source.get(stored.id), stored.properties)
    target.put(
        part_file_name(INSTALLATION, ID_NEW, "bucket-media"),
        [b"half-written garbage"],
        part_properties(INSTALLATION, ID_NEW, "bucket-media"),
    )
    assert _status(target, ID_NEW) is SetStatus.INCOMPLETE

    result = copy_set(source, target, INSTALLATION, ID_NEW)

    assert result.kept == ("database",)
    assert result.copied == ("bucket-docs", "bucket-media", PART_MANIFEST)
    assert "bucket-media" in result.removed
    assert _content(target, ID_NEW) == _content(source, ID_NEW)
    assert _status(target, ID_NEW) is SetStatus.COMPLETE


def test_a_manifest_over_a_missing_part_is_withdrawn_and_the_copy_completed(
    folders: tuple[LocalFolderDestination, LocalFolderDestination],
) -> None:
    source, target = folders
    make_set(source, ID_NEW, {"database": 100_000, "bucket-media": 100_000})
    copy_set(source, target, INSTALLATION, ID_NEW)
    lost = next(
        f
        for f in target.list(set_properties(INSTALLATION, ID_NEW))
        if f.properties["partName"] == "bucket-media"
    )
    target.delete(lost.id)

    result = copy_set(source, target, INSTALLATION, ID_NEW)

    assert not result.was_complete
    assert result.copied == ("bucket-media", PART_MANIFEST) and result.kept == ("database",)
    assert _content(target, ID_NEW) == _content(source, ID_NEW)


def test_a_set_without_manifest_on_the_source_is_never_copied(
    folders: tuple[LocalFolderDestination, LocalFolderDestination],
) -> None:
    source, target = folders
    make_set(source, ID_NEW, {"database": 1000}, manifest=False)
    with pytest.raises(CopyError, match=f"{ID_NEW} has no manifest"):
        copy_set(source, target, INSTALLATION, ID_NEW)
    assert list(target.list()) == []


def test_an_unreachable_target_reports_every_set_and_copies_nothing(
    folders: tuple[LocalFolderDestination, LocalFolderDestination], s3: S3Server, tmp_path: Path
) -> None:
    source, _ = folders
    make_set(source, ID_OLD, {"database": 1000})
    make_set(source, ID_NEW, {"database": 1000})
    with CuttingProxy("127.0.0.1", s3.port) as proxy:
        sd.make_bucket(s3, object_lock=False)
        target = sd.destination(
            s3,
            tmp_path / "state",
            endpoint=proxy.endpoint,
            retry=RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.02),
        )
        proxy.cut_after(1, repeat=True)  # every connection reset: the server is "down"
        done, failed = copy_sets(source, target, INSTALLATION, [ID_NEW, ID_OLD])
    assert done == []
    assert set(failed) == {ID_NEW, ID_OLD}
    assert failed[ID_NEW] == failed[ID_OLD]
    assert list(sd.destination(s3, tmp_path / "state").list()) == []


def test_a_copy_onto_an_object_lock_bucket_is_locked_and_the_products_credentials_cannot_delete_it(
    folders: tuple[LocalFolderDestination, LocalFolderDestination], s3: S3Server, tmp_path: Path
) -> None:
    source, _ = folders
    make_set(source, ID_NEW, {"database": 150_000, "bucket-media": 6 * MiB})  # multipart on S3
    sd.make_bucket(s3, object_lock=True)
    target = sd.destination(s3, tmp_path / "state", credentials=sd.writer_credentials(), lock_days=1)

    result = copy_set(source, target, INSTALLATION, ID_NEW)

    assert result.locked_until is not None
    assert _content(target, ID_NEW) == _content(source, ID_NEW)
    for stored in target.list(set_properties(INSTALLATION, ID_NEW)):
        with pytest.raises(LockedError):
            target.delete(stored.id)
    assert copy_set(source, target, INSTALLATION, ID_NEW).was_complete


CRASHING_COPY = """
import json, sys
from backup_pipeline.destinations.local_folder import LocalFolderDestination
from backup_pipeline_tests.fixtures import s3_destination as sd
from backup_pipeline.services.copy_sets import copy_set
args = json.loads(sys.argv[1])

class Server:  # what sd.destination reads of the suite's server
    endpoint, region, access_key, secret_key = args["endpoint"], "us-east-1", "", ""

target = sd.destination(Server(), args["state"], credentials=sd.writer_credentials(), endpoint=args["endpoint"])
copy_set(LocalFolderDestination(args["source"]), target, args["installation"], args["backup_id"],
         on_file=lambda part, stored: print("copied", part, flush=True))
print("finished", flush=True)
"""


def test_a_copy_killed_mid_upload_leaves_no_manifest_and_the_next_copy_completes_it(
    folders: tuple[LocalFolderDestination, LocalFolderDestination], s3: S3Server, tmp_path: Path
) -> None:
    source, _ = folders
    make_set(source, ID_NEW, {"bucket-a": 200_000, "bucket-b": 12 * MiB, "database": 100_000})
    sd.make_bucket(s3, object_lock=True)
    state = tmp_path / "state"
    with CuttingProxy("127.0.0.1", s3.port) as proxy:
        # bucket-a (~200 kB) goes through; bucket-b's multipart upload hangs after ~6 MiB.
        proxy.freeze_after(6 * MiB)
        args = {
            "endpoint": proxy.endpoint,
            "state": str(state),
            "source": str(source.root),
            "installation": INSTALLATION,
            "backup_id": ID_NEW,
        }
        child = start_child_script(CRASHING_COPY, args, stderr=None)
        try:
            assert proxy.frozen.wait(timeout=120), "the copy never reached the freeze point"
        finally:
            child.send_signal(signal.SIGKILL)
            out, _ = child.communicate(timeout=30)
    assert "copied bucket-a" in out and "finished" not in out
    target = sd.destination(s3, state, credentials=sd.writer_credentials())
    assert _status(target, ID_NEW) is SetStatus.INCOMPLETE  # no manifest: not a backup there

    result = copy_set(source, target, INSTALLATION, ID_NEW)

    assert result.kept == ("bucket-a",)
    assert result.copied == ("bucket-b", "database", PART_MANIFEST)
    assert _content(target, ID_NEW) == _content(source, ID_NEW)
    assert _status(target, ID_NEW) is SetStatus.COMPLETE
