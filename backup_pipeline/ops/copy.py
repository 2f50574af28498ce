"""``copy_backup_job``: the primary's complete sets copied to every other destination, then that
destination's own retention; the ledger says per set where a complete copy is.

plan_copies ──► copy_to_destination[<name>] (one step per destination, in parallel) ──► finish_copies
    ──► report_missing_copies (fails the run naming each destination without its copy)

Why a job of its own, started by the ``copy_after_backup`` sensor after each successful
``backup_job`` (rather than copy steps inside the backup run): a slow or unreachable secondary
never fails or delays the backup itself; a copy is a separate run the operator can see, alert on
and re-run; and because every run copies whatever the primary holds that a destination lacks (not
only the newest set), the next run — after the next backup, or launched by hand — fills any copy a
previous run missed or a crash interrupted. The cost: the primary must be reachable for the
backup (an unreachable primary fails the backup, alerted as today).

Thin wiring over ``services/copy_sets.py`` (write ordering: parts → verify → manifest last per
destination) and ``services/retention.py`` (each destination's keep-last). Like retention it
holds the data lease (so retention of the primary never deletes a set being copied) and the
exclusive tag.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
from pydantic import Field

from backup_pipeline import copy_status, ledger
from backup_pipeline.concurrency import EXCLUSIVE_RUN_TAGS
from backup_pipeline.destinations.base import Destination, DestinationError
from backup_pipeline.ops.data_lease import (
    release_data_lease_on_failure,
    release_run_data_lease,
    run_data_lease,
)
from backup_pipeline.ops.retention import backup_ids_in_use, locked_summary
from backup_pipeline.ops.step_errors import quiet_failure
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.policy import BackupPolicyResource
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.services.copy_sets import CopiedSet, copy_sets
from backup_pipeline.services.retention import (
    BackupSetInfo,
    DeletedSet,
    apply_retention,
    discover_sets,
    plan_retention,
)

COPY_JOB_NAME = "copy_backup_job"
COPY_FAILED = "COPY_INCOMPLETE"
DESTINATION_UNAVAILABLE = "DESTINATION_UNAVAILABLE"


class CopyConfig(dg.Config):
    backup_ids: list[str] = Field(
        default_factory=list,
        description="Sets to copy; empty (recommended): every complete set of the primary a destination "
        "keeps (its newest keep-last) and does not hold yet.",
    )
    retention: bool = Field(True, description="Apply each destination's own retention after copying.")


def wanted_sets(sets: list[BackupSetInfo], keep_last: int) -> list[str]:
    """The primary's complete regular sets a destination keeping ``keep_last`` should hold, newest
    first (older ones its retention would delete right away; a restore's safety sets stay on the primary)."""
    complete = [s for s in sets if s.complete and not s.is_safety]
    return [s.backup_id for s in complete[:keep_last]]


@dg.op(
    out={"plan": dg.Out(dict), "targets": dg.DynamicOut(dict)},
    description="Lists the complete sets on the primary destination, records the primary's copy of the newest "
    "one in the ledger, and starts one copy step per other destination.",
)
def plan_copies(
    context: dg.OpExecutionContext,
    config: CopyConfig,
    destination: DestinationResource,
    backup_policy: BackupPolicyResource,
    app_db: PostgresResource,
) -> Any:
    with run_data_lease(context, app_db):
        primary = destination.get_destination()
        try:
            sets = discover_sets(primary, backup_policy.installation_id)
        except DestinationError as exc:
            raise quiet_failure(
                f"cannot list the primary destination {destination.label} ({primary.description}): {exc}. "
                "Nothing was copied.",
                DESTINATION_UNAVAILABLE,
            ) from None
    complete = [s for s in sets if s.complete and not s.is_safety]
    if complete:
        newest = complete[0]
        known = ledger.copy_states(context.instance, newest.backup_id).get(newest.backup_id, {})
        if destination.label not in known or not known[destination.label].complete:
            context.log_event(
                ledger.copy_observation(
                    newest.backup_id,
                    destination.label,
                    ledger.COPY_COMPLETE_EVENT,
                    kind=destination.kind,
                    offsite=destination.is_offsite,
                    locked_until=newest.locked_until,
                    detail="the backup's own set (primary)",
                    run_id=context.run_id,
                )
            )
    plan = {
        "installation_id": backup_policy.installation_id,
        "primary": destination.label,
        "newest": complete[0].backup_id if complete else None,
        "on_primary": [s.backup_id for s in complete],
    }
    context.log.info(
        f"{len(complete)} complete set(s) on the primary {destination.label} ({primary.description}); copying to "
        + (", ".join(c.label for c in destination.copy_resources()) or "no other destination")
    )
    yield dg.Output(plan, "plan", metadata={"complete_on_primary": len(complete)})
    for target in destination.copy_resources():
        keep = target.keep_last or backup_policy.retention_keep_last
        ids = list(config.backup_ids) or wanted_sets(sets, keep)
        yield dg.DynamicOutput(
            {"name": target.label, "backup_ids": ids, "keep_last": keep, "retention": config.retention},
            output_name="targets",
            mapping_key=target.label,
        )


@dg.op(
    description="Copies the sets one destination lacks from the primary (parts, verified there, manifest last), "
    "records each copy in the ledger, then applies that destination's retention. A destination that fails is "
    "reported (ledger: copy_missing) and fails the run in finish_copies; the other destinations are unaffected.",
)
def copy_to_destination(
    context: dg.OpExecutionContext,
    plan: dict,
    target: dict,
    destination: DestinationResource,
    backup_policy: BackupPolicyResource,
    app_db: PostgresResource,
) -> dict:
    resource = destination.named(target["name"])
    with run_data_lease(context, app_db):
        source, dest = destination.get_destination(), resource.get_destination()
        name = resource.label

        def copied(result: CopiedSet) -> None:
            context.log.info(f"{name}: {result.backup_id} {result.summary}")
            context.log_event(
                ledger.copy_observation(
                    result.backup_id,
                    name,
                    ledger.COPY_COMPLETE_EVENT,
                    kind=resource.kind,
                    offsite=resource.is_offsite,
                    locked_until=result.locked_until,
                    detail=result.summary,
                    run_id=context.run_id,
                    extra={"files": result.files, "bytes": result.bytes},
                )
            )

        done, failed = copy_sets(
            source,
            dest,
            plan["installation_id"],
            target["backup_ids"],
            on_copied=copied,
            on_file=lambda part, stored: context.log.info(
                f"{name}: {part} copied and verified ({stored.size} bytes)"
            ),
        )
        for backup_id, why in failed.items():
            context.log.warning(f"{name}: no copy of {backup_id}: {why}")
            context.log_event(
                ledger.copy_observation(
                    backup_id,
                    name,
                    ledger.COPY_MISSING_EVENT,
                    kind=resource.kind,
                    offsite=resource.is_offsite,
                    detail=why,
                    run_id=context.run_id,
                )
            )
        retention: dict[str, Any] = {}
        if target["retention"] and not failed:
            try:
                retention = _retention(
                    context, dest, resource, plan["installation_id"], target["keep_last"], backup_policy
                )
            except DestinationError as exc:
                # The copies are made and recorded; a retention that could not run here is retried
                # by the next run, as a failed deletion of retention_job is.
                context.log.warning(f"{name}: retention not applied this time: {exc}")
                retention = {"error": str(exc)}
    copied_now = [c.backup_id for c in done if not c.was_complete]
    already = [c.backup_id for c in done if c.was_complete]
    context.add_output_metadata(
        {
            "destination": name,
            "copied": dg.MetadataValue.json(copied_now),
            "already_complete": dg.MetadataValue.json(already),
            "missing": dg.MetadataValue.json(failed),
        }
    )
    out = {"name": name, "copied": copied_now, "already": already, "failed": failed, "retention": retention}
    return out


def _retention(
    context: dg.OpExecutionContext,
    dest: Destination,
    resource: DestinationResource,
    installation_id: str,
    keep_last: int,
    policy: BackupPolicyResource,
) -> dict[str, Any]:
    """That destination's keep-last (``services/retention.py``): its deletions are ``copy_deleted``
    events (the set may live on elsewhere), a locked set is reported, never a failure."""
    sets = discover_sets(dest, installation_id)
    plan = plan_retention(
        sets,
        keep_last=keep_last,
        incomplete_grace=timedelta(hours=policy.incomplete_grace_hours),
        now=datetime.now(UTC),
        in_use=backup_ids_in_use(context.instance),
        verified=ledger.verified_backup_ids(context.instance),
    )

    def record(deleted: DeletedSet) -> None:
        context.log.info(f"{resource.label}: deleted {deleted.backup_id} ({deleted.reason})")
        if deleted.was_complete:
            context.log_event(
                ledger.copy_observation(
                    deleted.backup_id,
                    resource.label,
                    ledger.COPY_DELETED_EVENT,
                    kind=resource.kind,
                    offsite=resource.is_offsite,
                    detail=deleted.reason,
                    run_id=context.run_id,
                )
            )

    result = apply_retention(dest, installation_id, plan, on_deleted=record)
    for locked in result.locked:
        context.log.info(f"{resource.label}: kept {locked.describe()}")
    for backup_id, why in result.failed.items():
        context.log.warning(f"{resource.label}: could not delete {backup_id}: {why}; the next run retries")
    return {
        "deleted": [d.backup_id for d in result.deleted],
        "locked": locked_summary(result.locked),
        "failed": result.failed,
    }


@dg.op(
    ins={"results": dg.In(list[dict])},
    description="Records the backup_3_2_1 check for the newest set and fails the run naming every destination "
    "that lacks a copy (the next run fills it).",
)
def finish_copies(
    context: dg.OpExecutionContext,
    plan: dict,
    results: list[dict],
    destination: DestinationResource,
    backup_policy: BackupPolicyResource,
    app_db: PostgresResource,
) -> dict:
    release_run_data_lease(context, app_db)
    policy = copy_status.CopyPolicyView.from_resources(destination, backup_policy)
    verdict = copy_status.copy_policy_verdict(context.instance, policy)
    context.log_event(copy_status.evaluation(context.instance, verdict))  # type: ignore[arg-type]
    missing = {r["name"]: r["failed"] for r in results if r["failed"]}
    return {"newest": plan["newest"], "verdict": verdict.description, "missing": missing}


@dg.op(
    description="Fails the run naming every destination that lacks a copy (alert_on_run_failure alerts); the "
    "next copy_backup_job run fills them. Its own step, so the check recorded before it is kept.",
)
def report_missing_copies(finished: dict) -> None:
    # Events an op logs are emitted only when it returns, so the failure is raised after
    # finish_copies has recorded the backup_3_2_1 evaluation.
    missing: dict[str, dict[str, str]] = finished["missing"]
    if missing:
        raise quiet_failure(
            "copies missing: "
            + "; ".join(
                f"{name}: {len(failed)} set(s), e.g. {next(iter(failed))}: {next(iter(failed.values()))}"
                for name, failed in sorted(missing.items())
            )
            + ". The other destinations hold their copies; the next copy_backup_job run fills these.",
            COPY_FAILED,
        )


@dg.job(
    name=COPY_JOB_NAME,
    description="Copies each complete backup set of the primary destination to every other destination "
    "(parts verified there, manifest last), then applies each destination's own retention. Started after each "
    "backup by the copy_after_backup sensor; a copy missed by a failed or interrupted run is made by the next.",
    tags=EXCLUSIVE_RUN_TAGS,
    hooks={release_data_lease_on_failure},
)
def copy_backup_job() -> None:
    plan, targets = plan_copies()
    results = targets.map(lambda t: copy_to_destination(plan, t))
    report_missing_copies(finish_copies(plan, results.collect()))
