"""What an administrator sees in the Dagster UI: "are we safe?" at a glance.

- The safety checks on ``backup_set`` (verdicts in ``safety.py``): ``backup_set_fresh``,
  ``backup_destination`` (NOT off-site when Google Drive is not configured),
  ``recovery_key_exported`` here, ``backup_set_verified`` in ``ops/verification.py``.
- ``record_backup_checks``: the last op of ``backup_job``, recording every verdict against the new
  materialization in the same run (Dagster shows a check against the newest materialization).
- ``backup_status_checks`` sensor: every 30 s, records a verdict when it changed or when a newer
  ``backup_set`` materialization has none yet, so the checks are current without anyone clicking
  and without a run per evaluation. The Drive live test uploads a file, so it runs only when an
  administrator clicks "Execute" on ``backup_destination``.
- Launchpad links (restore / delete one backup, config prefilled) and the two run tags people
  filter the backup history by (backup id, trigger).

Nothing here reads secrets: descriptions come from settings (paths and ids only) and the ledger.
"""

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

import dagster as dg
import yaml

from backup_pipeline import safety
from backup_pipeline.destinations.base import Destination
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.safety import (
    BACKUP_SET_ASSET,
    DESTINATION_CHECK,
    FRESHNESS_CHECK,
    NOT_OFF_SITE,
    RECOVERY_KEY_CHECK,
    VERIFICATION_CHECK,
)
from backup_pipeline.settings import BackupSettings, DestinationKind

LOCATION_NAME = "backup_pipeline"  # workspace.yaml
STATUS_SENSOR = "backup_status_checks"
TAG_TRIGGER = "backup_pipeline/trigger"

__all__ = ["DESTINATION_CHECK", "FRESHNESS_CHECK", "RECOVERY_KEY_CHECK", "VERIFICATION_CHECK"]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # unreachable; keeps type checkers happy


def human_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


# --- descriptions --------------------------------------------------------------------------


def backup_job_description(settings: BackupSettings) -> str:
    where = (
        "Google Drive (off-site)."
        if settings.drive_configured
        else f"S3 bucket {settings.s3_destination_bucket} (off-site; immutable when the bucket has object lock: see the backup_destination check)."
        if settings.destination is DestinationKind.S3
        else NOT_OFF_SITE.format(path=settings.local_destination_path)
    )
    return (
        "Back up the application: its PostgreSQL database and every S3/MinIO bucket, encrypted, as one "
        "backup set (one run = one backup). Launch it from the Launchpad with the defaults shown; the run "
        "list tags each run with its trigger, backup id and size. "
        f"Destination: {where} "
        "The backup_set asset (Catalog) shows the newest backup; its backup_set_fresh check turns red when it "
        "gets too old."
    )


# --- Launchpad links -----------------------------------------------------------------------


def launchpad_link(job_name: str, run_config: Mapping[str, Any]) -> str:
    """A UI path that opens the job's Launchpad with ``run_config`` filled in (nothing is launched)."""
    config = yaml.safe_dump(dict(run_config), sort_keys=False)
    return f"/locations/{LOCATION_NAME}/jobs/{job_name}/playground/setup?config={quote(config)}"


def restore_link(backup_id: str) -> str:
    return launchpad_link(
        "restore_job", {"ops": {"start_restore": {"config": {"backup_id": backup_id, "dry_run": True}}}}
    )


def delete_link(backup_id: str) -> str:
    return launchpad_link(
        "delete_backup_job",
        {"ops": {"delete_backup_op": {"config": {"backup_id": backup_id, "confirm": ""}}}},
    )


def actions_markdown(backup_id: str) -> str:
    return (
        f"[Restore this backup (dry run first)]({restore_link(backup_id)}) · "
        f"[Delete this backup]({delete_link(backup_id)}) — opens the Launchpad with the backup id filled in; "
        "nothing runs until you click Launch."
    )


# --- backup run: tags and asset metadata ---------------------------------------------------


def trigger_of(tags: Mapping[str, str]) -> str:
    """manual / schedule / sensor / client: who started this backup run."""
    if tags.get(TAG_TRIGGER):
        return str(tags[TAG_TRIGGER])
    if tags.get("dagster/schedule_name"):
        return "schedule"
    if tags.get("dagster/sensor_name"):
        return "sensor"
    return "manual"


def destination_link(dest: Destination) -> dg.MetadataValue:
    """Where the set is: the Drive folder's web address, or the local folder's path."""
    inner = getattr(dest, "inner", dest)
    folder_id = getattr(inner, "folder_id", None)
    if callable(folder_id):
        try:
            return dg.MetadataValue.url(f"https://drive.google.com/drive/folders/{folder_id()}")
        except Exception:  # the link is a convenience; the set is already written and verified
            return dg.MetadataValue.text(dest.description)
    root = getattr(inner, "root", None)
    return dg.MetadataValue.path(str(root)) if root is not None else dg.MetadataValue.text(dest.description)


def backup_set_metadata(entry: Mapping[str, Any], dest: Destination) -> dict[str, Any]:
    """The ledger entry plus what an administrator reads first (status, size, duration, link, actions)."""
    summary = backup_run_summary(entry)
    return {
        "status": "complete",  # only a set whose parts verified and whose manifest was written gets here
        "backup_id": entry["backup_id"],
        "finished_at": entry["finished_at"],
        **{k: summary[k] for k in ("size", "files", "objects", "duration")},
        "destination_link": destination_link(dest),
        "actions": dg.MetadataValue.md(actions_markdown(str(entry["backup_id"]))),
        **{k: v for k, v in entry.items() if k != "backup_id"},
    }


def backup_run_summary(entry: Mapping[str, Any]) -> dict[str, str | int]:
    """Size, counts and duration of a finished backup: metadata, not run tags (the run list shows
    only the tags people filter by, so the backup id is not cut off)."""
    started = datetime.fromisoformat(str(entry["started_at"]))
    finished = datetime.fromisoformat(str(entry["finished_at"]))
    return {
        "backup_id": str(entry["backup_id"]),
        "size": human_bytes(int(entry["total_bytes"])),
        "objects": int(entry.get("object_count", 0)),
        "files": len(entry.get("part_file_ids") or {}),
        "duration": human_duration((finished - started).total_seconds()),
    }


# --- "are we safe?" -------------------------------------------------------------------------


def build_backup_checks(settings: BackupSettings) -> list[dg.AssetChecksDefinition]:
    """The checks on ``backup_set`` an administrator can also execute by hand (verdicts: ``safety.py``)."""
    policy = safety.SafetyPolicy.from_settings(settings)
    max_age = policy.freshness_max_age_hours

    @dg.asset_check(
        asset=BACKUP_SET_ASSET,
        name=FRESHNESS_CHECK,
        description=f"Are we safe? Red when the newest complete backup is older than {max_age:.0f} h (twice the "
        "schedule interval) or when there is none. Recorded after every backup and whenever the verdict "
        "changes (backup_status_checks sensor). Whether it restores is the backup_set_verified check.",
    )
    def backup_set_fresh(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        return safety.freshness_verdict(context.instance, max_age).result()

    @dg.asset_check(
        asset=BACKUP_SET_ASSET,
        name=DESTINATION_CHECK,
        description="Where backups go and whether it works (Google Drive: judged by the newest backup; Execute "
        "for a live test of credentials, folder, space and a test upload). Yellow when Google Drive is not "
        "configured: backups are then NOT off-site.",
    )
    def backup_destination(destination: DestinationResource) -> dg.AssetCheckResult:
        return safety.live_destination_verdict(destination).result()

    @dg.asset_check(
        asset=BACKUP_SET_ASSET,
        name=RECOVERY_KEY_CHECK,
        description="Yellow until the recovery key was exported on the host with "
        f"'{safety.EXPORT_RECOVERY_COMMAND}' (never through this UI). Without it, losing the org secret makes "
        "every backup unreadable.",
    )
    def recovery_key_exported() -> dg.AssetCheckResult:
        return safety.recovery_key_verdict(policy.state_dir).result()

    @dg.asset_check(
        asset=safety.HEALTH_ASSET,
        name=safety.HEALTH_CHECK,
        description="Red (NOT SAFE) while any safety check of backup_set fails, warnings included (not off-site, "
        "recovery key not exported, too old, not verified); the description lists which. Recorded by the "
        "backup_status_checks sensor whenever the answer changes.",
    )
    def backup_safe(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        return safety.health_verdict(safety.backup_set_verdicts(context.instance, policy)).result()

    checks = [backup_set_fresh, backup_destination, recovery_key_exported, backup_safe]
    if policy.copies is not None:
        checks.append(build_copy_policy_check(policy.copies))
    return checks


def build_copy_policy_check(view: Any) -> dg.AssetChecksDefinition:
    """``backup_3_2_1`` (verdict: ``copy_status.py``), on when several destinations or a copy policy are set."""
    from backup_pipeline import copy_status

    names = ", ".join(f"{d.name} ({d.kind}{', off-site' if d.offsite else ''})" for d in view.destinations)

    @dg.asset_check(
        asset=BACKUP_SET_ASSET,
        name=copy_status.COPY_POLICY_CHECK,
        description=f"3-2-1: how many of the destinations ({names}) hold a complete copy of the newest backup, on "
        f"how many kinds, how many off-site, how many immutable (S3 object lock); fails when the policy "
        f"({view.policy.describe() or 'copies=1'}) is not met or a destination's copy is missing. Recorded by "
        "copy_backup_job and by the backup_status_checks sensor.",
    )
    def backup_3_2_1(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        return copy_status.copy_policy_verdict(context.instance, view).result()

    return backup_3_2_1


BACKUP_HEALTH_SPEC = dg.AssetSpec(
    safety.HEALTH_ASSET,
    description="Are we safe? Red in this list when NOT: a backup_set safety check fails (too old, not verified, "
    "destination broken or NOT off-site, recovery key not exported). Its latest event says which.",
    group_name="backups",
)


def build_record_checks_op(settings: BackupSettings) -> dg.OpDefinition:
    """The last op of ``backup_job``: records every safety verdict against the new ``backup_set``
    materialization in the same run, so no check reads "Not evaluated" after a backup."""
    policy = safety.SafetyPolicy.from_settings(settings)

    @dg.op(
        name="record_backup_checks",
        ins={"finalized": dg.In(dg.Nothing)},
        description="Records the backup_set checks (fresh, destination, verified, recovery key) for the new "
        "backup, so the Catalog shows whether we are safe right away.",
    )
    def record_backup_checks(context: dg.OpExecutionContext) -> None:
        try:
            verdicts = safety.backup_set_verdicts(context.instance, policy)
            target = safety.latest_materialization(context.instance, BACKUP_SET_ASSET)
            for name, verdict in verdicts.items():
                # log_event handles AssetCheckEvaluation at runtime; Dagster's UserEvent alias omits it.
                context.log_event(verdict.evaluation(name, target))  # type: ignore[arg-type]
        except Exception as exc:  # the backup is complete; the sensor records the checks within a minute
            context.log.warning(f"could not record the backup_set checks now ({exc}); the sensor will")

    return record_backup_checks


def build_status_sensor(settings: BackupSettings) -> dg.SensorDefinition:
    policy = safety.SafetyPolicy.from_settings(settings)

    @dg.sensor(
        name=STATUS_SENSOR,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Keeps the backup_set checks current without launching runs: records "
        f"{FRESHNESS_CHECK}, {DESTINATION_CHECK}, {VERIFICATION_CHECK} and {RECOVERY_KEY_CHECK} whenever a "
        "verdict changes (e.g. the newest backup becomes too old, the recovery key is exported) and for every "
        "new backup_set materialization not judged yet (e.g. a restore's safety backup); and the answer on "
        "backup_health (one materialization + backup_safe check per change of the answer).",
    )
    def backup_status_checks(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        verdicts = safety.backup_set_verdicts(context.instance, policy)
        events: list[Any] = safety.evaluations_to_record(context.instance, verdicts, seen)
        events += safety.health_events(verdicts, seen)
        return dg.SensorResult(asset_events=events, cursor=json.dumps(seen))

    return backup_status_checks
