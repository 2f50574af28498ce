"""PITR pieces without a server: WAL segment arithmetic, the gap check, config rendering, info parsing."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

from backup_pipeline.services.pitr_engine import (
    EngineConfig,
    PitrSecrets,
    RepoLocation,
    missing_segments,
    parse_info,
    render_config,
    segment_name,
    segment_number,
)


def test_segment_numbers_cross_the_log_file_boundary() -> None:
    timeline, number = segment_number("0000000100000000000000FF")
    assert (timeline, segment_name(timeline, number + 1)) == (1, "000000010000000100000000")


def test_missing_segments_names_every_hole_between_first_and_last() -> None:
    have = ["0000000100000000000000FE", "000000010000000100000001", "000000020000000000000000"]
    assert missing_segments(have, "0000000100000000000000FE", "000000010000000100000001") == [
        "0000000100000000000000FF",
        "000000010000000100000000",
    ]
    assert missing_segments(have[:1], "0000000100000000000000FE", "0000000100000000000000FE") == []


def _cfg() -> EngineConfig:
    return EngineConfig(
        stanza="app",
        repo=RepoLocation("https://s3.example:9443", "pitr", "us-east-1", ca_file=Path("/etc/ca.pem")),
        pg_data_dir=Path("/var/lib/postgresql/15/main"),
        pg_socket_dir=Path("/var/run/postgresql"),
        pg_port=5432,
        pg_user="bp_pitr",
        work_dir=Path("/srv/bp/pitr"),
        retention_full=7,
    )


def test_the_pipelines_config_holds_no_secret_and_the_servers_does() -> None:
    secrets = PitrSecrets("AKIA-test", "s3-secret-value", "cipher-pass-value")
    mine = render_config(_cfg())
    server = render_config(_cfg(), secrets)
    for value in ("AKIA-test", "s3-secret-value", "cipher-pass-value"):
        assert value not in mine and value in server
    assert "repo1-storage-port=9443" in mine and "repo1-s3-endpoint=s3.example" in mine
    assert "repo1-retention-full=7" in mine and "repo1-storage-ca-file=/etc/ca.pem" in mine
    assert "cipher-pass-value" not in repr(secrets)


def _current(config_dir: Path, command: str, option: str) -> str | None:
    """The value pgbackrest itself reads from the config for ``command`` (``help`` prints it)."""
    out = subprocess.run(
        ["pgbackrest", f"--config-path={config_dir}", "--stanza=app", "help", command, option],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = [
        line.split(":", 1)[1].strip() for line in out.splitlines() if line.strip().startswith("current:")
    ]
    return found[0] if found else None


def test_restores_fetch_wal_ahead_in_parallel_and_archiving_keeps_the_defaults(tmp_path: Path) -> None:
    cfg = replace(_cfg(), work_dir=tmp_path, restore_process_max=3, archive_get_queue_max_mib=512)
    (tmp_path / "pgbackrest.conf").write_text(render_config(cfg))
    assert _current(tmp_path, "restore", "process-max") == "3"
    assert _current(tmp_path, "archive-get", "process-max") == "3"
    assert _current(tmp_path, "archive-get", "archive-get-queue-max") == str(512 * 1024 * 1024)
    assert _current(tmp_path, "archive-get", "archive-async") == "true"
    # The application server's archive-push and the base backup are not given extra processes.
    assert _current(tmp_path, "archive-push", "process-max") is None
    assert _current(tmp_path, "backup", "process-max") is None


def test_info_gives_the_window_start_from_the_oldest_usable_backup() -> None:
    def backup(label: str, start: int, stop: int, error: bool = False) -> dict[str, object]:
        return {
            "label": label,
            "type": "full",
            "timestamp": {"start": start, "stop": stop},
            "archive": {"start": "000000010000000000000003", "stop": "000000010000000000000003"},
            "info": {"size": 10, "repository": {"size": 5}},
            "error": error,
        }

    text = json.dumps(
        [
            {
                "name": "app",
                "status": {"code": 0, "message": "ok"},
                "archive": [{"min": "000000010000000000000001", "max": "000000010000000000000009"}],
                "backup": [backup("A", 100, 110, error=True), backup("B", 200, 230)],
            }
        ]
    )
    info = parse_info(text, "app")
    assert [b.label for b in info.usable_backups] == ["B"]
    # pgBackRest needs a backup whose stop second is strictly before the target: stop + 1 s
    assert info.earliest_restorable is not None and info.earliest_restorable.timestamp() == 231
    assert parse_info(text, "other").status_code == -1
