"""Restore building blocks against real components: conflict policies on the S3 server (SeaweedFS),
pg_restore into a real PostgreSQL database, the consistency report. No Dagster here."""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from minio import Minio
from minio.commonconfig import Tags

from backup_pipeline.services import restore as svc
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server

BUCKET = "restore-conflicts"


def _entry(key: str, data: bytes, **meta: str) -> svc.RestoreEntry:
    return svc.RestoreEntry(
        key=key,
        size=len(data),
        content_type="text/plain",
        metadata=meta,
        tags={"origin": "backup"},
        fileobj=io.BytesIO(data),
    )


BACKUP = {
    "same.txt": b"identical content",
    "dir/same-size.txt": b"backup version 1",
    "dir/ünïcode name.txt": b"backup copy, longer than the current one",
    "new/only-in-backup.txt": b"restore me",
}
CURRENT = {
    "same.txt": b"identical content",
    "dir/same-size.txt": b"current versionX",  # same length, other bytes
    "dir/ünïcode name.txt": b"short",
    "unrelated.txt": b"not in the backup",
}
EXPECTED = {
    svc.ConflictPolicy.SKIP: {
        "same.txt": "skipped",
        "dir/same-size.txt": "skipped",
        "dir/ünïcode name.txt": "skipped",
        "new/only-in-backup.txt": "added",
    },
    svc.ConflictPolicy.OVERWRITE: {
        "same.txt": "overwritten",
        "dir/same-size.txt": "overwritten",
        "dir/ünïcode name.txt": "overwritten",
        "new/only-in-backup.txt": "added",
    },
    svc.ConflictPolicy.IF_DIFFERENT: {
        "same.txt": "skipped",
        "dir/same-size.txt": "overwritten",
        "dir/ünïcode name.txt": "overwritten",
        "new/only-in-backup.txt": "added",
    },
    svc.ConflictPolicy.KEEP_BOTH: {
        "same.txt": "skipped",
        "dir/same-size.txt": "kept_both",
        "dir/ünïcode name.txt": "kept_both",
        "new/only-in-backup.txt": "added",
    },
}


def _inventory() -> dict[str, svc.IncomingObject]:
    return {k: svc.IncomingObject(k, len(v), hashlib.sha256(v).hexdigest()) for k, v in BACKUP.items()}


def _read(s3: S3Server, key: str) -> bytes:
    response = s3.client().get_object(BUCKET, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


@pytest.mark.parametrize("policy", list(svc.ConflictPolicy))
def test_conflict_policy_object_by_object_and_dry_run_predicts_it(
    s3: S3Server, policy: svc.ConflictPolicy
) -> None:
    client = s3.client()
    client.make_bucket(BUCKET)
    for key, data in CURRENT.items():
        client.put_object(BUCKET, key, io.BytesIO(data), len(data), metadata={"state": "current"})

    plan = svc.plan_bucket(client, BUCKET, _inventory().values(), policy)
    summary = svc.restore_bucket(
        client,
        BUCKET,
        [_entry(k, v, state="restored") for k, v in BACKUP.items()],
        _inventory(),
        policy,
        "bk1",
    )

    expected = EXPECTED[policy]
    counts = {a.value: sum(1 for v in expected.values() if v == a.value) for a in svc.ObjectAction}
    assert summary.counts() == counts
    assert {k: plan[k] for k in counts} == counts, "the dry run predicts exactly what the run did"
    assert summary.failed == 0 and summary.completed

    for key, outcome in expected.items():
        restored_key = svc.keep_both_key(key, "bk1") if outcome == "kept_both" else key
        if outcome in ("added", "overwritten", "kept_both"):
            assert _read(s3, restored_key) == BACKUP[key], key
            stat = client.stat_object(BUCKET, restored_key)
            assert stat.metadata.get("x-amz-meta-state") == "restored"
            assert stat.content_type == "text/plain"
            tags = client.get_object_tags(BUCKET, restored_key)
            assert dict(tags or {}) == {"origin": "backup"}
        if outcome == "kept_both":
            assert _read(s3, key) == CURRENT[key], "keep_both leaves the current object alone"
        if outcome == "skipped":
            assert _read(s3, key) == CURRENT[key]
            assert client.stat_object(BUCKET, key).metadata.get("x-amz-meta-state") == "current"
    assert _read(s3, "unrelated.txt") == CURRENT["unrelated.txt"], (
        "objects not in the backup are never touched"
    )


def test_restore_creates_missing_bucket_and_honours_key_prefix(s3: S3Server) -> None:
    client = s3.client()
    plan = svc.plan_bucket(client, BUCKET, _inventory().values(), svc.ConflictPolicy.SKIP, key_prefix="dir/")
    summary = svc.restore_bucket(
        client,
        BUCKET,
        [_entry(k, v) for k, v in BACKUP.items()],
        _inventory(),
        svc.ConflictPolicy.SKIP,
        "bk1",
        key_prefix="dir/",
    )
    assert plan["bucket_created"] and summary.bucket_created
    assert plan["added"] == summary.added == 2
    names = sorted(o.object_name for o in client.list_objects(BUCKET, recursive=True))
    assert names == ["dir/same-size.txt", "dir/ünïcode name.txt"]


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "parallel"])
def test_s3_stopped_mid_restore_fails_with_summary(s3: S3Server, streamed: bool) -> None:
    client = s3.client()
    client.make_bucket(BUCKET)

    def entries() -> Iterator[svc.RestoreEntry]:
        for i in range(3):
            yield _entry(f"k{i}", b"x" * 10)
        s3.stop()
        for i in range(3, 6):
            yield _entry(f"k{i}", b"x" * 10)

    with pytest.raises(svc.BucketRestoreFailed) as info:
        svc.restore_bucket(
            client,
            BUCKET,
            entries(),
            {},
            svc.ConflictPolicy.OVERWRITE,
            "bk1",
            small_object_bytes=0 if streamed else svc.SMALL_OBJECT_BYTES,
        )
    added = info.value.summary.added
    if streamed:
        assert added == 3, "one at a time, the three put before the stop are counted"
    else:
        # Puts of the first three may still be under way when the server goes: each counts
        # only if it completed (test_restore_parallel checks the counts against the bucket).
        assert added <= 3
    assert not info.value.summary.completed
    assert f"{added} added" in str(info.value)
    assert not [t for t in threading.enumerate() if t.name.startswith("restore-put")], "no put thread left"
    assert f"S3 endpoint {s3.endpoint}: writing objects failed" in str(info.value)
    s3.start()


# --- conflict check by one streamed listing (ExistingSizes) ---------------------------------


class _Listing:
    """A listing that records how far it was read, as minio's generator is read page by page."""

    def __init__(self, items: list[tuple[str, int]]) -> None:
        self.items = items
        self.pulled = 0

    def __iter__(self) -> Iterator[tuple[str, int]]:
        for item in self.items:
            self.pulled += 1
            yield item


class _Stat:
    """The per-object fallback: answers from ``present`` and records the keys it was asked."""

    def __init__(self, present: dict[str, int]) -> None:
        self.present = present
        self.asked: list[str] = []

    def __call__(self, key: str) -> int | None:
        self.asked.append(key)
        return self.present.get(key)


def test_existing_sizes_merge_answers_without_a_request_per_object() -> None:
    listed = [("a", 1), ("b/x", 2), ("b/y", 3), ("c", 4), ("ü", 5)]
    stat = _Stat(dict(listed))
    existing = svc.ExistingSizes(_Listing(listed), stat)
    asked = ["a", "a", "b/0", "b/y", "bb", "zz", "ü", "ü~"]  # repeated, absent; "ü" > "z" as in S3
    assert [existing.size(k) for k in asked] == [1, 1, None, 3, None, None, 5, None]
    assert stat.asked == [] and existing.fallback_reason is None


def test_existing_sizes_reads_the_listing_lazily() -> None:
    listing = _Listing([(f"k{i:06d}", i) for i in range(100_000)])
    existing = svc.ExistingSizes(listing, _Stat({}), lookahead=10)
    for i in range(0, 100_000, 997):
        assert existing.size(f"k{i:06d}") == i
        # At most the lookahead beyond the key just decided was read: memory stays bounded.
        assert listing.pulled <= i + 1 + 10


def test_keys_out_of_order_fall_back_to_stat_for_every_remaining_key() -> None:
    listed = [("a", 1), ("b", 2), ("c", 3), ("d", 4)]
    stat = _Stat(dict(listed))
    existing = svc.ExistingSizes(_Listing(listed), stat)
    # An old archive: "b" comes after "c". The merge has passed "b"; it must not call it absent.
    assert [existing.size(k) for k in ("a", "c", "b", "d", "e")] == [1, 3, 2, 4, None]
    assert stat.asked == ["b", "d", "e"], "every key from the first out-of-order one on is stat'ed"
    assert existing.fallback_reason is not None and "archive" in existing.fallback_reason


def test_listing_out_of_order_is_caught_before_a_key_is_called_absent() -> None:
    # Another server's order: "b" is listed after "c". Without the check, asking for "b" would
    # meet "c" first and answer "absent", and skip would overwrite the object.
    listed = [("a", 1), ("c", 3), ("b", 2), ("d", 4)]
    stat = _Stat(dict(listed))
    existing = svc.ExistingSizes(_Listing(listed), stat)
    assert [existing.size(k) for k in ("b", "c", "d", "x")] == [2, 3, 4, None]
    assert stat.asked == ["b", "c", "d", "x"]
    assert existing.fallback_reason is not None and "listing" in existing.fallback_reason


def test_listing_disorder_found_later_switches_the_rest_to_stat() -> None:
    listed = [("a", 1), ("b", 2), ("c", 3), ("e", 5), ("d", 4), ("f", 6)]
    stat = _Stat(dict(listed))
    existing = svc.ExistingSizes(_Listing(listed), stat, lookahead=2)
    assert existing.size("a") == 1 and existing.size("b") == 2
    assert stat.asked == []
    # Deciding "c" holds two items ("c", "e"); "d" < "e" shows up on the way to "d".
    assert [existing.size(k) for k in ("c", "d", "f")] == [3, 4, 6]
    assert stat.asked == ["d", "f"]


class _CountingMinio(Minio):
    """The fixture's client, counting the per-object stat requests and optionally reordering listings."""

    def __init__(
        self, s3: S3Server, *, listing_order: Callable[[list[Any]], list[Any]] | None = None
    ) -> None:
        super().__init__(**s3.client_args())
        self.stats = 0
        self._listing_order = listing_order

    def stat_object(self, *args: Any, **kwargs: Any) -> Any:
        self.stats += 1
        return super().stat_object(*args, **kwargs)

    def list_objects(self, *args: Any, **kwargs: Any) -> Any:
        listed = super().list_objects(*args, **kwargs)
        return iter(self._listing_order(list(listed))) if self._listing_order else listed


def _sorted_backup() -> list[svc.RestoreEntry]:
    return [_entry(k, BACKUP[k], state="restored") for k in sorted(BACKUP)]


@pytest.mark.parametrize("policy", list(svc.ConflictPolicy))
def test_entries_in_listing_order_decide_from_the_listing_alone(
    s3: S3Server, policy: svc.ConflictPolicy
) -> None:
    client = _CountingMinio(s3)
    client.make_bucket(BUCKET)
    for key, data in CURRENT.items():
        client.put_object(BUCKET, key, io.BytesIO(data), len(data), metadata={"state": "current"})

    plan = svc.plan_bucket(client, BUCKET, [_inventory()[k] for k in sorted(BACKUP)], policy)
    summary = svc.restore_bucket(client, BUCKET, _sorted_backup(), _inventory(), policy, "bk1")

    expected = EXPECTED[policy]
    counts = {a.value: sum(1 for v in expected.values() if v == a.value) for a in svc.ObjectAction}
    assert summary.counts() == counts and summary.failed == 0
    assert {k: plan[k] for k in counts} == counts
    # Existence comes from the listing alone; the only HEADs are the fidelity check of each object
    # written (what the server serves) and, for keep_both, whether the suffixed key exists already.
    written = summary.added + summary.overwritten + summary.kept_both
    assert client.stats == written + summary.kept_both, "no stat request per decision when both orders agree"
    for key, outcome in expected.items():
        if outcome == "skipped":
            assert _read(s3, key) == CURRENT[key]
        elif outcome in ("added", "overwritten"):
            assert _read(s3, key) == BACKUP[key]


@pytest.mark.parametrize(
    "listing_order",
    [lambda objs: objs[::-1], lambda objs: sorted(objs, key=lambda o: o.object_name.upper())],
    ids=["reversed", "case-insensitive"],
)
def test_a_listing_in_another_order_never_overwrites_under_skip(
    s3: S3Server, listing_order: Callable[[list[Any]], list[Any]]
) -> None:
    client = _CountingMinio(s3, listing_order=listing_order)
    client.make_bucket(BUCKET)
    current = {f"{c}{i}": f"current {c}{i}".encode() for c in "aBcD" for i in range(3)}
    for key, data in current.items():
        client.put_object(BUCKET, key, io.BytesIO(data), len(data))
    backup = {**{k: b"backup " + k.encode() for k in current}, "bb": b"new", "Zz": b"new too"}
    inventory = {k: svc.IncomingObject(k, len(v), hashlib.sha256(v).hexdigest()) for k, v in backup.items()}

    plan = svc.plan_bucket(client, BUCKET, [inventory[k] for k in sorted(backup)], svc.ConflictPolicy.SKIP)
    summary = svc.restore_bucket(
        client,
        BUCKET,
        [_entry(k, backup[k]) for k in sorted(backup)],
        inventory,
        svc.ConflictPolicy.SKIP,
        "bk1",
    )

    assert summary.skipped == len(current) and summary.added == 2
    assert plan["skipped"] == len(current) and plan["added"] == 2
    for key, data in current.items():
        assert _read(s3, key) == data, f"{key} was overwritten under skip"
    assert _read(s3, "bb") == b"new" and _read(s3, "Zz") == b"new too"
    # Beyond the fidelity HEAD of each object written: a stat per decision.
    assert client.stats > summary.added, "the misordered listing made it check object by object"


def test_entries_out_of_order_never_overwrite_under_skip(s3: S3Server) -> None:
    client = _CountingMinio(s3)
    client.make_bucket(BUCKET)
    for key, data in CURRENT.items():
        client.put_object(BUCKET, key, io.BytesIO(data), len(data))
    # An archive in another order than S3's listing: the merge sees "same.txt" first.
    order = sorted(BACKUP, reverse=True)
    plan = svc.plan_bucket(client, BUCKET, [_inventory()[k] for k in order], svc.ConflictPolicy.SKIP)
    summary = svc.restore_bucket(
        client, BUCKET, [_entry(k, BACKUP[k]) for k in order], _inventory(), svc.ConflictPolicy.SKIP, "bk1"
    )
    assert summary.skipped == plan["skipped"] == 3 and summary.added == plan["added"] == 1
    for key in ("same.txt", "dir/same-size.txt", "dir/ünïcode name.txt"):
        assert _read(s3, key) == CURRENT[key]
    assert _read(s3, "new/only-in-backup.txt") == BACKUP["new/only-in-backup.txt"]


def test_object_sha256_keeps_the_connection(s3: S3Server, caplog: pytest.LogCaptureFixture) -> None:
    client = s3.client()
    client.make_bucket(BUCKET)
    data = b"0123456789" * 100_000
    client.put_object(BUCKET, "k", io.BytesIO(data), len(data))
    with caplog.at_level(logging.DEBUG, logger="urllib3.connectionpool"):
        for _ in range(10):
            assert svc.object_sha256(client, BUCKET, "k") == hashlib.sha256(data).hexdigest()
    opened = [r for r in caplog.records if "Starting new HTTP connection" in r.getMessage()]
    assert len(opened) == 0, "the connection of the put is reused by every GET"


def test_download_resumes_from_offset_after_a_drop() -> None:
    data = bytes(range(256)) * 1000

    class Flaky:
        calls: list[tuple[int, int | None]] = []

        def get(self, file_id: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
            self.calls.append((start, end))
            stop = len(data) if end is None else end

            def gen() -> Iterator[bytes]:
                pos = start
                while pos < stop:
                    if len(self.calls) < 3 and pos - start >= 50_000:
                        raise ConnectionResetError("cut")
                    yield data[pos : min(pos + 10_000, stop)]
                    pos += 10_000

            return gen()

    source = Flaky()
    out = b"".join(svc.download_backup(source, "f", len(data), chunk_size=10_000))
    assert out == data
    assert [c[0] for c in source.calls] == [0, 50_000, 100_000]


# --- database ------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE media_assets (id serial PRIMARY KEY, bucket text, object_key text, note text);
CREATE TABLE settings (k text PRIMARY KEY, v text);
"""


def test_version_checks_name_the_versions() -> None:
    with pytest.raises(svc.RestoreRefused, match=r"pg_restore 15\.2 is older than the pg_dump 16\.1"):
        svc.check_restore_versions("15.2", "16.1", "15.2", "15.2")
    with pytest.raises(svc.RestoreRefused, match=r"older than the dumped server 16\.3"):
        svc.check_restore_versions("16.3", "16.3", "16.3", "15.20")
    assert svc.check_restore_versions("16.1", "15.20", "15.20", "16.1")["target_server"] == "16.1"


def test_consistency_report(s3: S3Server, fresh_pg_database: PgDatabase) -> None:
    client = s3.client()
    client.make_bucket("media")
    for key in ("a/0.jpg", "a/1.jpg", "orphan.jpg"):
        client.put_object("media", key, io.BytesIO(b"x"), 1)
    with fresh_pg_database.connect() as conn:
        conn.execute(SCHEMA)
        conn.execute(
            "INSERT INTO media_assets (bucket, object_key) VALUES ('media','a/0.jpg'),('media','a/1.jpg'),('media','gone.jpg')"
        )
    report = svc.consistency_report(fresh_pg_database.url, client, ["media"])
    assert report["rows_pointing_to_missing_objects"] == 1
    assert report["missing_examples"] == ["media/gone.jpg"]
    assert report["unreferenced_examples"] == ["media/orphan.jpg"]
    custom = svc.consistency_report(
        fresh_pg_database.url, client, ["media"], query="SELECT 'media', 'orphan.jpg'"
    )
    assert custom["unreferenced_objects"] == 2 and custom["rows_pointing_to_missing_objects"] == 0


def test_confirmation_required_for_destructive_runs() -> None:
    svc.check_confirmation(svc.RestoreOptions(dry_run=True), "bk1")
    with pytest.raises(svc.RestoreRefused, match="confirm='restore bk1'"):
        svc.check_confirmation(svc.RestoreOptions(dry_run=False, confirm="restore bk2"), "bk1")
    svc.check_confirmation(svc.RestoreOptions(dry_run=False, confirm="restore bk1"), "bk1")
    _ = Tags  # tags are compared through the client above
