"""The PITR profile is opt-in: off (the default) nothing of it loads; on, its jobs, schedule, sensor,
asset and checks do. Settings errors name the field and the rule."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from backup_pipeline.definitions import build_definitions
from backup_pipeline.services.pitr_restore import parse_target
from backup_pipeline.settings import SettingsError, load_settings


def _names(enabled: bool) -> set[str]:
    defs = build_definitions(load_settings({"BACKUP_PIPELINE_PITR_ENABLED": str(enabled).lower()}))
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    return {
        *repo.job_names,
        *(s.name for s in repo.schedule_defs),
        *(s.name for s in repo.sensor_defs),
        *(k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()),
    }


def test_pitr_is_off_by_default_and_loads_nothing() -> None:
    assert load_settings({}).pitr_enabled is False
    off = _names(False)
    assert not {n for n in off if "pitr" in n}
    on = _names(True)
    assert {
        "pitr_base_backup_job",
        "pitr_restore_job",
        "pitr_base_backup_schedule",
        "pitr_archive_health",
        "pitr_archive",
    } <= on
    assert off <= on  # the existing jobs are untouched


def test_pitr_settings_errors_name_the_field_and_the_rule() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(
            {
                "BACKUP_PIPELINE_PITR_REPO_S3_ENDPOINT": "http://127.0.0.1:9000",
                "BACKUP_PIPELINE_PITR_BASE_BACKUP_CRON": "every night",
                "BACKUP_PIPELINE_PITR_STANZA": "bad stanza",
            }
        )
    text = str(info.value)
    assert "BACKUP_PIPELINE_PITR_REPO_S3_ENDPOINT: must be an https:// URL" in text
    assert "BACKUP_PIPELINE_PITR_BASE_BACKUP_CRON: must be a 5-field cron expression" in text
    assert "BACKUP_PIPELINE_PITR_STANZA: must be 1-40 characters" in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("latest", None),
        ("LATEST", None),
        ("2026-05-04T10:41:30+02:00", "2026-05-04T08:41:30+00:00"),
        ("2026-05-04T08:41:30Z", "2026-05-04T08:41:30+00:00"),
    ],
)
def test_target_time_parsing(text: str, expected: str | None) -> None:
    moment = parse_target(text)
    assert (moment.isoformat() if moment else None) == expected


@pytest.mark.parametrize("text", ["2026-05-04 10:41", "yesterday", ""])
def test_target_time_without_offset_or_garbage_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="target time"):
        parse_target(text)


def test_pitr_on_drive_is_opt_in_and_loads_its_job_schedule_and_asset(tmp_path: Path) -> None:
    drive_env = {
        "BACKUP_PIPELINE_PITR_ENABLED": "true",
        "BACKUP_PIPELINE_DESTINATION": "google_drive",
        "BACKUP_PIPELINE_DRIVE_CREDENTIALS_FILE": str(tmp_path / "sa.json"),
        "BACKUP_PIPELINE_DRIVE_SHARED_DRIVE_ID": "0Ashared",
    }
    assert load_settings(drive_env).pitr_drive_copy_enabled is False
    assert not {n for n in _names(True) if "pitr_drive" in n}
    defs = build_definitions(load_settings({**drive_env, "BACKUP_PIPELINE_PITR_DRIVE_COPY_ENABLED": "true"}))
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    assert "pitr_drive_copy_job" in repo.job_names
    assert {s.name for s in repo.schedule_defs} >= {"pitr_drive_copy_schedule"}
    assert dg.AssetKey("pitr_drive") in repo.asset_graph.get_all_asset_keys()


def test_pitr_on_drive_settings_are_validated_once_with_clear_errors() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(
            {
                "BACKUP_PIPELINE_PITR_DRIVE_COPY_ENABLED": "true",
                "BACKUP_PIPELINE_PITR_DRIVE_COPY_CRON": "hourly",
            }
        )
    text = str(info.value)
    assert "pitr_drive_copy_enabled needs pitr_enabled=true" in text
    assert "pitr_drive_copy_cron: must be a 5-field cron expression" in text
    assert "needs a google_drive destination" in text
