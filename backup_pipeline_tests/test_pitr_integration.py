"""PITR end to end on a private PostgreSQL 15 cluster archiving through pgBackRest into SeaweedFS (HTTPS).

One cluster for the module (initdb + base backup cost seconds): the restore-to-a-moment test, then
the outage test (archiver killed mid-segment, S3 server stopped and started) which checks that the
window has no gap afterwards, then the clean-up checks in the fixture's teardown.
"""

from __future__ import annotations

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

from backup_pipeline.alerts import verify_webhook_signature
from backup_pipeline.archive.keys import OrgKeyring, RecoveryIdentity, generate_org_secret_file
from backup_pipeline.ops import pitr as pitr_ops
from backup_pipeline.ops.restore_moment import RESTORE_TO_MOMENT_OP
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.sensors import build_pitr_archive_sensor
from backup_pipeline.services import pitr
from backup_pipeline.services.pitr_engine import segment_number
from backup_pipeline.services.pitr_keys import (
    PitrKeyError,
    ensure_keystore,
    keystore_key,
    load_passphrase,
    read_keystore,
    unseal,
)
from backup_pipeline.services.pitr_restore import (
    PitrRestoreFailed,
    PitrRestoreRefused,
    RestoreRequest,
    check_request,
    restore_to_moment,
    stop_restored,
)
from backup_pipeline.services.pitr_status import archive_problems, read_archiver_status
from backup_pipeline.settings import (
    BackupSettings,
    load_settings,
)
from backup_pipeline_tests.fixtures.alert_receivers import WebhookReceiver
from backup_pipeline_tests.fixtures.pg_cluster import (
    PG_BIN,
    PrivateCluster,
    TlsSeaweedFS,
    free_low_port,
    kill_pgbackrest_processes,
    make_work_root,
    pgbackrest_processes,
    pitr_settings_env,
    remove_tree,
    start_archiving_server,
    user_dir,
)
from backup_pipeline_tests.restore_support import restore_job_to_moment

BUCKET = "pitr-repo"
APP_DB = "app"
# pgbackrest's archive-push gives up after this long while the repository is unreachable (the
# default 60 s would make the outage test slow; production keeps 60).
ARCHIVE_PUSH_TIMEOUT = 5


@dataclass
class PitrWorld:
    root: Path
    cluster: PrivateCluster
    s3: TlsSeaweedFS
    settings: BackupSettings
    env: dict[str, str]
    keyring: OrgKeyring
    recovery: RecoveryIdentity
    ctx: pitr.PitrContext
    instance: dg.DagsterInstance

    def keys_resource(self) -> BackupKeysResource:
        return BackupKeysResource(
            org_secret_file=str(self.settings.org_secret_file), state_dir=str(self.settings.state_dir)
        )

    def jobs(self) -> dict[str, dg.JobDefinition]:
        return {job.name: job for job in pitr_ops.build_pitr_jobs(self.settings)}

    def status(self) -> pitr.ArchiverStatus:
        with self.cluster.connect(APP_DB, user="bp_pitr") as conn:
            return read_archiver_status(conn)

    def switch_wal(self) -> str:
        row = self.cluster.execute("SELECT pg_walfile_name(pg_switch_wal())")
        return str(row[0][0])

    def wait_archived(self, segment: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if (
                status.last_archived_wal
                and status.last_archived_wal >= segment
                and not status.waiting_segments
            ):
                return
            time.sleep(0.5)
        raise AssertionError(f"segment {segment} not archived within {timeout} s: {self.status()}")


def _settings(root: Path, cluster: PrivateCluster, s3: TlsSeaweedFS, org_secret: Path) -> dict[str, str]:
    return pitr_settings_env(
        root,
        cluster,
        s3,
        org_secret,
        stanza="app",
        bucket=BUCKET,
        app_db=APP_DB,
        BACKUP_PIPELINE_RETENTION_KEEP_LAST="2",
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PitrWorld]:
    root = make_work_root()
    s3 = TlsSeaweedFS(tmp_path_factory.mktemp("pitr-weed"), root)
    cluster = PrivateCluster(user_dir(root / "cluster", 0o755))
    saved_env = dict(os.environ)
    instance_cm = dg.instance_for_test()
    try:
        s3.start()
        s3.server.client().make_bucket(BUCKET)
        org_secret = root / "org-secret"
        generate_org_secret_file(org_secret)
        keyring = OrgKeyring.from_file(org_secret)
        recovery = RecoveryIdentity.generate()
        env = _settings(root, cluster, s3, org_secret)
        os.environ.update(env)  # the ops read the repository keys from the environment, as in production
        settings = load_settings(env)
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
        start_archiving_server(cluster, ctx, root, "app")
        cluster.execute(f"CREATE DATABASE {APP_DB}")
        cluster.execute("CREATE TABLE items (id int PRIMARY KEY, note text)", APP_DB)
        cluster.execute(
            "INSERT INTO items SELECT g, 'before the base backup' FROM generate_series(1, 50) g", APP_DB
        )
        yield PitrWorld(root, cluster, s3, settings, env, keyring, recovery, ctx, instance_cm.__enter__())
    finally:
        instance_cm.__exit__(None, None, None)
        os.environ.clear()
        os.environ.update(saved_env)
        cluster.stop()
        s3.close()
        leftovers = kill_pgbackrest_processes(str(root))
        locks = [p.name for p in root.rglob("*.lock") if "lock" in p.parent.name]
        remove_tree(root)
        assert not leftovers, f"pgbackrest processes left running: {leftovers}"
        assert not locks, f"pgbackrest lock files left: {locks}"


def _now(world: PitrWorld) -> datetime:
    value = world.cluster.execute("SELECT clock_timestamp()")[0][0]
    assert isinstance(value, datetime)
    return value


def test_key_store_opens_with_the_recovery_key_alone(world: PitrWorld) -> None:
    blob = read_keystore(world.ctx.client, world.ctx.engine.cfg.repo, "app")
    assert blob is not None and world.ctx.secrets.cipher_pass.encode() not in blob
    assert unseal(blob, "app", recovery=world.recovery) == world.ctx.secrets.cipher_pass
    assert (
        load_passphrase(world.ctx.client, world.ctx.engine.cfg.repo, "app", keyring=world.keyring)
        == world.ctx.secrets.cipher_pass
    )
    assert keystore_key("app").startswith("backup_pipeline/")


def test_base_backup_job_records_the_window_on_pitr_archive(world: PitrWorld) -> None:
    result = world.jobs()[pitr_ops.PITR_BASE_BACKUP_JOB].execute_in_process(
        instance=world.instance, resources={"keys": world.keys_resource()}
    )
    assert result.success
    event = world.instance.get_latest_materialization_event(pitr_ops.PITR_ARCHIVE_ASSET)
    assert event is not None and event.asset_materialization is not None
    meta = {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}
    info = world.ctx.engine.info()
    assert meta["backup_label"] == info.usable_backups[-1].label and meta["backup_type"] == "full"
    earliest = info.usable_backups[0].stopped_at + timedelta(seconds=1)  # pgBackRest: stop second < target
    assert meta["earliest_restorable"] == earliest.isoformat(timespec="seconds")
    assert meta["latest_restorable"] != "none" and meta["wal_missing_segments"] == 0
    assert "archive_lag_seconds" in meta and meta["failed_count"] == 0
    text = repr(meta)
    for secret in (world.ctx.secrets.cipher_pass, world.s3.server.secret_key):
        assert secret not in text
    verdict = pitr_ops.window_verdict(world.instance, world.status())
    assert verdict.passed, verdict.description


def test_a_new_recovery_key_gets_the_key_store_resealed(world: PitrWorld) -> None:
    repo = world.ctx.engine.cfg.repo
    rotated = RecoveryIdentity.generate()
    before = read_keystore(world.ctx.client, repo, "app")
    assert before is not None
    with pytest.raises(PitrKeyError):
        unseal(before, "app", recovery=rotated)
    keys = [rotated.public_key, world.recovery.public_key]
    assert (
        ensure_keystore(world.ctx.client, repo, "app", world.keyring, keys) == world.ctx.secrets.cipher_pass
    )
    after = read_keystore(world.ctx.client, repo, "app")
    assert after is not None and after != before
    for identity in (rotated, world.recovery):
        assert unseal(after, "app", recovery=identity) == world.ctx.secrets.cipher_pass
    ensure_keystore(world.ctx.client, repo, "app", world.keyring, keys)  # sealed to both: left as is
    assert read_keystore(world.ctx.client, repo, "app") == after


def test_restore_to_a_moment_between_rows_written_and_a_dropped_table(world: PitrWorld) -> None:
    info = world.ctx.engine.info()
    assert info.usable_backups and info.status_code == 0
    before_t1 = _now(world)
    world.cluster.execute("INSERT INTO items SELECT g, 'T1' FROM generate_series(51, 80) g", APP_DB)
    time.sleep(1.2)
    target = _now(world)
    time.sleep(1.2)
    world.cluster.execute("DROP TABLE items", APP_DB)  # T2: the bad migration
    world.wait_archived(world.switch_wal())

    restore_dir = world.root / "restored"
    request = RestoreRequest(target=target, data_dir=restore_dir, port=free_low_port(), database=APP_DB)
    check_request(
        request,
        live_data_dir=world.cluster.data_dir,
        live_port=world.cluster.port,
        info=world.ctx.engine.info(),
    )
    try:
        report = restore_to_moment(
            world.ctx.engine, request, pg_bin=PG_BIN, secrets_env=world.ctx.secrets_env()
        )
        assert report.tables == {"public.items": 80}
        assert report.reached is not None
        # the moment reached is the T1 insert's commit: the last transaction before the target
        assert before_t1 <= datetime.fromisoformat(report.reached) <= target
        assert report.backup_set == info.usable_backups[-1].label
        # the WAL prefetcher recovery started (it holds the secrets) is gone; a running one made the
        # next restore fail while cleaning the spool
        assert not pgbackrest_processes(str(world.ctx.engine.cfg.config_dir))
        pid_line = (restore_dir / "postmaster.pid").read_text().splitlines()[0]
        environ = Path(f"/proc/{pid_line}/environ").read_bytes()
        assert b"PGBACKREST_REPO1_CIPHER_PASS" not in environ  # restarted without the secrets
    finally:
        stop_restored(world.ctx.engine, PG_BIN, restore_dir)


def test_restore_refuses_the_live_server_and_moments_outside_the_window(world: PitrWorld) -> None:
    info = world.ctx.engine.info()
    live = RestoreRequest(target=None, data_dir=world.cluster.data_dir, port=free_low_port(), database=APP_DB)
    with pytest.raises(PitrRestoreRefused, match="live server's data directory"):
        check_request(live, live_data_dir=world.cluster.data_dir, live_port=world.cluster.port, info=info)
    same_port = RestoreRequest(
        target=None, data_dir=world.root / "x", port=world.cluster.port, database=APP_DB
    )
    with pytest.raises(PitrRestoreRefused, match="live server's"):
        check_request(
            same_port, live_data_dir=world.cluster.data_dir, live_port=world.cluster.port, info=info
        )
    early = RestoreRequest(
        target=datetime(2000, 1, 1, tzinfo=UTC),
        data_dir=world.root / "x",
        port=free_low_port(),
        database=APP_DB,
    )
    with pytest.raises(PitrRestoreRefused, match="before the recoverable window"):
        check_request(early, live_data_dir=world.cluster.data_dir, live_port=world.cluster.port, info=info)


def _kill_archiver_mid_segment(world: PitrWorld) -> int:
    """SIGKILL the pgbackrest archive-push processes while a segment is being pushed; returns how many."""
    killed = 0
    deadline = time.monotonic() + 30
    while not killed and time.monotonic() < deadline:
        world.cluster.execute(
            "INSERT INTO wal_filler SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g", APP_DB
        )
        world.cluster.execute("SELECT pg_switch_wal()")
        killed += len(kill_pgbackrest_processes(str(world.root / "server-pgbackrest")))
    return killed


def test_pitr_restore_job_restores_latest_and_reports_the_moment(world: PitrWorld) -> None:
    world.cluster.execute("CREATE TABLE after_drop (id int)", APP_DB)
    world.cluster.execute("INSERT INTO after_drop VALUES (1), (2)", APP_DB)
    committed = _now(world)
    world.wait_archived(world.switch_wal())
    restore_dir = world.root / "restored-latest"
    port = free_low_port()
    try:
        result = world.jobs()[pitr_ops.PITR_RESTORE_JOB].execute_in_process(
            instance=world.instance,
            resources={"keys": world.keys_resource()},
            run_config={"ops": {"pitr_restore": {"config": {"data_dir": str(restore_dir), "port": port}}}},
        )
        assert result.success
        report = result.output_for_node("pitr_restore")
        assert report["target"] == "latest" and report["tables"] == 1 and report["rows"] == 2
        assert datetime.fromisoformat(report["reached"]) <= committed
        audit = [
            json.loads(line) for line in (world.settings.state_dir / "audit.jsonl").read_text().splitlines()
        ]
        assert [(r["action"], r["details"]["reached"]) for r in audit if r["action"] == "pitr_restore"] == [
            ("pitr_restore", report["reached"])
        ]
    finally:
        stop_restored(world.ctx.engine, PG_BIN, restore_dir)


def test_pitr_restore_job_refuses_a_time_without_offset(world: PitrWorld) -> None:
    result = world.jobs()[pitr_ops.PITR_RESTORE_JOB].execute_in_process(
        instance=world.instance,
        resources={"keys": world.keys_resource()},
        run_config={
            "ops": {
                "pitr_restore": {
                    "config": {
                        "data_dir": str(world.root / "never"),
                        "port": 1,
                        "target_time": "2026-05-04 10:41",
                    }
                }
            }
        },
        raise_on_error=False,
    )
    assert not result.success
    run = world.instance.get_run_by_id(result.run_id)
    assert run is not None and run.tags.get("backup_pipeline/outcome") == "refused"
    failure = result.failure_data_for_node("pitr_restore")
    assert failure is not None and failure.error is not None
    assert "[PITR_TARGET_INVALID]" in failure.error.message and "no UTC offset" in failure.error.message
    assert failure.error.stack == []  # an expected refusal, not a crash
    assert not (world.root / "never").exists()


def test_restore_job_with_a_target_time_restores_that_moment(world: PitrWorld) -> None:
    world.cluster.execute("CREATE TABLE via_restore_job (id int)", APP_DB)
    before = _now(world)
    world.cluster.execute("INSERT INTO via_restore_job VALUES (1)", APP_DB)
    time.sleep(1.2)
    target = _now(world)
    time.sleep(1.2)
    world.cluster.execute("INSERT INTO via_restore_job VALUES (2)", APP_DB)  # after the target
    world.wait_archived(world.switch_wal())
    restore_dir = world.root / "restored-by-restore-job"
    port = free_low_port()
    try:
        result = restore_job_to_moment(
            world, {"target_time": target.isoformat(), "data_dir": str(restore_dir), "port": port}
        )
        assert result.success
        started = {e.step_key for e in result.all_events if e.is_step_start}
        assert started == {RESTORE_TO_MOMENT_OP}  # no backup-set step ran
        report = result.output_for_node(RESTORE_TO_MOMENT_OP, "moment")
        # the moment reached is the insert's commit: the last transaction before the target
        assert before <= datetime.fromisoformat(report["reached"]) <= target
        with psycopg.connect(host=report["socket_dir"], port=port, dbname=APP_DB, user="postgres") as conn:
            rows = conn.execute("SELECT id FROM via_restore_job ORDER BY id").fetchall()
        assert rows == [(1,)]  # the row of the target's moment, not the one written after it
        step = next(
            e for e in result.all_events if e.is_successful_output and e.step_key == RESTORE_TO_MOMENT_OP
        )
        assert step.event_specific_data is not None
        meta = step.event_specific_data.metadata
        assert meta["reached"].value == report["reached"]  # the UI shows the moment reached
    finally:
        stop_restored(world.ctx.engine, PG_BIN, restore_dir)


def test_restore_job_refuses_moments_outside_the_window_naming_it(world: PitrWorld) -> None:
    world.wait_archived(world.switch_wal())
    time.sleep(1.5)
    after_latest = _now(world)  # nothing archived after it: past the latest restorable moment
    earliest = world.ctx.engine.info().earliest_restorable
    assert earliest is not None
    for target, rule in (
        (after_latest, "is after the recoverable window ["),
        (earliest - timedelta(minutes=5), "is before the recoverable window ["),
    ):
        restore_dir = world.root / "never-restored"
        result = restore_job_to_moment(
            world, {"target_time": target.isoformat(), "data_dir": str(restore_dir), "port": free_low_port()}
        )
        assert not result.success
        failure = result.failure_data_for_node(RESTORE_TO_MOMENT_OP)
        assert failure is not None and failure.error is not None
        message = failure.error.message
        assert "[PITR_RESTORE_REFUSED]" in message and f"target_time {target.isoformat()} {rule}" in message
        assert earliest.astimezone(UTC).isoformat(timespec="seconds") in message
        assert not restore_dir.exists()


def _cli(world: PitrWorld, *args: str, drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in {**os.environ, **world.env}.items() if k not in drop}
    return subprocess.run(
        [sys.executable, "-m", "backup_pipeline.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_restores_to_a_moment_with_the_recovery_key_alone(world: PitrWorld) -> None:
    recovery_file = world.root / "recovery-key.txt"
    recovery_file.write_text(world.recovery.to_bech32() + "\n")
    restore_dir = world.root / "restored-cli"
    port = free_low_port()
    bad = _cli(
        world,
        "restore",
        "--recovery-key-file",
        str(recovery_file),
        "--target-time",
        "yesterday",
        "--data-dir",
        str(restore_dir),
        "--port",
        str(port),
    )
    assert bad.returncode == 2 and "--target-time" in bad.stderr and "Traceback" not in bad.stderr
    target = _now(world)
    world.cluster.execute(
        "INSERT INTO after_drop VALUES (3)", APP_DB
    )  # recovery stops at the first commit past the target
    world.wait_archived(world.switch_wal())
    try:
        done = _cli(
            world,
            "restore",
            "--recovery-key-file",
            str(recovery_file),
            "--target-time",
            target.isoformat(),
            "--data-dir",
            str(restore_dir),
            "--port",
            str(port),
            "--json",
            drop=("BACKUP_PIPELINE_ORG_SECRET_FILE",),
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert datetime.fromisoformat(report["reached"]) <= target and report["tables"] >= 1
        for secret in (world.ctx.secrets.cipher_pass, world.s3.server.secret_key):
            assert secret not in done.stdout + done.stderr
    finally:
        stop_restored(world.ctx.engine, None, restore_dir)


def test_a_target_the_archive_does_not_reach_yet_fails_with_advice(world: PitrWorld) -> None:
    world.wait_archived(world.switch_wal())
    target = _now(world)  # nothing committed after it is archived
    restore_dir = world.root / "restored-too-late"
    request = RestoreRequest(target=target, data_dir=restore_dir, port=free_low_port(), database=APP_DB)
    try:
        with pytest.raises(PitrRestoreFailed, match="does not reach the target yet"):
            restore_to_moment(world.ctx.engine, request, pg_bin=None, secrets_env=world.ctx.secrets_env())
    finally:
        stop_restored(world.ctx.engine, None, restore_dir)


def test_cli_status_shows_the_window(world: PitrWorld) -> None:
    done = _cli(world, "pitr", "status", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    status = json.loads(done.stdout)
    assert status["earliest_restorable"] != "none" and status["wal_missing_segments"] == 0
    assert status["problems"] == []


def _sensor_alerts(
    world: PitrWorld, receiver: WebhookReceiver, cursor: str | None, **overrides: str
) -> tuple[dg.SensorResult, list[dict[str, object]]]:
    secret = world.root / "webhook-secret"
    secret.write_text("webhook-key-of-the-pitr-tests")
    settings = load_settings(
        {
            **world.env,
            "BACKUP_PIPELINE_ALERT_WEBHOOK_URL": receiver.url,
            "BACKUP_PIPELINE_ALERT_WEBHOOK_SECRET_FILE": str(secret),
            "BACKUP_PIPELINE_PITR_ARCHIVE_LAG_ALERT_SECONDS": "30",
            **overrides,
        }
    )
    sensor = build_pitr_archive_sensor(settings)
    result = sensor(dg.build_sensor_context(instance=world.instance, cursor=cursor))
    assert isinstance(result, dg.SensorResult)
    alerts = []
    for request in receiver.requests:
        assert verify_webhook_signature(
            b"webhook-key-of-the-pitr-tests",
            request.headers["X-Backup-Pipeline-Timestamp"],
            request.body,
            request.headers["X-Backup-Pipeline-Signature"],
        )
        alerts.append(json.loads(request.body))
    return result, alerts


def test_archiver_killed_and_s3_down_lose_no_wal_and_are_reported(
    world: PitrWorld, webhook_receiver: WebhookReceiver
) -> None:
    world.cluster.execute("CREATE TABLE wal_filler (id int, pad text)", APP_DB)
    assert _kill_archiver_mid_segment(world) > 0
    limits = {"lag_limit_seconds": 1.0, "wal_limit_bytes": 2**40}

    world.s3.stop()
    try:
        for _ in range(3):
            world.cluster.execute(
                "INSERT INTO wal_filler SELECT g, 'outage' FROM generate_series(1, 1000) g", APP_DB
            )
            world.switch_wal()
        deadline = time.monotonic() + 120
        while not world.status().failing and time.monotonic() < deadline:
            time.sleep(1)
        during = world.status()
        kinds = {p.kind for p in archive_problems(during, **limits)}
        # archive-push gives up after ARCHIVE_PUSH_TIMEOUT s, so the oldest waiting segment is older
        assert {"archive_failing", "archive_lag"} <= kinds, during
        assert during.waiting_segments >= 1 and during.archive_lag_seconds >= ARCHIVE_PUSH_TIMEOUT
        # pg_wal holds the waiting segments and the current one: more than the smallest limit (16 MiB)
        assert during.wal_dir_bytes > 16 * 2**20
        small_wal = {"BACKUP_PIPELINE_PITR_WAL_DIR_ALERT_MB": "16"}
        result, alerts = _sensor_alerts(world, webhook_receiver, None, **small_wal)
        assert {"pitr_archive_failing", "pitr_pg_wal_size"} <= {a["kind"] for a in alerts}
        first_count = len(alerts)
        assert world.ctx.secrets.cipher_pass not in json.dumps(alerts)
        evaluations = {e.check_name: e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation)}
        assert evaluations[pitr_ops.ARCHIVING_CHECK].passed is False
        # the UI (the checks of pitr_archive, re-evaluated by the sensor) shows the lag and the window
        shown = {k: getattr(v, "value", v) for k, v in evaluations[pitr_ops.ARCHIVING_CHECK].metadata.items()}
        assert shown["archive_lag_seconds"] >= ARCHIVE_PUSH_TIMEOUT and shown["pg_wal_bytes"] > 16 * 2**20
        window_meta = {
            k: getattr(v, "value", v) for k, v in evaluations[pitr_ops.WINDOW_CHECK].metadata.items()
        }
        assert window_meta["earliest_restorable"] != "none" and window_meta["latest_restorable"] != "never"
        # the next tick in the same incident does not alert again
        again, alerts = _sensor_alerts(world, webhook_receiver, result.cursor, **small_wal)
        assert len(alerts) == first_count
    finally:
        world.s3.start()

    last = world.switch_wal()
    world.wait_archived(last, timeout=180)
    after = world.status()
    assert not archive_problems(after, **limits)
    healed, _alerts = _sensor_alerts(world, webhook_receiver, again.cursor)
    checks = {e.check_name: e.passed for e in healed.asset_events if isinstance(e, dg.AssetCheckEvaluation)}
    assert checks.get(pitr_ops.ARCHIVING_CHECK) is True
    info = world.ctx.engine.info()
    segments = pitr.archive_segments(world.ctx.client, world.ctx.engine.cfg)
    window = pitr.recoverable_window(info, segments, after)
    assert window.missing == ()
    assert window.last_segment is not None and segment_number(window.last_segment) >= segment_number(last)
    assert window.first_segment is not None and window.first_segment in segments
    assert window.earliest is not None and window.latest is not None and window.latest > window.earliest


def test_expire_keeps_the_retention_count_and_the_wal_they_need(world: PitrWorld) -> None:
    assert world.settings.retention_keep_last == 2
    before = world.ctx.engine.info().usable_backups
    fill = "INSERT INTO wal_filler SELECT g, 'retention' FROM generate_series(1, 1000) g"
    world.cluster.execute(fill, APP_DB)
    first = pitr.run_base_backup(world.ctx, "full").usable_backups[-1]
    # a moment just after the backup that becomes the oldest kept one, past its stop second (the
    # window starts one second after it: pgBackRest compares whole seconds)
    time.sleep(1.1)
    moment = _now(world)
    rows_at_moment = int(world.cluster.execute("SELECT count(*) FROM wal_filler", APP_DB)[0][0])
    world.cluster.execute(fill, APP_DB)
    info = pitr.run_base_backup(world.ctx, "full")
    kept = info.usable_backups
    assert len(kept) == 2 and before[0].label not in {b.label for b in kept} and kept[0].label == first.label
    assert (
        info.archive_min is not None and info.archive_min <= kept[0].wal_start
    )  # WAL back to the oldest kept
    assert segment_number(info.archive_min) > segment_number(before[0].wal_start)  # older WAL expired
    segments = pitr.archive_segments(world.ctx.client, world.ctx.engine.cfg)
    assert pitr.recoverable_window(info, segments, world.status()).missing == ()
    # the WAL kept is usable: a moment right after the oldest kept backup restores from it
    assert info.earliest_restorable is not None and info.earliest_restorable <= moment
    restore_dir = world.root / "restored-oldest-kept"
    request = RestoreRequest(target=moment, data_dir=restore_dir, port=free_low_port(), database=APP_DB)
    check_request(request, live_data_dir=world.cluster.data_dir, live_port=world.cluster.port, info=info)
    try:
        report = restore_to_moment(
            world.ctx.engine, request, pg_bin=PG_BIN, secrets_env=world.ctx.secrets_env()
        )
        assert report.backup_set == kept[0].label
        assert report.tables["public.wal_filler"] == rows_at_moment
    finally:
        stop_restored(world.ctx.engine, PG_BIN, restore_dir)
