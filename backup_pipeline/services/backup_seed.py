"""Seeding across days: a backup larger than what is left of Drive's daily upload cap.

docs/architecture/BACKUP-STRATEGY.md, "Seeding across days", has the rules. In short: with
incremental object backups, ``plan_budget`` gives each bucket a byte budget; the export archives
new/changed objects while the budget holds them and *defers* the rest (left out of the bucket
part and of the inventory); ``finalize`` then writes a seed checkpoint instead of the manifest
when anything was deferred, and the next run continues from that checkpoint.

Plain functions; the ops (``ops/backup.py``) call them and report what they return.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..archive.keys import OrgKeyring
from ..destinations.base import Capacity, DailyCapError, Destination, DestinationError, decimal_bytes
from .backup_parts import PART_MANIFEST, PART_SEED, PROP_PART_NAME, BackupError, ErrorCode
from .backup_upload import list_sets

#: tar header + pax record + padding + gzip member framing of one object, counted with its size
#: before it is read (AES-GCM adds a little per chunk; the margin of the cap covers the rest).
FRAMING_BYTES_PER_OBJECT = 4096
#: Run tag a seeding run ends with (the run succeeded, but no complete set exists yet).
OUTCOME_TAG = "backup_pipeline/outcome"
OUTCOME_SEEDING = "seeding"
#: ``event`` of the ``backup_set`` observation a seeding run logs.
SEEDING_EVENT = "seeding"


@dataclass(frozen=True)
class UploadBudget:
    """How much this run may upload, per bucket (object bytes plus framing)."""

    per_bucket: dict[str, int]
    remaining: int  # what is left of the 24-h window now
    cap: int | None
    window_frees: tuple[float, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_bucket": dict(self.per_bucket),
            "remaining": self.remaining,
            "cap": self.cap,
            "window_frees": list(self.window_frees) if self.window_frees else None,
        }


def plan_budget(
    cap: Capacity | None,
    *,
    database_bytes: int,
    bucket_bytes: Mapping[str, int],
    incremental: bool,
    covered: Mapping[str, int] | None = None,
    margin_share: float,
    where: str,
) -> UploadBudget | None:
    """``None`` when the whole upload fits what is left of the daily cap (a normal run).

    Otherwise the budget of a seeding run: what is left, minus ``margin_share`` of the cap, minus the
    database (uploaded whole), split between the buckets in proportion to the bytes still to upload
    (listed bytes less what the seed ``covered`` already, at least 1 per bucket).
    Raises ``DailyCapError`` when seeding is impossible: incremental object backups are off, or
    nothing is left of the window.
    """
    if cap is None or cap.daily_upload_remaining is None:
        return None
    estimate = database_bytes + sum(bucket_bytes.values())
    left = cap.daily_upload_remaining
    if estimate <= left:
        return None
    need = f"the backup needs about {decimal_bytes(estimate)} but only {decimal_bytes(left)} remains"
    if not incremental:
        raise DailyCapError(
            f"{where}: {need} of today's upload allowance (Google Drive allows 750 GB per user per day). "
            "A store larger than a day's allowance can be backed up only with incremental object backups "
            "(BACKUP_PIPELINE_INCREMENTAL_OBJECTS=true): the first full is then spread over several runs. "
            "Otherwise run the backup after the 24-hour window resets."
        )
    margin = int((cap.daily_upload_cap or left) * margin_share)
    budget = left - margin - database_bytes
    if budget <= 0:
        raise DailyCapError(
            f"{where}: {need} of today's upload allowance, too little to continue seeding (a margin of "
            f"{decimal_bytes(margin)} is kept and the database takes about {decimal_bytes(database_bytes)}). "
            + window_text(cap.daily_window_frees)
        )
    done = covered or {}
    todo = {name: max(1, size - done.get(name, 0)) for name, size in bucket_bytes.items()}
    total = sum(todo.values()) or 1
    per_bucket = {name: budget * size // total for name, size in todo.items()}
    return UploadBudget(per_bucket, left, cap.daily_upload_cap, cap.daily_window_frees)


def window_text(frees: tuple[float, int] | None) -> str:
    """``continues after 14:05 UTC, when the 24-hour window frees 412 GB`` (or the next run)."""
    if not frees:
        return "It continues at the next run."
    at = datetime.fromtimestamp(frees[0], UTC).strftime("%Y-%m-%d %H:%M")
    return f"It continues at the next run after {at} UTC, when the 24-hour window frees {decimal_bytes(frees[1])}."


@dataclass
class BucketBudget:
    """One bucket's share of the run's budget, taken object by object before it is read."""

    left: int
    #: A whole day's budget (the cap less the margin): an object above it can never be uploaded.
    day: int | None = None
    deferred_objects: int = 0
    deferred_bytes: int = 0
    first_deferred: str | None = None

    def take(self, key: str, size: int) -> bool:
        """Whether the object fits (then it is counted); a deferred one is counted as such."""
        cost = size + FRAMING_BYTES_PER_OBJECT
        if self.day is not None and cost > self.day:
            raise BackupError(
                ErrorCode.DAILY_CAP,
                f"object {key!r} ({decimal_bytes(size)}) is larger than a whole day's upload allowance "
                f"({decimal_bytes(self.day)}): it can never be uploaded to Google Drive",
            )
        if cost <= self.left:
            self.left -= cost
            return True
        self.deferred_objects += 1
        self.deferred_bytes += size
        self.first_deferred = self.first_deferred or key
        return False


def day_budget(cap: int | None, margin_share: float, database_bytes: int) -> int | None:
    return None if cap is None else int(cap * (1 - margin_share)) - database_bytes


def is_seeding(buckets: Iterable[Mapping[str, Any]]) -> bool:
    """A run that deferred objects: it writes a seed checkpoint, not a manifest."""
    return any(((b.get("incremental") or {}).get("deferred_objects") or 0) > 0 for b in buckets)


def seed_progress(buckets: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Object bytes the seed covers (uploaded by this or earlier seeding runs) of the bucket total."""
    covered = total = deferred = deferred_bytes = 0
    for b in buckets:
        inc = b.get("incremental") or {}
        covered += int(inc.get("total_bytes", b.get("object_bytes", 0)))
        deferred += int(inc.get("deferred_objects", 0))
        deferred_bytes += int(inc.get("deferred_bytes", 0))
    total = covered + deferred_bytes
    return {
        "covered_bytes": covered,
        "total_bytes": total,
        "deferred_objects": deferred,
        "deferred_bytes": deferred_bytes,
    }


def seeding_message(progress: Mapping[str, int], frees: tuple[float, int] | None) -> str:
    """What the administrator reads in the run, the log and the ``backup_set`` observation."""
    return (
        f"seeding: {decimal_bytes(progress['covered_bytes'])} of {decimal_bytes(progress['total_bytes'])} "
        f"uploaded ({progress['deferred_objects']} objects, {decimal_bytes(progress['deferred_bytes'])} left). "
        "This backup is NOT complete and cannot be restored yet: Google Drive's daily upload cap spreads "
        "the first full over several runs. " + window_text(frees)
    )


def covered_by_seed(
    destination: Destination, keyring: Callable[[], OrgKeyring], installation_id: str
) -> dict[str, int]:
    """Object bytes per bucket the newest seed checkpoint already covers ({} when no seed is under way).

    A seed is under way when the newest set that has a manifest or a checkpoint has the checkpoint.
    The budget is split by what is *left* per bucket, so a bucket whose share of the listed bytes
    is small still gets the whole budget once the others are seeded (no object waits forever).
    """
    from ..archive.errors import ArchiveError
    from .reachability import read_manifest

    sets = list_sets(destination, installation_id)
    for backup_id in sorted(sets, reverse=True):
        files = {f.properties.get(PROP_PART_NAME): f for f in sets[backup_id]}
        if PART_MANIFEST in files:
            return {}
        if PART_SEED in files:
            try:
                manifest = read_manifest(destination, keyring(), backup_id, files[PART_SEED], PART_SEED)
            except (ArchiveError, DestinationError, OSError, ValueError):
                return {}  # the export finds it unusable too, and says so
            return {b.bucket: int(b.total_bytes or 0) for b in manifest.buckets}
    return {}
