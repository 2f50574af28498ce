"""How failures read in messages, shared by the services and the resources (no Dagster here).

S3: every caller (backup, restore, migration, ``S3Resource``) catches :data:`S3_ERRORS` around
its minio calls and words the failure with :func:`s3_error_reason`, so an unreachable endpoint,
refused credentials or a missing bucket read the same everywhere: the endpoint is named, the
credentials never are. Callers keep their own error classes and codes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

#: What a minio call raises when S3 answered with an error (``S3Error``), answered badly
#: (other ``MinioException``s) or could not be reached / broke off mid-body (urllib3, OS errors).
S3_ERRORS: tuple[type[Exception], ...] = (MinioException, urllib3.exceptions.HTTPError, OSError)

#: S3 error codes that mean "these credentials may not do this".
_ACCESS_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
)
_MIN_MASKED_LENGTH = 8
# urllib3 puts the connection object's repr into its messages: noise, not a reason.
_OBJECT_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-fA-F]+>:?\s*")


def first_line(exc: BaseException) -> str:
    """The first line of the exception's text, or its class name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def s3_endpoint(client: Minio) -> str:
    """``http(s)://host:port`` of a minio client, for messages (minio keeps it in ``_base_url``)."""
    base = getattr(client, "_base_url", None)
    if base is None:
        return "S3"
    return f"{'https' if base.is_https else 'http'}://{base.host}"


def is_s3_unreachable(exc: BaseException) -> bool:
    """True when S3 gave no usable answer (down, refused, timed out, cut off, 5xx), i.e. worth a retry."""
    return isinstance(exc, S3_ERRORS) and not isinstance(exc, S3Error)


def _network_cause(exc: BaseException) -> str:
    root: BaseException = exc
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        root = exc.reason
    # The OS-level cause (ConnectionRefusedError, gaierror, TimeoutError) reads best.
    cause: BaseException | None = root
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return f"{type(cause).__name__}: {cause.strerror}"
        cause = cause.__cause__
    text = _OBJECT_REPR.sub("", first_line(root)).strip()
    return f"{type(root).__name__}: {text}" if text and text != type(root).__name__ else type(root).__name__


def _why(exc: BaseException) -> str:
    if isinstance(exc, S3Error):
        if exc.code == "NoSuchBucket":
            bucket = f"bucket {exc.bucket_name!r}" if exc.bucket_name else "the bucket"
            return f"{bucket} does not exist (NoSuchBucket)"
        if exc.code in _ACCESS_CODES:
            return (
                f"access refused ({exc.code}: {exc.message}); check the S3 access key, secret key "
                "and their permissions"
            )
        return f"{exc.code}: {exc.message}"
    if is_s3_unreachable(exc):
        return f"{_network_cause(exc)}; is the S3/MinIO server running and reachable?"
    return f"{type(exc).__name__}: {first_line(exc)}"


def s3_error_reason(exc: BaseException, endpoint: str, action: str, *, secrets: Iterable[str] = ()) -> str:
    """One line saying which endpoint failed at what and why, e.g.
    ``S3 endpoint http://minio:9000: listing buckets failed: ConnectionRefusedError: Connection
    refused; is the S3/MinIO server running and reachable?``.

    The text is built from S3's error code and message, exception class names and OS error
    strings, none of which carry credentials; ``secrets`` (the S3 keys, where the caller has
    them) are masked all the same. Values shorter than 8 characters are no real keys (test
    fixtures use "a") and masking them would garble the message.
    """
    message = f"S3 endpoint {endpoint}: {action} failed: {_why(exc)}"
    for secret in secrets:
        if len(secret) >= _MIN_MASKED_LENGTH:
            message = message.replace(secret, "***")
    return message
