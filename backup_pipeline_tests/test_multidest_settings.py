"""Several destinations in settings (validated once, errors naming the variable), the resource built
from them, and the backup_3_2_1 verdict from ledger events (no server needed: a Dagster test instance)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from backup_pipeline import ledger
from backup_pipeline.copy_status import CopyPolicyView, DestinationView, alert_due, copy_policy_verdict
from backup_pipeline.destination_settings import CopyPolicy, parse_copy_policy
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.settings import DestinationKind, SettingsError, load_settings
from backup_pipeline_tests.fixtures.alert_receivers import WebhookReceiver

P = "BACKUP_PIPELINE_"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    key = tmp_path / "sa.json"
    key.write_text("{}")
    return {
        f"{P}DESTINATIONS": "drive,s3lock,nas",
        f"{P}DESTINATION_DRIVE_KIND": "google_drive",
        f"{P}DESTINATION_DRIVE_DRIVE_CREDENTIALS_FILE": str(key),
        f"{P}DESTINATION_DRIVE_DRIVE_SHARED_DRIVE_ID": "0Ashared",
        f"{P}DESTINATION_S3LOCK_KIND": "s3",
        f"{P}DESTINATION_S3LOCK_S3_ENDPOINT": "https://s3.example.com",
        f"{P}DESTINATION_S3LOCK_S3_BUCKET": "backups-locked",
        f"{P}DESTINATION_S3LOCK_S3_ACCESS_KEY": "AKIA-not-a-setting",
        f"{P}DESTINATION_S3LOCK_S3_SECRET_KEY": "secret-not-a-setting",
        f"{P}DESTINATION_S3LOCK_KEEP_LAST": "30",
        f"{P}DESTINATION_NAS_KIND": "local",
        f"{P}DESTINATION_NAS_PATH": str(tmp_path / "nas"),
        **extra,
    }


def _problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(SettingsError) as err:
        load_settings(env)
    return err.value.problems


def test_without_destinations_the_single_destination_is_the_primary_as_before() -> None:
    settings = load_settings({f"{P}DESTINATION": "local", f"{P}LOCAL_DESTINATION_PATH": "/srv/backups"})
    [only] = settings.named_destinations()
    assert (only.name, only.primary, only.offsite) == ("local", True, False)
    resource = DestinationResource.from_settings(settings)
    assert resource.copies == [] and resource.label == "local" and resource.local_path == "/srv/backups"
    assert settings.copy_targets == []


def test_named_destinations_primary_first_with_their_own_fields(tmp_path: Path) -> None:
    settings = load_settings(_env(tmp_path, **{f"{P}PRIMARY_DESTINATION": "nas"}))
    named = settings.named_destinations()
    assert [(d.name, d.kind, d.primary, d.offsite, d.keep_last) for d in named] == [
        ("nas", "local", True, False, 7),
        ("drive", "google_drive", False, True, 7),
        ("s3lock", "s3", False, True, 30),
    ]
    # The primary's fields are the top-level destination fields: single-destination code sees the primary.
    assert (
        settings.destination is DestinationKind.LOCAL and settings.local_destination_path == tmp_path / "nas"
    )
    resource = DestinationResource.from_settings(settings)
    assert [r.label for r in resource.all_named()] == ["nas", "drive", "s3lock"]
    s3lock = resource.named("s3lock")
    assert (s3lock.s3_bucket, s3lock.keep_last, s3lock.s3_key_env_prefix) == (
        "backups-locked",
        30,
        f"{P}DESTINATION_S3LOCK_S3_",
    )
    # Secrets never become settings or resource fields: only the variables' names travel.
    shown = str(settings.redacted()) + str(resource.model_dump())
    assert "secret-not-a-setting" not in shown and "AKIA-not-a-setting" not in shown
    with pytest.raises(ValueError, match="no destination named 'tape'; known: nas, drive, s3lock"):
        resource.named("tape")


def test_every_bad_field_is_named(tmp_path: Path) -> None:
    env = _env(tmp_path)
    env[f"{P}DESTINATION_S3LOCK_S3_BUCKET"] = "Not_A_Bucket"
    del env[f"{P}DESTINATION_NAS_KIND"]
    del env[f"{P}DESTINATION_DRIVE_DRIVE_SHARED_DRIVE_ID"]
    env[f"{P}DESTINATION_DRIVE_COLOUR"] = "blue"
    problems = _problems(env)
    assert any(p.startswith(f"{P}DESTINATION_S3LOCK_S3_BUCKET: not a valid S3 bucket name") for p in problems)
    assert any(p.startswith(f"{P}DESTINATION_NAS_KIND: required") for p in problems)
    assert any(p.startswith(f"{P}DESTINATION_DRIVE_COLOUR: unknown field") for p in problems)
    assert any(f"needs {P}DESTINATION_DRIVE_DRIVE_SHARED_DRIVE_ID" in p for p in problems)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({f"{P}DESTINATION_NAS_OFFSITE": "perhaps"}, f"{P}DESTINATION_NAS_OFFSITE: must be true or false"),
        ({f"{P}DESTINATION_NAS_KEEP_LAST": "0"}, f"{P}DESTINATION_NAS_KEEP_LAST: must be an integer from 1"),
        ({f"{P}DESTINATION_NAS_S3_ACCESS_KEY": "x"}, f"{P}DESTINATION_NAS_S3_ACCESS_KEY: only for KIND=s3"),
        ({f"{P}PRIMARY_DESTINATION": "tape"}, f"{P}PRIMARY_DESTINATION: must be one of"),
        ({f"{P}DESTINATIONS": "drive,Drive 2,drive"}, f"{P}DESTINATIONS: names must be 1-20"),
        ({f"{P}DESTINATIONS": "retry"}, f"{P}DESTINATIONS: names must be 1-20"),
        ({f"{P}COPY_POLICY": "copies=1,offsite=2"}, f"{P}COPY_POLICY: copies=1 cannot hold"),
        ({f"{P}COPY_POLICY": "copies=two"}, f"{P}COPY_POLICY: copies: must be a whole number"),
        ({f"{P}COPY_POLICY": "replicas=3"}, f"{P}COPY_POLICY: items are copies/kinds/offsite/immutable"),
    ],
)
def test_a_bad_value_names_its_variable_and_rule(
    tmp_path: Path, change: dict[str, str], expected: str
) -> None:
    problems = _problems({**_env(tmp_path), **change})
    assert any(p.startswith(expected) for p in problems), problems


def test_copy_policy_parsing() -> None:
    assert parse_copy_policy("") == CopyPolicy(copies=1)
    assert parse_copy_policy(" copies=3, kinds=2,offsite=1 ,immutable=1") == CopyPolicy(3, 2, 1, 1)
    assert parse_copy_policy("copies=2,offsite=1").describe() == "copies=2, offsite=1"


# --- the verdict ------------------------------------------------------------------------------

NEWEST = "20261202T023000Z-bbbbbbbb"


def _view() -> CopyPolicyView:
    return CopyPolicyView(
        destinations=(
            DestinationView("drive", "google_drive", True),
            DestinationView("s3lock", "s3", True),
            DestinationView("nas", "local", False),
        ),
        policy=CopyPolicy(copies=3, kinds=2, offsite=2, immutable=1),
        severity=dg.AssetCheckSeverity.ERROR,
    )


def _copy(instance: dg.DagsterInstance, name: str, event: str, **kw: object) -> None:
    kind, offsite = {"drive": ("google_drive", True), "s3lock": ("s3", True), "nas": ("local", False)}[name]
    instance.report_runless_asset_event(
        ledger.copy_observation(NEWEST, name, event, kind=kind, offsite=offsite, **kw)  # type: ignore[arg-type]
    )


def test_the_verdict_counts_copies_kinds_offsite_and_live_locks_and_names_what_is_missing() -> None:
    with dg.instance_for_test() as instance:
        assert not copy_policy_verdict(instance, _view()).passed  # nothing backed up yet
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key=ledger.BACKUP_SET_ASSET, metadata={"backup_id": NEWEST})
        )
        pending = copy_policy_verdict(instance, _view())
        assert not pending.passed and pending.metadata["copies"] == 1
        assert "not copied yet (copy_backup_job pending): s3lock, nas" in pending.description
        assert not alert_due(pending)  # the copies are still to come

        now = datetime.now(UTC)
        _copy(instance, "s3lock", ledger.COPY_COMPLETE_EVENT, locked_until=now + timedelta(days=1))
        _copy(instance, "nas", ledger.COPY_MISSING_EVENT, detail="folder not mounted")
        missing = copy_policy_verdict(instance, _view())
        assert not missing.passed and missing.severity is dg.AssetCheckSeverity.ERROR
        assert "copy missing on nas (MISSING: folder not mounted)" in missing.description
        assert "NOT met (copies 2 < 3)" in missing.description
        assert alert_due(missing)

        _copy(instance, "nas", ledger.COPY_COMPLETE_EVENT)
        met = copy_policy_verdict(instance, _view())
        assert met.passed, met.description
        assert (
            met.metadata["copies"],
            met.metadata["kinds"],
            met.metadata["offsite"],
            met.metadata["immutable"],
        ) == (
            3,
            3,
            2,
            1,
        )
        # A lock that has ended no longer makes the copy immutable.
        later = copy_policy_verdict(instance, _view(), now=now + timedelta(days=2))
        assert not later.passed and "immutable 0 < 1" in later.description

        _copy(instance, "nas", ledger.COPY_DELETED_EVENT, detail="older than the newest 1 complete sets")
        deleted = copy_policy_verdict(instance, _view())
        assert not deleted.passed and "copy missing on nas (deleted by its retention" in deleted.description


def test_the_3_2_1_alert_goes_out_once_per_failing_state_and_only_when_nothing_is_pending(
    tmp_path: Path, webhook_receiver: WebhookReceiver
) -> None:
    import json

    from backup_pipeline.copy_sensors import build_copy_policy_alert_sensor, build_copy_sensors

    (tmp_path / "hook.key").write_bytes(b"k" * 32)
    settings = load_settings(
        {
            **_env(tmp_path),
            f"{P}COPY_POLICY": "copies=3,kinds=2,offsite=2,immutable=1",
            f"{P}ALERT_WEBHOOK_URL": webhook_receiver.url,
            f"{P}ALERT_WEBHOOK_SECRET_FILE": str(tmp_path / "hook.key"),
        }
    )
    assert [s.name for s in build_copy_sensors(settings)] == [
        "copy_after_backup",
        "copy_daily_safety_net",
        "backup_3_2_1_alert",
    ]
    sensor = build_copy_policy_alert_sensor(settings)
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key=ledger.BACKUP_SET_ASSET, metadata={"backup_id": NEWEST})
        )
        pending = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
        assert "pending" in (pending.skip_message or "") and webhook_receiver.requests == []

        _copy(instance, "s3lock", ledger.COPY_MISSING_EVENT, detail="connection refused")
        _copy(instance, "nas", ledger.COPY_COMPLETE_EVENT)
        sent = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=pending.cursor))
        assert "alert sent via webhook" in (sent.skip_message or "")
        body = json.loads(webhook_receiver.wait_for(1)[0].body)
        assert body["kind"] == "copy_policy" and "copy missing on s3lock" in body["message"]

        again = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=sent.cursor))
        assert "already alerted" in (again.skip_message or "") and len(webhook_receiver.requests) == 1
