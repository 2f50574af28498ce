"""MinIO / any S3 endpoint through the ``minio`` client, path-style addressing.

Credentials come from ``BACKUP_PIPELINE_S3_ACCESS_KEY``/``..._SECRET_KEY`` via Dagster
``EnvVar``. Connection failures are reported as ``S3Unavailable`` naming the endpoint.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

import urllib3
from dagster import ConfigurableResource
from minio import Minio
from pydantic import Field

from backup_pipeline.services.errors import S3_ERRORS, s3_error_reason

# minio raises ValueError for an endpoint or name it cannot use, before any request.
_LISTING_ERRORS: tuple[type[Exception], ...] = (*S3_ERRORS, ValueError)


class S3Unavailable(Exception):
    """The endpoint could not be reached or rejected the credentials; the message names the endpoint."""


class S3Resource(ConfigurableResource):
    """The application's object storage."""

    endpoint: str = Field(description="http(s)://host:port of the S3/MinIO endpoint.")
    access_key: str = Field(description="Access key (an EnvVar).")
    secret_key: str = Field(description="Secret key (an EnvVar).")
    region: str = Field(default="us-east-1")
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    # Long enough for a slow multi-GB stream to stall briefly without failing the part.
    read_timeout_seconds: float = Field(default=300.0, gt=0)
    retries: int = Field(default=3, ge=0, description="urllib3 retries on connection errors and 5xx.")
    # The pool below holds 16 connections: read-ahead threads plus the streaming reader fit.
    read_ahead: int = Field(
        default=8, ge=1, le=15, description="GETs of small objects in flight at once per bucket export."
    )
    tag_reading: Literal["when_counted", "always"] = Field(
        default="when_counted",
        description="Read tags only when a GET reports some (x-amz-tagging-count), or for every object.",
    )

    def client(self) -> Minio:
        """A ``Minio`` client with bounded timeouts (minio's default connect timeout is 5 minutes)."""
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise S3Unavailable(f"invalid S3 endpoint {self.endpoint!r}: must be http(s)://host[:port]")
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=self.connect_timeout_seconds, read=self.read_timeout_seconds),
            maxsize=16,
            retries=urllib3.Retry(
                total=self.retries, backoff_factor=0.5, status_forcelist=[500, 502, 503, 504]
            ),
        )
        client = Minio(
            parts.netloc,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=parts.scheme == "https",
            region=self.region,
            http_client=http,
        )
        # MinIO and most S3-compatible servers expect path-style; AWS hosts would otherwise
        # switch to virtual-host style.
        client.disable_virtual_style_endpoint()
        return client

    def describe_error(self, exc: BaseException, action: str) -> S3Unavailable:
        """Turn a minio/urllib3 error into one line naming the endpoint (never the keys)."""
        return S3Unavailable(
            s3_error_reason(exc, self.endpoint, action, secrets=(self.secret_key, self.access_key))
        )

    def list_bucket_names(self) -> list[str]:
        try:
            return sorted(b.name for b in self.client().list_buckets())
        except _LISTING_ERRORS as exc:
            raise self.describe_error(exc, "listing buckets") from None
