"""Issue 15's "Must show": the hostile corpus through the product, compared byte for byte.

One ``backup_job`` run (Dagster's ``execute_in_process``, real PostgreSQL, the suite's S3
server, a local-folder destination) backs up the hostile database and buckets once; each test
then restores that set into a different target and compares it with the corpus as the source
server stored it (``hostile/compare.py``; zero differences is the pass):

(a) ``restore_job`` into an empty database and empty buckets;
(b) ``restore_job`` over a populated database and populated buckets, conflict policy
    ``overwrite``;
(c) the disaster-recovery CLI (``backup-pipeline restore``, a subprocess) on a fresh state dir
    with only the recovery key (exported with ``backup-pipeline keys export-recovery``) and the
    destination, into a database name that does not exist yet and emptied buckets.

What "equal" means over a populated target (b): the DATABASE is restored as a whole — afterwards
it must equal the backup, so a table, row, sequence state or any other object present only in
the target is a difference (the application's state is the backup's). BUCKETS are restored
object by object under a conflict policy that adds and overwrites but never deletes: every
backed-up object must be exactly as stored, and objects (and buckets) present only in the
target must be left exactly as they were; they are listed as notes, not differences.

The S3 server's own refusals and rewrites at upload are the corpus's business
(``BucketCorpus.server_notes``, printed by each test): the reference is what the server stored.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from backup_pipeline.ops.backup import build_backup_job
from backup_pipeline_tests.fixtures.postgres import PgDatabase, admin_connect, create_database, drop_database
from backup_pipeline_tests.fixtures.s3 import S3Server
from backup_pipeline_tests.hostile.buckets import (
    EMPTY_BUCKET,
    MANY_BUCKET,
    MANY_KEYS,
    OBJECTS_BUCKET,
    BucketCorpus,
    build_bucket_corpus,
    hostile_objects,
    put_object,
)
from backup_pipeline_tests.hostile.compare import (
    BucketSnapshot,
    DbSnapshot,
    Report,
    compare_buckets,
    compare_databases,
    snapshot_buckets,
    snapshot_database,
)
from backup_pipeline_tests.hostile.database import build_database_corpus, copy_database
from backup_pipeline_tests.restore_support import INSTALLATION, Installation, confirm

VENV_BIN = Path(sys.executable).parent


@dataclasses.dataclass
class HostileBackup:
    """The corpus as stored, and the backup set made of it (or why the backup failed)."""

    root: Path
    source: PgDatabase
    database: DbSnapshot
    buckets: BucketCorpus
    backup_id: str | None
    backup_failure: str
    recovery_key_file: Path | None

    def installation(self, db: PgDatabase, s3: S3Server) -> Installation:
        return Installation(db, s3, self.root)

    def require_backup(self) -> str:
        if self.backup_id is None:
            pytest.fail(
                f"backup_job failed on the hostile corpus, nothing to restore:\n{self.backup_failure}"
            )
        return self.backup_id


def _failure_text(result: dg.ExecuteInProcessResult) -> str:
    """Each failed step's description and error, including the attempts before a retry."""
    texts = []
    for event in result.all_events:
        if event.event_type_value in ("STEP_FAILURE", "STEP_UP_FOR_RETRY"):
            data = event.event_specific_data
            user = getattr(data, "user_failure_data", None)
            error = getattr(data, "error", None)
            texts.append(
                f"{event.step_key} ({event.event_type_value}): {getattr(user, 'description', '') or ''}"
            )
            while error is not None:
                texts.append(error.message.strip())
                error = error.cause
    return "\n".join(texts)


def _product_env(backup: HostileBackup, s3: S3Server, state_dir: Path, db_url: str) -> dict[str, str]:
    """The settings of a host running the CLI: nothing of the test process leaks in."""
    return {
        "PATH": f"{VENV_BIN}:/usr/bin:/bin",
        "HOME": str(state_dir.parent),
        "LANG": "C.UTF-8",
        "BACKUP_PIPELINE_DESTINATION": "local",
        "BACKUP_PIPELINE_LOCAL_DESTINATION_PATH": str(backup.root / "backups"),
        "BACKUP_PIPELINE_INSTALLATION_ID": INSTALLATION,
        "BACKUP_PIPELINE_STATE_DIR": str(state_dir),
        "BACKUP_PIPELINE_APP_DATABASE_URL": db_url,
        **s3.env(),
    }


def _export_recovery_key(backup: HostileBackup, s3: S3Server) -> Path:
    """``backup-pipeline keys export-recovery`` on the source host, as an administrator does once."""
    env = {
        **_product_env(backup, s3, backup.root / "state", backup.source.url),
        "BACKUP_PIPELINE_ORG_SECRET_FILE": str(backup.root / "org-secret"),
    }
    done = subprocess.run(
        ["backup-pipeline", "keys", "export-recovery"],
        input="export recovery key\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=backup.root,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (secret,) = [
        line.strip() for line in done.stdout.splitlines() if line.strip().startswith("BP-RECOVERY-SECRET")
    ]
    key_file = backup.root / "recovery-key.txt"
    key_file.write_text(secret + "\n")
    key_file.chmod(0o600)
    return key_file


@pytest.fixture(scope="module")
def hostile_backup(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileBackup]:
    root = tmp_path_factory.mktemp("hostile")
    source = create_database("bp_hostile_src")
    try:
        build_database_corpus(source.url)
        if s3_server.process is None or s3_server.process.poll() is not None:
            s3_server.start()
        s3_server.reset()
        buckets = build_bucket_corpus(s3_server)
        backup = HostileBackup(root, source, snapshot_database(source.url), buckets, None, "", None)
        with dg.instance_for_test() as instance:
            result = build_backup_job(executor_def=dg.in_process_executor).execute_in_process(
                instance=instance,
                resources=backup.installation(source, s3_server).resources(),
                run_config={
                    "ops": {
                        "plan_backup": {
                            "config": {
                                "installation_id": INSTALLATION,
                                "exclude_table_patterns": [],
                                # The corpus is not the sample app: it has no schema_migrations table.
                                "schema_version_query": "",
                            }
                        }
                    }
                },
                raise_on_error=False,
            )
        if result.success:
            backup.backup_id = str(result.dagster_run.tags["backup_pipeline/backup_id"])
            backup.recovery_key_file = _export_recovery_key(backup, s3_server)
        else:
            backup.backup_failure = _failure_text(result)
        yield backup
    finally:
        drop_database(source.name)


def _check(report: Report, backup: HostileBackup) -> None:
    print(report.render())
    print("S3 server at upload (the corpus compares against what it stored):")
    print("\n".join(f"  {n}" for n in backup.buckets.server_notes) or "  stored everything as sent")
    assert report.differences == [], report.render()


def _restore_job(inst: Installation, backup_id: str, **config: Any) -> dg.ExecuteInProcessResult:
    with dg.instance_for_test() as instance:
        return inst.restore(
            instance, backup_id=backup_id, dry_run=False, confirm=confirm(backup_id), **config
        )


def _finish_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    for event in result.all_events:
        if event.event_type_value == "STEP_OUTPUT" and event.step_key == "finish_restore":
            meta = getattr(event.event_specific_data, "metadata", {}) or {}
            return {k: getattr(v, "value", v) for k, v in meta.items()}
    return {}


def _rows_pointing_to_unstored_objects(backup: HostileBackup) -> int:
    """Rows of the corpus whose object the source server never stored (it refused the key at
    upload): the consistency report of a faithful restore names exactly these."""
    with backup.source.connect() as conn:
        rows = conn.execute("SELECT bucket, object_key FROM public.media_assets").fetchall()
    stored = backup.buckets.stored
    return sum(1 for bucket, key in rows if key not in stored.get(bucket, {}))


def test_a_restore_job_into_an_empty_database_and_empty_buckets(
    hostile_backup: HostileBackup, s3_server: S3Server
) -> None:
    backup_id = hostile_backup.require_backup()
    s3_server.reset()
    target = create_database("bp_hostile_empty")
    try:
        result = _restore_job(hostile_backup.installation(target, s3_server), backup_id)
        report = Report()
        if not result.success:
            report.add("restore run", "restore_job", "success", _failure_text(result), limit=4000)
        else:
            consistency = _finish_metadata(result).get("consistency", {})
            expected_missing = _rows_pointing_to_unstored_objects(hostile_backup)
            if consistency.get("rows_pointing_to_missing_objects") != expected_missing:
                report.add("consistency report", "finish_restore", expected_missing, consistency)
        report.extend(compare_databases(hostile_backup.database, snapshot_database(target.url)))
        report.extend(compare_buckets(hostile_backup.buckets.stored, snapshot_buckets(s3_server)))
        _check(report, hostile_backup)
    finally:
        drop_database(target.name)


# The populated target: the corpus, then changed by the application after the backup.
POPULATED_DATABASE_CHANGES = """
UPDATE "Weird ""Schema"" ü".orders SET customer = 'changed ' || id WHERE id % 10 = 0;
DELETE FROM "Weird ""Schema"" ü".items WHERE order_id > 1900;
INSERT INTO parts.events VALUES (999999, '2024-05-05', 'click', '{"after": "backup"}');
SELECT nextval('"Weird ""Schema"" ü"."shared seq"') FROM generate_series(1, 3);
DROP VIEW "select"."big customers";
DROP TABLE parts.events_2024_rest;
ALTER TABLE "UPPER"."IDENTITIES" ENABLE TRIGGER "never fires";
REFRESH MATERIALIZED VIEW "select"."never refreshed";
ALTER TABLE "select"."forced secrets" NO FORCE ROW LEVEL SECURITY;
SELECT lo_put(oid, 0, '\\x42') FROM pg_largeobject_metadata;
SELECT lo_from_bytea(0, '\\x0102');
CREATE SCHEMA "only in target";
CREATE TABLE "only in target"."new table" (x int PRIMARY KEY);
INSERT INTO "only in target"."new table" VALUES (1), (2);
CREATE TABLE public.extra_after_backup AS SELECT 1 AS n;
"""


def _populate_buckets(s3: S3Server) -> None:
    """Other data in the corpus's buckets (changed, missing and extra objects) and an extra bucket."""
    client = s3.client()
    for bucket in (OBJECTS_BUCKET, MANY_BUCKET, EMPTY_BUCKET, "only-in-target"):
        client.make_bucket(bucket)
    specs = {o.key: o for o in hostile_objects()}
    changed = [
        dataclasses.replace(specs["binary/every-byte.bin"], body=b"different bytes"),
        dataclasses.replace(specs["headers/all.txt"], headers={"Content-Type": "text/plain"}),
        dataclasses.replace(specs["tags/ten.txt"], tags={"other": "tag"}),
        dataclasses.replace(specs["meta/non-ascii.txt"], headers={"x-amz-meta-other": "value"}),
        dataclasses.replace(
            specs["encoded/page.html"], headers={"Content-Type": "text/html"}, body=b"<html/>"
        ),
        dataclasses.replace(specs["folder/"], body=b"now with a body"),
        specs["unicode/caf\u00e9.txt"],
        dataclasses.replace(specs["unicode/cafe\u0301.txt"], body=b"stale NFD"),
    ]
    for obj in changed:
        put_object(s3, OBJECTS_BUCKET, obj)
    for i in range(0, MANY_KEYS, 51):
        key = f"tenant-{i % 7}/year-{2020 + i % 5}/month-{i % 12:02d}/item {i:05d}.txt"
        put_object(s3, MANY_BUCKET, dataclasses.replace(specs["empty.bin"], key=key, body=b"old"))
    for bucket, key in (
        (OBJECTS_BUCKET, "only-in-target/extra.txt"),
        (EMPTY_BUCKET, "extra"),
        ("only-in-target", "x"),
    ):
        put_object(s3, bucket, dataclasses.replace(specs["empty.bin"], key=key, body=b"extra"))


def test_b_restore_job_over_a_populated_database_and_buckets(
    hostile_backup: HostileBackup, s3_server: S3Server
) -> None:
    backup_id = hostile_backup.require_backup()
    target = copy_database(hostile_backup.source, "bp_hostile_populated")
    try:
        with psycopg.connect(target.url, autocommit=True) as conn:
            conn.execute(POPULATED_DATABASE_CHANGES.encode())
        assert compare_databases(hostile_backup.database, snapshot_database(target.url)).differences
        s3_server.reset()
        _populate_buckets(s3_server)
        populated: BucketSnapshot = snapshot_buckets(s3_server)

        result = _restore_job(
            hostile_backup.installation(target, s3_server), backup_id, conflict_policy="overwrite"
        )
        report = Report()
        if not result.success:
            report.add("restore run", "restore_job", "success", _failure_text(result), limit=4000)
        report.extend(compare_databases(hostile_backup.database, snapshot_database(target.url)))
        report.extend(
            compare_buckets(hostile_backup.buckets.stored, snapshot_buckets(s3_server), untouched=populated)
        )
        _check(report, hostile_backup)
    finally:
        drop_database(target.name)


def test_c_disaster_recovery_cli_with_only_the_recovery_key(
    hostile_backup: HostileBackup, s3_server: S3Server, tmp_path: Path
) -> None:
    backup_id = hostile_backup.require_backup()
    assert hostile_backup.recovery_key_file is not None
    s3_server.reset()
    new_db = f"bp_hostile_dr_{uuid.uuid4().hex[:8]}"
    fresh_state = tmp_path / "new-host" / "state"
    fresh_state.parent.mkdir()
    target = dataclasses.replace(hostile_backup.source, name=new_db)
    env = _product_env(hostile_backup, s3_server, fresh_state, target.url)
    try:
        done = subprocess.run(
            [
                "backup-pipeline",
                "restore",
                "--recovery-key-file",
                str(hostile_backup.recovery_key_file),
                "--backup-id",
                backup_id,
                "--no-dry-run",
                "--confirm",
                f"restore {backup_id}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            cwd=fresh_state.parent,
        )
        report = Report()
        if done.returncode != 0 or "Traceback" in done.stderr:
            report.add(
                "restore run",
                "backup-pipeline restore",
                "exit 0",
                f"exit {done.returncode}: {done.stderr}",
                limit=4000,
            )
        exists = _database_exists(new_db)
        if exists:
            report.extend(compare_databases(hostile_backup.database, snapshot_database(target.url)))
        else:
            report.add("database", new_db, "restored", "(absent)")
        report.extend(compare_buckets(hostile_backup.buckets.stored, snapshot_buckets(s3_server)))
        _check(report, hostile_backup)
    finally:
        drop_database(new_db)


def _database_exists(name: str) -> bool:
    with admin_connect() as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
