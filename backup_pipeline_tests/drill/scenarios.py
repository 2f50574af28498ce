"""The fault matrix: one function per row, each applying one fault to a real run and then
checking what is true afterwards (outcome, ledger, next run).

Outcomes:
- ``completed``: the run succeeded despite the fault (retries absorbed it) and its set verifies.
- ``failed cleanly``: the run failed, nothing listed as a backup is partial or corrupt, the
  source data is unchanged (backups) or equal to the backup after a rerun (restores).
- ``data lost``: a set listed as complete does not verify, or data differs afterwards.
- ``fault missed``: the run finished before the fault could be applied (timing; not a verdict).
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import dagster as dg

from backup_pipeline import ledger
from backup_pipeline.archive.keys import OrgKeyring
from backup_pipeline.archive.stream_crypto import read_header
from backup_pipeline.services import restore as rs
from backup_pipeline.services.backup_parts import PART_DATABASE, PROP_PART_NAME, set_properties

from .world import INSTALLATION, World, differences

OK = dg.DagsterRunStatus.SUCCESS


class Outcome(StrEnum):
    COMPLETED = "completed"
    FAILED_CLEANLY = "failed cleanly"
    DATA_LOST = "data lost"
    MISSED = "fault missed"
    ERROR = "drill error"


@dataclass
class Row:
    group: str
    name: str
    fault: str = ""
    outcome: Outcome = Outcome.ERROR
    run_status: str = ""
    ledger_true: bool = False
    next_run_ok: bool = False
    seconds: float = 0.0
    detail: str = ""
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)


# --- checks shared by the rows --------------------------------------------------------------


def restore_keys(world: World) -> rs.RestoreKeys:
    return rs.RestoreKeys(org_keyring=OrgKeyring.from_file(world.files.org_secret_file))


def verify_set(world: World, backup_id: str) -> str | None:
    """None if every part of the set authenticates against its manifest, else why not."""
    dest = world.destination()
    keys = restore_keys(world)
    try:
        resolved = rs.resolve_backup(dest, keys, backup_id, installation_id=INSTALLATION)
        rs.verify_parts(dest, keys, resolved, sorted(resolved.parts))
    except Exception as exc:  # any refusal is the finding
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


def complete_ids(world: World) -> list[str]:
    return [e.backup_id for e in ledger.complete_sets(world.instance)]


def settle(world: World, timeout: float = 420) -> None:
    """Wait until no run is queued or running (the retention sensor starts runs after backups).

    Longer than run monitoring's start timeout (180 s, world.fast_monitoring) and cancel timeout
    (300 s): a run whose worker a scenario killed before it started or while it was cancelled
    ends only when that timeout fires (240 s here failed once: a verify run caught in STARTING
    by the whole-tree kill, at a 300 s start timeout)."""
    busy = [
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.CANCELING,
    ]
    deadline = time.monotonic() + timeout
    while world.instance.get_runs(filters=dg.RunsFilter(statuses=busy), limit=1):
        if time.monotonic() > deadline:
            raise TimeoutError("runs still queued or running")
        time.sleep(1)


def judge_backup(world: World, row: Row, run_id: str, hit: bool, next_run: bool = True) -> Row:
    """After a faulted backup run: its status, the ledger, the next backup, what remains."""
    status = world.wait(run_id)
    row.run_status = status.value
    backup_id = world.backup_id(run_id)
    complete = complete_ids(world)
    lost: list[str] = []
    if status is OK:
        if backup_id and (why := verify_set(world, backup_id)):
            lost.append(f"{backup_id} listed complete but {why}")
    else:
        if reason := world.failure_reason(run_id):
            row.note(f"failure: {reason}")
        if backup_id in complete:
            lost.append(f"failed run's set {backup_id} is listed as a backup")
        if backup_id and backup_id in world.incomplete_sets():
            row.note("partial set left on the destination (no manifest; removed by the next backup)")
    ok, detail = world.ledger_check()
    if next_run:
        settle(world)
        next_status, next_id = world.backup()
        row.next_run_ok = next_status is OK and next_id is not None and verify_set(world, next_id) is None
        if backup_id and backup_id in world.incomplete_sets():
            lost.append(f"partial set {backup_id} still there after the next backup")
        ok2, detail2 = world.ledger_check()
        ok, detail = ok and ok2, detail2
        settle(world)
    row.ledger_true = ok and not lost
    row.detail = "; ".join([*lost, detail])
    if lost:
        row.outcome = Outcome.DATA_LOST
    elif status is OK:
        row.outcome = Outcome.COMPLETED if hit else Outcome.MISSED
    else:
        row.outcome = Outcome.FAILED_CLEANLY if ok else Outcome.DATA_LOST
    return row


# --- phase predicates -----------------------------------------------------------------------


def tmp_bytes(world: World) -> int:
    """Bytes being written to the local destination right now (its write-then-rename folder)."""
    assert world.local_path is not None
    total = 0
    for path in world.local_path.glob(".tmp/*.part"):
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            continue
    return total


def backup_phase(world: World, run_id: str, phase: str) -> Callable[[], bool]:
    if phase == "dump":
        return lambda: world.worker_runs(run_id, "pg_dump")
    if phase == "bucket export":
        return lambda: world.step_started(run_id, "export_bucket")
    if phase == "upload":
        return lambda: world.step_started(run_id, "export_bucket[media]") and tmp_bytes(world) > 2 << 20
    if phase == "manifest":
        return lambda: world.step_started(run_id, "finalize_backup")
    raise ValueError(phase)


def restore_phase(world: World, run_id: str, phase: str) -> Callable[[], bool]:
    steps = {
        "verify": "verify_restore_parts",
        "safety backup": "safety_backup",
        "database": "restore_database_step",
        "buckets": "restore_bucket_step",
    }
    if phase == "database":

        def restoring() -> bool:
            return world.step_started(run_id, steps["database"]) and world.worker_runs(run_id, "pg_restore")

        return restoring
    return lambda: world.step_started(run_id, steps[phase])


# --- backup rows ----------------------------------------------------------------------------


def kill_backup_worker(world: World, row: Row, phase: str) -> Row:
    run_id = world.submit_backup()
    hit = world.wait_for(backup_phase(world, run_id, phase), 300, f"phase {phase}", run_id)
    if hit:
        killed = world.kill_run_worker(run_id)
        row.note(f"SIGKILL to run worker + {len(killed) - 1} child process(es)")
    return judge_backup(world, row, run_id, hit)


def kill_whole_tree(world: World, row: Row) -> Row:
    run_id = world.submit_backup()
    hit = world.wait_for(backup_phase(world, run_id, "upload"), 300, "upload", run_id)
    if hit:
        killed = world.kill_stack_tree()
        row.note(f"SIGKILL to {killed} processes (webserver, daemon, code servers, run worker)")
        # Nothing of the run is alive now; what is tested is that the restarted daemon's run
        # monitoring fails the orphaned STARTED run. Its maximum runtime (the world's, 90-270 s from
        # the run's start) would only add idle minutes: lower it for this dead run (Dagster's own
        # per-run max_runtime tag) so the first monitoring poll after the restart finds it over.
        world.instance.add_run_tags(run_id, {dg.MAX_RUNTIME_SECONDS_TAG: "1"})
        started = time.monotonic()
        world.start_stack()
        status = world.wait(run_id, timeout=world.max_runtime_seconds + 120)
        row.note(f"run marked {status.value} {time.monotonic() - started:.0f}s after the restart")
    return judge_backup(world, row, run_id, hit)


def terminate_pg_dump(world: World, row: Row) -> Row:
    run_id = world.submit_backup()
    hit = world.wait_for(backup_phase(world, run_id, "dump"), 300, "pg_dump", run_id)
    terminated = 0
    # The step retries once: terminate the dump connection again whenever it comes back.
    while hit and world.status(run_id) not in (OK, dg.DagsterRunStatus.FAILURE):
        pids = world.pg_dump_backends()
        if pids:
            world.terminate_backends(pids)
            terminated += len(pids)
        if world.step_started(run_id, "finalize_backup"):
            break
        time.sleep(0.1)
    row.note(f"pg_terminate_backend on {terminated} pg_dump connection(s)")
    return judge_backup(world, row, run_id, hit)


def stop_s3_during_run(world: World, row: Row) -> Row:
    before = world.fingerprint()
    run_id = world.submit_backup()
    hit = world.wait_for(backup_phase(world, run_id, "bucket export"), 300, "bucket export", run_id)
    if hit:
        world.s3.stop()
        row.note("S3 server stopped (SIGTERM) until the run ended, then restarted on its data")
        try:
            world.wait(run_id)
        finally:
            world.s3.start()
        if world.fingerprint() != before:
            row.note("the S3 server's data differs after its restart (drill problem, not the product's)")
    return judge_backup(world, row, run_id, hit)


def sigstop_s3_briefly(world: World, row: Row) -> Row:
    """S3 frozen for a few seconds mid-export (network stall): the client waits, the run continues."""
    run_id = world.submit_backup()
    hit = world.wait_for(backup_phase(world, run_id, "upload"), 300, "upload", run_id)
    if hit and world.s3.process is not None:
        os.killpg(world.s3.process.pid, signal.SIGSTOP)
        time.sleep(8)
        os.killpg(world.s3.process.pid, signal.SIGCONT)
        row.note("S3 server SIGSTOPped for 8 s, then SIGCONT")
    return judge_backup(world, row, run_id, hit)


def drive_fault(world: World, row: Row, preset: str, route: str, count: int, **extra: object) -> Row:
    world.drive.clear_faults()
    if preset == "expire_tokens":
        run_id = world.submit_backup()
        hit = world.wait_for(lambda: world.step_started(run_id, "export_bucket"), 300, "export", run_id)
        world.drive.expire_tokens()
    else:
        # Let the first requests of the run pass, so the fault lands inside the upload.
        world.drive.fault(preset, route=route, count=count, **extra)
        run_id = world.submit_backup()
        hit = True
    result = judge_backup(world, row, run_id, hit, next_run=False)
    fired = world.drive.stats().get("faults_fired", 0)
    result.note(f"Drive faults fired so far: {fired}")
    world.drive.clear_faults()
    if preset == "storage_quota":
        hit = fired > 0
    settle(world)
    next_status, next_id = world.backup()
    result.next_run_ok = next_status is OK and next_id is not None and verify_set(world, next_id) is None
    ok, detail = world.ledger_check()
    result.ledger_true = result.ledger_true and ok
    result.detail = detail
    if result.outcome is Outcome.MISSED and hit:
        result.outcome = Outcome.COMPLETED
    settle(world)
    return result


def disk_full_up_front(world: World, row: Row) -> Row:
    assert world.local_path is not None
    used = _used(world.local_path)
    world.resize_destination(used + (4 << 20))
    try:
        run_id = world.submit_backup()
        result = judge_backup(world, row, run_id, True, next_run=False)
    finally:
        world.resize_destination(None)
    row.note("destination tmpfs resized to used + 4 MiB before the run")
    return _next_backup(world, result)


def disk_fills_mid_write(world: World, row: Row) -> Row:
    assert world.local_path is not None
    world.resize_destination(_used(world.local_path) + (256 << 20))
    filler = world.local_path / "zz-filler.bin"
    run_id = world.submit_backup()
    try:
        hit = world.wait_for(backup_phase(world, run_id, "upload"), 300, "upload", run_id)
        if hit:
            written = fill_until_full(filler)
            row.note(f"destination (tmpfs) filled to the last byte ({written >> 20} MiB) mid-upload")
        world.wait(run_id)
    finally:
        filler.unlink(missing_ok=True)
        world.resize_destination(None)
    return judge_backup(world, row, run_id, hit)


def fill_until_full(path: Path) -> int:
    """Write zeros until the filesystem says ENOSPC; returns the bytes written."""
    block = b"\0" * (1 << 20)
    written = 0
    with open(path, "wb", buffering=0) as out:
        try:
            while True:
                written += out.write(block) or 0
        except OSError:
            return written


def _next_backup(world: World, row: Row) -> Row:
    settle(world)
    status, backup_id = world.backup()
    row.next_run_ok = status is OK and backup_id is not None and verify_set(world, backup_id) is None
    ok, detail = world.ledger_check()
    row.ledger_true = row.ledger_true and ok
    row.detail = detail
    settle(world)
    return row


def _used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


# --- restore rows ---------------------------------------------------------------------------


@dataclass
class RestoreBaseline:
    backup_id: str
    fingerprint: dict[str, str]


def restore_baseline(world: World) -> RestoreBaseline:
    settle(world)
    status, backup_id = world.backup()
    assert status is OK and backup_id, f"baseline backup {status}"
    settle(world)
    return RestoreBaseline(backup_id=backup_id, fingerprint=world.fingerprint())


def damage_data(world: World) -> None:
    """Changes a restore has to undo: objects deleted and overwritten, rows changed."""
    client = world.s3.client()
    for n, obj in enumerate(client.list_objects("avatars", recursive=True)):
        if n >= 20:
            break
        assert obj.object_name is not None
        client.remove_object("avatars", obj.object_name)
    with world.db.connect() as conn:
        conn.execute("UPDATE drill_filler SET payload = 'damaged' WHERE id % 1000 = 0")
        conn.commit()


def kill_restore_worker(world: World, row: Row, baseline: RestoreBaseline, phase: str) -> Row:
    damage_data(world)
    damaged = world.fingerprint()
    run_id = world.submit_restore(baseline.backup_id)
    hit = world.wait_for(restore_phase(world, run_id, phase), 300, f"restore {phase}", run_id)
    if hit:
        killed = world.kill_run_worker(run_id)
        row.note(f"SIGKILL to run worker + {len(killed) - 1} child process(es)")
    status = world.wait(run_id)
    row.run_status = status.value
    after_kill = world.fingerprint()
    if phase == "verify" and status is not OK and after_kill != damaged:
        row.note("data changed although the restore was killed while verifying")
    settle(world)
    rerun = world.submit_restore(baseline.backup_id)
    rerun_status = world.wait(rerun)
    restored = world.fingerprint()
    row.next_run_ok = rerun_status is OK and restored == baseline.fingerprint
    if restored != baseline.fingerprint:
        row.note("differs from the backup: " + "; ".join(differences(baseline.fingerprint, restored)))
        row.note(f"rerun {rerun} bucket steps: {bucket_counts(world, rerun)}")
    ok, detail = world.ledger_check()
    row.ledger_true = ok
    row.detail = detail
    if rerun_status is OK and not row.next_run_ok:
        row.outcome = Outcome.DATA_LOST
        row.note("rerun succeeded but the data differs from the backup")
    elif status is OK:
        row.outcome = Outcome.COMPLETED if hit else Outcome.MISSED
    else:
        row.outcome = Outcome.FAILED_CLEANLY if ok else Outcome.DATA_LOST
    settle(world)
    return row


def bucket_counts(world: World, run_id: str) -> dict[str, dict[str, object]]:
    counts = {}
    for record in world.instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_OUTPUT):
        if (record.step_key or "").startswith("restore_bucket_step") and record.dagster_event:
            metadata = getattr(record.dagster_event.event_specific_data, "metadata", {}) or {}
            counts[record.step_key or ""] = {
                k: getattr(v, "value", v)
                for k, v in metadata.items()
                if k in ("added", "overwritten", "failed")
            }
    return counts


# --- tampered parts -------------------------------------------------------------------------


def _part_path(world: World, backup_id: str, part_name: str) -> Path:
    dest = world.destination()
    for stored in dest.list(set_properties(INSTALLATION, backup_id)):
        if stored.properties.get(PROP_PART_NAME) == part_name:
            assert world.local_path is not None
            return world.local_path / stored.name
    raise FileNotFoundError(f"{part_name} of {backup_id}")


def database_parts_present(world: World, *backup_ids: str) -> bool:
    """Whether every set still has its database part (retention prunes old sets as rows add backups)."""
    try:
        for backup_id in backup_ids:
            _part_path(world, backup_id, PART_DATABASE)
    except FileNotFoundError:
        return False
    return True


def tamper(kind: str, data: bytes, other: bytes) -> bytes:
    header, _ = read_header(iter([data]))
    start = header.size
    chunk = header.chunk_size + 16  # AES-GCM tag per chunk
    if kind == "header bit":
        return data[:40] + bytes([data[40] ^ 0x01]) + data[41:]
    if kind == "chunk swap":
        a, b = data[start : start + chunk], data[start + chunk : start + 2 * chunk]
        return data[:start] + b + a + data[start + 2 * chunk :]
    if kind == "truncation":
        return data[: start + chunk + (chunk // 2)]
    if kind == "trailing data":
        return data + b"\x00" * 4096
    if kind == "splice":
        # The second chunk replaced by the second chunk of another backup's same part.
        other_header, _ = read_header(iter([other]))
        o = other_header.size
        return data[: start + chunk] + other[o + chunk : o + 2 * chunk] + data[start + 2 * chunk :]
    if kind == "part of another backup":
        return other
    raise ValueError(kind)


def tampered_restore(world: World, row: Row, kind: str, victim: str, other: str) -> Row:
    """A restore of a tampered set must be refused before anything changes."""
    path = _part_path(world, victim, PART_DATABASE)
    original = path.read_bytes()
    other_bytes = _part_path(world, other, PART_DATABASE).read_bytes()
    path.write_bytes(tamper(kind, original, other_bytes))
    try:
        before = world.fingerprint()
        run_id = world.submit_restore(victim, scope="database")
        status = world.wait(run_id)
        row.run_status = status.value
        unchanged = world.fingerprint() == before
        if not unchanged:
            row.note("data changed by the restore of a tampered set")
        refused_before_change = status is not OK and unchanged
        why = verify_set(world, victim)
        row.note(f"verification of the tampered set: {why or 'PASSED'}")
    finally:
        path.write_bytes(original)
    settle(world)
    ok, detail = world.ledger_check()
    row.ledger_true = ok
    row.detail = detail
    rerun = world.submit_restore(victim, scope="database", dry_run=True)
    row.next_run_ok = world.wait(rerun) is OK
    if status is OK:
        row.outcome = Outcome.DATA_LOST
    else:
        row.outcome = Outcome.FAILED_CLEANLY if refused_before_change and why else Outcome.DATA_LOST
    settle(world)
    return row


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]
