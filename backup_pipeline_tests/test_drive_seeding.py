"""Seeding across days (issue 18, "Drive limits planned for") on the project's Drive v3 test server.

A store larger than what is left of Drive's daily upload cap (here a tiny configured cap) is
backed up over several runs of at most a per-run budget (here two or three objects): each
uploads what fits, dumps no database, and ends as *seeding* (a successful run, no backup_set
materialization, an observation saying how far it got and how far it has to go); the
``continue_seed`` sensor starts the next run while the 24-hour window has room, which continues
from the seed checkpoint; the run that uploads the rest dumps the database and writes the
manifest of a complete set that restores byte for byte, database included. A run killed midway
loses only its own upload. docs/architecture/BACKUP-STRATEGY.md, "Seeding across days".

Time passing is simulated by ageing the upload ledger's entries by a day (what the 24-hour
window does on its own in production); nothing else is stubbed. The sensor's run requests are
executed in process with the tags it asked for (what the daemon would launch).
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from backup_pipeline.destinations.base import Capacity, DailyCapError, decimal_bytes
from backup_pipeline.ops.backup import build_backup_job
from backup_pipeline.ops.retention import retention_job
from backup_pipeline.ops.verification import build_verify_after_backup_sensor
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.policy import BackupPolicyResource
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.safety import freshness_verdict
from backup_pipeline.seed_sensor import CONTINUES_SEED_TAG, build_continue_seed_sensor
from backup_pipeline.sensors import success_status
from backup_pipeline.services.backup_parts import (
    PART_DATABASE,
    PART_MANIFEST,
    PART_SEED,
    BackupError,
    backup_id_time,
)
from backup_pipeline.services.backup_seed import (
    DUMP_NOT_NEEDED,
    OUTCOME_SEEDING,
    OUTCOME_TAG,
    SEEDING_EVENT,
    BucketBudget,
    plan_budget,
    room_at,
    seed_outlook,
    writes_seed_checkpoint,
)
from backup_pipeline.services.backup_upload import has_manifest, has_seed_checkpoint, list_sets
from backup_pipeline.services.download_estimate import newest_set_download_note
from backup_pipeline.services.retention import (
    REASON_SEED_ABANDONED,
    REASON_SUPERSEDED,
    SEED_IN_PROGRESS,
    BackupSetInfo,
    plan_retention,
)
from backup_pipeline.settings import SettingsError, load_settings
from backup_pipeline_tests.backup_helpers import drive_destination, expected_failures, start_child_script
from backup_pipeline_tests.fixtures.drive import DriveFixture
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server
from backup_pipeline_tests.restore_support import (
    INSTALLATION,
    Installation,
    confirm,
    s3_snapshot,
    step_metadata,
    wipe_database,
)

BUCKET = "seed-media"
OBJECT_SIZE = 300_000
PER_RUN = 2
OBJECTS = 3 * PER_RUN
FRAMED = OBJECT_SIZE + 4096  # what the budget counts per object
#: The per-run budget (BACKUP_PIPELINE_SEED_RUN_BUDGET_BYTES in bytes): two objects with their
#: framing fit, three do not, so six objects take three runs.
RUN_BUDGET = PER_RUN * FRAMED + 100_000
#: The daily cap holds the database estimate, the margin and about 1.45 MB of uploads: less
#: than the store (so the first run seeds), room for two runs' budgets (so the sensor starts
#: the second at once) but not for a third (so it waits for the window).
WINDOW_OBJECT_BYTES = 1_450_000
MARGIN = 0.01


@pytest.fixture()
def installation(pg_database: PgDatabase, s3: S3Server, tmp_path: Path) -> Installation:
    wipe_database(pg_database)
    with pg_database.connect() as conn:
        conn.execute("CREATE TABLE notes (id int primary key, body text)")
        conn.execute("INSERT INTO notes VALUES (1, 'one'), (2, 'two')")
        conn.commit()
    return Installation(pg_database, s3, tmp_path)


def database_size(inst: Installation) -> int:
    with inst.db.connect() as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    return int(row[0])


def capped_destination(
    drive: DriveFixture, tmp_path: Path, inst: Installation
) -> tuple[DestinationResource, int]:
    """A Drive destination whose daily cap holds the database estimate plus ``WINDOW_OBJECT_BYTES``."""
    cap = int((database_size(inst) + WINDOW_OBJECT_BYTES) / (1 - MARGIN)) + 1
    dest = drive_destination(
        drive,
        tmp_path,
        installation_id=INSTALLATION,
        drive_daily_upload_cap_bytes=cap,
        drive_daily_download_threshold_bytes=1_000_000,
    )
    return dest, cap


def destination_fields(dest: DestinationResource) -> dict[str, Any]:
    """The resource's settings, to build the same destination in another process."""
    return {k: v for k, v in dest.model_dump().items() if v is not None}


def fill_bucket(inst: Installation) -> None:
    client = inst.s3.client()
    client.make_bucket(BUCKET)
    import io

    for n in range(OBJECTS):
        data = os.urandom(OBJECT_SIZE)  # incompressible: the part is as large as the objects
        client.put_object(BUCKET, f"media/{n:03d}.bin", io.BytesIO(data), len(data))


def backup_run(
    inst: Installation,
    instance: dg.DagsterInstance,
    dest: DestinationResource,
    tags: dict[str, str] | None = None,
    **config: Any,
) -> dg.ExecuteInProcessResult:
    job = build_backup_job(executor_def=dg.in_process_executor)
    return job.execute_in_process(
        instance=instance,
        resources=inst.resources(dest),
        run_config={"ops": {"plan_backup": {"config": _config(**config)}}},
        raise_on_error=False,
        tags=tags,
    )


def _config(**config: Any) -> dict[str, Any]:
    return {
        "installation_id": INSTALLATION,
        "exclude_table_patterns": [],
        "incremental_objects": True,
        "seed_margin_share": MARGIN,
        "seed_run_budget_bytes": RUN_BUDGET,
        **config,
    }


def continue_seed(instance: dg.DagsterInstance, dest: DestinationResource) -> Any:
    """One evaluation of the continue_seed sensor, as the daemon makes it (Dagster's test context)."""
    sensor = build_continue_seed_sensor(dest)
    return sensor(dg.build_sensor_context(instance=instance))


def plan_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """The metadata of plan_backup's ``plan`` output (its dynamic outputs have none)."""
    (event,) = [
        e
        for e in result.all_events
        if e.event_type_value == "STEP_OUTPUT"
        and e.step_key == "plan_backup"
        and e.step_output_data.step_output_handle.output_name == "plan"
    ]
    return {k: getattr(v, "value", v) for k, v in event.step_output_data.metadata.items()}


def part_names(files: list[Any]) -> set[str]:
    return {f.properties["partName"] for f in files}


def uploaded(drive: DriveFixture) -> int:
    return int(drive.stats().get("upload_bytes_received", 0))


def success_context(sensor: Any, instance: dg.DagsterInstance, run_id: str) -> Any:
    run = instance.get_run_by_id(run_id)
    [event] = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_SUCCESS)
    assert run is not None and event.dagster_event is not None
    return dg.build_run_status_sensor_context(
        sensor_name=sensor.name, dagster_instance=instance, dagster_run=run, dagster_event=event.dagster_event
    )


def a_day_passes(dest: DestinationResource) -> None:
    """Age every upload the ledger counted by a day: the 24-hour window frees them, as it would."""
    path = Path(dest.state_dir) / "drive-upload-ledger.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    aged = {k: [[ts - 24 * 3600 - 120, size] for ts, size in v] for k, v in data.items()}
    path.write_text(json.dumps(aged), encoding="utf-8")


def seeding_observations(instance: dg.DagsterInstance) -> list[dict[str, Any]]:
    records = instance.fetch_observations(dg.AssetKey("backup_set"), limit=50).records
    out = []
    for record in records:
        obs = record.event_log_entry.asset_observation
        assert obs is not None
        meta = {k: v.value for k, v in obs.metadata.items()}
        if meta.get("event") == SEEDING_EVENT:
            out.append(meta)
    return out


def materializations(instance: dg.DagsterInstance) -> int:
    return len(instance.fetch_materializations(dg.AssetKey("backup_set"), limit=50).records)


def sets_on_drive(dest: DestinationResource) -> dict[str, list[Any]]:
    return list_sets(dest.get_destination(), INSTALLATION)


def retention(
    inst: Installation, instance: dg.DagsterInstance, dest: DestinationResource, **policy: Any
) -> Any:
    result = retention_job.execute_in_process(
        instance=instance,
        resources={
            **{k: v for k, v in inst.resources(dest).items() if k in ("destination", "app_db", "keys")},
            "backup_policy": BackupPolicyResource(
                installation_id=INSTALLATION, state_dir=str(inst.state_dir), retention_keep_last=1, **policy
            ),
        },
        raise_on_error=False,
    )
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return result


def restore(
    inst: Installation,
    instance: dg.DagsterInstance,
    dest: DestinationResource,
    backup_id: str,
    scope: str = "files",
    **config: Any,
) -> Any:
    from backup_pipeline.ops.restore import restore_job

    return restore_job.execute_in_process(
        instance=instance,
        resources=inst.resources(dest),
        run_config={
            "ops": {
                "start_restore": {
                    "config": {
                        "backup_id": backup_id,
                        "scope": scope,
                        "dry_run": False,
                        "confirm": confirm(backup_id),
                        **config,
                    }
                }
            }
        },
        raise_on_error=False,
    )


def notes(inst: Installation) -> list[tuple[Any, ...]]:
    with inst.db.connect() as conn:
        return list(conn.execute("SELECT id, body FROM notes ORDER BY id").fetchall())


def test_a_store_larger_than_the_daily_cap_is_seeded_in_budgeted_runs_the_sensor_chains_and_it_restores(
    installation: Installation, instance: dg.DagsterInstance, drive: DriveFixture, tmp_path: Path
) -> None:
    inst = installation
    dest, _ = capped_destination(drive, tmp_path, inst)
    fill_bucket(inst)
    state = s3_snapshot(inst.s3.client())
    rows = notes(inst)

    seeds: list[str] = []
    tags: dict[str, str] | None = None  # the first run is a manual one; the sensor starts the next
    for run in (1, 2):
        result = backup_run(inst, instance, dest, tags=tags)
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        assert result.dagster_run.tags[OUTCOME_TAG] == OUTCOME_SEEDING
        seeds.append(result.dagster_run.tags["backup_pipeline/backup_id"])
        if tags is not None:
            assert result.dagster_run.tags[CONTINUES_SEED_TAG] == seeds[-2]
        # Not a backup: no materialization (freshness still judges the last complete set), no
        # verification of a set that has no manifest, and the heartbeat never says "complete".
        assert materializations(instance) == 0
        run_record = instance.get_run_by_id(result.run_id)
        assert run_record is not None
        sensor = build_verify_after_backup_sensor()
        skipped = sensor(success_context(sensor, instance, result.run_id))
        assert isinstance(skipped, dg.SkipReason) and "seeding" in str(skipped.skip_message)
        assert "NOT complete" in success_status(instance, run_record)
        fresh = freshness_verdict(instance, 24)
        assert not fresh.passed and "no complete backup yet" in fresh.description
        assert f"A backup is being seeded: {seeds[-1]}: seeding:" in fresh.description
        # The plan knew the run would seed: no database dump, said so in the run.
        plan_meta = plan_metadata(result)
        assert plan_meta["seeding"] == "this run ends as seeding: no database dump"
        assert plan_meta["seed_budget_bytes"] == RUN_BUDGET  # the run budget, below the day's room
        assert step_metadata(result, "dump_database")["dump_database"]["dump"] == DUMP_NOT_NEEDED
        sets = sets_on_drive(dest)
        assert not has_manifest(sets[seeds[-1]]) and has_seed_checkpoint(sets[seeds[-1]])
        assert part_names(sets[seeds[-1]]) == {
            f"bucket-{BUCKET}",
            f"index-{BUCKET}",
            f"inventory-{BUCKET}",
            PART_SEED,
        }
        observation = seeding_observation_of(instance, seeds[-1])
        left = OBJECTS - run * PER_RUN
        assert observation["covered_bytes"] == observation["seeded_bytes"] == run * PER_RUN * OBJECT_SIZE
        assert observation["bytes_left"] == left * OBJECT_SIZE
        assert observation["total_bytes"] == OBJECTS * OBJECT_SIZE
        assert observation["seeded_bytes_this_run"] == PER_RUN * OBJECT_SIZE
        assert observation["seeded_objects_this_run"] == PER_RUN
        # Two objects a run: two more runs after the first, one after the second; both need the
        # next 24-hour window (the cap holds less than the store).
        assert (observation["runs_left_estimate"], observation["days_left_estimate"]) == (3 - run, 1)
        finalize_meta = step_metadata(result, "finalize_backup")["finalize_backup"]
        assert (
            finalize_meta["runs_left_estimate"] == 3 - run
            and finalize_meta["bytes_left"] == left * OBJECT_SIZE
        )
        assert (
            "NOT complete" in observation["message"] and f"about {3 - run} more run" in observation["message"]
        )
        (bucket_meta,) = step_metadata(result, "export_bucket").values()
        assert (bucket_meta["objects"], bucket_meta["deferred_objects"]) == (PER_RUN, left)
        # The run stayed under the cap: Drive's own count (the ledger) of this run's uploads.
        assert dest.get_destination().capacity().daily_upload_remaining >= 0  # type: ignore[union-attr]

        # Retention between the runs keeps the seed (and the parts its checkpoint references).
        meta_ret = step_metadata(retention(inst, instance, dest), "apply_retention_op")["apply_retention_op"]
        assert meta_ret["deleted"] == []
        assert set(seeds) <= set(sets_on_drive(dest))

        verdict = continue_seed(instance, dest)
        if run == 1:
            # Room for another run's budget in the window: the sensor asks for it, under a key that
            # names this seeding run (asked twice, the same key: the daemon launches it once).
            assert "can continue right away" in observation["message"]
            assert isinstance(verdict, dg.RunRequest), verdict
            assert verdict.run_key == f"continue-seed-{result.run_id}"
            assert verdict.tags[CONTINUES_SEED_TAG] == seeds[-1]
            again = continue_seed(instance, dest)
            assert isinstance(again, dg.RunRequest) and again.run_key == verdict.run_key
            # Not while a backup run is queued (here: created, not started).
            queued = instance.create_run_for_job(
                build_backup_job(executor_def=dg.in_process_executor),
                run_config={"ops": {"plan_backup": {"config": _config()}}},
            )
            busy = continue_seed(instance, dest)
            assert isinstance(busy, dg.SkipReason) and "in progress" in str(busy.skip_message)
            instance.delete_run(queued.run_id)
            tags = dict(verdict.tags)
        else:
            # The window has no room for a third: the sensor says when it will.
            assert "can continue after" in observation["message"]
            assert isinstance(verdict, dg.SkipReason), verdict
            assert f"the seed of backup {seeds[-1]} continues after" in str(verdict.skip_message)
            assert "when the 24-hour upload window has room" in str(verdict.skip_message)

    # A run the sensor started in a window that other uploads filled meanwhile (here: started
    # with its tags while the window is full): its budget holds no object, it uploads none and
    # ends as seeding; the sensor does not start another at once (that could loop), even once
    # the window has room again; the next scheduled backup continues.
    assert tags is not None
    stuck = backup_run(inst, instance, dest, tags={**tags, CONTINUES_SEED_TAG: seeds[-1]})
    assert stuck.success and stuck.dagster_run.tags[OUTCOME_TAG] == OUTCOME_SEEDING
    empty = stuck.dagster_run.tags["backup_pipeline/backup_id"]
    nothing = seeding_observation_of(instance, empty)
    assert (nothing["seeded_objects_this_run"], nothing["bytes_left"]) == (0, PER_RUN * OBJECT_SIZE)
    a_day_passes(dest)
    verdict = continue_seed(instance, dest)
    assert isinstance(verdict, dg.SkipReason) and "uploaded no object" in str(verdict.skip_message)
    result = backup_run(inst, instance, dest, tags={"backup_pipeline/trigger": "schedule"})
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    assert OUTCOME_TAG not in result.dagster_run.tags
    complete = result.dagster_run.tags["backup_pipeline/backup_id"]
    assert materializations(instance) == 1
    (bucket_meta,) = step_metadata(result, "export_bucket").values()
    assert (bucket_meta["objects"], bucket_meta["objects_unchanged"], bucket_meta["deferred_objects"]) == (
        PER_RUN,
        OBJECTS - PER_RUN,
        0,
    )
    # The run that completes the set dumps the database; the sensor has nothing left to continue.
    assert step_metadata(result, "dump_database")["dump_database"]["dump_bytes"] > 0
    files = part_names(sets_on_drive(dest)[complete])
    assert PART_MANIFEST in files and PART_DATABASE in files and PART_SEED not in files
    done = continue_seed(instance, dest)
    assert isinstance(done, dg.SkipReason) and "no seed to continue" in str(done.skip_message)

    # Retention now: the seeds are superseded, but the parts the complete set references stay.
    retention(inst, instance, dest)
    remaining = sets_on_drive(dest)
    for seed in seeds:
        names = part_names(remaining.get(seed, []))
        assert names == {f"bucket-{BUCKET}", f"index-{BUCKET}"}, (seed, names)
    assert empty not in remaining  # it holds no object the complete set uses

    # Restoring it (database and files) reads the three runs' bucket parts (verified, then
    # restored): above the configured 1 MB/day download threshold, so the pre-flight and the check
    # warn, and go on.
    note = newest_set_download_note(dest.get_destination(), INSTALLATION)
    assert note is not None and complete in note and "throttles" in note
    expected = restore_download_bytes_of(dest, complete)
    with inst.db.connect() as conn:
        conn.execute("DELETE FROM notes")
        conn.commit()
    inst.s3.reset()
    # (This app has no table pointing at objects: the consistency report checks no rows.)
    no_rows = "SELECT ''::text, ''::text WHERE false"
    restored = restore(inst, instance, dest, complete, scope="full", consistency_query=no_rows)
    assert restored.success, [e.message for e in restored.all_events if e.is_failure]
    assert s3_snapshot(inst.s3.client()) == state  # every object, by SHA-256, size and metadata
    assert notes(inst) == rows
    warning = step_metadata(restored, "start_restore")["start_restore"]["download_warning"]
    assert f"downloads about {decimal_bytes(expected)}" in warning and "goes ahead" in warning


def seeding_observation_of(instance: dg.DagsterInstance, backup_id: str) -> dict[str, Any]:
    (observation,) = [o for o in seeding_observations(instance) if o["backup_id"] == backup_id]
    return observation


def restore_download_bytes_of(dest: DestinationResource, backup_id: str) -> int:
    """What the warning should say: twice every part the set reads (its own and the seeds' bucket parts)."""
    sets = sets_on_drive(dest)
    own = sum(f.size for f in sets[backup_id] if f.properties["partName"] != PART_MANIFEST)
    seeds = sum(
        f.size
        for bid, files in sets.items()
        if bid != backup_id
        for f in files
        if f.properties["partName"] == f"bucket-{BUCKET}"
    )
    return 2 * (own + seeds)


def test_without_incremental_object_backups_seeding_is_refused_with_the_reason(
    installation: Installation, instance: dg.DagsterInstance, drive: DriveFixture, tmp_path: Path
) -> None:
    inst = installation
    dest, _ = capped_destination(drive, tmp_path, inst)
    fill_bucket(inst)
    result = backup_run(inst, instance, dest, incremental_objects=False)
    assert not result.success
    (failure,) = expected_failures(result)
    assert (failure.step, failure.code) == ("plan_backup", "DAILY_UPLOAD_CAP_EXCEEDED")
    assert "BACKUP_PIPELINE_INCREMENTAL_OBJECTS" in failure.message
    assert sets_on_drive(dest) == {}


SEEDING_BACKUP = """
import json, sys
import dagster as dg
from backup_pipeline.ops.backup import build_backup_job
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.resources.s3 import S3Resource
args = json.loads(sys.argv[1])
resources = {
    "app_db": PostgresResource(database_url=args["db"]),
    "s3": S3Resource(endpoint=args["endpoint"], access_key=args["access_key"], secret_key=args["secret_key"]),
    "destination": DestinationResource(**args["destination"]),
    "keys": BackupKeysResource(org_secret_file=args["org_secret"], state_dir=args["state"]),
}
with dg.instance_for_test() as instance:
    build_backup_job(executor_def=dg.in_process_executor).execute_in_process(
        instance=instance, resources=resources, run_config={"ops": {"plan_backup": {"config": args["config"]}}}
    )
print("finished", flush=True)
"""


#: Three objects a run in the kill test: the first run seeds three, the killed one would complete
#: the set, the rerun does.
KILL_RUN_BUDGET = 3 * FRAMED + 100_000


def test_a_seeding_run_killed_mid_upload_loses_only_its_own_upload_and_the_seed_completes(
    installation: Installation, instance: dg.DagsterInstance, drive: DriveFixture, tmp_path: Path
) -> None:
    inst = installation
    dest, _ = capped_destination(drive, tmp_path, inst)
    fill_bucket(inst)
    state = s3_snapshot(inst.s3.client())
    before = uploaded(drive)
    first = backup_run(inst, instance, dest, seed_run_budget_bytes=KILL_RUN_BUDGET)
    assert first.success and first.dagster_run.tags[OUTCOME_TAG] == OUTCOME_SEEDING
    seed = first.dagster_run.tags["backup_pipeline/backup_id"]
    first_bytes = uploaded(drive) - before
    assert 3 * OBJECT_SIZE < first_bytes < 4 * OBJECT_SIZE  # three objects, no database
    a_day_passes(dest)

    args = {
        "db": inst.db.url,
        "endpoint": inst.s3.endpoint,
        "access_key": inst.s3.access_key,
        "secret_key": inst.s3.secret_key,
        "destination": destination_fields(dest),
        "state": str(inst.state_dir),
        "org_secret": str(inst.org_secret_file),
        "config": _config(seed_run_budget_bytes=KILL_RUN_BUDGET),
    }
    received = uploaded(drive)
    child = start_child_script(SEEDING_BACKUP, args)
    try:
        # Killed once the run has sent its database part and its bucket part (the test server
        # counts a chunk once it is received, and each part is one chunk): SIGKILL, so no hook
        # runs, nothing is cleaned up, and neither a checkpoint nor a manifest is written.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and child.poll() is None:
            if uploaded(drive) - received > OBJECT_SIZE:
                break
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=60)
    assert "finished" not in out
    lost = uploaded(drive) - received
    # What the crash lost is bounded by the run's budget (plus the small database dump and part
    # framing), never the earlier checkpoint's upload.
    assert OBJECT_SIZE < lost <= KILL_RUN_BUDGET + 64 * 1024
    app_db = PostgresResource(database_url=inst.db.url)
    holder = app_db.data_lease_holder()
    if holder is not None:  # fail_dead_lease_holder frees it once the heartbeat is stale
        app_db.release_data_lease(holder.run_id)
    sets = sets_on_drive(dest)
    dead = [bid for bid in sets if bid != seed]
    assert len(dead) == 1 and not has_seed_checkpoint(sets[dead[0]]) and not has_manifest(sets[dead[0]])
    assert has_seed_checkpoint(sets[seed])  # the earlier checkpoint is untouched
    a_day_passes(dest)

    # The rerun removes the dead remains and continues from the checkpoint: it uploads the three
    # objects left (and the database), nothing of the first seeding run again, and completes it.
    received = uploaded(drive)
    rerun = backup_run(inst, instance, dest, seed_run_budget_bytes=KILL_RUN_BUDGET)
    assert rerun.success and OUTCOME_TAG not in rerun.dagster_run.tags
    assert 3 * OBJECT_SIZE < uploaded(drive) - received < 4 * OBJECT_SIZE
    (bucket_meta,) = step_metadata(rerun, "export_bucket").values()
    assert (bucket_meta["objects"], bucket_meta["objects_unchanged"]) == (3, 3)
    assert dead[0] not in sets_on_drive(dest)
    complete = rerun.dagster_run.tags["backup_pipeline/backup_id"]
    inst.s3.reset()
    restored = restore(inst, instance, dest, complete)
    assert restored.success, [e.message for e in restored.all_events if e.is_failure]
    assert s3_snapshot(inst.s3.client()) == state


# --- plain functions: the budget and retention's seed rule (no servers) ------------------------


def _set(backup_id: str, *, complete: bool = False, seeding: bool = False) -> BackupSetInfo:
    return BackupSetInfo(backup_id, backup_id_time(backup_id), complete, files=3, seeding=seeding)


def test_retention_keeps_a_live_seed_and_deletes_an_abandoned_one_with_its_reason() -> None:
    now = datetime(2026, 12, 20, 12, tzinfo=UTC)
    complete = _set("20261201T000000Z-00000001", complete=True)
    old_seed = _set("20261202T000000Z-00000002", seeding=True)
    new_seed = _set("20261215T000000Z-00000003", seeding=True)
    plan = plan_retention(
        [complete, old_seed, new_seed], keep_last=1, incomplete_grace=timedelta(hours=24), now=now
    )
    # The newest seed set is 5 days old: the whole seed (both runs' sets) is in progress.
    assert plan.delete == [] and set(plan.keep) == {
        complete.backup_id,
        old_seed.backup_id,
        new_seed.backup_id,
    }
    reasons = {d.backup_id: d.reasons for d in plan.decisions}
    assert reasons[old_seed.backup_id] == (SEED_IN_PROGRESS,)

    later = now + timedelta(days=14)
    plan = plan_retention(
        [complete, old_seed, new_seed], keep_last=1, incomplete_grace=timedelta(hours=24), now=later
    )
    assert {d.backup_id for d in plan.delete} == {old_seed.backup_id, new_seed.backup_id}
    assert all(d.reason == REASON_SEED_ABANDONED.format(days=14) for d in plan.delete)
    assert complete.backup_id in plan.keep  # the last complete backup is never touched

    # A seed older than a complete set was completed by it (or replaced): superseded (rule 4).
    done = _set("20261216T000000Z-00000004", complete=True)
    plan = plan_retention(
        [complete, old_seed, new_seed, done], keep_last=2, incomplete_grace=timedelta(hours=24), now=now
    )
    assert {d.backup_id: d.reason for d in plan.delete} == {
        old_seed.backup_id: REASON_SUPERSEDED,
        new_seed.backup_id: REASON_SUPERSEDED,
    }


def test_the_budget_is_what_is_left_less_the_margin_and_the_database_split_by_what_is_left_to_upload() -> (
    None
):
    cap = Capacity(free_bytes=None, daily_upload_remaining=600, daily_upload_cap=1000, decimal_units=True)
    assert (
        plan_budget(
            cap, database_bytes=100, bucket_bytes={"a": 400}, incremental=True, margin_share=0.1, where="d"
        )
        is None
    )
    budget = plan_budget(
        cap,
        database_bytes=100,
        bucket_bytes={"a": 3000, "b": 1000},
        incremental=True,
        covered={"a": 2000},
        margin_share=0.1,
        where="d",
    )
    assert budget is not None and budget.per_bucket == {"a": 200, "b": 200}  # (600 - 100 - 100) split 1:1
    with pytest.raises(DailyCapError, match="BACKUP_PIPELINE_INCREMENTAL_OBJECTS"):
        plan_budget(
            cap, database_bytes=100, bucket_bytes={"a": 4000}, incremental=False, margin_share=0.1, where="d"
        )
    empty = Capacity(
        free_bytes=None, daily_upload_remaining=150, daily_upload_cap=1000, daily_window_frees=(0.0, 850)
    )
    with pytest.raises(DailyCapError, match="continues at the next run after 1970-01-01 00:00 UTC"):
        plan_budget(
            empty, database_bytes=100, bucket_bytes={"a": 4000}, incremental=True, margin_share=0.1, where="d"
        )


def test_the_run_budget_caps_a_seeding_run_and_the_plan_knows_when_it_ends_as_seeding() -> None:
    cap = Capacity(free_bytes=None, daily_upload_remaining=600, daily_upload_cap=1000, decimal_units=True)
    common: dict[str, Any] = {"database_bytes": 100, "incremental": True, "margin_share": 0.1, "where": "d"}
    # Over what is left of the day: at most the run budget (below the day's 400), split by what is left.
    budget = plan_budget(
        cap, bucket_bytes={"a": 3000, "b": 1000}, run_budget=100, bucket_objects={"a": 30, "b": 10}, **common
    )
    assert budget is not None and budget.per_bucket == {"a": 75, "b": 25} and budget.run_budget == 100
    assert budget.alone == {"a": 300, "b": 100}  # the day's 400, for an object above a run's share
    assert budget.ends_seeding and budget.pending_bytes == 4000
    # A seed under way whose rest fits the window still goes in runs of the budget...
    roomy = Capacity(free_bytes=None, daily_upload_remaining=5000, daily_upload_cap=10_000)
    seed: dict[str, Any] = {
        **common,
        "bucket_bytes": {"a": 3000, "b": 1000},
        "covered": {"a": 3000, "b": 800},
        "covered_objects": {"a": 30, "b": 8},
    }
    budget = plan_budget(roomy, run_budget=150, bucket_objects={"a": 30, "b": 10}, **seed)
    assert budget is not None and budget.per_bucket == {"a": 0, "b": 149} and budget.ends_seeding
    # ...and the run in which it fits dumps the database and completes the set: a normal run.
    assert plan_budget(roomy, run_budget=250, bucket_objects={"a": 30, "b": 10}, **seed) is None
    # Over the budget, but a single object left, which a bucket may take alone: not certain to seed.
    budget = plan_budget(roomy, run_budget=150, bucket_objects={"a": 30, "b": 9}, **seed)
    assert budget is not None and not budget.ends_seeding
    # No seed under way and it fits the window: a normal run whatever the run budget.
    assert plan_budget(cap, bucket_bytes={"a": 400}, run_budget=10, **common) is None


def test_writes_a_checkpoint_when_objects_were_deferred_or_no_database_was_dumped() -> None:
    deferred = [{"incremental": {"deferred_objects": 1}}]
    nothing = [{"incremental": {"deferred_objects": 0}}]
    dumped = {"part": {"part_name": "database"}}
    assert writes_seed_checkpoint(dumped, deferred) and not writes_seed_checkpoint(dumped, nothing)
    # Planned to seed (no dump), but everything fit after all: still a checkpoint, never a set
    # without its database.
    assert writes_seed_checkpoint({"part": None, "skipped": DUMP_NOT_NEEDED}, nothing)


def test_an_object_larger_than_a_day_of_uploads_fails_by_name_and_others_are_deferred() -> None:
    budget = BucketBudget(left=15_000, day=50_000)  # 4 KiB of framing counted per object
    assert budget.take("a", 5_000) and not budget.take("b", 5_000) and budget.take("c", 100)
    assert (budget.deferred_objects, budget.deferred_bytes, budget.first_deferred) == (1, 5_000, "b")
    with pytest.raises(BackupError, match=r"'huge'.*can never be uploaded"):
        budget.take("huge", 60_000)
    # An object above the run's share is taken alone as the bucket's first of the run (within its
    # share of the day), so it is not deferred forever; nothing else of the bucket follows it.
    alone = BucketBudget(left=10_000, day=50_000, alone=40_000)
    assert alone.take("big", 30_000) and not alone.take("small", 10)
    assert not BucketBudget(left=10_000, day=50_000, alone=20_000).take("big", 30_000)
    after = BucketBudget(left=10_000, day=50_000, alone=40_000)
    assert after.take("small", 10) and not after.take("big", 30_000)


def test_the_outlook_and_when_the_window_has_room_for_the_next_run() -> None:
    progress = {"deferred_bytes": 10_000, "deferred_objects": 10}
    # Cap 100 000, margin 10 %: a day holds 90 000 less the 5 000 database; 20 000 a run.
    cap = Capacity(
        free_bytes=None,
        daily_upload_remaining=25_000,
        daily_upload_cap=100_000,
        daily_window_schedule=((1_000.0, 30_000), (2_000.0, 45_000)),
    )
    outlook = seed_outlook(progress, database_bytes=5_000, cap=cap, margin_share=0.1, run_budget=20_000)
    # 50 960 left with framing: three runs of 20 000; 10 000 of it fits the current window
    # (25 000 less the margin and the database), the rest the next one (a day holds 85 000).
    assert outlook == {
        "runs_left_estimate": 3,
        "days_left_estimate": 1,
        "next_run_needs_bytes": 10_000 + 5_000 + 20_000,  # margin + database + a run's budget
    }
    # 35 000 needed, 25 000 left: room once the first upload (30 000) leaves the window.
    assert room_at(cap, 35_000, now=500.0) == 1_000.0
    assert room_at(cap, 70_000, now=500.0) == 2_000.0
    assert room_at(cap, 20_000, now=500.0) == 500.0  # room now
    assert room_at(cap, 150_000, now=500.0) is None  # more than the cap: never


def test_the_run_budget_setting_is_validated_and_the_sensor_loads_where_a_backup_can_seed(
    tmp_path: Path,
) -> None:
    with pytest.raises(
        SettingsError, match="SEED_RUN_BUDGET_BYTES: Input should be greater than or equal to"
    ):
        load_settings(env={"BACKUP_PIPELINE_SEED_RUN_BUDGET_BYTES": "50"})
    assert load_settings(env={}).seed_run_budget_bytes == 50 * 2**30
    from backup_pipeline.definitions import build_definitions

    drive = {
        "BACKUP_PIPELINE_STATE_DIR": str(tmp_path),
        "BACKUP_PIPELINE_DESTINATION": "google_drive",
        "BACKUP_PIPELINE_DRIVE_CREDENTIALS_FILE": str(tmp_path / "sa.json"),
        "BACKUP_PIPELINE_DRIVE_SHARED_DRIVE_ID": "0AAAA",
    }

    defs = build_definitions(load_settings(env={**drive, "BACKUP_PIPELINE_INCREMENTAL_OBJECTS": "true"}))
    dg.Definitions.validate_loadable(defs)  # its job resolves
    assert "continue_seed" in {s.name for s in defs.sensors}
    local = {"BACKUP_PIPELINE_STATE_DIR": str(tmp_path), "BACKUP_PIPELINE_INCREMENTAL_OBJECTS": "true"}
    assert "continue_seed" not in {s.name for s in build_definitions(load_settings(env=local)).sensors}


def test_the_cli_tells_a_seeding_run_from_a_backup() -> None:
    from backup_pipeline.client import RunSummary

    run = RunSummary(
        "r1", "SUCCESS", "backup_job", "20261207T000000Z-00000001", 1.0, 2.0, tags={OUTCOME_TAG: "seeding"}
    )
    assert run.outcome == OUTCOME_SEEDING and run.to_json()["outcome"] == "seeding"
    assert "outcome" not in RunSummary("r2", "SUCCESS", "backup_job", None, 1.0, 2.0).to_json()
