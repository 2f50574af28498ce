"""Google Drive (Workspace) as a destination: resumable uploads, ranged downloads, honest advice.

Three setups (``drive_auth_mode``):

* ``shared_drive`` — a service account that is a member of a shared drive. Every call
  sends ``supportsAllDrives``; listings use ``corpora=drive&driveId=…``.
* ``delegation`` — a service account impersonating ``subject`` (domain-wide delegation).
* ``oauth`` — an OAuth user's refresh token (authorized-user JSON).

The package, one concern a module:

* ``config`` — ``DriveConfig`` and the protocol constants;
* ``auth`` — credentials in the three setups, the principal's name;
* ``client`` — per-thread HTTP clients, the one place exceptions become DestinationErrors;
* ``errors`` — Drive's answers classified, with advice that follows Google's message, the
  setup and the upload ledger (throttling vs the daily cap, the two storage-quota messages);
* ``state`` — the resumable session files and the daily upload ledger in ``state_dir``;
* ``upload`` — the resumable upload loop (write ordering in its docstring) and the check's probe;
* ``check`` — ``destination check``;
* ``destination`` — ``GoogleDriveDestination``: folder, listing, stat, delete, capacity, get, put.
"""

from .config import DriveConfig
from .destination import GoogleDriveDestination

__all__ = ["DriveConfig", "GoogleDriveDestination"]
