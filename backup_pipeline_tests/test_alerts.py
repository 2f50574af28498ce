"""Alert delivery against a real SMTP server and a real HTTP receiver."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from backup_pipeline.alerts import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Alert,
    AlertDeliveryError,
    configured_channels,
    send_alert,
    verify_webhook_signature,
)
from backup_pipeline.settings import BackupSettings, load_settings
from backup_pipeline_tests.fixtures.alert_receivers import SmtpSink, WebhookReceiver
from backup_pipeline_tests.fixtures.ports import free_port

WEBHOOK_KEY = b"webhook-hmac-key-0123456789abcdef"


def _settings(tmp_path: Path, **env: str) -> BackupSettings:
    key_file = tmp_path / "webhook.key"
    key_file.write_bytes(WEBHOOK_KEY + b"\n")
    base = {"alert_webhook_secret_file": str(key_file)}
    base.update(env)
    return load_settings(env={f"BACKUP_PIPELINE_{k.upper()}": v for k, v in base.items()})


def _alert() -> Alert:
    return Alert(
        kind="run_failure",
        title="backup_job failed",
        message="Step dump_database failed: pg_dump exited with 1",
        installation_id="acme",
        job_name="backup_job",
        run_id="0123abcd-run",
        details={"step": "dump_database"},
    )


def test_alert_reaches_smtp_and_signed_webhook(
    tmp_path: Path, smtp_server: SmtpSink, webhook_receiver: WebhookReceiver
) -> None:
    settings = _settings(
        tmp_path,
        alert_smtp_host="127.0.0.1",
        alert_smtp_port=str(smtp_server.port),
        alert_email_to="ops@example.com,oncall@example.com",
        alert_webhook_url=webhook_receiver.url,
    )
    assert send_alert(settings, _alert()) == ["email", "webhook"]

    [mail] = smtp_server.wait_for(1)
    assert mail["Subject"] == "[acme] backup_job failed"
    assert mail["To"] == "ops@example.com, oncall@example.com"
    body = mail.get_content()
    assert "pg_dump exited with 1" in body and "0123abcd-run" in body

    [request] = webhook_receiver.wait_for(1)
    assert request.path == "/hooks/backup"
    payload = json.loads(request.body)
    assert payload["kind"] == "run_failure" and payload["run_id"] == "0123abcd-run"
    assert verify_webhook_signature(
        WEBHOOK_KEY, request.headers[TIMESTAMP_HEADER], request.body, request.headers[SIGNATURE_HEADER]
    )
    # The signature binds body and timestamp: any change breaks it.
    assert not verify_webhook_signature(
        WEBHOOK_KEY, request.headers[TIMESTAMP_HEADER], request.body + b" ", request.headers[SIGNATURE_HEADER]
    )
    assert not verify_webhook_signature(
        b"another-key-0123456789",
        request.headers[TIMESTAMP_HEADER],
        request.body,
        request.headers[SIGNATURE_HEADER],
    )
    assert not verify_webhook_signature(
        WEBHOOK_KEY,
        request.headers[TIMESTAMP_HEADER],
        request.body,
        request.headers[SIGNATURE_HEADER],
        now=time.time() + 3600,
    )
    assert WEBHOOK_KEY.decode() not in json.dumps(request.headers) + request.body.decode()


def test_no_channels_configured_sends_nothing(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert configured_channels(settings) == []
    assert send_alert(settings, _alert()) == []


def test_webhook_5xx_is_retried(tmp_path: Path, webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.status_codes = [503]
    settings = _settings(tmp_path, alert_webhook_url=webhook_receiver.url)
    assert send_alert(settings, _alert()) == ["webhook"]
    assert len(webhook_receiver.requests) == 2


def test_failed_channel_is_reported_and_other_still_delivered(
    tmp_path: Path, webhook_receiver: WebhookReceiver
) -> None:
    settings = _settings(
        tmp_path,
        alert_smtp_host="127.0.0.1",
        alert_smtp_port=str(free_port()),  # nothing listens there
        alert_email_to="ops@example.com",
        alert_webhook_url=webhook_receiver.url,
    )
    with pytest.raises(AlertDeliveryError, match="email: ConnectionRefusedError") as err:
        send_alert(settings, _alert())
    assert set(err.value.failures) == {"email"}
    assert len(webhook_receiver.requests) == 1


def test_webhook_rejected_4xx_is_not_retried(tmp_path: Path, webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.status_codes = [401]
    settings = _settings(tmp_path, alert_webhook_url=webhook_receiver.url)
    with pytest.raises(AlertDeliveryError, match="webhook answered HTTP 401"):
        send_alert(settings, _alert())
    assert len(webhook_receiver.requests) == 1


def test_webhook_without_key_file_names_the_setting(webhook_receiver: WebhookReceiver) -> None:
    settings = load_settings(env={"BACKUP_PIPELINE_ALERT_WEBHOOK_URL": webhook_receiver.url})
    with pytest.raises(AlertDeliveryError, match="BACKUP_PIPELINE_ALERT_WEBHOOK_SECRET_FILE"):
        send_alert(settings, _alert())
    assert webhook_receiver.requests == []


def test_apprise_channels_from_a_file_reach_a_local_receiver(
    tmp_path: Path, webhook_receiver: WebhookReceiver
) -> None:
    # Apprise's json:// schema POSTs {"title", "message", "type"} to the URL: a stand-in for Slack,
    # Teams, Discord, Telegram, ntfy or Matrix, which all go through the same library.
    urls = tmp_path / "apprise-urls"
    host = webhook_receiver.url.removeprefix("http://").split("/")[0]
    urls.write_text(f"# ops channel\njson://{host}/hooks/apprise-token-0123456789\n")
    settings = _settings(tmp_path, alert_apprise_urls_file=str(urls))
    assert configured_channels(settings) == ["apprise"]
    assert send_alert(settings, _alert()) == ["apprise"]
    [request] = webhook_receiver.wait_for(1)
    assert request.path == "/hooks/apprise-token-0123456789"
    payload = json.loads(request.body)
    assert payload["title"] == "[acme] backup_job failed" and payload["type"] == "failure"
    assert "pg_dump exited with 1" in payload["message"] and "0123abcd-run" in payload["message"]

    success = Alert(
        kind="backup_succeeded", title="backup ok", message="backup X complete", installation_id="acme"
    )
    send_alert(settings, success)
    assert json.loads(webhook_receiver.wait_for(2)[1].body)["type"] == "success"


def test_a_failing_apprise_channel_is_named_without_its_token(
    tmp_path: Path, webhook_receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    webhook_receiver.status_codes = [500, 500, 500]
    host = webhook_receiver.url.removeprefix("http://").split("/")[0]
    monkeypatch.setenv("BACKUP_PIPELINE_ALERT_APPRISE_URLS", f"json://{host}/hooks/secret-token-abcdef")
    settings = _settings(tmp_path)
    with pytest.raises(AlertDeliveryError) as err:
        send_alert(settings, _alert())
    assert set(err.value.failures) == {"apprise #1 (json)"}
    assert "secret-token-abcdef" not in str(err.value)
    assert len(webhook_receiver.requests) == 3  # retried

    monkeypatch.setenv("BACKUP_PIPELINE_ALERT_APPRISE_URLS", "nosuchservice://x")
    with pytest.raises(AlertDeliveryError, match=r"apprise #1 \(nosuchservice\): not a URL Apprise knows"):
        send_alert(settings, _alert())
