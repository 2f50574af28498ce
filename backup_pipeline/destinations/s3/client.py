"""The ``minio`` client of the S3 destination, the requests it makes, and its errors as ``DestinationError``.

Retries are not left to urllib3 (its retries would re-send a part behind the destination's
back and hide a cut connection): every idempotent request goes through the destination's
``RetryPolicy``, which retries only ``RetryableError``. minio-py exposes no way to send or read
S3 checksum headers on multipart uploads, so those requests use its signed ``_execute`` (as
the migration's multipart cleanup uses its private multipart calls).
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from urllib3.exceptions import HTTPError as Urllib3Error

from ..base import (
    AuthError,
    DestinationError,
    LockedError,
    NotFoundError,
    PermanentError,
    QuotaError,
    RetryableError,
)
from .config import CredentialsLoader, S3Config
from .layout import pinned

T = TypeVar("T")

NOT_FOUND = {"NoSuchKey", "NoSuchVersion", "NotFound", "NoSuchUpload", "MethodNotAllowed"}
AUTH = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AccountProblem",
}
TRANSIENT = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "OperationAborted",
    "BadDigest",  # the bytes changed on the wire: send them again
    "XAmzContentSHA256Mismatch",
    "IncompleteBody",
}
QUOTA = {"QuotaExceeded", "StorageQuotaExceeded", "StorageLimitExceeded"}
GUIDE = "docs/guides/S3-DESTINATION.md"


@dataclass(frozen=True)
class VersionEntry:
    """One entry of a version listing (a delete marker has no bytes)."""

    key: str
    version_id: str | None
    is_delete_marker: bool
    size: int
    last_modified: datetime | None


class S3Client:
    """The configured bucket: a ``Minio`` built on first use (the credentials are read then)."""

    def __init__(self, config: S3Config, credentials: CredentialsLoader):
        self.cfg = config
        self._credentials = credentials
        self._minio: Minio | None = None
        self._lock = threading.Lock()

    @property
    def minio(self) -> Minio:
        with self._lock:
            if self._minio is None:
                creds = self._credentials()
                http = urllib3.PoolManager(
                    timeout=urllib3.Timeout(connect=self.cfg.connect_timeout, read=self.cfg.read_timeout),
                    maxsize=max(4, self.cfg.list_workers + 2),
                    retries=False,
                )
                self._minio = Minio(
                    self.cfg.netloc,
                    access_key=creds.access_key,
                    secret_key=creds.secret_key,
                    secure=self.cfg.secure,
                    region=self.cfg.region,
                    http_client=http,
                )
            return self._minio

    # --- error translation ------------------------------------------------------------------

    def call(self, action: str, fn: Callable[[], T]) -> T:
        """Run one request; every failure becomes a ``DestinationError`` naming the action."""
        try:
            return fn()
        except DestinationError:
            raise
        except S3Error as exc:
            raise self.s3_error(action, exc) from None
        except ServerError as exc:
            raise RetryableError(
                f"{self.cfg.description}: {action}: server error (HTTP {exc.status_code})"
            ) from None
        except InvalidResponseError as exc:
            status = getattr(exc, "_code", None) or 0
            error = RetryableError if int(status) >= 500 or int(status) == 429 else PermanentError
            raise error(f"{self.cfg.description}: {action}: unexpected answer (HTTP {status})") from None
        except (Urllib3Error, OSError, http.client.HTTPException) as exc:
            raise RetryableError(
                f"{self.cfg.description}: {action}: connection failed ({type(exc).__name__}: {_first_line(exc)})"
            ) from None
        except MinioException as exc:
            raise PermanentError(f"{self.cfg.description}: {action}: {_first_line(exc)}") from None

    def s3_error(self, action: str, exc: S3Error) -> DestinationError:
        code = exc.code or ""
        where = f"{self.cfg.description}: {action}"
        said = f"{code}: {exc.message}" if exc.message else code
        if code in NOT_FOUND:
            return NotFoundError(f"{where}: not found ({said})")
        if code == "NoSuchBucket":
            return PermanentError(
                f"{where}: the bucket {self.cfg.bucket!r} does not exist. Create it (with object lock enabled "
                f"for immutable backups, see {GUIDE}); the product never creates it"
            )
        if code in AUTH:
            return AuthError(
                f"{where}: the server refused the credentials ({said}); check the access key pair"
            )
        if code == "AccessDenied":
            # A HEAD answer has no body: a wrong secret and a missing permission look the same.
            return AuthError(
                f"{where}: access denied ({said}): a wrong access key pair, or credentials without a permission "
                f"this needs ({GUIDE} lists them)"
            )
        if code in QUOTA:
            return QuotaError(f"{where}: storage quota reached ({said}); free space or raise the quota")
        if code in TRANSIENT:
            return RetryableError(f"{where}: {said}")
        if code == "RequestTimeTooSkewed":
            return PermanentError(f"{where}: {said}; set this host's clock right (NTP)")
        return PermanentError(f"{where}: {said}")

    # --- requests ---------------------------------------------------------------------------

    def head(self, key: str, version_id: str | None, action: str) -> urllib3.BaseHTTPResponse:
        """HEAD one version (checksums asked for). A delete marker is ``NotFoundError``."""
        query: dict[str, Any] | None = {"versionId": str(version_id)} if pinned(version_id) else None
        return self.call(
            action,
            lambda: self.minio._execute(
                "HEAD", self.cfg.bucket, key, headers={"x-amz-checksum-mode": "ENABLED"}, query_params=query
            ),
        )

    def versions(
        self, prefix: str, start_after: str | None = None, *, versioned: bool = True
    ) -> Iterator[VersionEntry]:
        """Every version and delete marker below ``prefix``, newest first within a key (lazy, paged).

        ``versioned=False`` (a bucket without versioning) lists with ListObjectsV2 instead: one
        entry per key, no version id — servers without versioning (Garage) answer no
        ListObjectVersions at all.
        """
        listing = self.minio.list_objects(
            self.cfg.bucket, prefix=prefix, recursive=True, include_version=versioned, start_after=start_after
        )
        first = True
        while True:
            try:
                item = self.call(f"listing {prefix or '/'}", lambda: next(listing))
            except StopIteration:
                return
            except PermanentError as exc:
                if not (versioned and first and "NotImplemented" in str(exc)):
                    raise
                # Versioning state unknown and no ListObjectVersions on this server: it keeps no versions.
                yield from self.versions(prefix, start_after, versioned=False)
                return
            first = False
            if item.object_name is None:
                continue
            yield VersionEntry(
                key=item.object_name,
                version_id=item.version_id if versioned else None,
                is_delete_marker=bool(item.is_delete_marker),
                size=int(item.size or 0),
                last_modified=item.last_modified,
            )

    def key_versions(self, key: str, *, versioned: bool = True) -> list[VersionEntry]:
        """The versions of exactly ``key`` (a prefix listing also returns longer keys)."""
        return [v for v in self.versions(key, versioned=versioned) if v.key == key]

    def delete_version(self, key: str, version_id: str | None, action: str) -> None:
        self.call(
            action,
            lambda: self.minio.remove_object(
                self.cfg.bucket, key, version_id=version_id if pinned(version_id) else None
            ),
        )

    def execute(self, action: str, method: str, key: str | None, **kwargs: Any) -> urllib3.BaseHTTPResponse:
        return self.call(action, lambda: self.minio._execute(method, self.cfg.bucket, key, **kwargs))


def retention_of(headers: Any) -> tuple[str | None, datetime | None, bool]:
    """(mode, retain-until, legal hold) from an object's response headers."""
    mode = headers.get("x-amz-object-lock-mode")
    raw = headers.get("x-amz-object-lock-retain-until-date")
    until = parse_time(raw) if raw else None
    hold = str(headers.get("x-amz-object-lock-legal-hold", "")).upper() == "ON"
    return mode, until, hold


def parse_time(value: str) -> datetime | None:
    text = value.strip()
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        pass
    try:
        return parsedate_to_datetime(text).astimezone(UTC)
    except (TypeError, ValueError):
        return None


def locked_error(
    description: str, key: str, until: datetime | None, mode: str | None, hold: bool
) -> LockedError:
    if hold:
        return LockedError(
            f"{description}: {key} is under a legal hold; it cannot be deleted until it is lifted"
        )
    when = until.isoformat(timespec="seconds") if until else "an unknown date"
    return LockedError(
        f"{description}: {key} is locked ({mode or 'object lock'}) until {when}; it can be deleted after that",
        until=until,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
