"""``continue_seed``: starts the next backup run as soon as one ends as seeding and the 24-hour
upload window has room for it (docs/architecture/BACKUP-STRATEGY.md, "Seeding across days").

Loaded with incremental object backups on a Google Drive primary destination (the only case in
which a backup can seed), on by default: each seeding run uploads at most
``seed_run_budget_bytes`` (50 GiB) so that a crash loses little, and without this sensor a seed
would advance by one such run per scheduled backup instead of by a day's cap. Its UI toggle
turns it off (the scheduled backups then continue the seed, one run each).

It requests a run only when the newest backup run ended as seeding (run tag
``backup_pipeline/outcome: seeding``), no backup or restore is queued or running, the seeding
run made progress (or was not one this sensor started), and what is left of the window holds what that run said the next one needs
(``next_run_needs_bytes`` of its ``backup_set`` observation); otherwise it says why, and when
the window will have room. The run key names the seeding run, so each one is continued once.
"""

from __future__ import annotations

import time
from typing import Any

import dagster as dg

from backup_pipeline.destinations.base import Destination, DestinationError, decimal_bytes
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.schedules import BACKUP_JOB_NAME, TRIGGER_TAG, in_progress_runs
from backup_pipeline.services.backup_seed import (
    OUTCOME_SEEDING,
    OUTCOME_TAG,
    SEEDING_EVENT,
    room_at,
    utc_text,
)
from backup_pipeline.settings import DEFAULT_RUN_SENSOR_INTERVAL_SECONDS

CONTINUE_SEED_SENSOR = "continue_seed"
#: Tag of a run the sensor started: the backup id of the seed checkpoint it continues from.
CONTINUES_SEED_TAG = "backup_pipeline/continues_seed"
BACKUP_ID_TAG = "backup_pipeline/backup_id"


def seeding_observation(instance: dg.DagsterInstance, run_id: str) -> dict[str, Any] | None:
    """The metadata of the ``backup_set`` observation with ``event=seeding`` the run logged."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_OBSERVATION):
        observation = entry.asset_observation
        if observation is None or observation.asset_key != dg.AssetKey("backup_set"):
            continue
        meta = {k: getattr(v, "value", v) for k, v in observation.metadata.items()}
        if meta.get("event") == SEEDING_EVENT:
            return meta
    return None


def continue_seed_verdict(
    instance: dg.DagsterInstance, destination: Destination, now: float
) -> dg.RunRequest | dg.SkipReason:
    """The sensor's decision (a plain function: the tests call it with a real instance too)."""
    busy = in_progress_runs(instance)
    if busy:
        names = ", ".join(f"{r.job_name} {r.run_id[:8]} ({r.status.value})" for r in busy)
        return dg.SkipReason(f"a data-touching run is in progress: {names}")
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=BACKUP_JOB_NAME), limit=1)
    if not runs:
        return dg.SkipReason("no backup run yet")
    run = runs[0]
    backup_id = run.tags.get(BACKUP_ID_TAG, "?")
    if run.status != dg.DagsterRunStatus.SUCCESS or run.tags.get(OUTCOME_TAG) != OUTCOME_SEEDING:
        return dg.SkipReason(
            f"no seed to continue: the newest backup run {run.run_id[:8]} ({backup_id}) ended "
            f"{run.status.value}, not as seeding"
        )
    meta = seeding_observation(instance, run.run_id)
    if meta is None or "next_run_needs_bytes" not in meta:
        return dg.SkipReason(
            f"backup run {run.run_id[:8]} ended as seeding but recorded no progress to continue from "
            "(written by an older version?): the next scheduled backup continues the seed"
        )
    stuck = int(meta.get("seeded_objects_this_run", 0)) == 0 and int(meta.get("deferred_objects", 0)) > 0
    if stuck and run.tags.get(CONTINUES_SEED_TAG):
        # This sensor started it with room for a run's budget, and it still archived nothing (other
        # uploads took the window meanwhile, or the next object is larger than a day's share):
        # starting another at once could repeat that forever.
        return dg.SkipReason(
            f"the seeding run {run.run_id[:8]} ({backup_id}) that this sensor started uploaded no object: "
            "not continued at once, the next scheduled (or a manual) backup continues the seed"
        )
    need = int(meta["next_run_needs_bytes"])
    try:
        cap = destination.capacity()
    except DestinationError as exc:
        return dg.SkipReason(f"could not read what is left of the daily upload allowance: {exc}")
    left = cap.daily_upload_remaining if cap is not None else None
    if cap is not None and left is not None and left < need:
        at = room_at(cap, need, now)
        when = (
            f"after {utc_text(at)} UTC, when the 24-hour upload window has room for it"
            if at is not None
            else "never within one window: the daily cap is smaller than a run needs (lower "
            "BACKUP_PIPELINE_SEED_RUN_BUDGET_BYTES)"
        )
        return dg.SkipReason(
            f"the seed of backup {backup_id} continues {when}: the next run needs about "
            f"{decimal_bytes(need)} of the window and {decimal_bytes(left)} is left"
        )
    return dg.RunRequest(
        run_key=f"continue-seed-{run.run_id}",
        tags={TRIGGER_TAG: "sensor", CONTINUES_SEED_TAG: backup_id},
    )


def build_continue_seed_sensor(
    destination: DestinationResource, interval_seconds: int = DEFAULT_RUN_SENSOR_INTERVAL_SECONDS
) -> dg.SensorDefinition:
    """``destination``: the primary destination (built from settings, like the backup's resource);
    passed in rather than bound as a Dagster resource, so the sensor needs none."""

    @dg.sensor(
        name=CONTINUE_SEED_SENSOR,
        job_name=BACKUP_JOB_NAME,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Seeding across days: once a backup run ends as seeding (a first full larger than what is "
        "left of Drive's daily upload cap, uploaded in runs of at most BACKUP_PIPELINE_SEED_RUN_BUDGET_BYTES), "
        "starts the next backup run while the 24-hour upload window has room for it, and otherwise says when "
        "it will. Off: the scheduled backups continue the seed, one run each.",
    )
    def continue_seed(context: dg.SensorEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        return continue_seed_verdict(context.instance, destination.get_destination(), time.time())

    return continue_seed
