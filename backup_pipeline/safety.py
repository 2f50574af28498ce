"""Are we safe? The verdicts of the safety checks on ``backup_set``, as plain functions.

One verdict per check, computed from the Dagster instance (the ledger), the settings and the
key store's public status; nothing here reads a secret or talks to the destination except
:func:`live_destination_verdict` (the on-demand check):

- ``backup_set_fresh``: the newest complete backup (pre-restore safety backups do not count) is
  younger than twice the schedule interval.
- ``backup_destination``: local folder → a WARN that backups are NOT off-site; Google Drive →
  the evidence of the newest backup (written and read back there), or a live test on demand.
- ``backup_set_verified``: the newest complete set's last verification passed, and some set
  passed verification recently.
- ``recovery_key_exported``: a WARN until the recovery key was exported on the host, naming the
  exact command. Only the store's public status is read: the secret is never unwrapped here.

Dagster shows a check's status against the asset's NEWEST materialization: an evaluation
recorded before it reads "Not evaluated". So every verdict MUST be recorded again for every new
materialization: by the op that materializes (same run, see ``record_backup_checks`` in
``admin_view.py``) and by the ``backup_status_checks`` sensor for any other materialization
(a restore's safety backup), via :func:`evaluations_to_record`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg

from backup_pipeline import ledger
from backup_pipeline.archive.errors import ArchiveError
from backup_pipeline.archive.keys import OrgKeyring, RecoveryKeyStore
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.settings import BackupSettings, DestinationKind

BACKUP_SET_ASSET = ledger.BACKUP_SET_ASSET
#: One asset whose status IS the answer, so the Catalog's asset list shows it: Dagster OSS colours a
#: row red only for a failed ERROR check, and shows no check column (asset health is Dagster+).
HEALTH_ASSET = dg.AssetKey("backup_health")
HEALTH_CHECK = "backup_safe"
FRESHNESS_CHECK = "backup_set_fresh"
DESTINATION_CHECK = "backup_destination"
VERIFICATION_CHECK = "backup_set_verified"
RECOVERY_KEY_CHECK = "recovery_key_exported"
DRIVE_GUIDE = "docs/guides/GOOGLE-DRIVE-SETUP.md"
DEFAULT_MAX_VERIFICATION_AGE_HOURS = 48
#: What an administrator types on the host; the UI can only point at it (DEPLOYMENT.md).
EXPORT_RECOVERY_COMMAND = "backup-pipeline keys export-recovery"
COMPOSE_EXPORT_RECOVERY_COMMAND = f"docker compose exec code-location {EXPORT_RECOVERY_COMMAND}"

NOT_OFF_SITE = (
    "Google Drive is NOT configured: backups go to the local folder {path} and are NOT off-site "
    "(a fire, theft or ransomware on this site takes them with the data). To back up off-site, set up "
    "one of the three Google Workspace options (a shared drive with a service account; a service "
    "account with domain-wide delegation; or an OAuth user), then set BACKUP_PIPELINE_DESTINATION="
    f"google_drive and its settings. Guide: {DRIVE_GUIDE}."
)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    severity: dg.AssetCheckSeverity
    description: str
    metadata: dict[str, Any]
    state: str = ""  # what the sensor compares: a new evaluation is recorded only when it changes
    summary: str = ""  # one short line for backup_health (default: the description)

    def key(self) -> str:
        return f"{self.passed}|{self.severity.value}|{self.state or self.description}"

    def result(self) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(
            passed=self.passed, severity=self.severity, description=self.description, metadata=self.metadata
        )

    def evaluation(
        self,
        check_name: str,
        target: dg.EventLogRecord | None = None,
        asset_key: dg.AssetKey = BACKUP_SET_ASSET,
    ) -> dg.AssetCheckEvaluation:
        """The evaluation to record; ``target``: the materialization it judges (the newest)."""
        return evaluation_of(self.result(), asset_key, check_name, target)


@dataclass(frozen=True)
class SafetyPolicy:
    """The settings the verdicts depend on (no secrets)."""

    freshness_max_age_hours: float
    local_destination: str | None  # None: Google Drive or an S3 bucket (off-site)
    state_dir: str
    verification_max_age_hours: int = DEFAULT_MAX_VERIFICATION_AGE_HOURS
    #: ``copy_status.CopyPolicyView`` with several destinations or a copy policy: the backup_3_2_1 check.
    copies: Any = None
    #: Names of the off-site destinations copy_backup_job fills (a local primary is then not a warning).
    offsite_copies: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: BackupSettings) -> SafetyPolicy:
        copies = None
        if settings.destinations or settings.copy_policy:
            from backup_pipeline.copy_status import CopyPolicyView

            copies = CopyPolicyView.from_settings(settings)
        return cls(
            freshness_max_age_hours=2 * settings.schedule_interval_hours,
            local_destination=None if settings.off_site_destination else str(settings.local_destination_path),
            state_dir=str(settings.state_dir),
            copies=copies,
            offsite_copies=tuple(d.name for d in settings.copy_targets if d.offsite),
        )


# --- backup_set_fresh ------------------------------------------------------------------------


def _is_safety_backup(entry: ledger.LedgerEntry) -> bool:
    # A pre-restore safety backup holds only the database: it does not make the buckets safe.
    return entry.is_safety


def seeding_in_progress(instance: dg.DagsterInstance, after: float = 0.0) -> str | None:
    """The message of the newest seeding observation of backup_set logged after ``after`` (a first
    full spread over days under Drive's upload cap: BACKUP-STRATEGY.md "Seeding across days")."""
    records = instance.fetch_observations(ledger.BACKUP_SET_ASSET, limit=20).records
    for record in records:
        obs = record.event_log_entry.asset_observation
        if obs is None or record.event_log_entry.timestamp <= after:
            continue
        meta = {k: getattr(v, "value", v) for k, v in obs.metadata.items()}
        if meta.get("event") == "seeding":
            return f"{meta.get('backup_id')}: {meta.get('message')}"
    return None


def freshness_verdict(
    instance: dg.DagsterInstance, max_age_hours: float, now: float | None = None
) -> Verdict:
    now = time.time() if now is None else now
    sets = [e for e in ledger.complete_sets(instance) if not _is_safety_backup(e)]
    # A seed in progress is no backup (the verdict stays NOT SAFE) but says why none is new.
    seeding = seeding_in_progress(instance, sets[0].created_at.timestamp() if sets else 0.0)
    also = f" A backup is being seeded: {seeding}" if seeding else ""
    if not sets:
        return Verdict(
            False,
            dg.AssetCheckSeverity.ERROR,
            "NOT SAFE: there is no complete backup yet. Launch backup_job (Jobs → backup_job → Launchpad)."
            + also,
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
            f"{max_age_hours:.0f} h. Check the backup_schedule is on and the last backup runs' errors."
            + also,
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


# --- backup_destination ----------------------------------------------------------------------


def local_destination_verdict(path: str) -> Verdict:
    return Verdict(
        False,
        dg.AssetCheckSeverity.WARN,
        NOT_OFF_SITE.format(path=path),
        {"destination": f"local folder {path}", "off_site": False, "guide": DRIVE_GUIDE},
        summary=f"backups are NOT off-site (local folder {path}; set up Google Drive: {DRIVE_GUIDE})",
    )


def local_with_offsite_copies_verdict(path: str, copies: Sequence[str]) -> Verdict:
    """A local primary whose sets copy_backup_job copies to off-site destinations: not a warning here;
    whether the newest set is really there is the backup_3_2_1 check's verdict."""
    names = ", ".join(copies)
    return Verdict(
        True,
        dg.AssetCheckSeverity.WARN,
        f"Backups are written to the local folder {path} (on-site) and copied off-site to {names} by "
        "copy_backup_job; the backup_3_2_1 check says whether the newest backup is complete there.",
        {"destination": f"local folder {path}", "off_site": False, "off_site_copies": names},
        f"local:{names}",
        summary=f"local folder {path}, off-site copies on {names}",
    )


def drive_evidence_verdict(instance: dg.DagsterInstance) -> Verdict | None:
    """An off-site destination (Google Drive, S3), judged by the newest backup written there (None
    before the first one).

    A backup's parts were each confirmed by the destination (size, MD5, SHA-256) and the manifest written
    last, so a complete set is proof the destination worked at that time. A live test uploads
    a file, so it runs only when an administrator executes the check.
    """
    newest = ledger.latest_complete(instance)
    if newest is None:
        return None
    where = str(newest.metadata.get("destination") or "Google Drive")
    return Verdict(
        True,
        dg.AssetCheckSeverity.ERROR,
        f"{where} (off-site): backup {newest.backup_id} was written there and every file confirmed by "
        "the destination. Execute this check for a live test (a small upload, read back and deleted).",
        {"destination": where, "off_site": True, "evidence": f"backup {newest.backup_id}"},
        newest.backup_id,
    )


def live_destination_verdict(destination: DestinationResource) -> Verdict:
    """The destination's own connection check (Drive: token, folder, space, a test upload/read/delete;
    S3: bucket, versioning, object lock, a test upload/read/delete that a lock must refuse)."""
    report = destination.get_destination().check()
    steps = "; ".join(f"{s.name}: {'ok' if s.ok else 'FAILED'} ({s.detail})" for s in report.steps)
    if DestinationKind(destination.kind) is DestinationKind.LOCAL:
        offsite = [c.label for c in destination.copy_resources() if c.is_offsite]
        local = (
            local_with_offsite_copies_verdict(destination.local_path, offsite)
            if offsite
            else local_destination_verdict(destination.local_path)
        )
        return Verdict(local.passed, local.severity, local.description, {**local.metadata, "checks": steps})
    meta: dict[str, Any] = {"destination": report.destination, "off_site": True, "checks": steps}
    if report.warnings:
        meta["warnings"] = "; ".join(report.warnings)
    if report.ok:
        return Verdict(
            True, dg.AssetCheckSeverity.ERROR, f"{report.destination} is reachable and writable", meta
        )
    problem = "; ".join(f"{s.name}: {s.detail}" for s in report.steps if not s.ok) or steps
    fix = report.fix_to_print()
    return Verdict(
        False,
        dg.AssetCheckSeverity.ERROR,
        f"{report.destination} is NOT usable: {problem}"
        + (f"; fix: {fix}" if fix else "")
        + ". Backups will fail until this is fixed.",
        meta,
    )


# --- backup_set_verified ---------------------------------------------------------------------


def verification_verdict(
    instance: dg.DagsterInstance, max_age_hours: int, now: datetime | None = None
) -> Verdict:
    """Red when the newest complete set's last verification failed, or no set verified recently enough."""
    now = now or datetime.now(UTC)
    newest = ledger.latest_complete(instance)
    if newest is None:
        return Verdict(True, dg.AssetCheckSeverity.ERROR, "no complete backup set yet: nothing to verify", {})
    statuses = ledger.verification_statuses(instance)
    live = {e.backup_id for e in ledger.complete_sets(instance)}
    newest_status = statuses.get(newest.backup_id)
    fresh = [
        s
        for s in statuses.values()
        if s.verified and s.backup_id in live and now - s.at <= timedelta(hours=max_age_hours)
    ]
    problems = []
    if newest_status is not None and not newest_status.verified:
        problems.append(
            f"the newest complete set {newest.backup_id} failed verification: {newest_status.summary}"
        )
    if not fresh:
        problems.append(f"no backup set passed verification in the last {max_age_hours} h")
    status = (
        "unverified"
        if newest_status is None
        else (ledger.VERIFIED_EVENT if newest_status.verified else ledger.VERIFICATION_FAILED_EVENT)
    )
    metadata: dict[str, Any] = {
        "newest_complete": newest.backup_id,
        "newest_status": status,
        "fresh_verified_sets": dg.MetadataValue.json(sorted(s.backup_id for s in fresh)),
    }
    description = "; ".join(problems) or f"newest complete set {newest.backup_id}: {status}"
    return Verdict(not problems, dg.AssetCheckSeverity.ERROR, description, metadata)


# --- recovery_key_exported -------------------------------------------------------------------


def recovery_key_verdict(state_dir: str | Path) -> Verdict:
    """WARN until the recovery key was exported on the host; reads only the store's public status."""
    how = (
        f"On the host (never in this UI), run: {EXPORT_RECOVERY_COMMAND} "
        f"(Docker Compose: {COMPOSE_EXPORT_RECOVERY_COMMAND}) and store the printed key offline. "
        "See docs/guides/DEPLOYMENT.md."
    )
    # status() reads only public data; the store's constructor wants a keyring it never uses here.
    store = RecoveryKeyStore(state_dir, OrgKeyring([("status-only", bytes(32))]))
    meta: dict[str, Any] = {"command": EXPORT_RECOVERY_COMMAND, "state_dir": str(state_dir)}
    try:
        status = store.status()
    except ArchiveError as exc:  # no store yet, or an unreadable one: both mean "not exported"
        return Verdict(
            False,
            dg.AssetCheckSeverity.WARN,
            f"No exported recovery key: {exc}. Without it, losing the org secret makes every backup "
            f"unreadable. {how}",
            meta,
            "missing",
            summary=f"no exported recovery key (on the host: {EXPORT_RECOVERY_COMMAND})",
        )
    meta["key_id"] = status.current_key_id
    if status.secret_held:
        return Verdict(
            False,
            dg.AssetCheckSeverity.WARN,
            f"The recovery key {status.current_key_id} was never exported: without it, losing the org secret "
            f"(or this server) makes every backup unreadable. {how}",
            meta,
            f"held:{status.current_key_id}",
            summary=f"recovery key {status.current_key_id} never exported (on the host: {EXPORT_RECOVERY_COMMAND})",
        )
    meta["exported_at"] = status.exported_at or ""
    return Verdict(
        True,
        dg.AssetCheckSeverity.WARN,
        f"OK: recovery key {status.current_key_id} was exported at {status.exported_at}; the server no "
        "longer holds it.",
        meta,
        f"exported:{status.current_key_id}",
    )


# --- all of them, and when to record them ----------------------------------------------------


def backup_set_verdicts(instance: dg.DagsterInstance, policy: SafetyPolicy) -> dict[str, Verdict]:
    """Every safety check of ``backup_set`` the sensor and the backup job record (Drive's live test aside)."""
    verdicts = {
        FRESHNESS_CHECK: freshness_verdict(instance, policy.freshness_max_age_hours),
        VERIFICATION_CHECK: verification_verdict(instance, policy.verification_max_age_hours),
        RECOVERY_KEY_CHECK: recovery_key_verdict(policy.state_dir),
    }
    destination = (
        drive_evidence_verdict(instance)
        if policy.local_destination is None
        else local_with_offsite_copies_verdict(policy.local_destination, policy.offsite_copies)
        if policy.offsite_copies
        else local_destination_verdict(policy.local_destination)
    )
    if destination is not None:
        verdicts[DESTINATION_CHECK] = destination
    if policy.copies is not None:
        from backup_pipeline.copy_status import COPY_POLICY_CHECK, copy_policy_verdict

        verdicts[COPY_POLICY_CHECK] = copy_policy_verdict(instance, policy.copies)
    return verdicts


def health_verdict(verdicts: Mapping[str, Verdict]) -> Verdict:
    """The answer to "are we safe?": passes only when every safety check passes.

    ERROR whenever anything fails, warnings included: backups that are not off-site or a
    recovery key that exists only on this server are not safe, and only an ERROR turns a row red
    in the Catalog. The severities of the details stay on backup_set's own checks.
    """
    failing = {name: v for name, v in verdicts.items() if not v.passed}
    meta: dict[str, Any] = {
        "verdict": "NOT SAFE" if failing else "SAFE",
        **{
            name: ("OK" if v.passed else f"{v.severity.value}: {v.summary or v.description}")
            for name, v in verdicts.items()
        },
    }
    if not failing:
        return Verdict(
            True, dg.AssetCheckSeverity.ERROR, "SAFE: every safety check of backup_set passes", meta, "SAFE"
        )
    reasons = "; ".join(f"{name}: {v.summary or v.description}" for name, v in sorted(failing.items()))
    return Verdict(
        False,
        dg.AssetCheckSeverity.ERROR,
        f"NOT SAFE ({len(failing)} of {len(verdicts)} checks fail): {reasons}. Details: backup_set → Checks.",
        meta,
        "NOT SAFE:" + ",".join(f"{name}={verdicts[name].key()}" for name in sorted(failing)),
    )


def health_events(verdicts: Mapping[str, Verdict], seen: dict[str, str]) -> list[Any]:
    """A ``backup_health`` materialization + its check when the verdict changed (``seen`` updated).

    The materialization makes the asset's row show a status in the Catalog, and its history is the
    history of the verdict; the check judging it turns the row red when we are not safe.
    """
    verdict = health_verdict(verdicts)
    if seen.get(HEALTH_CHECK) == verdict.key():
        return []
    seen[HEALTH_CHECK] = verdict.key()
    materialization = dg.AssetMaterialization(
        asset_key=HEALTH_ASSET, description=verdict.description, metadata=verdict.metadata
    )
    return [materialization, verdict.evaluation(HEALTH_CHECK, asset_key=HEALTH_ASSET)]


def evaluation_of(
    result: dg.AssetCheckResult,
    asset_key: dg.AssetKey,
    check_name: str,
    target: dg.EventLogRecord | None = None,
) -> dg.AssetCheckEvaluation:
    """The evaluation of ``result`` to log from an op or a sensor that does not define the check;
    ``target``: the materialization it judges (Dagster shows it against that one)."""
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData,
    )

    return dg.AssetCheckEvaluation(
        asset_key=asset_key,
        check_name=check_name,
        passed=result.passed,
        severity=result.severity,
        description=result.description,
        metadata=result.metadata,
        target_materialization_data=AssetCheckEvaluationTargetMaterializationData(
            storage_id=target.storage_id, run_id=target.run_id, timestamp=target.timestamp
        )
        if target is not None
        else None,
    )


def latest_materialization(instance: dg.DagsterInstance, asset_key: dg.AssetKey) -> dg.EventLogRecord | None:
    records = instance.fetch_materializations(asset_key, limit=1).records
    return records[0] if records else None


def judges(record: Any, target: dg.EventLogRecord | None) -> bool:
    """Whether the check execution ``record`` is what Dagster shows for the newest materialization.

    Mirrors ``AssetCheckExecutionRecord.targets_latest_materialization``: same run, or the
    recorded target is that materialization, or (no target recorded) it came after it.
    """
    if target is None:
        return True
    if record.run_id == target.run_id:
        return True
    evaluation = record.evaluation
    if evaluation is None:
        return False
    if evaluation.target_materialization_data is not None:
        return bool(evaluation.target_materialization_data.storage_id == target.storage_id)
    return bool(record.create_timestamp > target.timestamp)


def evaluations_to_record(
    instance: dg.DagsterInstance,
    verdicts: Mapping[str, Verdict],
    seen: dict[str, str],
    asset_key: dg.AssetKey = BACKUP_SET_ASSET,
) -> list[dg.AssetCheckEvaluation]:
    """The evaluations to record now; ``seen`` (check → verdict key last recorded) is updated.

    A verdict is recorded when it changed, or when the check's latest execution does not judge
    the newest materialization (a new backup arrived): so each check shows a current status
    without anyone clicking, and an unchanged verdict does not add an event every tick.
    """
    target = latest_materialization(instance, asset_key)
    keys = [dg.AssetCheckKey(asset_key, name) for name in verdicts]
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    out = []
    for name, verdict in verdicts.items():
        record = latest.get(dg.AssetCheckKey(asset_key, name))
        current = record is not None and judges(record, target)
        if current and seen.get(name) in (None, verdict.key()) and _same(record, verdict):
            seen[name] = verdict.key()  # recorded by the backup run itself: adopt, do not repeat
            continue
        if current and seen.get(name) == verdict.key():
            continue
        out.append(verdict.evaluation(name, target, asset_key))
        seen[name] = verdict.key()
    return out


def _same(record: Any, verdict: Verdict) -> bool:
    evaluation = record.evaluation
    return (
        evaluation is not None
        and evaluation.passed == verdict.passed
        and evaluation.severity == verdict.severity
        and evaluation.description == verdict.description
    )
