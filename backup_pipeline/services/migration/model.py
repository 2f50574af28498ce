"""What the migration works with: constants of the application's schema, the reasons a file fails, errors, options, and the results of an asset, a batch and a run."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from backup_pipeline.destinations.base import StoredFile

#: media_assets.storage_provider values.
PROVIDER_DRIVE = "google_drive"


PROVIDER_MINIO = "minio"


#: Object keys of migrated assets: ``<prefix><asset id>/<safe file name>`` in the primary bucket.
DEFAULT_KEY_PREFIX = "drive-migrated/"


#: The phrase ``delete_source`` must be confirmed with, typed exactly.
DELETE_SOURCE_CONFIRMATION = "delete migrated files from google drive"


#: Multipart part size: one part is buffered per concurrent upload (memory = concurrency × part).
DEFAULT_PART_SIZE = 16 * 1024 * 1024


MAX_KEY_NAME_BYTES = 200


_HASH_READ = 1024 * 1024


STATUSES = ("pending", "copied", "verified", "switched", "failed")


# Failure reasons (the part of ``storage_migration.error`` before the first colon; summaries
# count by it). Each says whether a rerun can help on its own.
REASON_TRASHED = "in the Google Drive trash"


REASON_NOT_FOUND = "not found in Google Drive"


REASON_NO_CONTENT = "Google Docs file or shortcut (no binary content)"


REASON_RECORDED_MISMATCH = "recorded values differ from Google Drive"


REASON_CHECKSUM = "checksum mismatch"


REASON_DRIVE_ERROR = "Google Drive error"


class MigrationError(Exception):
    """The run cannot go on (bad options, storage unavailable); the message says why."""


class StorageUnavailable(MigrationError):
    """MinIO could not be reached or refused the request: the run stops, the next run continues."""

    reason = "MinIO unavailable"


class DriveUnavailable(MigrationError):
    """Google Drive did not answer after the destination's retries (down, throttling, network):
    the run stops rather than failing every remaining asset the same way; the next run continues."""

    reason = "Google Drive unavailable"


#: Errors that stop a run: every asset after them would fail the same way.
RUN_STOPPERS = (StorageUnavailable, DriveUnavailable)


def stopped_text(exc: StorageUnavailable | DriveUnavailable) -> str:
    """The message, led by the reason: summaries count reasons by the text before the first colon."""
    text = str(exc)
    return text if text.startswith(exc.reason) else f"{exc.reason}: {text}"


class AssetFailed(Exception):
    """This asset cannot be migrated now; ``reason`` is a short class, the message the detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class DriveFiles(Protocol):
    """The part of the destination contract (``destinations/base.py``) the migration reads."""

    def stat(self, file_id: str) -> StoredFile: ...

    def get(self, file_id: str, start: int = 0, end: int | None = None) -> Iterator[bytes]: ...

    def delete(self, file_id: str) -> None: ...


@dataclass(frozen=True)
class MigrationOptions:
    dry_run: bool = False
    batch_size: int = 50
    concurrency: int = 4
    delete_source: bool = False
    confirmation: str | None = None
    part_size: int = DEFAULT_PART_SIZE
    key_prefix: str = DEFAULT_KEY_PREFIX

    def validate(self) -> None:
        problems = []
        if not 1 <= self.batch_size <= 10_000:
            problems.append(f"batch_size must be between 1 and 10000, got {self.batch_size}")
        if not 1 <= self.concurrency <= 16:
            problems.append(f"concurrency must be between 1 and 16, got {self.concurrency}")
        if not 5 * 1024 * 1024 <= self.part_size <= 512 * 1024 * 1024:
            problems.append("part_size must be between 5 MiB (S3's minimum) and 512 MiB")
        if self.key_prefix.startswith("/") or (self.key_prefix and not self.key_prefix.endswith("/")):
            problems.append(
                f"key_prefix must be empty or end with '/' and not start with '/', got {self.key_prefix!r}"
            )
        if self.delete_source and (self.confirmation or "").strip() != DELETE_SOURCE_CONFIRMATION:
            problems.append(
                f"delete_source needs the confirmation phrase typed exactly: {DELETE_SOURCE_CONFIRMATION!r}"
            )
        if problems:
            raise MigrationError("invalid migration options: " + "; ".join(problems))


@dataclass(frozen=True)
class LegacyAsset:
    """A media_assets row still in Google Drive. ``id`` keeps the column's own type; ``recorded_*``
    are the size and checksums the application recorded (None where it recorded none)."""

    id: Any
    drive_file_id: str
    filename: str | None
    content_type: str | None
    recorded_sha256: str | None = None
    recorded_size: int | None = None
    recorded_md5: str | None = None

    @property
    def key(self) -> str:
        return str(self.id)


@dataclass
class AssetOutcome:
    asset_id: str
    result: str  # moved | adopted | skipped | failed | not_attempted
    bytes: int = 0
    reason: str | None = None
    error: str | None = None
    #: The server serves the object with another Content-Type than the one sent (it is
    #: migrated: the bytes are verified and the application's recorded type is kept).
    served_content_type: str | None = None
    sent_content_type: str | None = None


#: How many "stored differently" examples a result keeps (the count is exact).
STORED_DIFFERENTLY_EXAMPLES = 20


@dataclass
class BatchResult:
    moved: int = 0
    adopted: int = 0
    skipped: int = 0
    failed: int = 0
    not_attempted: int = 0
    bytes_moved: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    fatal: str | None = None
    stored_differently: int = 0
    stored_differently_examples: list[dict[str, str]] = field(default_factory=list)

    def add(self, outcome: AssetOutcome) -> None:
        if outcome.served_content_type is not None:
            self.stored_differently += 1
            if len(self.stored_differently_examples) < STORED_DIFFERENTLY_EXAMPLES:
                self.stored_differently_examples.append(
                    {
                        "asset_id": outcome.asset_id,
                        "sent_content_type": outcome.sent_content_type or "",
                        "served_content_type": outcome.served_content_type,
                    }
                )
        if outcome.result == "moved":
            self.moved += 1
            self.bytes_moved += outcome.bytes
        elif outcome.result == "adopted":
            self.adopted += 1
        elif outcome.result == "skipped":
            self.skipped += 1
        elif outcome.result == "failed":
            self.failed += 1
            self.failures.append(
                {"asset_id": outcome.asset_id, "reason": outcome.reason or "", "error": outcome.error or ""}
            )
        else:
            self.not_attempted += 1

    def merge(self, other: BatchResult) -> None:
        for name in (
            "moved",
            "adopted",
            "skipped",
            "failed",
            "not_attempted",
            "bytes_moved",
            "stored_differently",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failures.extend(other.failures)
        room = STORED_DIFFERENTLY_EXAMPLES - len(self.stored_differently_examples)
        self.stored_differently_examples.extend(other.stored_differently_examples[: max(0, room)])
        self.fatal = self.fatal or other.fatal

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchResult:
        return cls(**data)


@dataclass
class MigrationSummary:
    """What a run did and what is left; ``settings_flipped`` only when nothing is left in Drive."""

    dry_run: bool
    moved: int
    adopted: int
    skipped: int
    failed: int
    not_attempted: int
    bytes_moved: int
    remaining_in_drive: int
    failure_reasons: dict[str, int]
    failures: list[dict[str, str]]
    settings_flipped: bool
    settings_message: str
    sources_deleted: int = 0
    would_move: int = 0
    would_move_bytes: int = 0
    would_fail: int = 0
    #: Why the run stopped before trying every asset (MinIO or Google Drive unavailable), if it did.
    stopped: str | None = None
    #: Objects the S3 server serves with another Content-Type than the one sent (see AssetOutcome).
    stored_differently: int = 0
    stored_differently_examples: list[dict[str, str]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.remaining_in_drive == 0 and not self.dry_run

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["complete"] = self.complete
        return data
