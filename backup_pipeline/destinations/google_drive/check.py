"""``destination check`` for Drive: every step a backup needs, and a plain verdict on whether one would run.

Steps: credentials (a token is issued), folder (found or created), space (free storage and
what is left of the daily upload allowance, with the numbers; a backup would be refused when
either is used up), write (a resumable upload of several chunks with a ``bytes */*`` status
query between them, checksums compared), read back (two ranged downloads), delete.
Creating a folder proves nothing: a service account may create folders but store no bytes.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from typing import TYPE_CHECKING

import google.auth.transport.requests

from backup_pipeline.settings import DriveAuthMode

from ..base import Capacity, CheckReport, DestinationError, decimal_bytes, refusal_reasons
from .config import UPLOAD_GRANULARITY

if TYPE_CHECKING:
    from .destination import GoogleDriveDestination

#: Two full chunks and a ragged third: the smallest upload that has every kind of request.
PROBE_BYTES = 2 * UPLOAD_GRANULARITY + 12_345


def run_check(dest: GoogleDriveDestination) -> CheckReport:
    cfg = dest.cfg
    report = CheckReport(destination=dest.description)
    if cfg.auth_mode is DriveAuthMode.OAUTH:
        report.warnings.append(
            "OAuth refresh tokens of an app in 'Testing' publishing status expire after 7 days; publish the "
            "app ('In production') or backups stop a week after set-up"
        )
    if cfg.folder_id and cfg.scope.endswith("/drive.file"):
        report.warnings.append(
            "a folder id is configured with scope drive.file: that only works for a folder this app created; "
            "for a folder made by a person set BACKUP_PIPELINE_DRIVE_SCOPE=https://www.googleapis.com/auth/drive"
        )
    step = "credentials"
    leftover: str | None = None  # the test file, until the delete step removed it
    try:
        creds = dest.creds.build()
        dest.retry.call(
            lambda: dest.client.call(
                "get an access token", lambda: creds.refresh(google.auth.transport.requests.Request())
            )
        )
        report.add(step, True, f"access token issued for {dest.principal()} (scope {cfg.scope})")
        step = "folder"
        folder = dest.retry.call(dest.folder_id)
        report.add(step, True, f"backup folder {folder}")
        step = "space"
        _space(dest, report)
        step = "write"
        payload = os.urandom(PROBE_BYTES)
        stored, how = dest.retry.call(
            dest.uploader.probe,
            f".check-{uuid.uuid4().hex}",
            folder,
            {"purpose": "connection-check"},
            payload,
        )
        leftover = stored.id
        report.add(step, True, f"uploaded {stored.size} bytes as {how}; size, MD5 and SHA-256 match")
        step = "read back"
        half = len(payload) // 2
        back = b"".join(dest.retry.call(lambda: list(dest.get(stored.id, 0, half)))) + b"".join(
            dest.retry.call(lambda: list(dest.get(stored.id, half)))
        )
        if back != payload:
            report.add(step, False, "the downloaded bytes differ from the uploaded ones")
            report.fix = _also(
                report.fix, "Drive returned different bytes; check proxies between this host and Google"
            )
            return report
        report.add(step, True, "two ranged downloads match the uploaded bytes")
        step = "delete"
        dest.retry.call(dest.delete, stored.id)
        leftover = None
        report.add(step, True, "test file permanently deleted")
    except DestinationError as exc:
        report.failed(step, exc)
    finally:
        if leftover is not None and step != "delete":
            with contextlib.suppress(
                DestinationError
            ):  # best effort: the failed step is what the report says
                dest.delete(leftover)
    return report


def _space(dest: GoogleDriveDestination, report: CheckReport) -> None:
    """The space step: the numbers (in GB, as Google quotes its limits), and a failed step when a
    backup would be refused."""
    cfg = dest.cfg
    if cfg.shared:
        storage = "free space unknown (a shared drive draws on the organisation's pool, which the API does not report)"
        free = None
    else:
        limit, usage = dest.retry.call(dest.storage_quota)
        free = None if limit is None else max(0, limit - usage)
        storage = (
            f"{decimal_bytes(usage)} used, no storage limit"
            if limit is None
            else f"{decimal_bytes(free or 0)} free ({decimal_bytes(usage)} of {decimal_bytes(limit)} used)"
        )
    ledger = dest.ledger()
    used = ledger.uploaded_last_24h()
    left = max(0, cfg.daily_upload_cap_bytes - used)
    daily = (
        f"{decimal_bytes(left)} of today's {decimal_bytes(cfg.daily_upload_cap_bytes)} upload allowance left "
        f"({decimal_bytes(used)} uploaded by this pipeline in the last 24 h)"
    )
    report.capacity = Capacity(free_bytes=free, daily_upload_remaining=left, decimal_units=True)
    refused = refusal_reasons(report.capacity)
    if not refused:
        report.add("space", True, f"{storage}; {daily}")
        return
    fixes = []
    if free is not None and free <= 0:
        fixes.append(
            f"free space in the Drive of {dest.principal()}: keep fewer backups (retention), empty the Drive trash "
            "(trashed files still count) or buy storage"
        )
    if left <= 0:
        oldest = ledger.oldest()
        frees = (
            f"; the oldest {decimal_bytes(oldest[1])} of it leave the 24-hour window at "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(oldest[0]))}"
            if oldest
            else ""
        )
        fixes.append(f"wait: the upload allowance frees up as the 24-hour window moves on{frees}")
    report.add("space", False, f"a backup would be refused now: {'; '.join(refused)} — {storage}; {daily}")
    report.fix = _also(report.fix, "; ".join(fixes))


def _also(fix: str | None, more: str) -> str:
    return more if not fix else f"{fix}\n{more}"
