"""Alert delivery: SMTP e-mail, an HMAC-SHA256-signed JSON webhook, and Apprise.

No Dagster here: the sensors build an :class:`Alert` and call :func:`send_alert`.

Apprise (PyPI ``apprise``) is the library for every other channel — Slack, Microsoft Teams,
Discord, Telegram, ntfy, Matrix, Pushover and about a hundred more — rather than one hand-written
client per service: each channel is one URL (``slack://…``, ``tgram://…``, ``ntfy://…``). The URLs
embed tokens, so they are never settings: they come from the environment variable
``BACKUP_PIPELINE_ALERT_APPRISE_URLS`` (whitespace-separated) or the file named by the setting
``alert_apprise_urls_file`` (one per line, ``#`` comments). Errors name a channel by its position
and scheme (``apprise #2 (tgram)``), never by its URL.

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
import os
import re
import smtplib
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import requests
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from backup_pipeline.settings import BackupSettings

APPRISE_URLS_ENV = "BACKUP_PIPELINE_ALERT_APPRISE_URLS"
SUCCESS_KINDS = frozenset({"backup_succeeded", "verification_succeeded"})
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


def apprise_urls(settings: BackupSettings, environ: Mapping[str, str] | None = None) -> list[str]:
    """The Apprise channel URLs (secrets: never logged). Raises AlertConfigError for an unreadable file."""
    env = os.environ if environ is None else environ
    urls = (env.get(APPRISE_URLS_ENV) or "").split()
    path = settings.alert_apprise_urls_file
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise AlertConfigError(
                f"BACKUP_PIPELINE_ALERT_APPRISE_URLS_FILE: cannot read {path}: {exc.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise AlertConfigError(
                f"BACKUP_PIPELINE_ALERT_APPRISE_URLS_FILE: {path} is not UTF-8 text"
            ) from None
        urls += [
            line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")
        ]
    return urls


def configured_channels(settings: BackupSettings) -> list[str]:
    channels = []
    if settings.alert_smtp_host and settings.alert_email_to:
        channels.append("email")
    if settings.alert_webhook_url:
        channels.append("webhook")
    if settings.alert_apprise_urls_file is not None or os.environ.get(APPRISE_URLS_ENV, "").strip():
        channels.append("apprise")
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


def _apprise_body(alert: Alert) -> str:
    lines = [alert.message]
    if alert.job_name:
        lines.append(f"Job: {alert.job_name}")
    if alert.run_id:
        lines.append(f"Run: {alert.run_id}")
    lines += [f"{k}: {v}" for k, v in alert.details.items()]
    return "\n".join(lines)


def _redact(text: str, urls: list[str]) -> str:
    """Drop every token-like piece of the URLs (host, user, password, path segments) from ``text``."""
    for url in urls:
        for piece in re.split(r"[:/@?&=#]+", url.split("://", 1)[-1]):
            if len(piece) >= 6:
                text = text.replace(piece, "***")
    return text


def send_apprise(settings: BackupSettings, alert: Alert, attempts: int = 3) -> None:
    """One Apprise notification per URL (so a failure names its channel); raises AlertDeliveryError."""
    import apprise  # imported here: only installations with Apprise channels pay for its plugin scan

    urls = apprise_urls(settings)
    if not urls:
        raise AlertConfigError(
            "BACKUP_PIPELINE_ALERT_APPRISE_URLS_FILE: no Apprise URL in the file (one per line)"
        )
    notify_type = apprise.NotifyType.SUCCESS if alert.kind in SUCCESS_KINDS else apprise.NotifyType.FAILURE
    failures: dict[str, str] = {}
    for index, url in enumerate(urls, start=1):
        scheme = url.split("://", 1)[0] if "://" in url else "?"
        name = f"apprise #{index} ({scheme})"
        channel = apprise.Apprise()
        if not channel.add(url):
            failures[name] = "not a URL Apprise knows (check its scheme and fields)"
            continue
        for attempt in range(attempts):
            with apprise.LogCapture(level=apprise.logging.WARNING) as captured:
                sent = channel.notify(
                    title=f"[{alert.installation_id}] {alert.title}",
                    body=_apprise_body(alert),
                    notify_type=notify_type,
                )
                log = captured.getvalue()
            if sent:
                failures.pop(name, None)
                break
            failures[name] = _redact(" ".join(log.split())[:300], urls) or "not delivered"
            if attempt + 1 < attempts:
                time.sleep(0.5 * 2**attempt)
    if failures:
        raise AlertDeliveryError(failures)


def send_alert(settings: BackupSettings, alert: Alert) -> list[str]:
    """Send to every configured channel; return the channels reached.

    Raises AlertDeliveryError if any configured channel failed (after the others were tried).
    """
    delivered: list[str] = []
    failures: dict[str, str] = {}
    senders: dict[str, Callable[[BackupSettings, Alert], None]] = {
        "email": send_email,
        "webhook": send_webhook,
        "apprise": send_apprise,
    }
    for channel in configured_channels(settings):
        try:
            senders[channel](settings, alert)
            delivered.append(channel)
        except AlertDeliveryError as exc:  # Apprise: one entry per failed URL
            failures.update(exc.failures)
        except (OSError, smtplib.SMTPException, requests.RequestException, AlertConfigError) as exc:
            failures[channel] = _describe(exc)
    if failures:
        raise AlertDeliveryError(failures)
    return delivered


def _describe(exc: BaseException) -> str:
    # Exception text of requests may include the URL; the URL is configuration, not a secret.
    return f"{type(exc).__name__}: {exc}"
