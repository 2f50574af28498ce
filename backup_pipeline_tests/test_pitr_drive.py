"""PITR on Google Drive end to end: a private PostgreSQL 15 cluster archiving through pgBackRest into
SeaweedFS (HTTPS), ``pitr_drive_copy_job`` copying base backups and WAL bundles to the project's Drive
v3 test server, and a restore from Drive alone after the S3 repository was deleted.

Order matters (one cluster for the module): the interrupted copy first, then the restore scenario,
which deletes the S3 repository at its end. The gap/window tests at the bottom need no cluster.
"""

from __future__ import annotations

import json
import os
import signal
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

from backup_pipeline.archive.keys import (
    OrgKeyring,
    RecoveryIdentity,
    RecoveryKeyStore,
    generate_org_secret_file,
)
from backup_pipeline.destinations.base import StoredFile
from backup_pipeline.ops import pitr as pitr_ops
from backup_pipeline.ops import pitr_drive as drive_ops
from backup_pipeline.ops.restore import restore_job
from backup_pipeline.ops.restore_moment import RESTORE_TO_MOMENT_OP
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.resources.s3 import S3Resource
from backup_pipeline.services import pitr
from backup_pipeline.services import pitr_drive as drive
from backup_pipeline.services.pitr_drive import DriveIndex
from backup_pipeline.services.pitr_drive_restore import plan_drive_restore
from backup_pipeline.services.pitr_engine import (
    BaseBackup,
    RepoInfo,
    segment_name,
    segment_number,
)
from backup_pipeline.services.pitr_restore import PitrRestoreRefused, RestoreRequest, stop_restored
from backup_pipeline.settings import (
    PITR_S3_ACCESS_KEY_ENV,
    PITR_S3_SECRET_KEY_ENV,
    BackupSettings,
    load_settings,
)
from backup_pipeline_tests.fixtures.drive import (
    SERVICE_ACCOUNT,
    SHARED_DRIVE_ID,
    DriveFixture,
    DriveTestServer,
    write_oauth_user_file,
    write_service_account_key,
)
from backup_pipeline_tests.fixtures.pg_cluster import (
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

BUCKET = "pitr-drive-repo"
APP_DB = "app"
INSTALLATION = "pitr-drive-test"


@dataclass
class World:
    root: Path
    cluster: PrivateCluster
    s3: TlsSeaweedFS
    drive: DriveFixture
    settings: BackupSettings
    env: dict[str, str]
    recovery: RecoveryIdentity
    ctx: pitr.PitrContext
    instance: dg.DagsterInstance

    def keys(self) -> BackupKeysResource:
        return BackupKeysResource(
            org_secret_file=str(self.settings.org_secret_file), state_dir=str(self.settings.state_dir)
        )

    def copy(self) -> dg.ExecuteInProcessResult:
        job = drive_ops.build_pitr_drive_job(self.settings)
        return job.execute_in_process(
            instance=self.instance, resources={"keys": self.keys()}, raise_on_error=False
        )

    def index(self) -> DriveIndex:
        return drive.read_index(self.drive.destination(folder_name=INSTALLATION), INSTALLATION, "app")

    def now(self) -> datetime:
        value = self.cluster.execute("SELECT clock_timestamp()")[0][0]
        assert isinstance(value, datetime)
        return value

    def archive_now(self) -> str:
        """Switch to a new WAL segment and wait until the closed one is in the S3 repository."""
        segment = str(self.cluster.execute("SELECT pg_walfile_name(pg_switch_wal())")[0][0])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if segment in pitr.archive_segments(self.ctx.client, self.ctx.engine.cfg):
                return segment
            time.sleep(0.5)
        raise AssertionError(f"segment {segment} not archived within 120 s")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, drive_server: DriveTestServer) -> Iterator[World]:
    root = make_work_root()
    s3 = TlsSeaweedFS(tmp_path_factory.mktemp("pitr-drive-weed"), root)
    cluster = PrivateCluster(user_dir(root / "cluster", 0o755))
    saved_env = dict(os.environ)
    instance_cm = dg.instance_for_test()
    drive_tmp = root / "drive"
    drive_tmp.mkdir()
    if drive_server.process is None or drive_server.process.poll() is not None:
        drive_server.start()
    drive_server.reset()
    drive_server.add_shared_drive(SHARED_DRIVE_ID, {SERVICE_ACCOUNT: "organizer"})
    drive_fx = DriveFixture(
        server=drive_server,
        tmp=drive_tmp,
        service_account_file=write_service_account_key(drive_tmp / "sa.json", drive_server.token_uri),
        oauth_file=write_oauth_user_file(drive_tmp / "oauth.json", drive_server.token_uri),
    )
    try:
        s3.start()
        s3.server.client().make_bucket(BUCKET)
        org_secret = root / "org-secret"
        generate_org_secret_file(org_secret)
        keyring = OrgKeyring.from_file(org_secret)
        env = {
            **pitr_settings_env(root, cluster, s3, org_secret, stanza="app", bucket=BUCKET, app_db=APP_DB),
            **drive_fx.env(),
            "BACKUP_PIPELINE_STATE_DIR": str(root / "state"),
            "BACKUP_PIPELINE_INSTALLATION_ID": INSTALLATION,
            "BACKUP_PIPELINE_PITR_DRIVE_COPY_ENABLED": "true",
        }
        os.environ.update(env)  # the job reads the repository keys from the environment, as in production
        settings = load_settings(env)
        # the recovery key pair of the installation (the copy job seals to it), exported once
        store = RecoveryKeyStore(settings.state_dir, keyring)
        store.ensure()
        recovery = RecoveryIdentity.from_bech32(store.export_secret())
        cfg = pitr.engine_config(settings)
        # archive-push gives up after 5 s once the repository is deleted (the default 60 s slows the teardown)
        cfg = type(cfg)(**{**cfg.__dict__, "archive_push_timeout_seconds": 5})
        ctx = pitr.open_repo(
            settings,
            keyring=keyring,
            recovery_keys=[recovery.public_key],
            create_keystore=True,
            env=env,
            cfg=cfg,
        )
        start_archiving_server(cluster, ctx, root, "app")
        cluster.execute(f"CREATE DATABASE {APP_DB}")
        cluster.execute("CREATE TABLE items (id int PRIMARY KEY, note text)", APP_DB)
        cluster.execute(
            "INSERT INTO items SELECT g, 'before the base backup' FROM generate_series(1, 50) g", APP_DB
        )
        yield World(root, cluster, s3, drive_fx, settings, env, recovery, ctx, instance_cm.__enter__())
    finally:
        instance_cm.__exit__(None, None, None)
        os.environ.clear()
        os.environ.update(saved_env)
        cluster.stop()
        s3.close()
        leftovers = kill_pgbackrest_processes(str(root))
        remove_tree(root)
        assert not leftovers, f"pgbackrest processes left running: {leftovers}"


def _meta(world: World) -> dict[str, object]:
    event = world.instance.get_latest_materialization_event(drive_ops.PITR_DRIVE_ASSET)
    assert event is not None and event.asset_materialization is not None
    return {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}


def _segments_of(world: World, unit: drive.DriveUnit) -> list[str]:
    manifest = drive.read_manifest(
        world.drive.destination(folder_name=INSTALLATION), unit, "app", keyring=None, recovery=world.recovery
    )
    return [name for name, _at in manifest["segments"]]


def test_an_interrupted_bundle_leaves_no_gap_and_no_duplicate(world: World) -> None:
    pitr.run_base_backup(world.ctx, "full")
    world.archive_now()
    first = world.copy()
    assert first.success
    meta = _meta(world)
    assert meta["drive_base_backups"] == 1 and meta["drive_wal_bundles"] == 1 and meta["drive_wal_gaps"] == 0
    assert meta["drive_earliest_restorable"] != "none" and meta["s3_latest_restorable"] != "none"
    text = repr(meta)
    for secret in (world.ctx.secrets.cipher_pass, world.s3.server.secret_key):
        assert secret not in text

    world.cluster.execute(
        "INSERT INTO items SELECT g, 'while interrupted' FROM generate_series(1001, 1010) g", APP_DB
    )
    world.archive_now()
    # the bundle's data part uploads and verifies; the manifest's upload is refused (Drive full)
    world.drive.fault("storage_full", route="upload_start", skip=1, count=1)
    broken = world.copy()
    assert not broken.success
    index = world.index()
    assert len(index.bundles) == 1 and len(index.strays) == 1  # nothing claims to be complete
    assert drive.drive_window(index).last_segment == index.bundles[0].last

    world.drive.clear_faults()
    again = world.copy()
    assert again.success
    assert _meta(world)["drive_strays_removed"] == 1
    index = world.index()
    assert not index.strays and len(index.bundles) == 2
    one, two = (_segments_of(world, b) for b in index.bundles)
    assert not set(one) & set(two)  # no duplicate
    tl, last = segment_number(one[-1])
    assert two[0] == segment_name(tl, last + 1)  # the next bundle starts where the complete one ended
    assert drive.chain_gaps(one + two) == [] and drive.drive_window(index).gaps == ()
    names = [f.name for f in world.drive.destination(folder_name=INSTALLATION).list()]
    assert len(names) == 2 + 2 * 2  # base data + manifest, two bundles of data + manifest


CHILD_COPY = """
import sys
from pathlib import Path

from backup_pipeline.archive.keys import OrgKeyring, RecoveryKeyStore
from backup_pipeline.services import pitr
from backup_pipeline.services import pitr_drive as drive
from backup_pipeline.settings import load_settings
from backup_pipeline_tests.fixtures.drive import DriveFixture, DriveTestServer

settings = load_settings()
keyring = OrgKeyring.from_file(settings.org_secret_file)
ctx = pitr.open_repo(settings, keyring=keyring)
tmp = Path(sys.argv[2])
server = DriveTestServer(port=int(sys.argv[1]), data_dir=tmp, log_path=tmp / "unused.log")
fixture = DriveFixture(server, tmp, tmp / "sa.json", tmp / "oauth.json")
destination = fixture.destination(folder_name=sys.argv[3])
keys = drive.CopyKeys(keyring, [RecoveryKeyStore(settings.state_dir, keyring).public_key()])
drive.copy_to_drive(destination, ctx.client, ctx.engine.cfg, ctx.engine.info(), installation_id=sys.argv[3], keys=keys)
"""


def test_a_copy_killed_mid_upload_leaves_no_gap(world: World) -> None:
    world.cluster.execute("CREATE TABLE filler (id int, pad text)", APP_DB)
    world.cluster.execute(
        "INSERT INTO filler SELECT g, md5(random()::text) || md5(random()::text) FROM generate_series(1, 150000) g",
        APP_DB,
    )
    world.archive_now()
    before = world.index()
    received = int(world.drive.stats()["upload_bytes_received"])
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_COPY, str(world.drive.server.port), str(world.drive.tmp), INSTALLATION],
        env={**os.environ, **world.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    # SIGKILL once the bundle's data part is partly uploaded (256 KiB chunks: many requests to go)
    while child.poll() is None and time.monotonic() < deadline:
        if int(world.drive.stats()["upload_bytes_received"]) > received + 512 * 1024:
            child.kill()
            break
        time.sleep(0.02)
    _out, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, f"the copy was not killed mid-upload: {err.decode()[-2000:]}"
    killed = world.index()
    assert [b.unit for b in killed.bundles] == [b.unit for b in before.bundles]  # nothing claims completeness

    assert world.copy().success
    after = world.index()
    assert len(after.bundles) == len(before.bundles) + 1 and not after.strays
    previous, new = after.bundles[-2], after.bundles[-1]
    tl, last = segment_number(previous.last)
    assert new.first == segment_name(tl, last + 1)
    assert drive.drive_window(after).gaps == ()
    # `pitr status` shows Drive's window next to the S3 one
    status = _cli(world, "pitr", "status", "--json", dropped=frozenset())
    assert status.returncode == 0, status.stdout + status.stderr
    shown = json.loads(status.stdout)
    assert shown["drive_wal_bundles"] == len(after.bundles) and shown["drive_wal_gaps"] == 0
    assert shown["drive_earliest_restorable"] != "none" and shown["earliest_restorable"] != "none"
    assert shown["drive_lag_seconds"] >= 0 and shown["problems"] == []


#: the disaster-recovery machine: Drive's credentials, the PITR settings, the recovery key; no org
#: secret and no S3 keys
DR_MACHINE = frozenset({"BACKUP_PIPELINE_ORG_SECRET_FILE", PITR_S3_ACCESS_KEY_ENV, PITR_S3_SECRET_KEY_ENV})


def _cli(world: World, *args: str, dropped: frozenset[str] = DR_MACHINE) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in {**os.environ, **world.env}.items() if k not in dropped}
    return subprocess.run(
        [sys.executable, "-m", "backup_pipeline.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_restore_from_drive_alone_after_the_s3_repository_is_deleted(world: World) -> None:
    bundles_before = len(world.index().bundles)
    before_t1 = world.now()
    world.cluster.execute("INSERT INTO items SELECT g, 'T1' FROM generate_series(51, 80) g", APP_DB)
    time.sleep(1.2)
    target = world.now()
    time.sleep(1.2)
    world.archive_now()
    assert world.copy().success
    world.cluster.execute("DROP TABLE items", APP_DB)  # T2: the bad migration
    world.archive_now()
    assert world.copy().success
    index = world.index()
    assert len(index.bases) == 1 and len(index.bundles) == bundles_before + 2
    window = drive.drive_window(index)
    assert window.gaps == () and window.latest is not None and window.latest >= target

    client = world.s3.server.client()  # the S3 repository is lost entirely, key store included
    for obj in client.list_objects(BUCKET, recursive=True):
        client.remove_object(BUCKET, obj.object_name or "")
    client.remove_bucket(BUCKET)

    key_file = world.root / "recovery-key.txt"
    key_file.write_text(world.recovery.to_bech32() + "\n")
    restore_dir = world.root / "restored-from-drive"
    port = free_low_port()
    try:
        done = _cli(
            world,
            "restore",
            "--pitr-source",
            "drive",
            "--recovery-key-file",
            str(key_file),
            "--target-time",
            target.isoformat(),
            "--data-dir",
            str(restore_dir),
            "--port",
            str(port),
            "--json",
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        # the moment reached is the T1 insert's commit: the last transaction before the target
        assert before_t1 <= datetime.fromisoformat(report["reached"]) <= target
        with psycopg.connect(host=report["socket_dir"], port=port, dbname=APP_DB, user="postgres") as conn:
            rows = conn.execute("SELECT count(*) FROM items").fetchone()
        assert rows == (90,)  # the table exists, with the rows of T1 (50 + 10 of the first test + 30)
        assert f"{bundles_before + 2} WAL bundle(s)" in done.stderr
        for secret in (world.ctx.secrets.cipher_pass, world.s3.server.secret_key):
            assert secret not in done.stdout + done.stderr
        assert not list((world.settings.pitr_config_dir / "drive-restore").iterdir())  # scratch removed
    finally:
        stop_restored(world.ctx.engine, None, restore_dir)

    # the same restore from Dagster: restore_job with pitr_source drive (org secret, no S3 repository)
    job_dir = world.root / "restored-by-job"
    port = free_low_port()
    try:
        result = restore_job.execute_in_process(
            instance=world.instance,
            resources=_restore_job_resources(world),
            run_config={
                "ops": {
                    RESTORE_TO_MOMENT_OP: {
                        "config": {
                            "target_time": target.isoformat(),
                            "data_dir": str(job_dir),
                            "port": port,
                            "pitr_source": "drive",
                        }
                    }
                }
            },
            raise_on_error=False,
        )
        assert result.success, result.failure_data_for_node(RESTORE_TO_MOMENT_OP)
        moment = result.output_for_node(RESTORE_TO_MOMENT_OP, "moment")
        assert before_t1 <= datetime.fromisoformat(moment["reached"]) <= target
        with psycopg.connect(host=moment["socket_dir"], port=port, dbname=APP_DB, user="postgres") as conn:
            assert conn.execute("SELECT count(*) FROM items").fetchone() == (90,)
        started = {e.step_key for e in result.all_events if e.is_step_start}
        assert started == {RESTORE_TO_MOMENT_OP}  # the backup-set steps were skipped
    finally:
        stop_restored(world.ctx.engine, None, job_dir)

    # and from the PITR job of its own: pitr_restore_job with pitr_source drive
    pitr_dir = world.root / "restored-by-pitr-job"
    port = free_low_port()
    try:
        jobs = {job.name: job for job in pitr_ops.build_pitr_jobs(world.settings)}
        result = jobs[pitr_ops.PITR_RESTORE_JOB].execute_in_process(
            instance=world.instance,
            resources={"keys": world.keys()},
            run_config={
                "ops": {
                    "pitr_restore": {
                        "config": {
                            "target_time": target.isoformat(),
                            "data_dir": str(pitr_dir),
                            "port": port,
                            "pitr_source": "drive",
                        }
                    }
                }
            },
            raise_on_error=False,
        )
        assert result.success, result.failure_data_for_node("pitr_restore")
        report = result.output_for_node("pitr_restore")
        assert before_t1 <= datetime.fromisoformat(report["reached"]) <= target
        with psycopg.connect(host=report["socket_dir"], port=port, dbname=APP_DB, user="postgres") as conn:
            assert conn.execute("SELECT count(*) FROM items").fetchone() == (90,)
    finally:
        stop_restored(world.ctx.engine, None, pitr_dir)


def _restore_job_resources(world: World) -> dict[str, object]:
    """restore_job's resources; the backup-set ones point nowhere (its PITR path never uses them)."""
    return {
        "app_db": PostgresResource(database_url="postgresql://postgres@127.0.0.1:1/app"),
        "s3": S3Resource(endpoint="http://127.0.0.1:1", access_key="k", secret_key="s"),
        "destination": DestinationResource(
            kind="local",
            installation_id="t",
            state_dir=str(world.settings.state_dir),
            local_path=str(world.root / "sets"),
        ),
        "keys": world.keys(),
    }


# --- the bundle index and gaps, without a cluster ----------------------------------------------------


def _unit(unit: str, kind: str, **props: str) -> drive.DriveUnit:
    stored = StoredFile(id=unit, name=unit, size=1, md5=None, sha256=None, properties=props)
    return drive.DriveUnit(unit, kind, stored, {drive.PROP_KIND: kind, **props})


def _bundle(first: int, last: int, at: datetime, gaps: int = 0) -> drive.DriveUnit:
    a, b = segment_name(1, first), segment_name(1, last)
    return _unit(
        drive.wal_unit(a, b),
        drive.KIND_WAL,
        first=a,
        last=b,
        lastAt=at.isoformat(),
        gaps=str(gaps),
    )


def test_a_gap_between_bundles_ends_the_window_and_is_named() -> None:
    t0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    base = _unit(
        "base-20261207-100000F",
        drive.KIND_BASE,
        label="20261207-100000F",
        stoppedAt=(t0 + timedelta(minutes=1)).isoformat(),
        walStart=segment_name(1, 2),
        walStop=segment_name(1, 3),
    )
    index = drive.DriveIndex(
        bases=[base],
        bundles=[
            _bundle(1, 5, t0 + timedelta(minutes=5)),
            _bundle(6, 8, t0 + timedelta(minutes=8)),
            _bundle(10, 12, t0 + timedelta(minutes=12)),  # segment 9 never reached Drive
        ],
    )
    window = drive.drive_window(index)
    assert window.earliest == t0 + timedelta(minutes=1, seconds=1)
    assert window.latest == t0 + timedelta(minutes=8)
    assert window.gaps and segment_name(1, 9) in window.gaps[0]
    live = Path("/nonexistent/live")
    late = RestoreRequest(
        target=t0 + timedelta(minutes=10), data_dir=Path("/nonexistent/x"), port=1, database="a"
    )
    with pytest.raises(PitrRestoreRefused) as refused:
        plan_drive_restore(index, late, stanza="app", live_data_dir=live, live_port=2)
    message = str(refused.value)
    assert "after the recoverable window" in message and segment_name(1, 9) in message
    assert (t0 + timedelta(minutes=8)).isoformat(timespec="seconds") in message
    ok = RestoreRequest(
        target=t0 + timedelta(minutes=6), data_dir=Path("/nonexistent/x"), port=1, database="a"
    )
    plan = plan_drive_restore(index, ok, stanza="app", live_data_dir=live, live_port=2)
    assert [b.unit for b in plan.chain.bundles] == [b.unit for b in index.bundles[:2]]


def test_a_base_whose_first_segment_is_in_no_bundle_is_not_restorable() -> None:
    t0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    base = _unit(
        "base-x",
        drive.KIND_BASE,
        label="x",
        stoppedAt=t0.isoformat(),
        walStart=segment_name(1, 2),
        walStop=segment_name(1, 2),
    )
    index = drive.DriveIndex(bases=[base], bundles=[_bundle(4, 6, t0 + timedelta(minutes=6))])
    window = drive.drive_window(index)
    assert window.earliest is None and window.latest is None and window.gaps
    request = RestoreRequest(target=None, data_dir=Path("/nonexistent/x"), port=1, database="a")
    with pytest.raises(PitrRestoreRefused, match="no base backup whose WAL is bundled"):
        plan_drive_restore(index, request, stanza="app", live_data_dir=Path("/nonexistent/l"), live_port=2)


def test_plan_bundle_starts_after_the_last_complete_bundle() -> None:
    t0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)

    def item(leaf: str) -> tuple[str, drive.RepoFile]:
        return (
            leaf[:24] if not leaf.endswith(".history") else "",
            drive.RepoFile(leaf, f"archive/app/15-1/{leaf}", 1, t0),
        )

    files = [item(f"{segment_name(1, n)}-{'ab' * 20}.lz4") for n in (3, 4, 5, 7)] + [
        item(f"{segment_name(1, 4)}.00000028.backup"),
        item("00000002.history"),
    ]
    chosen, timed, gaps = drive.plan_bundle(files, segment_name(1, 3))
    assert [n for n, _t in timed] == [segment_name(1, n) for n in (4, 5, 7)]
    assert gaps == [segment_name(1, 6)]
    leaves = {c.rel.rsplit("/", 1)[-1] for c in chosen}
    assert f"{segment_name(1, 4)}.00000028.backup" in leaves and "00000002.history" in leaves
    assert not any(leaf.startswith(segment_name(1, 3)) for leaf in leaves)
    assert drive.plan_bundle(files, segment_name(1, 7)) == ([], [], [])


def _info(*labels_and_starts: tuple[str, int]) -> RepoInfo:
    t0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    backups = tuple(
        BaseBackup(label, "full", t0, t0, segment_name(1, start), segment_name(1, start), 0, 0, False)
        for label, start in labels_and_starts
    )
    return RepoInfo("app", 0, "ok", backups, None, None)


def test_drive_follows_the_repository_retention_but_never_drops_its_last_base() -> None:
    t0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)

    def base(label: str, start: int) -> drive.DriveUnit:
        return _unit(
            drive.base_unit(label),
            drive.KIND_BASE,
            label=label,
            stoppedAt=t0.isoformat(),
            walStart=segment_name(1, start),
            walStop=segment_name(1, start),
        )

    index = drive.DriveIndex(
        bases=[base("20261201-010000F", 2), base("20261202-010000F", 8)],
        bundles=[_bundle(1, 5, t0), _bundle(6, 7, t0), _bundle(8, 12, t0)],
    )
    # the repository expired the first base: Drive drops it and the bundles that end before the second
    expired = drive.plan_expiry(index, _info(("20261202-010000F", 8), ("20261203-010000F", 14)))
    assert [u.unit for u in expired] == [
        "base-20261201-010000F",
        drive.wal_unit(segment_name(1, 1), segment_name(1, 5)),
        drive.wal_unit(segment_name(1, 6), segment_name(1, 7)),
    ]
    # the oldest base the repository keeps is not on Drive yet (or the repository is empty): keep all
    assert drive.plan_expiry(index, _info(("20261203-010000F", 14))) == []
    assert drive.plan_expiry(index, _info()) == []
    assert drive.plan_expiry(index, _info(("20261201-010000F", 2), ("20261202-010000F", 8))) == []


def test_of_two_live_copies_only_the_older_goes_on() -> None:
    # A hand-launched copy beside a running one would remove that one's half-written bundle as a
    # stray: the younger run stops before touching Drive, the older one is not stopped by it.
    with dg.DagsterInstance.ephemeral() as instance:
        finished, older, younger = "f" * 36, "a" * 36, "b" * 36
        for run_id, status in (
            (finished, dg.DagsterRunStatus.SUCCESS),
            (older, dg.DagsterRunStatus.STARTED),
            (younger, dg.DagsterRunStatus.STARTED),
        ):
            instance.add_run(
                dg.DagsterRun(job_name=drive_ops.PITR_DRIVE_COPY_JOB, run_id=run_id, status=status)
            )
            time.sleep(0.01)  # distinct creation times
        assert drive_ops.earlier_live_copy(instance, younger) == older
        assert drive_ops.earlier_live_copy(instance, older) is None
        instance.report_run_canceled(instance.get_run_by_id(older))  # type: ignore[arg-type]
        assert drive_ops.earlier_live_copy(instance, younger) is None
