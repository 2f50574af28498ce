"""Runs beside each other: plan_backup removes leftovers of dead backups, never the set another
backup run is still writing; retention spares the sets running restores and verifications read.

Real PostgreSQL, SeaweedFS S3, a local-folder destination; the other backup run is a run record in
progress in the same Dagster instance (the data lock is held per step, so between two steps of
that run this run's plan_backup can hold it).
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import dagster as dg
import pytest

from backup_pipeline.ops.backup import BACKUP_ID_TAG, build_backup_job
from backup_pipeline.ops.restore_config import TAG_RESTORE_OF
from backup_pipeline.ops.retention import backup_ids_in_use, delete_backup_job, retention_job
from backup_pipeline.ops.verification import VERIFY_JOB_NAME
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.resources.policy import BackupPolicyResource
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.services.backup_parts import (
    PART_DATABASE,
    ErrorCode,
    new_backup_id,
    part_file_name,
    part_properties,
)

from . import backup_helpers as h
from .fixtures.postgres import PgDatabase
from .fixtures.s3 import S3Server

BUCKET = "concurrency-media"


def _leftover_part(env: h.BackupEnv, backup_id: str) -> None:
    """A database part without a manifest, as a backup writes it before finalize."""
    env.dest().put(
        part_file_name(h.INSTALLATION, backup_id, PART_DATABASE),
        [b"ciphertext of a part"],
        part_properties(h.INSTALLATION, backup_id, PART_DATABASE),
    )


def test_plan_backup_keeps_the_set_of_a_running_backup_and_removes_a_dead_one(
    fresh_pg_database: PgDatabase, s3: S3Server, tmp_path: Path
) -> None:
    with fresh_pg_database.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int primary key)")
        conn.execute("INSERT INTO items SELECT generate_series(1, 100)")
    client = s3.client()
    client.make_bucket(BUCKET)
    env = h.make_env(tmp_path, fresh_pg_database, s3)
    running_id = new_backup_id(run_id=uuid.uuid4().hex)
    dead_id = new_backup_id(run_id=uuid.uuid4().hex)
    _leftover_part(env, running_id)
    _leftover_part(env, dead_id)

    with dg.instance_for_test() as instance:
        instance.add_run(
            dg.DagsterRun(
                job_name="backup_job",
                run_id=str(uuid.uuid4()),
                status=dg.DagsterRunStatus.STARTED,
                tags={BACKUP_ID_TAG: running_id},
            )
        )
        result = build_backup_job(executor_def=dg.in_process_executor).execute_in_process(
            run_config=h.run_config(buckets_include=[BUCKET], schema_version_query=""),
            resources=env.resources(),
            instance=instance,
            raise_on_error=False,
        )
        assert result.success
        new_id = result.output_for_node("plan_backup", "plan")["backup_id"]

    remaining = set(h.only_backup_ids(env.dest()))
    assert running_id in remaining  # still being written by the other run
    assert dead_id not in remaining  # no run in progress owns it: leftovers of a run that died
    assert new_id in remaining


def test_retention_spares_the_sets_a_running_restore_or_verification_reads() -> None:
    restoring, verifying, configured, finished = (new_backup_id(run_id=uuid.uuid4().hex) for _ in range(4))
    runs = [
        # A restore of `latest`: only the tag start_restore adds names the resolved set.
        ("restore_job", dg.DagsterRunStatus.STARTED, {TAG_RESTORE_OF: restoring}, {"backup_id": "latest"}),
        ("restore_job", dg.DagsterRunStatus.NOT_STARTED, {}, {"backup_id": configured}),
        # Verification takes no data lock, so it runs while retention does.
        (VERIFY_JOB_NAME, dg.DagsterRunStatus.STARTED, {BACKUP_ID_TAG: verifying}, {}),
        (VERIFY_JOB_NAME, dg.DagsterRunStatus.SUCCESS, {BACKUP_ID_TAG: finished}, {}),
    ]
    with dg.instance_for_test() as instance:
        for job_name, status, tags, op_config in runs:
            instance.add_run(
                dg.DagsterRun(
                    job_name=job_name,
                    run_id=str(uuid.uuid4()),
                    status=status,
                    tags=tags,
                    run_config={"ops": {"start_restore": {"config": op_config}}} if op_config else {},
                )
            )
        assert backup_ids_in_use(instance) == {restoring, configured, verifying}


@pytest.mark.parametrize("job", [retention_job, delete_backup_job], ids=lambda j: j.name)
def test_retention_and_delete_name_a_busy_lock_and_an_unreachable_database_apart(
    job: dg.JobDefinition, pg_database: PgDatabase, tmp_path: Path
) -> None:
    backup_id = new_backup_id(run_id=uuid.uuid4().hex)
    run_config = (
        {"ops": {"delete_backup_op": {"config": {"backup_id": backup_id, "confirm": f"delete {backup_id}"}}}}
        if job is delete_backup_job
        else {}
    )
    policy = BackupPolicyResource(installation_id=h.INSTALLATION, state_dir=str(tmp_path / "state"))
    destination = DestinationResource(
        kind="local", local_path=str(tmp_path / "dest"), installation_id=h.INSTALLATION
    )

    def failure_code(app_db: PostgresResource) -> str:
        with dg.instance_for_test() as instance:
            result = job.execute_in_process(
                run_config=run_config,
                resources={
                    "app_db": app_db,
                    "destination": destination,
                    "backup_policy": policy,
                    "keys": BackupKeysResource(
                        org_secret_file=str(tmp_path / "org-secret"), state_dir=str(tmp_path / "state")
                    ),
                },
                instance=instance,
                raise_on_error=False,
            )
        assert not result.success
        return h.expected_failures(result)[0].code

    app_db = PostgresResource(database_url=pg_database.url)
    with app_db.data_lock("another run"):
        assert failure_code(app_db) == ErrorCode.LOCKED
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        closed = f"postgresql://postgres@127.0.0.1:{unused.getsockname()[1]}/nowhere"
        assert failure_code(PostgresResource(database_url=closed)) == ErrorCode.DATABASE_UNREACHABLE
