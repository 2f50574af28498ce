"""Versioned buckets: a backup keeps only current versions; this says what it leaves out.

Split from ``backup_buckets`` (module size); re-exported there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from minio import Minio
from minio.error import S3Error

from .backup_parts import BackupError, ErrorCode
from .errors import S3_ERRORS, is_s3_unreachable, s3_endpoint, s3_error_reason


def s3_failure(exc: BaseException, action: str, endpoint: str) -> BackupError:
    """The backup's error code for a minio/urllib3 error; the text is the shared one (no credentials)."""
    message = s3_error_reason(exc, endpoint, action)
    if is_s3_unreachable(exc):
        return BackupError(ErrorCode.S3_UNREACHABLE, message, retryable=True)
    if isinstance(exc, S3Error) and exc.code == "NoSuchBucket":
        return BackupError(ErrorCode.BUCKET_NOT_FOUND, message)
    return BackupError(ErrorCode.S3_ERROR, message)


@dataclass(frozen=True)
class VersioningReport:
    """A bucket with versioning on (or suspended, or unknown): the backup keeps only current versions."""

    bucket: str
    status: str  # "Enabled" | "Suspended" | "unknown" (the credentials may not read it)
    noncurrent_versions: int | None  # None: not counted (the server would not list versions)
    delete_markers: int | None
    reason: str | None = None  # why status or counts are unknown

    def message(self) -> str:
        if self.status == "unknown":
            return (
                f"bucket {self.bucket}: its versioning could not be read ({self.reason}); if it is versioned, "
                "only current versions are backed up and noncurrent versions and delete markers are not kept"
            )
        if self.noncurrent_versions is None:
            left_out = f"noncurrent versions and delete markers (not counted: {self.reason})"
        else:
            left_out = (
                f"{self.noncurrent_versions} noncurrent version(s) and {self.delete_markers} delete marker(s)"
            )
        return (
            f"bucket {self.bucket} is versioned ({self.status}): only current versions are backed up; "
            f"{left_out} are not kept"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "noncurrent_versions": self.noncurrent_versions,
            "delete_markers": self.delete_markers,
        }


#: Answers meaning "this server or these credentials will not tell": reported, not fatal.
_VERSIONING_UNANSWERED = frozenset({"NotImplemented", "MethodNotAllowed", "AccessDenied"})


def bucket_versioning(client: Minio, bucket: str) -> VersioningReport | None:
    """None for an unversioned bucket (or a server without the versioning API); else what is left out.

    Counting costs one listing of every version (1 000 per request), far less than the GETs.
    Credentials that may not read the versioning state get a warning, not a failed backup.
    """
    endpoint = s3_endpoint(client)
    try:
        status = client.get_bucket_versioning(bucket).status
    except S3Error as exc:
        if exc.code in ("NotImplemented", "MethodNotAllowed"):
            return None
        if exc.code == "AccessDenied":
            return VersioningReport(bucket, "unknown", None, None, f"S3 answered {exc.code}")
        raise s3_failure(exc, f"reading the versioning of bucket {bucket!r}", endpoint) from None
    except S3_ERRORS as exc:
        raise s3_failure(exc, f"reading the versioning of bucket {bucket!r}", endpoint) from None
    if status not in ("Enabled", "Suspended"):
        return None
    noncurrent = markers = 0
    try:
        for version in client.list_objects(bucket, recursive=True, include_version=True):
            if version.is_delete_marker:
                markers += 1
            elif (version.is_latest or "").lower() != "true":
                noncurrent += 1
    except S3Error as exc:
        if exc.code not in _VERSIONING_UNANSWERED:
            raise s3_failure(exc, f"listing the versions of bucket {bucket!r}", endpoint) from None
        return VersioningReport(bucket, status, None, None, f"listing versions: S3 answered {exc.code}")
    except S3_ERRORS as exc:
        raise s3_failure(exc, f"listing the versions of bucket {bucket!r}", endpoint) from None
    return VersioningReport(bucket, status, noncurrent, markers)
