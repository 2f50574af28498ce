"""``retention_job`` and ``delete_backup_job``: thin wiring over ``services/retention.py``.

Ledger events (agreed with ``ledger.py``): a deleted set is recorded as an
``AssetObservation`` of ``backup_set`` with metadata ``backup_id``, ``event="deleted"``,
``reason``, ``files``, ``bytes_freed``, ``was_complete`` — logged only after every file of the
set is gone from the destination. The original materialization stays, so history remains
truthful ("made then, deleted now").
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from backup_pipeline.audit import AuditLog
from backup_pipeline.concurrency import EXCLUSIVE_RUN_TAGS
from backup_pipeline.destinations.base import Destination, DestinationError, LockedError
from backup_pipeline.ledger import verified_backup_ids
from backup_pipeline.ops.data_lease import (
    release_data_lease_on_failure,
    release_run_data_lease,
    run_data_lease,
)
from backup_pipeline.ops.restore_config import TAG_RESTORE_OF
from backup_pipeline.ops.step_errors import quiet_failure
from backup_pipeline.ops.verification import VERIFY_JOB_NAME
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.resources.policy import BackupPolicyResource
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.schedules import IN_PROGRESS_STATUSES, RESTORE_JOB_NAME
from backup_pipeline.services.backup_parts import is_backup_id
from backup_pipeline.services.backup_upload import list_sets
from backup_pipeline.services.reachability import References, ReferencesUnknown, find_references
from backup_pipeline.services.retention import (
    DeletedSet,
    LockedSet,
    RetentionError,
    RetentionPlan,
    apply_retention,
    check_manual_deletion,
    delete_backup_set,
    discover_sets,
    plan_retention,
)
from backup_pipeline.services.retention_rules import (
    CONFIG_NAMES,
    PeriodRules,
    decisions_table,
    rule_counts,
    rule_problems,
)

BACKUP_SET_ASSET = dg.AssetKey("backup_set")
BACKUP_ID_TAG = "backup_pipeline/backup_id"
DELETED_EVENT = "deleted"
RETENTION_JOB_NAME = "retention_job"
DELETE_BACKUP_JOB_NAME = "delete_backup_job"
# Codes of the expected failures (one line, no stack trace in the run view: ops/step_errors.py).
BAD_INPUT = "BAD_INPUT"
DESTINATION_UNAVAILABLE = "DESTINATION_UNAVAILABLE"


def deletion_event(deleted: DeletedSet, run_id: str) -> dg.AssetObservation:
    return dg.AssetObservation(
        asset_key=BACKUP_SET_ASSET,
        description=f"backup set {deleted.backup_id} deleted: {deleted.reason}",
        metadata={
            "backup_id": deleted.backup_id,
            "event": DELETED_EVENT,
            "reason": deleted.reason,
            "files": deleted.files,
            "bytes_freed": dg.MetadataValue.int(deleted.bytes_freed),
            "was_complete": deleted.was_complete,
            "deleted_by_run": run_id,
        },
    )


def backup_ids_in_use(instance: dg.DagsterInstance) -> set[str]:
    """Backup ids read by restores and verifications that are queued or running (their tags, else any
    ``backup_id`` in config). Verification does not take the data lock, so it runs beside retention."""
    in_use: set[str] = set()
    for job_name in (RESTORE_JOB_NAME, VERIFY_JOB_NAME):
        for run in instance.get_runs(filters=dg.RunsFilter(job_name=job_name, statuses=IN_PROGRESS_STATUSES)):
            in_use.update(run.tags[tag] for tag in (BACKUP_ID_TAG, TAG_RESTORE_OF) if run.tags.get(tag))
            in_use.update(_config_backup_ids(run.run_config))
    return in_use


def _config_backup_ids(value: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "backup_id" and isinstance(item, str) and is_backup_id(item):
                found.add(item)
            else:
                found |= _config_backup_ids(item)
    elif isinstance(value, list):
        for item in value:
            found |= _config_backup_ids(item)
    return found


def ledger_complete_count(instance: dg.DagsterInstance) -> int:
    return len(instance.fetch_materializations(BACKUP_SET_ASSET, limit=1).records)


@contextmanager
def _data_lock(context: dg.OpExecutionContext, app_db: PostgresResource) -> Iterator[None]:
    """The run's data lease for this one-op job, released when the op is done (a failure: by the hook);
    a busy lease (``BACKUP_LOCKED``) or an unreachable database (``DATABASE_UNREACHABLE``) fails the run."""
    with run_data_lease(context, app_db):
        yield
    release_run_data_lease(context, app_db)


# --- retention -------------------------------------------------------------------------------


class RetentionConfig(dg.Config):
    keep_last: int | None = Field(
        None, description="Override of retention_keep_last for this run (at least 1); empty = the setting."
    )
    keep_daily: int | None = Field(
        None, description="Override of retention_keep_daily (0 = off); empty = the setting."
    )
    keep_weekly: int | None = Field(
        None, description="Override of retention_keep_weekly; empty = the setting."
    )
    keep_monthly: int | None = Field(
        None, description="Override of retention_keep_monthly; empty = the setting."
    )
    keep_yearly: int | None = Field(
        None, description="Override of retention_keep_yearly; empty = the setting."
    )
    dry_run: bool = Field(
        False,
        description="Only report what would be deleted and which rule keeps each set (try a policy here).",
    )


def _effective_rules(config: RetentionConfig, policy: BackupPolicyResource) -> tuple[int, PeriodRules]:
    """The policy's rules with this run's overrides (a config value wins, empty = the setting)."""

    def pick(override: int | None, setting: int) -> int:
        return setting if override is None else override

    return pick(config.keep_last, policy.retention_keep_last), PeriodRules(
        daily=pick(config.keep_daily, policy.retention_keep_daily),
        weekly=pick(config.keep_weekly, policy.retention_keep_weekly),
        monthly=pick(config.keep_monthly, policy.retention_keep_monthly),
        yearly=pick(config.keep_yearly, policy.retention_keep_yearly),
        timezone=policy.schedule_timezone,
    )


@dg.op(
    description="Delete backup sets no retention rule keeps (newest N, daily/weekly/monthly/yearly), and stale "
    "incomplete sets; the output metadata says which rule keeps each set."
)
def apply_retention_op(
    context: dg.OpExecutionContext,
    config: RetentionConfig,
    destination: DestinationResource,
    backup_policy: BackupPolicyResource,
    app_db: PostgresResource,
    keys: BackupKeysResource,
) -> dict:
    keep_last, periods = _effective_rules(config, backup_policy)
    problems = rule_problems(keep_last, periods, CONFIG_NAMES)
    if problems:
        raise quiet_failure("; ".join(problems), BAD_INPUT)
    with _data_lock(context, app_db):
        return _run_retention(context, config, destination, backup_policy, keep_last, periods, keys)


def _run_retention(
    context: dg.OpExecutionContext,
    config: RetentionConfig,
    destination_resource: DestinationResource,
    policy: BackupPolicyResource,
    keep_last: int,
    periods: PeriodRules,
    keys: BackupKeysResource,
) -> dict:
    destination = destination_resource.get_destination()
    try:
        sets = discover_sets(destination, policy.installation_id)
    except DestinationError as exc:
        raise quiet_failure(
            f"cannot list backups on {destination.description}: {exc}. Nothing was deleted.",
            DESTINATION_UNAVAILABLE,
        ) from None
    if not sets and ledger_complete_count(context.instance) > 0:
        # An unmounted NAS folder lists as empty: never treat "sees nothing" as "nothing exists".
        raise quiet_failure(
            f"{destination.description} shows no backup sets although the ledger records complete "
            "backups: the destination is unreachable, unmounted or misconfigured. Nothing was deleted.",
            DESTINATION_UNAVAILABLE,
        )
    plan = plan_retention(
        sets,
        keep_last=keep_last,
        incomplete_grace=timedelta(hours=policy.incomplete_grace_hours),
        now=datetime.now(UTC),
        in_use=backup_ids_in_use(context.instance),
        verified=verified_backup_ids(context.instance),
        periods=periods,
        seed_abandon=timedelta(days=policy.seed_abandon_days),
    )
    for planned in plan.delete:
        if planned.reason.startswith("abandoned seed"):
            # Never silent (BACKUP-STRATEGY.md "Seeding across days"): the first full never completed.
            context.log.warning(
                f"backup {planned.backup_id}: {planned.reason}; its files are deleted. The next backup starts "
                "a new seed from nothing: check the schedule runs and the Drive upload allowance."
            )
    context.log.info(
        f"{len(sets)} sets on {destination.description}; keeping {len(plan.keep)}, "
        f"deleting {len(plan.delete)}"
        + (f", {len(plan.locked)} due but locked" if plan.locked else "")
        + (" (dry run)" if config.dry_run else "")
    )
    report = plan_report(plan, keep_last, periods)
    context.log.info(
        f"rules: {report['rules'].value}; kept sets per rule: {json.dumps(report['kept_by_rule'].value)}\n"
        + str(report["decisions"].value)
    )
    for backup_id, why in plan.protected.items():
        context.log.info(f"kept {backup_id}: {why}")
    summary: dict[str, Any] = {
        "kept": plan.keep,
        "planned": [d.backup_id for d in plan.delete],
        "deleted": [],
        "bytes_freed": 0,
        "failed": {},
        "locked": locked_summary(plan.locked),
        "kept_by_rule": report["kept_by_rule"].value,
    }
    if config.dry_run:
        report_locked(context, plan.locked)
        for planned in plan.delete:
            context.log.info(
                f"would delete {planned.backup_id} ({planned.size_bytes} bytes): {planned.reason}"
            )
        context.add_output_metadata(
            {
                **report,
                "dry_run": True,
                "planned_count": len(summary["planned"]),
                "planned": dg.MetadataValue.json(summary["planned"][:REPORT_ROWS]),
            }
        )
        return summary

    audit = AuditLog(_state_dir(policy))

    def record(deleted: DeletedSet) -> None:
        context.log_event(deletion_event(deleted, context.run_id))
        context.log.info(
            f"deleted {deleted.backup_id}: {deleted.files} files, {deleted.bytes_freed} bytes freed ({deleted.reason})"
        )
        audit.append(
            "retention_deleted",
            {
                "backup_id": deleted.backup_id,
                "reason": deleted.reason,
                "files": deleted.files,
                "bytes_freed": deleted.bytes_freed,
                "run_id": context.run_id,
            },
        )

    references = _references(
        destination, policy.installation_id, keys, exclude={d.backup_id for d in plan.delete}
    )
    result = apply_retention(
        destination, policy.installation_id, plan, on_deleted=record, references=references
    )
    for backup_id, parts in result.kept_parts.items():
        for part, by in parts.items():
            context.log.info(
                f"kept part {part} of {backup_id}: referenced by the kept set(s) {', '.join(by)}"
            )
    summary.update(
        deleted=[d.backup_id for d in result.deleted],
        bytes_freed=result.bytes_freed,
        failed=result.failed,
        locked=locked_summary(result.locked),
    )
    report_locked(context, result.locked)
    if result.failed:
        # The sets that did go are in the ledger (deletion observations) and the log above.
        raise quiet_failure(
            f"{len(result.failed)} backup set(s) could not be deleted and stay in the ledger; "
            "the next retention run retries them: "
            + "; ".join(f"{bid}: {why}" for bid, why in result.failed.items())
            + f" ({len(summary['deleted'])} deleted, {result.bytes_freed} bytes freed"
            + (f", {len(summary['locked'])} kept under a lock" if summary["locked"] else "")
            + ")",
            "RETENTION_DELETE_FAILED",
        )
    context.add_output_metadata(
        {
            **report,
            "kept": dg.MetadataValue.json(plan.keep[:REPORT_ROWS]),
            "deleted_count": len(summary["deleted"]),
            "deleted": dg.MetadataValue.json(summary["deleted"][:REPORT_ROWS]),
            "bytes_freed": result.bytes_freed,
            "locked": dg.MetadataValue.json(summary["locked"]),
            "parts_kept_for_kept_sets": dg.MetadataValue.json(result.kept_parts),
        }
    )
    return summary


def _references(
    destination: Destination, installation_id: str, keys: BackupKeysResource, exclude: set[str]
) -> References:
    """What the complete sets that stay (all but ``exclude``) reference; a failure refuses the run."""
    grouped = list_sets(destination, installation_id)
    try:
        return find_references(destination, keys.keyring, grouped, [b for b in grouped if b not in exclude])
    except ReferencesUnknown as exc:
        raise quiet_failure(str(exc), DESTINATION_UNAVAILABLE) from None
    except DestinationError as exc:
        raise quiet_failure(
            f"cannot list backups on {destination.description}: {exc}. Nothing was deleted.",
            DESTINATION_UNAVAILABLE,
        ) from None


# Sets listed in the run's metadata and log (the first retention after a policy change may delete
# thousands); the counts cover every set, the ledger and audit log every deletion.
REPORT_ROWS = 50


def plan_report(plan: RetentionPlan, keep_last: int, periods: PeriodRules) -> dict[str, Any]:
    """What the run keeps and why, bounded: counts per rule over every set, a table of the newest sets."""
    rules = ([f"newest {keep_last}"] if keep_last else []) + ([periods.describe()] if periods.active else [])
    return {
        "rules": dg.MetadataValue.text(", ".join(rules)),
        "kept_by_rule": dg.MetadataValue.json(rule_counts(plan.decisions)),
        "decisions": dg.MetadataValue.md(decisions_table(plan.decisions, periods.timezone, REPORT_ROWS)),
    }


def locked_summary(locked: list[LockedSet]) -> dict[str, str | None]:
    """backup id → until when it is locked (ISO 8601), None when the destination gave no date."""
    return {s.backup_id: s.until.isoformat(timespec="seconds") if s.until else None for s in locked}


def report_locked(context: dg.OpExecutionContext, locked: list[LockedSet]) -> None:
    """Sets due for deletion that the destination keeps for now: a state, not a failure (rule 9)."""
    for entry in locked:
        when = (
            f"after {entry.until.isoformat(timespec='seconds')}"
            if entry.until
            else "once the destination allows it (see the message)"
        )
        context.log.info(f"kept {entry.describe()}; a retention run {when} deletes it")


def _state_dir(policy: BackupPolicyResource) -> Path:
    return Path(policy.state_dir)


@dg.job(
    name=RETENTION_JOB_NAME,
    description="Retention: keep the newest N complete backup sets (N = retention_keep_last) and, when set, the "
    "newest set of each of the last days/ISO weeks/months/years (retention_keep_daily/weekly/monthly/yearly, in "
    "the schedule's time zone); never the newest complete or newest verified one nor one a restore is reading; "
    "remove incomplete sets past the grace period. The run's metadata lists which rule keeps each set. "
    "Deletions are recorded in the ledger; a failed deletion fails the run and is retried next time. A set "
    "the destination keeps (S3 object lock) is reported as 'locked until …' and deleted by a run after that.",
    tags=EXCLUSIVE_RUN_TAGS,
    hooks={release_data_lease_on_failure},
)
def retention_job() -> None:
    apply_retention_op()


# --- delete one backup --------------------------------------------------------------------------


class DeleteBackupConfig(dg.Config):
    backup_id: str = Field(description="Id of the backup set to delete, e.g. 20261127T023000Z-1a2b3c4d.")
    confirm: str = Field(description="Type exactly `delete <backup id>` to confirm.")
    force: bool = Field(False, description="Allow deleting the newest complete backup.")


@dg.op(description="Delete one backup set (manifest first), after checking the typed confirmation.")
def delete_backup_op(
    context: dg.OpExecutionContext,
    config: DeleteBackupConfig,
    destination: DestinationResource,
    backup_policy: BackupPolicyResource,
    app_db: PostgresResource,
    keys: BackupKeysResource,
) -> dict:
    if not is_backup_id(config.backup_id):
        raise quiet_failure(
            f"backup_id: {config.backup_id!r} is not a backup id (yyyymmddThhmmssZ-xxxxxxxx)", BAD_INPUT
        )
    expected = f"delete {config.backup_id}"
    if config.confirm.strip() != expected:
        raise quiet_failure(f"confirm: type exactly {expected!r} to delete this backup", BAD_INPUT)
    with _data_lock(context, app_db):
        destination_ = destination.get_destination()
        try:
            sets = discover_sets(destination_, backup_policy.installation_id)
            target = check_manual_deletion(
                sets, config.backup_id, force=config.force, in_use=backup_ids_in_use(context.instance)
            )
            if target.locked_until is not None and target.locked_until > datetime.now(UTC):
                return _refused(context, backup_policy, config.backup_id, target.locked_until, "object lock")
            references = _references(
                destination_, backup_policy.installation_id, keys, exclude={target.backup_id}
            )
            deleted = delete_backup_set(
                destination_,
                backup_policy.installation_id,
                target.backup_id,
                keep_parts=references.of_set(target.backup_id),
            )
            for part, by in deleted.kept_parts.items():
                context.log.info(f"kept part {part}: referenced by the kept set(s) {', '.join(by)}")
        except LockedError as exc:
            return _refused(context, backup_policy, config.backup_id, exc.until, str(exc))
        except RetentionError as exc:
            raise quiet_failure(str(exc), "DELETE_REFUSED") from None
        except DestinationError as exc:
            raise quiet_failure(
                f"deleting {config.backup_id} on {destination_.description} failed: {exc}. "
                "The ledger still lists it; run the job again.",
                DESTINATION_UNAVAILABLE,
            ) from None
    context.log_event(deletion_event(deleted, context.run_id))
    AuditLog(_state_dir(backup_policy)).append(
        "backup_deleted",
        {
            "backup_id": deleted.backup_id,
            "forced": config.force,
            "files": deleted.files,
            "bytes_freed": deleted.bytes_freed,
            "run_id": context.run_id,
        },
    )
    context.log.info(f"deleted {deleted.backup_id}: {deleted.files} files, {deleted.bytes_freed} bytes freed")
    return {"backup_id": deleted.backup_id, "files": deleted.files, "bytes_freed": deleted.bytes_freed}


def _refused(
    context: dg.OpExecutionContext,
    policy: BackupPolicyResource,
    backup_id: str,
    until: datetime | None,
    detail: str,
) -> dict:
    """The destination keeps the set (object lock, no delete permission): reported, not a failure."""
    when = (
        f"locked until {until.isoformat(timespec='seconds')}"
        if until
        else "the destination refused the delete"
    )
    context.log.warning(
        f"{backup_id} was not deleted: {when} ({detail}). Nothing of it was deleted and the ledger still lists it; "
        + (f"run this job again after {until.isoformat(timespec='seconds')}" if until else "see the message")
        + " (retention deletes it by itself once it is older than the newest sets it keeps)."
    )
    AuditLog(_state_dir(policy)).append(
        "backup_delete_refused",
        {
            "backup_id": backup_id,
            "locked_until": until.isoformat(timespec="seconds") if until else None,
            "run_id": context.run_id,
        },
    )
    context.add_output_metadata(
        {"backup_id": backup_id, "deleted": False, "locked_until": until.isoformat() if until else "no date"}
    )
    return {
        "backup_id": backup_id,
        "files": 0,
        "bytes_freed": 0,
        "locked_until": until.isoformat(timespec="seconds") if until else None,
    }


@dg.job(
    name=DELETE_BACKUP_JOB_NAME,
    description="Delete one backup set. Config: backup_id and confirm: 'delete <backup id>'; the newest "
    "complete backup is refused unless force: true. A set under S3 object lock is not deleted: the run says "
    "until when it is locked.",
    tags=EXCLUSIVE_RUN_TAGS,
    hooks={release_data_lease_on_failure},
)
def delete_backup_job() -> None:
    delete_backup_op()
