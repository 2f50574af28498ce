"""What protects the bucket: versioning, object lock and its default rule, and what this destination writes.

Read once per destination object (two GETs). A value the credentials may not read is
``None`` ("unknown") with the reason, never a guess: with object lock unknown, parts are
written without retention headers (a bucket without object lock would refuse them) and the
check says which permission is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree import ElementTree

from minio.error import S3Error

from ..base import DestinationError
from .client import S3Client
from .config import LockMode, S3Config

LOCK_NOT_CONFIGURED = {
    "ObjectLockConfigurationNotFoundError",
    "ObjectLockConfigurationNotFound",
    "NoSuchObjectLockConfiguration",
}


@dataclass(frozen=True)
class Protection:
    versioning: str | None  # "Enabled", "Suspended", "Off"; None = could not be read
    versioning_unknown_why: str | None
    lock_enabled: bool | None  # None = could not be read
    lock_unknown_why: str | None
    default_mode: str | None  # the bucket's default retention rule, if any
    default_period: str | None  # e.g. "30 days"

    @property
    def versioned(self) -> bool:
        """Whether puts may create versions (unknown counts as yes: the careful assumption)."""
        return self.versioning != "Off" or bool(self.lock_enabled)

    def writes_retention(self, cfg: S3Config) -> bool:
        return bool(self.lock_enabled) and cfg.lock_mode is not LockMode.NONE

    def lock_summary(self, cfg: S3Config) -> str:
        """One plain sentence: is the bucket locked, what default applies, what this destination writes."""
        if self.lock_enabled is None:
            return (
                f"object lock: unknown ({self.lock_unknown_why}); parts are written WITHOUT retention until "
                "the credentials may read the bucket's object lock configuration "
                "(s3:GetBucketObjectLockConfiguration)"
            )
        if not self.lock_enabled:
            return (
                "object lock: NOT enabled on this bucket; backups here can be deleted or overwritten by anyone "
                "with delete permission (object lock can only be chosen when a bucket is created on most servers)"
            )
        default = (
            f"bucket default retention {self.default_mode} {self.default_period}"
            if self.default_mode
            else "no bucket default retention"
        )
        if cfg.lock_mode is LockMode.NONE:
            written = "this destination writes no retention (lock mode none)"
        else:
            written = f"this destination writes {cfg.lock_mode.header} retention for {cfg.lock_days} days on every part"
        return f"object lock: enabled; {default}; {written}"

    def versioning_summary(self) -> str:
        if self.versioning is None:
            return f"versioning: unknown ({self.versioning_unknown_why})"
        if self.versioning == "Enabled":
            return (
                "versioning: enabled; a delete by this destination removes every version of the file, an "
                "overwrite by anyone else adds a version and never changes the one written"
            )
        if self.versioning == "Suspended":
            return "versioning: suspended; an overwrite replaces the unversioned copy"
        return "versioning: not enabled; an overwrite or delete by anyone with write permission is final"


def read_protection(client: S3Client) -> Protection:
    versioning, versioning_why = _versioning(client)
    lock, lock_why, mode, period = _object_lock(client)
    return Protection(versioning, versioning_why, lock, lock_why, mode, period)


def _versioning(client: S3Client) -> tuple[str | None, str | None]:
    try:
        config = client.call(
            "reading versioning", lambda: client.minio.get_bucket_versioning(client.cfg.bucket)
        )
    except DestinationError as exc:
        return None, f"the versioning status could not be read: {exc}"
    status = config.status
    return (status if status in ("Enabled", "Suspended") else "Off"), None


def _object_lock(client: S3Client) -> tuple[bool | None, str | None, str | None, str | None]:
    """(enabled, why unknown, default mode, default period) from GET ?object-lock (raw: minio-py
    drops ``ObjectLockEnabled``)."""

    def fetch() -> bytes:
        try:
            response = client.minio._execute("GET", client.cfg.bucket, query_params={"object-lock": ""})
        except S3Error as exc:
            if exc.code in LOCK_NOT_CONFIGURED:
                return b""
            raise
        return bytes(response.data)

    try:
        body = client.call("reading the object lock configuration", fetch)
    except DestinationError as exc:
        return None, f"it could not be read: {exc}", None, None
    if not body:
        return False, None, None, None
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return None, "the server answered something that is not an object lock configuration", None, None
    enabled = _text(root, "ObjectLockEnabled") == "Enabled"
    mode = _text(root, "Rule/DefaultRetention/Mode")
    days, years = _text(root, "Rule/DefaultRetention/Days"), _text(root, "Rule/DefaultRetention/Years")
    period = f"{days} days" if days else (f"{years} years" if years else None)
    return enabled, None, mode, period


def _text(root: ElementTree.Element, path: str) -> str | None:
    parts = "/".join(f"{{*}}{p}" for p in path.split("/"))
    found = root.find(parts)
    return found.text.strip() if found is not None and found.text else None
