"""``destination check`` on S3: the bucket, what protects it, and a write / read back / delete.

Steps: ``bucket`` (reachable, exists), ``versioning`` and ``object lock`` (said plainly: is the
bucket locked, which default rule applies, what this destination writes), then the four every
destination reports: ``space``, ``write``, ``read back``, ``delete``.

With object lock in effect the probe is written with a two-minute retention in the
configured mode, and the delete step expects the server to REFUSE deleting it: that is the
proof the lock works with these credentials. A probe that cannot be deleted (locked, or the
least-privilege credentials) stays; a later check removes probes older than an hour when it
may. A server that deletes a locked probe fails the check.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from ..base import CheckReport, DestinationError, LockedError
from .config import PROBE_LOCK, LockMode
from .layout import PROBE_NAME_PREFIX

if TYPE_CHECKING:
    from .destination import S3Destination

PROBE_BYTES = 4096
PROBE_PROPERTIES = {"purpose": "connection-check"}
STALE_PROBE_AGE = timedelta(hours=1)


def run_check(dest: S3Destination) -> CheckReport:
    report = CheckReport(destination=dest.description)
    cfg = dest.cfg
    try:
        exists = dest.retry.call(
            dest.client.call, "reaching the bucket", lambda: dest.client.minio.bucket_exists(cfg.bucket)
        )
    except DestinationError as exc:
        report.add("bucket", False, str(exc))
        report.fix = (
            f"{exc} — check BACKUP_PIPELINE_S3_DESTINATION_ENDPOINT / _BUCKET / _REGION and the credentials"
        )
        return report
    if not exists:
        report.add("bucket", False, f"bucket {cfg.bucket!r} does not exist at {cfg.endpoint}")
        report.fix = (
            f"create the bucket {cfg.bucket!r} (with object lock enabled for immutable backups, "
            "docs/guides/S3-DESTINATION.md); the product never creates it"
        )
        return report
    report.add("bucket", True, f"{cfg.bucket} at {cfg.endpoint} is reachable")

    protection = dest.protection()
    report.add("versioning", True, protection.versioning_summary())
    report.add("object lock", True, protection.lock_summary(cfg))
    if protection.versioning is None:
        report.warnings.append(protection.versioning_summary())
    if protection.lock_enabled is None or not protection.lock_enabled:
        report.warnings.append(protection.lock_summary(cfg))
    elif cfg.lock_mode is LockMode.NONE:
        report.warnings.append(
            "object lock is enabled on the bucket but lock mode is none: parts get no retention of their own"
        )

    _remove_stale_probes(dest)
    report.capacity = None
    report.add("space", True, "S3 reports no free space (a quota shows as a refused upload)")

    payload = os.urandom(PROBE_BYTES)
    locked = protection.writes_retention(cfg)
    until = datetime.now(UTC).replace(microsecond=0) + PROBE_LOCK if locked else None
    try:
        stored = dest.uploader.put(
            f"{PROBE_NAME_PREFIX}{uuid.uuid4().hex}", [payload], PROBE_PROPERTIES, retain_until=until
        )
    except DestinationError as exc:
        report.add("write", False, str(exc))
        report.fix = str(exc)
        return report
    lock_text = (
        f"; locked {cfg.lock_mode.header} until {stored.locked_until.isoformat(timespec='seconds')}"
        if stored.locked_until
        else ""
    )
    if locked and stored.locked_until is None:
        report.add("write", False, f"wrote {stored.size} bytes but the server reports no retention on it")
        report.fix = (
            "the server accepted the retention headers without locking the object: backups here are NOT "
            "immutable. Check the bucket's object lock and the s3:PutObjectRetention permission"
        )
        return report
    report.add("write", True, f"wrote {stored.size} bytes; the server confirmed MD5 and SHA-256{lock_text}")

    try:
        halves = b"".join(dest.get(stored.id, 0, PROBE_BYTES // 2)) + b"".join(
            dest.get(stored.id, PROBE_BYTES // 2)
        )
    except DestinationError as exc:
        report.add("read back", False, str(exc))
        report.fix = str(exc)
        return report
    if halves != payload:
        report.add("read back", False, "the bytes read back (two ranged reads) differ from what was written")
        report.fix = "the server or a proxy on the way returns different bytes than stored; check it"
        return report
    report.add("read back", True, "contents match (two ranged reads)")

    try:
        dest.delete(stored.id)
    except LockedError as exc:
        if locked:
            report.add(
                "delete", True, f"refused, as it must be: {exc}. Object lock protects what is written here"
            )
        else:
            report.add("delete", True, f"refused: {exc}")
            report.warnings.append(
                "these credentials may not delete: retention cannot remove old backup sets and reports them as "
                "refused; expire them with a lifecycle rule on the bucket (docs/guides/S3-DESTINATION.md)"
            )
        return report
    except DestinationError as exc:
        report.add("delete", False, str(exc))
        report.fix = str(exc)
        return report
    if locked:
        report.add(
            "delete", False, "the server DELETED a locked object: object lock does not protect backups here"
        )
        report.fix = "the server ignores object lock; do not rely on it for immutability (see the guide's vendor notes)"
        return report
    report.add("delete", True, "test file deleted")
    return report


def _remove_stale_probes(dest: S3Destination) -> None:
    """Probes of earlier checks (kept while locked, or by credentials that may not delete)."""
    cutoff = datetime.now(UTC) - STALE_PROBE_AGE
    with contextlib.suppress(DestinationError):
        for entry in dest.client.versions(dest.layout.probe_prefix(), versioned=dest.protection().versioned):
            if entry.is_delete_marker or entry.last_modified is None or entry.last_modified > cutoff:
                continue
            with contextlib.suppress(DestinationError):
                dest.delete(dest.layout.file_id(entry.key, entry.version_id))
