"""Incremental object backups (issue 18) against real components: PostgreSQL, SeaweedFS, a local folder.

A chain of backups with adds, same-size changes, deletes and re-adds: every set's inventory part
says where each body lives, only new/changed objects are uploaded, and (restore tests below)
every set restores to the bucket as it was at its time.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from minio import Minio

from backup_pipeline.archive.inventory import InventoryRecord, inventory_part_name, read_inventory
from backup_pipeline.archive.manifest import MANIFEST_FORMAT_V2, Manifest
from backup_pipeline.archive.stream_crypto import decrypt_stream
from backup_pipeline.destinations.local_folder import LocalFolderDestination
from backup_pipeline.ops.backup import build_backup_job
from backup_pipeline.ops.retention import retention_job
from backup_pipeline.ops.verification import verify_backup_job
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.policy import BackupPolicyResource
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.services.backup_parts import PART_MANIFEST, PROP_PART_NAME
from backup_pipeline.services.backup_upload import has_manifest, list_sets
from backup_pipeline_tests.backup_helpers import drive_destination, start_child_script
from backup_pipeline_tests.fixtures.drive import DriveFixture
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server
from backup_pipeline_tests.hostile.compare import compare_buckets, snapshot_buckets
from backup_pipeline_tests.restore_support import (
    INSTALLATION,
    Installation,
    confirm,
    s3_snapshot,
    step_metadata,
    wipe_database,
)

BUCKET = "incr-media"
OTHER = "incr-docs"
MiB = 1024 * 1024


@pytest.fixture()
def installation(pg_database: PgDatabase, s3: S3Server, tmp_path: Path) -> Installation:
    wipe_database(pg_database)
    with pg_database.connect() as conn:
        conn.execute("CREATE TABLE notes (id int primary key, body text)")
        conn.execute("INSERT INTO notes VALUES (1, 'one'), (2, 'two')")
        conn.commit()
    return Installation(pg_database, s3, tmp_path)


def put(client: Minio, bucket: str, key: str, data: bytes, **metadata: str) -> None:
    client.put_object(
        bucket, key, io.BytesIO(data), len(data), content_type="text/plain", metadata=metadata or None
    )


def backup(
    inst: Installation, instance: dg.DagsterInstance, dest: DestinationResource | None = None, **config: Any
) -> str:
    result = backup_run(inst, instance, dest, **config)
    return str(result.dagster_run.tags["backup_pipeline/backup_id"])


def backup_run(
    inst: Installation, instance: dg.DagsterInstance, dest: DestinationResource | None = None, **config: Any
) -> dg.ExecuteInProcessResult:
    job = build_backup_job(executor_def=dg.in_process_executor)
    result = job.execute_in_process(
        instance=instance,
        resources=inst.resources(dest),
        run_config={
            "ops": {
                "plan_backup": {
                    "config": {
                        "installation_id": INSTALLATION,
                        "exclude_table_patterns": [],
                        "incremental_objects": True,
                        **config,
                    }
                }
            }
        },
    )
    assert result.success
    return result


def log_messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [e.user_message for e in instance.all_logs(run_id)]


def destination(inst: Installation) -> LocalFolderDestination:
    return LocalFolderDestination(str(inst.backups_dir))


def _files(inst: Installation, backup_id: str) -> dict[str, Any]:
    return {f.properties[PROP_PART_NAME]: f for f in destination(inst).list({"backupId": backup_id})}


def manifest_of(inst: Installation, backup_id: str) -> Manifest:
    stored = _files(inst, backup_id)[PART_MANIFEST]
    keyring = inst.resources()["keys"].keyring()
    plaintext = b"".join(
        decrypt_stream(
            destination(inst).get(stored.id),
            expected_backup_id=backup_id,
            expected_part_name=PART_MANIFEST,
            org_keyring=keyring,
        )
    )
    return Manifest.from_json(plaintext)


def inventory_of(inst: Installation, backup_id: str, bucket: str) -> list[InventoryRecord]:
    name = inventory_part_name(bucket)
    stored = _files(inst, backup_id)[name]
    keyring = inst.resources()["keys"].keyring()
    return list(
        read_inventory(
            decrypt_stream(
                destination(inst).get(stored.id),
                expected_backup_id=backup_id,
                expected_part_name=name,
                org_keyring=keyring,
            )
        )
    )


def chain(inst: Installation, instance: dg.DagsterInstance) -> list[tuple[str, dict[Any, Any]]]:
    """Four sets: full, nothing changed, change+delete+add, re-add; each with the S3 state it saw.

    The live-share rule is off (0): the deleted 2 MiB object leaves the first part mostly dead,
    which would otherwise make the fourth set a full one (tested at the end of the chain test)."""
    client = inst.s3.client()
    for bucket in (BUCKET, OTHER):
        client.make_bucket(bucket)
    put(client, BUCKET, "a.txt", b"version one", author="x")
    put(client, BUCKET, "b/\u00fcber.txt", b"umlaut")
    put(client, BUCKET, "c.bin", os.urandom(2 * MiB))
    put(client, BUCKET, "dir/", b"")
    put(client, OTHER, "report.pdf", b"%PDF-1.4 report")
    sets = []
    sets.append((backup(inst, instance, incremental_min_live_share=0.0), s3_snapshot(client)))
    sets.append((backup(inst, instance, incremental_min_live_share=0.0), s3_snapshot(client)))
    put(client, BUCKET, "a.txt", b"version two", author="y")  # same size, new content
    client.remove_object(BUCKET, "c.bin")
    put(client, BUCKET, "e.txt", b"added later")
    sets.append((backup(inst, instance, incremental_min_live_share=0.0), s3_snapshot(client)))
    put(client, BUCKET, "c.bin", b"re-added, small now")
    sets.append((backup(inst, instance, incremental_min_live_share=0.0), s3_snapshot(client)))
    return sets


def test_chain_inventories_and_uploads(installation: Installation, instance: dg.DagsterInstance) -> None:
    inst = installation
    (a, _), (b, _), (c, _), (d, _) = chain(inst, instance)

    ma = manifest_of(inst, a)
    assert ma.format == MANIFEST_FORMAT_V2
    assert ma.inventory == []  # the inventory is its own part, not in the manifest
    sa = ma.bucket(BUCKET)
    assert sa is not None and sa.mode == "full" and sa.since_full == 0 and sa.referenced_parts == []
    assert sa.inventory_part == inventory_part_name(BUCKET)
    assert sa.object_count == 4 and sa.total_objects == 4
    inv_a = inventory_of(inst, a, BUCKET)
    assert [r.key for r in inv_a] == ["a.txt", "b/\u00fcber.txt", "c.bin", "dir/"]
    assert {(r.backup_id, r.part) for r in inv_a} == {(a, f"bucket-{BUCKET}")}
    assert inv_a[0].metadata == {"author": "x"} and inv_a[0].content_type == "text/plain"

    # Nothing changed: the second set uploads no object bytes and points at A's part.
    sb = manifest_of(inst, b).bucket(BUCKET)
    assert sb is not None and sb.mode == "incremental" and sb.base_backup_id == a and sb.since_full == 1
    assert sb.object_count == 0 and sb.object_bytes == 0
    assert sb.diff == {
        "new": 0,
        "new_bytes": 0,
        "changed": 0,
        "changed_bytes": 0,
        "unchanged": 4,
        "unchanged_bytes": sa.object_bytes,
        "deleted": 0,
        "deleted_bytes": 0,
    }
    (ref,) = sb.referenced_parts or []
    assert (ref.backup_id, ref.part_name, ref.live_objects, ref.live_bytes) == (
        a,
        f"bucket-{BUCKET}",
        4,
        sa.object_bytes,
    )
    assert ref.ciphertext_sha256 == ma.part(f"bucket-{BUCKET}").ciphertext_sha256
    assert inventory_of(inst, b, BUCKET) == inv_a
    # Its progress covers the objects carried over without a read: the step ends at 100 %.
    (run_b,) = instance.get_runs(filters=dg.RunsFilter(tags={"backup_pipeline/backup_id": b}))
    progress_lines = [
        m
        for m in log_messages(instance, run_b.run_id)
        if m.startswith(f"bucket {BUCKET}:") and " objects · " in m
    ]
    final = progress_lines[-1]
    assert "4 of 4 objects" in final and "100.0%" in final, final

    # Same-size change, delete, add.
    sc = manifest_of(inst, c).bucket(BUCKET)
    assert sc is not None and sc.diff is not None
    assert (sc.diff["new"], sc.diff["changed"], sc.diff["deleted"], sc.diff["unchanged"]) == (1, 1, 1, 2)
    assert sc.diff["deleted_bytes"] == 2 * MiB and sc.object_count == 2
    inv_c = {r.key: r for r in inventory_of(inst, c, BUCKET)}
    assert sorted(inv_c) == ["a.txt", "b/\u00fcber.txt", "dir/", "e.txt"]
    assert inv_c["a.txt"].backup_id == c and inv_c["a.txt"].metadata == {"author": "y"}
    assert inv_c["e.txt"].backup_id == c
    assert inv_c["b/\u00fcber.txt"].backup_id == a and inv_c["dir/"].backup_id == a
    (ref,) = sc.referenced_parts or []
    assert ref.backup_id == a and ref.live_objects == 2 and ref.object_bytes == sa.object_bytes

    # Re-added key: a new object in D; the rest still points at A and C.
    sd = manifest_of(inst, d).bucket(BUCKET)
    assert sd is not None and sd.diff is not None and (sd.diff["new"], sd.diff["unchanged"]) == (1, 4)
    inv_d = {r.key: r.backup_id for r in inventory_of(inst, d, BUCKET)}
    assert inv_d == {"a.txt": c, "b/\u00fcber.txt": a, "c.bin": d, "dir/": a, "e.txt": c}
    assert sorted(r.backup_id for r in sd.referenced_parts or []) == sorted([a, c])
    # The untouched bucket: every set after the first points at the first.
    so = manifest_of(inst, d).bucket(OTHER)
    assert so is not None and so.object_count == 0 and so.since_full == 3

    # With the default live share (50 %): D references A's part, of which 6 of 2 MiB + 17 bytes are
    # still used, so the next set of that bucket is a full one; the untouched bucket stays incremental.
    e = manifest_of(inst, backup(inst, instance))
    se, so = e.bucket(BUCKET), e.bucket(OTHER)
    assert se is not None and se.mode == "full" and se.mode_reason is not None
    assert "still used" in se.mode_reason and se.object_count == 5 and se.referenced_parts == []
    assert so is not None and so.mode == "incremental" and so.since_full == 4


def test_full_every_n_and_unreadable_previous_inventory(
    installation: Installation, instance: dg.DagsterInstance
) -> None:
    inst = installation
    client = inst.s3.client()
    client.make_bucket(BUCKET)
    put(client, BUCKET, "k1", b"one")
    modes = []
    ids = []
    for _ in range(4):
        ids.append(backup(inst, instance, full_every=3))
        summary = manifest_of(inst, ids[-1]).bucket(BUCKET)
        assert summary is not None
        modes.append((summary.mode, summary.since_full))
    assert modes == [("full", 0), ("incremental", 1), ("incremental", 2), ("full", 0)]

    # A damaged previous inventory: the next backup is a full one and says why.
    stored = _files(inst, ids[-1])[inventory_part_name(BUCKET)]
    path = inst.backups_dir / stored.name
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    result = backup_run(inst, instance, full_every=3)
    after = str(result.dagster_run.tags["backup_pipeline/backup_id"])
    summary = manifest_of(inst, after).bucket(BUCKET)
    assert summary is not None and summary.mode == "full"
    assert summary.mode_reason == "previous inventory unusable"
    warnings = [m for m in log_messages(instance, result.run_id) if "full backup:" in m]
    assert warnings and ids[-1] in warnings[0] and "cannot be read" in warnings[0]


def restore_files(inst: Installation, instance: dg.DagsterInstance, backup_id: str, **config: Any) -> Any:
    result = inst.restore(
        instance, backup_id=backup_id, scope="files", dry_run=False, confirm=confirm(backup_id), **config
    )
    assert result.success, [
        getattr(getattr(e.event_specific_data, "user_failure_data", None), "description", e.message)
        for e in result.all_events
        if e.is_failure
    ]
    return step_metadata(result, "restore_bucket_step")


def test_every_set_of_the_chain_restores_as_the_bucket_was(
    installation: Installation, instance: dg.DagsterInstance
) -> None:
    inst = installation
    sets = chain(inst, instance)
    for backup_id, expected in sets:
        inst.s3.reset()
        dry = inst.restore(instance, backup_id=backup_id, scope="files")
        assert dry.success
        predicted = step_metadata(dry, "restore_bucket_step")
        assert sum(m["added"] for m in predicted.values()) == len(expected)
        done = restore_files(inst, instance, backup_id)
        assert {k: v["added"] for k, v in done.items()} == {k: v["added"] for k, v in predicted.items()}
        assert s3_snapshot(inst.s3.client()) == expected, backup_id
    # The fidelity comparator (headers, metadata, tags, bytes) on the last set.
    stored = snapshot_buckets(inst.s3)
    inst.s3.reset()
    restore_files(inst, instance, sets[-1][0])
    report = compare_buckets(stored, snapshot_buckets(inst.s3))
    assert not report.differences, report.render()


def test_restore_into_a_populated_bucket_keeps_the_conflict_policy(
    installation: Installation, instance: dg.DagsterInstance
) -> None:
    inst = installation
    sets = chain(inst, instance)
    client = inst.s3.client()
    # The current bucket differs from set C: c.bin was re-added. skip keeps it, only names are compared.
    c_id, c_state = sets[2]
    put(client, BUCKET, "a.txt", b"local edit!")
    done = restore_files(inst, instance, c_id, conflict_policy="skip", buckets=[BUCKET])
    (summary,) = done.values()
    assert summary["skipped"] == 4  # a.txt, b/über.txt, dir/, e.txt exist already
    after = s3_snapshot(client)
    assert after[(BUCKET, "c.bin")] == sets[3][1][(BUCKET, "c.bin")]  # not in C: left as it was
    done = restore_files(inst, instance, c_id, conflict_policy="overwrite", buckets=[BUCKET])
    after = s3_snapshot(client)
    assert after[(BUCKET, "a.txt")] == c_state[(BUCKET, "a.txt")]


def test_disaster_recovery_cli_restores_an_incremental_set(
    installation: Installation, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    inst = installation
    sets = chain(inst, instance)
    backup_id, expected = sets[2]  # C: bodies in A's part and in its own
    key_file = inst.export_recovery_key(tmp_path / "recovery-key.txt")
    inst.s3.reset()
    fresh = tmp_path / "new-host"
    fresh.mkdir()
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(fresh),
        "LANG": "C.UTF-8",
        "BACKUP_PIPELINE_DESTINATION": "local",
        "BACKUP_PIPELINE_LOCAL_DESTINATION_PATH": str(inst.backups_dir),
        "BACKUP_PIPELINE_INSTALLATION_ID": INSTALLATION,
        "BACKUP_PIPELINE_STATE_DIR": str(fresh / "state"),
        "BACKUP_PIPELINE_APP_DATABASE_URL": inst.db.url,
        **inst.s3.env(),
    }
    done = subprocess.run(
        [
            "backup-pipeline",
            "restore",
            "--recovery-key-file",
            str(key_file),
            "--backup-id",
            backup_id,
            "--scope",
            "files",
            "--no-dry-run",
            "--confirm",
            f"restore {backup_id}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=fresh,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert s3_snapshot(inst.s3.client()) == expected


def retention(inst: Installation, instance: dg.DagsterInstance, keep_last: int) -> dict[str, Any]:
    result = retention_job.execute_in_process(
        instance=instance,
        resources={
            **{k: v for k, v in inst.resources().items() if k in ("destination", "app_db", "keys")},
            "backup_policy": BackupPolicyResource(
                installation_id=INSTALLATION, state_dir=str(inst.state_dir), retention_keep_last=keep_last
            ),
        },
    )
    assert result.success
    return step_metadata(result, "apply_retention_op")["apply_retention_op"]


def test_retention_keeps_the_parts_a_kept_set_references(
    installation: Installation, instance: dg.DagsterInstance
) -> None:
    inst = installation
    (a, _), (b, _), (c, c_state), (d, d_state) = chain(inst, instance)
    before_a = set(_files(inst, a))

    meta = retention(inst, instance, keep_last=2)  # keeps C and D; A and B are forgotten

    assert set(meta["deleted"]) == {a, b}
    # C and D point at A's bucket parts: those and their indexes stay, A's manifest, database
    # and inventories go.
    a_kept = {f"{kind}-{name}" for kind in ("bucket", "index") for name in (BUCKET, OTHER)}
    assert meta["parts_kept_for_kept_sets"] == {a: dict.fromkeys(sorted(a_kept), sorted([c, d]))}
    assert set(_files(inst, a)) == a_kept < before_a
    assert _files(inst, b) == {}  # B's own (empty) parts are referenced by no one
    # The kept sets still restore exactly (the verify pass authenticates A's parts too).
    for backup_id, expected in ((c, c_state), (d, d_state)):
        inst.s3.reset()
        restore_files(inst, instance, backup_id)
        assert s3_snapshot(inst.s3.client()) == expected

    # A backup's clean-up of dead sets leaves A's referenced remains alone. The restores rewrote
    # every object (new last-modified), so the next backup finds all five changed.
    e = backup(inst, instance, incremental_min_live_share=0.0)
    assert set(_files(inst, a)) == a_kept
    se = manifest_of(inst, e).bucket(BUCKET)
    assert se is not None and se.mode == "incremental" and se.diff is not None
    assert (se.diff["changed"], se.diff["unchanged"], se.referenced_parts) == (5, 0, [])

    # A full of both buckets: once no kept set references A's parts, retention collects them.
    f = backup(inst, instance, full_every=1)
    meta = retention(inst, instance, keep_last=1)
    assert _files(inst, a) == {} and meta["parts_kept_for_kept_sets"] == {}
    assert {bid for bid in (a, b, c, d, e) if _files(inst, bid)} == set()
    inst.s3.reset()
    restore_files(inst, instance, f)
    assert s3_snapshot(inst.s3.client()) == d_state


def _writing_more_than(temp: Path, size: int) -> bool:
    """A part being written (the local folder's ``.tmp/<uuid>.part``) has passed ``size`` bytes."""
    for path in temp.glob("*.part"):
        try:
            if path.stat().st_size > size:
                return True
        except FileNotFoundError:  # renamed into place meanwhile
            continue
    return False


CRASHING_BACKUP = """
import json, sys
import dagster as dg
from backup_pipeline.ops.backup import build_backup_job
from backup_pipeline.ops.retention import retention_job
from backup_pipeline.ops.verification import verify_backup_job
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.policy import BackupPolicyResource
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.resources.s3 import S3Resource
args = json.loads(sys.argv[1])
resources = {
    "app_db": PostgresResource(database_url=args["db"]),
    "s3": S3Resource(endpoint=args["endpoint"], access_key=args["access_key"], secret_key=args["secret_key"]),
    "destination": DestinationResource(
        kind="local", installation_id=args["installation"], state_dir=args["state"], local_path=args["backups"]
    ),
    "keys": BackupKeysResource(org_secret_file=args["org_secret"], state_dir=args["state"]),
}
config = {"installation_id": args["installation"], "exclude_table_patterns": [], "incremental_objects": True}
with dg.instance_for_test() as instance:
    build_backup_job(executor_def=dg.in_process_executor).execute_in_process(
        instance=instance, resources=resources, run_config={"ops": {"plan_backup": {"config": config}}}
    )
print("finished", flush=True)
"""


def test_a_backup_killed_mid_way_leaves_every_kept_set_restorable(
    installation: Installation, instance: dg.DagsterInstance
) -> None:
    inst = installation
    client = inst.s3.client()
    client.make_bucket(BUCKET)
    for n in range(20):
        put(client, BUCKET, f"small/{n:02d}", os.urandom(1000))
    first = backup(inst, instance)
    first_state = s3_snapshot(client)
    put(client, BUCKET, "small/05", os.urandom(1000))
    put(client, BUCKET, "zz-large.bin", os.urandom(48 * MiB))
    args = {
        "db": inst.db.url,
        "endpoint": inst.s3.endpoint,
        "access_key": inst.s3.access_key,
        "secret_key": inst.s3.secret_key,
        "installation": INSTALLATION,
        "state": str(inst.state_dir),
        "backups": str(inst.backups_dir),
        "org_secret": str(inst.org_secret_file),
    }
    child = start_child_script(CRASHING_BACKUP, args)
    try:
        # Killed while the bucket part (the 48 MiB object) is being written: the inventory part
        # is under way on its own thread, no manifest exists.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and child.poll() is None:
            if _writing_more_than(inst.backups_dir / ".tmp", MiB):
                break
            time.sleep(0.005)
    finally:
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=60)
    assert "finished" not in out
    # The killed run still holds the data lease; fail_dead_lease_holder frees it once its heartbeat
    # is stale (10 min). Here it is freed at once, as that sensor would.
    app_db = PostgresResource(database_url=inst.db.url)
    holder = app_db.data_lease_holder()
    if holder is not None:
        app_db.release_data_lease(holder.run_id)
    sets = list_sets(destination(inst), INSTALLATION)
    assert [bid for bid, files in sets.items() if has_manifest(files)] == [first]

    # The next backup removes the dead remains and completes, incremental on the kept set;
    # both sets restore as the bucket was at their time.
    state = s3_snapshot(client)
    after = backup(inst, instance)
    assert set(list_sets(destination(inst), INSTALLATION)) == {first, after}
    summary = manifest_of(inst, after).bucket(BUCKET)
    assert summary is not None and summary.mode == "incremental" and summary.diff is not None
    assert (summary.diff["new"], summary.diff["changed"], summary.diff["unchanged"]) == (1, 1, 19)
    for backup_id, expected in ((first, first_state), (after, state)):
        inst.s3.reset()
        restore_files(inst, instance, backup_id)
        assert s3_snapshot(client) == expected


def test_on_google_drive_an_incremental_set_uploads_only_changes_restores_and_verifies(
    installation: Installation, instance: dg.DagsterInstance, drive: DriveFixture, tmp_path: Path
) -> None:
    inst = installation
    dest = drive_destination(
        drive, tmp_path, installation_id=INSTALLATION, retry_attempts=3, retry_max_wait_seconds=0.2
    )
    client = inst.s3.client()
    client.make_bucket(BUCKET)
    put(client, BUCKET, "big.bin", os.urandom(3 * MiB))
    put(client, BUCKET, "note.txt", b"first", lang="en")
    first = backup(inst, instance, dest)
    put(client, BUCKET, "note.txt", b"other", lang="de")  # same size, new content
    put(client, BUCKET, "new.txt", b"added")
    state = s3_snapshot(client)
    second = backup(inst, instance, dest)
    drive_files = [f for f in drive.files() if f.get("appProperties", {}).get("backupId") == second]
    bucket_file = next(f for f in drive_files if f["appProperties"]["partName"] == f"bucket-{BUCKET}")
    assert int(bucket_file["size"]) < MiB  # the 3 MiB object was not uploaded again
    assert {f["appProperties"]["partName"] for f in drive_files} == {
        "database",
        f"bucket-{BUCKET}",
        f"index-{BUCKET}",
        inventory_part_name(BUCKET),
        PART_MANIFEST,
    }

    inst.s3.reset()
    result = restore_job_on(inst, instance, dest, second)
    assert result.success
    assert s3_snapshot(client) == state
    assert first != second

    verified = verify_backup_job.execute_in_process(
        instance=instance,
        resources={
            **{k: v for k, v in inst.resources(dest).items() if k != "s3"},
            "backup_policy": BackupPolicyResource(
                installation_id=INSTALLATION, state_dir=str(inst.state_dir)
            ),
        },
        run_config={"ops": {"verify_backup_set_op": {"config": {"backup_id": second, "sample_share": 1.0}}}},
        raise_on_error=False,
    )
    assert verified.success, [e.message for e in verified.all_events if e.is_failure]


def restore_job_on(
    inst: Installation, instance: dg.DagsterInstance, dest: DestinationResource, backup_id: str
) -> dg.ExecuteInProcessResult:
    from backup_pipeline.ops.restore import restore_job

    return restore_job.execute_in_process(
        instance=instance,
        resources=inst.resources(dest),
        run_config={
            "ops": {
                "start_restore": {
                    "config": {
                        "backup_id": backup_id,
                        "scope": "files",
                        "dry_run": False,
                        "confirm": confirm(backup_id),
                    }
                }
            }
        },
    )


def test_inventory_lines_wait_for_the_objects_before_them(
    installation: Installation, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With at most one held line, the listing pauses behind every object being read ahead, and
    the inventory still comes out complete and in key order."""
    from backup_pipeline.services import backup_incremental

    inst = installation
    client = inst.s3.client()
    client.make_bucket(BUCKET)
    for n in range(40):
        put(client, BUCKET, f"k{n:02d}", os.urandom(200))
    first = backup(inst, instance)
    for n in range(0, 40, 3):
        put(client, BUCKET, f"k{n:02d}", os.urandom(200))  # changed
    put(client, BUCKET, "k99", b"new")
    client.remove_object(BUCKET, "k01")
    state = s3_snapshot(client)
    monkeypatch.setattr(backup_incremental, "MAX_HELD_LINES", 1)
    second = backup(inst, instance)
    summary = manifest_of(inst, second).bucket(BUCKET)
    assert summary is not None and summary.diff is not None
    assert (
        summary.diff["changed"],
        summary.diff["new"],
        summary.diff["deleted"],
        summary.diff["unchanged"],
    ) == (
        14,
        1,
        1,
        25,
    )
    records = inventory_of(inst, second, BUCKET)
    assert [r.key for r in records] == sorted(k for b, k in state if b == BUCKET)
    assert {r.key for r in records if r.backup_id == first} == {
        f"k{n:02d}" for n in range(40) if n % 3 and n != 1
    }
    inst.s3.reset()
    restore_files(inst, instance, second)
    assert s3_snapshot(client) == state
