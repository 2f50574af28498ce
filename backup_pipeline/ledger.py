"""The backup ledger: which backup sets exist, which are complete, which were deleted.

Two sources, one answer shape (:class:`LedgerEntry`):

- ``from_dagster(instance)``: Dagster's records. A ``backup_set`` materialization (logged by
  ``finalize_backup`` after the manifest verified) is a complete set; an observation of
  ``backup_set`` with ``event=deleted`` (logged by retention/delete via
  :func:`deletion_observation`) marks it deleted; a failed or canceled ``backup_job`` run
  with a backup id tag is an incomplete set (normally removed by its failure hook).
- ``from_destination(destination, installation_id)``: the destination alone, by file
  properties (``services/backup_parts.py``), for when the Dagster instance is lost. A set
  with a manifest file is complete, one without is incomplete; deleted sets are simply gone.

Every entry has a ``kind``: ``regular`` (scheduled or requested backups) or ``safety`` (the
database-only set a restore makes of the database it replaces: metadata ``set_kind`` /
``trigger=pre-restore``, file property ``setKind=safety``). ``latest_complete`` never returns
a safety set.

``reconcile`` compares both and says which ledger entries no longer match the destination.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import dagster as dg

from backup_pipeline.destinations.base import Destination
from backup_pipeline.services.backup_parts import (
    PART_MANIFEST,
    PROP_PART_NAME,
    SET_KIND_REGULAR,
    SET_KIND_SAFETY,
    TRIGGER_PRE_RESTORE,
    backup_id_time,
    is_backup_id,
    set_kind_of,
)
from backup_pipeline.services.backup_upload import list_sets

BACKUP_SET_ASSET = dg.AssetKey("backup_set")
BACKUP_JOB_NAME = "backup_job"
BACKUP_ID_TAG = "backup_pipeline/backup_id"
DELETED_EVENT = "deleted"


class SetStatus(StrEnum):
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"  # no manifest: never a backup
    DELETED = "deleted"


@dataclass(frozen=True)
class LedgerEntry:
    backup_id: str
    status: SetStatus
    created_at: datetime
    run_id: str | None = None
    source: str = "dagster"  # or "destination"
    metadata: dict[str, Any] = field(default_factory=dict)
    file_ids: tuple[str, ...] = ()
    kind: str = SET_KIND_REGULAR  # SET_KIND_SAFETY: a restore's pre-restore backup of the database

    @property
    def complete(self) -> bool:
        return self.status is SetStatus.COMPLETE

    @property
    def is_safety(self) -> bool:
        return self.kind == SET_KIND_SAFETY


def kind_from_metadata(meta: Mapping[str, Any]) -> str:
    """A set's kind from its ledger metadata (``set_kind``; older safety sets: ``trigger``)."""
    if meta.get("set_kind") == SET_KIND_SAFETY or meta.get("trigger") == TRIGGER_PRE_RESTORE:
        return SET_KIND_SAFETY
    return SET_KIND_REGULAR


def _plain(value: Any) -> Any:
    """A MetadataValue's Python value (json/text/int...)."""
    return getattr(value, "value", value)


def _metadata_dict(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _plain(v) for k, v in metadata.items()}


def deletion_observation(backup_id: str, reason: str, run_id: str | None = None) -> dg.AssetObservation:
    """What retention/delete logs after removing a set, so the ledger shows it as deleted."""
    return dg.AssetObservation(
        asset_key=BACKUP_SET_ASSET,
        metadata={
            "backup_id": backup_id,
            "event": DELETED_EVENT,
            "reason": reason,
            "deleted_by_run": run_id or "",
        },
    )


def _created(backup_id: str, fallback: float | None = None) -> datetime:
    if is_backup_id(backup_id):
        return backup_id_time(backup_id)
    return datetime.fromtimestamp(fallback or 0, UTC)


def _page_all(fetch: Any, key: dg.AssetKey, page: int = 500) -> Iterable[Any]:
    cursor = None
    while True:
        result = fetch(key, limit=page, cursor=cursor)
        yield from result.records
        if not result.has_more:
            return
        cursor = result.cursor


def from_dagster(
    instance: dg.DagsterInstance, *, job_name: str = BACKUP_JOB_NAME, include_failed_runs: bool = True
) -> list[LedgerEntry]:
    """Every backup set Dagster knows of, newest first."""
    entries: dict[str, LedgerEntry] = {}
    for record in _page_all(instance.fetch_materializations, BACKUP_SET_ASSET):
        mat = record.asset_materialization
        if mat is None:
            continue
        meta = _metadata_dict(mat.metadata)
        backup_id = str(meta.get("backup_id", ""))
        if not backup_id or backup_id in entries:
            continue  # records come newest first; keep the newest
        entries[backup_id] = LedgerEntry(
            backup_id=backup_id,
            status=SetStatus.COMPLETE,
            created_at=_created(backup_id, record.timestamp),
            run_id=record.run_id,
            metadata=meta,
            file_ids=tuple(dict(meta.get("part_file_ids") or {}).values()),
            kind=kind_from_metadata(meta),
        )
    for record in _page_all(instance.fetch_observations, BACKUP_SET_ASSET):
        obs = record.asset_observation
        if obs is None:
            continue
        meta = _metadata_dict(obs.metadata)
        backup_id = str(meta.get("backup_id", ""))
        if meta.get("event") != DELETED_EVENT or not backup_id:
            continue
        known = entries.get(backup_id)
        entries[backup_id] = LedgerEntry(
            backup_id=backup_id,
            status=SetStatus.DELETED,
            created_at=known.created_at if known else _created(backup_id, record.timestamp),
            run_id=known.run_id if known else None,
            metadata={**(known.metadata if known else {}), "deletion": meta},
            kind=known.kind if known else SET_KIND_REGULAR,
        )
    if include_failed_runs:
        failed = instance.get_runs(
            filters=dg.RunsFilter(
                job_name=job_name, statuses=[dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
            )
        )
        for run in failed:
            run_backup_id = run.tags.get(BACKUP_ID_TAG)
            if run_backup_id and run_backup_id not in entries:
                backup_id = run_backup_id
                entries[backup_id] = LedgerEntry(
                    backup_id=backup_id,
                    status=SetStatus.INCOMPLETE,
                    created_at=_created(backup_id),
                    run_id=run.run_id,
                    metadata={"run_status": run.status.value},
                )
    return sorted(entries.values(), key=lambda e: e.created_at, reverse=True)


def complete_sets(instance: dg.DagsterInstance) -> list[LedgerEntry]:
    """Complete, not deleted sets, newest first, safety sets included (``is_safety``)."""
    return [e for e in from_dagster(instance, include_failed_runs=False) if e.status is SetStatus.COMPLETE]


def latest_complete(instance: dg.DagsterInstance) -> LedgerEntry | None:
    """The newest complete *regular* set: what ``latest`` means (a safety set never is)."""
    return next((e for e in complete_sets(instance) if not e.is_safety), None)


VERIFIED_EVENT = "verified"
VERIFICATION_FAILED_EVENT = "verification_failed"


@dataclass(frozen=True)
class VerificationStatus:
    """The latest verification of one set (``services/verification.py`` via ``verify_backup_job``)."""

    backup_id: str
    verified: bool  # False: the last verification found damage
    at: datetime
    run_id: str | None
    summary: str


def verification_observation(
    backup_id: str, *, ok: bool, summary: str, details: Mapping[str, Any], run_id: str | None = None
) -> dg.AssetObservation:
    """What verification logs: an observation of ``backup_set`` with ``event=verified|verification_failed``."""
    return dg.AssetObservation(
        asset_key=BACKUP_SET_ASSET,
        description=summary,
        metadata={
            "backup_id": backup_id,
            "event": VERIFIED_EVENT if ok else VERIFICATION_FAILED_EVENT,
            "summary": summary,
            "details": dg.MetadataValue.json(dict(details)),
            "verified_by_run": run_id or "",
        },
    )


def verification_statuses(instance: dg.DagsterInstance) -> dict[str, VerificationStatus]:
    """backup id → its latest verification; sets never verified are absent."""
    statuses: dict[str, VerificationStatus] = {}
    for record in _page_all(instance.fetch_observations, BACKUP_SET_ASSET):
        obs = record.asset_observation
        if obs is None:
            continue
        meta = _metadata_dict(obs.metadata)
        event, backup_id = meta.get("event"), str(meta.get("backup_id", ""))
        if event not in (VERIFIED_EVENT, VERIFICATION_FAILED_EVENT) or not backup_id or backup_id in statuses:
            continue  # records come newest first; keep the latest verdict
        statuses[backup_id] = VerificationStatus(
            backup_id=backup_id,
            verified=event == VERIFIED_EVENT,
            at=datetime.fromtimestamp(record.timestamp, UTC),
            run_id=record.run_id,
            summary=str(meta.get("summary", "")),
        )
    return statuses


def verified_backup_ids(instance: dg.DagsterInstance) -> frozenset[str] | None:
    """Sets whose latest verification passed, for retention; ``None`` when nothing was ever verified
    (verification not in use: retention then counts every complete set, as before)."""
    statuses = verification_statuses(instance)
    if not statuses:
        return None
    return frozenset(b for b, s in statuses.items() if s.verified)


def from_destination(destination: Destination, installation_id: str) -> list[LedgerEntry]:
    """Every set found on the destination by file properties alone, newest first.

    Complete here means "has its manifest"; whether every part the manifest lists is intact
    is checked by restore/verification, which decrypt the manifest.
    """
    entries = []
    for backup_id, files in list_sets(destination, installation_id).items():
        manifest = any(f.properties.get(PROP_PART_NAME) == PART_MANIFEST for f in files)
        created = [f.created.timestamp() for f in files if f.created is not None]
        entries.append(
            LedgerEntry(
                backup_id=backup_id,
                status=SetStatus.COMPLETE if manifest else SetStatus.INCOMPLETE,
                created_at=_created(backup_id, min(created) if created else None),
                source="destination",
                metadata={
                    "parts": sorted(f.properties.get(PROP_PART_NAME, "") for f in files),
                    "total_bytes": sum(f.size for f in files),
                },
                file_ids=tuple(f.id for f in files),
                kind=set_kind_of(f.properties for f in files),
            )
        )
    return sorted(entries, key=lambda e: e.created_at, reverse=True)


@dataclass(frozen=True)
class Reconciliation:
    missing_on_destination: list[str]  # complete in Dagster, gone (or without manifest) on the destination
    unknown_to_dagster: list[str]  # complete on the destination, not a complete entry in Dagster
    incomplete_on_destination: list[str]


def reconcile(
    dagster_entries: Iterable[LedgerEntry], destination_entries: Iterable[LedgerEntry]
) -> Reconciliation:
    dag = {e.backup_id: e for e in dagster_entries}
    dest = {e.backup_id: e for e in destination_entries}
    return Reconciliation(
        missing_on_destination=sorted(
            b for b, e in dag.items() if e.complete and (b not in dest or not dest[b].complete)
        ),
        unknown_to_dagster=sorted(
            b for b, e in dest.items() if e.complete and not (b in dag and dag[b].complete)
        ),
        incomplete_on_destination=sorted(b for b, e in dest.items() if not e.complete),
    )


# --- copies on several destinations ------------------------------------------------------------

#: A destination holds a complete, verified copy of the set (copy_backup_job; for the primary: the
#: backup itself, confirmed by copy_backup_job's plan with the lock it found).
COPY_COMPLETE_EVENT = "copy_complete"
#: A copy was attempted and failed: the destination does not hold the set (``detail`` says why).
COPY_MISSING_EVENT = "copy_missing"
#: Retention of that destination removed its copy (the set may live on elsewhere).
COPY_DELETED_EVENT = "copy_deleted"
COPY_EVENTS = (COPY_COMPLETE_EVENT, COPY_MISSING_EVENT, COPY_DELETED_EVENT)


@dataclass(frozen=True)
class CopyState:
    """The latest thing the ledger knows about one set on one destination."""

    backup_id: str
    destination: str
    event: str
    kind: str
    offsite: bool
    locked_until: datetime | None
    at: datetime
    detail: str = ""

    @property
    def complete(self) -> bool:
        return self.event == COPY_COMPLETE_EVENT

    def immutable(self, now: datetime) -> bool:
        """Complete and under a retention lock that has not ended (S3 object lock)."""
        return self.complete and self.locked_until is not None and self.locked_until > now


def copy_observation(
    backup_id: str,
    destination: str,
    event: str,
    *,
    kind: str,
    offsite: bool,
    locked_until: datetime | None = None,
    detail: str = "",
    run_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dg.AssetObservation:
    """What copy_backup_job logs per set and destination; the UI shows it under backup_set's events."""
    words = {
        COPY_COMPLETE_EVENT: "holds a complete, verified copy",
        COPY_MISSING_EVENT: "has NO copy",
        COPY_DELETED_EVENT: "no longer holds a copy (retention there)",
    }[event]
    return dg.AssetObservation(
        asset_key=BACKUP_SET_ASSET,
        description=f"{destination} {words} of {backup_id}" + (f": {detail}" if detail else ""),
        metadata={
            "backup_id": backup_id,
            "event": event,
            "destination": destination,
            "destination_kind": kind,
            "offsite": offsite,
            "locked_until": locked_until.isoformat(timespec="seconds") if locked_until else "",
            "detail": detail,
            "by_run": run_id or "",
            **dict(extra or {}),
        },
    )


def copy_states(
    instance: dg.DagsterInstance, backup_id: str | None = None
) -> dict[str, dict[str, CopyState]]:
    """backup id → destination name → its latest copy event (newest records win)."""
    states: dict[str, dict[str, CopyState]] = {}
    for record in _page_all(instance.fetch_observations, BACKUP_SET_ASSET):
        obs = record.asset_observation
        if obs is None:
            continue
        meta = _metadata_dict(obs.metadata)
        event, set_id, name = (
            meta.get("event"),
            str(meta.get("backup_id", "")),
            str(meta.get("destination", "")),
        )
        if event not in COPY_EVENTS or not set_id or not name or (backup_id and set_id != backup_id):
            continue
        per_set = states.setdefault(set_id, {})
        if name in per_set:
            continue  # records come newest first
        locked = str(meta.get("locked_until") or "")
        per_set[name] = CopyState(
            backup_id=set_id,
            destination=name,
            event=str(event),
            kind=str(meta.get("destination_kind", "")),
            offsite=bool(meta.get("offsite")),
            locked_until=datetime.fromisoformat(locked) if locked else None,
            at=datetime.fromtimestamp(record.timestamp, UTC),
            detail=str(meta.get("detail", "")),
        )
    return states
