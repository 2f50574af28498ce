"""``GoogleDriveDestination``: the destination contract over Drive v3 (see the package docstring)."""

from __future__ import annotations

import contextlib
import http.client
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import requests

from backup_pipeline.settings import DriveAuthMode

from ..base import (
    ByteStream,
    Capacity,
    CheckReport,
    ListPage,
    NotFoundError,
    PermanentError,
    RetryableError,
    RetryPolicy,
    StoredFile,
    TrashedError,
    iterate_pages,
    validate_properties,
)
from .auth import DriveCredentials
from .client import DriveClient
from .config import FILE_FIELDS, FOLDER_MARKER, FOLDER_MIME, LIST_FIELDS, DriveConfig
from .errors import DriveErrors
from .files import quoted, stored_file
from .state import UploadLedger, sweep_sessions
from .upload import ResumableUploader


class GoogleDriveDestination:
    def __init__(self, config: DriveConfig, *, retry: RetryPolicy | None = None):
        self.cfg = config
        self.retry = retry or RetryPolicy()
        self.creds = DriveCredentials(config)
        self.errors = DriveErrors(
            config,
            self.creds,
            uploaded_last_24h=lambda: self.ledger().uploaded_last_24h(),
            folder_drive=self._folder_drive,
        )
        self.client = DriveClient(config, self.creds, self.errors)
        self.uploader = ResumableUploader(
            config, self.client, self.retry, ledger=self.ledger, delete=self.delete
        )
        self._folder_lock = threading.Lock()
        self._folder_id: str | None = config.folder_id
        self._folder_checked = False
        self._swept = False

    @property
    def description(self) -> str:
        cfg = self.cfg
        if cfg.shared and cfg.shared_drive_id:
            where = f"shared drive {cfg.shared_drive_id}"
        elif cfg.shared:
            where = "a shared drive, none configured: set BACKUP_PIPELINE_DRIVE_SHARED_DRIVE_ID"
        elif cfg.auth_mode is DriveAuthMode.DELEGATION and cfg.subject:
            where = f"My Drive of {cfg.subject}"
        elif cfg.auth_mode is DriveAuthMode.DELEGATION:
            # The validated settings refuse this for the backup destination; the migration's
            # legacy Drive is built whatever the destination is.
            where = "delegation without a user to act as: set BACKUP_PIPELINE_DRIVE_SUBJECT"
        else:
            where = "My Drive of the OAuth user"
        return f"Google Drive ({where})"

    def principal(self) -> str:
        return self.creds.principal()

    # --- state_dir ----------------------------------------------------------------------------

    def ledger(self) -> UploadLedger:
        return UploadLedger(Path(self.cfg.state_dir), self.creds.principal())

    def sweep_upload_sessions(self) -> int:
        """Remove expired and abandoned resumable-session files (bearer capabilities); return how many."""
        self._swept = True
        try:
            return sweep_sessions(Path(self.cfg.state_dir))
        except OSError:
            return 0  # housekeeping: an unreadable state_dir fails the put that needs it, not this

    def _sweep_once(self) -> None:
        # Every backup (capacity pre-flight, first upload), retention run (listing) and check goes
        # through here, so a session file left by a crash is gone long before Drive's week is up.
        if not self._swept:
            self.sweep_upload_sessions()

    # --- folder ---------------------------------------------------------------------------

    def _drive_params(self) -> dict[str, Any]:
        return {"supportsAllDrives": True}

    def _list_params(self) -> dict[str, Any]:
        if self.cfg.shared:
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
            files = self.client.service().files()
            if self._folder_id:
                meta = self.client.execute(
                    "open the backup folder",
                    files.get(fileId=self._folder_id, fields="id,mimeType,trashed", **self._drive_params()),
                )
                if meta.get("mimeType") != FOLDER_MIME or meta.get("trashed"):
                    raise PermanentError(
                        f"BACKUP_PIPELINE_DRIVE_FOLDER_ID {self._folder_id} is not a folder (or is in the trash)"
                    )
                self._folder_checked = True
                return self._folder_id
            parent = self.cfg.shared_drive_id if self.cfg.shared else "root"
            name = self.cfg.folder_name
            q = (
                f"mimeType = '{FOLDER_MIME}' and name = '{quoted(name)}' and '{quoted(parent or 'root')}' in "
                f"parents and trashed = false and appProperties has {{ key='{FOLDER_MARKER}' and "
                f"value='{quoted(name)}' }}"
            )
            found = self.client.execute(
                "find the backup folder",
                files.list(q=q, fields="files(id,createdTime)", pageSize=10, **self._list_params()),
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
                created = self.client.execute(
                    "create the backup folder", files.create(body=body, fields="id", **self._drive_params())
                )
                self._folder_id = str(created["id"])
            self._folder_checked = True
            return self._folder_id

    def _folder_drive(self) -> str | None:
        """The shared drive the backup folder is in (``None``: a My Drive), for storage advice."""
        folder = self._folder_id
        if not folder:
            return self.cfg.shared_drive_id if self.cfg.shared else None  # the app creates it there
        meta = self.client.execute(
            "locate the backup folder",
            self.client.service().files().get(fileId=folder, fields="id,driveId", **self._drive_params()),
        )
        return meta.get("driveId")

    # --- contract: metadata ------------------------------------------------------------

    def list_page(
        self, properties: Mapping[str, str] | None = None, page_size: int = 100, page_token: str | None = None
    ) -> ListPage:
        if not 1 <= page_size <= 1000:
            raise PermanentError(f"page_size must be 1..1000 (Drive's limit), got {page_size}")
        if page_token is None:
            self._sweep_once()
        folder = self.folder_id()
        q = f"'{quoted(folder)}' in parents and trashed = false and mimeType != '{FOLDER_MIME}'"
        for key, value in (properties or {}).items():
            q += f" and appProperties has {{ key='{quoted(key)}' and value='{quoted(value)}' }}"
        params = dict(self._list_params(), q=q, fields=LIST_FIELDS, pageSize=page_size, orderBy="name")
        if page_token:
            params["pageToken"] = page_token
        page: dict[str, Any] = self.client.execute(
            "list backup files", self.client.service().files().list(**params)
        )
        return ListPage(
            [stored_file(item) for item in page.get("files", [])],
            next_token=page.get("nextPageToken") or None,
        )

    def list(self, properties: Mapping[str, str] | None = None, page_size: int = 100) -> Iterator[StoredFile]:
        return iterate_pages(self.list_page, properties, page_size)

    def stat(self, file_id: str) -> StoredFile:
        item = self.client.execute(
            f"stat {file_id}",
            self.client.service().files().get(fileId=file_id, fields=FILE_FIELDS, **self._drive_params()),
        )
        if item.get("trashed"):
            raise TrashedError(f"stat {file_id}: the file is in the trash")
        return stored_file(item)

    def delete(self, file_id: str) -> None:
        with contextlib.suppress(NotFoundError):  # already gone (a retried delete whose first attempt worked)
            self.client.execute(
                f"delete {file_id}",
                self.client.service().files().delete(fileId=file_id, **self._drive_params()),
            )

    def storage_quota(self) -> tuple[int | None, int]:
        """``(limit, usage)`` of the principal's own Drive storage; ``limit`` None when unlimited."""
        about = self.client.execute(
            "read the storage quota", self.client.service().about().get(fields="storageQuota,user")
        )
        quota = about.get("storageQuota", {})
        limit = int(quota["limit"]) if quota.get("limit") is not None else None
        return limit, int(quota.get("usage", 0))

    def capacity(self) -> Capacity | None:
        self._sweep_once()
        ledger = self.ledger()
        daily = max(0, self.cfg.daily_upload_cap_bytes - ledger.uploaded_last_24h())
        # A shared drive draws on the organisation's pooled storage, which the API does not report.
        free: int | None = None
        if not self.cfg.shared:
            limit, usage = self.storage_quota()
            free = None if limit is None else max(0, limit - usage)
        return Capacity(
            free_bytes=free,
            daily_upload_remaining=daily,
            decimal_units=True,
            daily_upload_cap=self.cfg.daily_upload_cap_bytes,
            daily_window_frees=ledger.oldest(),
            daily_window_schedule=ledger.schedule(),
            daily_download_threshold=self.cfg.daily_download_threshold_bytes,
        )

    # --- contract: download ----------------------------------------------------------------

    def get(self, file_id: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        if start < 0 or (end is not None and end < start):
            raise PermanentError(f"invalid range [{start}, {end}) for {file_id}")
        if end is not None and end == start:
            self.stat(file_id)
            return iter(())
        url = f"{self.cfg.root}drive/v3/files/{file_id}"
        headers = {"Range": f"bytes={start}-" + (str(end - 1) if end is not None else "")}
        what = f"download {file_id}"
        response = self.client.call(
            what,
            lambda: self.client.session().get(
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
            raise self.errors.http_error(what, response.status_code, content, response.headers)
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

    # --- contract: upload and check ----------------------------------------------------------

    def put(self, name: str, stream: ByteStream, properties: Mapping[str, str]) -> StoredFile:
        props = validate_properties(properties)
        self._sweep_once()
        folder = self.retry.call(self.folder_id)
        return self.uploader.put(name, folder, props, stream)

    def check(self) -> CheckReport:
        from .check import run_check

        self._sweep_once()
        return run_check(self)
