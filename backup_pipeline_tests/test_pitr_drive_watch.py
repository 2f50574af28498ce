"""Drive's PITR copy watched without copy runs, and ``restore_job``'s ``pitr_source``, with no cluster.

The bundle index is a listing of manifest file properties, so the tests write manifests with the
properties a copy run writes (``services/pitr_drive.put_unit``) to the project's Drive v3 test server;
the sensor then reads them through the product's Drive destination, as in production. The
application server is unreachable here (port 1): the sensor must still judge Drive (against now) and
alert on both. The PITR restore from Drive itself runs in test_pitr_drive.py (cluster).
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from backup_pipeline.alerts import verify_webhook_signature
from backup_pipeline.archive.keys import generate_org_secret_file
from backup_pipeline.destinations.base import Destination
from backup_pipeline.ops import pitr_drive as drive_ops
from backup_pipeline.ops.restore import restore_job
from backup_pipeline.ops.restore_moment import RESTORE_TO_MOMENT_OP, TAG_PITR_SOURCE
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.resources.s3 import S3Resource
from backup_pipeline.sensors import build_pitr_archive_sensor
from backup_pipeline.services import pitr_drive as drive
from backup_pipeline.services.pitr_engine import segment_name
from backup_pipeline.settings import (
    PITR_S3_ACCESS_KEY_ENV,
    PITR_S3_SECRET_KEY_ENV,
    BackupSettings,
    load_settings,
)
from backup_pipeline_tests.fixtures.alert_receivers import WebhookReceiver
from backup_pipeline_tests.fixtures.drive import DriveFixture
from backup_pipeline_tests.test_pitr_status import HEALTHY

INSTALLATION = "pitr-watch-test"
NOWHERE = "127.0.0.1:1"  # nothing listens on port 1
WEBHOOK_KEY = b"webhook-key-of-the-drive-watch-tests"


def _env(tmp_path: Path, drive_fx: DriveFixture, **extra: str) -> dict[str, str]:
    secret = tmp_path / "webhook-secret"
    secret.write_bytes(WEBHOOK_KEY)
    org = tmp_path / "org-secret"
    if not org.exists():
        generate_org_secret_file(org)
    return {
        **drive_fx.env(),
        "BACKUP_PIPELINE_INSTALLATION_ID": INSTALLATION,
        "BACKUP_PIPELINE_ORG_SECRET_FILE": str(org),
        "BACKUP_PIPELINE_PITR_ENABLED": "true",
        "BACKUP_PIPELINE_PITR_DRIVE_COPY_ENABLED": "true",
        "BACKUP_PIPELINE_PITR_REPO_S3_ENDPOINT": f"https://{NOWHERE}",
        "BACKUP_PIPELINE_PITR_CONFIG_DIR": str(tmp_path / "pitr"),
        "BACKUP_PIPELINE_PITR_PG_PORT": "1",
        "BACKUP_PIPELINE_PITR_PG_SOCKET_DIR": str(tmp_path / "no-socket"),
        PITR_S3_ACCESS_KEY_ENV: "k",
        PITR_S3_SECRET_KEY_ENV: "s",
        **extra,
    }


def _settings(
    tmp_path: Path, drive_fx: DriveFixture, receiver: WebhookReceiver | None = None
) -> BackupSettings:
    hooks = (
        {
            "BACKUP_PIPELINE_ALERT_WEBHOOK_URL": receiver.url,
            "BACKUP_PIPELINE_ALERT_WEBHOOK_SECRET_FILE": str(tmp_path / "webhook-secret"),
        }
        if receiver
        else {}
    )
    return load_settings(_env(tmp_path, drive_fx, **hooks))


def _put_manifest(destination: Destination, unit: str, kind: str, props: dict[str, str]) -> None:
    """A manifest as a copy run leaves it: the index lives in its properties (the body is not read)."""
    properties = {
        **drive.stanza_properties(INSTALLATION, "app"),
        drive.PROP_UNIT: unit,
        drive.PROP_KIND: kind,
        drive.PROP_ROLE: drive.ROLE_MANIFEST,
        **props,
    }
    destination.put(drive.file_name(INSTALLATION, "app", unit, drive.ROLE_MANIFEST), [b"sealed"], properties)


def _put_base(destination: Destination, label: str, stopped: datetime, start: int, stop: int) -> None:
    _put_manifest(
        destination,
        drive.base_unit(label),
        drive.KIND_BASE,
        {
            drive.PROP_LABEL: label,
            drive.PROP_STOP: stopped.isoformat(),
            drive.PROP_WAL_START: segment_name(1, start),
            drive.PROP_WAL_STOP: segment_name(1, stop),
        },
    )


def _put_bundle(destination: Destination, first: int, last: int, at: datetime) -> None:
    a, b = segment_name(1, first), segment_name(1, last)
    _put_manifest(
        destination,
        drive.wal_unit(a, b),
        drive.KIND_WAL,
        {drive.PROP_FIRST: a, drive.PROP_LAST: b, drive.PROP_LAST_AT: at.isoformat(), drive.PROP_GAPS: "0"},
    )


def _tick(
    settings: BackupSettings, instance: dg.DagsterInstance, receiver: WebhookReceiver, cursor: str | None
) -> tuple[dg.SensorResult, list[dict[str, Any]]]:
    sensor = build_pitr_archive_sensor(settings)
    result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
    assert isinstance(result, dg.SensorResult)
    alerts = []
    for request in receiver.requests:
        headers = request.headers
        assert verify_webhook_signature(
            WEBHOOK_KEY,
            headers["X-Backup-Pipeline-Timestamp"],
            request.body,
            headers["X-Backup-Pipeline-Signature"],
        )
        alerts.append(json.loads(request.body))
    return result, alerts


def _drive_check(result: dg.SensorResult) -> dg.AssetCheckEvaluation | None:
    found = [
        e
        for e in result.asset_events
        if isinstance(e, dg.AssetCheckEvaluation) and e.check_name == drive_ops.DRIVE_LAG_CHECK
    ]
    assert len(found) <= 1
    if found:
        assert found[0].asset_key == drive_ops.PITR_DRIVE_ASSET
    return found[0] if found else None


def test_a_stale_drive_copy_alerts_once_and_heals_without_a_copy_run(
    tmp_path: Path, drive: DriveFixture, webhook_receiver: WebhookReceiver
) -> None:
    settings = _settings(tmp_path, drive, webhook_receiver)
    destination = drive_ops.drive_resource(settings).get_destination()
    now = datetime.now(UTC).replace(microsecond=0)
    _put_base(destination, "20261207-060000F", now - timedelta(hours=5), 2, 3)
    _put_bundle(destination, 1, 5, now - timedelta(hours=3))  # the copy schedule stopped 3 h ago
    with dg.instance_for_test() as instance:
        first, alerts = _tick(settings, instance, webhook_receiver, None)
        kinds = [a["kind"] for a in alerts]
        # the server is unreachable (so Drive is compared with now) and Drive lags 3 h > 7200 s
        assert sorted(kinds) == ["pitr_drive_lag", "pitr_unreachable"]
        lag_alert = next(a for a in alerts if a["kind"] == "pitr_drive_lag")
        assert "limit 7200 s" in lag_alert["message"] and "compared with now" in lag_alert["message"]
        assert lag_alert["details"]["drive_wal_last_segment"] == segment_name(1, 5)
        check = _drive_check(first)
        assert check is not None and check.passed is False
        assert "lags the S3 repository by 108" in (
            check.description or ""
        )  # 10 800 s (+ seconds of the test)

        # the next minute, same incident: no second alert, no new evaluation
        again, alerts = _tick(settings, instance, webhook_receiver, first.cursor)
        assert len(alerts) == 2 and _drive_check(again) is None

        # the copy catches up (a bundle continuing the chain, its last segment a minute old)
        _put_bundle(destination, 6, 9, now - timedelta(minutes=1))
        healed, alerts = _tick(settings, instance, webhook_receiver, again.cursor)
        assert len(alerts) == 2  # nothing new: the unreachable server is the same incident
        check = _drive_check(healed)
        assert check is not None and check.passed is True
        assert (now - timedelta(minutes=1)).isoformat(timespec="seconds") in (check.description or "")
        assert "drive_lag" not in json.loads(healed.cursor or "{}")["alerted"]

        # falls behind again: a new incident, a new alert
        stale = settings.model_copy(update={"pitr_drive_lag_alert_seconds": 10})
        late, alerts = _tick(stale, instance, webhook_receiver, healed.cursor)
        assert [a["kind"] for a in alerts].count("pitr_drive_lag") == 2
        assert _drive_check(late) is not None


def test_drive_health_names_gaps_an_empty_drive_and_an_unreachable_one(
    tmp_path: Path, drive: DriveFixture
) -> None:
    settings = _settings(tmp_path, drive)
    destination = drive_ops.drive_resource(settings).get_destination()
    now = datetime.now(UTC).replace(microsecond=0)
    status = replace(HEALTHY, checked_at=now, last_archived_time=now - timedelta(seconds=30))

    meta, problems = drive_ops.drive_health(settings, status)
    assert [p.kind for p in problems] == ["drive_empty"] and meta["drive_base_backups"] == 0

    _put_base(destination, "20261207-060000F", now - timedelta(hours=2), 2, 3)
    _put_bundle(destination, 1, 5, now - timedelta(minutes=50))
    _put_bundle(destination, 7, 9, now - timedelta(minutes=2))  # segment 6 never reached Drive
    meta, problems = drive_ops.drive_health(settings, status)
    assert [p.kind for p in problems] == ["drive_gap"]  # 50 min behind S3: inside the 7200 s limit
    assert segment_name(1, 6) in problems[0].message
    # compared with the server's newest archived segment, not with now
    assert meta["drive_lag_seconds"] == pytest.approx(50 * 60 - 30)
    verdict = drive_ops.drive_verdict(meta, problems)
    assert not verdict.passed and verdict.metadata["drive_wal_gaps"] == 1

    tight = settings.model_copy(update={"pitr_drive_lag_alert_seconds": 600})
    assert [p.kind for p in drive_ops.drive_health(tight, status)[1]] == ["drive_gap", "drive_lag"]

    # Drive's credentials gone (a revoked key looks the same): the sensor must still answer
    lost = load_settings(
        _env(tmp_path, drive, BACKUP_PIPELINE_DRIVE_CREDENTIALS_FILE=str(tmp_path / "gone.json"))
    )
    _meta, problems = drive_ops.drive_health(lost, status)
    assert [p.kind for p in problems] == ["drive_unreachable"]
    assert "cannot list the PITR copies on Drive" in problems[0].message


# --- restore_job: pitr_source ------------------------------------------------------------------


def _restore(tmp_path: Path, moment: dict[str, Any]) -> tuple[dg.ExecuteInProcessResult, dg.DagsterInstance]:
    secret = tmp_path / "org-secret"
    state = tmp_path / "state"
    instance = dg.DagsterInstance.ephemeral()
    result = restore_job.execute_in_process(
        instance=instance,
        resources={
            "app_db": PostgresResource(database_url=f"postgresql://postgres@{NOWHERE}/app"),
            "s3": S3Resource(endpoint=f"http://{NOWHERE}", access_key="k", secret_key="s"),
            "destination": DestinationResource(
                kind="local", installation_id="t", state_dir=str(state), local_path=str(tmp_path / "sets")
            ),
            "keys": BackupKeysResource(org_secret_file=str(secret), state_dir=str(state)),
        },
        run_config={"ops": {RESTORE_TO_MOMENT_OP: {"config": moment}}},
        raise_on_error=False,
    )
    return result, instance


def _refusal(result: dg.ExecuteInProcessResult, instance: dg.DagsterInstance) -> str:
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    assert run is not None and run.tags.get("backup_pipeline/outcome") == "refused"
    assert {e.step_key for e in result.all_events if e.is_step_start} == {RESTORE_TO_MOMENT_OP}
    failure = result.failure_data_for_node(RESTORE_TO_MOMENT_OP)
    assert failure is not None and failure.error is not None and failure.error.stack == []
    return failure.error.message


def test_pitr_source_is_validated_at_launch_and_needs_a_target_time(
    tmp_path: Path, drive: DriveFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in _env(tmp_path, drive).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(dg.DagsterInvalidConfigError, match="pitr_source"):
        _restore(tmp_path, {"target_time": "latest", "pitr_source": "ftp"})
    result, instance = _restore(tmp_path, {"pitr_source": "drive"})
    assert "pitr_source drive needs target_time" in _refusal(result, instance)


def test_restore_job_from_drive_reads_drive_s_window_before_downloading(
    tmp_path: Path, drive: DriveFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in _env(tmp_path, drive).items():
        monkeypatch.setenv(key, value)
    settings = load_settings(_env(tmp_path, drive))
    destination = drive_ops.drive_resource(settings).get_destination()
    copy = {"data_dir": str(tmp_path / "copy"), "port": 15998, "pitr_source": "drive"}

    # Drive empty: refused naming Drive; the S3 repository (at NOWHERE) is never contacted
    result, instance = _restore(tmp_path, {"target_time": "latest", **copy})
    message = _refusal(result, instance)
    assert "[PITR_RESTORE_REFUSED]" in message and "Drive holds no base backup" in message
    run = instance.get_run_by_id(result.run_id)
    assert run is not None and run.tags[TAG_PITR_SOURCE] == "drive"

    # a window on Drive and a target after it: refused with Drive's window (nothing downloaded: the
    # manifests' data parts do not even exist, so a download would fail, not refuse)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    _put_base(destination, "20261207-010000F", t0, 2, 3)
    _put_bundle(destination, 1, 5, t0 + timedelta(minutes=30))
    after = (t0 + timedelta(hours=1)).isoformat(timespec="seconds")
    result, instance = _restore(tmp_path, {"target_time": after, **copy})
    message = _refusal(result, instance)
    assert "Drive's recoverable window" in message
    assert (t0 + timedelta(minutes=30)).isoformat(timespec="seconds") in message
    assert not (tmp_path / "copy").exists()

    # the same request from S3 (the default) goes to the repository instead and fails to reach it
    result, _instance = _restore(
        tmp_path, {"target_time": after, "data_dir": copy["data_dir"], "port": 15998}
    )
    failure = result.failure_data_for_node(RESTORE_TO_MOMENT_OP)
    assert failure is not None and "Drive" not in (failure.error.message if failure.error else "")


def test_restore_job_from_drive_without_a_drive_destination_is_refused(
    tmp_path: Path, drive: DriveFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _env(
        tmp_path, drive, BACKUP_PIPELINE_PITR_DRIVE_COPY_ENABLED="false", BACKUP_PIPELINE_DESTINATION="local"
    )
    env["BACKUP_PIPELINE_LOCAL_DESTINATION_PATH"] = str(tmp_path / "sets")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result, instance = _restore(
        tmp_path,
        {"target_time": "latest", "data_dir": str(tmp_path / "c"), "port": 15998, "pitr_source": "drive"},
    )
    message = _refusal(result, instance)
    assert "pitr_source drive:" in message and "no google_drive destination" in message
