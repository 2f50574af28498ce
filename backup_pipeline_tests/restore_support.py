"""Shared pieces of the restore tests: an installation (sample app DB + buckets + keys + a
destination), running the real backup and restore jobs in process, and snapshots to compare."""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import dagster as dg
import psycopg
from minio import Minio

from backup_pipeline.archive.keys import RecoveryKeyStore, generate_org_secret_file
from backup_pipeline.concurrency import DATA_LEASE_TABLE
from backup_pipeline.ops.backup import build_backup_job
from backup_pipeline.ops.restore import restore_job
from backup_pipeline.ops.restore_moment import RESTORE_TO_MOMENT_OP
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.resources.postgres import PostgresResource, locate_pg_tools
from backup_pipeline.resources.s3 import S3Resource
from backup_pipeline.sample_app import SeedSpec, seed_sample_app
from backup_pipeline.services import restore as svc
from backup_pipeline.settings import BackupSettings
from backup_pipeline_tests.fixtures.pg_cluster import TlsSeaweedFS
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server

MiB = 1024 * 1024
BUCKETS = ("media", "avatars", "exports")
SMALL_SPEC = SeedSpec(
    buckets=BUCKETS,
    small_objects=90,
    large_object_bytes=(3 * MiB,),
    users=40,
    comments=400,
    audit_events=400,
    sessions=30,
    upload_workers=4,
)
INSTALLATION = "restore-test"


@dataclass
class Installation:
    db: PgDatabase
    s3: S3Server
    root: Path
    org_secret_file: Path = field(init=False)
    state_dir: Path = field(init=False)
    backups_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.state_dir = self.root / "state"
        self.backups_dir = self.root / "backups"
        self.org_secret_file = self.root / "org-secret"
        if not self.org_secret_file.exists():
            generate_org_secret_file(self.org_secret_file)

    def resources(self, destination: DestinationResource | None = None) -> dict[str, Any]:
        return {
            "app_db": PostgresResource(database_url=self.db.url),
            "s3": S3Resource(
                endpoint=self.s3.endpoint, access_key=self.s3.access_key, secret_key=self.s3.secret_key
            ),
            "destination": destination
            or DestinationResource(
                kind="local",
                installation_id=INSTALLATION,
                state_dir=str(self.state_dir),
                local_path=str(self.backups_dir),
                retry_attempts=2,
                retry_initial_wait_seconds=0.05,
                retry_max_wait_seconds=0.1,
            ),
            "keys": BackupKeysResource(
                org_secret_file=str(self.org_secret_file), state_dir=str(self.state_dir)
            ),
        }

    def export_recovery_key(self, path: Path) -> Path:
        from backup_pipeline.archive.keys import OrgKeyring

        store = RecoveryKeyStore(self.state_dir, OrgKeyring.from_file(self.org_secret_file))
        store.ensure()
        path.write_text(store.export_secret() + "\n")
        return path

    def seed(self) -> None:
        with self.db.connect() as conn:
            seed_sample_app(conn, self.s3.client(), SMALL_SPEC)

    def backup(self, instance: dg.DagsterInstance, **resources: Any) -> str:
        job = build_backup_job(executor_def=dg.in_process_executor)
        result = job.execute_in_process(
            instance=instance,
            resources={**self.resources(), **resources},
            run_config={
                "ops": {
                    "plan_backup": {"config": {"installation_id": INSTALLATION, "exclude_table_patterns": []}}
                }
            },
        )
        assert result.success
        return str(result.dagster_run.tags["backup_pipeline/backup_id"])

    def restore(
        self, instance: dg.DagsterInstance, raise_on_error: bool = False, **config: Any
    ) -> dg.ExecuteInProcessResult:
        return restore_job.execute_in_process(
            instance=instance,
            resources=self.resources(),
            run_config={"ops": {"start_restore": {"config": config}}},
            raise_on_error=raise_on_error,
        )


def confirm(backup_id: str) -> str:
    return svc.confirmation_phrase(backup_id)


def normalised_dump(
    url: str, exclude_tables: tuple[str, ...] = (), *, schema_only: bool = False, owners: bool = False
) -> str:
    """Schema and data of a database as plain SQL, without the per-dump random tokens, and without
    the pipeline's data lease table (its bookkeeping, which backups leave out too).
    ``owners``: with owners and grants; ``schema_only``: without the data."""
    tools = locate_pg_tools()
    excludes = [f"--exclude-table={t}" for t in (*exclude_tables, f"public.{DATA_LEASE_TABLE}")]
    options = ([] if owners else ["--no-owner", "--no-privileges"]) + (
        ["--schema-only"] if schema_only else []
    )
    out = subprocess.run(
        [str(tools.pg_dump.path), *options, *excludes, "-d", url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    skip = ("--", "\\restrict", "\\unrestrict")
    return "\n".join(line for line in out.splitlines() if line.strip() and not line.startswith(skip))


def s3_snapshot(client: Minio) -> dict[tuple[str, str], tuple[Any, ...]]:
    """Every object of every bucket: SHA-256 of the bytes, size, content type, user metadata, tags."""
    snap: dict[tuple[str, str], tuple[Any, ...]] = {}
    for bucket in client.list_buckets():
        for obj in client.list_objects(bucket.name, recursive=True):
            assert obj.object_name is not None
            stat = client.stat_object(bucket.name, obj.object_name)
            response = client.get_object(bucket.name, obj.object_name)
            try:
                digest = hashlib.sha256(response.read()).hexdigest()
            finally:
                response.close()
                response.release_conn()
            meta = tuple(
                sorted(
                    (k.lower(), v) for k, v in stat.metadata.items() if k.lower().startswith("x-amz-meta-")
                )
            )
            tags = tuple(sorted(dict(client.get_object_tags(bucket.name, obj.object_name) or {}).items()))
            snap[(bucket.name, obj.object_name)] = (digest, stat.size, stat.content_type, meta, tags)
    return snap


def wipe_database(db: PgDatabase) -> None:
    with psycopg.connect(db.url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


def step_metadata(result: dg.ExecuteInProcessResult, step_prefix: str) -> dict[str, dict[str, Any]]:
    """Output metadata of every step whose key starts with ``step_prefix`` (values unwrapped)."""
    out: dict[str, dict[str, Any]] = {}
    for event in result.all_events:
        if (
            event.event_type_value == "STEP_OUTPUT"
            and event.step_key
            and event.step_key.startswith(step_prefix)
        ):
            data = event.event_specific_data
            meta = getattr(data, "metadata", {}) or {}
            out[event.step_key] = {k: getattr(v, "value", v) for k, v in meta.items()}
    return out


class PitrWorldLike(Protocol):
    """What restore_job_to_moment needs of a PITR test world (test_pitr_integration, test_pitr_object_lock)."""

    instance: dg.DagsterInstance
    env: dict[str, str]
    s3: TlsSeaweedFS
    settings: BackupSettings
    root: Path

    def keys_resource(self) -> BackupKeysResource: ...


def restore_job_to_moment(world: PitrWorldLike, moment: dict[str, object]) -> dg.ExecuteInProcessResult:
    """restore_job as the Launchpad runs it with restore_to_moment's config (the backup-set resources
    point at nothing a PITR run uses: the local destination is an empty folder)."""
    return restore_job.execute_in_process(
        instance=world.instance,
        resources={
            "app_db": PostgresResource(database_url=world.env["BACKUP_PIPELINE_APP_DATABASE_URL"]),
            "s3": S3Resource(
                endpoint=world.s3.server.endpoint,
                access_key=world.s3.server.access_key,
                secret_key=world.s3.server.secret_key,
            ),
            "destination": DestinationResource(
                kind="local",
                installation_id="pitr",
                state_dir=str(world.settings.state_dir),
                local_path=str(world.root / "no-sets"),
            ),
            "keys": world.keys_resource(),
        },
        run_config={"ops": {RESTORE_TO_MOMENT_OP: {"config": moment}}},
        raise_on_error=False,
    )
