"""What the S3 destination needs to know: endpoint, bucket, prefix, lock mode — and its credentials.

The access key pair is never a setting: it is read, when the destination first talks to the
server, from an AWS shared-credentials file (path in settings) or from two environment
variables. Neither the pair nor the file's content appears in ``repr``, errors or logs.
"""

from __future__ import annotations

import configparser
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from ..base import AuthError

ACCESS_KEY_ENV = "BACKUP_PIPELINE_S3_DESTINATION_ACCESS_KEY"
SECRET_KEY_ENV = "BACKUP_PIPELINE_S3_DESTINATION_SECRET_KEY"
CREDENTIALS_FILE_SETTING = "BACKUP_PIPELINE_S3_DESTINATION_CREDENTIALS_FILE"

MiB = 1024 * 1024
#: S3's smallest part (every part but the last); SeaweedFS refuses smaller ones at completion too.
MIN_PART_SIZE = 5 * MiB
#: S3 allows at most 10 000 parts per upload: 16 MiB parts cover 156 GiB, 512 MiB parts 4.8 TiB.
MAX_PARTS = 10_000
#: The lock a connection check puts on its probe: long enough to try (and fail) to delete it.
PROBE_LOCK = timedelta(minutes=2)


class LockMode(StrEnum):
    """The retention mode written on every part and manifest when the bucket has object lock enabled."""

    GOVERNANCE = "governance"  # deletable early only by a principal with s3:BypassGovernanceRetention
    COMPLIANCE = "compliance"  # nobody, not even the account root, can delete or shorten it
    NONE = "none"  # write no retention (the bucket's default rule, if any, still applies)

    @property
    def header(self) -> str:
        return self.value.upper()


@dataclass(frozen=True)
class Credentials:
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)


CredentialsLoader = Callable[[], Credentials]


def credentials_from(
    file: str | None,
    environ: dict[str, str] | None = None,
    *,
    access_env: str = ACCESS_KEY_ENV,
    secret_env: str = SECRET_KEY_ENV,
) -> CredentialsLoader:
    """A loader reading the key pair from ``file`` (AWS shared-credentials format) or the environment
    (``access_env`` / ``secret_env``: a named destination has its own pair)."""

    def load() -> Credentials:
        if file:
            return _from_file(Path(file))
        env = os.environ if environ is None else environ
        access, secret = env.get(access_env, ""), env.get(secret_env, "")
        if not access or not secret:
            missing = [name for name, value in ((access_env, access), (secret_env, secret)) if not value]
            raise AuthError(
                f"S3 destination credentials: {' and '.join(missing)} not set; set both, or point "
                f"{CREDENTIALS_FILE_SETTING} at a credentials file"
            )
        return Credentials(access, secret)

    return load


def _from_file(path: Path) -> Credentials:
    """``[default]`` (or the only section) with ``aws_access_key_id`` and ``aws_secret_access_key``."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AuthError(
            f"{CREDENTIALS_FILE_SETTING}: cannot read {path} ({exc.strerror or type(exc).__name__})"
        ) from None
    try:
        parser.read_string(text)
    except configparser.Error:
        # The parser's message quotes the offending line, which may hold the secret.
        raise AuthError(
            f"{CREDENTIALS_FILE_SETTING}: {path} is not an AWS credentials file "
            "([default] with aws_access_key_id = … and aws_secret_access_key = …)"
        ) from None
    sections = parser.sections()
    section = "default" if "default" in sections else (sections[0] if len(sections) == 1 else None)
    if section is None:
        raise AuthError(
            f"{CREDENTIALS_FILE_SETTING}: {path} has {len(sections)} sections and none named [default]; "
            "keep one profile in this file"
        )
    access = parser.get(section, "aws_access_key_id", fallback="").strip()
    secret = parser.get(section, "aws_secret_access_key", fallback="").strip()
    missing = [k for k, v in (("aws_access_key_id", access), ("aws_secret_access_key", secret)) if not v]
    if missing:
        raise AuthError(f"{CREDENTIALS_FILE_SETTING}: [{section}] in {path} lacks {' and '.join(missing)}")
    return Credentials(access, secret)


def lock_days_for(keep_last: int, interval_hours: int, margin_days: int) -> int:
    """Default retention of a set: when keep-last-N would delete it, plus a margin.

    A set is deleted once ``keep_last`` newer complete sets exist, i.e. about ``keep_last``
    schedule intervals after it was written: ``ceil(keep_last × interval_hours / 24) +
    margin_days``. The margin covers a late or failed backup (the set is then kept longer than
    planned and must stay locked meanwhile); retention reports a set it cannot delete yet as
    "locked until …" and deletes it on a later run.
    """
    return math.ceil(keep_last * interval_hours / 24) + margin_days


@dataclass(frozen=True)
class S3Config:
    """Everything but the credentials; safe to log."""

    endpoint: str  # http(s)://host[:port]
    bucket: str
    prefix: str = ""  # "" or "a/b/"
    region: str = "us-east-1"
    storage_class: str | None = None
    part_size: int = 16 * MiB
    lock_mode: LockMode = LockMode.GOVERNANCE
    lock_days: int = 9
    state_dir: str = ".backup_pipeline_state"
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    #: HEAD requests in flight while a listing reads the properties of one page.
    list_workers: int = 8

    def __post_init__(self) -> None:
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"S3 destination endpoint must be http(s)://host[:port], got {self.endpoint!r}")
        if self.prefix and not self.prefix.endswith("/"):
            object.__setattr__(self, "prefix", self.prefix + "/")
        if self.part_size < MIN_PART_SIZE:
            raise ValueError(f"S3 part size must be at least {MIN_PART_SIZE} bytes (S3's minimum part)")

    @property
    def secure(self) -> bool:
        return urlsplit(self.endpoint).scheme == "https"

    @property
    def netloc(self) -> str:
        return urlsplit(self.endpoint).netloc

    @property
    def description(self) -> str:
        return f"S3 bucket s3://{self.bucket}/{self.prefix} at {self.endpoint}"

    def retain_until(self, now: datetime | None = None) -> datetime:
        """The retention date of a part written now (whole seconds, UTC)."""
        moment = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        return moment + timedelta(days=self.lock_days, seconds=1)
