"""An S3-compatible destination (AWS S3, Backblaze B2, Cloudflare R2, Wasabi, MinIO, SeaweedFS,
Garage, …) through the ``minio`` client, with object lock. Operator guide:
``docs/guides/S3-DESTINATION.md``.

Modules:

- ``config``: ``S3Config`` (endpoint, bucket, prefix, part size, lock mode and days), the
  credentials loader (AWS credentials file or two environment variables), the lock formula;
- ``layout``: keys (``<prefix><backup id>/<name>``), version-pinned ids, properties as metadata;
- ``client``: the minio client (no urllib3 retries), requests, S3 errors → ``DestinationError``;
- ``protection``: versioning, object lock and its default rule, as read from the bucket;
- ``state``: multipart upload sessions in ``state_dir`` (resume across processes);
- ``upload``: single PUT and resumable multipart upload with checksums verified;
- ``destination``: ``S3Destination`` (list by oldest live version, ranged get, delete of every
  version, refused when locked);
- ``check``: the pre-flight;
- ``policy``: the least-privilege IAM policy the guide documents.
"""

from __future__ import annotations

from .config import Credentials, LockMode, S3Config, credentials_from, lock_days_for
from .destination import S3Destination
from .policy import least_privilege_policy

__all__ = [
    "Credentials",
    "LockMode",
    "S3Config",
    "S3Destination",
    "credentials_from",
    "least_privilege_policy",
    "lock_days_for",
]
