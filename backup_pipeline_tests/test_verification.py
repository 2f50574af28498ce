"""verify_backup_job against real components: the machine's PostgreSQL (app + scratch database),
SeaweedFS's S3 server, the Drive v3 test server / a local folder, aiosmtpd and an HTTP webhook receiver.

Must show (issue 11): a stored part corrupted at the destination is caught, the alert reaches
the SMTP server and the webhook, and retention does not count that set; a clean set verifies.
"""

from __future__ import annotations

import json
import random
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from backup_pipeline import ledger
from backup_pipeline.alerts import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_webhook_signature
from backup_pipeline.archive.keys import generate_org_secret_file
from backup_pipeline.ops.backup import build_backup_job
from backup_pipeline.ops.retention import retention_job
from backup_pipeline.ops.verification import (
    build_verification_alert_sensor,
    choose_backup_id,
    verification_check,
    verify_backup_job,
)
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.resources.policy import BackupPolicyResource
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.resources.s3 import S3Resource
from backup_pipeline.sample_app import SeedSpec, seed_sample_app
from backup_pipeline.services.backup_parts import PART_DATABASE, PROP_BACKUP_ID, PROP_PART_NAME, new_backup_id
from backup_pipeline.services.retention import BackupSetInfo, plan_retention
from backup_pipeline.services.verification import SCRATCH_PREFIX, choose_sample, scratch_database_name
from backup_pipeline.settings import BackupSettings, load_settings
from backup_pipeline_tests.backup_helpers import drive_destination, evaluate_on_run_failure
from backup_pipeline_tests.fixtures.alert_receivers import SmtpSink, WebhookReceiver
from backup_pipeline_tests.fixtures.drive import DriveFixture
from backup_pipeline_tests.fixtures.postgres import PgDatabase, admin_connect
from backup_pipeline_tests.fixtures.s3 import S3Server
from backup_pipeline_tests.restore_support import s3_snapshot, wipe_database

INSTALLATION = "verify-test"
TINY = SeedSpec(
    buckets=("media", "avatars"),
    small_objects=24,
    small_object_max_bytes=16 * 1024,
    large_object_bytes=(),
    users=12,
    comments=40,
    audit_events=30,
    sessions=5,
    upload_workers=2,
)
HOOK_KEY = b"verification-webhook-key-0123456789"


@pytest.fixture()
def seeded(pg_database: PgDatabase, s3: S3Server) -> PgDatabase:
    wipe_database(pg_database)
    with pg_database.connect() as conn:
        seed_sample_app(conn, s3.client(), TINY)
    return pg_database


def _resources(
    tmp_path: Path, db: PgDatabase, s3: S3Server, destination: DestinationResource, keep_last: int = 7
) -> dict[str, Any]:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    secret = state / "org-secret"
    if not secret.exists():
        generate_org_secret_file(secret)
    keys = BackupKeysResource(org_secret_file=str(secret), state_dir=str(state))
    keys.recovery_public_key()
    return {
        "app_db": PostgresResource(database_url=db.url),
        "s3": S3Resource(endpoint=s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key),
        "destination": destination,
        "keys": keys,
        "backup_policy": BackupPolicyResource(
            installation_id=INSTALLATION, state_dir=str(state), retention_keep_last=keep_last
        ),
    }


def _local(tmp_path: Path) -> DestinationResource:
    return DestinationResource(kind="local", installation_id=INSTALLATION, local_path=str(tmp_path / "dest"))


def _drive(drive: DriveFixture, tmp_path: Path) -> DestinationResource:
    return drive_destination(
        drive, tmp_path, installation_id=INSTALLATION, retry_attempts=3, retry_max_wait_seconds=0.2
    )


def _backup(instance: dg.DagsterInstance, resources: dict[str, Any]) -> str:
    # Backup ids carry the second: start each backup in a new second so they sort by time.
    start = int(time.time())
    while int(time.time()) == start:
        time.sleep(0.05)
    result = build_backup_job(executor_def=dg.in_process_executor).execute_in_process(
        instance=instance,
        resources={k: v for k, v in resources.items() if k != "backup_policy"},
        run_config={
            "ops": {
                "plan_backup": {"config": {"installation_id": INSTALLATION, "exclude_table_patterns": []}}
            }
        },
    )
    assert result.success
    return str(result.dagster_run.tags[ledger.BACKUP_ID_TAG])


def _verify(
    instance: dg.DagsterInstance, resources: dict[str, Any], **config: Any
) -> dg.ExecuteInProcessResult:
    return verify_backup_job.execute_in_process(
        instance=instance,
        resources={k: v for k, v in resources.items() if k != "s3"},
        run_config={"ops": {"verify_backup_set_op": {"config": config}}},
        raise_on_error=False,
    )


def _verdict(instance: dg.DagsterInstance, run_id: str) -> dict[str, Any]:
    [record] = [
        r
        for r in instance.fetch_observations(ledger.BACKUP_SET_ASSET, limit=100).records
        if r.run_id == run_id and r.asset_observation is not None
    ]
    assert record.asset_observation is not None
    return {k: getattr(v, "value", v) for k, v in record.asset_observation.metadata.items()}


def _scratch_databases() -> list[str]:
    with admin_connect() as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (SCRATCH_PREFIX + "%",))
        return [r[0] for r in rows.fetchall()]


def _alert_settings(tmp_path: Path, smtp: SmtpSink, hook: WebhookReceiver) -> BackupSettings:
    (tmp_path / "hook.key").write_bytes(HOOK_KEY)
    return load_settings(
        env={
            "BACKUP_PIPELINE_INSTALLATION_ID": INSTALLATION,
            "BACKUP_PIPELINE_ALERT_SMTP_HOST": "127.0.0.1",
            "BACKUP_PIPELINE_ALERT_SMTP_PORT": str(smtp.port),
            "BACKUP_PIPELINE_ALERT_EMAIL_TO": "ops@example.com",
            "BACKUP_PIPELINE_ALERT_WEBHOOK_URL": hook.url,
            "BACKUP_PIPELINE_ALERT_WEBHOOK_SECRET_FILE": str(tmp_path / "hook.key"),
        }
    )


def test_clean_set_verifies_without_touching_production(
    seeded: PgDatabase, s3: S3Server, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    resources = _resources(tmp_path, seeded, s3, _local(tmp_path))
    backup_id = _backup(instance, resources)
    buckets_before = s3_snapshot(s3.client())

    result = _verify(instance, resources, backup_id=backup_id, sample_share=1.0, seed=7)

    assert result.success
    verdict = _verdict(instance, result.run_id)
    assert verdict["event"] == ledger.VERIFIED_EVENT and verdict["backup_id"] == backup_id
    details = verdict["details"]
    assert details["ok"] and details["seed"] == 7
    assert {c["name"] for c in details["checks"]} == {
        "manifest",
        "part:database",
        # Since issue 18 a full set's buckets have inventory parts (format 2): the inventory and the
        # bucket part are authenticated together by one streamed pass per bucket.
        "parts:media",
        "parts:avatars",
        "part:index-media",
        "part:index-avatars",
        "database:tables",
        "objects:media",
        "objects:avatars",
    }
    # Row counts came from the manifest: the seeded tables with exactly the seeded rows.
    with seeded.connect() as conn:
        users = conn.execute("SELECT count(*) FROM public.users").fetchone()
    assert users is not None and users[0] == TINY.users
    assert details["tables_checked"] >= 4 and details["rows_checked"] > TINY.users + TINY.comments
    assert details["objects_sampled"] == details["objects_in_set"] == len(buckets_before)
    assert re.fullmatch(r"bp_verify_p[0-9a-f]{32}", details["scratch_database"])
    assert details["scratch_database"] not in _scratch_databases()  # dropped again
    assert s3_snapshot(s3.client()) == buckets_before  # nothing written to production buckets
    assert ledger.verification_statuses(instance)[backup_id].verified
    check = verification_check(instance, 48)
    assert check.passed, check.description

    # A database user without CREATEDB cannot verify: the run fails, no verdict is recorded.
    with psycopg.connect(seeded.url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS bp_verify_nocreatedb")
        conn.execute("CREATE ROLE bp_verify_nocreatedb LOGIN NOCREATEDB")
    try:
        url = seeded.url.replace("postgres@", "bp_verify_nocreatedb@")
        refused = _verify(
            instance, {**resources, "app_db": PostgresResource(database_url=url)}, backup_id=backup_id
        )
    finally:
        with psycopg.connect(seeded.url, autocommit=True) as conn:
            conn.execute("DROP ROLE IF EXISTS bp_verify_nocreatedb")
    assert not refused.success
    [failure] = [e for e in refused.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "could not be verified (no verdict recorded)" in str(failure.event_specific_data)
    assert "CREATEDB" in str(failure.event_specific_data)
    assert ledger.verification_statuses(instance)[backup_id].run_id == result.run_id


def test_flipped_byte_in_database_part_fails_and_scratch_is_dropped(
    seeded: PgDatabase, s3: S3Server, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    resources = _resources(tmp_path, seeded, s3, _local(tmp_path))
    backup_id = _backup(instance, resources)
    dest = resources["destination"].get_destination()
    [stored] = [
        f for f in dest.list({PROP_BACKUP_ID: backup_id}) if f.properties.get(PROP_PART_NAME) == PART_DATABASE
    ]
    path = tmp_path / "dest" / stored.name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    result = _verify(instance, resources, backup_id=backup_id)

    assert not result.success
    verdict = _verdict(instance, result.run_id)
    assert verdict["event"] == ledger.VERIFICATION_FAILED_EVENT
    failed = {c["name"] for c in verdict["details"]["checks"] if not c["ok"]}
    assert failed == {"part:database", "database:tables"}
    assert _scratch_databases() == []


def test_corrupted_drive_part_caught_alerted_and_not_counted_by_retention(
    seeded: PgDatabase,
    s3: S3Server,
    drive: DriveFixture,
    tmp_path: Path,
    smtp_server: SmtpSink,
    webhook_receiver: WebhookReceiver,
) -> None:
    with dg.instance_for_test() as inst:
        resources = _resources(tmp_path, seeded, s3, _drive(drive, tmp_path))
        oldest, middle, newest = (_backup(inst, resources) for _ in range(3))
        for backup_id in (oldest, middle):
            assert _verify(inst, resources, backup_id=backup_id, sample_share=0.2).success

        # Bit rot on Drive: the stored bytes change, Drive's recorded size and checksums do not.
        [part] = [
            f
            for f in drive.files()
            if f.get("appProperties", {}).get(PROP_BACKUP_ID) == newest
            and f["appProperties"].get(PROP_PART_NAME) == "bucket-media"
        ]
        blob = drive.server.data_dir / "blobs" / part["id"]
        data = bytearray(blob.read_bytes())
        data[len(data) // 3] ^= 0x40
        blob.write_bytes(bytes(data))

        # Empty backup_id: the newest complete set without a verdict, i.e. the corrupted one.
        failed = _verify(inst, resources)
        assert not failed.success
        verdict = _verdict(inst, failed.run_id)
        assert verdict["backup_id"] == newest and verdict["event"] == ledger.VERIFICATION_FAILED_EVENT
        bad = {c["name"]: c["detail"] for c in verdict["details"]["checks"] if not c["ok"]}
        assert set(bad) == {"part:bucket-media", "objects:media"}
        assert "bucket-media" in bad["part:bucket-media"]
        statuses = ledger.verification_statuses(inst)
        assert [statuses[b].verified for b in (oldest, middle, newest)] == [True, True, False]
        check = verification_check(inst, 48)
        assert not check.passed and newest in (check.description or "")

        # The alert reaches the real SMTP server and the real webhook receiver, signed.
        settings = _alert_settings(tmp_path, smtp_server, webhook_receiver)
        evaluate_on_run_failure(build_verification_alert_sensor(settings), inst, failed.run_id)
        [mail] = smtp_server.wait_for(1)
        assert mail["Subject"] == f"[{INSTALLATION}] backup {newest} failed verification"
        assert "bucket-media" in mail.get_content()
        [hook] = webhook_receiver.wait_for(1)
        payload = json.loads(hook.body)
        assert payload["kind"] == "verification_failed" and payload["details"]["backup_id"] == newest
        assert verify_webhook_signature(
            HOOK_KEY, hook.headers[TIMESTAMP_HEADER], hook.body, hook.headers[SIGNATURE_HEADER]
        )

        # keep_last=1 counting every complete set would keep only the corrupted newest set.
        # Counting verified sets only: the newest verified (middle) stays, the corrupted one
        # is not counted (kept as the newest complete set), the oldest goes.
        result = retention_job.execute_in_process(
            instance=inst,
            resources={
                k: v for k, v in resources.items() if k in ("destination", "backup_policy", "app_db", "keys")
            },
            run_config={"ops": {"apply_retention_op": {"config": {"keep_last": 1}}}},
        )
        assert result.success
        remaining = {f.get("appProperties", {}).get(PROP_BACKUP_ID) for f in drive.files()} - {None}
        assert remaining == {middle, newest}


def test_retention_plan_counts_only_verified_sets() -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    sets = [
        BackupSetInfo(f"2026022{i}T020000Z-0000000{i}", now - timedelta(days=10 - i), complete=True)
        for i in range(1, 6)
    ]  # newest last
    ids = [s.backup_id for s in sets]

    def plan(keep_last: int, verified: frozenset[str] | None) -> Any:
        return plan_retention(
            sets, keep_last=keep_last, incomplete_grace=timedelta(hours=24), now=now, verified=verified
        )

    # Verification disabled (nothing ever verified): the old rule.
    assert plan(2, None).keep == [ids[4], ids[3]]
    # keep_last=1, ids[2] and ids[0] verified: ids[4] and ids[3] (unverified or failed) are not
    # counted and stay while newer than the newest verified set ids[2], which is kept; ids[1]
    # (unverified, older than it) and ids[0] (the second verified) go.
    verified_plan = plan(1, frozenset({ids[2], ids[0]}))
    assert verified_plan.keep == [ids[4], ids[3], ids[2]]
    assert [d.backup_id for d in verified_plan.delete] == [ids[1], ids[0]]
    # keep_last=2: ids[1] is newer than the second verified set (ids[0]), so all five stay.
    assert plan(2, frozenset({ids[2], ids[0]})).delete == []
    # Nothing verified yet although verification is in use: every complete set is kept.
    assert plan(1, frozenset()).delete == []


def test_sample_is_reproducible_and_sized_by_share() -> None:
    keys = [f"k{i}" for i in range(100)]
    first = choose_sample(keys, 0.1, random.Random(3))
    assert first == choose_sample(list(reversed(keys)), 0.1, random.Random(3)) and len(first) == 10
    assert len(choose_sample(keys, 0.001, random.Random(3))) == 1
    assert choose_sample(keys, 0.0, random.Random(3)) == set()
    assert scratch_database_name("p" + "0a" * 16) == "bp_verify_p" + "0a" * 16


def test_the_default_target_is_the_newest_regular_set_never_a_safety_set() -> None:
    """main verified the newest complete set of any kind: after a restore, its database-only
    safety set, while backup_set_verified judges the newest regular set."""
    regular, safety = new_backup_id(datetime.now(UTC) - timedelta(hours=2)), new_backup_id()
    with dg.instance_for_test() as instance:
        for backup_id, kind in ((regular, "regular"), (safety, "safety")):
            instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    asset_key=ledger.BACKUP_SET_ASSET, metadata={"backup_id": backup_id, "set_kind": kind}
                )
            )
        assert choose_backup_id(instance, "") == regular
        assert choose_backup_id(instance, safety) == safety  # still verifiable by id
