"""A faithful-enough Google Drive v3 server for tests and demos (HTTP, threaded, streams to disk).

Implements what the product uses and what Google documents (see
``/work/shared/design/google-drive.md`` §6): ``POST /token`` (JWT bearer and refresh-token
grants), ``GET /drive/v3/about``, ``GET/POST /drive/v3/files``, ``GET/PATCH/DELETE
/drive/v3/files/{id}`` (``alt=media`` with ranges), ``POST /drive/v3/files/generateIds``,
``POST /upload/drive/v3/files`` (media, multipart, resumable) and ``PUT`` on session URIs
with Drive's 308 semantics; ``fields``, ``q``, ``pageSize``/``pageToken``, shared drives
with member roles, service accounts without storage.

The package: ``state`` (presets, faults, files, sessions, the shared state), ``query``
(``fields=``, ``q=``, multipart bodies), ``uploads`` (the upload routes), ``server`` (this
module: plumbing, metadata routes, downloads, the control API).

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
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .query import parse_fields, parse_query, project, query_matches
from .state import (
    FOLDER_MIME,
    MULTIPART_LIMIT,
    PRESETS,
    ApiError,
    Cut,
    DriveState,
    Fault,
    FileRecord,
    Handled,
    Principal,
    new_id,
    now_rfc3339,
)
from .uploads import UploadRoutes

__all__ = ["PRESETS", "DriveHandler", "DriveServer", "serve"]


# --- the handler -----------------------------------------------------------------------------


class DriveHandler(UploadRoutes, BaseHTTPRequestHandler):
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
        except Cut:
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
            raise Handled
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
        with contextlib.suppress(Handled):
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
            return self._json(200, {"kind": "drive#generatedIds", "ids": [new_id() for _ in range(count)]})
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
            id=str(meta.get("id") or new_id()),
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
                        raise Cut
                data = blob.read(n)
                self.wfile.write(data)
                sent += len(data)
        self.state.stats["download_bytes_sent"] += sent

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
