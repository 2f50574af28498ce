"""The audit trail: append-only JSONL, settings changes at load, queryable by the CLI."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
from click.testing import CliRunner

from backup_pipeline.audit import AuditLog
from backup_pipeline.cli import main
from backup_pipeline.settings import load_settings


def _append_many(state_dir: str, worker: int) -> None:
    log = AuditLog(Path(state_dir))
    for i in range(50):
        log.append("manual_backup", {"worker": worker, "i": i})


def test_concurrent_appends_never_interleave(tmp_path: Path) -> None:
    procs = [multiprocessing.Process(target=_append_many, args=(str(tmp_path), w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert len(lines) == 150
    assert {json.loads(line)["details"]["worker"] for line in lines} == {0, 1, 2}


def test_settings_recorded_once_per_change(tmp_path: Path) -> None:
    env = {"BACKUP_PIPELINE_STATE_DIR": str(tmp_path), "BACKUP_PIPELINE_RETENTION_KEEP_LAST": "7"}
    log = AuditLog(tmp_path)
    first = log.record_settings_if_changed(load_settings(env=env))
    assert first is not None and first.action == "settings_initial"
    # Webserver, daemon and every run worker load the code location: same settings, no new record.
    assert log.record_settings_if_changed(load_settings(env=env)) is None
    changed = log.record_settings_if_changed(
        load_settings(env={**env, "BACKUP_PIPELINE_RETENTION_KEEP_LAST": "3"})
    )
    assert changed is not None and changed.action == "settings_changed"
    assert changed.details["changed"] == {"retention_keep_last": {"from": 7, "to": 3}}
    assert [r.action for r in log.records()] == ["settings_initial", "settings_changed"]


def test_audit_cli_filters_and_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_PIPELINE_STATE_DIR", str(tmp_path))
    log = AuditLog(tmp_path)
    log.append("backup_deleted", {"backup_id": "20260101T000000Z-aaaaaaaa", "files": 3})
    log.append("recovery_key_exported", {"fingerprint": "ab12"})
    runner = CliRunner()
    result = runner.invoke(main, ["audit", "--json", "--action", "backup_deleted"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    assert [r["details"]["backup_id"] for r in records] == ["20260101T000000Z-aaaaaaaa"]
    assert records[0]["actor"].count("@") == 1

    text = runner.invoke(main, ["audit"])
    assert text.exit_code == 0
    assert "backup_deleted" in text.output and "recovery_key_exported" in text.output

    future = runner.invoke(main, ["audit", "--since", "2999-01-01"])
    assert future.exit_code == 0 and "no audit records" in future.output

    bad = runner.invoke(main, ["audit", "--since", "yesterday"])
    assert bad.exit_code == 2 and "--since" in bad.output
