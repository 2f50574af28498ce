"""Destinations: the contract (``base``), a local folder, Google Drive. See ``base`` for semantics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import (
    AuthError,
    Capacity,
    CheckReport,
    CheckStep,
    Destination,
    DestinationError,
    NotFoundError,
    PermanentError,
    QuotaError,
    RetryableError,
    RetryingDestination,
    RetryPolicy,
    StoredFile,
    ensure_room,
)
from .local_folder import LocalFolderDestination

if TYPE_CHECKING:
    from backup_pipeline.settings import BackupSettings

__all__ = [
    "AuthError",
    "Capacity",
    "CheckReport",
    "CheckStep",
    "Destination",
    "DestinationError",
    "LocalFolderDestination",
    "NotFoundError",
    "PermanentError",
    "QuotaError",
    "RetryPolicy",
    "RetryableError",
    "RetryingDestination",
    "StoredFile",
    "destination_from_settings",
    "ensure_room",
]


def destination_from_settings(settings: BackupSettings, *, retry: RetryPolicy | None = None) -> Destination:
    """The configured destination, wrapped in the retry policy (for services and the CLI)."""
    from backup_pipeline.settings import DestinationKind

    inner: Destination
    if settings.destination is DestinationKind.GOOGLE_DRIVE:
        from .google_drive import GoogleDriveDestination

        inner = GoogleDriveDestination.from_settings(settings, retry=retry)
    else:
        inner = LocalFolderDestination(settings.local_destination_path)
    return RetryingDestination(inner, retry)
