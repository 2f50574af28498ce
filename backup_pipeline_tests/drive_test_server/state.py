"""The test server's model: fault presets and armed faults, principals, files, upload sessions."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

UNIT = 256 * 1024
FOLDER_MIME = "application/vnd.google-apps.folder"
MULTIPART_LIMIT = 5 * 1024 * 1024 + 64 * 1024

PRESETS: dict[str, dict[str, Any]] = {
    "cut": {"action": "cut", "route": "upload_chunk"},
    "short": {"action": "short", "route": "upload_chunk"},
    "session_404": {"action": "session_gone", "status": 404, "route": "upload_chunk"},
    "session_410": {"action": "session_gone", "status": 410, "route": "upload_chunk"},
    "rate_limit": {
        "status": 403,
        "reason": "userRateLimitExceeded",
        "message": "User Rate Limit Exceeded. Rate of requests for user exceed configured project quota.",
    },
    "daily_cap": {"status": 403, "reason": "userRateLimitExceeded", "message": "User rate limit exceeded."},
    "too_many_requests": {"status": 429, "reason": "rateLimitExceeded", "message": "Rate Limit Exceeded"},
    "unavailable": {"status": 503, "reason": "backendError", "message": "Backend Error"},
    "timeout_html": {"status": 408, "html": True},
    "storage_quota": {
        "status": 403,
        "reason": "storageQuotaExceeded",
        "message": "Service Accounts do not have storage quota. Leverage shared drives "
        "(https://developers.google.com/workspace/drive/api/guides/about-shareddrives), or use OAuth "
        "delegation (http://support.google.com/a/answer/7281227) instead.",
    },
    "storage_full": {
        "status": 403,
        "reason": "storageQuotaExceeded",
        "message": "The user's Drive storage quota has been exceeded.",
    },
    "expired_token": {"status": 401, "reason": "authError", "message": "Invalid Credentials"},
    "unauthorized_client": {
        "action": "token_error",
        "route": "token",
        "status": 401,
        "error": "unauthorized_client",
    },
    "invalid_grant": {"action": "token_error", "route": "token", "status": 400, "error": "invalid_grant"},
}


@dataclass
class Fault:
    action: str = "status"
    route: str = "any"
    count: int = 1
    skip: int = 0
    status: int = 503
    reason: str | None = None
    message: str | None = None
    html: bool = False
    after_bytes: int | None = None
    keep_bytes: int | None = None
    error: str | None = None
    retry_after: float | None = None

    def matches(self, route: str) -> bool:
        return (
            self.route == route
            or (self.route == "any" and route != "token")
            or (self.route == "upload" and route.startswith("upload"))
            or (self.route == "metadata" and route == "list")
        )


@dataclass
class Principal:
    email: str
    service_account: bool  # True: a service account acting as itself (no storage)


@dataclass
class FileRecord:
    id: str
    name: str
    mime_type: str
    parents: list[str]
    app_properties: dict[str, str]
    owner: str
    drive_id: str | None
    created: str
    size: int = 0
    md5: str | None = None
    sha256: str | None = None
    trashed: bool = False
    blob: Path | None = None

    def resource(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "drive#file",
            "id": self.id,
            "name": self.name,
            "mimeType": self.mime_type,
            "parents": self.parents,
            "appProperties": self.app_properties,
            "createdTime": self.created,
            "modifiedTime": self.created,
            "trashed": self.trashed,
            "owners": [{"emailAddress": self.owner}] if not self.drive_id else None,
        }
        if self.drive_id:
            out["driveId"] = self.drive_id
        if self.mime_type != FOLDER_MIME:
            out.update(size=str(self.size), md5Checksum=self.md5, sha256Checksum=self.sha256)
        return {k: v for k, v in out.items() if v is not None}


@dataclass
class UploadSession:
    id: str
    metadata: dict[str, Any]
    owner: Principal
    drive_id: str | None
    fields: str | None
    path: Path
    received: int = 0
    md5: Any = field(default_factory=lambda: hashlib.md5(usedforsecurity=False))
    sha256: Any = field(default_factory=hashlib.sha256)
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: FileRecord | None = None


class DriveState:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            blobs = self.data_dir / "blobs"
            shutil.rmtree(blobs, ignore_errors=True)
            blobs.mkdir(parents=True, exist_ok=True)
            self.files: dict[str, FileRecord] = {}
            self.sessions: dict[str, UploadSession] = {}
            self.tokens: dict[str, tuple[Principal, float]] = {}
            self.shared_drives: dict[str, dict[str, Any]] = {}
            self.faults: list[Fault] = []
            self.stats: Counter[str] = Counter()
            self.requests: Counter[str] = Counter()
            self.storage_limit: int | None = 15 * 1024**3
            self.token_lifetime = 3600.0
            self.revoked_refresh_tokens: set[str] = set()
            self.unauthorized_delegation: set[str] = set()
            self.list_page_limit: int | None = None

    def take_fault(self, route: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.count > 0 and fault.matches(route):
                    if fault.skip > 0:
                        fault.skip -= 1
                        return None
                    fault.count -= 1
                    self.stats["faults_fired"] += 1
                    self.stats[f"faults_fired_{route}"] += 1
                    return fault
            return None

    def drive_of(self, parent: str) -> str | None:
        """The shared drive a parent id belongs to (walking up folders), or None."""
        seen = 0
        while parent and seen < 100:
            if parent in self.shared_drives:
                return parent
            record = self.files.get(parent)
            if record is None or not record.parents:
                return None
            parent = record.parents[0]
            seen += 1
        return None

    def role(self, principal: Principal, drive_id: str) -> str | None:
        members = self.shared_drives.get(drive_id, {}).get("members", {})
        return members.get(principal.email) or members.get("*")


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.reason, self.message, self.headers = status, reason, message, headers or {}


class Cut(Exception):
    """Close the connection without a reply."""


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Handled(Exception):
    """A reply was already sent (e.g. an HTML error page)."""


def new_id() -> str:
    return (
        "1"
        + base64.urlsafe_b64encode(uuid.uuid4().bytes + os.urandom(8))
        .decode()
        .rstrip("=")
        .replace("-", "A")
        .replace("_", "B")[:32]
    )
