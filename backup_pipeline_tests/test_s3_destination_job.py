"""backup_job → an S3 bucket with object lock, under the product's own least-privilege credentials;
then everything a compromised application host could do with those credentials; then the set
restores (restore_job, and the disaster-recovery CLI with only the recovery key).

SeaweedFS plays both the application's S3 and the destination (a separate bucket and identity).
"""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
from minio import Minio
from minio.error import S3Error

from backup_pipeline.destinations.base import LockedError
from backup_pipeline.ops.backup import build_backup_job
from backup_pipeline.ops.restore import restore_job
from backup_pipeline.ops.retention import BACKUP_SET_ASSET, delete_backup_job, retention_job
from backup_pipeline.resources.policy import BackupPolicyResource
from backup_pipeline.services.backup_parts import set_properties
from backup_pipeline_tests.fixtures import s3_destination as sd
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import SeaweedFSServer
from backup_pipeline_tests.restore_support import (
    BUCKETS,
    INSTALLATION,
    Installation,
    confirm,
    normalised_dump,
    s3_snapshot,
    wipe_database,
)

VENV_BIN = Path(sys.executable).parent
GARBAGE = b"encrypted by ransomware"


def _app_snapshot(client: Minio) -> dict[tuple[str, str], tuple[Any, ...]]:
    return {k: v for k, v in s3_snapshot(client).items() if k[0] != sd.BUCKET}


def _lose_app_data(server: SeaweedFSServer, db: PgDatabase) -> None:
    wipe_database(db)
    client = server.client()
    for bucket in BUCKETS:
        if client.bucket_exists(bucket):
            client.remove_bucket(bucket)  # SeaweedFS removes a non-empty bucket


def _backup(inst: Installation, instance: dg.DagsterInstance, resources: dict[str, Any]) -> str:
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


def _output_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    for event in result.all_events:
        if event.event_type_value == "STEP_OUTPUT":
            meta = getattr(event.event_specific_data, "metadata", {}) or {}
            return {k: getattr(v, "value", v) for k, v in meta.items()}
    return {}


def _code(call: Any) -> str:
    try:
        call()
    except S3Error as exc:
        return str(exc.code)
    return "ok"


def test_a_locked_backup_survives_the_products_own_credentials_and_restores(
    s3: SeaweedFSServer, pg_database: PgDatabase, tmp_path: Path
) -> None:
    wipe_database(pg_database)
    sd.make_bucket(s3, object_lock=True)
    inst = Installation(pg_database, s3, tmp_path / "server")
    inst.seed()
    destination = sd.writer_resource(s3, inst.state_dir, INSTALLATION, lock_days=1)
    resources = {**inst.resources(), "destination": destination}
    db_before, s3_before = normalised_dump(pg_database.url), _app_snapshot(s3.client())

    with dg.instance_for_test() as instance:
        first = _backup(inst, instance, resources)
        dest = destination.get_destination()
        files = list(dest.list(set_properties(INSTALLATION, first)))
        assert {f.properties["partName"] for f in files} == {
            "database",
            "manifest",
            *(f"bucket-{b}" for b in BUCKETS),
            *(f"index-{b}" for b in BUCKETS),  # the part indexes (random-access restore)
            *(f"inventory-{b}" for b in BUCKETS),  # the object lists (issue 18)
        }
        assert all(f.locked_until is not None and f.locked_until > datetime.now(UTC) for f in files)

        # An attacker on the application host, with the destination's own credentials (and, for
        # good measure, the bucket owner's plain DELETE): nothing of the set changes.
        writer = Minio(f"127.0.0.1:{s3.port}", sd.WRITER_ACCESS_KEY, sd.WRITER_SECRET_KEY, secure=False)
        admin = s3.client()
        for stored in files:
            key = f"{sd.PREFIX}{stored.id.partition('?versionId=')[0]}"
            version = stored.id.rpartition("?versionId=")[2]
            try:
                dest.delete(stored.id)
                raise AssertionError(f"{key} was deleted")
            except LockedError as refused:
                assert refused.until == stored.locked_until
            assert _code(lambda k=key: writer.remove_object(sd.BUCKET, k)) == "AccessDenied"
            assert (
                _code(lambda k=key, v=version: writer.remove_object(sd.BUCKET, k, version_id=v))
                == "AccessDenied"
            )
            assert (
                _code(lambda k=key: writer.put_object(sd.BUCKET, k, io.BytesIO(GARBAGE), len(GARBAGE)))
                == "ok"
            )
            assert _code(lambda k=key: admin.remove_object(sd.BUCKET, k)) == "ok"  # a delete marker
        assert sorted(f.id for f in dest.list(set_properties(INSTALLATION, first))) == sorted(
            f.id for f in files
        )

        # The product's own delete and retention: "locked until", and the runs succeed.
        deleted = delete_backup_job.execute_in_process(
            instance=instance,
            resources={
                "destination": destination,
                "backup_policy": BackupPolicyResource(
                    installation_id=INSTALLATION, state_dir=str(inst.state_dir)
                ),
                "app_db": resources["app_db"],
                "keys": resources["keys"],
            },
            run_config={
                "ops": {
                    "delete_backup_op": {
                        "config": {"backup_id": first, "confirm": f"delete {first}", "force": True}
                    }
                }
            },
        )
        assert deleted.success
        assert _output_metadata(deleted)["deleted"] is False
        second = _backup(inst, instance, resources)
        kept = retention_job.execute_in_process(
            instance=instance,
            resources={
                "destination": destination,
                "backup_policy": BackupPolicyResource(
                    installation_id=INSTALLATION, state_dir=str(inst.state_dir), retention_keep_last=1
                ),
                "app_db": resources["app_db"],
                "keys": resources["keys"],
            },
        )
        assert kept.success
        locked = _output_metadata(kept)["locked"]
        assert set(locked) == {first} and datetime.fromisoformat(locked[first]) > datetime.now(UTC)
        assert (
            instance.fetch_observations(BACKUP_SET_ASSET, limit=10).records == []
        )  # nothing recorded deleted
        assert first != second

        # The disaster. The attacked set restores.
        _lose_app_data(s3, pg_database)
        restored = restore_job.execute_in_process(
            instance=instance,
            resources=resources,
            run_config={
                "ops": {
                    "start_restore": {
                        "config": {"backup_id": first, "dry_run": False, "confirm": confirm(first)}
                    }
                }
            },
        )
    assert restored.success
    assert normalised_dump(pg_database.url) == db_before
    assert _app_snapshot(s3.client()) == s3_before

    # Again from a bare machine: the CLI with the destination's settings and the recovery key only.
    recovery_key = inst.export_recovery_key(tmp_path / "recovery-key.txt")
    _lose_app_data(s3, pg_database)
    bare = tmp_path / "bare"
    bare.mkdir()
    env = {
        **sd.settings_env(s3, bare / "state"),
        "PATH": f"{VENV_BIN}:/usr/bin:/bin",
        "HOME": str(bare),
        "LANG": "C.UTF-8",
        "BACKUP_PIPELINE_INSTALLATION_ID": INSTALLATION,
        "BACKUP_PIPELINE_APP_DATABASE_URL": pg_database.url,
        "BACKUP_PIPELINE_S3_ENDPOINT": s3.endpoint,
        "BACKUP_PIPELINE_S3_ACCESS_KEY": s3.access_key,
        "BACKUP_PIPELINE_S3_SECRET_KEY": s3.secret_key,
    }
    done = subprocess.run(
        [
            "backup-pipeline", "restore", "--recovery-key-file", str(recovery_key), "--backup-id", first,
            "--no-dry-run", "--confirm", f"restore {first}", "--conflict-policy", "overwrite",
        ],
        env=env, cwd=bare, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 rows point to missing objects" in done.stdout
    assert normalised_dump(pg_database.url) == db_before
    assert _app_snapshot(s3.client()) == s3_before
    assert sd.WRITER_SECRET_KEY not in done.stdout + done.stderr
