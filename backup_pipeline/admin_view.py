"""What an administrator sees in the Dagster UI: "are we safe?" at a glance.

- ``backup_set_fresh`` (asset check on ``backup_set``): red when the newest complete backup is
  older than twice the schedule interval (the same limit as the ``backup_freshness`` alert
  sensor) or when there is none. Whether that backup passed verification is the separate
  ``backup_set_verified`` check of ``ops/verification.py`` (not duplicated here).
- ``backup_destination`` (asset check on ``backup_set``): the destination's connection check; when
  Google Drive is not configured it says plainly that backups go to a local folder and are NOT
  off-site, and what is needed.
- ``backup_status_checks`` sensor: re-evaluates ``backup_set_fresh`` every minute (and the
  local-destination warning) and records the result only when it changes, so the check turns red
  without anyone clicking and without a run per evaluation. The Drive connection check uploads a
  test file, so it runs only when an administrator clicks "Execute" on the check.
- Launchpad links (restore / delete one backup, config prefilled) and run tags that make the
  backup runs read as a backup history.

Nothing here reads secrets: descriptions come from settings (paths and ids only) and the ledger.
"""

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import dagster as dg
import yaml

from backup_pipeline import ledger
from backup_pipeline.destinations.base import Destination
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.settings import BackupSettings, DestinationKind

LOCATION_NAME = "backup_pipeline"  # workspace.yaml
BACKUP_SET_ASSET = dg.AssetKey("backup_set")
FRESHNESS_CHECK = "backup_set_fresh"
DESTINATION_CHECK = "backup_destination"
STATUS_SENSOR = "backup_status_checks"
DRIVE_GUIDE = "docs/guides/GOOGLE-DRIVE-SETUP.md"
TAG_TRIGGER = "backup_pipeline/trigger"
TAG_SIZE = "backup_pipeline/size"
TAG_OBJECTS = "backup_pipeline/objects"
TAG_FILES = "backup_pipeline/files"
TAG_DURATION = "backup_pipeline/duration"
PRE_RESTORE = "pre-restore"

NOT_OFF_SITE = (
    "Google Drive is NOT configured: backups go to the local folder {path} and are NOT off-site "
    "(a fire, theft or ransomware on this site takes them with the data). To back up off-site, set up "
    "one of the three Google Workspace options (a shared drive with a service account; a service "
    "account with domain-wide delegation; or an OAuth user), then set BACKUP_PIPELINE_DESTINATION="
    f"google_drive and its settings. Guide: {DRIVE_GUIDE}."
)


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
    started = datetime.fromisoformat(str(entry["started_at"]))
    finished = datetime.fromisoformat(str(entry["finished_at"]))
    duration = (finished - started).total_seconds()
    return {
        "status": "complete",  # only a set whose parts verified and whose manifest was written gets here
        "backup_id": entry["backup_id"],
        "finished_at": entry["finished_at"],
        "size": human_bytes(int(entry["total_bytes"])),
        "files": len(entry.get("part_file_ids") or {}),
        "objects": int(entry.get("object_count", 0)),
        "duration": human_duration(duration),
        "destination_link": destination_link(dest),
        "actions": dg.MetadataValue.md(actions_markdown(str(entry["backup_id"]))),
        **{k: v for k, v in entry.items() if k != "backup_id"},
    }


def backup_run_tags(entry: Mapping[str, Any]) -> dict[str, str]:
    started = datetime.fromisoformat(str(entry["started_at"]))
    finished = datetime.fromisoformat(str(entry["finished_at"]))
    return {
        TAG_SIZE: human_bytes(int(entry["total_bytes"])),
        TAG_OBJECTS: str(int(entry.get("object_count", 0))),
        TAG_FILES: str(len(entry.get("part_file_ids") or {})),
        TAG_DURATION: human_duration((finished - started).total_seconds()),
    }


# --- "are we safe?" -------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    passed: bool
    severity: dg.AssetCheckSeverity
    description: str
    metadata: dict[str, Any]
    state: str = ""  # what the sensor compares: a new evaluation is recorded only when it changes

    def key(self) -> str:
        return f"{self.passed}|{self.severity.value}|{self.state or self.description}"

    def result(self) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(
            passed=self.passed, severity=self.severity, description=self.description, metadata=self.metadata
        )

    def evaluation(self, check_name: str) -> dg.AssetCheckEvaluation:
        return dg.AssetCheckEvaluation(
            asset_key=BACKUP_SET_ASSET,
            check_name=check_name,
            passed=self.passed,
            severity=self.severity,
            description=self.description,
            metadata=self.result().metadata,
        )


def _is_safety_backup(entry: ledger.LedgerEntry) -> bool:
    # A pre-restore safety backup holds only the database: it does not make the buckets safe.
    return entry.metadata.get("trigger") == PRE_RESTORE


def freshness_verdict(
    instance: dg.DagsterInstance, max_age_hours: float, now: float | None = None
) -> Verdict:
    now = time.time() if now is None else now
    sets = [e for e in ledger.complete_sets(instance) if not _is_safety_backup(e)]
    if not sets:
        return Verdict(
            False,
            dg.AssetCheckSeverity.ERROR,
            "NOT SAFE: there is no complete backup yet. Launch backup_job (Jobs → backup_job → Launchpad).",
            {"max_age_hours": max_age_hours},
        )
    newest = sets[0]
    age_hours = (now - newest.created_at.timestamp()) / 3600
    meta: dict[str, Any] = {
        "newest_backup_id": newest.backup_id,
        "newest_backup_at": newest.created_at.isoformat(timespec="seconds"),
        "age_hours": round(age_hours, 2),
        "max_age_hours": max_age_hours,
        "complete_backups": len(sets),
    }
    state = newest.backup_id
    if age_hours > max_age_hours:
        return Verdict(
            False,
            dg.AssetCheckSeverity.ERROR,
            f"NOT SAFE: the newest complete backup ({newest.backup_id}) is {age_hours:.0f} h old, more than "
            f"{max_age_hours:.0f} h. Check the backup_schedule is on and the last backup runs' errors.",
            meta,
            state,
        )
    return Verdict(
        True,
        dg.AssetCheckSeverity.ERROR,
        f"OK: newest complete backup {newest.backup_id} from {meta['newest_backup_at']} "
        f"(limit {max_age_hours:.0f} h)",
        meta,
        state,
    )


def local_destination_verdict(settings_path: str) -> Verdict:
    return Verdict(
        False,
        dg.AssetCheckSeverity.WARN,
        NOT_OFF_SITE.format(path=settings_path),
        {"destination": f"local folder {settings_path}", "off_site": False, "guide": DRIVE_GUIDE},
    )


def destination_verdict(destination: DestinationResource) -> Verdict:
    """The destination's own connection check (Drive: token, folder, space, a test upload/read/delete)."""
    if DestinationKind(destination.kind) is DestinationKind.LOCAL:
        local = local_destination_verdict(destination.local_path)
        report = destination.get_destination().check()
        steps = "; ".join(f"{s.name}: {'ok' if s.ok else 'FAILED'} ({s.detail})" for s in report.steps)
        return Verdict(local.passed, local.severity, local.description, {**local.metadata, "checks": steps})
    report = destination.get_destination().check()
    steps = "; ".join(f"{s.name}: {'ok' if s.ok else 'FAILED'} ({s.detail})" for s in report.steps)
    meta: dict[str, Any] = {"destination": report.destination, "off_site": True, "checks": steps}
    if report.warnings:
        meta["warnings"] = "; ".join(report.warnings)
    if report.ok:
        return Verdict(
            True, dg.AssetCheckSeverity.ERROR, f"{report.destination} is reachable and writable", meta
        )
    return Verdict(
        False,
        dg.AssetCheckSeverity.ERROR,
        f"{report.destination} is NOT usable: {report.fix or steps}. Backups will fail until this is fixed.",
        meta,
    )


def build_backup_checks(settings: BackupSettings) -> list[dg.AssetChecksDefinition]:
    max_age = 2 * settings.schedule_interval_hours

    @dg.asset_check(
        asset=BACKUP_SET_ASSET,
        name=FRESHNESS_CHECK,
        description=f"Are we safe? Red when the newest complete backup is older than {max_age} h (twice the "
        "schedule interval) or when there is none. Re-evaluated every minute by the backup_status_checks "
        "sensor. Whether it restores is the backup_set_verified check.",
    )
    def backup_set_fresh(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        return freshness_verdict(context.instance, max_age).result()

    @dg.asset_check(
        asset=BACKUP_SET_ASSET,
        name=DESTINATION_CHECK,
        description="Where backups go and whether it works right now (Google Drive: credentials, folder, "
        "space, a test upload). Says so plainly when Google Drive is not configured and backups are not "
        "off-site. Click Execute to run it.",
    )
    def backup_destination(destination: DestinationResource) -> dg.AssetCheckResult:
        return destination_verdict(destination).result()

    return [backup_set_fresh, backup_destination]


def build_status_sensor(settings: BackupSettings) -> dg.SensorDefinition:
    max_age = 2 * settings.schedule_interval_hours
    local_path = None if settings.off_site_destination else str(settings.local_destination_path)

    @dg.sensor(
        name=STATUS_SENSOR,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Keeps the backup_set checks current without launching runs: records {FRESHNESS_CHECK} "
        "whenever its verdict changes (e.g. the newest backup becomes too old)"
        + (f" and the {DESTINATION_CHECK} warning that backups are not off-site." if local_path else "."),
    )
    def backup_status_checks(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        verdicts = {FRESHNESS_CHECK: freshness_verdict(context.instance, max_age)}
        if local_path is not None:
            verdicts[DESTINATION_CHECK] = local_destination_verdict(local_path)
        events = [v.evaluation(name) for name, v in verdicts.items() if seen.get(name) != v.key()]
        seen.update({name: v.key() for name, v in verdicts.items()})
        return dg.SensorResult(asset_events=events, cursor=json.dumps(seen))

    return backup_status_checks
