"""The Google Drive destination's settings and the protocol constants its modules share."""

from __future__ import annotations

from dataclasses import dataclass

from backup_pipeline.settings import DriveAuthMode

FOLDER_MIME = "application/vnd.google-apps.folder"
FILE_MIME = "application/octet-stream"
FOLDER_MARKER = "backupPipelineFolder"  # appProperty identifying the folder this app made
UPLOAD_GRANULARITY = 256 * 1024  # every resumable chunk but the last is a multiple of this
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024
FILE_FIELDS = "id,name,size,md5Checksum,sha256Checksum,appProperties,createdTime,mimeType,trashed"
LIST_FIELDS = f"nextPageToken,files({FILE_FIELDS})"
DAILY_CAP_BYTES = 750 * 10**9  # Google Drive: 750 GB of uploads per user per day
#: A Cloud project's Drive downloads above about 1 TB a day are throttled or billed.
DAILY_DOWNLOAD_THRESHOLD_BYTES = 10**12


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
    daily_upload_cap_bytes: int = DAILY_CAP_BYTES
    daily_download_threshold_bytes: int = DAILY_DOWNLOAD_THRESHOLD_BYTES
    state_dir: str = ".backup_pipeline_state"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    timeout: float = 120.0

    def __post_init__(self) -> None:
        if self.chunk_size <= 0 or self.chunk_size % UPLOAD_GRANULARITY:
            raise ValueError(f"chunk_size must be a positive multiple of 256 KiB, got {self.chunk_size}")

    @property
    def shared(self) -> bool:
        return self.auth_mode is DriveAuthMode.SHARED_DRIVE

    @property
    def root(self) -> str:
        """The API root with a trailing slash (``https://www.googleapis.com/`` or a test server)."""
        return self.api_root if self.api_root.endswith("/") else self.api_root + "/"
