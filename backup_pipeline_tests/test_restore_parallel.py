"""Parallel puts of ``restore_bucket`` against the suite's S3 server (SeaweedFS): exact counts when one object
fails or the server goes away, bounded window, progress from the caller's thread, kept-alive
connections. No Dagster here."""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
from minio import Minio

from backup_pipeline.services import restore as svc
from backup_pipeline_tests.fixtures.s3 import S3Server

BUCKET = "restore-parallel"
KIB = 1024


def _body(key: str, size: int) -> bytes:
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def _objects(count: int, size_of: Any = lambda i: 3 * KIB) -> dict[str, bytes]:
    return {f"obj/{i:04d}": _body(f"obj/{i:04d}", size_of(i)) for i in range(count)}


def _entries(
    objects: dict[str, bytes], tags: dict[str, dict[str, str]] | None = None
) -> list[svc.RestoreEntry]:
    return [
        svc.RestoreEntry(
            key=key,
            size=len(data),
            content_type="application/x-test",
            metadata={"origin": key.replace("/", "-")},
            tags=(tags or {}).get(key, {"restored": "yes"}),
            fileobj=io.BytesIO(data),
        )
        for key, data in sorted(objects.items())
    ]


def _inventory(objects: dict[str, bytes]) -> dict[str, svc.IncomingObject]:
    return {k: svc.IncomingObject(k, len(v), hashlib.sha256(v).hexdigest()) for k, v in objects.items()}


def _read(client: Minio, key: str) -> bytes:
    response = client.get_object(BUCKET, key)
    try:
        return response.read()
    finally:
        response.release_conn()


def _listed(client: Minio) -> set[str]:
    return {o.object_name for o in client.list_objects(BUCKET, recursive=True) if o.object_name}


def _put_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("restore-put")]


class _ProbeMinio(Minio):
    """The fixture's client with hooks around ``put_object`` (runs in the worker threads)."""

    def __init__(self, s3: S3Server) -> None:
        super().__init__(**s3.client_args())
        self.lock = threading.Lock()
        self.running = 0
        self.running_bytes = 0
        self.max_running = 0
        self.max_running_bytes = 0
        self.unreachable = threading.Event()
        self.first_put_waits_for_a_second = False
        self._second_started = threading.Event()
        self._puts = 0
        # (key, later key): the put of key breaks off once the later key's put has started.
        self.broken_while_running: tuple[str, str] | None = None
        self._started: dict[str, threading.Event] = {}

    def _start_event(self, key: str) -> threading.Event:
        with self.lock:
            return self._started.setdefault(key, threading.Event())

    def put_object(self, bucket_name: str, object_name: str, data: Any, length: int, **kwargs: Any) -> Any:
        self._start_event(object_name).set()
        if self.broken_while_running and object_name == self.broken_while_running[0]:
            later = self.broken_while_running[1]
            assert self._start_event(later).wait(timeout=60), f"the put of {later} never started"
            raise urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))
        if self.unreachable.is_set():
            # What urllib3 raises once its retries against a stopped server are used up.
            raise urllib3.exceptions.MaxRetryError(
                None, f"/{bucket_name}/{object_name}", ConnectionRefusedError(111, "Connection refused")
            )
        with self.lock:
            self._puts += 1
            number = self._puts
            self.running += 1
            self.running_bytes += length
            self.max_running = max(self.max_running, self.running)
            self.max_running_bytes = max(self.max_running_bytes, self.running_bytes)
        try:
            if number >= 2:
                self._second_started.set()
            elif self.first_put_waits_for_a_second:
                # Only a put started while this one runs lets it go on: proves they overlap.
                assert self._second_started.wait(timeout=60), "no second put started while the first ran"
            return super().put_object(bucket_name, object_name, data, length, **kwargs)
        finally:
            with self.lock:
                self.running -= 1
                self.running_bytes -= length


def test_one_rejected_object_among_parallel_puts_is_counted_and_named(s3: S3Server) -> None:
    client = s3.client()
    # Mostly small objects (thread pool), every 25th above the threshold (streamed here).
    objects = _objects(150, lambda i: 200 * KIB if i % 25 == 7 else (i % 13) * KIB + 100)
    # A 1 100-byte key: AWS S3 refuses keys over 1 024 bytes, SeaweedFS and MinIO a path segment
    # over 255 bytes (KeyTooLongError). (A tag key "aws:..." is refused by AWS and moto, but
    # SeaweedFS stores it: docs/S3-COMPATIBILITY.md.)
    bad = "obj/0042-" + "k" * 1100
    objects = {(bad if key == "obj/0042" else key): data for key, data in objects.items()}
    entries = _entries(objects)
    progress: list[tuple[str, int]] = []

    summary = svc.restore_bucket(
        client,
        BUCKET,
        entries,
        _inventory(objects),
        svc.ConflictPolicy.SKIP,
        "bk1",
        on_progress=lambda s: progress.append(
            (threading.current_thread().name, s.added + s.skipped + s.overwritten + s.kept_both + s.failed)
        ),
        small_object_bytes=64 * KIB,
        window_bytes=256 * KIB,
    )

    assert summary.completed and summary.bucket_created
    assert summary.failed == 1 and summary.failures == [f"{bad}: refused by the server: KeyTooLongError"]
    assert summary.added == len(objects) - 1
    assert summary.bytes_written == sum(len(v) for k, v in objects.items() if k != bad)
    assert {name for name, _ in progress} == {threading.current_thread().name}, "progress from our thread"
    assert [done for _, done in progress] == list(range(1, len(objects) + 1)), "once per object, in order"
    assert _listed(client) == set(objects) - {bad}, "the refused object is not stored at all"
    for key, data in objects.items():
        if key == bad:
            continue
        assert _read(client, key) == data, key
        stat = client.stat_object(BUCKET, key)
        assert stat.content_type == "application/x-test"
        assert stat.metadata is not None and stat.metadata.get("x-amz-meta-origin") == key.replace("/", "-")
        assert dict(client.get_object_tags(BUCKET, key) or {}) == {"restored": "yes"}
    assert not _put_threads()


def test_s3_unreachable_mid_bucket_counts_exactly_what_is_in_the_bucket(s3: S3Server) -> None:
    client = _ProbeMinio(s3)
    objects = _objects(120)

    def entries() -> Iterator[svc.RestoreEntry]:
        for i, entry in enumerate(_entries(objects)):
            if i == 60:
                client.unreachable.set()  # puts still queued or about to start fail from here
            yield entry

    with pytest.raises(svc.BucketRestoreFailed) as info:
        svc.restore_bucket(client, BUCKET, entries(), _inventory(objects), svc.ConflictPolicy.SKIP, "bk1")

    summary = info.value.summary
    present = _listed(s3.client())
    assert 0 < summary.added == len(present) < len(objects), "the summary counts exactly what was written"
    assert summary.bytes_written == sum(len(objects[k]) for k in present)
    assert summary.failed == 0 and not summary.completed
    for key in present:
        assert _read(s3.client(), key) == objects[key]
    message = str(info.value)
    assert f"restore stopped after {summary.added} added" in message
    assert f"S3 endpoint {s3.endpoint}: writing objects failed: ConnectionRefusedError" in message
    assert not _put_threads(), "the pool is shut down before the error is raised"


def test_puts_still_running_when_one_breaks_off_are_waited_for_and_counted(s3: S3Server) -> None:
    client = _ProbeMinio(s3)
    client.broken_while_running = ("obj/0010", "obj/0013")
    objects = _objects(60)

    with pytest.raises(
        svc.BucketRestoreFailed, match=r"restore stopped after .*: S3 endpoint .*writing objects failed"
    ) as info:
        svc.restore_bucket(
            client, BUCKET, _entries(objects), _inventory(objects), svc.ConflictPolicy.SKIP, "bk1"
        )

    summary = info.value.summary
    present = _listed(s3.client())
    assert "obj/0013" in present, "a put running when another broke off completes"
    assert "obj/0010" not in present
    assert summary.added == len(present) and summary.failed == 0
    assert summary.bytes_written == sum(len(objects[k]) for k in present)
    assert not _put_threads()


def test_puts_overlap_within_the_window(s3: S3Server) -> None:
    client = _ProbeMinio(s3)
    client.first_put_waits_for_a_second = True
    objects = _objects(40, lambda i: 30 * KIB)

    summary = svc.restore_bucket(
        client,
        BUCKET,
        _entries(objects),
        _inventory(objects),
        svc.ConflictPolicy.OVERWRITE,
        "bk1",
        workers=4,
        window_bytes=100 * KIB,
    )

    assert summary.added == len(objects) and summary.completed
    assert client.max_running >= 2, "puts ran at the same time"
    assert client.max_running_bytes <= 100 * KIB, "never more bytes in flight than the window"
    assert client.max_running <= 3, "the byte window, not the 4 workers, bounded this run"
    assert _listed(s3.client()) == set(objects)


def test_a_body_differing_from_the_manifest_is_never_written(s3: S3Server) -> None:
    client = s3.client()
    objects = _objects(30)
    inventory = _inventory(objects)
    inventory["obj/0020"] = svc.IncomingObject("obj/0020", 3 * KIB, "0" * 64)

    with pytest.raises(svc.BucketRestoreFailed, match="obj/0020: SHA-256 in the archive differs") as info:
        svc.restore_bucket(client, BUCKET, _entries(objects), inventory, svc.ConflictPolicy.SKIP, "bk1")

    present = _listed(client)
    assert "obj/0020" not in present
    # Puts not started yet were cancelled; the ones that ran are counted.
    assert present <= {f"obj/{i:04d}" for i in range(20)}
    assert info.value.summary.added == len(present)
    assert not _put_threads()


def test_connections_are_reused_across_a_bucket(s3: S3Server, caplog: pytest.LogCaptureFixture) -> None:
    client = s3.client()
    objects = _objects(300, lambda i: 2 * KIB)
    client.make_bucket(BUCKET)
    for key in list(objects)[::3]:  # some present, so the listing has pages to read
        client.put_object(BUCKET, key, io.BytesIO(b"old"), 3)

    with caplog.at_level(logging.DEBUG, logger="urllib3.connectionpool"):
        summary = svc.restore_bucket(
            client, BUCKET, _entries(objects), _inventory(objects), svc.ConflictPolicy.SKIP, "bk1"
        )

    assert summary.skipped == 100 and summary.added == 200
    opened = [r for r in caplog.records if "Starting new HTTP connection" in r.getMessage()]
    discarded = [r for r in caplog.records if "pool is full" in r.getMessage()]
    # The fixture's client has minio's pool of 10: 8 put threads plus this one fit in it.
    assert len(opened) <= svc.PUT_WORKERS + 1, f"{len(opened)} connections for {len(objects)} objects"
    assert not discarded
