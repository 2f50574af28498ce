"""Operator settings: validated once, every bad field named, lists in the forms operators write."""

from __future__ import annotations

from pathlib import Path

import pytest

from backup_pipeline.settings import DestinationKind, SettingsError, load_settings


def test_defaults_load_and_derive_a_daily_cron() -> None:
    settings = load_settings({})
    assert settings.destination is DestinationKind.LOCAL
    assert settings.cron_schedule == "30 2 * * *"
    assert settings.app_database_name == "app"


def test_weekly_cron_uses_the_configured_day() -> None:
    settings = load_settings(
        {
            "BACKUP_PIPELINE_SCHEDULE_FREQUENCY": "weekly",
            "BACKUP_PIPELINE_SCHEDULE_DAY": "sunday",
            "BACKUP_PIPELINE_SCHEDULE_TIME": "23:05",
        }
    )
    assert settings.cron_schedule == "5 23 * * 0"
    assert settings.schedule_interval_hours == 168


@pytest.mark.parametrize("raw", ["media,docs", " media , docs ", '["media", "docs"]'])
def test_list_settings_accept_comma_separated_and_json(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The process environment is read too (as by the code location): a comma-separated list
    # must not be rejected by pydantic-settings' JSON-only env parsing.
    monkeypatch.setenv("BACKUP_PIPELINE_BUCKETS_INCLUDE", raw)
    assert load_settings().buckets_include == ["media", "docs"]


def test_every_bad_field_is_named_at_once() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(
            {
                "BACKUP_PIPELINE_SCHEDULE_TIME": "25:00",
                "BACKUP_PIPELINE_SCHEDULE_TIMEZONE": "Mars/Olympus",
                "BACKUP_PIPELINE_RETENTION_KEEP_LAST": "0",
                "BACKUP_PIPELINE_APP_DATABASE_URL": "postgresql://app:hunter2@db/app",
                "BACKUP_PIPELINE_BUCKETS_INCLUDE": "Bad_Bucket",
            }
        )
    message = str(err.value)
    for field in (
        "SCHEDULE_TIME",
        "SCHEDULE_TIMEZONE",
        "RETENTION_KEEP_LAST",
        "APP_DATABASE_URL",
        "BUCKETS_INCLUDE",
    ):
        assert f"BACKUP_PIPELINE_{field}" in message
    assert "hunter2" not in message


def test_google_drive_destination_requires_its_setup_fields() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(
            {"BACKUP_PIPELINE_DESTINATION": "google_drive", "BACKUP_PIPELINE_DRIVE_AUTH_MODE": "delegation"}
        )
    assert "BACKUP_PIPELINE_DRIVE_CREDENTIALS_FILE" in str(err.value)
    assert "BACKUP_PIPELINE_DRIVE_SUBJECT" in str(err.value)


def test_settings_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    file = tmp_path / "backup.env"
    file.write_text("BACKUP_PIPELINE_RETENTION_KEEP_LAST=3\nBACKUP_PIPELINE_SCHEDULE_TIME=04:15\n")
    settings = load_settings({"BACKUP_PIPELINE_SCHEDULE_TIME": "05:00"}, settings_file=file)
    assert settings.retention_keep_last == 3
    assert settings.schedule_time == "05:00"


def test_missing_settings_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="file not found"):
        load_settings({"BACKUP_PIPELINE_SETTINGS_FILE": str(tmp_path / "nope.env")})


def test_incremental_object_settings_are_validated_by_name() -> None:
    ok = load_settings(
        {
            "BACKUP_PIPELINE_INCREMENTAL_OBJECTS": "true",
            "BACKUP_PIPELINE_FULL_EVERY": "3",
            "BACKUP_PIPELINE_INCREMENTAL_MIN_LIVE_SHARE": "0.25",
        }
    )
    assert (ok.incremental_objects, ok.full_every, ok.incremental_min_live_share) == (True, 3, 0.25)
    with pytest.raises(SettingsError) as err:
        load_settings(
            {"BACKUP_PIPELINE_FULL_EVERY": "0", "BACKUP_PIPELINE_INCREMENTAL_MIN_LIVE_SHARE": "1.5"}
        )
    message = str(err.value)
    assert "BACKUP_PIPELINE_FULL_EVERY" in message and "greater than or equal to 1" in message
    assert "BACKUP_PIPELINE_INCREMENTAL_MIN_LIVE_SHARE" in message and "less than or equal to 1" in message


def test_incremental_objects_are_refused_with_several_destinations() -> None:
    with pytest.raises(
        SettingsError, match="BACKUP_PIPELINE_INCREMENTAL_OBJECTS: not supported with several"
    ):
        load_settings(
            {
                "BACKUP_PIPELINE_INCREMENTAL_OBJECTS": "true",
                "BACKUP_PIPELINE_DESTINATIONS": "nas,usb",
                "BACKUP_PIPELINE_DESTINATION_NAS_KIND": "local",
                "BACKUP_PIPELINE_DESTINATION_NAS_PATH": "/tmp/nas",
                "BACKUP_PIPELINE_DESTINATION_USB_KIND": "local",
                "BACKUP_PIPELINE_DESTINATION_USB_PATH": "/tmp/usb",
            }
        )
