"""The backup destination as a Dagster resource, built from validated settings.

Configuration holds only non-secret values: the destination kind, paths and ids, and the
*path* of the Drive credentials file (service-account key or OAuth authorized-user JSON).
The file's content is read when the destination is built and never enters run config,
logs or metadata.
"""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from backup_pipeline.destinations import Destination, RetryingDestination, RetryPolicy
from backup_pipeline.destinations.local_folder import LocalFolderDestination
from backup_pipeline.settings import BackupSettings, DestinationKind, DriveAuthMode

DESTINATION = "destination"  # resource key the ops ask for


class DestinationResource(ConfigurableResource):
    """Where backup parts go: a local folder or Google Drive."""

    kind: str = Field("local", description="local or google_drive")
    installation_id: str = Field("backup-pipeline", description="Names the Drive backup folder.")
    state_dir: str = Field(
        ".backup_pipeline_state", description="Upload sessions and upload ledger live here."
    )
    local_path: str = Field(".backup_pipeline_state/backups", description="Folder for kind=local.")
    drive_auth_mode: str = Field("shared_drive", description="shared_drive, delegation or oauth.")
    drive_credentials_file: str | None = Field(
        None, description="Path of the credentials JSON (never its content)."
    )
    drive_shared_drive_id: str | None = None
    drive_subject: str | None = None
    drive_folder_id: str | None = None
    drive_scope: str = "https://www.googleapis.com/auth/drive.file"
    drive_api_root: str = "https://www.googleapis.com/"
    drive_token_uri: str | None = None
    drive_daily_upload_cap_bytes: int = 750 * 10**9
    drive_chunk_size_mib: int = Field(
        default=8, description="Resumable upload chunk (MiB, 8-16 recommended)."
    )
    retry_attempts: int = Field(8, description="destination_retry_attempts (settings).")
    retry_initial_wait_seconds: float = 1.0
    retry_max_wait_seconds: float = Field(60.0, description="destination_retry_max_wait_seconds (settings).")

    @classmethod
    def from_settings(cls, settings: BackupSettings) -> DestinationResource:
        return cls(
            kind=settings.destination.value,
            installation_id=settings.installation_id,
            state_dir=str(settings.state_dir),
            local_path=str(settings.local_destination_path),
            drive_auth_mode=settings.drive_auth_mode.value,
            drive_credentials_file=str(settings.drive_credentials_file)
            if settings.drive_credentials_file
            else None,
            drive_shared_drive_id=settings.drive_shared_drive_id,
            drive_subject=settings.drive_subject,
            drive_folder_id=settings.drive_folder_id,
            drive_scope=settings.drive_scope,
            drive_api_root=settings.drive_api_root,
            drive_token_uri=settings.drive_token_uri,
            drive_daily_upload_cap_bytes=settings.drive_daily_upload_cap_bytes,
            retry_attempts=settings.destination_retry_attempts,
            retry_max_wait_seconds=settings.destination_retry_max_wait_seconds,
        )

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            attempts=self.retry_attempts,
            initial_wait=self.retry_initial_wait_seconds,
            max_wait=self.retry_max_wait_seconds,
        )

    def get_destination(self) -> Destination:
        """A destination wrapped in the retry policy. Build one per op/thread (Drive's HTTP is not thread-safe)."""
        inner: Destination
        if DestinationKind(self.kind) is DestinationKind.GOOGLE_DRIVE:
            from backup_pipeline.destinations.google_drive import DriveConfig, GoogleDriveDestination

            inner = GoogleDriveDestination(
                DriveConfig(
                    auth_mode=DriveAuthMode(self.drive_auth_mode),
                    credentials_file=self.drive_credentials_file,
                    shared_drive_id=self.drive_shared_drive_id,
                    subject=self.drive_subject,
                    folder_id=self.drive_folder_id,
                    folder_name=self.installation_id,
                    scope=self.drive_scope,
                    api_root=self.drive_api_root,
                    token_uri=self.drive_token_uri,
                    daily_upload_cap_bytes=self.drive_daily_upload_cap_bytes,
                    state_dir=self.state_dir,
                    chunk_size=self.drive_chunk_size_mib * 1024 * 1024,
                ),
                retry=self.retry_policy,
            )
        else:
            inner = LocalFolderDestination(self.local_path)
        return RetryingDestination(inner, self.retry_policy)
