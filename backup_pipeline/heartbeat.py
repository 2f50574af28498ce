"""The dead-man's switch: an outbound ping after every successful backup and verification.

Alerts about a missing backup come from the Dagster daemon (``backup_freshness``); when the
host dies, so does the daemon, and nobody is told. An external monitor that expects a ping at
least once per schedule interval closes that gap: when the pings stop (host gone, daemon down,
schedule off, backups failing), *it* alerts. Two protocols:

- ``healthchecks`` (Healthchecks.io and compatible, e.g. self-hosted): ``POST <url>`` on
  success, ``POST <url>/fail`` on failure; the body is a short status line.
- ``uptime_kuma`` (an Uptime Kuma push monitor): ``GET <url>?status=up|down&msg=<status>&ping=``.

The URL embeds the check's token, so it is never a setting: it comes from the environment
variable ``BACKUP_PIPELINE_HEARTBEAT_URL`` or from the file named by the setting
``heartbeat_url_file``. Errors and logs name only the URL's scheme and host. A failed ping is
reported to the caller (the sensor logs a warning); it never fails a backup.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from backup_pipeline.settings import BackupSettings

HEARTBEAT_URL_ENV = "BACKUP_PIPELINE_HEARTBEAT_URL"
MAX_STATUS_CHARS = 240  # Uptime Kuma shows msg in a list; Healthchecks keeps 100 kB, a line is enough
TIMEOUT_SECONDS = 10

HeartbeatKind = Literal["healthchecks", "uptime_kuma"]


class HeartbeatError(Exception):
    """The ping did not arrive; the message names the host, never the URL's token."""


@dataclass(frozen=True)
class Heartbeat:
    url: str
    kind: HeartbeatKind

    @property
    def where(self) -> str:
        return redact_url(self.url)

    def request(self, ok: bool, status: str) -> tuple[str, str, dict[str, str], bytes | None]:
        """(method, url, headers, body) of one ping."""
        status = " ".join(status.split())[:MAX_STATUS_CHARS]
        if self.kind == "uptime_kuma":
            parts = urlsplit(self.url)
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            query.update({"status": "up" if ok else "down", "msg": status, "ping": ""})
            return "GET", urlunsplit(parts._replace(query=urlencode(query))), {}, None
        url = self.url if ok else self.url.rstrip("/") + "/fail"
        return "POST", url, {"Content-Type": "text/plain; charset=utf-8"}, status.encode()


def redact_url(url: str) -> str:
    """scheme://host[:port] only: the path and query carry the token."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def configured_heartbeat(
    settings: BackupSettings, environ: Mapping[str, str] | None = None
) -> Heartbeat | None:
    """The heartbeat to ping, or None when none is configured. Raises HeartbeatError for a bad one."""
    env = os.environ if environ is None else environ
    url = (env.get(HEARTBEAT_URL_ENV) or "").strip()
    if not url and settings.heartbeat_url_file is not None:
        url = _read_url_file(settings.heartbeat_url_file)
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        source = HEARTBEAT_URL_ENV if env.get(HEARTBEAT_URL_ENV) else "BACKUP_PIPELINE_HEARTBEAT_URL_FILE"
        raise HeartbeatError(f"{source}: the heartbeat URL must be an http:// or https:// URL with a host")
    return Heartbeat(url=url, kind=settings.heartbeat_kind)


def _read_url_file(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        # The path is configuration, not a secret; the content never appears.
        raise HeartbeatError(
            f"BACKUP_PIPELINE_HEARTBEAT_URL_FILE: cannot read {path}: {exc.strerror}"
        ) from None
    except UnicodeDecodeError:
        raise HeartbeatError(f"BACKUP_PIPELINE_HEARTBEAT_URL_FILE: {path} is not UTF-8 text") from None
    urls = [line for line in lines if line and not line.startswith("#")]
    if len(urls) > 1:
        raise HeartbeatError(
            f"BACKUP_PIPELINE_HEARTBEAT_URL_FILE: {path} holds {len(urls)} URLs; it must hold one"
        )
    return urls[0] if urls else ""


@retry(
    reraise=True,
    stop=stop_after_attempt(3),
    wait=wait_exponential(multiplier=0.5, max=4),
    retry=retry_if_exception_type(requests.RequestException),
)
def _send(method: str, url: str, headers: dict[str, str], body: bytes | None) -> requests.Response:
    response = requests.request(method, url, headers=headers, data=body, timeout=TIMEOUT_SECONDS)
    if response.status_code >= 500:
        raise requests.HTTPError(f"HTTP {response.status_code}", response=response)
    return response


def ping(heartbeat: Heartbeat, *, ok: bool, status: str) -> None:
    """Send one ping (3 attempts on network errors and 5xx); raise HeartbeatError if it did not arrive."""
    method, url, headers, body = heartbeat.request(ok, status)
    try:
        response = _send(method, url, headers, body)
    except requests.RequestException as exc:
        # requests' messages repeat the full URL: name the exception type and the host only.
        code = getattr(getattr(exc, "response", None), "status_code", None)
        why = f"HTTP {code}" if code else type(exc).__name__
        raise HeartbeatError(f"heartbeat ping to {heartbeat.where} failed: {why}") from None
    if response.status_code >= 300:
        raise HeartbeatError(f"heartbeat ping to {heartbeat.where} answered HTTP {response.status_code}")
