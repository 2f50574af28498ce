"""A faithful-enough Google Drive v3 server for tests and demos (HTTP, threaded, streams to disk).

Implements what the product uses and what Google documents (see
``/work/shared/design/google-drive.md`` §6): ``POST /token`` (JWT bearer and refresh-token
grants), ``GET /drive/v3/about``, ``GET/POST /drive/v3/files``, ``GET/PATCH/DELETE
/drive/v3/files/{id}`` (``alt=media`` with ranges), ``POST /drive/v3/files/generateIds``,
``POST /upload/drive/v3/files`` (media, multipart, resumable) and ``PUT`` on session URIs
with Drive's 308 semantics; ``fields``, ``q``, ``pageSize``/``pageToken``, shared drives
with member roles, service accounts without storage.

Not checked: JWT signatures and the ``aud`` claim (google-auth always sends Google's
token URL as ``aud``), OAuth client secrets, per-file ACLs other than shared-drive roles.

Control API (no auth; for tests):

* ``POST /_control/reset`` — forget every file, session, token, fault, counter and config.
* ``POST /_control/faults`` — ``{"preset": NAME, "route": R, "count": N, "skip": K, ...}``
  arms a fault for the next ``count`` requests on route ``R`` after letting ``skip`` pass.
  Presets: ``cut`` (close the socket after ``after_bytes`` of the body), ``short`` (keep
  only ``keep_bytes`` of a chunk), ``session_404``, ``session_410``, ``rate_limit``,
  ``daily_cap``, ``too_many_requests`` (429), ``unavailable`` (503), ``timeout_html`` (408,
  HTML body), ``storage_quota`` (a service account's write: "Service Accounts do not have
  storage quota"), ``storage_full`` (the account's storage is full), ``expired_token`` (401), ``unauthorized_client`` and
  ``invalid_grant`` (token route). Or ``{"status": S, "reason": R, "message": M}``.
  Routes: ``token``, ``upload_start``, ``upload_chunk``, ``upload_status``, ``download``,
  ``list`` (``GET /drive/v3/files``), ``metadata`` (every other metadata call, and listings
  too), ``delete``, ``any``. ``DELETE /_control/faults`` disarms all.
* ``POST /_control/expire_tokens`` — every issued access token becomes invalid (401).
* ``POST /_control/shared_drives`` — ``{"id", "name", "members": {email or "*": role}}``.
* ``POST /_control/config`` — ``{"storage_limit": bytes|null, "token_lifetime": s,
  "revoked_refresh_tokens": [...], "unauthorized_delegation": [sa email...],
  "list_page_limit": n|null}``. ``list_page_limit`` caps every ``files.list`` page below the
  requested ``pageSize``, as Drive does when it returns partial pages (a ``nextPageToken``
  with fewer items than asked for).
* ``GET /_control/stats`` — counters (``upload_bytes_received``, ``upload_bytes_committed``,
  ``cuts``, ``faults_fired``, ``status_queries`` — of which ``status_queries_unknown_total``
  asked ``bytes */*`` —, ``tokens_issued``, ``list_pages``, ``requests``…).
* ``GET /_control/files`` — every file's full record (including trashed ones).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

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


class _Cut(Exception):
    """Close the connection without a reply."""


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# --- fields= projection ------------------------------------------------------------------------


def parse_fields(spec: str) -> dict[str, Any]:
    """``nextPageToken,files(id,name)`` → ``{"nextPageToken": {}, "files": {"id": {}, "name": {}}}``."""
    result: dict[str, Any] = {}
    i = 0
    while i < len(spec):
        match = re.match(r"\s*([A-Za-z_*][\w*]*(?:/[\w*]+)*)\s*", spec[i:])
        if not match:
            raise ApiError(400, "invalidParameter", f"Invalid field selection {spec}")
        name = match.group(1)
        i += match.end()
        sub: dict[str, Any] = {}
        if i < len(spec) and spec[i] == "(":
            depth, j = 1, i + 1
            while j < len(spec) and depth:
                depth += {"(": 1, ")": -1}.get(spec[j], 0)
                j += 1
            sub = parse_fields(spec[i + 1 : j - 1])
            i = j
        parts = name.split("/")
        node = result
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = sub
        while i < len(spec) and spec[i] in " ,":
            i += 1
    return result


def project(value: Any, selection: dict[str, Any]) -> Any:
    if not selection or "*" in selection:
        return value
    if isinstance(value, list):
        return [project(v, selection) for v in value]
    if isinstance(value, dict):
        return {k: project(value[k], sub) for k, sub in selection.items() if k in value}
    return value


# --- q= ------------------------------------------------------------------------------------------

_LITERAL = r"'((?:[^'\\]|\\.)*)'"
_TERMS = [
    ("in_parents", re.compile(rf"{_LITERAL}\s+in\s+parents")),
    ("trashed", re.compile(r"trashed\s*(=|!=)\s*(true|false)")),
    ("name", re.compile(rf"name\s*(=|!=|contains)\s*{_LITERAL}")),
    ("mime", re.compile(rf"mimeType\s*(=|!=)\s*{_LITERAL}")),
    (
        "app_prop",
        re.compile(rf"appProperties\s+has\s*\{{\s*key\s*=\s*{_LITERAL}\s+and\s+value\s*=\s*{_LITERAL}\s*\}}"),
    ),
]


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_query(q: str) -> list[tuple[str, tuple[str, ...]]]:
    terms: list[tuple[str, tuple[str, ...]]] = []
    rest = q.strip()
    while rest:
        for kind, pattern in _TERMS:
            match = pattern.match(rest)
            if match:
                terms.append((kind, match.groups()))
                rest = rest[match.end() :].strip()
                break
        else:
            raise ApiError(400, "invalid", f"Invalid Value: unsupported query near {rest[:40]!r}")
        if rest:
            joiner = re.match(r"and\s+", rest)
            if not joiner:
                raise ApiError(400, "invalid", f"Invalid Value: only 'and' is supported near {rest[:40]!r}")
            rest = rest[joiner.end() :]
    return terms


def query_matches(record: FileRecord, terms: list[tuple[str, tuple[str, ...]]]) -> bool:
    for kind, groups in terms:
        if kind == "in_parents" and _unescape(groups[0]) not in record.parents:
            return False
        if kind == "trashed" and (record.trashed == (groups[1] == "true")) != (groups[0] == "="):
            return False
        if kind == "name":
            value = _unescape(groups[1])
            ok = value in record.name if groups[0] == "contains" else record.name == value
            if ok != (groups[0] != "!="):
                return False
        if kind == "mime" and (record.mime_type == _unescape(groups[1])) != (groups[0] == "="):
            return False
        if kind == "app_prop" and record.app_properties.get(_unescape(groups[0])) != _unescape(groups[1]):
            return False
    return True


# --- the handler -----------------------------------------------------------------------------


class DriveHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: DriveServer

    def log_message(self, format: str, *args: Any) -> None:
        if os.environ.get("DRIVE_TEST_SERVER_LOG"):
            super().log_message(format, *args)

    @property
    def state(self) -> DriveState:
        return self.server.state

    # -- plumbing --

    def _dispatch(self) -> None:
        self._body_left = int(self.headers.get("Content-Length") or 0)
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        path = url.path
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", ""):
                raise ApiError(411, "lengthRequired", "Content-Length required")
            if path.startswith("/_control/"):
                self._control(path)
            else:
                self._api(path)
        except _Cut:
            self.state.stats["cuts"] += 1
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        except ApiError as exc:
            self._drain()
            self._error(exc)
        except (ConnectionError, BrokenPipeError):
            self.close_connection = True
        finally:
            if self._body_left:
                self.close_connection = True  # unread body: the connection cannot be reused

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def _read(self, n: int) -> bytes:
        n = min(n, self._body_left)
        data = self.rfile.read(n) if n else b""
        self._body_left -= len(data)
        if len(data) < n:
            raise ConnectionError("client closed mid-body")
        return data

    def _drain(self) -> int:
        drained = 0
        while self._body_left:
            drained += len(self._read(1 << 20))
        return drained

    def _json_body(self) -> dict[str, Any]:
        raw = self._read(self._body_left) if self._body_left <= MULTIPART_LIMIT else b""
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except ValueError:
            raise ApiError(400, "parseError", "Parse Error") from None
        if not isinstance(value, dict):
            raise ApiError(400, "parseError", "Parse Error")
        return value

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        ctype: str = "application/json; charset=UTF-8",
    ) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if body or status not in (204, 308):
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _json(self, status: int, value: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(value).encode(), headers)

    def _error(self, exc: ApiError) -> None:
        body = {
            "error": {
                "code": exc.status,
                "message": exc.message,
                "errors": [{"domain": "global", "reason": exc.reason, "message": exc.message}],
            }
        }
        self._json(exc.status, body, exc.headers)

    def _fault(self, route: str) -> Fault | None:
        self.state.requests[route] += 1
        fault = self.state.take_fault(route)
        if fault is None or fault.action != "status":
            return fault
        drained = self._drain()
        if route == "upload_chunk":
            self.state.stats["upload_bytes_received"] += drained
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        if fault.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="https://accounts.google.com/", error="invalid_token"'
        if fault.html:
            page = b"<!DOCTYPE html><html><title>Error 408 (Request Timeout)!!1</title><p>Your client has taken too long to issue its request.</p></html>"
            self._send(fault.status, page, headers, ctype="text/html; charset=UTF-8")
            raise _Handled
        raise ApiError(fault.status, fault.reason or "error", fault.message or "fault", headers)

    def _principal(self) -> Principal:
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip()
        with self.state.lock:
            entry = self.state.tokens.get(token)
        if entry is None or entry[1] < time.time():
            raise ApiError(
                401,
                "authError",
                "Request had invalid authentication credentials. Expected OAuth 2 access token.",
                {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="invalid_token"'},
            )
        return entry[0]

    def _base_url(self) -> str:
        return f"http://{self.headers.get('Host') or f'127.0.0.1:{self.server.server_port}'}"

    # -- routes --

    def _api(self, path: str) -> None:
        with contextlib.suppress(_Handled):
            self._route(path)

    def _route(self, path: str) -> None:
        method = self.command
        if path == "/token" and method == "POST":
            return self._token()
        if path == "/upload/drive/v3/files" and method == "POST":
            self._fault("upload_start")
            return self._upload_start()
        if path == "/upload/drive/v3/files" and method == "PUT":
            route = "upload_chunk" if self._body_left else "upload_status"
            return self._upload_put(route)
        if path == "/drive/v3/about" and method == "GET":
            self._fault("metadata")
            return self._about()
        if path == "/drive/v3/files/generateIds" and method in ("GET", "POST"):
            self._fault("metadata")
            self._principal()
            count = int(self.query.get("count", "10"))
            return self._json(200, {"kind": "drive#generatedIds", "ids": [_new_id() for _ in range(count)]})
        if path == "/drive/v3/files":
            if method == "GET":
                self._fault("list")
                return self._list()
            self._fault("metadata")
            if method == "POST":
                return self._create()
        match = re.fullmatch(r"/drive/v3/files/([\w\-]+)", path)
        if match:
            file_id = match.group(1)
            if method == "GET" and self.query.get("alt") == "media":
                fault = self._fault("download")
                return self._download(file_id, fault)
            if method == "DELETE":
                self._fault("delete")
                return self._delete(file_id)
            self._fault("metadata")
            if method == "GET":
                return self._get(file_id)
            if method == "PATCH":
                return self._patch(file_id)
        raise ApiError(404, "notFound", f"Not Found: {method} {path}")

    def _token(self) -> None:
        self.state.requests["token"] += 1
        form = {k: v[-1] for k, v in parse_qs(self._read(self._body_left).decode()).items()}
        fault = self.state.take_fault("token")
        if fault is not None:
            error = fault.error or "invalid_grant"
            descriptions = {
                "unauthorized_client": "Client is unauthorized to retrieve access tokens using this method, or "
                "client not authorized for any of the scopes requested.",
                "invalid_grant": "Token has been expired or revoked.",
            }
            return self._json(
                fault.status, {"error": error, "error_description": descriptions.get(error, error)}
            )
        grant = form.get("grant_type", "")
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            try:
                payload_b64 = form["assertion"].split(".")[1]
                claims = json.loads(base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4)))
            except (KeyError, IndexError, ValueError):
                return self._json(400, {"error": "invalid_grant", "error_description": "Invalid JWT"})
            issuer = str(claims.get("iss", ""))
            subject = claims.get("sub")
            if subject and issuer in self.state.unauthorized_delegation:
                return self._json(
                    401,
                    {
                        "error": "unauthorized_client",
                        "error_description": "Client is unauthorized to retrieve access tokens using this method, "
                        "or client not authorized for any of the scopes requested.",
                    },
                )
            principal = Principal(email=str(subject or issuer), service_account=not subject)
        elif grant == "refresh_token":
            refresh = form.get("refresh_token", "")
            if not refresh or refresh in self.state.revoked_refresh_tokens:
                return self._json(
                    400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
                )
            principal = Principal(
                email=f"user-{hashlib.sha256(refresh.encode()).hexdigest()[:8]}@example.com",
                service_account=False,
            )
        else:
            return self._json(
                400, {"error": "unsupported_grant_type", "error_description": f"Invalid grant_type: {grant}"}
            )
        token = "ya29.test-" + secrets.token_urlsafe(24)
        with self.state.lock:
            self.state.tokens[token] = (principal, time.time() + self.state.token_lifetime)
            self.state.stats["tokens_issued"] += 1
        self._json(
            200, {"access_token": token, "expires_in": int(self.state.token_lifetime), "token_type": "Bearer"}
        )

    def _about(self) -> None:
        principal = self._principal()
        with self.state.lock:
            usage = sum(
                f.size for f in self.state.files.values() if f.owner == principal.email and not f.drive_id
            )
            limit = 0 if principal.service_account else self.state.storage_limit
        quota: dict[str, str] = {"usage": str(usage), "usageInDrive": str(usage)}
        if limit is not None:
            quota["limit"] = str(limit)
        about = {"kind": "drive#about", "user": {"emailAddress": principal.email}, "storageQuota": quota}
        self._json(200, project(about, parse_fields(self.query.get("fields", "storageQuota,user"))))

    def _resolve_parents(
        self, principal: Principal, parents: list[str] | None
    ) -> tuple[list[str], str | None]:
        parents = parents or ["root"]
        with self.state.lock:
            for parent in parents:
                if (
                    parent != "root"
                    and parent not in self.state.files
                    and parent not in self.state.shared_drives
                ):
                    raise ApiError(404, "notFound", f"File not found: {parent}.")
            drive_id = self.state.drive_of(parents[0])
            if drive_id:
                if self.query.get("supportsAllDrives") != "true":
                    raise ApiError(404, "notFound", f"File not found: {parents[0]}.")
                if self.state.role(principal, drive_id) not in ("organizer", "fileOrganizer", "writer"):
                    raise ApiError(404, "notFound", f"Shared drive not found: {drive_id}")
        return parents, drive_id

    def _create_record(
        self, principal: Principal, meta: dict[str, Any], drive_id: str | None, parents: list[str]
    ) -> FileRecord:
        return FileRecord(
            id=str(meta.get("id") or _new_id()),
            name=str(meta.get("name") or "Untitled"),
            mime_type=str(meta.get("mimeType") or "application/octet-stream"),
            parents=parents,
            app_properties={str(k): str(v) for k, v in (meta.get("appProperties") or {}).items()},
            owner=principal.email,
            drive_id=drive_id,
            created=now_rfc3339(),
        )

    def _check_storage(self, principal: Principal, drive_id: str | None, incoming: int | None) -> None:
        if drive_id is None and principal.service_account:
            raise ApiError(403, "storageQuotaExceeded", PRESETS["storage_quota"]["message"])
        if drive_id is None and self.state.storage_limit is not None and incoming:
            with self.state.lock:
                usage = sum(
                    f.size for f in self.state.files.values() if f.owner == principal.email and not f.drive_id
                )
            if usage + incoming > self.state.storage_limit:
                raise ApiError(403, "storageQuotaExceeded", PRESETS["storage_full"]["message"])

    def _validate_properties(self, props: dict[str, Any]) -> None:
        if len(props) > 30:
            raise ApiError(400, "invalid", "The limit of 30 appProperties per file was exceeded.")
        for key, value in props.items():
            if len(str(key).encode()) + len(str(value).encode()) > 124:
                raise ApiError(400, "invalid", f"The property {key} exceeds the maximum size of 124 bytes.")

    def _create(self) -> None:
        principal = self._principal()
        meta = self._json_body()
        self._validate_properties(meta.get("appProperties") or {})
        parents, drive_id = self._resolve_parents(principal, meta.get("parents"))
        record = self._create_record(principal, meta, drive_id, parents)
        with self.state.lock:
            if record.id in self.state.files:
                raise ApiError(409, "duplicate", "A file already exists with the provided ID.")
            self.state.files[record.id] = record
        self._json(200, self._file_json(record))

    def _file_json(self, record: FileRecord) -> Any:
        return project(record.resource(), parse_fields(self.query.get("fields", "kind,id,name,mimeType")))

    def _visible(self, principal: Principal, record: FileRecord) -> bool:
        if record.drive_id:
            return (
                self.query.get("supportsAllDrives") == "true"
                and self.state.role(principal, record.drive_id) is not None
            )
        return True

    def _lookup(self, principal: Principal, file_id: str) -> FileRecord:
        with self.state.lock:
            record = self.state.files.get(file_id)
        if record is None or not self._visible(principal, record):
            raise ApiError(404, "notFound", f"File not found: {file_id}.")
        return record

    def _get(self, file_id: str) -> None:
        principal = self._principal()
        self._json(200, self._file_json(self._lookup(principal, file_id)))

    def _patch(self, file_id: str) -> None:
        principal = self._principal()
        record = self._lookup(principal, file_id)
        meta = self._json_body()
        with self.state.lock:
            if "name" in meta:
                record.name = str(meta["name"])
            if "trashed" in meta:
                record.trashed = bool(meta["trashed"])
            for key, value in (meta.get("appProperties") or {}).items():
                if value is None:
                    record.app_properties.pop(key, None)
                else:
                    record.app_properties[key] = str(value)
            self._validate_properties(record.app_properties)
        self._json(200, self._file_json(record))

    def _delete(self, file_id: str) -> None:
        principal = self._principal()
        record = self._lookup(principal, file_id)
        if record.drive_id and self.state.role(principal, record.drive_id) != "organizer":
            raise ApiError(
                403,
                "insufficientFilePermissions",
                "The user does not have sufficient permissions for this file.",
            )
        with self.state.lock:
            doomed = [record.id]
            i = 0
            while i < len(doomed):  # a folder's delete takes its descendants
                doomed += [f.id for f in self.state.files.values() if doomed[i] in f.parents]
                i += 1
            for gone in doomed:
                removed = self.state.files.pop(gone, None)
                if removed and removed.blob:
                    removed.blob.unlink(missing_ok=True)
        self._send(204)

    def _list(self) -> None:
        principal = self._principal()
        terms = parse_query(self.query.get("q", ""))
        page_size = int(self.query.get("pageSize", "100"))
        if not 1 <= page_size <= 1000:
            raise ApiError(400, "invalid", "Invalid Value: pageSize must be 1..1000")
        corpora = self.query.get("corpora", "user")
        drive_id = self.query.get("driveId")
        if corpora == "drive":
            if (
                not drive_id
                or self.query.get("includeItemsFromAllDrives") != "true"
                or self.query.get("supportsAllDrives") != "true"
            ):
                raise ApiError(
                    400,
                    "invalid",
                    "The includeItemsFromAllDrives and supportsAllDrives parameters must be true when corpora is drive.",
                )
            if drive_id not in self.state.shared_drives or self.state.role(principal, drive_id) is None:
                raise ApiError(404, "notFound", f"Shared drive not found: {drive_id}")
        with self.state.lock:
            candidates = [
                f
                for f in self.state.files.values()
                if (
                    f.drive_id == drive_id
                    if corpora == "drive"
                    else (f.drive_id is None or self.query.get("includeItemsFromAllDrives") == "true")
                )
                and self._visible(principal, f)
                and query_matches(f, terms)
            ]
        order = self.query.get("orderBy", "")
        key = "name" if order.startswith("name") else "created"
        candidates.sort(key=lambda f: (getattr(f, key), f.id), reverse=order.endswith(" desc"))
        start = (
            int(base64.urlsafe_b64decode(self.query["pageToken"]).decode())
            if self.query.get("pageToken")
            else 0
        )
        if self.state.list_page_limit is not None:
            page_size = min(page_size, self.state.list_page_limit)  # Drive may return partial pages
        page = candidates[start : start + page_size]
        self.state.stats["list_pages"] += 1
        result: dict[str, Any] = {
            "kind": "drive#fileList",
            "incompleteSearch": False,
            "files": [f.resource() for f in page],
        }
        if start + page_size < len(candidates):
            result["nextPageToken"] = base64.urlsafe_b64encode(str(start + page_size).encode()).decode()
        fields = parse_fields(
            self.query.get("fields", "kind,incompleteSearch,nextPageToken,files(kind,id,name,mimeType)")
        )
        self._json(200, project(result, fields))

    def _download(self, file_id: str, fault: Fault | None) -> None:
        principal = self._principal()
        record = self._lookup(principal, file_id)
        if record.mime_type == FOLDER_MIME or record.blob is None:
            raise ApiError(403, "fileNotDownloadable", "Only files with binary content can be downloaded.")
        size = record.size
        start, end = 0, size - 1
        status = 200
        header = self.headers.get("Range")
        if header:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", header.strip())
            if not match:
                raise ApiError(400, "badRange", "Invalid Range header")
            start = int(match.group(1))
            end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            if start >= size or end < start:
                return self._send(416, b"", {"Content-Range": f"bytes */{size}"})
            status = 206
        length = max(0, end - start + 1)
        self.send_response(status)
        self.send_header("Content-Type", record.mime_type)
        self.send_header("Content-Length", str(length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        cut_at = (
            (fault.after_bytes if fault.after_bytes is not None else length // 2)
            if fault and fault.action == "cut"
            else None
        )
        sent = 0
        with open(record.blob, "rb") as blob:
            blob.seek(start)
            while sent < length:
                n = min(1 << 20, length - sent)
                if cut_at is not None:
                    n = min(n, cut_at - sent)
                    if n <= 0:
                        self.wfile.flush()
                        raise _Cut
                data = blob.read(n)
                self.wfile.write(data)
                sent += len(data)
        self.state.stats["download_bytes_sent"] += sent

    # -- uploads --

    def _upload_start(self) -> None:
        principal = self._principal()
        upload_type = self.query.get("uploadType", "media")
        if upload_type == "resumable":
            meta = self._json_body()
            self._validate_properties(meta.get("appProperties") or {})
            parents, drive_id = self._resolve_parents(principal, meta.get("parents"))
            length = self.headers.get("X-Upload-Content-Length")
            self._check_storage(principal, drive_id, int(length) if length else None)
            upload_id = secrets.token_urlsafe(18)
            session = UploadSession(
                id=upload_id,
                metadata=dict(meta, parents=parents),
                owner=principal,
                drive_id=drive_id,
                fields=self.query.get("fields"),
                path=self.state.data_dir / "blobs" / f"upload-{upload_id}",
            )
            session.path.touch()
            with self.state.lock:
                self.state.sessions[upload_id] = session
                self.state.stats["sessions_started"] += 1
            location = f"{self._base_url()}/upload/drive/v3/files?uploadType=resumable&upload_id={upload_id}"
            return self._send(200, b"", {"Location": location, "X-GUploader-UploadID": upload_id})
        if upload_type == "media":
            parents, drive_id = self._resolve_parents(principal, None)
            self._check_storage(principal, drive_id, self._body_left)
            record = self._create_record(principal, {}, drive_id, parents)
            self._store_blob(record, self._body_chunks(self._body_left))
        elif upload_type == "multipart":
            if self._body_left > MULTIPART_LIMIT:
                raise ApiError(
                    413, "uploadTooLarge", "Multipart uploads are limited to 5 MB; use a resumable upload."
                )
            meta, media = _parse_multipart(self.headers.get("Content-Type", ""), self._read(self._body_left))
            self._validate_properties(meta.get("appProperties") or {})
            parents, drive_id = self._resolve_parents(principal, meta.get("parents"))
            self._check_storage(principal, drive_id, len(media))
            record = self._create_record(principal, meta, drive_id, parents)
            self._store_blob(record, iter([media]))
        else:
            raise ApiError(400, "invalid", f"Invalid uploadType {upload_type}")
        self._json(200, self._file_json(record))

    def _body_chunks(self, n: int) -> Any:
        while n > 0:
            data = self._read(min(n, 1 << 20))
            n -= len(data)
            yield data

    def _store_blob(self, record: FileRecord, chunks: Any) -> None:
        path = self.state.data_dir / "blobs" / record.id
        md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
        size = 0
        with open(path, "wb") as out:
            for data in chunks:
                md5.update(data)
                sha.update(data)
                out.write(data)
                size += len(data)
        record.size, record.md5, record.sha256, record.blob = size, md5.hexdigest(), sha.hexdigest(), path
        with self.state.lock:
            self.state.files[record.id] = record

    def _upload_put(self, route: str) -> None:
        upload_id = self.query.get("upload_id", "")
        with self.state.lock:
            session = self.state.sessions.get(upload_id)
        fault = self._fault(route)
        if session is None:
            raise ApiError(404, "notFound", "The upload session was not found or has expired.")
        if fault is not None and fault.action == "session_gone":
            with self.state.lock:
                self.state.sessions.pop(upload_id, None)
            session.path.unlink(missing_ok=True)
            raise ApiError(
                fault.status, "notFound" if fault.status == 404 else "gone", "The upload session has expired."
            )
        header = self.headers.get("Content-Range", "")
        status_query = re.fullmatch(r"bytes \*/(\d+|\*)", header)
        chunk = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", header)
        if not (status_query or chunk):
            raise ApiError(400, "badContentRange", f"Invalid Content-Range {header!r}")
        with session.lock:
            if session.done is not None:
                return self._json(200, self._session_json(session, session.done))
            if status_query:
                self.state.stats["status_queries"] += 1
                total = status_query.group(1)
                if total == "*":
                    self.state.stats["status_queries_unknown_total"] += 1
                if self._body_left:
                    raise ApiError(400, "badContentRange", "A status query has no body")
                if total != "*" and int(total) == session.received:
                    return self._finish(session)
                return self._incomplete(session)
            assert chunk is not None
            first, last, total_text = int(chunk.group(1)), int(chunk.group(2)), chunk.group(3)
            total = None if total_text == "*" else int(total_text)
            length = last - first + 1
            if length != self._body_left or length <= 0:
                raise ApiError(400, "badContentRange", "Content-Range does not match Content-Length")
            if first > session.received:
                raise ApiError(
                    400,
                    "badContentRange",
                    f"Chunk starts at {first} but only {session.received} bytes were received",
                )
            is_final = total is not None and last + 1 == total
            if not is_final and length % UNIT:
                raise ApiError(
                    400,
                    "invalid",
                    "Invalid request. The chunk size must be a multiple of 256 KiB except for the final chunk.",
                )
            if total is not None and last + 1 > total:
                raise ApiError(400, "badContentRange", "Chunk ends after the declared total")
            self._receive_chunk(session, first, length, fault)
            if total is not None and session.received == total:
                return self._finish(session)
            return self._incomplete(session)

    def _receive_chunk(self, session: UploadSession, first: int, length: int, fault: Fault | None) -> None:
        """Read the body; commit bytes to disk + hashes in 256 KiB units (all of them once the body is complete)."""
        stats = self.state.stats
        skip = session.received - first  # bytes of this chunk the server already holds
        cut_at = None
        keep = None
        if fault is not None and fault.action == "cut":
            cut_at = fault.after_bytes if fault.after_bytes is not None else length // 2
        if fault is not None and fault.action == "short":
            keep = fault.keep_bytes if fault.keep_bytes is not None else (length // 2) // UNIT * UNIT
        pending = bytearray()
        read = 0
        kept = 0
        with open(session.path, "ab") as out:
            while read < length:
                want = min(UNIT, length - read)
                if cut_at is not None:
                    want = min(want, cut_at - read)
                    if want <= 0:
                        stats["upload_bytes_received"] += read
                        raise _Cut  # whatever was pending is lost, like a real dropped request
                data = self._read(want)
                read += len(data)
                if skip > 0:
                    dropped = min(skip, len(data))
                    data, skip = data[dropped:], skip - dropped
                if keep is not None:
                    data = data[: max(0, keep - kept)]
                    kept += len(data)
                pending += data
                if len(pending) >= UNIT and read < length:
                    self._commit(session, out, bytes(pending))
                    pending.clear()
            self._commit(session, out, bytes(pending))
        stats["upload_bytes_received"] += read
        stats["upload_chunks"] += 1

    def _commit(self, session: UploadSession, out: Any, data: bytes) -> None:
        if not data:
            return
        out.write(data)
        session.md5.update(data)
        session.sha256.update(data)
        session.received += len(data)
        self.state.stats["upload_bytes_committed"] += len(data)

    def _incomplete(self, session: UploadSession) -> None:
        headers = {"X-GUploader-UploadID": session.id}
        if session.received:
            headers["Range"] = f"bytes=0-{session.received - 1}"
        self._send(308, b"", headers)  # never a Location on a 308

    def _finish(self, session: UploadSession) -> None:
        principal = session.owner
        self._check_storage(principal, session.drive_id, session.received)
        record = self._create_record(
            principal, session.metadata, session.drive_id, session.metadata["parents"]
        )
        final_path = self.state.data_dir / "blobs" / record.id
        os.replace(session.path, final_path)
        record.size, record.md5, record.sha256, record.blob = (
            session.received,
            session.md5.hexdigest(),
            session.sha256.hexdigest(),
            final_path,
        )
        with self.state.lock:
            self.state.files[record.id] = record
            self.state.stats["uploads_completed"] += 1
        session.done = record
        self._json(200, self._session_json(session, record))

    def _session_json(self, session: UploadSession, record: FileRecord) -> Any:
        return project(record.resource(), parse_fields(session.fields or "kind,id,name,mimeType"))

    # -- control --

    def _control(self, path: str) -> None:
        state = self.state
        name = path.removeprefix("/_control/")
        if name == "reset" and self.command == "POST":
            state.reset()
            return self._json(200, {"ok": True})
        if name == "stats":
            with state.lock:
                stats = dict(state.stats)
                stats["requests"] = dict(state.requests)
                stats["open_sessions"] = sum(1 for s in state.sessions.values() if s.done is None)
            return self._json(200, stats)
        if name == "files":
            with state.lock:
                files = [dict(f.resource(), owner=f.owner) for f in state.files.values()]
            return self._json(200, {"files": files})
        if name == "faults" and self.command == "DELETE":
            with state.lock:
                state.faults.clear()
            return self._json(200, {"ok": True})
        body = self._json_body()
        if name == "faults":
            spec = dict(PRESETS.get(str(body.get("preset")), {}))
            if body.get("preset") and not spec:
                raise ApiError(
                    400, "invalid", f"unknown preset {body.get('preset')}; known: {', '.join(PRESETS)}"
                )
            spec.update({k: v for k, v in body.items() if k != "preset"})
            try:
                fault = Fault(**spec)
            except TypeError as exc:
                raise ApiError(400, "invalid", str(exc)) from None
            with state.lock:
                state.faults.append(fault)
            return self._json(200, {"ok": True, "fault": fault.__dict__})
        if name == "expire_tokens":
            with state.lock:
                state.tokens = {t: (p, 0.0) for t, (p, _) in state.tokens.items()}
            return self._json(200, {"ok": True})
        if name == "shared_drives":
            with state.lock:
                state.shared_drives[str(body["id"])] = {
                    "name": body.get("name", body["id"]),
                    "members": dict(body.get("members", {})),
                }
            return self._json(200, {"ok": True})
        if name == "config":
            with state.lock:
                if "storage_limit" in body:
                    state.storage_limit = body["storage_limit"]
                if "token_lifetime" in body:
                    state.token_lifetime = float(body["token_lifetime"])
                if "list_page_limit" in body:
                    state.list_page_limit = body["list_page_limit"]
                state.revoked_refresh_tokens.update(body.get("revoked_refresh_tokens", []))
                state.unauthorized_delegation.update(body.get("unauthorized_delegation", []))
            return self._json(200, {"ok": True})
        raise ApiError(404, "notFound", f"unknown control endpoint {path}")


class _Handled(Exception):
    """A reply was already sent (e.g. an HTML error page)."""


def _new_id() -> str:
    return (
        "1"
        + base64.urlsafe_b64encode(uuid.uuid4().bytes + os.urandom(8))
        .decode()
        .rstrip("=")
        .replace("-", "A")
        .replace("_", "B")[:32]
    )


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, Any], bytes]:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise ApiError(400, "badContent", "multipart upload without a boundary")
    boundary = b"--" + match.group(1).encode()
    parts = [p for p in body.split(boundary) if p.strip() not in (b"", b"--")]
    if len(parts) < 2:
        raise ApiError(400, "badContent", "multipart upload needs metadata and media parts")

    def payload(part: bytes) -> bytes:
        _head, _, data = part.partition(b"\r\n\r\n")
        return data.removesuffix(b"\r\n")

    try:
        meta = json.loads(payload(parts[0]) or b"{}")
    except ValueError:
        raise ApiError(400, "parseError", "metadata part is not JSON") from None
    return meta, payload(parts[1])


class DriveServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int, data_dir: Path):
        self.state = DriveState(data_dir)
        super().__init__((host, port), DriveHandler)


def serve(host: str, port: int, data_dir: Path, shared_drives: list[str] | None = None) -> None:
    server = DriveServer(host, port, data_dir)
    for drive_id in shared_drives or []:
        server.state.shared_drives[drive_id] = {"name": drive_id, "members": {"*": "organizer"}}
    print(f"Drive v3 test server on http://{host}:{server.server_port}/ (data in {data_dir})", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
