"""Seeding across days: a backup larger than what is left of Drive's daily upload cap.

docs/architecture/BACKUP-STRATEGY.md, "Seeding across days", has the rules. In short: with
incremental object backups, ``plan_budget`` gives each bucket a byte budget (what is left of the
day's cap, at most the per-run budget ``seed_run_budget_bytes``) and says whether the run will
certainly end as seeding (then it dumps no database); the export archives new/changed objects
while the budget holds them and *defers* the rest (left out of the bucket part and of the
inventory); ``finalize`` then writes a seed checkpoint instead of the manifest when anything was
deferred (or no database was dumped), and the next run continues from that checkpoint. The
``continue_seed`` sensor (``seed_sensor.py``) starts that next run while the 24-hour window has
room (``seed_outlook``: what it needs, ``room_at``: when it has it).

Plain functions; the ops (``ops/backup.py``) call them and report what they return.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
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
#: What ``dump_database`` records in a run that will end as seeding (no dump: a seed is not restorable).
DUMP_NOT_NEEDED = "not needed: seeding run"


@dataclass(frozen=True)
class UploadBudget:
    """How much this run may upload, per bucket (object bytes plus framing)."""

    per_bucket: dict[str, int]
    remaining: int  # what is left of the 24-h window now
    cap: int | None
    window_frees: tuple[float, int] | None = None
    #: Per bucket, the bucket's share of the *day's* budget: the first object a bucket takes in a run
    #: may exceed its run share up to this (an object above the run budget is not deferred forever).
    alone: dict[str, int] = field(default_factory=dict)
    #: The per-run budget that applied (``seed_run_budget_bytes``), or None.
    run_budget: int | None = None
    #: Certain before anything is exported: some bucket has more to upload than its budget takes,
    #: so the run ends as seeding and needs no database dump.
    ends_seeding: bool = False
    #: Object bytes still to upload (listed bytes less what the seed covers), as the plan sees it.
    pending_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_bucket": dict(self.per_bucket),
            "remaining": self.remaining,
            "cap": self.cap,
            "window_frees": list(self.window_frees) if self.window_frees else None,
            "alone": dict(self.alone),
            "run_budget": self.run_budget,
            "ends_seeding": self.ends_seeding,
            "pending_bytes": self.pending_bytes,
        }


@dataclass(frozen=True)
class SeedCoverage:
    """What the newest seed checkpoint already holds, per bucket (empty when no seed is under way)."""

    bytes: dict[str, int] = field(default_factory=dict)
    objects: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.bytes)


def plan_budget(
    cap: Capacity | None,
    *,
    database_bytes: int,
    bucket_bytes: Mapping[str, int],
    incremental: bool,
    covered: Mapping[str, int] | None = None,
    margin_share: float,
    where: str,
    run_budget: int | None = None,
    bucket_objects: Mapping[str, int] | None = None,
    covered_objects: Mapping[str, int] | None = None,
) -> UploadBudget | None:
    """``None`` for a normal run: the whole upload fits what is left of the daily cap and no seed is
    under way that has more left than ``run_budget``.

    Otherwise the budget of a seeding run: what is left, minus ``margin_share`` of the cap, minus the
    database (uploaded whole by the run that completes the set), at most ``run_budget``, split between
    the buckets in proportion to the bytes still to upload (listed bytes less what the seed
    ``covered`` already, at least 1 per bucket).
    Raises ``DailyCapError`` when seeding is impossible: incremental object backups are off, or
    nothing is left of the window.
    """
    if cap is None or cap.daily_upload_remaining is None:
        return None
    done = covered or {}
    pending = {name: max(0, size - done.get(name, 0)) for name, size in bucket_bytes.items()}
    estimate = database_bytes + sum(bucket_bytes.values())
    left = cap.daily_upload_remaining
    fits = estimate <= left
    # A seed under way continues in runs of at most run_budget even when the window could hold it all.
    continuing = bool(done) and run_budget is not None and sum(pending.values()) > run_budget
    if fits and not continuing:
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
    day_left = left - margin - database_bytes
    if day_left <= 0:
        if fits:
            return None
        raise DailyCapError(
            f"{where}: {need} of today's upload allowance, too little to continue seeding (a margin of "
            f"{decimal_bytes(margin)} is kept and the database takes about {decimal_bytes(database_bytes)}). "
            + window_text(cap.daily_window_frees)
        )
    budget = day_left if run_budget is None else min(day_left, run_budget)
    todo = {name: max(1, size) for name, size in pending.items()}
    total = sum(todo.values()) or 1
    per_bucket = {name: budget * size // total for name, size in todo.items()}
    alone = {name: day_left * size // total for name, size in todo.items()}
    return UploadBudget(
        per_bucket,
        left,
        cap.daily_upload_cap,
        cap.daily_window_frees,
        alone=alone,
        run_budget=run_budget,
        ends_seeding=any(
            _defers_certainly(
                pending[name],
                per_bucket[name],
                None
                if bucket_objects is None
                else bucket_objects.get(name, 0) - (covered_objects or {}).get(name, 0),
            )
            for name in pending
        ),
        pending_bytes=sum(pending.values()),
    )


def _defers_certainly(pending_bytes: int, share: int, new_objects_at_least: int | None) -> bool:
    """Whether a bucket with ``pending_bytes`` to upload must defer something under ``share``.

    Every new or changed object costs at least its size, and together they are at least the listed
    bytes the seed does not cover: more than the share means something is deferred, unless it is a
    single object (which ``BucketBudget.alone`` may take). With at least two new objects (listed
    less covered; unknown: assumed) the first one taken alone leaves nothing for the second.
    """
    if pending_bytes <= share:
        return False
    return new_objects_at_least is None or new_objects_at_least >= 2


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
    #: The first object this bucket takes in the run may be larger than ``left`` up to this (its
    #: share of what is left of the day): an object above the per-run budget is uploaded alone.
    alone: int | None = None
    taken: int = 0
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
            self.taken += 1
            return True
        if self.taken == 0 and self.alone is not None and cost <= self.alone:
            self.left = 0  # alone: nothing else of this bucket in this run
            self.taken += 1
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


def database_skipped(database: Mapping[str, Any]) -> bool:
    """A ``dump_database`` result of a run planned to end as seeding: no database part."""
    return database.get("part") is None


def writes_seed_checkpoint(database: Mapping[str, Any], buckets: Iterable[Mapping[str, Any]]) -> bool:
    """The run closes with a seed checkpoint: it deferred objects, or it has no database dump (it
    was planned to seed, but objects vanished meanwhile and all the rest fit: the next run, with
    nothing left to upload, dumps the database and completes the set)."""
    return is_seeding(buckets) or database_skipped(database)


def seed_progress(buckets: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Object bytes the seed covers (uploaded by this or earlier seeding runs) of the bucket total.

    ``seeded_bytes``/``bytes_left`` are the UI's names of ``covered_bytes``/``deferred_bytes``;
    ``seeded_bytes_this_run``/``seeded_objects_this_run`` what this run archived.
    """
    covered = total = deferred = deferred_bytes = this_run = objects_this_run = 0
    for b in buckets:
        inc = b.get("incremental") or {}
        covered += int(inc.get("total_bytes", b.get("object_bytes", 0)))
        deferred += int(inc.get("deferred_objects", 0))
        deferred_bytes += int(inc.get("deferred_bytes", 0))
        this_run += int(b.get("object_bytes", 0))
        objects_this_run += int(b.get("object_count", 0))
    total = covered + deferred_bytes
    return {
        "covered_bytes": covered,
        "total_bytes": total,
        "deferred_objects": deferred,
        "deferred_bytes": deferred_bytes,
        "seeded_bytes": covered,
        "bytes_left": deferred_bytes,
        "seeded_bytes_this_run": this_run,
        "seeded_objects_this_run": objects_this_run,
    }


def seed_outlook(
    progress: Mapping[str, int],
    *,
    database_bytes: int,
    cap: Capacity | None,
    margin_share: float,
    run_budget: int | None,
) -> dict[str, int]:
    """How many more runs and 24-hour windows the seed takes, and what the next run needs.

    ``next_run_needs_bytes``: the upload allowance a next run needs to make real progress (the
    margin, the database for the run that completes the set, and a run's budget or what is left,
    whichever is less); the ``continue_seed`` sensor starts it once the window has that much.
    ``days_left_estimate`` 0: the rest fits what is left of the current window.
    """
    left_cost = progress["deferred_bytes"] + FRAMING_BYTES_PER_OBJECT * progress["deferred_objects"]
    day_cap = cap.daily_upload_cap if cap is not None else None
    margin = int(day_cap * margin_share) if day_cap else 0
    day = int(day_cap * (1 - margin_share)) - database_bytes if day_cap else None
    per_run = min(x for x in (run_budget, day, left_cost) if x is not None and x > 0) if left_cost else 1
    runs = max(1, math.ceil(left_cost / per_run))
    if day is None or day <= 0 or cap is None or cap.daily_upload_remaining is None:
        days = 0
    else:
        today = max(0, cap.daily_upload_remaining - margin - database_bytes)
        days = 0 if left_cost <= today else math.ceil((left_cost - today) / day)
    needs = margin + database_bytes + min(left_cost, run_budget if run_budget is not None else left_cost)
    return {"runs_left_estimate": runs, "days_left_estimate": days, "next_run_needs_bytes": needs}


def room_at(cap: Capacity, need: int, now: float) -> float | None:
    """When the 24-hour window has ``need`` bytes of room: ``now`` if it has them, None if never (the
    cap is smaller), else the moment enough of the counted uploads have left the window."""
    left = cap.daily_upload_remaining
    if left is None or left >= need:
        return now
    if cap.daily_upload_cap is not None and need > cap.daily_upload_cap:
        return None
    for frees_at, size in sorted(cap.daily_window_schedule):
        left += size
        if left >= need:
            return max(now, frees_at)
    return None


def utc_text(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M")


def seeding_message(
    progress: Mapping[str, int],
    frees: tuple[float, int] | None,
    outlook: Mapping[str, int] | None = None,
    next_at: float | None = None,
    now: float | None = None,
) -> str:
    """What the administrator reads in the run, the log and the ``backup_set`` observation;
    ``next_at``: when the window has room for the next run (``room_at``)."""
    more = ""
    if outlook:
        runs, days = outlook["runs_left_estimate"], outlook["days_left_estimate"]
        more = f"; about {runs} more run{'s' if runs != 1 else ''}, " + (
            "within the current 24-hour window"
            if days == 0
            else f"over about {days} more day{'s' if days != 1 else ''}"
        )
    if next_at is not None and now is not None and next_at <= now:
        nxt = (
            "The next run can continue right away (the continue_seed sensor starts it; without it, the "
            "next scheduled backup)."
        )
    elif next_at is not None:
        nxt = f"The next run can continue after {utc_text(next_at)} UTC, when the 24-hour window has room for it."
    else:
        nxt = window_text(frees)
    return (
        f"seeding: {decimal_bytes(progress['covered_bytes'])} of {decimal_bytes(progress['total_bytes'])} "
        f"uploaded ({progress['deferred_objects']} objects, {decimal_bytes(progress['deferred_bytes'])} left"
        f"{more}). This backup is NOT complete and cannot be restored yet: Google Drive's daily upload cap "
        "spreads the first full over several runs. " + nxt
    )


def covered_by_seed(
    destination: Destination, keyring: Callable[[], OrgKeyring], installation_id: str
) -> SeedCoverage:
    """Object bytes and objects per bucket the newest seed checkpoint already covers (empty when no
    seed is under way).

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
            return SeedCoverage()
        if PART_SEED in files:
            try:
                manifest = read_manifest(destination, keyring(), backup_id, files[PART_SEED], PART_SEED)
            except (ArchiveError, DestinationError, OSError, ValueError):
                return SeedCoverage()  # the export finds it unusable too, and says so
            return SeedCoverage(
                {b.bucket: int(b.total_bytes or 0) for b in manifest.buckets},
                {b.bucket: int(b.total_objects or 0) for b in manifest.buckets},
            )
    return SeedCoverage()
