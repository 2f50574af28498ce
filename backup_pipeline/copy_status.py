"""The 3-2-1 status of the newest backup set: the ``backup_3_2_1`` check's verdict, as a plain function.

Counted from the ledger (``ledger.copy_states``: what ``copy_backup_job`` recorded per set and
destination; the primary's copy is the backup itself) over the *configured* destinations:

- copies: destinations holding a complete, verified copy of the newest complete regular set;
- kinds: how many different kinds of destination (local, google_drive, s3) those are;
- off-site: copies on destinations counted off-site (a local folder is on-site unless its
  ``OFFSITE`` setting says otherwise);
- immutable: copies whose every file is under a retention lock that has not ended (S3 object
  lock in GOVERNANCE or COMPLIANCE mode, read from the destination when the copy was verified).

It fails (WARN or ERROR per ``copy_policy_severity``) when a count is below ``copy_policy``, and
also whenever a configured destination's copy is known to be missing (its last copy attempt
failed, or its retention removed it): a missing copy is never silently green, even when the
policy is still met. A destination not tried yet (the copy job is queued) is "pending": named in
the description, failing only through the counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import dagster as dg

from backup_pipeline import ledger
from backup_pipeline.destination_settings import CopyPolicy, parse_copy_policy
from backup_pipeline.safety import BACKUP_SET_ASSET, Verdict, latest_materialization

if TYPE_CHECKING:
    from backup_pipeline.resources.destination import DestinationResource
    from backup_pipeline.resources.policy import BackupPolicyResource
    from backup_pipeline.settings import BackupSettings

COPY_POLICY_CHECK = "backup_3_2_1"
PENDING = "pending"


@dataclass(frozen=True)
class DestinationView:
    name: str
    kind: str
    offsite: bool


@dataclass(frozen=True)
class CopyPolicyView:
    """The configured destinations (primary first) and the policy the verdict applies."""

    destinations: tuple[DestinationView, ...]
    policy: CopyPolicy
    severity: dg.AssetCheckSeverity

    @classmethod
    def from_settings(cls, settings: BackupSettings) -> CopyPolicyView:
        return cls(
            destinations=tuple(
                DestinationView(d.name, d.kind, d.offsite) for d in settings.named_destinations()
            ),
            policy=settings.parsed_copy_policy,
            severity=_severity(settings.copy_policy_severity),
        )

    @classmethod
    def from_resources(cls, destination: DestinationResource, policy: BackupPolicyResource) -> CopyPolicyView:
        return cls(
            destinations=tuple(
                DestinationView(r.label, r.kind, r.is_offsite) for r in destination.all_named()
            ),
            policy=parse_copy_policy(policy.copy_policy),
            severity=_severity(policy.copy_policy_severity),
        )


def _severity(value: str) -> dg.AssetCheckSeverity:
    return dg.AssetCheckSeverity.ERROR if value == "error" else dg.AssetCheckSeverity.WARN


def _status(state: ledger.CopyState | None, now: datetime) -> str:
    if state is None:
        return PENDING
    if state.complete:
        if state.immutable(now) and state.locked_until is not None:
            return f"complete, immutable until {state.locked_until.isoformat(timespec='seconds')}"
        return "complete"
    if state.event == ledger.COPY_DELETED_EVENT:
        return f"deleted by its retention ({state.detail})"
    return f"MISSING: {state.detail}"


def copy_policy_verdict(
    instance: dg.DagsterInstance, view: CopyPolicyView, now: datetime | None = None
) -> Verdict:
    now = now or datetime.now(UTC)
    newest = ledger.latest_complete(instance)
    if newest is None:
        return Verdict(
            False,
            view.severity,
            "3-2-1: no complete backup yet, so no copy anywhere.",
            {"policy": view.policy.describe() or "copies=1"},
            "none",
            "no complete backup yet",
        )
    states = ledger.copy_states(instance, newest.backup_id).get(newest.backup_id, {})
    primary = view.destinations[0]
    if primary.name not in states:
        # The backup run wrote the set there (its materialization); whether it is locked is known
        # once copy_backup_job has looked.
        states = {
            **states,
            primary.name: ledger.CopyState(
                newest.backup_id,
                primary.name,
                ledger.COPY_COMPLETE_EVENT,
                primary.kind,
                primary.offsite,
                None,
                now,
            ),
        }
    per_destination = {d.name: _status(states.get(d.name), now) for d in view.destinations}
    complete = [d for d in view.destinations if d.name in states and states[d.name].complete]
    counts = {
        "copies": len(complete),
        "kinds": len({d.kind for d in complete}),
        "offsite": sum(1 for d in complete if d.offsite),
        "immutable": sum(1 for d in complete if states[d.name].immutable(now)),
    }
    short = [
        f"{key} {counts[key]} < {getattr(view.policy, key)}"
        for key in counts
        if counts[key] < getattr(view.policy, key)
    ]
    missing = [name for name, status in per_destination.items() if status.startswith(("MISSING", "deleted"))]
    pending = [name for name, status in per_destination.items() if status == PENDING]
    passed = not short and not missing
    text = (
        f"{counts['copies']} of {len(view.destinations)} destinations hold a complete copy of {newest.backup_id} "
        f"({', '.join(d.name for d in complete) or 'none'}): {counts['kinds']} kind(s), {counts['offsite']} off-site, "
        f"{counts['immutable']} immutable"
    )
    if missing:
        text += "; copy missing on " + ", ".join(f"{name} ({per_destination[name]})" for name in missing)
    if pending:
        text += "; not copied yet (copy_backup_job pending): " + ", ".join(pending)
    policy_text = view.policy.describe() or "copies=1"
    text += f". Policy {policy_text}: " + ("met" if not short else "NOT met (" + ", ".join(short) + ")")
    metadata: dict[str, Any] = {
        "backup_id": newest.backup_id,
        **counts,
        "policy": policy_text,
        "destinations": dg.MetadataValue.json(per_destination),
        "missing": dg.MetadataValue.json(missing),
        "pending": dg.MetadataValue.json(pending),
    }
    state = f"{newest.backup_id}|{counts}|missing={missing}|pending={pending}|{not short}"
    summary = ("OK: " if passed else "") + text
    return Verdict(
        passed,
        view.severity,
        ("3-2-1 OK: " if passed else "3-2-1 NOT MET: ") + text + ".",
        metadata,
        state,
        summary,
    )


def evaluation(instance: dg.DagsterInstance, verdict: Verdict) -> dg.AssetCheckEvaluation:
    """The check evaluation against the newest ``backup_set`` materialization."""
    return verdict.evaluation(COPY_POLICY_CHECK, latest_materialization(instance, BACKUP_SET_ASSET))


def alert_due(verdict: Verdict) -> bool:
    """Alert on a failing verdict only once every destination was tried (nothing pending): right after
    a backup the copies are still to come."""
    pending = verdict.metadata.get("pending")
    return not verdict.passed and not getattr(pending, "value", pending)
