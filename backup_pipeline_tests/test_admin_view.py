"""The administrator's view without a webserver: the backup_set checks' verdicts, the status
sensor (records only changes), the not-off-site wording, Launchpad links, run tags."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import dagster as dg
import yaml

from backup_pipeline import admin_view, safety
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.settings import load_settings


def _settings(tmp_path: Path, **env: str) -> Any:
    base = {"BACKUP_PIPELINE_STATE_DIR": str(tmp_path / "state")}
    return load_settings(env={**base, **env})


def _record_backup(instance: dg.DagsterInstance, at: datetime, **extra: Any) -> str:
    backup_id = at.strftime("%Y%m%dT%H%M%SZ") + "-0a1b2c3d"
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key="backup_set", metadata={"backup_id": backup_id, **extra})
    )
    return backup_id


def test_freshness_verdict_no_backup_old_backup_and_fresh_backup() -> None:
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    with dg.instance_for_test() as instance:
        none = safety.freshness_verdict(instance, 48, now=now.timestamp())
        assert not none.passed and none.severity is dg.AssetCheckSeverity.ERROR
        assert "no complete backup" in none.description

        old_id = _record_backup(instance, now - timedelta(hours=60))
        old = safety.freshness_verdict(instance, 48, now=now.timestamp())
        assert not old.passed and old_id in old.description and "60 h old" in old.description

        # A pre-restore safety backup holds only the database: it does not make us safe.
        _record_backup(instance, now - timedelta(hours=1), trigger="pre-restore")
        assert not safety.freshness_verdict(instance, 48, now=now.timestamp()).passed

        fresh_id = _record_backup(instance, now - timedelta(hours=2, seconds=1))
        fresh = safety.freshness_verdict(instance, 48, now=now.timestamp())
        assert fresh.passed and fresh_id in fresh.description
        assert fresh.metadata["complete_backups"] == 2


def test_status_sensor_records_a_verdict_only_when_it_changes(tmp_path: Path) -> None:
    settings = _settings(tmp_path)  # local destination: the not-off-site warning is recorded too
    sensor = admin_view.build_status_sensor(settings)
    with dg.instance_for_test() as instance:
        first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
        for event in first.asset_events:
            instance.report_runless_asset_event(event)  # what the daemon does with them
        checks = [e for e in first.asset_events if getattr(e, "asset_key", None) == safety.BACKUP_SET_ASSET]
        names = sorted(e.check_name for e in checks)  # type: ignore[union-attr]
        assert names == sorted(
            [
                admin_view.DESTINATION_CHECK,
                admin_view.FRESHNESS_CHECK,
                admin_view.RECOVERY_KEY_CHECK,
                admin_view.VERIFICATION_CHECK,
            ]
        )
        verdicts = {e.check_name: e.passed for e in checks}  # type: ignore[union-attr]
        assert not verdicts[admin_view.FRESHNESS_CHECK] and not verdicts[admin_view.DESTINATION_CHECK]

        again = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=first.cursor))
        assert again.asset_events == []

        # A runless materialization (reported from outside a run): Dagster takes the earlier
        # runless verdicts as judging it, so only the verdicts that changed are recorded.
        _record_backup(instance, datetime.now(UTC) - timedelta(minutes=5))
        changed = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=again.cursor))
        changed_checks = [
            (e.check_name, e.passed)  # type: ignore[union-attr]
            for e in changed.asset_events
            if isinstance(e, dg.AssetCheckEvaluation) and e.asset_key == safety.BACKUP_SET_ASSET
        ]
        assert sorted(changed_checks) == [
            (admin_view.FRESHNESS_CHECK, True),
            (admin_view.VERIFICATION_CHECK, False),
        ]
        assert set(json.loads(changed.cursor or "{}")) == {
            safety.HEALTH_CHECK,
            admin_view.FRESHNESS_CHECK,
            admin_view.DESTINATION_CHECK,
            admin_view.RECOVERY_KEY_CHECK,
            admin_view.VERIFICATION_CHECK,
        }


def test_local_destination_is_called_not_off_site_with_what_is_needed(tmp_path: Path) -> None:
    settings = _settings(tmp_path, BACKUP_PIPELINE_LOCAL_DESTINATION_PATH=str(tmp_path / "nas"))
    text = admin_view.backup_job_description(settings)
    assert "NOT off-site" in text and str(tmp_path / "nas") in text
    assert "GOOGLE-DRIVE-SETUP.md" in text and "domain-wide delegation" in text and "OAuth" in text

    verdict = safety.live_destination_verdict(DestinationResource.from_settings(settings))
    assert not verdict.passed and verdict.severity is dg.AssetCheckSeverity.WARN
    assert "NOT off-site" in verdict.description and verdict.metadata["off_site"] is False
    assert "write" in verdict.metadata["checks"]  # the folder itself was still checked


def test_drive_destination_description_says_off_site(tmp_path: Path) -> None:
    key = tmp_path / "sa.json"
    key.write_text("{}")
    settings = _settings(
        tmp_path,
        BACKUP_PIPELINE_DESTINATION="google_drive",
        BACKUP_PIPELINE_DRIVE_CREDENTIALS_FILE=str(key),
        BACKUP_PIPELINE_DRIVE_SHARED_DRIVE_ID="0Adrive",
    )
    text = admin_view.backup_job_description(settings)
    assert "Google Drive (off-site)" in text and "NOT off-site" not in text


def test_launchpad_links_prefill_the_backup_id_and_never_the_confirmation() -> None:
    backup_id = "20261127T023000Z-1a2b3c4d"
    for link, job, op in (
        (admin_view.restore_link(backup_id), "restore_job", "start_restore"),
        (admin_view.delete_link(backup_id), "delete_backup_job", "delete_backup_op"),
    ):
        parts = urlsplit(link)
        assert parts.path == f"/locations/backup_pipeline/jobs/{job}/playground/setup"
        config = yaml.safe_load(unquote(parse_qs(parts.query)["config"][0]))
        op_config = config["ops"][op]["config"]
        assert op_config["backup_id"] == backup_id
        assert not op_config.get("confirm")
    restore_config = yaml.safe_load(parse_qs(urlsplit(admin_view.restore_link(backup_id)).query)["config"][0])
    assert restore_config["ops"]["start_restore"]["config"]["dry_run"] is True


def test_backup_run_summary_is_metadata_and_trigger_is_a_tag() -> None:
    entry = {
        "backup_id": "20261127T023000Z-1a2b3c4d",
        "started_at": "2026-11-27T02:30:00+00:00",
        "finished_at": "2026-11-27T02:41:05+00:00",
        "total_bytes": 5 * 1024**3 + 1,
        "object_count": 1234,
        "part_file_ids": {"database": "a", "bucket-media": "b", "manifest": "c"},
    }
    assert admin_view.backup_run_summary(entry) == {
        "backup_id": "20261127T023000Z-1a2b3c4d",
        "size": "5.0 GiB",
        "objects": 1234,
        "files": 3,
        "duration": "11 min 5 s",
    }
    assert admin_view.trigger_of({}) == "manual"
    assert admin_view.trigger_of({"dagster/schedule_name": "backup_schedule"}) == "schedule"
    assert admin_view.trigger_of({"backup_pipeline/trigger": "client"}) == "client"
