"""Drive's answers turned into DestinationErrors whose message names the cause and the fix.

The advice follows what Google said (its machine ``reason`` AND its human ``message``), the
setup (shared drive, delegation, OAuth) and, where Google's words are ambiguous, local
evidence:

* ``storageQuotaExceeded`` carries two different messages. "Service Accounts do not have
  storage quota" means the write was billed to a service account acting as itself
  (delegation not in effect, or a folder outside the shared drive); any other message means
  the account's or the organisation's storage is full.
* ``userRateLimitExceeded``/``rateLimitExceeded`` (403 or 429) is throttling: Google documents
  "retry with exponential backoff". The 750 GB/day cap answers with the same reason and the
  bare message "User rate limit exceeded." — which a throttled request can carry too. So the
  daily cap is decided only when that message comes AND the upload ledger shows the day's
  allowance (nearly) used; otherwise it is retried as throttling, and the message says what
  the ledger shows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import google.auth.exceptions

from backup_pipeline.settings import DriveAuthMode

from ..base import (
    AuthError,
    DailyCapError,
    DestinationError,
    NotFoundError,
    PermanentError,
    QuotaError,
    RetryableError,
    decimal_bytes,
)
from .auth import DriveCredentials
from .config import DriveConfig

RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
THROTTLE_REASONS = {"userRateLimitExceeded", "rateLimitExceeded", "uploadLimitExceeded"}
#: The daily-cap wording (rclone's --drive-stop-on-upload-limit keys on the same text); the
#: throttle's documented message goes on: "User Rate Limit Exceeded. Rate of requests for user…".
DAILY_CAP_MESSAGE = re.compile(r"^\s*user rate limit exceeded\.?\s*$", re.IGNORECASE)
#: Share of the configured daily cap the ledger must show used before a daily-cap-worded answer
#: is taken for the cap. The ledger counts this host's uploads only, flushed every few seconds,
#: so it trails Drive's own count a little; far below the cap the answer is throttling.
DAILY_CAP_EVIDENCE = 0.9
SERVICE_ACCOUNT_HAS_NO_STORAGE = re.compile(
    r"service accounts? do(?: not|n't) have storage quota", re.IGNORECASE
)


class SessionGone(Exception):
    """The resumable session is unusable (404/410, or the server lost confirmed bytes)."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


def drive_reason(content: bytes | None) -> tuple[str | None, str | None]:
    """Drive's machine reason and message; survives HTML (408) or empty (502) bodies."""
    try:
        error = json.loads(content or b"")["error"]
        errors = error.get("errors") or [{}]
        return errors[0].get("reason") or error.get("status"), str(error.get("message", ""))[:300] or None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        return None, None


def retry_after(headers: Any) -> float | None:
    try:
        value = headers.get("Retry-After") or headers.get("retry-after") if headers is not None else None
        return float(value) if value else None
    except (TypeError, ValueError):
        return None


class DriveErrors:
    """Classifies Drive's failures for one destination (its setup, principal and ledger)."""

    def __init__(
        self,
        config: DriveConfig,
        credentials: DriveCredentials,
        *,
        uploaded_last_24h: Callable[[], int],
        folder_drive: Callable[[], str | None],
    ):
        self.cfg = config
        self.creds = credentials
        self._uploaded_last_24h = uploaded_last_24h
        self._folder_drive = folder_drive  # the shared drive the backup folder is in (None: My Drive)

    def http_error(
        self, what: str, status: int, content: bytes | None, headers: Any = None
    ) -> DestinationError:
        reason, message = drive_reason(content)
        detail = (
            f"{what}: HTTP {status}" + (f" {reason}" if reason else "") + (f" ({message})" if message else "")
        )
        if status == 404:
            if self.cfg.shared and (message or "").lower().startswith("shared drive not found"):
                return self._not_a_member(detail)
            return NotFoundError(
                f"{detail}; the file or folder does not exist or is not visible to these credentials"
            )
        if status == 403 and reason == "storageQuotaExceeded":
            return self.storage_quota(detail, message)
        if status == 403 and reason == "teamDriveFileLimitExceeded":
            return QuotaError(
                f"{detail}. Shared drive {self.cfg.shared_drive_id} holds the most items Drive allows in one "
                "shared drive (items in its trash count too): empty its trash, keep fewer backups, or use "
                "another shared drive"
            )
        if status in (403, 429) and reason in THROTTLE_REASONS:
            uploading = what.startswith(("upload ", "start upload "))
            return self.rate_limited(detail, reason, message, retry_after(headers), uploading=uploading)
        if status in RETRYABLE_STATUS:
            return RetryableError(
                f"{detail}; a transient Drive error, retrying with backoff", retry_after=retry_after(headers)
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
            if self.cfg.shared and what.startswith("delete"):
                return PermanentError(
                    f"{detail}. Permanent delete in a shared drive needs the Manager (organizer) role; the service "
                    f"account {self.creds.principal()} has a lower role (e.g. Content manager can only trash). In "
                    "the shared drive's 'Manage members', make it a Manager, or retention cannot remove old backups"
                )
            return PermanentError(
                f"{detail}. The credentials may not access this item: with scope drive.file the app sees only "
                "files it created — for a folder made by a person, set BACKUP_PIPELINE_DRIVE_SCOPE="
                "https://www.googleapis.com/auth/drive or let the app create its own folder"
            )
        if status == 403 and reason in ("teamDriveMembershipRequired", "notFound"):
            return self._not_a_member(detail)
        return PermanentError(detail)

    def _not_a_member(self, detail: str) -> PermanentError:
        return PermanentError(
            f"{detail}. Shared drive {self.cfg.shared_drive_id} does not exist or the service account "
            f"{self.creds.principal()} is not a member of it: check BACKUP_PIPELINE_DRIVE_SHARED_DRIVE_ID and add "
            "the service account (Manager role) in the shared drive's 'Manage members'"
        )

    # --- storage ------------------------------------------------------------------------

    def storage_quota(self, detail: str, message: str | None) -> QuotaError:
        """Advice for ``storageQuotaExceeded`` that follows Google's message and the setup."""
        mode = self.cfg.auth_mode
        if SERVICE_ACCOUNT_HAS_NO_STORAGE.search(message or ""):
            account = self.creds.service_account_email()
            if mode is DriveAuthMode.SHARED_DRIVE:
                return QuotaError(f"{detail}. {self._outside_shared_drive(account)}")
            if mode is DriveAuthMode.DELEGATION:
                if not self.cfg.subject:
                    return QuotaError(
                        f"{detail}. Google billed the write to the service account {account} itself, which has no "
                        "Drive storage: domain-wide delegation is not in effect because no user to act as is set. "
                        "Set BACKUP_PIPELINE_DRIVE_SUBJECT to the Workspace user whose Drive holds the backups, or "
                        "put the backups in a shared drive (drive_auth_mode=shared_drive)"
                    )
                return QuotaError(
                    f"{detail}. Google billed the write to the service account {account} itself, not to "
                    f"{self.cfg.subject}: domain-wide delegation is not in effect for this key. In the Admin "
                    f"console allow client ID {self.creds.client_id()} for scope {self.cfg.scope} (setup 2 of "
                    "docs/guides/GOOGLE-DRIVE-SETUP.md), or use a shared drive (drive_auth_mode=shared_drive)"
                )
            return QuotaError(
                f"{detail}. Google says a service account made this write, but drive_auth_mode=oauth acts as a "
                f"user: {self.cfg.credentials_file} must be the OAuth authorized-user JSON of the account whose "
                "Drive holds the backups (setup 3), or use a shared drive with a service account (setup 1)"
            )
        if mode is DriveAuthMode.SHARED_DRIVE:
            return QuotaError(
                f"{detail}. Shared drive {self.cfg.shared_drive_id} draws on the organisation's pooled storage, "
                "which is full: ask the Workspace admin to free or add storage; keeping fewer backups "
                "(retention) frees space too"
            )
        return QuotaError(
            f"{detail}. The Drive storage of {self.creds.principal()} is full: keep fewer backups (retention), "
            "empty the Drive trash (trashed files still count) or buy more storage"
        )

    def _outside_shared_drive(self, account: str) -> str:
        drive_id = self.cfg.shared_drive_id
        try:
            folder_drive = self._folder_drive()
        except DestinationError:
            folder_drive = "?"
        if folder_drive == drive_id:
            return (
                f"Google billed the write to the service account {account} although the backup folder is in "
                f"shared drive {drive_id}; service accounts have no storage of their own. Check that the service "
                "account is a member of that shared drive with the Manager or Content manager role ('Manage "
                "members') and that the shared drive's own storage limit is not reached"
            )
        where = (
            "is not in any shared drive (it is in someone's My Drive)"
            if folder_drive is None
            else f"is in shared drive {folder_drive}"
            if folder_drive != "?"
            else "could not be located"
        )
        return (
            f"Writes outside shared drive {drive_id} are billed to the service account {account}, which has no "
            f"storage; the backup folder {self.cfg.folder_id or '(created by the app)'} {where}. Set "
            f"BACKUP_PIPELINE_DRIVE_FOLDER_ID to a folder inside shared drive {drive_id}, or leave it empty so the "
            "app creates its folder there"
        )

    # --- throttling and the daily cap ---------------------------------------------------------

    def rate_limited(
        self, detail: str, reason: str | None, message: str | None, wait: float | None, *, uploading: bool
    ) -> DestinationError:
        cap_worded = reason == "uploadLimitExceeded" or bool(DAILY_CAP_MESSAGE.match(message or ""))
        if not cap_worded or not uploading:  # the daily cap limits uploads; a listing or read is throttled
            return RetryableError(
                f"{detail}; Drive is throttling requests, retrying with backoff", retry_after=wait
            )
        cap = self.cfg.daily_upload_cap_bytes
        try:
            used = self._uploaded_last_24h()
        except OSError:
            used = None
        if used is not None and used >= cap * DAILY_CAP_EVIDENCE:
            return DailyCapError(
                f"{detail}. Google Drive's daily upload cap (750 GB per user per day) is reached for "
                f"{self.creds.principal()}: this pipeline uploaded {decimal_bytes(used)} of the "
                f"{decimal_bytes(cap)} allowance in the last 24 h. Uploads can continue as the 24-hour window "
                "moves on; split large backups or reduce what is backed up"
            )
        seen = "unknown (the upload ledger cannot be read)" if used is None else decimal_bytes(used)
        return RetryableError(
            f"{detail}; Google uses these words both for throttling and for its 750 GB/day upload cap, but this "
            f"pipeline uploaded only {seen} of the {decimal_bytes(cap)} allowance in the last 24 h, so it is "
            f"treated as throttling and retried with backoff (if other tools upload as {self.creds.principal()}, "
            "the cap may really be reached: it frees up within 24 h)",
            retry_after=wait,
        )

    # --- tokens -------------------------------------------------------------------------------

    def refresh_error(self, exc: google.auth.exceptions.RefreshError) -> DestinationError:
        text = str(exc.args[0]) if exc.args else str(exc)
        if "unauthorized_client" in text:
            return AuthError(
                "Google refused the token (unauthorized_client): the Workspace admin has not authorised "
                f"domain-wide delegation for this service account. Admin console → Security → Access and data "
                f"control → API controls → Manage domain-wide delegation → Add new: client ID "
                f"{self.creds.client_id()}, OAuth scopes {self.cfg.scope}"
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
