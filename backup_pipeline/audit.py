"""The audit trail: an append-only JSON Lines file, ``<state_dir>/audit.jsonl``.

Why a file under ``state_dir`` and not Dagster's storage: the recovery-key export runs on the
host without a Dagster run (anything passing through Dagster is visible in its UI), and the
key store it audits lives in the same directory — so the trail is kept with the key store and
readable with no Dagster instance. Run workers on the same host append to it too (manual runs,
deletions, restores); Dagster's own event log remains the record of what each run did.

Records are one JSON object per line: ``ts`` (ISO 8601 UTC), ``action``, ``actor``
(``user@host``), ``host``, and ``details``. Writers take an exclusive ``flock`` and fsync, so
concurrent processes never interleave lines. Records never hold secrets: callers pass ids,
fingerprints and setting names, never key material.

Actions: ``settings_changed`` (seen at code-location load; the first load records
``settings_initial``), ``manual_backup``, ``backup_deleted``, ``retention_deleted``,
``restore``, ``recovery_key_exported``, ``recovery_key_export_refused``, ``recovery_key_rotated``.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import getpass
import hashlib
import json
import os
import socket
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backup_pipeline.settings import BackupSettings

AUDIT_FILE_NAME = "audit.jsonl"


@dataclass(frozen=True)
class AuditRecord:
    ts: str
    action: str
    actor: str
    host: str
    details: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "action": self.action,
            "actor": self.actor,
            "host": self.host,
            "details": self.details,
        }


def audit_path(state_dir: Path) -> Path:
    return state_dir / AUDIT_FILE_NAME


def current_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


class AuditLog:
    def __init__(self, state_dir: Path):
        self.path = audit_path(state_dir)

    def append(
        self, action: str, details: dict[str, Any] | None = None, *, actor: str | None = None
    ) -> AuditRecord:
        record = AuditRecord(
            ts=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            action=action,
            actor=actor or current_actor(),
            host=socket.gethostname(),
            details=details or {},
        )
        with self._locked() as fh:
            self._write(fh, record)
        return record

    def _write(self, fh: Any, record: AuditRecord) -> None:
        fh.seek(0, os.SEEK_END)
        fh.write(json.dumps(record.to_json(), sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())

    def _locked(self) -> _LockedFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return _LockedFile(self.path)

    def records(self, action: str | None = None, since: dt.datetime | None = None) -> list[AuditRecord]:
        out = []
        for record in self._iter():
            if action and record.action != action:
                continue
            if since and dt.datetime.fromisoformat(record.ts) < since:
                continue
            out.append(record)
        return out

    def _iter(self) -> Iterator[AuditRecord]:
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if line:
                    data = json.loads(line)
                    yield AuditRecord(**data)

    def record_settings_if_changed(self, settings: BackupSettings) -> AuditRecord | None:
        """Append a record when the effective settings differ from the last recorded ones.

        Called at every code-location load (webserver, daemon, each run worker); the lock and
        the comparison with the last record keep one record per actual change.
        """
        current = settings.redacted()
        digest = hashlib.sha256(json.dumps(current, sort_keys=True).encode()).hexdigest()
        with self._locked() as fh:
            previous: dict[str, Any] | None = None
            fh.seek(0)
            for line in fh:
                if line.strip():
                    data = json.loads(line)
                    if data["action"] in ("settings_initial", "settings_changed"):
                        previous = data["details"]
            if previous is not None and previous.get("digest") == digest:
                return None
            if previous is None:
                action, details = "settings_initial", {"digest": digest, "settings": current}
            else:
                before = previous.get("settings", {})
                changed = {
                    key: {"from": before.get(key), "to": value}
                    for key, value in current.items()
                    if before.get(key) != value
                }
                action, details = (
                    "settings_changed",
                    {"digest": digest, "settings": current, "changed": changed},
                )
            record = AuditRecord(
                ts=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                action=action,
                actor=current_actor(),
                host=socket.gethostname(),
                details=details,
            )
            self._write(fh, record)
            return record


class _LockedFile:
    """The audit file opened for read+append under an exclusive flock."""

    def __init__(self, path: Path):
        self.path = path
        self.fh: Any = None

    def __enter__(self) -> Any:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self.fh = os.fdopen(fd, "r+", encoding="utf-8")
        fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX)
        return self.fh

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
        self.fh.close()


def audit_log(settings: BackupSettings) -> AuditLog:
    return AuditLog(settings.state_dir)


def record_settings_at_load(settings: BackupSettings) -> None:
    """Record a settings change when the code location loads; never block loading over it."""
    try:
        audit_log(settings).record_settings_if_changed(settings)
    except OSError as exc:
        warnings.warn(
            f"audit trail not writable ({audit_path(settings.state_dir)}): {exc.strerror}", stacklevel=2
        )
