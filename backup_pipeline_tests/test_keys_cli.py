"""keys export-recovery / status / rotate-recovery on a real key store in a temporary state_dir."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from backup_pipeline.archive.keys import OrgKeyring, RecoveryIdentity, RecoveryKeyStore
from backup_pipeline.audit import AuditLog
from backup_pipeline.cli import main


@pytest.fixture()
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    secret_file = tmp_path / "org.secret"
    secret_file.write_text(f"k1:{base64.b64encode(os.urandom(32)).decode()}\n")
    state = tmp_path / "state"
    monkeypatch.setenv("BACKUP_PIPELINE_STATE_DIR", str(state))
    monkeypatch.setenv("BACKUP_PIPELINE_ORG_SECRET_FILE", str(secret_file))
    monkeypatch.delenv("DAGSTER_RUN_ID", raising=False)
    RecoveryKeyStore(state, OrgKeyring.from_file(secret_file)).ensure()
    return state, secret_file


def test_export_once_then_refused(host: tuple[Path, Path]) -> None:
    state, _ = host
    runner = CliRunner()
    before = json.loads(runner.invoke(main, ["keys", "status", "--json"]).output)
    assert before["exported"] is False

    wrong = runner.invoke(main, ["keys", "export-recovery"], input="yes\n")
    assert wrong.exit_code == 2
    assert json.loads(runner.invoke(main, ["keys", "status", "--json"]).output)["exported"] is False

    result = runner.invoke(main, ["keys", "export-recovery"], input="export recovery key\n")
    assert result.exit_code == 0, result.output
    secret_lines = [line for line in result.output.splitlines() if line.strip() and " " not in line.strip()]
    assert len(secret_lines) == 1
    identity = RecoveryIdentity.from_bech32(secret_lines[0])
    assert identity.public_key.key_id == before["key_id"]
    assert "OFFLINE" in result.output
    # The server no longer holds it: nothing in the state dir contains the secret.
    for path in state.rglob("*"):
        if path.is_file():
            assert secret_lines[0] not in path.read_text(errors="ignore")

    status = json.loads(runner.invoke(main, ["keys", "status", "--json"]).output)
    assert status["exported"] is True and status["exported_by"].count("@") == 1
    assert status["fingerprint"] == before["key_id"]

    again = runner.invoke(main, ["keys", "export-recovery"], input="export recovery key\n")
    assert again.exit_code == 1 and "already exported" in again.output
    actions = [r.action for r in AuditLog(state).records()]
    assert actions == ["recovery_key_exported", "recovery_key_export_refused"]


def test_rotate_makes_a_new_exportable_key(host: tuple[Path, Path]) -> None:
    state, _ = host
    runner = CliRunner()
    first = json.loads(runner.invoke(main, ["keys", "status", "--json"]).output)["key_id"]
    assert runner.invoke(main, ["keys", "export-recovery"], input="export recovery key\n").exit_code == 0
    rotated = runner.invoke(main, ["keys", "rotate-recovery"], input="rotate recovery key\n")
    assert rotated.exit_code == 0, rotated.output
    status = json.loads(runner.invoke(main, ["keys", "status", "--json"]).output)
    assert status["key_id"] != first and status["exported"] is False and status["previous_key_ids"] == [first]
    assert runner.invoke(main, ["keys", "export-recovery"], input="export recovery key\n").exit_code == 0
    assert [r.action for r in AuditLog(state).records()][-2:] == [
        "recovery_key_rotated",
        "recovery_key_exported",
    ]


def test_export_needs_the_org_secret_and_refuses_inside_a_run(
    host: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    missing = runner.invoke(
        main,
        ["keys", "export-recovery", "--org-secret-file", str(tmp_path / "nope")],
        input="export recovery key\n",
    )
    assert missing.exit_code == 2 and "--org-secret-file" in missing.output
    monkeypatch.setenv("DAGSTER_RUN_ID", "abc")
    inside = runner.invoke(main, ["keys", "export-recovery"], input="export recovery key\n")
    assert inside.exit_code == 2 and "never inside a Dagster run" in inside.output
    monkeypatch.delenv("DAGSTER_RUN_ID")
    assert json.loads(runner.invoke(main, ["keys", "status", "--json"]).output)["exported"] is False


def test_init_creates_secret_and_recovery_key_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "secrets" / "org.secret"
    state = tmp_path / "state"
    monkeypatch.setenv("BACKUP_PIPELINE_STATE_DIR", str(state))
    monkeypatch.setenv("BACKUP_PIPELINE_ORG_SECRET_FILE", str(secret_file))
    monkeypatch.delenv("DAGSTER_RUN_ID", raising=False)
    runner = CliRunner()

    before = runner.invoke(main, ["keys", "status", "--json"])
    assert before.exit_code == 1

    first = runner.invoke(main, ["keys", "init"])
    assert first.exit_code == 0, first.output
    assert secret_file.stat().st_mode & 0o777 == 0o600
    keyring = OrgKeyring.from_file(secret_file)
    secret_text = secret_file.read_text()
    status = json.loads(runner.invoke(main, ["keys", "status", "--json"]).output)
    assert status["exported"] is False
    # The secret itself is never printed by init.
    assert secret_text.split(":", 1)[1].strip() not in first.output

    second = runner.invoke(main, ["keys", "init"])
    assert second.exit_code == 0 and "kept" in second.output
    assert secret_file.read_text() == secret_text
    assert OrgKeyring.from_file(secret_file).current_key_id == keyring.current_key_id
    assert json.loads(runner.invoke(main, ["keys", "status", "--json"]).output)["key_id"] == status["key_id"]

    exported = runner.invoke(main, ["keys", "export-recovery"], input="export recovery key\n")
    assert exported.exit_code == 0, exported.output
    actions = [r.action for r in AuditLog(state).records()]
    assert actions[:2] == ["org_secret_created", "recovery_key_created"]
