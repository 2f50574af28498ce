"""Destinations: the contract (``base``), a local folder, Google Drive (``google_drive``), an S3-compatible
bucket with object lock (``s3``). See ``base`` for semantics."""

from __future__ import annotations

from .base import (
    AuthError,
    Capacity,
    CheckReport,
    CheckStep,
    DailyCapError,
    Destination,
    DestinationError,
    ListPage,
    LockedError,
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

__all__ = [
    "AuthError",
    "Capacity",
    "CheckReport",
    "CheckStep",
    "DailyCapError",
    "Destination",
    "DestinationError",
    "ListPage",
    "LocalFolderDestination",
    "LockedError",
    "NotFoundError",
    "PermanentError",
    "QuotaError",
    "RetryPolicy",
    "RetryableError",
    "RetryingDestination",
    "StoredFile",
    "ensure_room",
]
