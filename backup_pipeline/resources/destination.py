"""The backup destination as a Dagster resource, built from validated settings.

Configuration holds only non-secret values: the destination kind, paths and ids, and the
*path* of the Drive credentials file (service-account key or OAuth authorized-user JSON) or
of the S3 destination's AWS credentials file. A file's content — or, for S3 without a file,
the two ``BACKUP_PIPELINE_S3_DESTINATION_*_KEY`` environment variables — is read when the
destination first connects and never enters run config, logs or metadata.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from dagster import Config, ConfigurableResource
from pydantic import Field

from backup_pipeline.destination_settings import NamedDestination
from backup_pipeline.destinations import Destination, RetryingDestination, RetryPolicy
from backup_pipeline.destinations.local_folder import LocalFolderDestination
from backup_pipeline.settings import BackupSettings, DestinationKind, DriveAuthMode, S3LockMode

DESTINATION = "destination"  # resource key the ops ask for


class CopyDestination(Config):
    """A destination copy_backup_job fills: its name, what the 3-2-1 status counts it as, its
    retention, and its ``DestinationResource`` fields as strings (Dagster config cannot nest a
    resource in a list; every field is a non-secret value or a path)."""

    name: str
    offsite: bool = True
    keep_last: int = 7
    fields: dict[str, str] = Field(default_factory=dict)


class DestinationResource(ConfigurableResource):
    """Where backup parts go: a local folder, Google Drive or an S3-compatible bucket; with several
    destinations this is the primary (the backup writes it) and ``copies`` are the others."""

    kind: str = Field("local", description="local, google_drive or s3")
    destination_name: str = Field(
        default="", description="The destination's name (BACKUP_PIPELINE_DESTINATIONS); empty: its kind."
    )
    offsite: bool | None = Field(
        default=None, description="Counted off-site by the 3-2-1 check; empty: not local."
    )
    keep_last: int | None = Field(
        default=None, description="Sets retention keeps here; empty: retention_keep_last."
    )
    copies: list[CopyDestination] = Field(
        default_factory=list, description="The other destinations (copy_backup_job), in settings order."
    )
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
    drive_daily_download_threshold_bytes: int = 10**12
    drive_chunk_size_mib: int = Field(
        default=8, description="Resumable upload chunk (MiB, 8-16 recommended)."
    )
    s3_endpoint: str | None = Field(None, description="S3 destination endpoint URL (kind=s3).")
    s3_bucket: str | None = Field(None, description="S3 destination bucket (kind=s3).")
    s3_prefix: str = Field("", description="Key prefix inside the bucket.")
    s3_region: str = "us-east-1"
    s3_credentials_file: str | None = Field(
        None, description="Path of an AWS credentials file (never its content); empty: the two env vars."
    )
    s3_key_env_prefix: str | None = Field(
        default=None,
        description="Without a credentials file: the key pair is read from <prefix>ACCESS_KEY and <prefix>SECRET_KEY "
        "(only the names travel); empty: BACKUP_PIPELINE_S3_DESTINATION_ACCESS_KEY / _SECRET_KEY.",
    )
    s3_storage_class: str | None = None
    s3_part_size_mib: int = Field(default=16, description="Multipart part size (MiB, at least 5).")
    s3_lock_mode: str = Field("governance", description="governance, compliance or none.")
    s3_lock_days: int = Field(default=9, description="Retention written on each part, in days.")
    s3_read_timeout_seconds: float = 120.0
    retry_attempts: int = Field(8, description="destination_retry_attempts (settings).")
    retry_initial_wait_seconds: float = 1.0
    retry_max_wait_seconds: float = Field(60.0, description="destination_retry_max_wait_seconds (settings).")

    @classmethod
    def from_settings(cls, settings: BackupSettings) -> DestinationResource:
        """The primary, with every other named destination as a copy."""
        primary = cls.for_named(settings.primary)
        copies = [
            CopyDestination(
                name=d.name,
                offsite=d.offsite,
                keep_last=d.keep_last,
                fields={
                    k: str(v)
                    for k, v in cls.for_named(d)
                    .model_dump(exclude={"copies", "destination_name", "offsite", "keep_last"})
                    .items()
                    if v is not None
                },
            )
            for d in settings.copy_targets
        ]
        return primary.replace(copies=copies) if copies else primary

    @classmethod
    def for_named(cls, named: NamedDestination) -> DestinationResource:
        resource = cls.for_settings(named.settings)
        update: dict[str, Any] = {
            "destination_name": named.name,
            "offsite": named.offsite,
            "keep_last": named.keep_last,
        }
        if named.s3_key_env_prefix:
            update["s3_key_env_prefix"] = named.s3_key_env_prefix
        return resource.replace(**update)

    @classmethod
    def for_settings(cls, settings: BackupSettings) -> DestinationResource:
        """The single destination these settings describe (``destination`` and its fields)."""
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
            drive_daily_download_threshold_bytes=settings.drive_daily_download_threshold_bytes,
            retry_attempts=settings.destination_retry_attempts,
            retry_max_wait_seconds=settings.destination_retry_max_wait_seconds,
            s3_endpoint=settings.s3_destination_endpoint,
            s3_bucket=settings.s3_destination_bucket,
            s3_prefix=settings.s3_destination_prefix,
            s3_region=settings.s3_destination_region,
            s3_credentials_file=str(settings.s3_destination_credentials_file)
            if settings.s3_destination_credentials_file
            else None,
            s3_storage_class=settings.s3_destination_storage_class,
            s3_part_size_mib=settings.s3_destination_part_size_mib,
            s3_lock_mode=settings.s3_destination_lock_mode.value,
            s3_lock_days=settings.s3_destination_retention_days,
        )

    def replace(self, **changes: Any) -> DestinationResource:
        """A new resource with ``changes``: ``model_copy`` would not do, Dagster rebuilds a resource from
        the values it was constructed with and drops what a copy changed."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        return DestinationResource(**{**values, **changes})

    @property
    def label(self) -> str:
        """The destination's name (its kind when the installation has one destination)."""
        return self.destination_name or self.kind

    @property
    def is_offsite(self) -> bool:
        return (
            self.offsite
            if self.offsite is not None
            else DestinationKind(self.kind) is not DestinationKind.LOCAL
        )

    def copy_resources(self) -> list[DestinationResource]:
        """The other destinations as resources of their own (settings order)."""
        out = []
        for copy in self.copies:
            fields: dict[str, Any] = dict(copy.fields)
            out.append(
                DestinationResource(
                    **fields, destination_name=copy.name, offsite=copy.offsite, keep_last=copy.keep_last
                )
            )
        return out

    def all_named(self) -> list[DestinationResource]:
        """The primary, then the copies."""
        return [self.replace(copies=[]), *self.copy_resources()]

    def named(self, name: str | None) -> DestinationResource:
        """The destination called ``name`` (empty: the primary); ValueError naming the known ones."""
        if not name or name == self.label:
            return self
        for resource in self.copy_resources():
            if resource.label == name:
                return resource
        known = ", ".join(r.label for r in self.all_named())
        raise ValueError(f"destination: no destination named {name!r}; known: {known}")

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
        if DestinationKind(self.kind) is DestinationKind.S3:
            inner = self._s3_destination()
        elif DestinationKind(self.kind) is DestinationKind.GOOGLE_DRIVE:
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
                    daily_download_threshold_bytes=self.drive_daily_download_threshold_bytes,
                    state_dir=self.state_dir,
                    chunk_size=self.drive_chunk_size_mib * 1024 * 1024,
                ),
                retry=self.retry_policy,
            )
        else:
            inner = LocalFolderDestination(self.local_path)
        return RetryingDestination(inner, self.retry_policy)

    def bucket_on(self, endpoint: str) -> str | None:
        """The destination's bucket when it lives on the S3 server at ``endpoint`` (the application's):
        the backup must not back up its own backups."""
        if DestinationKind(self.kind) is not DestinationKind.S3 or not self.s3_endpoint:
            return None
        return self.s3_bucket if _same_server(self.s3_endpoint, endpoint) else None

    def buckets_on(self, endpoint: str) -> list[str]:
        """Every destination bucket (the primary's and the copies') on the S3 server at ``endpoint``."""
        found = [r.bucket_on(endpoint) for r in [self, *self.copy_resources()]]
        return sorted({b for b in found if b})

    def _s3_destination(self) -> Destination:
        from backup_pipeline.destinations.s3 import LockMode, S3Config, S3Destination, credentials_from

        if not self.s3_endpoint or not self.s3_bucket:
            raise ValueError("kind=s3 needs s3_endpoint and s3_bucket (BACKUP_PIPELINE_S3_DESTINATION_*)")
        config = S3Config(
            endpoint=self.s3_endpoint,
            bucket=self.s3_bucket,
            prefix=self.s3_prefix,
            region=self.s3_region,
            storage_class=self.s3_storage_class,
            part_size=self.s3_part_size_mib * 1024 * 1024,
            lock_mode=LockMode(S3LockMode(self.s3_lock_mode).value),
            lock_days=self.s3_lock_days,
            state_dir=self.state_dir,
            read_timeout=self.s3_read_timeout_seconds,
        )
        prefix = self.s3_key_env_prefix
        credentials = (
            credentials_from(
                self.s3_credentials_file, access_env=f"{prefix}ACCESS_KEY", secret_env=f"{prefix}SECRET_KEY"
            )
            if prefix
            else credentials_from(self.s3_credentials_file)
        )
        return S3Destination(config, credentials, retry=self.retry_policy)


def _same_server(a: str, b: str) -> bool:
    def norm(url: str) -> tuple[str, str, int | None]:
        parts = urlsplit(url)
        default = 443 if parts.scheme == "https" else 80
        return parts.scheme, (parts.hostname or "").lower(), parts.port or default

    return norm(a) == norm(b)
