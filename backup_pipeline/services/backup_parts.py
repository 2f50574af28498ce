"""The backup set contract other jobs read: backup ids, part names, file names, properties, error codes.

Restore, retention, verification and the ledger find a backup set on the destination by
these names and properties alone, so they are a stable contract (documented in
docs/architecture/BACKUP-STRATEGY.md). Change them only together with a format version bump.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

#: Value of the ``app`` property on every file this pipeline writes.
APP_NAME = "backup_pipeline"
#: Version of the backup *set* layout (part naming, properties, manifest-last rule).
SET_FORMAT_VERSION = "1"

# Destination file properties (Drive appProperties; key + value <= 124 bytes each).
PROP_APP = "app"
PROP_INSTALLATION = "installationId"
PROP_BACKUP_ID = "backupId"
PROP_PART_NAME = "partName"
PROP_PART_KIND = "partKind"
PROP_FORMAT_VERSION = "formatVersion"
#: Only on the files of a safety set (``SET_KIND_SAFETY``); absent means a regular backup.
PROP_SET_KIND = "setKind"

#: A backup made by the schedule or on request: what ``latest`` and retention's keep-last-N mean.
SET_KIND_REGULAR = "regular"
#: The database-only backup a restore makes of the database it is about to replace ("pre-restore").
SET_KIND_SAFETY = "safety"
#: The ``trigger`` a safety set's manifest ``versions`` and ledger metadata carry.
TRIGGER_PRE_RESTORE = "pre-restore"

PART_DATABASE = "database"
PART_MANIFEST = "manifest"
#: Written instead of the manifest by a seeding run (a first full larger than Drive's daily
#: upload cap, docs/architecture/BACKUP-STRATEGY.md "Seeding across days"): a manifest document
#: under another name, so nothing that looks for ``manifest`` takes the set for a backup.
PART_SEED = "seed-checkpoint"
BUCKET_PART_PREFIX = "bucket-"
#: ``inventory-<bucket>``: every object of the bucket and where its body lives (format 2 sets).
INVENTORY_PART_PREFIX = "inventory-"
#: ``index-<bucket>``: the part index of ``bucket-<bucket>`` (archive/part_index.py).
INDEX_PART_PREFIX = "index-"
#: Between a bucket name and a shard number in a sharded bucket's parts (``bucket-<name>@0001``,
#: ``index-<name>@0001``): ``@`` is in no S3 bucket name (not even the legacy ones), so no
#: bucket's own part can look like another bucket's shard (a ``.``, ``-`` or ``_`` suffix could),
#: and it is one of the characters a part name may hold (archive/stream_crypto.py).
SHARD_SEPARATOR = "@"
#: Reserved key prefix of a restore's undo copies (``services/restore/undo_journal.py``): such
#: objects are the restore's own, never backed up (and so never restored).
UNDO_PREFIX = ".bp-restore-undo/"

KIND_DATABASE = "database"
KIND_BUCKET = "bucket"
KIND_MANIFEST = "manifest"
KIND_INVENTORY = "inventory"
KIND_INDEX = "index"
KIND_SEED = "seed"

_BACKUP_ID = re.compile(r"^(\d{8}T\d{6}Z)-([0-9a-f]{8})$")
_MAPPING_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def new_backup_id(now: datetime | None = None, run_id: str | None = None) -> str:
    """``<UTC yyyymmddThhmmssZ>-<8 hex>``: sorts by time, unique, tied to the run when given."""
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    suffix = (run_id or uuid.uuid4().hex).replace("-", "")[:8].lower()
    return f"{stamp}-{suffix}"


def is_backup_id(value: str) -> bool:
    return bool(_BACKUP_ID.match(value))


def backup_id_time(backup_id: str) -> datetime:
    match = _BACKUP_ID.match(backup_id)
    if not match:
        raise ValueError(f"not a backup id: {backup_id!r} (expected yyyymmddThhmmssZ-xxxxxxxx)")
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def bucket_part_name(bucket: str) -> str:
    """S3 bucket names are already [a-z0-9.-], safe inside a file name."""
    return f"{BUCKET_PART_PREFIX}{bucket}"


def shard_part_name(bucket: str, number: int) -> str:
    """The bucket part of shard ``number`` (1-based, in key order) of a sharded bucket."""
    return f"{BUCKET_PART_PREFIX}{bucket}{SHARD_SEPARATOR}{number:04d}"


def bucket_of_part(part_name: str) -> str:
    """The bucket a ``bucket-…`` part holds objects of (its own part or one of its shards)."""
    return part_name.removeprefix(BUCKET_PART_PREFIX).split(SHARD_SEPARATOR, 1)[0]


def part_kind(part_name: str) -> str:
    if part_name == PART_DATABASE:
        return KIND_DATABASE
    if part_name == PART_MANIFEST:
        return KIND_MANIFEST
    if part_name == PART_SEED:
        return KIND_SEED
    if part_name.startswith(BUCKET_PART_PREFIX):
        return KIND_BUCKET
    if part_name.startswith(INVENTORY_PART_PREFIX):
        return KIND_INVENTORY
    if part_name.startswith(INDEX_PART_PREFIX):
        return KIND_INDEX
    raise ValueError(f"unknown part name {part_name!r}")


def set_name(installation_id: str, backup_id: str) -> str:
    """Readable prefix shared by every file of one set: ``<installation>-<backup id>``.

    The backup id starts with the UTC time, so this is ``<installation>-<timestamp>-<random>``.
    """
    return f"{installation_id}-{backup_id}"


def part_file_name(installation_id: str, backup_id: str, part_name: str) -> str:
    """Flat file name (works on destinations without folders): ``<set name>.<part>.bpenc``."""
    return f"{set_name(installation_id, backup_id)}.{part_name}.bpenc"


def part_properties(
    installation_id: str, backup_id: str, part_name: str, set_kind: str = SET_KIND_REGULAR
) -> dict[str, str]:
    properties = {
        PROP_APP: APP_NAME,
        PROP_INSTALLATION: installation_id,
        PROP_BACKUP_ID: backup_id,
        PROP_PART_NAME: part_name,
        PROP_PART_KIND: part_kind(part_name),
        PROP_FORMAT_VERSION: SET_FORMAT_VERSION,
    }
    if set_kind != SET_KIND_REGULAR:
        properties[PROP_SET_KIND] = set_kind
    return properties


def set_kind_of(properties: Iterable[dict[str, str]]) -> str:
    """The kind of a set from its files' properties: safety when any file says so."""
    for props in properties:
        if props.get(PROP_SET_KIND) == SET_KIND_SAFETY:
            return SET_KIND_SAFETY
    return SET_KIND_REGULAR


def set_properties(installation_id: str, backup_id: str) -> dict[str, str]:
    """Properties selecting every file of one set (for ``Destination.list``)."""
    return {PROP_APP: APP_NAME, PROP_INSTALLATION: installation_id, PROP_BACKUP_ID: backup_id}


def mapping_key(bucket: str, taken: set[str] | None = None) -> str:
    """A DynamicOutput mapping key (``^[A-Za-z0-9_]+$``) for a bucket; unique within ``taken``."""
    base = _MAPPING_KEY_UNSAFE.sub("_", bucket) or "bucket"
    key, n = base, 2
    while taken is not None and key in taken:
        key, n = f"{base}_{n}", n + 1
    if taken is not None:
        taken.add(key)
    return key


class BackupError(Exception):
    """A backup step failed in a way an operator can act on.

    ``code`` is stable (alerts, the run's Failure metadata and docs refer to it); the message
    is readable and never contains a secret.
    """

    def __init__(self, code: str, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class ErrorCode:
    """Stable error codes of the backup job (see BACKUP-STRATEGY.md § Failures)."""

    LOCKED = "BACKUP_LOCKED"
    PG_DUMP_NOT_FOUND = "PG_DUMP_NOT_FOUND"
    PG_DUMP_TOO_OLD = "PG_DUMP_TOO_OLD"
    # restore_job and storage_health_job: pg_dump/pg_restore missing, or older than the server.
    PG_TOOLS_UNUSABLE = "PG_TOOLS_UNUSABLE"
    DATABASE_UNREACHABLE = "DATABASE_UNREACHABLE"
    PG_DUMP_FAILED = "PG_DUMP_FAILED"
    SCHEMA_VERSION_QUERY_FAILED = "SCHEMA_VERSION_QUERY_FAILED"
    S3_UNREACHABLE = "S3_UNREACHABLE"
    S3_ERROR = "S3_ERROR"
    BUCKET_NOT_FOUND = "BUCKET_NOT_FOUND"
    DESTINATION_UNAVAILABLE = "DESTINATION_UNAVAILABLE"
    DESTINATION_QUOTA = "DESTINATION_QUOTA_EXCEEDED"
    DAILY_CAP = "DAILY_UPLOAD_CAP_EXCEEDED"
    VERIFY_FAILED = "PART_VERIFY_FAILED"
    PART_MISSING = "PART_MISSING"
    KEYS_UNAVAILABLE = "KEYS_UNAVAILABLE"
    INTERNAL = "BACKUP_INTERNAL_ERROR"
