"""Client CLI input handling without a server (the live-webserver test is in e2e)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from backup_pipeline.cli import main
from backup_pipeline.client import parse_url
from backup_pipeline_tests.fixtures.ports import free_port


def test_parse_url() -> None:
    assert parse_url("https://backup.example.com/dagster/") == ("backup.example.com", None, True, "/dagster")
    assert parse_url("127.0.0.1:3000") == ("127.0.0.1", 3000, False, "")
    with pytest.raises(ValueError, match="--url"):
        parse_url("ftp://x")


def test_bad_input_exits_2_and_unreachable_server_exits_1() -> None:
    runner = CliRunner()
    bad_url = runner.invoke(main, ["history", "--url", "ftp://nowhere"])
    assert bad_url.exit_code == 2 and "--url" in bad_url.output
    bad_header = runner.invoke(main, ["history", "--header", "no-colon"])
    assert bad_header.exit_code == 2 and "--header" in bad_header.output
    bad_status = runner.invoke(main, ["history", "--status", "exploded"])
    assert bad_status.exit_code == 2
    port = free_port()
    unreachable = runner.invoke(main, ["history", "--url", f"http://127.0.0.1:{port}"])
    assert unreachable.exit_code == 1
    assert (
        unreachable.stderr
        == f"error: cannot reach the Dagster webserver at 127.0.0.1:{port}: Connection refused\n"
    )


def test_delete_requires_typed_confirmation() -> None:
    result = CliRunner().invoke(main, ["delete", "20260101T000000Z-aaaaaaaa"], input="yes\n")
    assert result.exit_code == 2 and "confirmation did not match" in result.output


def test_settings_json_has_no_secret_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_PIPELINE_APP_DATABASE_PASSWORD", "db-password-should-not-appear")
    monkeypatch.setenv("BACKUP_PIPELINE_RETENTION_KEEP_LAST", "4")
    result = CliRunner().invoke(main, ["settings", "--json"])
    assert result.exit_code == 0
    assert '"retention_keep_last": 4' in result.output
    assert "db-password-should-not-appear" not in result.output
