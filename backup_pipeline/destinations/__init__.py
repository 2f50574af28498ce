"""Destinations: the contract (``base``), a local folder, Google Drive. See ``base`` for semantics."""

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
    "NotFoundError",
    "PermanentError",
    "QuotaError",
    "RetryPolicy",
    "RetryableError",
    "RetryingDestination",
    "StoredFile",
    "ensure_room",
]
