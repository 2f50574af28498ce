"""Retention (``applyRetention``): which backup sets to delete, and deleting them safely.

Plain functions, no Dagster; ``ops/retention.py`` wires them into ``retention_job`` and
``delete_backup_job``.

What exists is read from the destination itself (every file carries the set properties of
``services/backup_parts.py``): a set is *complete* when its manifest is present — the
manifest is written last, after every part verified — and *incomplete* otherwise. The
destination is the truth about what occupies space; the ledger is told about deletions.

Rules (MUST); ``plan.decisions`` names, for every set, the rules that keep it or why it is due:

1. Keep the newest ``keep_last`` complete sets ("newest 7"); delete complete sets no rule keeps.
   ``keep_last`` may be 0 only when a period rule (rule 10) is set.
2. Never delete the newest complete set (not even via ``delete_backup_job`` unless forced).
3. Never delete a set a restore in progress is reading (``in_use``), whatever its age.
4. Delete incomplete sets older than the grace period (younger ones may be a backup still
   uploading), and incomplete sets older than some complete set whatever their age (backups
   run one at a time, so such a set is a failed backup or a deletion interrupted half-way).
5. Deletion order inside a set: the **manifest first**, then the parts. A set interrupted
   half-way through deletion is therefore incomplete — never a "complete" set with missing
   parts — and the next retention run finishes it.
   A part that a kept set references (format-2 sets: ``services/reachability.py``) is never
   deleted: the forgotten set's manifest and other parts go, that part stays (reported) until
   no kept set references it; the next run then collects it with the incomplete remains.
6. The ledger records a deletion only after every file of the set is gone. A failed deletion
   leaves the set in the ledger; the run reports it and fails, and the next run retries it.
7. With verification in use (``verified`` given: the sets whose latest verification passed),
   only verified sets count towards ``keep_last``: the newest ``keep_last`` verified sets are
   kept (and the newest verified one is never deleted, whatever the rules), and an
   unverified or failed complete set is kept while it is newer than the ``keep_last``-th
   verified set and deleted once it is older. ``verified=None`` (nothing was ever verified, e.g. verification disabled) keeps
   rule 1 unchanged. If verification stops running, unverified sets accumulate (nothing
   newer gets counted) until it runs again; the ``backup_set_verified`` check turns red.
8. Safety sets (``setKind=safety``: the database-only backup a restore makes of the database it
   replaces) never count towards ``keep_last`` and are never "the newest complete set" of rule
   2: the regular backups alone decide what is kept. A safety set is kept while fewer than
   ``keep_last`` complete regular sets are newer than it (it lives about as long as the regular
   backup it sits between), then deleted like any set (rule 3 still protects one in use).
   ``delete_backup_job`` deletes a safety set without ``force``.
9. A set the destination keeps on purpose is a state, not a failure. A set due for deletion
   whose files are under retention (S3 object lock: ``StoredFile.locked_until`` in the
   future) is planned as *locked until* the latest of those dates and not touched; a deletion
   the destination refuses (``LockedError``: a lock seen only then, a legal hold, credentials
   that may not delete) is reported the same way. Neither fails the run nor reaches the
   ledger; the set stays due, and the first retention run after the date deletes it. The
   manifest is written last, so its lock ends last: when the manifest can be deleted (rule
   5), the parts can too.
10. Grandfather-father-son (``services/retention_rules.py``): beside rule 1, ``daily``,
   ``weekly``, ``monthly`` and ``yearly`` counts each keep the newest complete regular set of
   each of their newest periods in the schedule's time zone ("daily 2026-12-05", "weekly
   2026-W49", "monthly 2026-11", "yearly 2025"); with verification in use, a period's newest
   verified set is preferred, and a period without one keeps its newest complete set. A set is
   kept when any rule keeps it. In rules 7 and 8, N is ``max(keep_last, 1)`` when ``keep_last``
   is 0.
11. Seeds (a first full spread over days under Drive's upload cap, BACKUP-STRATEGY.md "Seeding
   across days"): a set with a seed checkpoint and no manifest, newer than every complete set, is
   kept while the newest such set is younger than ``seed_abandon`` (the parts its checkpoint
   references are kept by reachability); once it is older the whole seed is *abandoned* and
   deleted with ``REASON_SEED_ABANDONED`` (the op logs it as a warning). A seed older than a
   complete set is superseded (rule 4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from backup_pipeline.destinations.base import Destination, DestinationError, LockedError, StoredFile
from backup_pipeline.services.backup_parts import (
    APP_NAME,
    PART_MANIFEST,
    PART_SEED,
    PROP_APP,
    PROP_BACKUP_ID,
    PROP_INSTALLATION,
    PROP_PART_NAME,
    SET_KIND_REGULAR,
    SET_KIND_SAFETY,
    backup_id_time,
    is_backup_id,
    set_kind_of,
    set_properties,
)
from backup_pipeline.services.reachability import References
from backup_pipeline.services.retention_rules import (
    DELETE,
    IN_USE,
    INCOMPLETE_YOUNG,
    KEEP,
    LOCKED,
    NEWEST_COMPLETE,
    NEWEST_VERIFIED,
    NOT_VERIFIED_YET,
    SAFETY,
    Candidate,
    PeriodRules,
    SetDecision,
    rule_problems,
    select_periods,
)

NO_PERIODS = PeriodRules()

REASON_BEYOND_KEEP = "older than the newest {keep} complete sets"
REASON_BEYOND_KEEP_VERIFIED = "older than the newest {keep} verified sets"
REASON_INCOMPLETE = "incomplete (no manifest) and older than {hours} h"
REASON_SUPERSEDED = "incomplete (no manifest) and older than a complete set"
REASON_SAFETY = "safety set older than the newest {keep} complete regular sets"
REASON_NO_RULE = "kept by no rule: {rules}"
REASON_MANUAL = "deleted by request"
REASON_SEED_ABANDONED = "abandoned seed: no progress for {days} days (the first full never completed)"
SEED_IN_PROGRESS = "seed in progress: the next backup continues it"
DEFAULT_SEED_ABANDON = timedelta(days=14)


@dataclass(frozen=True)
class BackupSetInfo:
    backup_id: str
    created: datetime
    complete: bool
    files: int = 0
    size_bytes: int = 0
    kind: str = SET_KIND_REGULAR
    #: The latest retention date of its files (S3 object lock); None: the destination keeps none.
    locked_until: datetime | None = None
    #: A seeding run's set: a seed checkpoint and no manifest (rule 11).
    seeding: bool = False

    @property
    def is_safety(self) -> bool:
        return self.kind == SET_KIND_SAFETY


@dataclass(frozen=True)
class PlannedDeletion:
    backup_id: str
    reason: str
    complete: bool
    size_bytes: int


@dataclass(frozen=True)
class LockedSet:
    """A set due for deletion that the destination keeps for now (rule 9)."""

    backup_id: str
    reason: str  # why it is due
    until: datetime | None  # None: no end date known (legal hold, no delete permission)
    detail: str  # what the destination said, or the lock found in the listing

    def describe(self) -> str:
        when = f"locked until {self.until.isoformat(timespec='seconds')}" if self.until else "delete refused"
        return f"{self.backup_id}: {when} ({self.detail}); due because {self.reason}"


@dataclass
class RetentionPlan:
    keep: list[str] = field(default_factory=list)
    delete: list[PlannedDeletion] = field(default_factory=list)
    protected: dict[str, str] = field(default_factory=dict)  # backup id → why kept against the rules
    locked: list[LockedSet] = field(default_factory=list)  # due, but under retention (rule 9)
    decisions: list[SetDecision] = field(default_factory=list)  # every set, newest first, with why


@dataclass(frozen=True)
class DeletedSet:
    backup_id: str
    reason: str
    files: int
    bytes_freed: int
    was_complete: bool
    #: Part name → the kept sets that reference it: left on the destination (format-2 sets).
    kept_parts: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class RetentionResult:
    deleted: list[DeletedSet] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # backup id → error (secret-free)
    locked: list[LockedSet] = field(default_factory=list)  # refused by the destination (rule 9)
    #: backup id → {part → referencing sets}: parts of deleted sets kept because a kept set needs them.
    kept_parts: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @property
    def bytes_freed(self) -> int:
        return sum(d.bytes_freed for d in self.deleted)


class RetentionError(Exception):
    """Bad request (unknown id, refusing the newest complete set, …); the message names the rule."""


def discover_sets(destination: Destination, installation_id: str) -> list[BackupSetInfo]:
    """Every backup set of this installation on the destination, newest first.

    Raises DestinationError when the destination cannot be listed (nothing may be deleted
    from the ledger on a guess).
    """
    grouped: dict[str, list[StoredFile]] = {}
    for stored in destination.list({PROP_APP: APP_NAME, PROP_INSTALLATION: installation_id}):
        backup_id = stored.properties.get(PROP_BACKUP_ID, "")
        if is_backup_id(backup_id):
            grouped.setdefault(backup_id, []).append(stored)
    sets = [
        BackupSetInfo(
            backup_id=backup_id,
            created=backup_id_time(backup_id),
            complete=any(f.properties.get(PROP_PART_NAME) == PART_MANIFEST for f in files),
            files=len(files),
            size_bytes=sum(f.size for f in files),
            kind=set_kind_of(f.properties for f in files),
            locked_until=max((f.locked_until for f in files if f.locked_until is not None), default=None),
            seeding=not any(f.properties.get(PROP_PART_NAME) == PART_MANIFEST for f in files)
            and any(f.properties.get(PROP_PART_NAME) == PART_SEED for f in files),
        )
        for backup_id, files in grouped.items()
    ]
    return sorted(sets, key=lambda s: (s.created, s.backup_id), reverse=True)


def plan_retention(
    sets: Iterable[BackupSetInfo],
    *,
    keep_last: int,
    incomplete_grace: timedelta,
    now: datetime,
    in_use: set[str] | frozenset[str] = frozenset(),
    verified: set[str] | frozenset[str] | None = None,
    periods: PeriodRules = NO_PERIODS,
    seed_abandon: timedelta = DEFAULT_SEED_ABANDON,
) -> RetentionPlan:
    """Decide every set's fate (rules 1-11); ``plan.decisions`` says, per set, which rules keep it.

    A pure function of its arguments: the sets found, the rules (``keep_last`` and the period
    counts with their time zone), ``now`` and what verification and running restores report.
    """
    problems = rule_problems(keep_last, periods, SETTING_NAMES_SHORT)
    if problems:
        raise RetentionError("; ".join(problems))
    ordered = sorted(sets, key=lambda s: (s.created, s.backup_id), reverse=True)
    regular = [s for s in ordered if s.complete and not s.is_safety]
    reasons = _rule_reasons(regular, keep_last, verified, periods)
    beyond = _beyond_reason(keep_last, verified, periods)
    plan = RetentionPlan()

    def decide(info: BackupSetInfo, why_kept: list[str], due_reason: str) -> None:
        """Keep (some rule or guard keeps it), protect (in use by a restore, rule 3) or delete one set."""
        if why_kept:
            plan.keep.append(info.backup_id)
            plan.decisions.append(_decision(info, KEEP, why_kept))
        elif info.backup_id in in_use:
            plan.protected[info.backup_id] = "in use by a restore in progress"
            plan.keep.append(info.backup_id)
            plan.decisions.append(_decision(info, KEEP, [IN_USE]))
        elif info.locked_until is not None and info.locked_until > now:  # rule 9
            plan.locked.append(LockedSet(info.backup_id, due_reason, info.locked_until, "object lock"))
            until = info.locked_until.isoformat(timespec="seconds")
            plan.decisions.append(_decision(info, LOCKED, [f"locked until {until}", due_reason]))
        else:
            plan.delete.append(PlannedDeletion(info.backup_id, due_reason, info.complete, info.size_bytes))
            plan.decisions.append(_decision(info, DELETE, [due_reason]))

    safety_keep = max(keep_last, 1)  # rule 8: about as long as the regular set it sits between
    regular_seen = 0  # complete regular sets newer than the current one
    any_complete = False
    # Rule 11: the newest seed set decides for the whole seed (progress is its age).
    newest_seed = next((s for s in ordered if s.seeding), None)
    seed_alive = newest_seed is not None and now - newest_seed.created <= seed_abandon
    for info in ordered:
        any_complete = any_complete or info.complete
        if info.complete and info.is_safety:  # rule 8
            keep = regular_seen < safety_keep
            decide(info, [SAFETY] if keep else [], REASON_SAFETY.format(keep=safety_keep))
        elif info.complete:
            regular_seen += 1
            decide(info, reasons.get(info.backup_id, []), beyond)
        elif info.seeding and not any_complete:
            days = int(seed_abandon.total_seconds() // 86400)
            decide(info, [SEED_IN_PROGRESS] if seed_alive else [], REASON_SEED_ABANDONED.format(days=days))
        elif any_complete:
            # Backups run one at a time, so an incomplete set older than a complete one
            # is dead (failed, or a deletion interrupted half-way), whatever its age.
            decide(info, [], REASON_SUPERSEDED)
        else:
            hours = int(incomplete_grace.total_seconds() // 3600)
            young = now - info.created <= incomplete_grace
            decide(info, [INCOMPLETE_YOUNG] if young else [], REASON_INCOMPLETE.format(hours=hours))
    return plan


# Field names in plan_retention's own errors (callers validated with their names already).
SETTING_NAMES_SHORT = {
    "keep_last": "retention_keep_last",
    **{rule: f"retention_keep_{rule}" for rule in ("daily", "weekly", "monthly", "yearly")},
    "timezone": "schedule_timezone",
}


def _rule_reasons(
    regular: list[BackupSetInfo],
    keep_last: int,
    verified: set[str] | frozenset[str] | None,
    periods: PeriodRules,
) -> dict[str, list[str]]:
    """backup id → why a complete regular set (``regular``, newest first) is kept; absent: it is due.

    Counting rules first (rule 1 or 7: newest ``keep_last``; rule 10: the periods), then the
    guards, listed only for a set no counting rule keeps: the newest complete set (rule 2), the
    newest verified set and, with verification in use, unverified sets newer than the
    ``max(keep_last, 1)``-th verified set (rule 7).
    """
    counted = regular if verified is None else [s for s in regular if s.backup_id in verified]
    newest_label = f"newest {keep_last}" + ("" if verified is None else " verified")
    reasons: dict[str, list[str]] = {s.backup_id: [newest_label] for s in counted[:keep_last]}
    if periods.active:
        candidates = [
            Candidate(s.backup_id, s.created, verified is None or s.backup_id in verified) for s in regular
        ]
        for backup_id, labels in select_periods(candidates, periods).items():
            reasons.setdefault(backup_id, []).extend(labels)
    if regular and regular[0].backup_id not in reasons:
        reasons[regular[0].backup_id] = [NEWEST_COMPLETE]
    if verified is not None:
        if counted and counted[0].backup_id not in reasons:
            reasons[counted[0].backup_id] = [NEWEST_VERIFIED]
        # Unverified sets wait for a verdict while fewer than max(keep_last, 1) verified sets are newer.
        window = max(keep_last, 1)
        verified_newer = 0
        for info in regular:
            if info.backup_id in verified:
                verified_newer += 1
            elif verified_newer < window and info.backup_id not in reasons:
                reasons[info.backup_id] = [NOT_VERIFIED_YET.format(window=window)]
    return reasons


def _beyond_reason(keep_last: int, verified: set[str] | frozenset[str] | None, periods: PeriodRules) -> str:
    """Why a complete regular set no rule keeps is due."""
    if not periods.active:
        return (REASON_BEYOND_KEEP if verified is None else REASON_BEYOND_KEEP_VERIFIED).format(
            keep=keep_last
        )
    newest = f"newest {keep_last}" + ("" if verified is None else " verified") + ", " if keep_last else ""
    return REASON_NO_RULE.format(rules=newest + periods.describe())


def _decision(info: BackupSetInfo, action: str, reasons: list[str]) -> SetDecision:
    return SetDecision(info.backup_id, info.created, action, tuple(reasons), info.kind, info.complete)


def delete_backup_set(
    destination: Destination,
    installation_id: str,
    backup_id: str,
    reason: str = REASON_MANUAL,
    keep_parts: Mapping[str, list[str]] | None = None,
) -> DeletedSet:
    """Delete every file of one set, manifest first (rule 5), except the parts in ``keep_parts``
    (referenced by kept sets). Idempotent: a gone set deletes 0 files."""
    keep = dict(keep_parts or {})
    files = list(destination.list(set_properties(installation_id, backup_id)))
    was_complete = any(f.properties.get(PROP_PART_NAME) == PART_MANIFEST for f in files)
    files = [f for f in files if f.properties.get(PROP_PART_NAME) not in keep]
    files.sort(key=lambda f: f.properties.get(PROP_PART_NAME) != PART_MANIFEST)
    for stored in files:
        destination.delete(stored.id)
    return DeletedSet(backup_id, reason, len(files), sum(f.size for f in files), was_complete, keep)


def apply_retention(
    destination: Destination,
    installation_id: str,
    plan: RetentionPlan,
    on_deleted: Callable[[DeletedSet], None] = lambda _d: None,
    references: References | None = None,
) -> RetentionResult:
    """Carry out ``plan``; call ``on_deleted`` (the ledger event) after each set is fully gone.

    A set whose deletion fails is reported in ``result.failed`` and the others still proceed;
    the caller fails the run so the failure is visible, and the next run retries it. A set the
    destination refuses to delete (``LockedError``) is reported in ``result.locked`` (rule 9).
    ``references`` (what the kept sets reference, ``reachability.find_references``): those
    parts stay, in ``result.kept_parts``; a set of which only such parts were left is not
    reported as deleted again.
    """
    result = RetentionResult(locked=list(plan.locked))
    for planned in plan.delete:
        keep = references.of_set(planned.backup_id) if references is not None else {}
        try:
            deleted = delete_backup_set(destination, installation_id, planned.backup_id, planned.reason, keep)
        except LockedError as exc:
            result.locked.append(LockedSet(planned.backup_id, planned.reason, exc.until, str(exc)))
            continue
        except DestinationError as exc:
            result.failed[planned.backup_id] = f"{type(exc).__name__}: {exc}"
            continue
        if keep:
            result.kept_parts[planned.backup_id] = keep
            if deleted.files == 0 and not deleted.was_complete:
                continue  # only referenced remains of a set forgotten earlier: nothing new to record
        on_deleted(deleted)
        result.deleted.append(deleted)
    return result


def check_manual_deletion(
    sets: Iterable[BackupSetInfo], backup_id: str, *, force: bool, in_use: set[str] | frozenset[str]
) -> BackupSetInfo:
    """Validate a ``delete_backup_job`` request; returns the set to delete."""
    ordered = sorted(sets, key=lambda s: (s.created, s.backup_id), reverse=True)
    target = next((s for s in ordered if s.backup_id == backup_id), None)
    if target is None:
        raise RetentionError(f"backup_id: no backup set {backup_id!r} exists on the destination")
    if backup_id in in_use:
        raise RetentionError(
            f"backup_id: {backup_id} is being read by a restore in progress; try again later"
        )
    newest_complete = next((s for s in ordered if s.complete and not s.is_safety), None)
    if newest_complete is not None and newest_complete.backup_id == backup_id and not force:
        raise RetentionError(
            f"backup_id: {backup_id} is the newest complete backup; deleting it leaves an older one "
            "as the latest restore point. Set force: true to delete it anyway."
        )
    return target
