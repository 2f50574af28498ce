"""The seeding side of ``backup_job`` (docs/architecture/BACKUP-STRATEGY.md, "Seeding across days").

``upload_budget`` is the pre-flight of ``plan_backup`` (free space, then the daily upload cap as
a seeding budget); ``report_seeding`` is how ``finalize_backup`` ends a run that wrote a seed
checkpoint instead of a manifest. The decisions are in ``services/backup_seed.py``.
"""

import dataclasses
from typing import Any

import dagster as dg

from backup_pipeline.destinations.base import Destination, decimal_bytes, ensure_room
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.services.backup_seed import (
    OUTCOME_SEEDING,
    OUTCOME_TAG,
    SEEDING_EVENT,
    UploadBudget,
    covered_by_seed,
    plan_budget,
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
    bucket_bytes = {s.name: s.bytes for s in summaries}
    covered = (
        covered_by_seed(dest, keys.keyring, config.installation_id) if config.incremental_objects else {}
    )
    budget = plan_budget(
        cap,
        database_bytes=db_size,
        bucket_bytes=bucket_bytes,
        incremental=config.incremental_objects,
        covered=covered,
        margin_share=config.seed_margin_share,
        where=dest.description,
    )
    if budget is not None:
        context.log.warning(
            f"the backup (up to {decimal_bytes(estimate)}) exceeds what is left of the daily upload allowance "
            f"({decimal_bytes(budget.remaining)}): uploading at most "
            f"{decimal_bytes(sum(budget.per_bucket.values()))} of objects in this run"
            + (f" (a seed covers {decimal_bytes(sum(covered.values()))} already)" if covered else "")
            + "; the set completes when everything is uploaded"
        )
    return budget


def report_seeding(
    context: dg.OpExecutionContext, dest: Destination, entry: dict[str, Any], buckets: list[dict]
) -> dict:
    """A seeding run ends successfully but with no backup: a run tag, an observation of backup_set
    (the UI's "where is my backup?") and a warning in the log; no materialization, so freshness
    still judges the last complete set."""
    progress = seed_progress(buckets)
    cap = dest.capacity()
    message = seeding_message(progress, cap.daily_window_frees if cap is not None else None)
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
                "uploaded_bytes_this_run": entry["total_bytes"],
                "run_id": context.run_id,
                "destination": entry["destination"],
            },
        )
    )
    context.log.warning(f"backup {entry['backup_id']}: {message}")
    context.add_output_metadata(
        {"outcome": OUTCOME_SEEDING, "message": message, **progress, "uploaded_bytes": entry["total_bytes"]}
    )
    return {"backup_id": entry["backup_id"], "manifest_file_id": None, "seeding": True}
