"""The S3 destination beyond the shared contract, on the suite's SeaweedFS (a real S3 server):
multipart uploads that survive a cut connection and a killed process, unfinished uploads
aborted, object lock against the product's own (least-privilege) credentials, the check.

Faults are injected on a real socket (``fixtures/cutting_proxy.py``), never in the client.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from xml.etree import ElementTree

import pytest
from minio import Minio
from minio.error import S3Error

from backup_pipeline.destinations.base import (
    LockedError,
    PermanentError,
    RetryableError,
    RetryingDestination,
    RetryPolicy,
)
from backup_pipeline.destinations.s3 import LockMode, S3Destination
from backup_pipeline.destinations.s3.state import SESSIONS_DIR
from backup_pipeline_tests.fixtures import s3_destination as sd
from backup_pipeline_tests.fixtures.cutting_proxy import CuttingProxy
from backup_pipeline_tests.fixtures.s3 import SeaweedFSServer

MiB = 1024 * 1024
PART = 5 * MiB
#: Request headers, signatures and XML per part: far below one part.
OVERHEAD = 256 * 1024


def _data(size: int, seed: bytes = b"s3dest") -> bytes:
    block = hashlib.sha256(seed).digest() * (MiB // 32)
    return (block * (size // len(block) + 1))[:size]


def _stream(data: bytes, block: int = MiB) -> Iterator[bytes]:
    """Not seekable: like the encryption pipeline a backup part comes from."""
    for i in range(0, len(data), block):
        yield data[i : i + block]


def _unfinished_uploads(server: SeaweedFSServer) -> list[str]:
    response = server.client()._execute("GET", sd.BUCKET, query_params={"uploads": "", "prefix": sd.PREFIX})
    return [e.text or "" for e in ElementTree.fromstring(response.data).iter() if e.tag.endswith("}Key")]


def _sessions(state_dir: Path) -> list[dict[str, object]]:
    folder = state_dir / SESSIONS_DIR
    return [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.is_dir() else []


def _fail_put(
    proxy: CuttingProxy,
    server: SeaweedFSServer,
    state: Path,
    name: str,
    data: bytes,
    *,
    after: int,
    attempts: int = 2,
) -> RetryableError:
    """A put of a seekable source through a path that goes down ``after`` bytes in (and stays
    down for its retries): it fails and leaves its multipart upload and session behind."""
    few = RetryPolicy(attempts=attempts, initial_wait=0.01, max_wait=0.02)
    proxy.cut_after(after, repeat=True)
    with pytest.raises(RetryableError) as failed:
        sd.destination(server, state, endpoint=proxy.endpoint, retry=few).put(
            name, io.BytesIO(data), {"backupId": name.split("/")[0]}
        )
    proxy.heal()
    return failed.value


@pytest.fixture()
def plain_bucket(s3: SeaweedFSServer) -> SeaweedFSServer:
    sd.make_bucket(s3, object_lock=False)
    return s3


@pytest.fixture()
def locked_bucket(s3: SeaweedFSServer) -> SeaweedFSServer:
    sd.make_bucket(s3, object_lock=True)
    return s3


# A put in a process of its own (to be killed, or to measure its peak RSS alone): of a file, or
# of a generated stream of SIZE bytes (not seekable, like the encryption pipeline).
_WORKER = """
import hashlib, json, os, re, sys
from pathlib import Path
from backup_pipeline_tests.fixtures import s3_destination as sd
from backup_pipeline.destinations.s3 import Credentials

endpoint, state, name, backup_id, source, part_mib = sys.argv[1:7]
access, secret = os.environ["S3_ADMIN"].split(":")
expected = hashlib.sha256()

class Server:
    region = "us-east-1"

def generated(size):
    seed = hashlib.shake_256(b"s3dest-big").digest(1 << 20)
    for i in range(size >> 20):
        block = i.to_bytes(8, "big") + seed[8:]
        expected.update(block)
        yield block

dest = sd.destination(Server(), Path(state), endpoint=endpoint, credentials=Credentials(access, secret),
                      part_size=int(part_mib) * 1024 * 1024)
props = {"backupId": backup_id}
if source.isdigit():
    stored = dest.put(name, generated(int(source)), props)
else:
    with open(source, "rb") as f:
        stored = dest.put(name, f, props)
print(json.dumps({"size": stored.size, "sha256": stored.sha256, "expected": expected.hexdigest(),
                  "peak_rss_bytes": int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024}))
"""


def _worker(endpoint: str, state: Path, name: str, backup_id: str, source: str, part_mib: int) -> list[str]:
    return [sys.executable, "-c", _WORKER, endpoint, str(state), name, backup_id, source, str(part_mib)]


def _worker_env(server: SeaweedFSServer) -> dict[str, str]:
    return {**os.environ, "S3_ADMIN": f"{server.access_key}:{server.secret_key}"}


# --- multipart: checksums, cuts, resume, abort ---------------------------------------------------


def test_a_cut_connection_costs_one_part_not_the_upload(
    plain_bucket: SeaweedFSServer, tmp_path: Path
) -> None:
    data = _data(17 * MiB)  # parts of 5, 5, 5 and 2 MiB
    with CuttingProxy("127.0.0.1", plain_bucket.port) as proxy:
        dest = sd.destination(plain_bucket, tmp_path / "state", endpoint=proxy.endpoint)
        proxy.cut_after(int(2.5 * PART))  # in the middle of part 3
        stored = dest.put("cut/part", _stream(data), {"backupId": "cut"})
        sent = proxy.upstream_bytes
        assert proxy.cuts == 1
    assert stored.size == len(data) and stored.sha256 == hashlib.sha256(data).hexdigest()
    assert b"".join(sd.destination(plain_bucket, tmp_path / "state").get(stored.id)) == data
    # Only part 3 went twice: the bytes sent stay below the data plus one part.
    assert len(data) < sent < len(data) + PART + OVERHEAD
    assert _unfinished_uploads(plain_bucket) == []
    assert _sessions(tmp_path / "state") == []


def test_multipart_object_lists_with_its_full_hashes(plain_bucket: SeaweedFSServer, tmp_path: Path) -> None:
    data = _data(11 * MiB, b"hashes")
    dest = sd.destination(plain_bucket, tmp_path / "state")
    stored = dest.put("mp/part", io.BytesIO(data), {"backupId": "mp", "partName": "database"})
    [listed] = dest.list({"backupId": "mp"})
    assert (listed.id, listed.size) == (stored.id, len(data))
    assert listed.sha256 == hashlib.sha256(data).hexdigest()
    assert listed.md5 == hashlib.md5(data).hexdigest()
    head = plain_bucket.client().stat_object(sd.BUCKET, f"{sd.PREFIX}mp/mp/part")
    assert head.etag.endswith("-3")  # a real multipart object: its ETag is no MD5


def test_a_killed_process_leaves_an_upload_the_next_put_resumes(
    plain_bucket: SeaweedFSServer, tmp_path: Path
) -> None:
    data = _data(17 * MiB, b"killed")
    source = tmp_path / "part.bin"
    source.write_bytes(data)
    state = tmp_path / "state"
    with CuttingProxy("127.0.0.1", plain_bucket.port) as proxy:
        proxy.freeze_after(int(2.5 * PART))  # part 3 hangs; parts 1 and 2 were confirmed
        worker = subprocess.Popen(
            _worker(proxy.endpoint, state, "killed/part", "k", str(source), 5),
            env=_worker_env(plain_bucket),
            stdout=subprocess.DEVNULL,
        )
        try:
            assert proxy.frozen.wait(timeout=120), "the worker never reached part 3"
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
        [session] = _sessions(state)
        assert [p["number"] for p in session["parts"]] == [1, 2]  # type: ignore[union-attr]
        assert _unfinished_uploads(plain_bucket) == [f"{sd.PREFIX}k/killed/part"]

        proxy.thaw()
        before = proxy.upstream_bytes
        dest = sd.destination(plain_bucket, state, endpoint=proxy.endpoint)
        with source.open("rb") as f:
            stored = dest.put("killed/part", f, {"backupId": "k"})
        resent = proxy.upstream_bytes - before
    assert dest.uploader.last_resumed_bytes == 2 * PART
    assert resent < len(data) - 2 * PART + OVERHEAD  # parts 1 and 2 were not sent again
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert b"".join(sd.destination(plain_bucket, state).get(stored.id)) == data
    assert _sessions(state) == [] and _unfinished_uploads(plain_bucket) == []


def test_a_seekable_source_keeps_its_upload_after_a_failure_and_resumes(
    plain_bucket: SeaweedFSServer, tmp_path: Path
) -> None:
    data = _data(16 * MiB, b"seekable")
    state = tmp_path / "state"
    with CuttingProxy("127.0.0.1", plain_bucket.port) as proxy:
        failed = _fail_put(proxy, plain_bucket, state, "seek/part", data, after=int(2.5 * PART))
        assert "kept for a later put of the same file to resume" in str(failed)
        assert [p["number"] for p in _sessions(state)[0]["parts"]] == [1, 2]  # type: ignore[index]
        before = proxy.upstream_bytes
        stored = sd.destination(plain_bucket, state, endpoint=proxy.endpoint).put(
            "seek/part", io.BytesIO(data), {"backupId": "seek"}
        )
        resent = proxy.upstream_bytes - before
    assert resent < len(data) - 2 * PART + OVERHEAD
    assert b"".join(sd.destination(plain_bucket, state).get(stored.id)) == data


def test_a_stream_that_breaks_aborts_its_multipart_upload(
    plain_bucket: SeaweedFSServer, tmp_path: Path
) -> None:
    def broken() -> Iterator[bytes]:
        yield _data(12 * MiB)
        raise OSError("pg_dump died")

    dest = sd.destination(plain_bucket, tmp_path / "state")
    with pytest.raises(OSError, match="pg_dump died"):
        dest.put("broken/part", broken(), {"backupId": "broken"})
    assert _unfinished_uploads(plain_bucket) == []
    assert _sessions(tmp_path / "state") == []
    assert list(dest.list({"backupId": "broken"})) == []


def test_an_encrypted_stream_never_resumes_a_saved_upload_it_does_not_match(
    plain_bucket: SeaweedFSServer, tmp_path: Path
) -> None:
    """A saved upload whose first part differs (a fresh encryption salt) is aborted, not mixed in."""
    state = tmp_path / "state"
    with CuttingProxy("127.0.0.1", plain_bucket.port) as proxy:
        _fail_put(
            proxy, plain_bucket, state, "salt/part", _data(12 * MiB, b"first salt"), after=int(1.5 * PART)
        )
        other = _data(12 * MiB, b"second salt")
        dest = sd.destination(plain_bucket, state, endpoint=proxy.endpoint)
        stored = dest.put("salt/part", io.BytesIO(other), {"backupId": "salt"})
    assert dest.uploader.last_resumed_bytes == 0
    assert b"".join(sd.destination(plain_bucket, state).get(stored.id)) == other
    assert _unfinished_uploads(plain_bucket) == []


def test_a_download_cut_midway_resumes_with_a_ranged_request(
    plain_bucket: SeaweedFSServer, tmp_path: Path
) -> None:
    data = _data(12 * MiB, b"download")
    stored = sd.destination(plain_bucket, tmp_path / "state").put(
        "dl/part", io.BytesIO(data), {"backupId": "dl"}
    )
    with CuttingProxy("127.0.0.1", plain_bucket.port) as proxy:
        reader = RetryingDestination(
            sd.destination(plain_bucket, tmp_path / "state", endpoint=proxy.endpoint), sd.FAST_RETRY
        )
        blocks = reader.get(stored.id, 1000)
        proxy.cut_download_after(5 * MiB)
        received = b"".join(blocks)
        downloaded, cuts = proxy.downstream_bytes, proxy.cuts
    assert received == data[1000:]
    # Resumed where it broke: starting again from byte 1000 would fetch 5 MiB + the whole part; a
    # resume fetches the part once plus what was in flight when the connection broke.
    assert cuts == 1 and downloaded < len(data) + 4 * MiB


def test_the_storage_class_is_sent_with_every_part(plain_bucket: SeaweedFSServer, tmp_path: Path) -> None:
    dest = sd.destination(plain_bucket, tmp_path / "state", storage_class="STANDARD_IA")
    dest.put("sc/small", [b"small"], {"backupId": "sc"})
    dest.put("sc/large", io.BytesIO(_data(11 * MiB)), {"backupId": "sc"})
    client = plain_bucket.client()
    for name in ("small", "large"):
        head = client._execute("HEAD", sd.BUCKET, f"{sd.PREFIX}sc/sc/{name}")
        assert head.headers.get("x-amz-storage-class") == "STANDARD_IA", name


def test_a_name_is_written_once(plain_bucket: SeaweedFSServer, tmp_path: Path) -> None:
    dest = sd.destination(plain_bucket, tmp_path / "state")
    dest.put("once/part", [b"first"], {"backupId": "once"})
    with pytest.raises(PermanentError, match="already exists"):
        dest.put("once/part", [b"second"], {"backupId": "once"})
    [listed] = dest.list({"backupId": "once"})
    assert b"".join(dest.get(listed.id)) == b"first"


# --- object lock against the product's own credentials ---------------------------------------------


def _writer(server: SeaweedFSServer) -> Minio:
    return Minio(
        f"127.0.0.1:{server.port}",
        sd.WRITER_ACCESS_KEY,
        sd.WRITER_SECRET_KEY,
        secure=False,
        region=server.region,
    )


def _s3_code(call: object) -> str:
    try:
        call()  # type: ignore[operator]
    except S3Error as exc:
        return str(exc.code)
    return "ok"


def test_a_locked_file_survives_deletes_and_overwrites_with_the_products_credentials(
    locked_bucket: SeaweedFSServer, tmp_path: Path
) -> None:
    dest = sd.destination(locked_bucket, tmp_path / "state", credentials=sd.writer_credentials(), lock_days=1)
    original = _data(600_000, b"locked")
    stored = dest.put("set-1/database", [original], {"backupId": "set-1", "partName": "database"})
    assert stored.locked_until is not None and stored.locked_until > datetime.now(UTC) + timedelta(hours=23)
    key = f"{sd.PREFIX}set-1/set-1/database"
    version = stored.id.rpartition("?versionId=")[2]
    writer = _writer(locked_bucket)

    # Through the product: refused, with the date.
    with pytest.raises(LockedError) as refused:
        RetryingDestination(dest).delete(stored.id)
    assert refused.value.until == stored.locked_until
    # Raw requests with the same credentials: every delete is denied ...
    assert _s3_code(lambda: writer.remove_object(sd.BUCKET, key)) == "AccessDenied"
    assert _s3_code(lambda: writer.remove_object(sd.BUCKET, key, version_id=version)) == "AccessDenied"
    # ... even the admin cannot remove the locked version (GOVERNANCE, no bypass header) ...
    admin = locked_bucket.client()
    assert _s3_code(lambda: admin.remove_object(sd.BUCKET, key, version_id=version)) == "AccessDenied"
    # ... an overwrite is accepted by S3 only as a NEW version, and a plain DELETE by the admin
    # only adds a delete marker: neither touches the version written.
    garbage = b"ransomware was here"
    assert _s3_code(lambda: writer.put_object(sd.BUCKET, key, io.BytesIO(garbage), len(garbage))) == "ok"
    assert _s3_code(lambda: admin.remove_object(sd.BUCKET, key)) == "ok"
    kinds = [
        (bool(v.is_delete_marker), v.size or 0)
        for v in admin.list_objects(sd.BUCKET, prefix=key, include_version=True)
    ]
    assert sorted(kinds) == sorted([(True, 0), (False, len(garbage)), (False, len(original))])

    [listed] = dest.list({"backupId": "set-1"})
    assert (listed.id, listed.sha256) == (stored.id, hashlib.sha256(original).hexdigest())
    assert b"".join(dest.get(listed.id)) == original
    assert dest.stat(stored.id).locked_until == stored.locked_until


def test_retention_reports_a_locked_set_and_deletes_it_after_the_lock(
    locked_bucket: SeaweedFSServer, tmp_path: Path
) -> None:
    from backup_pipeline.services.backup_parts import part_file_name, part_properties
    from backup_pipeline.services.retention import apply_retention, discover_sets, plan_retention

    dest = sd.destination(locked_bucket, tmp_path / "state")  # may delete: only the lock stops it
    old, new = "20260101T000000Z-0000aaaa", "20260102T000000Z-0000bbbb"
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=4)
    for backup_id in (old, new):
        for part in ("database", "manifest"):
            dest.uploader.put(
                part_file_name("acme", backup_id, part),
                [os.urandom(1000)],
                part_properties("acme", backup_id, part),
                retain_until=until,
            )

    sets = discover_sets(RetryingDestination(dest), "acme")
    assert {s.backup_id: s.locked_until for s in sets} == {old: until, new: until}
    plan = plan_retention(sets, keep_last=1, incomplete_grace=timedelta(hours=1), now=datetime.now(UTC))
    assert plan.delete == [] and [(s.backup_id, s.until) for s in plan.locked] == [(old, until)]
    result = apply_retention(RetryingDestination(dest), "acme", plan)
    assert (result.deleted, result.failed) == ([], {})
    assert "locked until" in result.locked[0].describe()

    # A later run, once the lock has ended (the server decides; this waits for its clock).
    _wait_until(until + timedelta(seconds=1))
    sets = discover_sets(RetryingDestination(dest), "acme")
    plan = plan_retention(sets, keep_last=1, incomplete_grace=timedelta(hours=1), now=datetime.now(UTC))
    assert [d.backup_id for d in plan.delete] == [old] and plan.locked == []
    result = apply_retention(RetryingDestination(dest), "acme", plan)
    assert [d.backup_id for d in result.deleted] == [old] and result.locked == []
    left = locked_bucket.client().list_objects(sd.BUCKET, prefix=f"{sd.PREFIX}{old}/", include_version=True)
    assert list(left) == []  # every version gone, no delete marker left behind


def _wait_until(moment: datetime) -> None:
    import time

    while datetime.now(UTC) < moment:
        time.sleep(0.2)


def test_credentials_that_may_not_delete_are_reported_not_failed(
    locked_bucket: SeaweedFSServer, tmp_path: Path
) -> None:
    from backup_pipeline.services.retention import PlannedDeletion, RetentionPlan, apply_retention

    dest = sd.destination(
        locked_bucket, tmp_path / "state", credentials=sd.writer_credentials(), lock_mode=LockMode.NONE
    )
    backup_id = "20260101T000000Z-0000cccc"
    dest.put(
        f"acme-{backup_id}.manifest.bpenc",
        [b"m"],
        {"backupId": backup_id, "app": "backup_pipeline", "installationId": "acme", "partName": "manifest"},
    )
    plan = RetentionPlan(
        delete=[PlannedDeletion(backup_id, "older than the newest 1 complete sets", True, 1)]
    )
    result = apply_retention(RetryingDestination(dest), "acme", plan)
    assert result.failed == {} and result.deleted == []
    [refused] = result.locked
    assert refused.until is None and "may not delete" in refused.detail
    assert len(list(dest.list({"backupId": backup_id}))) == 1


# --- the check ---------------------------------------------------------------------------------


def test_check_on_a_locked_bucket_with_the_products_credentials(
    locked_bucket: SeaweedFSServer, tmp_path: Path
) -> None:
    dest = sd.destination(
        locked_bucket,
        tmp_path / "state",
        credentials=sd.writer_credentials(),
        lock_mode=LockMode.COMPLIANCE,
        lock_days=9,
    )
    report = dest.check()
    assert report.ok, report
    steps = {s.name: s.detail for s in report.steps}
    assert list(steps) == ["bucket", "versioning", "object lock", "space", "write", "read back", "delete"]
    assert steps["versioning"].startswith("versioning: enabled")
    assert (
        "object lock: enabled; no bucket default retention; this destination writes COMPLIANCE "
        "retention for 9 days" in steps["object lock"]
    )
    assert "locked COMPLIANCE until" in steps["write"]
    assert steps["delete"].startswith("refused, as it must be")
    assert report.warnings == []


def test_check_says_plainly_when_the_bucket_has_no_object_lock(
    plain_bucket: SeaweedFSServer, tmp_path: Path
) -> None:
    report = sd.destination(plain_bucket, tmp_path / "state").check()
    assert report.ok
    steps = {s.name: s.detail for s in report.steps}
    assert steps["versioning"].startswith("versioning: not enabled")
    assert steps["object lock"].startswith("object lock: NOT enabled on this bucket")
    assert steps["delete"] == "test file deleted"
    assert any("NOT enabled" in w for w in report.warnings)


def test_check_names_a_missing_bucket(s3: SeaweedFSServer, tmp_path: Path) -> None:
    report = sd.destination(s3, tmp_path / "state").check()
    assert not report.ok
    assert report.steps[0].name == "bucket" and "does not exist" in report.steps[0].detail
    assert report.fix is not None and "never creates it" in report.fix


def test_wrong_credentials_fail_the_check_without_echoing_them(
    plain_bucket: SeaweedFSServer, tmp_path: Path
) -> None:
    from backup_pipeline.destinations.s3 import Credentials

    secret = "wrong-secret-that-must-not-appear"
    dest = sd.destination(plain_bucket, tmp_path / "state", credentials=Credentials("nobody", secret))
    report = dest.check()
    assert not report.ok
    assert "refused the credentials" in report.steps[0].detail or "denied" in report.steps[0].detail
    assert secret not in repr(report) and "nobody" not in str(report.fix)


def test_unfinished_uploads_of_dead_processes_are_swept(
    plain_bucket: SeaweedFSServer, tmp_path: Path
) -> None:
    """A session file idle for a day: its upload is aborted on the server by the next put."""
    state = tmp_path / "state"
    with CuttingProxy("127.0.0.1", plain_bucket.port) as proxy:
        _fail_put(
            proxy, plain_bucket, state, "swept/part", _data(12 * MiB), after=int(1.5 * PART), attempts=1
        )
        assert len(_unfinished_uploads(plain_bucket)) == 1
        [session_file] = (state / SESSIONS_DIR).glob("*.json")
        day_ago = datetime.now(UTC).timestamp() - 25 * 3600
        os.utime(session_file, (day_ago, day_ago))
        dest: S3Destination = sd.destination(plain_bucket, state, endpoint=proxy.endpoint)
        dest.put("other/part", [b"x"], {"backupId": "other"})
    assert _unfinished_uploads(plain_bucket) == []
    assert not session_file.exists()


# --- memory, the backup's cleanup paths, the UI check ----------------------------------------------


@pytest.mark.slow
def test_a_large_part_streams_in_bounded_memory_through_a_cut(
    plain_bucket: SeaweedFSServer, tmp_path: Path
) -> None:
    size = 256 * MiB
    with CuttingProxy("127.0.0.1", plain_bucket.port) as proxy:
        proxy.cut_after(size // 2 + 12345)
        done = subprocess.run(
            _worker(proxy.endpoint, tmp_path / "state", "big/part", "big", str(size), 16),
            env=_worker_env(plain_bucket), capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        sent, cuts = proxy.upstream_bytes, proxy.cuts
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps({"uploader": report, "upstream_bytes": sent, "cuts": cuts}))
    assert report["size"] == size and report["sha256"] == report["expected"]
    assert cuts == 1 and sent < size + 16 * MiB + OVERHEAD  # one part sent twice at most
    # 16 MiB parts: the chunk buffer, its bytes copy and the request body; never the whole part set.
    assert report["peak_rss_bytes"] < 192 * MiB, report


def test_a_locked_leftover_never_fails_the_next_backups_cleanup(
    locked_bucket: SeaweedFSServer, tmp_path: Path
) -> None:
    """A failed backup's part under object lock: the next backup's cleanup leaves it (retention reports it)."""
    from backup_pipeline.services.backup_parts import part_file_name, part_properties
    from backup_pipeline.services.backup_upload import list_sets, remove_incomplete_sets

    dest = RetryingDestination(sd.destination(locked_bucket, tmp_path / "state", lock_days=1))
    dead = "20260101T000000Z-0000dead"
    dest.put(
        part_file_name("acme", dead, "database"),
        [b"half a backup"],
        part_properties("acme", dead, "database"),
    )
    assert remove_incomplete_sets(dest, "acme", keep={"20260102T000000Z-0000a11e"}) == []
    assert list(list_sets(dest, "acme")) == [dead]


def test_the_backup_destination_check_of_the_ui_says_off_site_and_locked(
    locked_bucket: SeaweedFSServer, tmp_path: Path
) -> None:
    from backup_pipeline.safety import live_destination_verdict

    verdict = live_destination_verdict(sd.writer_resource(locked_bucket, tmp_path / "state", "acme"))
    assert verdict.passed, verdict.description
    assert verdict.metadata["off_site"] is True
    assert "object lock: enabled" in verdict.metadata["checks"]
