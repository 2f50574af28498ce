"""``backup-pipeline destination check|ls`` against the Drive test server and a local folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from backup_pipeline.cli import main
from backup_pipeline.settings import DriveAuthMode
from backup_pipeline_tests.fixtures.drive import SERVICE_ACCOUNT, DriveFixture


def run(args: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    for key in list(__import__("os").environ):
        if key.startswith("BACKUP_PIPELINE_"):
            monkeypatch.delenv(key)
    result = CliRunner().invoke(main, args, env=env)
    return result.exit_code, result.output


def test_check_ok_on_a_shared_drive(drive: DriveFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = run(["destination", "check"], drive.env(DriveAuthMode.SHARED_DRIVE), monkeypatch)
    assert code == 0, out
    assert "verdict: OK — backups can be written here (750.0 GB of today's upload allowance left)" in out
    assert "3 chunks in one resumable session" in out and "read back" in out and "delete" in out
    assert "PRIVATE KEY" not in out


def test_check_says_a_backup_would_be_refused_with_the_daily_allowance_used(
    drive: DriveFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = dict(drive.env(DriveAuthMode.SHARED_DRIVE), BACKUP_PIPELINE_DRIVE_DAILY_UPLOAD_CAP_BYTES="1000000")
    drive.destination(state_dir=env["BACKUP_PIPELINE_STATE_DIR"]).put("earlier", [b"x" * 1_000_000], {})
    code, out = run(["destination", "check"], env, monkeypatch)
    assert code == 1, out
    assert "a backup would be refused now: nothing is left of today's upload allowance" in out
    assert "verdict: FAILED" in out and "fix: wait: the upload allowance frees up" in out


def test_check_explains_an_unknown_shared_drive(drive: DriveFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    env = dict(drive.env(DriveAuthMode.SHARED_DRIVE), BACKUP_PIPELINE_DRIVE_SHARED_DRIVE_ID="0AnoSuchDrive")
    code, out = run(["destination", "check"], env, monkeypatch)
    assert code == 1
    assert "verdict: FAILED" in out and "is not a member of it" in out and "Manage members" in out


def test_check_json(drive: DriveFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = run(["destination", "check", "--json"], drive.env(DriveAuthMode.OAUTH), monkeypatch)
    report = json.loads(out)
    assert code == 0 and report["ok"] is True
    assert any("7 days" in w for w in report["warnings"])


def test_check_explains_unauthorized_delegation(drive: DriveFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    drive.server.config(unauthorized_delegation=[SERVICE_ACCOUNT])
    code, out = run(["destination", "check"], drive.env(DriveAuthMode.DELEGATION), monkeypatch)
    assert code == 1
    assert (
        "verdict: FAILED" in out and "unauthorized_client" in out and "domain-wide delegation" in out.lower()
    )


def test_check_explains_missing_organizer_role(drive: DriveFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    drive.add_shared_drive("0AtestSharedDrive", {SERVICE_ACCOUNT: "fileOrganizer"})
    code, out = run(["destination", "check"], drive.env(DriveAuthMode.SHARED_DRIVE), monkeypatch)
    assert code == 1 and "Manager (organizer) role" in out


def test_check_bad_settings_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = run(
        ["destination", "check"],
        {"BACKUP_PIPELINE_DESTINATION": "google_drive", "BACKUP_PIPELINE_DRIVE_AUTH_MODE": "delegation"},
        monkeypatch,
    )
    assert code == 2 and "BACKUP_PIPELINE_DRIVE_CREDENTIALS_FILE" in out


def test_ls_local_with_property_filter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backup_pipeline.destinations import LocalFolderDestination

    folder = tmp_path / "backups"
    LocalFolderDestination(folder).put("a/part", [b"abc"], {"backupId": "x"})
    LocalFolderDestination(folder).put("b/part", [b"de"], {"backupId": "y"})
    env = {"BACKUP_PIPELINE_DESTINATION": "local", "BACKUP_PIPELINE_LOCAL_DESTINATION_PATH": str(folder)}
    code, out = run(["destination", "ls", "--property", "backupId=x"], env, monkeypatch)
    assert code == 0 and "a/part\t3\t" in out and "b/part" not in out
    code, out = run(["destination", "ls", "--property", "nonsense"], env, monkeypatch)
    assert code == 2


def test_the_default_retry_budget_rides_out_a_brief_outage(
    drive: DriveFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three 503s in a row: the default back-off (1 s, 2 s, 4 s at most, jittered) retries each."""
    drive.destination().put("present", [b"x" * 10], {})
    drive.fault("unavailable", route="list", count=3)
    env = dict(drive.env(DriveAuthMode.SHARED_DRIVE), BACKUP_PIPELINE_INSTALLATION_ID="test-install")
    code, out = run(["destination", "ls"], env, monkeypatch)
    assert code == 0, out
    assert "present" in out and drive.stats()["faults_fired"] == 3


def test_the_retry_budget_is_a_setting(drive: DriveFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """main retried 8 times with waits up to 60 s whatever the operator (or a test) needed."""
    env = dict(
        drive.env(DriveAuthMode.SHARED_DRIVE),
        BACKUP_PIPELINE_DESTINATION_RETRY_ATTEMPTS="2",
        BACKUP_PIPELINE_DESTINATION_RETRY_MAX_WAIT_SECONDS="0.1",
    )
    drive.fault("unavailable", route="list", count=3)
    code, out = run(["destination", "ls"], env, monkeypatch)
    assert code == 1 and "gave up after 2 attempts" in out, out
    assert drive.stats()["faults_fired"] == 2

    for name, value in (("ATTEMPTS", "0"), ("ATTEMPTS", "many"), ("MAX_WAIT_SECONDS", "0")):
        bad = dict(env, **{f"BACKUP_PIPELINE_DESTINATION_RETRY_{name}": value})
        code, out = run(["destination", "ls"], bad, monkeypatch)
        assert code == 2 and f"BACKUP_PIPELINE_DESTINATION_RETRY_{name}" in out, out


def test_a_drive_without_its_shared_drive_or_user_is_described_by_the_missing_setting(tmp_path: Path) -> None:
    """The migration's legacy Drive is built whatever the backup destination is, so settings
    validation does not catch these; main described them as "My Drive of None"."""
    from backup_pipeline.ops.migration import build_legacy_drive_resource
    from backup_pipeline.settings import load_settings

    for mode, setting in (
        ("delegation", "BACKUP_PIPELINE_DRIVE_SUBJECT"),
        ("shared_drive", "BACKUP_PIPELINE_DRIVE_SHARED_DRIVE_ID"),
    ):
        settings = load_settings(
            env={
                "BACKUP_PIPELINE_DESTINATION": "local",
                "BACKUP_PIPELINE_DRIVE_AUTH_MODE": mode,
                "BACKUP_PIPELINE_DRIVE_CREDENTIALS_FILE": str(tmp_path / "sa.json"),
                "BACKUP_PIPELINE_STATE_DIR": str(tmp_path / "state"),
            }
        )
        description = build_legacy_drive_resource(settings).get_destination().description
        assert "None" not in description and setting in description, description


def test_retention_dry_run_prints_why_each_set_is_kept_and_deletes_nothing(
    drive: DriveFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime, timedelta

    from backup_pipeline.services.backup_parts import (
        PART_DATABASE,
        PART_MANIFEST,
        new_backup_id,
        part_file_name,
        part_properties,
    )
    from backup_pipeline_tests.gfs_reference import reference_period_keeps

    installation, zone = "test-install", "Asia/Tokyo"
    destination = drive.destination()
    # 20:00 UTC is 05:00 the next day in Tokyo: local days are not UTC days.
    created = [datetime(2026, 11, 20, 20, 0, tzinfo=UTC) + timedelta(days=d) for d in range(12)]
    ids = [new_backup_id(when, f"{i:08x}") for i, when in enumerate(created)]
    for backup_id in ids:
        for part in (PART_DATABASE, PART_MANIFEST):
            destination.put(
                part_file_name(installation, backup_id, part),
                [b"x"],
                part_properties(installation, backup_id, part),
            )
    env = dict(
        drive.env(DriveAuthMode.SHARED_DRIVE),
        BACKUP_PIPELINE_INSTALLATION_ID=installation,
        BACKUP_PIPELINE_SCHEDULE_TIMEZONE=zone,
        BACKUP_PIPELINE_RETENTION_KEEP_WEEKLY="3",
    )
    code, out = run(["destination", "retention", "--keep-last", "1", "--json"], env, monkeypatch)
    assert code == 0, out
    decisions = {row["backup_id"]: row for row in json.loads(out)}
    expected = reference_period_keeps(list(zip(ids, created, strict=True)), zone, weekly=3)
    expected[ids[-1]] = ["newest 1", *expected.get(ids[-1], [])]
    assert {b: r["why"] for b, r in decisions.items() if r["decision"] == "keep"} == expected
    # 2026-11-30 05:00 JST (a Monday) opens week 49; 2026-11-29 05:00 JST is the newest of week 48.
    assert expected[ids[8]] == ["weekly 2026-W48"]

    code, out = run(["destination", "retention", "--keep-last", "1"], env, monkeypatch)
    assert code == 0, out
    assert "nothing is deleted" in out and "CREATED (Asia/Tokyo)" in out
    assert f"{ids[8]:<26} 2026-11-29 05:00 JST" in out and "weekly 2026-W48" in out
    assert f"{len(expected)} kept (newest 1: 1, weekly: 3), {len(ids) - len(expected)} to delete" in out
    assert len(list(destination.list({"backupId": ids[0]}))) == 2  # a dry run

    code, out = run(["destination", "retention", "--keep-last", "0", "--keep-weekly", "0"], env, monkeypatch)
    assert code == 2 and "--keep-last: must be at least 1 when --keep-daily" in out


def test_check_warns_when_restoring_the_newest_set_passes_the_daily_download_threshold(
    drive: DriveFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drive's ~1 TB/day download threshold (here 1 MB): a warning with the figure, the verdict stays OK."""
    from backup_pipeline.services.backup_parts import part_properties

    dest = drive.destination()
    backup_id = "20261207T000000Z-00000001"
    dest.put("db", [b"d" * 1000], part_properties("test-install", backup_id, "database"))
    dest.put("bucket", [b"b" * 700_000], part_properties("test-install", backup_id, "bucket-media"))
    dest.put("manifest", [b"m" * 100], part_properties("test-install", backup_id, "manifest"))
    env = dict(
        drive.env(DriveAuthMode.SHARED_DRIVE),
        BACKUP_PIPELINE_INSTALLATION_ID="test-install",
        BACKUP_PIPELINE_DRIVE_DAILY_DOWNLOAD_THRESHOLD_BYTES="1000000",
    )
    code, out = run(["destination", "check"], env, monkeypatch)
    assert code == 0, out
    assert f"warning: newest backup {backup_id}: this restore downloads about 1.4 MB" in out
    assert "throttles the project's Drive downloads or bills them. The restore goes ahead" in out

    # Below the threshold: no warning.
    env["BACKUP_PIPELINE_DRIVE_DAILY_DOWNLOAD_THRESHOLD_BYTES"] = "10000000"
    code, out = run(["destination", "check"], env, monkeypatch)
    assert code == 0 and "downloads about" not in out, out
