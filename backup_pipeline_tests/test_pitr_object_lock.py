"""The PITR repository on an object-lock bucket, and the restore from it "as of" a moment (issue 20).

One private PostgreSQL 15 cluster archiving through pgBackRest into SeaweedFS (HTTPS), whose
repository bucket is created with object lock and a default GOVERNANCE retention of one day. In
order: stanza-create, archive-push, two base backups, ``expire`` (delete markers, the versions stay
locked) and what ``pitr_archive`` / ``pitr status`` report of the bucket; the refusals of
``pitr_repo_as_of``; then the attack — rows at T1, a table dropped at T2, a normal restore between
them, then everything of the repository deleted and its info files and the key store overwritten
with the repository's own S3 keys — after which a normal restore fails and the as-of restore
(CLI, recovery key alone) reaches the moment between T1 and T2 again. The attack is last: it
leaves the repository unusable for anything but an as-of restore.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from click.testing import CliRunner
from minio.commonconfig import GOVERNANCE
from minio.datatypes import Object
from minio.error import S3Error
from minio.objectlockconfig import DAYS, ObjectLockConfig

from backup_pipeline.archive.keys import (
    OrgKeyring,
    RecoveryIdentity,
    RecoveryKeyStore,
    generate_org_secret_file,
)
from backup_pipeline.cli import main as cli_main
from backup_pipeline.ops import pitr as pitr_ops
from backup_pipeline.ops.restore_moment import RESTORE_TO_MOMENT_OP
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.services import pitr
from backup_pipeline.services.pitr_engine import PitrEngineError, segment_number
from backup_pipeline.services.pitr_keys import keystore_key, repo_client
from backup_pipeline.services.pitr_lock import pick_versions
from backup_pipeline.services.pitr_restore import (
    PitrRestoreRefused,
    RestoreRequest,
    restore_to_moment,
    stop_restored,
)
from backup_pipeline.services.pitr_status import read_archiver_status
from backup_pipeline.settings import BackupSettings, load_settings
from backup_pipeline_tests.fixtures.pg_cluster import (
    PG_BIN,
    PrivateCluster,
    TlsSeaweedFS,
    free_low_port,
    kill_pgbackrest_processes,
    make_work_root,
    pitr_settings_env,
    remove_tree,
    start_archiving_server,
    user_dir,
)
from backup_pipeline_tests.restore_support import restore_job_to_moment

BUCKET = "pitr-locked"
PLAIN_BUCKET = "pitr-plain"
APP_DB = "app"
STANZA = "app"
LOCK_DAYS = 1
ARCHIVE_PUSH_TIMEOUT = 5  # archive-push gives up this fast once the attack broke archive.info


@dataclass
class LockWorld:
    root: Path
    cluster: PrivateCluster
    s3: TlsSeaweedFS
    settings: BackupSettings
    env: dict[str, str]
    keyring: OrgKeyring
    recovery: RecoveryIdentity
    ctx: pitr.PitrContext
    instance: dg.DagsterInstance

    @property
    def repo_prefix(self) -> str:
        return self.ctx.engine.cfg.repo.path.strip("/") + "/"

    def keys_resource(self) -> BackupKeysResource:
        return BackupKeysResource(
            org_secret_file=str(self.settings.org_secret_file), state_dir=str(self.settings.state_dir)
        )

    def switch_and_wait_archived(self, timeout: float = 120) -> None:
        segment = str(self.cluster.execute("SELECT pg_walfile_name(pg_switch_wal())")[0][0])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.cluster.connect(APP_DB, user="bp_pitr") as conn:
                status = read_archiver_status(conn)
            if (
                status.last_archived_wal
                and status.last_archived_wal >= segment
                and not status.waiting_segments
            ):
                return
            time.sleep(0.5)
        raise AssertionError(f"segment {segment} not archived within {timeout} s")

    def now(self) -> datetime:
        value = self.cluster.execute("SELECT clock_timestamp()")[0][0]
        assert isinstance(value, datetime)
        return value


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockWorld]:
    root = make_work_root()
    s3 = TlsSeaweedFS(tmp_path_factory.mktemp("pitr-lock-weed"), root)
    cluster = PrivateCluster(user_dir(root / "cluster", 0o755))
    saved_env = dict(os.environ)
    instance_cm = dg.instance_for_test()
    try:
        s3.start()
        admin = s3.server.client()
        # as DEPLOYMENT.md says: object lock chosen at creation, a default retention on every version
        admin.make_bucket(BUCKET, object_lock=True)
        admin.set_object_lock_config(BUCKET, ObjectLockConfig(GOVERNANCE, LOCK_DAYS, DAYS))
        admin.make_bucket(PLAIN_BUCKET)
        org_secret = root / "org-secret"
        generate_org_secret_file(org_secret)
        keyring = OrgKeyring.from_file(org_secret)
        env = pitr_settings_env(
            root,
            cluster,
            s3,
            org_secret,
            stanza=STANZA,
            bucket=BUCKET,
            app_db=APP_DB,
            BACKUP_PIPELINE_RETENTION_KEEP_LAST="1",
        )
        os.environ.update(env)  # the ops and the CLI read the repository keys from the environment
        settings = load_settings(env)
        # the installation's own recovery key pair (the base backup job seals the key store to it),
        # exported once as the administrator would at set-up
        store = RecoveryKeyStore(settings.state_dir, keyring)
        store.ensure()
        recovery = RecoveryIdentity.from_bech32(store.export_secret())
        cfg = pitr.engine_config(settings)
        cfg = type(cfg)(**{**cfg.__dict__, "archive_push_timeout_seconds": ARCHIVE_PUSH_TIMEOUT})
        ctx = pitr.open_repo(
            settings,
            keyring=keyring,
            recovery_keys=[recovery.public_key],
            create_keystore=True,
            env=env,
            cfg=cfg,
        )
        start_archiving_server(cluster, ctx, root, STANZA)
        cluster.execute(f"CREATE DATABASE {APP_DB}")
        cluster.execute("CREATE TABLE items (id int PRIMARY KEY)", APP_DB)
        cluster.execute("INSERT INTO items SELECT generate_series(1, 20)", APP_DB)
        yield LockWorld(root, cluster, s3, settings, env, keyring, recovery, ctx, instance_cm.__enter__())
    finally:
        instance_cm.__exit__(None, None, None)
        os.environ.clear()
        os.environ.update(saved_env)
        cluster.stop()
        s3.close()
        kill_pgbackrest_processes(str(root))  # the attacked repository makes archive-push fail and retry
        remove_tree(root)


def _version(key: str, seconds: int, *, marker: bool = False, vid: str = "") -> Object:
    moment = datetime(2026, 12, 8, 1, 0, 0, tzinfo=UTC) + timedelta(seconds=seconds)
    return Object(
        "b",
        key,
        last_modified=moment,
        size=0 if marker else 7,
        version_id=vid or f"{key}@{seconds}",
        is_delete_marker=marker,
    )


def test_pick_versions_takes_each_keys_newest_version_at_the_moment() -> None:
    as_of = datetime(2026, 12, 8, 1, 0, 10, tzinfo=UTC)
    entries = [
        _version("backup.info", 12, vid="garbage"),  # the attacker's overwrite: after the moment
        _version("backup.info", 5),
        _version("backup.info", 1),
        _version("wal-1", 2),
        _version("wal-1", 11, marker=True),  # the attacker's delete: after the moment, ignored
        _version("old-backup", 3),
        _version("old-backup", 6, marker=True),  # expired before the moment: not in the repository then
        _version("same-second", 8),
        _version("same-second", 8, marker=True),  # a tie: the version wins (an extra file is harmless)
        _version("later", 10, vid="at-the-moment"),  # the moment's own second counts as before
        _version("future", 11),
    ]
    picks, oldest = pick_versions(entries, as_of)
    assert {k: p.version_id for k, p in picks.items()} == {
        "backup.info": "backup.info@5",
        "wal-1": "wal-1@2",
        "same-second": "same-second@8",
        "later": "at-the-moment",
    }
    assert oldest == datetime(2026, 12, 8, 1, 0, 1, tzinfo=UTC)


def _versions(world: LockWorld, prefix: str) -> list[Object]:
    return list(
        world.s3.server.client().list_objects(BUCKET, prefix=prefix, recursive=True, include_version=True)
    )


def test_the_repository_works_on_an_object_lock_bucket_and_expire_only_hides(world: LockWorld) -> None:
    result = pitr_ops.build_pitr_jobs(world.settings)[0].execute_in_process(
        instance=world.instance,
        resources={"keys": world.keys_resource()},
        run_config={"ops": {"pitr_base_backup": {"config": {"backup_type": "full"}}}},
    )
    assert result.success
    event = world.instance.get_latest_materialization_event(pitr_ops.PITR_ARCHIVE_ASSET)
    assert event is not None and event.asset_materialization is not None
    meta = {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}
    # read from the bucket, not from a setting (there is none)
    assert meta["repo_object_lock"] == "enabled" and meta["repo_versioning"] == "Enabled"
    assert meta["repo_lock_default_mode"] == GOVERNANCE and meta["repo_lock_default_days"] == LOCK_DAYS
    assert meta["wal_missing_segments"] == 0
    first = world.ctx.engine.info().usable_backups[-1]

    world.cluster.execute("INSERT INTO items SELECT generate_series(21, 40)", APP_DB)
    world.switch_and_wait_archived()  # archive-push onto the locked bucket
    info = pitr.run_base_backup(world.ctx, "full")  # retention 1: expire removes the first backup
    assert [b.label for b in info.usable_backups] != [first.label] and len(info.usable_backups) == 1
    assert info.archive_min is not None and segment_number(info.archive_min) > segment_number(first.wal_start)

    client = world.s3.server.client()
    expired = f"{world.repo_prefix}backup/{STANZA}/{first.label}/"
    assert list(client.list_objects(BUCKET, prefix=expired, recursive=True)) == []  # gone for pgBackRest
    versions = _versions(world, expired)
    kept = [v for v in versions if not v.is_delete_marker]
    assert kept and any(v.is_delete_marker for v in versions)  # expire only added delete markers
    with pytest.raises(S3Error) as refused:  # and the version it hid stays locked
        client.remove_object(BUCKET, str(kept[0].object_name), version_id=kept[0].version_id)
    assert refused.value.code == "AccessDenied"
    assert any(not v.is_delete_marker for v in _versions(world, str(kept[0].object_name)))

    done = CliRunner().invoke(cli_main, ["pitr", "status", "--json"], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    status = json.loads(done.stdout)
    assert (
        status["repo_object_lock"],
        status["repo_lock_default_mode"],
        status["repo_lock_default_days"],
    ) == (
        "enabled",
        GOVERNANCE,
        LOCK_DAYS,
    )
    text = CliRunner().invoke(cli_main, ["pitr", "status"], catch_exceptions=False).output
    summary = f"object lock: enabled on bucket {BUCKET}; default retention GOVERNANCE {LOCK_DAYS} days"
    assert summary in text
    # the set-up of the database server's config (which holds the repository keys) says it too
    setup = CliRunner().invoke(
        cli_main,
        ["pitr", "server-config", "--output", str(world.root / "server-config-check")],
        catch_exceptions=False,
    )
    assert setup.exit_code == 0 and summary in setup.stdout, setup.output


def test_as_of_refuses_a_moment_before_the_repository_and_a_bucket_without_versions(world: LockWorld) -> None:
    restore_dir = world.root / "never-restored"
    long_ago = "2020-01-01T00:00:00+00:00"
    result = restore_job_to_moment(
        world,
        {
            "target_time": "latest",
            "data_dir": str(restore_dir),
            "port": free_low_port(),
            "pitr_repo_as_of": long_ago,
        },
    )
    assert not result.success
    failure = result.failure_data_for_node(RESTORE_TO_MOMENT_OP)
    assert failure is not None and failure.error is not None
    message = failure.error.message
    assert "[PITR_RESTORE_REFUSED]" in message and f"pitr_repo_as_of {long_ago}" in message
    assert "had no backup.info of stanza app at that moment" in message and "the oldest version" in message
    assert not restore_dir.exists()

    plain = load_settings({**world.env, "BACKUP_PIPELINE_PITR_REPO_S3_BUCKET": PLAIN_BUCKET})
    request = RestoreRequest(target=None, data_dir=restore_dir, port=free_low_port(), database=APP_DB)
    with pytest.raises(
        PitrRestoreRefused,
        match="pitr_repo_as_of needs the repository bucket pitr-plain to keep "
        "object versions, and its versioning is off",
    ):
        pitr.restore_database_to_moment(
            plain, request, keyring=world.keyring, repo_as_of=datetime.now(UTC) - timedelta(minutes=1)
        )
    assert not restore_dir.exists()

    moment = datetime.now(UTC) - timedelta(seconds=30)
    later = RestoreRequest(
        target=moment + timedelta(seconds=10), data_dir=restore_dir, port=free_low_port(), database=APP_DB
    )
    with pytest.raises(
        PitrRestoreRefused, match=r"is after --pitr-repo-as-of .*holds no WAL written after it"
    ):
        pitr.restore_database_to_moment(
            world.settings,
            later,
            keyring=world.keyring,
            field="--target-time",
            repo_as_of=moment,
            as_of_field="--pitr-repo-as-of",
        )
    runner = CliRunner()
    for args, words in (
        (["--pitr-repo-as-of", moment.isoformat()], "needs --target-time"),
        (["--target-time", "latest", "--pitr-repo-as-of", "latest"], "not 'latest'"),
        (["--target-time", "latest", "--pitr-repo-as-of", "2026-12-08 01:00"], "no UTC offset"),
        (
            ["--target-time", "latest", "--pitr-source", "drive", "--pitr-repo-as-of", moment.isoformat()],
            "does not apply to --pitr-source drive",
        ),
    ):
        done = runner.invoke(
            cli_main,
            [
                "restore",
                "--org-secret-file",
                str(world.settings.org_secret_file),
                "--data-dir",
                str(restore_dir),
                "--port",
                str(free_low_port()),
                *args,
            ],
            catch_exceptions=False,
        )
        assert done.exit_code == 2 and words in done.output, (args, done.output)
    assert not restore_dir.exists()


def _cli(world: LockWorld, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in {**os.environ, **world.env}.items() if k != "BACKUP_PIPELINE_ORG_SECRET_FILE"}
    return subprocess.run(
        [sys.executable, "-m", "backup_pipeline.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_after_an_attack_with_the_repository_keys_the_as_of_restore_reaches_the_moment(
    world: LockWorld,
) -> None:
    world.cluster.execute("CREATE TABLE precious (id int)", APP_DB)
    before_t1 = world.now()
    world.cluster.execute("INSERT INTO precious SELECT generate_series(1, 30)", APP_DB)  # T1
    time.sleep(1.2)
    target = world.now()
    time.sleep(1.2)
    world.cluster.execute("DROP TABLE precious", APP_DB)  # T2
    world.switch_and_wait_archived()

    # a restore from the locked repository as it is
    first_dir = world.root / "restored-before-the-attack"
    request = RestoreRequest(target=target, data_dir=first_dir, port=free_low_port(), database=APP_DB)
    try:
        report = restore_to_moment(
            world.ctx.engine, request, pg_bin=PG_BIN, secrets_env=world.ctx.secrets_env()
        )
        assert report.tables["public.precious"] == 30
        assert report.reached is not None and before_t1 <= datetime.fromisoformat(report.reached) <= target
    finally:
        stop_restored(world.ctx.engine, PG_BIN, first_dir)

    time.sleep(1.1)  # listings give modification times in seconds: the moment lies between whole seconds
    as_of = datetime.now(UTC)
    time.sleep(1.1)
    # The attack, with the S3 keys the database server holds for archive_command: every object of the
    # repository deleted (plain deletes), its info files replaced by garbage.
    access, secret = world.s3.server.access_key, world.s3.server.secret_key
    attacker = repo_client(world.ctx.engine.cfg.repo, access, secret)
    names = [
        str(o.object_name) for o in attacker.list_objects(BUCKET, prefix=world.repo_prefix, recursive=True)
    ]
    assert len(names) > 10
    for name in names:
        attacker.remove_object(BUCKET, name)
    garbage = b"[backrest]\nnothing to see here\n"
    for sub in ("backup", "archive"):
        for leaf in (f"{sub}.info", f"{sub}.info.copy"):
            attacker.put_object(
                BUCKET, f"{world.repo_prefix}{sub}/{STANZA}/{leaf}", io.BytesIO(garbage), len(garbage)
            )

    broken_dir = world.root / "restored-normally-after-the-attack"
    broken = RestoreRequest(target=target, data_dir=broken_dir, port=free_low_port(), database=APP_DB)
    # pgbackrest info fails, or reports the stanza's status as an error: either way nothing is touched
    with pytest.raises(
        PitrEngineError, match=r"(?s)pgbackrest info.*--pitr-repo-as-of <a moment before the damage>"
    ):
        pitr.restore_database_to_moment(
            world.settings, broken, keyring=world.keyring, as_of_field="--pitr-repo-as-of"
        )
    assert not broken_dir.exists()
    # the key store beside the repository too: the as-of restore reads its version of the moment
    attacker.put_object(BUCKET, keystore_key(STANZA), io.BytesIO(garbage), len(garbage))

    recovery_file = world.root / "recovery-key.txt"
    recovery_file.write_text(world.recovery.to_bech32() + "\n")
    restore_dir = world.root / "restored-as-of"
    port = free_low_port()
    try:
        done = _cli(
            world,
            "restore",
            "--recovery-key-file",
            str(recovery_file),
            "--target-time",
            target.isoformat(),
            "--pitr-repo-as-of",
            as_of.isoformat(),
            "--data-dir",
            str(restore_dir),
            "--port",
            str(port),
            "--json",
        )
        assert done.returncode == 0, done.stderr
        report_json = json.loads(done.stdout)
        assert report_json["repo_as_of"] == as_of.isoformat(timespec="seconds")
        assert before_t1 <= datetime.fromisoformat(report_json["reached"]) <= target
        with psycopg.connect(
            host=report_json["socket_dir"], port=port, dbname=APP_DB, user="postgres"
        ) as conn:
            rows = conn.execute("SELECT count(*) FROM precious").fetchone()
        assert rows == (30,)  # the rows of T1, in the table T2 dropped
        for secret_text in (world.ctx.secrets.cipher_pass, secret):
            assert secret_text not in done.stdout + done.stderr
        audit = [
            json.loads(line) for line in (world.settings.state_dir / "audit.jsonl").read_text().splitlines()
        ]
        restores = [r["details"] for r in audit if r["action"] == "pitr_restore"]
        assert restores[-1]["repo_as_of"] == report_json["repo_as_of"]  # the audit trail says which state
        leftovers = world.settings.pitr_config_dir.absolute() / "as-of-restore"
        assert not leftovers.exists() or not any(leftovers.iterdir())  # the temporary repository is gone
    finally:
        stop_restored(world.ctx.engine, None, restore_dir)
