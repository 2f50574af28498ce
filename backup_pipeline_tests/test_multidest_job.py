"""Several destinations end to end: Google Drive (the project's Drive v3 test server) as the primary,
SeaweedFS with object lock under the product's least-privilege credentials, and a local folder (a NAS).

backup_job writes the primary; copy_backup_job copies the set to the others; the ledger and the
backup_3_2_1 verdict say where complete copies are. Then: the Drive and local copies are destroyed
and the disaster-recovery CLI restores from the S3 copy with only the recovery key, while deleting
that copy with the product's credentials is refused. And: one destination unreachable during the
copy → the others complete, the run and the check name the missing one, the next run fills it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from backup_pipeline import ledger
from backup_pipeline.copy_status import CopyPolicyView, copy_policy_verdict
from backup_pipeline.destinations.base import LockedError
from backup_pipeline.ops.backup import build_backup_job
from backup_pipeline.ops.copy import copy_backup_job
from backup_pipeline.ops.restore import restore_job
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.policy import BackupPolicyResource
from backup_pipeline.sample_app import SeedSpec, seed_sample_app
from backup_pipeline.services.backup_parts import set_properties
from backup_pipeline.settings import BackupSettings, load_settings
from backup_pipeline_tests.fixtures import s3_destination as sd
from backup_pipeline_tests.fixtures.cutting_proxy import CuttingProxy
from backup_pipeline_tests.fixtures.drive import SHARED_DRIVE_ID, DriveFixture
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server
from backup_pipeline_tests.restore_support import INSTALLATION, Installation, normalised_dump, wipe_database

VENV_BIN = Path(sys.executable).parent
BUCKETS = ("media", "avatars")
SPEC = SeedSpec(
    buckets=BUCKETS,
    small_objects=25,
    large_object_bytes=(),
    users=10,
    comments=50,
    audit_events=50,
    sessions=5,
    upload_workers=4,
)
POLICY = "copies=3,kinds=3,offsite=2,immutable=1"


def _settings_env(drive: DriveFixture, s3_endpoint: str, inst: Installation, **extra: str) -> dict[str, str]:
    """The product's settings for drive + s3lock + nas (environment form): paths and names only."""
    credentials = inst.state_dir / "s3lock-credentials"
    inst.state_dir.mkdir(parents=True, exist_ok=True)
    credentials.write_text(
        f"[default]\naws_access_key_id = {sd.WRITER_ACCESS_KEY}\naws_secret_access_key = {sd.WRITER_SECRET_KEY}\n"
    )
    credentials.chmod(0o600)
    return {
        "BACKUP_PIPELINE_INSTALLATION_ID": INSTALLATION,
        "BACKUP_PIPELINE_STATE_DIR": str(inst.state_dir),
        "BACKUP_PIPELINE_DESTINATIONS": "drive,s3lock,nas",
        "BACKUP_PIPELINE_DESTINATION_DRIVE_KIND": "google_drive",
        "BACKUP_PIPELINE_DESTINATION_DRIVE_DRIVE_CREDENTIALS_FILE": str(drive.service_account_file),
        "BACKUP_PIPELINE_DESTINATION_DRIVE_DRIVE_SHARED_DRIVE_ID": SHARED_DRIVE_ID,
        "BACKUP_PIPELINE_DESTINATION_DRIVE_DRIVE_API_ROOT": drive.server.url,
        "BACKUP_PIPELINE_DESTINATION_DRIVE_DRIVE_TOKEN_URI": drive.server.token_uri,
        "BACKUP_PIPELINE_DESTINATION_S3LOCK_KIND": "s3",
        "BACKUP_PIPELINE_DESTINATION_S3LOCK_S3_ENDPOINT": s3_endpoint,
        "BACKUP_PIPELINE_DESTINATION_S3LOCK_S3_BUCKET": sd.BUCKET,
        "BACKUP_PIPELINE_DESTINATION_S3LOCK_S3_PREFIX": sd.PREFIX,
        "BACKUP_PIPELINE_DESTINATION_S3LOCK_S3_CREDENTIALS_FILE": str(credentials),
        "BACKUP_PIPELINE_DESTINATION_S3LOCK_S3_LOCK_DAYS": "1",
        "BACKUP_PIPELINE_DESTINATION_S3LOCK_S3_PART_SIZE_MIB": "5",
        "BACKUP_PIPELINE_DESTINATION_NAS_KIND": "local",
        "BACKUP_PIPELINE_DESTINATION_NAS_PATH": str(inst.root / "nas"),
        "BACKUP_PIPELINE_DESTINATION_RETRY_ATTEMPTS": "2",
        "BACKUP_PIPELINE_DESTINATION_RETRY_MAX_WAIT_SECONDS": "0.2",
        "BACKUP_PIPELINE_COPY_POLICY": POLICY,
        **extra,
    }


def _resources(inst: Installation, settings: BackupSettings) -> dict[str, Any]:
    destination = DestinationResource.from_settings(settings).replace(
        retry_initial_wait_seconds=0.05, drive_chunk_size_mib=1
    )
    return {
        **inst.resources(),
        "destination": destination,
        "backup_policy": BackupPolicyResource.from_settings(settings),
    }


def _backup(instance: dg.DagsterInstance, resources: dict[str, Any]) -> str:
    result = build_backup_job(executor_def=dg.in_process_executor).execute_in_process(
        instance=instance,
        resources=resources,
        run_config={
            "ops": {
                "plan_backup": {
                    "config": {"installation_id": INSTALLATION, "exclude_table_patterns": [], "force": True}
                }
            }
        },
    )
    assert result.success
    return str(result.dagster_run.tags["backup_pipeline/backup_id"])


def _copy(instance: dg.DagsterInstance, resources: dict[str, Any]) -> dg.ExecuteInProcessResult:
    return copy_backup_job.execute_in_process(instance=instance, resources=resources, raise_on_error=False)


def _failure_messages(result: dg.ExecuteInProcessResult) -> str:
    return " ".join(
        (e.step_failure_data.error.message if e.step_failure_data.error else "")
        + (
            e.step_failure_data.user_failure_data.description or ""
            if e.step_failure_data.user_failure_data
            else ""
        )
        for e in result.all_events
        if e.event_type_value == "STEP_FAILURE"
    )


@pytest.fixture()
def installation(pg_database: PgDatabase, s3: S3Server, tmp_path: Path) -> Installation:
    wipe_database(pg_database)
    inst = Installation(pg_database, s3, tmp_path / "server")
    with pg_database.connect() as conn:
        seed_sample_app(conn, s3.client(), SPEC)
    return inst


def test_copies_on_three_destinations_and_disaster_recovery_from_the_locked_copy(
    installation: Installation, s3: S3Server, drive: DriveFixture, pg_database: PgDatabase, tmp_path: Path
) -> None:
    inst = installation
    sd.make_bucket(s3, object_lock=True)
    env = _settings_env(drive, s3.endpoint, inst)
    settings = load_settings(env)
    resources = _resources(inst, settings)
    db_before = normalised_dump(pg_database.url)

    with dg.instance_for_test() as instance:
        backup_id = _backup(instance, resources)
        copied = _copy(instance, resources)
        assert copied.success, _failure_messages(copied)

        states = ledger.copy_states(instance)[backup_id]
        assert {name: s.event for name, s in states.items()} == {
            "drive": ledger.COPY_COMPLETE_EVENT,
            "s3lock": ledger.COPY_COMPLETE_EVENT,
            "nas": ledger.COPY_COMPLETE_EVENT,
        }
        assert states["s3lock"].immutable(datetime.now(UTC)) and not states["nas"].offsite
        verdict = copy_policy_verdict(instance, CopyPolicyView.from_settings(settings))
        assert verdict.passed, verdict.description
        assert verdict.metadata["copies"] == 3 and verdict.metadata["immutable"] == 1
        checks = [e for e in copied.get_asset_check_evaluations() if e.check_name == "backup_3_2_1"]
        assert checks and checks[0].passed

        # A second run finds every copy complete and writes nothing.
        again = _copy(instance, resources)
        assert again.success
        copy_steps = [
            e
            for e in again.all_events
            if e.event_type_value == "STEP_OUTPUT" and "copy_to_destination" in (e.step_key or "")
        ]
        for event in copy_steps:
            meta = {k: getattr(v, "value", v) for k, v in event.event_specific_data.metadata.items()}
            assert meta["copied"] == [] and meta["already_complete"] == [backup_id]

    # The disaster: the application's data, the Drive copy and the local copy are gone.
    named = {r.label: r for r in resources["destination"].all_named()}
    drive_dest = named["drive"].get_destination()
    for stored in list(drive_dest.list(set_properties(INSTALLATION, backup_id))):
        drive_dest.delete(stored.id)
    shutil.rmtree(inst.root / "nas")
    (inst.root / "nas").mkdir()
    # With the product's own credentials the locked copy cannot be deleted.
    locked = named["s3lock"].get_destination()
    for stored in locked.list(set_properties(INSTALLATION, backup_id)):
        with pytest.raises(LockedError):
            locked.delete(stored.id)
    # restore_job reads the primary unless told otherwise: the Drive copy is gone, the S3 copy restores.
    with dg.instance_for_test() as instance:
        run_config = {"backup_id": backup_id, "dry_run": True}
        from_primary = restore_job.execute_in_process(
            instance=instance,
            resources=resources,
            run_config={"ops": {"start_restore": {"config": run_config}}},
            raise_on_error=False,
        )
        assert not from_primary.success and backup_id in _failure_messages(from_primary)
        from_copy = restore_job.execute_in_process(
            instance=instance,
            resources=resources,
            run_config={"ops": {"start_restore": {"config": {**run_config, "destination": "s3lock"}}}},
        )
        assert from_copy.success
    wipe_database(pg_database)
    client = s3.client()
    for bucket in BUCKETS:
        client.remove_bucket(bucket)  # SeaweedFS removes a non-empty bucket

    recovery_key = inst.export_recovery_key(tmp_path / "recovery-key.txt")
    bare = tmp_path / "bare"
    bare.mkdir()
    cli_env = {
        **env,
        "BACKUP_PIPELINE_STATE_DIR": str(bare / "state"),
        "PATH": f"{VENV_BIN}:/usr/bin:/bin",
        "HOME": str(bare),
        "LANG": "C.UTF-8",
        "BACKUP_PIPELINE_APP_DATABASE_URL": pg_database.url,
        "BACKUP_PIPELINE_S3_ENDPOINT": s3.endpoint,
        "BACKUP_PIPELINE_S3_ACCESS_KEY": s3.access_key,
        "BACKUP_PIPELINE_S3_SECRET_KEY": s3.secret_key,
    }
    listed = subprocess.run(
        ["backup-pipeline", "restore", "--list"],
        env=cli_env,
        cwd=bare,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    lines = listed.stdout.splitlines()
    assert any(line.startswith("destination drive: 0 backup set(s)") for line in lines), listed.stdout
    assert any(line.startswith("destination nas: 0 backup set(s)") for line in lines), listed.stdout
    assert any(line.startswith("destination s3lock: 1 backup set(s)") for line in lines), listed.stdout
    assert f"  {backup_id}  {INSTALLATION}" in listed.stdout

    done = subprocess.run(
        [
            "backup-pipeline", "restore", "--recovery-key-file", str(recovery_key), "--no-dry-run",
            "--confirm", f"restore {backup_id}", "--conflict-policy", "overwrite",
        ],
        env=cli_env, cwd=bare, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "destination drive: no copy of" in done.stderr
    assert "restoring bucket bp-destination" not in done.stderr  # a copy's bucket is never backed up
    assert f"restoring {backup_id} from destination s3lock" in done.stderr
    assert "0 rows point to missing objects" in done.stdout
    assert normalised_dump(pg_database.url) == db_before
    assert sd.WRITER_SECRET_KEY not in done.stdout + done.stderr + listed.stdout + listed.stderr


def test_an_unreachable_destination_gets_its_copy_from_the_next_run_and_is_named_until_then(
    installation: Installation, s3: S3Server, drive: DriveFixture
) -> None:
    inst = installation
    sd.make_bucket(s3, object_lock=True)
    with CuttingProxy("127.0.0.1", s3.port) as proxy:
        one = {
            "BACKUP_PIPELINE_DESTINATION_NAS_KEEP_LAST": "1",
            "BACKUP_PIPELINE_DESTINATION_S3LOCK_KEEP_LAST": "1",
        }
        settings = load_settings(_settings_env(drive, proxy.endpoint, inst, **one))
        resources = _resources(inst, settings)
        view = CopyPolicyView.from_settings(settings)
        with dg.instance_for_test() as instance:
            backup_id = _backup(instance, resources)
            proxy.cut_after(1, repeat=True)  # the S3 destination is down for the whole copy run
            failed = _copy(instance, resources)

            assert not failed.success
            message = _failure_messages(failed)
            assert (
                "COPY_INCOMPLETE" in message
                and "s3lock" in message
                and "nas" not in message.split("copies missing:")[1]
            )
            states = ledger.copy_states(instance)[backup_id]
            assert states["nas"].complete and states["drive"].complete
            assert states["s3lock"].event == ledger.COPY_MISSING_EVENT
            verdict = copy_policy_verdict(instance, view)
            assert not verdict.passed
            assert "copy missing on s3lock" in verdict.description
            assert verdict.metadata["copies"] == 2
            recorded = [
                e.event_specific_data
                for e in failed.all_events
                if e.event_type_value == "ASSET_CHECK_EVALUATION"
                and e.event_specific_data.check_name == "backup_3_2_1"
            ]
            assert recorded and not recorded[0].passed and "s3lock" in (recorded[0].description or "")
            nas = {r.label: r for r in resources["destination"].all_named()}["nas"].get_destination()
            assert any(
                f.properties["partName"] == "manifest"
                for f in nas.list(set_properties(INSTALLATION, backup_id))
            )

            proxy.heal()
            filled = _copy(instance, resources)
            assert filled.success, _failure_messages(filled)
            assert ledger.copy_states(instance)[backup_id]["s3lock"].complete
            verdict = copy_policy_verdict(instance, view)
            assert verdict.passed, verdict.description

            # Each destination's own retention (KEEP_LAST=1) after the next backup's copies: the local
            # folder drops the older set (recorded as copy_deleted there), the locked bucket keeps it
            # until its lock ends (reported, not a failure); the primary keeps both (retention_job's job).
            second = _backup(instance, resources)
            kept = _copy(instance, resources)
            assert kept.success, _failure_messages(kept)
            states = ledger.copy_states(instance)
            assert states[backup_id]["nas"].event == ledger.COPY_DELETED_EVENT
            assert states[backup_id]["s3lock"].complete
            assert states[second]["nas"].complete and states[second]["s3lock"].complete
            assert {f.properties["backupId"] for f in nas.list()} == {second}
            primary = resources["destination"].get_destination()
            assert {f.properties["backupId"] for f in primary.list()} == {backup_id, second}
            logs = " ".join(entry.user_message for entry in instance.all_logs(kept.run_id))
            assert f"s3lock: kept {backup_id}" in logs and "locked until" in logs
            assert copy_policy_verdict(instance, view).passed


COPY_RUN = """
import json, os, sys
import dagster as dg
from dagster._core.instance.ref import InstanceRef
args = json.loads(sys.argv[1])
os.environ.update(args["env"])
from backup_pipeline.ops.copy import copy_backup_job
from backup_pipeline.ops.restore import restore_job
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.resources.policy import BackupPolicyResource
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.settings import load_settings
settings = load_settings()
instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(args["home"]))
copy_backup_job.execute_in_process(
    instance=instance,
    resources={
        "app_db": PostgresResource(database_url=args["db"]),
        "destination": DestinationResource.from_settings(settings),
        "backup_policy": BackupPolicyResource.from_settings(settings),
    },
)
print("finished", flush=True)
"""


def test_a_copy_run_killed_midway_leaves_no_copy_and_the_next_run_completes_it(
    installation: Installation, s3: S3Server, drive: DriveFixture, pg_database: PgDatabase, tmp_path: Path
) -> None:
    inst = installation
    sd.make_bucket(s3, object_lock=True)
    home = tmp_path / "dagster-home"
    home.mkdir()
    with CuttingProxy("127.0.0.1", s3.port) as proxy:
        env = _settings_env(drive, proxy.endpoint, inst)
        settings = load_settings(env)
        resources = _resources(inst, settings)
        with dg.DagsterInstance.local_temp(tempdir=str(home)) as instance:
            backup_id = _backup(instance, {**resources, "app_db": resources["app_db"]})
            on_primary = sum(
                f.size
                for f in resources["destination"]
                .get_destination()
                .list(set_properties(INSTALLATION, backup_id))
            )
            # The copy to s3lock hangs half-way through the set's bytes; then its process is killed.
            proxy.freeze_after(on_primary // 2)
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    COPY_RUN,
                    json.dumps({"env": env, "home": str(home), "db": pg_database.url}),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
            )
            try:
                assert proxy.frozen.wait(timeout=180), "the copy never reached the freeze point"
            finally:
                child.send_signal(signal.SIGKILL)
                out, _ = child.communicate(timeout=30)
            assert "finished" not in out
            proxy.thaw()

            s3lock = {r.label: r for r in resources["destination"].all_named()}["s3lock"].get_destination()
            there = list(s3lock.list(set_properties(INSTALLATION, backup_id)))
            assert there and not any(f.properties["partName"] == "manifest" for f in there)
            assert "s3lock" not in {
                n for n, s in ledger.copy_states(instance).get(backup_id, {}).items() if s.complete
            }
            # What fail_dead_lease_holder does for a run whose process died: the run is failed, and
            # the next run takes the data lease over from it.
            [killed] = instance.get_runs(filters=dg.RunsFilter(job_name="copy_backup_job"))
            instance.report_run_failed(killed, "its process was killed (test)")

            again = _copy(instance, resources)
            assert again.success, _failure_messages(again)
            states = ledger.copy_states(instance)[backup_id]
            assert states["s3lock"].complete and states["nas"].complete
            assert any(
                f.properties["partName"] == "manifest"
                for f in s3lock.list(set_properties(INSTALLATION, backup_id))
            )
            assert copy_policy_verdict(instance, CopyPolicyView.from_settings(settings)).passed
