"""Alert delivery: SMTP e-mail and an HMAC-SHA256-signed JSON webhook.

No Dagster here: the sensors build an :class:`Alert` and call :func:`send_alert`.

Webhook contract (for receivers):

- ``POST`` with ``Content-Type: application/json``; the body is the alert as JSON.
- ``X-Backup-Pipeline-Timestamp``: Unix seconds when the alert was signed.
- ``X-Backup-Pipeline-Signature``: ``sha256=<hex>`` = HMAC-SHA256(key, ``<timestamp>.`` + raw body),
  the key being the bytes of ``alert_webhook_secret_file`` with surrounding whitespace stripped.
  Receivers SHOULD reject a timestamp more than 5 minutes old (replay) and MUST compare the
  signature in constant time (:func:`verify_webhook_signature` does both).

A channel that fails is retried (3 attempts, backing off); if any configured channel still
fails, :class:`AlertDeliveryError` names the channels that failed, so the sensor tick shows
the failure instead of silently dropping the alert.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import requests
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from backup_pipeline.settings import BackupSettings

SIGNATURE_HEADER = "X-Backup-Pipeline-Signature"
TIMESTAMP_HEADER = "X-Backup-Pipeline-Timestamp"
MAX_SIGNATURE_AGE_SECONDS = 300


@dataclass(frozen=True)
class Alert:
    kind: str  # "run_failure" | "stale_backup" | ...
    title: str
    message: str
    installation_id: str
    job_name: str | None = None
    run_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class AlertDeliveryError(Exception):
    def __init__(self, failures: dict[str, str]):
        self.failures = failures
        super().__init__(
            "alert delivery failed: " + "; ".join(f"{channel}: {why}" for channel, why in failures.items())
        )


class AlertConfigError(ValueError):
    pass


def sign_webhook_body(key: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_webhook_signature(
    key: bytes, timestamp: str, body: bytes, signature: str, *, now: float | None = None
) -> bool:
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((now if now is not None else time.time()) - ts) > MAX_SIGNATURE_AGE_SECONDS:
        return False
    return hmac.compare_digest(sign_webhook_body(key, ts, body), signature)


def read_webhook_key(path: Path) -> bytes:
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        # The path is operator configuration, not a secret; the content never appears.
        raise AlertConfigError(
            f"BACKUP_PIPELINE_ALERT_WEBHOOK_SECRET_FILE: cannot read {path}: {exc.strerror}"
        ) from None
    if len(key) < 16:
        raise AlertConfigError("BACKUP_PIPELINE_ALERT_WEBHOOK_SECRET_FILE: key must be at least 16 bytes")
    return key


def configured_channels(settings: BackupSettings) -> list[str]:
    channels = []
    if settings.alert_smtp_host and settings.alert_email_to:
        channels.append("email")
    if settings.alert_webhook_url:
        channels.append("webhook")
    return channels


_retrying = retry(
    reraise=True,
    stop=stop_after_attempt(3),
    wait=wait_exponential(multiplier=0.5, max=4),
    retry=retry_if_exception_type((OSError, smtplib.SMTPException, requests.RequestException)),
)


@_retrying
def send_email(settings: BackupSettings, alert: Alert) -> None:
    assert settings.alert_smtp_host
    msg = EmailMessage()
    msg["Subject"] = f"[{alert.installation_id}] {alert.title}"
    msg["From"] = settings.alert_email_from
    msg["To"] = ", ".join(settings.alert_email_to)
    lines = [alert.message, ""]
    if alert.job_name:
        lines.append(f"Job: {alert.job_name}")
    if alert.run_id:
        lines.append(f"Run: {alert.run_id}")
    lines += [f"{k}: {v}" for k, v in alert.details.items()]
    msg.set_content("\n".join(lines) + "\n")
    with smtplib.SMTP(settings.alert_smtp_host, settings.alert_smtp_port, timeout=15) as smtp:
        smtp.send_message(msg)


@_retrying
def _post_webhook(url: str, body: bytes, headers: dict[str, str]) -> None:
    response = requests.post(url, data=body, headers=headers, timeout=15)
    if response.status_code >= 500:
        raise requests.HTTPError(f"HTTP {response.status_code}", response=response)
    if response.status_code >= 300:
        # A 4xx is the receiver rejecting us (signature, URL): retrying will not help.
        raise AlertConfigError(f"webhook answered HTTP {response.status_code}")


def send_webhook(settings: BackupSettings, alert: Alert) -> None:
    assert settings.alert_webhook_url
    if settings.alert_webhook_secret_file is None:
        raise AlertConfigError(
            "BACKUP_PIPELINE_ALERT_WEBHOOK_SECRET_FILE: required when BACKUP_PIPELINE_ALERT_WEBHOOK_URL is set"
        )
    key = read_webhook_key(settings.alert_webhook_secret_file)
    body = json.dumps(alert.to_json(), sort_keys=True).encode()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign_webhook_body(key, timestamp, body),
    }
    _post_webhook(settings.alert_webhook_url, body, headers)


def send_alert(settings: BackupSettings, alert: Alert) -> list[str]:
    """Send to every configured channel; return the channels reached.

    Raises AlertDeliveryError if any configured channel failed (after the others were tried).
    """
    delivered: list[str] = []
    failures: dict[str, str] = {}
    senders: dict[str, Callable[[BackupSettings, Alert], None]] = {
        "email": send_email,
        "webhook": send_webhook,
    }
    for channel in configured_channels(settings):
        try:
            senders[channel](settings, alert)
            delivered.append(channel)
        except (OSError, smtplib.SMTPException, requests.RequestException, AlertConfigError) as exc:
            failures[channel] = _describe(exc)
    if failures:
        raise AlertDeliveryError(failures)
    return delivered


def _describe(exc: BaseException) -> str:
    # Exception text of requests may include the URL; the URL is configuration, not a secret.
    return f"{type(exc).__name__}: {exc}"
