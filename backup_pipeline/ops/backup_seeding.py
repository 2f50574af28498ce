"""The seeding side of ``backup_job`` (docs/architecture/BACKUP-STRATEGY.md, "Seeding across days").

``upload_budget`` is the pre-flight of ``plan_backup`` (free space, then the daily upload cap as
a seeding budget, at most ``seed_run_budget_bytes`` a run); ``report_seeding`` is how
``finalize_backup`` ends a run that wrote a seed checkpoint instead of a manifest. The decisions
are in ``services/backup_seed.py``; the sensor that starts the next run in ``seed_sensor.py``.
"""

import dataclasses
import time
from typing import Any

import dagster as dg

from backup_pipeline.destinations.base import Destination, decimal_bytes, ensure_room
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.services.backup_seed import (
    OUTCOME_SEEDING,
    OUTCOME_TAG,
    SEEDING_EVENT,
    SeedCoverage,
    UploadBudget,
    covered_by_seed,
    plan_budget,
    room_at,
    seed_outlook,
    seed_progress,
    seeding_message,
)

BACKUP_SET_ASSET = dg.AssetKey("backup_set")


def upload_budget(
    context: dg.OpExecutionContext,
    config: Any,
    dest: Destination,
    keys: BackupKeysResource,
    db_size: int,
    summaries: list[Any],
    estimate: int,
) -> UploadBudget | None:
    """The pre-flight: free space, and the daily upload cap (a seeding budget when it does not fit)."""
    cap = dest.capacity()
    if cap is None:
        return None
    # Free space first (the whole set must fit in the end); the daily cap is the budget's business.
    ensure_room(dest, estimate, cap=dataclasses.replace(cap, daily_upload_remaining=None))
    covered = (
        covered_by_seed(dest, keys.keyring, config.installation_id)
        if config.incremental_objects
        else SeedCoverage()
    )
    budget = plan_budget(
        cap,
        database_bytes=db_size,
        bucket_bytes={s.name: s.bytes for s in summaries},
        incremental=config.incremental_objects,
        covered=covered.bytes,
        margin_share=config.seed_margin_share,
        where=dest.description,
        run_budget=config.seed_run_budget_bytes,
        bucket_objects={s.name: s.objects for s in summaries},
        covered_objects=covered.objects,
    )
    if budget is not None:
        limit = sum(budget.per_bucket.values())
        why = (
            f"the backup (up to {decimal_bytes(estimate)}) exceeds what is left of the daily upload allowance "
            f"({decimal_bytes(budget.remaining)})"
            if estimate > budget.remaining
            else f"a seed is under way with more left than one seeding run's budget "
            f"({decimal_bytes(config.seed_run_budget_bytes)})"
        )
        context.log.warning(
            f"{why}: uploading at most {decimal_bytes(limit)} of objects in this run"
            + (f" (a seed covers {decimal_bytes(sum(covered.bytes.values()))} already)" if covered else "")
            + (
                f"; {decimal_bytes(budget.pending_bytes)} are left to upload, so this run ends as seeding "
                "and dumps no database (the run that completes the set does)"
                if budget.ends_seeding
                else "; the set completes when everything is uploaded"
            )
        )
    return budget


def report_seeding(
    context: dg.OpExecutionContext,
    dest: Destination,
    entry: dict[str, Any],
    buckets: list[dict],
    plan: dict[str, Any],
) -> dict:
    """A seeding run ends successfully but with no backup: a run tag, an observation of backup_set
    (the UI's "where is my backup?") and a warning in the log; no materialization, so freshness
    still judges the last complete set. The observation and the step's metadata say how far the
    seed got (``seeded_bytes``, ``bytes_left``), how many runs and days are left, and what the next
    run needs of the 24-hour window (``next_run_needs_bytes``, read by the continue_seed sensor)."""
    progress = seed_progress(buckets)
    cap = dest.capacity()
    seed = plan.get("seed") or {}
    outlook = seed_outlook(
        progress,
        database_bytes=int(plan.get("database_size_bytes", 0)),
        cap=cap,
        margin_share=float(seed.get("margin_share", 0.0)),
        run_budget=seed.get("run_budget"),
    )
    now = time.time()
    next_at = room_at(cap, outlook["next_run_needs_bytes"], now) if cap is not None else None
    message = seeding_message(
        progress, cap.daily_window_frees if cap is not None else None, outlook, next_at, now
    )
    if not progress["deferred_objects"]:
        message += (
            " (Everything fit after all — objects vanished after the plan — but this run dumped no "
            "database: the next run does, and completes the set.)"
        )
    context.instance.add_run_tags(context.run_id, {OUTCOME_TAG: OUTCOME_SEEDING})
    context.log_event(
        dg.AssetObservation(
            asset_key=BACKUP_SET_ASSET,
            description=message,
            metadata={
                "event": SEEDING_EVENT,
                "backup_id": entry["backup_id"],
                "status": "seeding: not restorable yet",
                "message": message,
                **progress,
                **outlook,
                "uploaded_bytes_this_run": entry["total_bytes"],
                "run_id": context.run_id,
                "destination": entry["destination"],
            },
        )
    )
    context.log.warning(f"backup {entry['backup_id']}: {message}")
    context.add_output_metadata(
        {
            "outcome": OUTCOME_SEEDING,
            "message": message,
            **progress,
            **outlook,
            "uploaded_bytes": entry["total_bytes"],
        }
    )
    return {"backup_id": entry["backup_id"], "manifest_file_id": None, "seeding": True}
