"""Google Drive (Workspace) as a destination: resumable uploads, ranged downloads, pre-flight.

Three setups (``drive_auth_mode``):

* ``shared_drive`` — a service account that is a member of a shared drive. Every call
  sends ``supportsAllDrives``; listings use ``corpora=drive&driveId=…``.
* ``delegation`` — a service account impersonating ``subject`` (domain-wide delegation).
* ``oauth`` — an OAuth user's refresh token (authorized-user JSON).

Metadata calls go through google-api-python-client, built from the bundled discovery
document with its root URL replaced by ``api_root`` (the only way every call, media
included, honours a non-Google endpoint; see docs/shared design note §5). Uploads and
downloads use ``google.auth.transport.requests.AuthorizedSession`` directly: our own
resumable-upload loop (the client's ``num_retries`` on chunk PUTs re-sends consumed
streams) and ``stream=True`` ranged GETs. httplib2 is not thread-safe, so the service and
the HTTP session are per thread.

Upload write ordering (MUST):
1. the session URI is saved under ``state_dir/drive-upload-sessions/`` (mode 0600: a
   session URI lets anyone append to it) before the first byte is sent, and each
   chunk's end offset with the SHA-256 of the stream up to it before the chunk is sent;
2. after a drop, 5xx or 429 the server is asked where to resume (``bytes */*``) and only
   bytes from that offset are sent again — at most one chunk per interruption;
3. the final reply's ``size``, ``md5Checksum`` and ``sha256Checksum`` MUST equal what was
   read from the stream, else the file is deleted and the put fails;
4. only then is the session file removed and the upload counted in the daily ledger.

A later put of the same name into the same folder finds the saved session and resumes
it when the new stream's bytes hash to the recorded prefix (deterministic sources, e.g. a
file); a different stream (every encrypted part has a fresh salt) starts a new session.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import google.auth.exceptions
import google.auth.transport.requests
import google_auth_httplib2
import httplib2
import requests
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account
from googleapiclient import discovery, discovery_cache
from googleapiclient.errors import HttpError
from googleapiclient.http import build_http

from backup_pipeline.settings import DriveAuthMode

from .base import (
    AuthError,
    ByteStream,
    Capacity,
    CheckReport,
    DestinationError,
    Hashes,
    NotFoundError,
    PermanentError,
    QuotaError,
    RetryableError,
    RetryPolicy,
    StoredFile,
    TrashedError,
    iter_stream,
    validate_properties,
)

T = TypeVar("T")

FOLDER_MIME = "application/vnd.google-apps.folder"
FILE_MIME = "application/octet-stream"
FOLDER_MARKER = "backupPipelineFolder"  # appProperty identifying the folder this app made
UPLOAD_GRANULARITY = 256 * 1024
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024
FILE_FIELDS = "id,name,size,md5Checksum,sha256Checksum,appProperties,createdTime,mimeType,trashed"
LIST_FIELDS = f"nextPageToken,files({FILE_FIELDS})"
_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
_DAILY_CAP_MESSAGE = re.compile(r"^user rate limit exceeded\.?$|upload limit|daily limit", re.IGNORECASE)


@dataclass(frozen=True)
class DriveConfig:
    auth_mode: DriveAuthMode
    credentials_file: str | None
    shared_drive_id: str | None = None
    subject: str | None = None
    folder_id: str | None = None
    folder_name: str = "backup-pipeline"
    scope: str = "https://www.googleapis.com/auth/drive.file"
    api_root: str = "https://www.googleapis.com/"
    token_uri: str | None = None
    daily_upload_cap_bytes: int = 750 * 10**9
    state_dir: str = ".backup_pipeline_state"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    timeout: float = 120.0

    def __post_init__(self) -> None:
        if self.chunk_size <= 0 or self.chunk_size % UPLOAD_GRANULARITY:
            raise ValueError(f"chunk_size must be a positive multiple of 256 KiB, got {self.chunk_size}")


class _SessionGone(Exception):
    """The resumable session is unusable (404/410, or the server lost confirmed bytes)."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


class GoogleDriveDestination:
    def __init__(self, config: DriveConfig, *, retry: RetryPolicy | None = None):
        self.cfg = config
        self.retry = retry or RetryPolicy()
        self._local = threading.local()
        self._folder_lock = threading.Lock()
        self._folder_id: str | None = config.folder_id
        self._folder_checked = False
        self._info: dict[str, Any] | None = None

    @property
    def description(self) -> str:
        where = (
            f"shared drive {self.cfg.shared_drive_id}"
            if self.cfg.auth_mode is DriveAuthMode.SHARED_DRIVE
            else f"My Drive of {self.cfg.subject}"
            if self.cfg.auth_mode is DriveAuthMode.DELEGATION
            else "My Drive of the OAuth user"
        )
        return f"Google Drive ({where})"

    @property
    def _shared(self) -> bool:
        return self.cfg.auth_mode is DriveAuthMode.SHARED_DRIVE

    # --- credentials and clients (one per thread) ---------------------------------------

    def _key_info(self) -> dict[str, Any]:
        if self._info is None:
            path = self.cfg.credentials_file
            if not path:
                raise AuthError(
                    "no Drive credentials configured: set BACKUP_PIPELINE_DRIVE_CREDENTIALS_FILE to the path of "
                    "the service-account key or OAuth authorized-user JSON (docs/guides/GOOGLE-DRIVE-SETUP.md)"
                )
            try:
                info = json.loads(Path(path).read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise AuthError(f"Drive credentials file {path} does not exist; check the path") from None
            except (OSError, ValueError) as exc:
                # Never echo the content: it is a secret.
                raise AuthError(
                    f"Drive credentials file {path} cannot be read as JSON ({type(exc).__name__})"
                ) from None
            if not isinstance(info, dict):
                raise AuthError(f"Drive credentials file {path} is not a JSON object")
            self._info = info
        return self._info

    def _credentials(self) -> Any:
        info = dict(self._key_info())
        scopes = [self.cfg.scope]
        if self.cfg.token_uri:
            info["token_uri"] = self.cfg.token_uri
        path = self.cfg.credentials_file
        try:
            if self.cfg.auth_mode is DriveAuthMode.OAUTH:
                if info.get("type") == "service_account":
                    raise AuthError(
                        f"{path} is a service-account key but drive_auth_mode=oauth needs an OAuth "
                        "authorized-user JSON (client_id, client_secret, refresh_token); use drive_auth_mode="
                        "shared_drive or delegation for a service account"
                    )
                user = user_credentials.Credentials.from_authorized_user_info(info, scopes=scopes)  # type: ignore[no-untyped-call]
                # from_authorized_user_info always resets token_uri to Google's (google-auth 2.63).
                return user.with_token_uri(self.cfg.token_uri) if self.cfg.token_uri else user
            if info.get("type") != "service_account":
                raise AuthError(
                    f"{path} is not a service-account key (type={info.get('type')!r}); drive_auth_mode="
                    f"{self.cfg.auth_mode.value} needs one. For a user's refresh token use drive_auth_mode=oauth"
                )
            creds = service_account.Credentials.from_service_account_info(info, scopes=scopes)  # type: ignore[no-untyped-call]
            if self.cfg.auth_mode is DriveAuthMode.DELEGATION:
                creds = creds.with_subject(self.cfg.subject)
            return creds
        except (ValueError, KeyError) as exc:
            raise AuthError(f"Drive credentials file {path} is incomplete or malformed: {exc}") from None

    def _service(self) -> Any:
        service = getattr(self._local, "service", None)
        if service is None:
            doc = json.loads(discovery_cache.get_static_doc("drive", "v3") or "{}")
            root = self.cfg.api_root if self.cfg.api_root.endswith("/") else self.cfg.api_root + "/"
            doc["rootUrl"] = root
            doc["mtlsRootUrl"] = root
            doc["baseUrl"] = root + doc["servicePath"]
            http = build_http()  # plain httplib2.Http() would treat 308 as a redirect
            http.timeout = self.cfg.timeout
            authed = google_auth_httplib2.AuthorizedHttp(self._credentials(), http=http)
            service = discovery.build_from_document(doc, http=authed)
            self._local.service = service
        return service

    def _thread_credentials(self) -> Any:
        creds = getattr(self._local, "credentials", None)
        if creds is None:
            creds = self._local.credentials = self._credentials()
        return creds

    def _session(self) -> google.auth.transport.requests.AuthorizedSession:
        session = getattr(self._local, "session", None)
        if session is None:
            session = google.auth.transport.requests.AuthorizedSession(self._thread_credentials())  # type: ignore[no-untyped-call]
            self._local.session = session
        return session

    def _put_chunk(self, uri: str, body: memoryview, headers: dict[str, str]) -> requests.Response:
        """PUT one chunk with a fresh bearer token, streaming from ``body`` without copying it.

        Not through AuthorizedSession: its refresh-and-retry after a 401 would re-send a
        consumed body. A 401 here refreshes the token and is retried by the caller's loop,
        which first asks Drive where to resume.
        """
        creds = self._thread_credentials()
        session = self._session()
        auth_request = google.auth.transport.requests.Request(session)
        headers = dict(headers)
        creds.before_request(auth_request, "PUT", uri, headers)
        response = requests.Session.request(
            session,
            "PUT",
            uri,
            data=_Body(body) if len(body) else b"",
            headers=headers,
            timeout=self.cfg.timeout,
        )
        if response.status_code == 401:
            creds.refresh(auth_request)
            raise RetryableError("the access token expired during the upload; refreshed it, resuming")
        return response

    @property
    def _root(self) -> str:
        return self.cfg.api_root if self.cfg.api_root.endswith("/") else self.cfg.api_root + "/"

    # --- error classification -----------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one API call, translating every failure into a DestinationError naming the fix."""
        try:
            return fn()
        except DestinationError:
            raise
        except HttpError as exc:
            raise self._http_error(what, exc.status_code, exc.content, exc.resp) from None
        except google.auth.exceptions.RefreshError as exc:
            raise self._refresh_error(exc) from None
        except google.auth.exceptions.TransportError as exc:
            raise RetryableError(
                f"{what}: cannot reach the Drive token endpoint ({type(exc).__name__})"
            ) from None
        except (
            OSError,
            http.client.HTTPException,
            httplib2.HttpLib2Error,
            requests.RequestException,
        ) as exc:
            raise RetryableError(
                f"{what}: network error talking to Google Drive ({type(exc).__name__})"
            ) from None

    def _http_error(
        self, what: str, status: int, content: bytes | None, headers: Any = None
    ) -> DestinationError:
        reason, message = _drive_reason(content)
        retry_after = _retry_after(headers)
        detail = (
            f"{what}: HTTP {status}" + (f" {reason}" if reason else "") + (f" ({message})" if message else "")
        )
        if status == 404:
            return NotFoundError(
                f"{detail}; the file or folder does not exist or is not visible to these credentials"
            )
        if status == 403 and reason == "storageQuotaExceeded":
            if self.cfg.auth_mode is not DriveAuthMode.OAUTH and not self.cfg.subject and not self._shared:
                return QuotaError(
                    f"{detail}. Service accounts have no Drive storage of their own: put the backups in a shared "
                    f"drive the service account {self._principal()} is a member of (drive_auth_mode=shared_drive, "
                    "BACKUP_PIPELINE_DRIVE_SHARED_DRIVE_ID), or use domain-wide delegation or an OAuth user"
                )
            if self._shared:
                return QuotaError(
                    f"{detail}. Writes outside the shared drive are billed to the service account {self._principal()}, "
                    "which has no storage: BACKUP_PIPELINE_DRIVE_FOLDER_ID must be a folder inside shared drive "
                    f"{self.cfg.shared_drive_id} (or leave it empty), and the service account a member of it"
                )
            return QuotaError(
                f"{detail}. The Drive storage of {self._principal()} is full: free space or buy storage"
            )
        if status in (403, 429) and reason in (
            "userRateLimitExceeded",
            "rateLimitExceeded",
            "uploadLimitExceeded",
        ):
            if reason == "uploadLimitExceeded" or _DAILY_CAP_MESSAGE.search(message or ""):
                return QuotaError(
                    f"{detail}. Google Drive's daily upload cap (750 GB per user per day) is reached for "
                    f"{self._principal()}; uploads can continue after the 24-hour window resets. Split large "
                    "backups or reduce what is backed up"
                )
            return RetryableError(
                f"{detail}; Drive is throttling requests, retrying with backoff", retry_after=retry_after
            )
        if status in _RETRYABLE_STATUS:
            return RetryableError(
                f"{detail}; a transient Drive error, retrying with backoff", retry_after=retry_after
            )
        if status == 401:
            return AuthError(
                f"{detail}; Drive rejected the access token even after refreshing it — check the credentials "
                f"file and that the scope {self.cfg.scope} is granted"
            )
        if status == 403 and reason in (
            "insufficientFilePermissions",
            "insufficientPermissions",
            "forbidden",
        ):
            if self._shared and what.startswith("delete"):
                return PermanentError(
                    f"{detail}. Permanent delete in a shared drive needs the Manager (organizer) role; the service "
                    f"account {self._principal()} has a lower role (e.g. Content manager can only trash). In the "
                    f"shared drive's 'Manage members', make it a Manager, or retention cannot remove old backups"
                )
            return PermanentError(
                f"{detail}. The credentials may not access this item: with scope drive.file the app sees only "
                "files it created — for a folder made by a person, set BACKUP_PIPELINE_DRIVE_SCOPE="
                "https://www.googleapis.com/auth/drive or let the app create its own folder"
            )
        if status == 403 and reason in ("teamDriveMembershipRequired", "notFound"):
            return PermanentError(
                f"{detail}. The service account {self._principal()} is not a member of shared drive "
                f"{self.cfg.shared_drive_id}: add it (Manager role) in the shared drive's 'Manage members'"
            )
        return PermanentError(detail)

    def _refresh_error(self, exc: google.auth.exceptions.RefreshError) -> DestinationError:
        text = str(exc.args[0]) if exc.args else str(exc)
        client_id = self._key_info().get("client_id", "?")
        if "unauthorized_client" in text:
            return AuthError(
                "Google refused the token (unauthorized_client): the Workspace admin has not authorised "
                f"domain-wide delegation for this service account. Admin console → Security → Access and data "
                f"control → API controls → Manage domain-wide delegation → Add new: client ID {client_id}, "
                f"OAuth scopes {self.cfg.scope}"
            )
        if "invalid_grant" in text:
            if self.cfg.auth_mode is DriveAuthMode.OAUTH:
                return AuthError(
                    "Google refused the OAuth refresh token (invalid_grant): it was revoked or has expired. "
                    "Refresh tokens of an OAuth app left in 'Testing' publishing status expire after 7 days — "
                    "publish the app ('In production') and create a new token (docs/guides/GOOGLE-DRIVE-SETUP.md)"
                )
            return AuthError(
                "Google refused the service-account assertion (invalid_grant): the key may be deleted or disabled, "
                f"the subject {self.cfg.subject or '(none)'} may not exist, or the clock is wrong"
            )
        if "invalid_client" in text:
            return AuthError(
                "Google refused the client credentials (invalid_client): the key or OAuth client was deleted; "
                "create new credentials"
            )
        if getattr(exc, "retryable", False):
            return RetryableError("the Drive token endpoint failed temporarily; retrying")
        return AuthError(f"Google refused the Drive credentials: {text.split(':')[0]}")

    def _principal(self) -> str:
        try:
            info = self._key_info()
        except AuthError:
            return "(unknown)"
        if self.cfg.auth_mode is DriveAuthMode.DELEGATION and self.cfg.subject:
            return f"{self.cfg.subject} (via {info.get('client_email', '?')})"
        return str(info.get("client_email") or "the OAuth user")

    # --- folder ---------------------------------------------------------------------------

    def _drive_params(self) -> dict[str, Any]:
        return {"supportsAllDrives": True}

    def _list_params(self) -> dict[str, Any]:
        if self._shared:
            return {
                "supportsAllDrives": True,
                "includeItemsFromAllDrives": True,
                "corpora": "drive",
                "driveId": self.cfg.shared_drive_id,
            }
        return {"supportsAllDrives": True, "corpora": "user"}

    def folder_id(self) -> str:
        """The backup folder's id: the configured one (checked once) or one this app created."""
        with self._folder_lock:
            if self._folder_id and self._folder_checked:
                return self._folder_id
            if self._folder_id:
                meta = self._call(
                    "open the backup folder",
                    lambda: (
                        self._service()
                        .files()
                        .get(fileId=self._folder_id, fields="id,mimeType,trashed", **self._drive_params())
                        .execute(num_retries=0)
                    ),
                )
                if meta.get("mimeType") != FOLDER_MIME or meta.get("trashed"):
                    raise PermanentError(
                        f"BACKUP_PIPELINE_DRIVE_FOLDER_ID {self._folder_id} is not a folder (or is in the trash)"
                    )
                self._folder_checked = True
                return self._folder_id
            parent = self.cfg.shared_drive_id if self._shared else "root"
            name = self.cfg.folder_name
            q = (
                f"mimeType = '{FOLDER_MIME}' and name = '{_q(name)}' and '{_q(parent or 'root')}' in parents and "
                f"trashed = false and appProperties has {{ key='{FOLDER_MARKER}' and value='{_q(name)}' }}"
            )
            found = self._call(
                "find the backup folder",
                lambda: (
                    self._service()
                    .files()
                    .list(q=q, fields="files(id,createdTime)", pageSize=10, **self._list_params())
                    .execute(num_retries=0)
                ),
            ).get("files", [])
            if found:
                found.sort(key=lambda f: f.get("createdTime", ""))
                self._folder_id = str(found[0]["id"])
            else:
                body = {
                    "name": name,
                    "mimeType": FOLDER_MIME,
                    "parents": [parent],
                    "appProperties": {FOLDER_MARKER: name},
                }
                created = self._call(
                    "create the backup folder",
                    lambda: (
                        self._service()
                        .files()
                        .create(body=body, fields="id", **self._drive_params())
                        .execute(num_retries=0)
                    ),
                )
                self._folder_id = str(created["id"])
            self._folder_checked = True
            return self._folder_id

    # --- contract: metadata ------------------------------------------------------------

    def list(self, properties: Mapping[str, str] | None = None, page_size: int = 100) -> Iterator[StoredFile]:
        if not 1 <= page_size <= 1000:
            raise PermanentError(f"page_size must be 1..1000 (Drive's limit), got {page_size}")
        folder = self.folder_id()
        q = f"'{_q(folder)}' in parents and trashed = false and mimeType != '{FOLDER_MIME}'"
        for key, value in (properties or {}).items():
            q += f" and appProperties has {{ key='{_q(key)}' and value='{_q(value)}' }}"

        def pages() -> Iterator[StoredFile]:
            token: str | None = None
            while True:
                params = dict(
                    self._list_params(), q=q, fields=LIST_FIELDS, pageSize=page_size, orderBy="name"
                )
                if token:
                    params["pageToken"] = token
                request = self._service().files().list(**params)
                page: dict[str, Any] = self._call(
                    "list backup files", partial(request.execute, num_retries=0)
                )
                for item in page.get("files", []):
                    yield _stored(item)
                token = page.get("nextPageToken")
                if not token:
                    return

        return pages()

    def stat(self, file_id: str) -> StoredFile:
        item = self._call(
            f"stat {file_id}",
            lambda: (
                self._service()
                .files()
                .get(fileId=file_id, fields=FILE_FIELDS, **self._drive_params())
                .execute(num_retries=0)
            ),
        )
        if item.get("trashed"):
            raise TrashedError(f"stat {file_id}: the file is in the trash")
        return _stored(item)

    def delete(self, file_id: str) -> None:
        try:
            self._call(
                f"delete {file_id}",
                lambda: (
                    self._service()
                    .files()
                    .delete(fileId=file_id, **self._drive_params())
                    .execute(num_retries=0)
                ),
            )
        except NotFoundError:
            return  # already gone (e.g. a retried delete whose first attempt succeeded)

    def capacity(self) -> Capacity | None:
        daily = max(0, self.cfg.daily_upload_cap_bytes - self._ledger().uploaded_last_24h())
        if self._shared:
            # A shared drive draws on the organisation's pooled storage, which the API does not report.
            return Capacity(free_bytes=None, daily_upload_remaining=daily)
        about = self._call(
            "read the storage quota",
            lambda: self._service().about().get(fields="storageQuota,user").execute(num_retries=0),
        )
        quota = about.get("storageQuota", {})
        free = None
        if quota.get("limit") is not None:
            free = max(0, int(quota["limit"]) - int(quota.get("usage", 0)))
        return Capacity(free_bytes=free, daily_upload_remaining=daily)

    # --- contract: download ----------------------------------------------------------------

    def get(self, file_id: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        if start < 0 or (end is not None and end < start):
            raise PermanentError(f"invalid range [{start}, {end}) for {file_id}")
        if end is not None and end == start:
            self.stat(file_id)
            return iter(())
        url = f"{self._root}drive/v3/files/{file_id}"
        headers = {"Range": f"bytes={start}-" + (str(end - 1) if end is not None else "")}
        what = f"download {file_id}"
        response = self._call(
            what,
            lambda: self._session().get(
                url,
                params={"alt": "media", "supportsAllDrives": "true"},
                headers=headers,
                stream=True,
                timeout=self.cfg.timeout,
            ),
        )
        if response.status_code == 416:
            response.close()
            self.stat(file_id)  # NotFound if gone; otherwise the range starts at/after the end
            return iter(())
        if response.status_code not in (200, 206):
            content = response.content
            response.close()
            raise self._http_error(what, response.status_code, content, response.headers)
        if response.status_code == 200 and start > 0:
            response.close()
            raise PermanentError(f"{what}: the server ignored the Range header")
        expected = int(response.headers["Content-Length"]) if "Content-Length" in response.headers else None

        def body() -> Iterator[bytes]:
            delivered = 0
            try:
                for block in response.iter_content(chunk_size=1 << 20):
                    delivered += len(block)
                    yield block
            except (requests.RequestException, OSError, http.client.HTTPException) as exc:
                raise RetryableError(
                    f"{what}: the connection dropped after {start + delivered} bytes ({type(exc).__name__})"
                ) from None
            finally:
                response.close()
            if expected is not None and delivered != expected:
                raise RetryableError(f"{what}: got {delivered} of {expected} bytes")

        return body()

    # --- contract: upload ---------------------------------------------------------------------

    def put(self, name: str, stream: ByteStream, properties: Mapping[str, str]) -> StoredFile:
        props = validate_properties(properties)
        folder = self.retry.call(self.folder_id)
        store = _SessionStore(Path(self.cfg.state_dir), f"{self._principal()}\0{folder}\0{name}")
        rewind = _rewinder(stream)
        restarts = 0
        while True:
            try:
                stored = self._upload(name, folder, props, stream, store)
                break
            except _SessionGone as gone:
                store.clear()
                restarts += 1
                if rewind is None or restarts > 3:
                    raise RetryableError(
                        f"upload {name}: {gone.why}; the stream cannot be rewound, so the whole part must be "
                        "uploaded again (retry the operation). Nothing was recorded as complete"
                    ) from None
                rewind()
        store.clear()
        self._ledger().record(stored.size)
        return stored

    def _start_session(self, name: str, folder: str, props: dict[str, str]) -> str:
        url = f"{self._root}upload/drive/v3/files"
        params = {"uploadType": "resumable", "supportsAllDrives": "true", "fields": FILE_FIELDS}
        body: dict[str, Any] = {
            "name": name,
            "parents": [folder],
            "mimeType": FILE_MIME,
            "appProperties": props,
        }

        def start() -> str:
            response = self._call(
                f"start upload of {name}",
                lambda: self._session().post(
                    url,
                    params=params,
                    json=body,
                    headers={"X-Upload-Content-Type": FILE_MIME},
                    timeout=self.cfg.timeout,
                ),
            )
            if response.status_code != 200 or "Location" not in response.headers:
                raise self._http_error(
                    f"start upload of {name}", response.status_code, response.content, response.headers
                )
            return str(response.headers["Location"])

        return self.retry.call(start)

    def _upload(
        self, name: str, folder: str, props: dict[str, str], stream: ByteStream, store: _SessionStore
    ) -> StoredFile:
        chunk_size = self.cfg.chunk_size
        saved = store.load()
        uri: str | None = None
        resume_at = 0
        boundaries: dict[str, str] = {}
        if saved and saved.get("chunk_size") == chunk_size:
            try:
                offset, final = self.retry.call(self._query, saved["uri"], None, name)
            except _SessionGone:
                offset, final = 0, None
            if final is not None:
                # A previous attempt finished but never returned: an orphan that would duplicate this part.
                with contextlib.suppress(DestinationError):
                    self.delete(str(final["id"]))
            elif offset > 0 and str(offset) in saved.get("boundaries", {}):
                uri, resume_at, boundaries = saved["uri"], offset, dict(saved["boundaries"])
        if uri is None:
            store.clear()
            uri = self._start_session(name, folder, props)
            store.save({"uri": uri, "chunk_size": chunk_size, "boundaries": {}})

        hashes = Hashes()
        position = 0
        final = None
        for chunk, is_last in _chunks(iter_stream(stream, 1 << 20), chunk_size):
            hashes.update(chunk)
            chunk_end = position + len(chunk)
            if resume_at and chunk_end <= resume_at:
                recorded = boundaries.get(str(chunk_end))
                if recorded is not None and recorded != hashes.sha256.copy().hexdigest():
                    if position != 0:
                        raise RetryableError(
                            f"upload {name}: the stream differs from the interrupted upload it was resuming after "
                            f"{position} bytes; the saved session was discarded — retry the operation"
                        )
                    # A different stream (fresh encryption salt): a new session from the first chunk.
                    resume_at = 0
                    uri = self._start_session(name, folder, props)
                    boundaries = {}
                    store.save({"uri": uri, "chunk_size": chunk_size, "boundaries": boundaries})
                elif chunk_end < resume_at or not is_last:
                    position = chunk_end
                    continue
                else:  # the server holds every byte; only the final "this is the end" is missing
                    final = self._finish_chunk(uri, chunk, position, chunk_end, name, skip_to=chunk_end)
                    break
            if not is_last:
                boundaries[str(chunk_end)] = hashes.sha256.copy().hexdigest()
                store.save({"uri": uri, "chunk_size": chunk_size, "boundaries": boundaries})
            result = self._finish_chunk(uri, chunk, position, chunk_end if is_last else None, name)
            position = chunk_end
            if is_last:
                final = result
            del chunk  # let the next chunk be assembled without this one still alive
        if final is None:
            raise PermanentError(f"upload {name}: Drive did not confirm the end of the upload")
        return self._verified(name, final, hashes)

    def _finish_chunk(
        self,
        uri: str,
        chunk: memoryview,
        start: int,
        total: int | None,
        name: str,
        skip_to: int | None = None,
    ) -> dict[str, Any] | None:
        """Send ``chunk`` (stream offset ``start``) until Drive confirmed all of it.

        Returns the file metadata when this was the last chunk (``total`` known).
        """
        end = start + len(chunk)
        state = {"confirmed": skip_to if skip_to is not None else start, "unsure": False, "stalls": 0}

        def step() -> tuple[bool, dict[str, Any] | None]:
            if state["unsure"]:
                offset, final = self._query(uri, total, name)
                if final is not None:
                    return True, final
                if offset < start:
                    raise _SessionGone(
                        f"Drive kept only {offset} bytes, less than already confirmed ({start})"
                    )
                state["confirmed"], state["unsure"] = offset, False
            confirmed = int(state["confirmed"])
            body = chunk if confirmed == start else chunk[confirmed - start :]
            try:
                offset, final = self._send(uri, body, confirmed, total, name)
            except RetryableError:
                state["unsure"] = True
                raise
            if final is not None:
                return True, final
            if offset < start:
                raise _SessionGone(f"Drive kept only {offset} bytes, less than already confirmed ({start})")
            if offset <= confirmed:
                state["stalls"] += 1
                if state["stalls"] >= self.retry.attempts:
                    raise PermanentError(
                        f"upload {name}: Drive keeps refusing the bytes at offset {confirmed}"
                    )
            else:
                state["stalls"] = 0
            state["confirmed"] = offset
            return offset >= end and total is None, None

        while True:
            done, final = self.retry.call(step)
            if final is not None or done:
                return final

    def _send(
        self, uri: str, body: memoryview, offset: int, total: int | None, name: str
    ) -> tuple[int, dict[str, Any] | None]:
        total_text = "*" if total is None else str(total)
        if body:
            content_range = f"bytes {offset}-{offset + len(body) - 1}/{total_text}"
        else:
            content_range = f"bytes */{total_text}"
        response = self._call(
            f"upload {name}",
            lambda: self._put_chunk(uri, body, {"Content-Range": content_range}),
        )
        return self._upload_reply(response, name)

    def _query(self, uri: str, total: int | None, name: str) -> tuple[int, dict[str, Any] | None]:
        """Ask the session how many bytes Drive holds (``Content-Range: bytes */TOTAL``)."""
        return self._send(uri, memoryview(b""), 0, total, name)

    def _upload_reply(self, response: requests.Response, name: str) -> tuple[int, dict[str, Any] | None]:
        if response.status_code == 308:
            match = re.fullmatch(r"bytes=0-(\d+)", response.headers.get("Range", ""))
            return (int(match.group(1)) + 1 if match else 0), None
        if response.status_code in (200, 201):
            return -1, response.json()
        if response.status_code in (404, 410):
            raise _SessionGone(f"the upload session expired or was lost (HTTP {response.status_code})")
        raise self._http_error(f"upload {name}", response.status_code, response.content, response.headers)

    def _verified(self, name: str, final: dict[str, Any], sent: Hashes) -> StoredFile:
        stored = _stored(final)
        problems = []
        if stored.size != sent.size:
            problems.append(f"size {stored.size} != {sent.size} sent")
        if stored.md5 is None and stored.sha256 is None:
            problems.append("Drive reported no checksum")
        if stored.md5 is not None and stored.md5 != sent.md5.hexdigest():
            problems.append("MD5 differs")
        if stored.sha256 is not None and stored.sha256 != sent.sha256.hexdigest():
            problems.append("SHA-256 differs")
        if problems:
            with contextlib.suppress(DestinationError):
                self.delete(stored.id)
            raise RetryableError(
                f"upload {name}: Drive stored something else than was sent ({'; '.join(problems)}); the file was "
                "deleted — retry the operation"
            )
        return stored

    # --- check --------------------------------------------------------------------------------

    def check(self) -> CheckReport:
        report = CheckReport(destination=self.description)
        if self.cfg.auth_mode is DriveAuthMode.OAUTH:
            report.warnings.append(
                "OAuth refresh tokens of an app in 'Testing' publishing status expire after 7 days; publish the "
                "app ('In production') or backups stop a week after set-up"
            )
        if self.cfg.folder_id and self.cfg.scope.endswith("/drive.file"):
            report.warnings.append(
                "a folder id is configured with scope drive.file: that only works for a folder this app created; "
                "for a folder made by a person set BACKUP_PIPELINE_DRIVE_SCOPE=https://www.googleapis.com/auth/drive"
            )
        step = "credentials"
        try:
            creds = self._credentials()
            self.retry.call(
                lambda: self._call(
                    "get an access token", lambda: creds.refresh(google.auth.transport.requests.Request())
                )
            )
            report.add(step, True, f"access token issued for {self._principal()} (scope {self.cfg.scope})")
            step = "folder"
            folder = self.retry.call(self.folder_id)
            report.add(step, True, f"backup folder {folder}")
            step = "space"
            report.capacity = self.retry.call(self.capacity)
            report.add(step, True, _capacity_text(report.capacity))
            step = "write"
            payload = os.urandom(300 * 1024)  # > 256 KiB: a real (multi-request) resumable upload
            stored = self.put(f".check-{uuid.uuid4().hex}", [payload], {"purpose": "connection-check"})
            report.add(step, True, f"uploaded {stored.size} bytes, checksums match")
            step = "read back"
            back = self.retry.call(lambda: b"".join(self.get(stored.id)))
            if back != payload:
                report.add(step, False, "the downloaded bytes differ from the uploaded ones")
                report.fix = "Drive returned different bytes; check proxies between this host and Google"
                return report
            report.add(step, True, "downloaded bytes match")
            step = "delete"
            self.retry.call(self.delete, stored.id)
            report.add(step, True, "test file permanently deleted")
        except DestinationError as exc:
            report.add(step, False, str(exc))
            report.fix = str(exc)
        return report

    # --- daily upload ledger -----------------------------------------------------------------

    def _ledger(self) -> _UploadLedger:
        return _UploadLedger(Path(self.cfg.state_dir), self._principal())


# --- helpers ---------------------------------------------------------------------------------


def _q(value: str) -> str:
    """Escape a Drive query string literal."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _stored(item: Mapping[str, Any]) -> StoredFile:
    created = item.get("createdTime")
    return StoredFile(
        id=str(item["id"]),
        name=str(item.get("name", "")),
        size=int(item.get("size", 0)),
        md5=item.get("md5Checksum"),
        sha256=item.get("sha256Checksum"),
        properties=dict(item.get("appProperties") or {}),
        created=datetime.fromisoformat(created.replace("Z", "+00:00")) if created else None,
    )


def _drive_reason(content: bytes | None) -> tuple[str | None, str | None]:
    """Drive's machine reason and message; survives HTML (408) or empty (502) bodies."""
    try:
        error = json.loads(content or b"")["error"]
        errors = error.get("errors") or [{}]
        return errors[0].get("reason") or error.get("status"), str(error.get("message", ""))[:300] or None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        return None, None


def _retry_after(headers: Any) -> float | None:
    try:
        value = headers.get("Retry-After") or headers.get("retry-after") if headers is not None else None
        return float(value) if value else None
    except (TypeError, ValueError):
        return None


def _capacity_text(cap: Capacity | None) -> str:
    if cap is None:
        return "capacity unknown"
    free = "unknown (shared drive pool)" if cap.free_bytes is None else f"{cap.free_bytes / 1e9:.1f} GB free"
    daily = (
        ""
        if cap.daily_upload_remaining is None
        else f", {cap.daily_upload_remaining / 1e9:.1f} GB of today's upload cap left"
    )
    return free + daily


def _chunks(blocks: Iterator[bytes], size: int) -> Iterator[tuple[memoryview, bool]]:
    """Fixed-size chunks in ONE reused buffer, each flagged whether it is the last.

    The yielded view is valid until the next iteration (the caller sends it first). A full
    chunk is only known to be the last when the source is exhausted, so one more block is
    pulled before handing it out (an exact multiple of the chunk size must not end with an
    invalid empty chunk). Memory: one chunk plus one source block; no per-chunk allocation,
    which keeps glibc from growing the heap by a chunk per round.
    """
    source = iter(blocks)
    buffer = bytearray(size)
    view = memoryview(buffer)
    carry = memoryview(b"")
    exhausted = False
    while True:
        filled = min(len(carry), size)
        view[:filled] = carry[:filled]
        carry = carry[filled:]
        while filled < size and not exhausted:
            try:
                block = memoryview(next(source))
            except StopIteration:
                exhausted = True
                break
            take = min(len(block), size - filled)
            view[filled : filled + take] = block[:take]
            filled += take
            carry = block[take:]
        if filled == size and not carry and not exhausted:
            try:
                carry = memoryview(next(source))
            except StopIteration:
                exhausted = True
        last = exhausted and not carry
        yield view[:filled], last
        if last:
            return


class _Body:
    """A read-only file-like view of a chunk: requests streams it with a Content-Length."""

    def __init__(self, view: memoryview):
        self._view = view
        self._position = 0

    def __len__(self) -> int:
        return len(self._view) - self._position

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._position + size)
        data = bytes(self._view[self._position : end])
        self._position = end
        return data


def _rewinder(stream: ByteStream) -> Callable[[], None] | None:
    seekable = getattr(stream, "seekable", None)
    if callable(seekable) and seekable():
        start = stream.tell()  # type: ignore[union-attr]

        def rewind() -> None:
            stream.seek(start)  # type: ignore[union-attr]

        return rewind
    return None


class _SessionStore:
    """The resumable session of one (principal, folder, name), saved so a retried op can resume it."""

    def __init__(self, state_dir: Path, key: str):
        self.path = (
            state_dir / "drive-upload-sessions" / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")
        )

    def load(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and "uri" in data else None

    def save(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the URI is a bearer capability
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out)
        os.replace(tmp, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


class _UploadLedger:
    """Bytes uploaded per principal in the last 24 h, for the 750 GB/day pre-flight."""

    WINDOW = 24 * 3600

    def __init__(self, state_dir: Path, principal: str):
        self.path = state_dir / "drive-upload-ledger.json"
        self.principal = hashlib.sha256(principal.encode()).hexdigest()[:16]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, list[list[float]]]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            try:
                data = json.loads(f.read() or "{}")
            except ValueError:
                data = {}
            cutoff = time.time() - self.WINDOW
            data = {k: [e for e in v if e[0] >= cutoff] for k, v in data.items()}
            yield data
            f.seek(0)
            f.truncate()
            json.dump(data, f)

    def record(self, size: int) -> None:
        with self._locked() as data:
            data.setdefault(self.principal, []).append([time.time(), size])

    def uploaded_last_24h(self) -> int:
        with self._locked() as data:
            return int(sum(e[1] for e in data.get(self.principal, [])))
