"""The restore job in Dagster (execute_in_process) against real Postgres, SeaweedFS and a local
folder destination, after a real backup job run of the sample app (three buckets)."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import dagster as dg
import pytest

from backup_pipeline import ledger
from backup_pipeline.archive.keys import OrgKeyring
from backup_pipeline.destinations.local_folder import LocalFolderDestination
from backup_pipeline.resources.postgres import locate_pg_tools
from backup_pipeline.services import restore as svc
from backup_pipeline.services.backup_parts import PROP_PART_NAME
from backup_pipeline_tests.fixtures.postgres import PgDatabase, drop_database
from backup_pipeline_tests.fixtures.s3 import S3Server
from backup_pipeline_tests.restore_support import (
    BUCKETS,
    INSTALLATION,
    Installation,
    confirm,
    normalised_dump,
    s3_snapshot,
    step_metadata,
    wipe_database,
)


@pytest.fixture()
def installation(pg_database: PgDatabase, s3: S3Server, tmp_path: Path) -> Installation:
    wipe_database(pg_database)
    inst = Installation(pg_database, s3, tmp_path)
    inst.seed()
    return inst


def _part_file(inst: Installation, backup_id: str, part: str) -> Path:
    dest = LocalFolderDestination(str(inst.backups_dir))
    (stored,) = [f for f in dest.list({"backupId": backup_id}) if f.properties.get(PROP_PART_NAME) == part]
    return inst.backups_dir / stored.name


def test_round_trip_full_restore(installation: Installation, instance: dg.DagsterInstance) -> None:
    inst = installation
    client = inst.s3.client()
    db_before, s3_before = normalised_dump(inst.db.url), s3_snapshot(client)
    assert {b for b, _ in s3_before} == set(BUCKETS)
    backup_id = inst.backup(instance)

    inst.s3.reset()
    wipe_database(inst.db)
    assert s3_snapshot(client) == {}

    refused = inst.restore(instance, backup_id=backup_id, dry_run=False, confirm="restore latest")
    assert not refused.success
    assert "confirm" in _failure_text(refused)

    dry = inst.restore(instance, backup_id="latest")
    assert dry.success
    predicted = step_metadata(dry, "restore_bucket_step")
    assert sum(m["added"] for m in predicted.values()) == len(s3_before)
    assert s3_snapshot(client) == {}, "a dry run changes nothing"

    result = inst.restore(instance, backup_id=backup_id, dry_run=False, confirm=confirm(backup_id))
    assert result.success, _failure_text(result)
    assert normalised_dump(inst.db.url) == db_before
    assert s3_snapshot(client) == s3_before
    done = step_metadata(result, "restore_bucket_step")
    assert {k: v["added"] for k, v in done.items()} == {k: v["added"] for k, v in predicted.items()}
    finish = step_metadata(result, "finish_restore")["finish_restore"]
    assert finish["consistency"]["rows_pointing_to_missing_objects"] == 0
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    assert run.tags["backup_pipeline/restore_of"] == backup_id
    assert run.tags["backup_pipeline/restore_outcome"] == "restored"
    assert run.tags["backup_pipeline/launched_by"]


def test_partial_restore_each_policy_matches_dry_run(
    installation: Installation, instance: dg.DagsterInstance
) -> None:
    inst = installation
    client = inst.s3.client()
    bucket = "avatars"
    backup_id = inst.backup(instance)
    original = {k: v for k, v in s3_snapshot(client).items() if k[0] == bucket}
    keys = sorted(k for _, k in original)
    changed, removed = keys[0], keys[1]

    for policy in svc.ConflictPolicy:
        # Current state: one object changed, one deleted, one extra object, the rest identical.
        client.put_object(bucket, changed, io.BytesIO(b"edited after the backup"), 23)
        client.remove_object(bucket, removed)
        client.put_object(bucket, "extra-after-backup.txt", io.BytesIO(b"new"), 3)
        before = s3_snapshot(client)

        options = {
            "backup_id": backup_id,
            "scope": "files",
            "buckets": [bucket],
            "conflict_policy": policy.value,
        }
        dry = inst.restore(instance, **options)
        assert dry.success, _failure_text(dry)
        assert s3_snapshot(client) == before
        real = inst.restore(instance, **options, dry_run=False, confirm=confirm(backup_id))
        assert real.success, _failure_text(real)
        (predicted,) = step_metadata(dry, "restore_bucket_step").values()
        (done,) = step_metadata(real, "restore_bucket_step").values()
        counts = ("added", "overwritten", "skipped", "kept_both", "failed")
        assert {c: predicted[c] for c in counts} == {c: done[c] for c in counts}, policy

        after = s3_snapshot(client)
        n = len(original)
        expect = {
            svc.ConflictPolicy.SKIP: (1, 0, n - 1, 0),
            svc.ConflictPolicy.OVERWRITE: (1, n - 1, 0, 0),
            svc.ConflictPolicy.IF_DIFFERENT: (1, 1, n - 2, 0),
            svc.ConflictPolicy.KEEP_BOTH: (1, 0, n - 2, 1),
        }[policy]
        assert (done["added"], done["overwritten"], done["skipped"], done["kept_both"]) == expect
        # Object by object.
        assert after[(bucket, removed)] == original[(bucket, removed)], "deleted object is back"
        assert after[(bucket, "extra-after-backup.txt")] == before[(bucket, "extra-after-backup.txt")]
        if policy in (svc.ConflictPolicy.OVERWRITE, svc.ConflictPolicy.IF_DIFFERENT):
            assert after[(bucket, changed)] == original[(bucket, changed)]
        else:
            assert after[(bucket, changed)] == before[(bucket, changed)]
        if policy is svc.ConflictPolicy.KEEP_BOTH:
            copy = (bucket, svc.keep_both_key(changed, backup_id))
            assert after[copy] == original[(bucket, changed)]
            client.remove_object(bucket, copy[1])
        for key in keys[2:]:
            assert after[(bucket, key)] == original[(bucket, key)]
        assert {k for k in after if k[0] != bucket} == {k for k in before if k[0] != bucket}


def test_flipped_byte_is_refused_before_anything_changes(
    installation: Installation, instance: dg.DagsterInstance
) -> None:
    inst = installation
    client = inst.s3.client()
    backup_id = inst.backup(instance)
    # Change the live data so a restore would be visible.
    client.put_object("media", "changed-after-backup.txt", io.BytesIO(b"live"), 4)
    with inst.db.connect() as conn:
        conn.execute("DELETE FROM comments WHERE id % 2 = 0")
    db_before, s3_before = normalised_dump(inst.db.url), s3_snapshot(client)

    part = _part_file(inst, backup_id, "bucket-media")
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x01
    part.write_bytes(bytes(data))

    result = inst.restore(
        instance, backup_id=backup_id, dry_run=False, confirm=confirm(backup_id), conflict_policy="overwrite"
    )
    assert not result.success
    text = _failure_text(result)
    assert "bucket-media" in text and "nothing was restored" in text
    assert normalised_dump(inst.db.url) == db_before
    assert s3_snapshot(client) == s3_before
    failed = [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failed == ["verify_restore_parts"]


def _failure_text(result: dg.ExecuteInProcessResult) -> str:
    texts = []
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            data = event.event_specific_data
            error = getattr(data, "error", None)
            user = getattr(data, "user_failure_data", None)
            texts.append(str(getattr(user, "description", "") or ""))
            if error is not None:
                texts.append(error.message)
    return "\n".join(texts)


def test_truncated_part_and_part_of_another_backup_are_refused(
    installation: Installation, instance: dg.DagsterInstance
) -> None:
    inst = installation
    first = inst.backup(instance)
    second = inst.backup(instance)
    dest = LocalFolderDestination(str(inst.backups_dir))
    keys = svc.RestoreKeys(org_keyring=inst.resources()["keys"].keyring())

    # A part of backup `second` offered where `first`'s part is expected: the header binds
    # backup id and part name, so it is refused even with matching sizes and hashes.
    resolved = svc.resolve_backup(dest, keys, first)
    other = svc.resolve_backup(dest, keys, second)
    resolved.parts["bucket-media"] = svc.PartRef(**{**other.parts["bucket-media"].__dict__})
    with pytest.raises(svc.PartVerificationError, match=f"belongs to backup '{second}'"):
        svc.verify_part(dest, keys, resolved, "bucket-media")

    # Truncated on the destination: refused before anything is touched, naming the part.
    db_before = normalised_dump(inst.db.url)
    part = _part_file(inst, first, "database")
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])
    result = inst.restore(instance, backup_id=first, dry_run=False, confirm=confirm(first))
    assert not result.success
    assert "database" in _failure_text(result)
    assert normalised_dump(inst.db.url) == db_before


def test_safety_backup_is_a_normal_set_tagged_pre_restore(
    installation: Installation, instance: dg.DagsterInstance
) -> None:
    inst = installation
    backup_id = inst.backup(instance)
    backed_up = normalised_dump(inst.db.url)
    with inst.db.connect() as conn:
        conn.execute("DELETE FROM comments WHERE id % 3 = 0")
        conn.execute("CREATE TABLE made_after_backup (x int)")
    current = normalised_dump(inst.db.url)
    result = inst.restore(
        instance, backup_id=backup_id, scope="database", dry_run=False, confirm=confirm(backup_id)
    )
    assert result.success, _failure_text(result)
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    safety_id = run.tags["backup_pipeline/safety_backup_id"]
    # The restored database is exactly the backup: a table created after it is gone too (the
    # database is swapped, not cleaned object by object; documented in the guide).
    assert normalised_dump(inst.db.url) == backed_up
    dest = LocalFolderDestination(str(inst.backups_dir))
    sets = {s.backup_id: s for s in svc.list_backups(dest)}
    assert sets[safety_id].complete
    # Undo: restoring the safety backup brings the pre-restore state back.
    undo = inst.restore(
        instance, backup_id=safety_id, scope="database", dry_run=False, confirm=confirm(safety_id)
    )
    assert undo.success, _failure_text(undo)
    assert normalised_dump(inst.db.url) == current
    materializations = instance.fetch_materializations(dg.AssetKey("backup_set"), limit=50).records
    tagged = [r for r in materializations if r.run_id == result.run_id]
    assert tagged and tagged[0].asset_materialization is not None
    assert tagged[0].asset_materialization.metadata["trigger"].value == "pre-restore"
    assert tagged[0].asset_materialization.metadata["set_kind"].value == "safety"

    # The safety sets are labelled everywhere and never `latest`: the destination, the ledger, a
    # restore of `latest` (files only: it restored nothing from the database-only safety set).
    sets = {s.backup_id: s for s in svc.list_backups(dest)}
    assert sets[safety_id].kind == "safety" and sets[backup_id].kind == "regular"
    entries = {e.backup_id: e for e in ledger.complete_sets(instance)}
    assert entries[safety_id].is_safety and not entries[backup_id].is_safety
    newest = ledger.latest_complete(instance)
    assert newest is not None and newest.backup_id == backup_id
    files = inst.restore(instance, backup_id="latest", scope="files")
    assert files.success, _failure_text(files)
    assert step_metadata(files, "start_restore")["start_restore"]["backup_id"] == backup_id
    assert len(step_metadata(files, "restore_bucket_step")) == len(BUCKETS)
    # Neither restore left its scratch database behind.
    assert not _scratch_of(result) and not _scratch_of(undo)


def _scratch_of(result: dg.ExecuteInProcessResult) -> bool:
    name = svc.scratch_name(svc.RESTORE, svc.run_token(result.run_id))
    return svc.database_exists(svc.PgTarget.from_url("postgresql://postgres@127.0.0.1:5432/postgres"), name)


def test_rule_split_view_restores_into_a_new_database_and_verifies(
    installation: Installation, instance: dg.DagsterInstance
) -> None:
    """restore_job with target_database and verify_backup_job failed on a dump with a view that
    pg_dump splits into a placeholder and a rule (``schema "app" does not exist``)."""
    from backup_pipeline.services.verification import ScratchServer, verify_backup_set
    from backup_pipeline_tests.test_restore_database import HOSTILE_SCHEMA, _fill, data_digest, schema_sql

    inst = installation
    with inst.db.connect() as conn:
        conn.execute(HOSTILE_SCHEMA)
        _fill(conn, 50, "job")
    backup_id = inst.backup(instance)
    copy = f"app_copy_{uuid.uuid4().hex[:8]}"
    try:
        result = inst.restore(
            instance,
            backup_id=backup_id,
            scope="database",
            target_database=copy,
            dry_run=False,
            confirm=confirm(backup_id),
        )
        assert result.success, _failure_text(result)
        assert schema_sql(copy) == schema_sql(inst.db.name)
        assert data_digest(copy) == data_digest(inst.db.name)
        assert not _scratch_of(result)
    finally:
        drop_database(copy)

    tools = locate_pg_tools()
    server = svc.PgTarget.from_url(inst.db.url)
    report = verify_backup_set(
        inst.resources()["destination"].get_destination(),
        svc.RestoreKeys(org_keyring=OrgKeyring.from_file(inst.org_secret_file)),
        backup_id,
        installation_id=INSTALLATION,
        scratch=ScratchServer(server, tools.pg_restore.path, tools.pg_restore.version),
    )
    assert report.ok, report.summary()


def test_a_failure_after_the_database_step_leaves_the_database_and_no_scratch(
    installation: Installation, instance: dg.DagsterInstance
) -> None:
    """The target changes only in finish_restore: a bucket step failing (S3 down) after the
    database was restored into the scratch database leaves it as it was; the hook drops the scratch."""
    inst = installation
    backup_id = inst.backup(instance)
    with inst.db.connect() as conn:
        conn.execute("DELETE FROM comments WHERE id % 2 = 0")
    before = normalised_dump(inst.db.url)
    inst.s3.stop()
    try:
        result = inst.restore(instance, backup_id=backup_id, dry_run=False, confirm=confirm(backup_id))
    finally:
        inst.s3.start()
    assert not result.success
    assert "restore_database_step" in {
        e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"
    }
    assert normalised_dump(inst.db.url) == before
    assert not _scratch_of(result)


def test_restore_killed_mid_way_then_rerun_completes(
    installation: Installation, instance: dg.DagsterInstance
) -> None:
    import signal
    import subprocess
    import sys
    import time

    inst = installation
    client = inst.s3.client()
    backup_id = inst.backup(instance)
    s3_before = s3_snapshot(client)
    inst.s3.reset()
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(inst.root),
        "BACKUP_PIPELINE_INSTALLATION_ID": "restore-test",
        "BACKUP_PIPELINE_STATE_DIR": str(inst.root / "cli-state"),
        "BACKUP_PIPELINE_APP_DATABASE_URL": inst.db.url,
        **inst.s3.env(),
    }
    cmd = [
        "backup-pipeline", "restore", "--from-destination", "local", "--local-path", str(inst.backups_dir),
        "--org-secret-file", str(inst.org_secret_file), "--backup-id", backup_id, "--scope", "files",
        "--conflict-policy", "if_different", "--no-dry-run", "--confirm", confirm(backup_id),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        buckets = [b.name for b in client.list_buckets()]
        if buckets and any(True for _ in client.list_objects(buckets[0], recursive=True)):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the restore ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = s3_snapshot(client)
    assert 0 < len(partial) < len(s3_before)

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert s3_snapshot(client) == s3_before
