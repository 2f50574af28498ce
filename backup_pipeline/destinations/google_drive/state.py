"""What the Drive destination keeps in ``state_dir``: resumable session URIs and the upload ledger.

``drive-upload-sessions/<hash>.json`` (0600) holds the session URI of one upload in progress,
its creation time and the SHA-256 of the stream at each confirmed chunk boundary. A session
URI lets anyone who has it append to the upload without a token, so these files MUST NOT
outlive their use: the uploader removes its file when the put ends, whatever the outcome,
unless a later put of the same bytes can resume it (a seekable source); a file older than
Drive's session lifetime (one week) is never used and removed on sight; and
:func:`sweep_sessions` removes leftovers (crashed processes) once per destination object.

``drive-upload-ledger.json`` counts the bytes Drive confirmed per principal, in one-minute
buckets over the last 24 h: the evidence for the 750 GB/day upload cap (pre-flight, the
check, and telling the daily cap apart from throttling). It is replaced by a rename under the lock
file ``drive-upload-ledger.json.lock``, never rewritten in place, so a killed writer cannot empty it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from backup_pipeline.durable_files import fsync_dir

SESSIONS_DIR = "drive-upload-sessions"
LEDGER_FILE = "drive-upload-ledger.json"
#: Drive expires a resumable session URI one week after it was created.
SESSION_LIFETIME_SECONDS = 7 * 24 * 3600
#: A running upload rewrites its file at every chunk; one untouched this long belongs to a put
#: that ended without cleaning up (a killed process). Removing a live one costs only the
#: ability to resume it from another process: the running put keeps its URI in memory.
SESSION_IDLE_SECONDS = 3600
LEDGER_WINDOW_SECONDS = 24 * 3600
_BUCKET_SECONDS = 60


class SessionStore:
    """The resumable session of one (principal, folder, name), saved so a retried put can resume it."""

    def __init__(self, state_dir: Path, key: str, *, clock: Callable[[], float] = time.time):
        self.path = state_dir / SESSIONS_DIR / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")
        self._clock = clock
        self._current: dict[str, Any] | None = None

    def load(self) -> dict[str, Any] | None:
        """The saved session, or ``None``; an expired or malformed file is removed."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            self.clear()
            return None
        if not isinstance(data, dict) or "uri" not in data or not _fresh(data, self._clock()):
            self.clear()
            return None
        self._current = data
        return data

    def begin(self, uri: str, chunk_size: int) -> None:
        """A new session: saved before its first byte is sent, with its creation time."""
        self._current = {"uri": uri, "chunk_size": chunk_size, "created": self._clock(), "boundaries": {}}
        self._write()

    def record(self, boundaries: dict[str, str]) -> None:
        """The SHA-256 of the stream at each boundary Drive will hold once the next chunk is sent."""
        if self._current is None:
            raise RuntimeError("record() before begin() or load()")
        self._current["boundaries"] = boundaries
        self._write()

    def clear(self) -> None:
        self._current = None
        self.path.unlink(missing_ok=True)

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the URI is a bearer capability
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(self._current, out)
        os.replace(tmp, self.path)


def _fresh(data: dict[str, Any], now: float) -> bool:
    created = data.get("created")
    # A file without a creation time (written before it was recorded) cannot be shown to be
    # inside the week Drive keeps a session: treat it as expired.
    return isinstance(created, int | float) and now - created < SESSION_LIFETIME_SECONDS


def sweep_sessions(
    state_dir: Path, *, idle_seconds: float = SESSION_IDLE_SECONDS, clock: Callable[[], float] = time.time
) -> int:
    """Remove expired, malformed and abandoned session files (and stale temporary files); return how many."""
    folder = state_dir / SESSIONS_DIR
    now = clock()
    removed = 0
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return 0
    for path in entries:
        try:
            idle = now - path.stat().st_mtime
            if path.suffix == ".json":
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                except ValueError:
                    data = None
                doomed = not isinstance(data, dict) or not _fresh(data, now) or idle >= idle_seconds
            else:
                doomed = idle >= idle_seconds  # a temporary file of a write that never finished
            if doomed:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue  # its put finished and removed it meanwhile
    return removed


class UploadLedger:
    """Bytes Drive confirmed per principal in the last 24 h (one-minute buckets), for the daily cap."""

    def __init__(self, state_dir: Path, principal: str, *, clock: Callable[[], float] = time.time):
        self.path = state_dir / LEDGER_FILE
        self.principal = hashlib.sha256(principal.encode()).hexdigest()[:16]
        self._clock = clock

    @contextlib.contextmanager
    def _locked(self, *, write: bool = False) -> Iterator[dict[str, list[list[float]]]]:
        """The ledger under an exclusive lock; with ``write``, replaced by what the block left in it.

        The lock is a file of its own because the ledger is replaced by a rename, never rewritten
        in place: a process killed mid-write leaves the previous ledger or the new one. (Rewritten
        in place, a kill between the truncate and the write left it empty, and an empty ledger
        tells the next run that nothing was uploaded today: it would plan past Drive's daily cap.)
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(LEDGER_FILE + ".lock"), "a", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
            except FileNotFoundError:
                data = {}
            except ValueError:
                data = {}
            cutoff = self._clock() - LEDGER_WINDOW_SECONDS
            data = {k: [e for e in v if e[0] >= cutoff] for k, v in data.items() if isinstance(v, list)}
            yield data
            if write:
                tmp = self.path.with_name(LEDGER_FILE + ".tmp")
                with open(tmp, "w", encoding="utf-8") as out:
                    json.dump(data, out)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, self.path)
                fsync_dir(self.path.parent)

    def record(self, size: int) -> None:
        if size <= 0:
            return
        now = self._clock()
        with self._locked(write=True) as data:
            entries = data.setdefault(self.principal, [])
            if entries and entries[-1][0] // _BUCKET_SECONDS == now // _BUCKET_SECONDS:
                entries[-1][1] += size
            else:
                entries.append([now, size])

    def uploaded_last_24h(self) -> int:
        with self._locked() as data:
            return int(sum(e[1] for e in data.get(self.principal, [])))

    def schedule(self) -> tuple[tuple[float, int], ...]:
        """Each counted upload as (when it leaves the 24-hour window, bytes), oldest first."""
        with self._locked() as data:
            entries = sorted(data.get(self.principal, []), key=lambda e: e[0])
            return tuple((e[0] + LEDGER_WINDOW_SECONDS, int(e[1])) for e in entries)

    def oldest(self) -> tuple[float, int] | None:
        """When the oldest counted bytes leave the 24-hour window, and how many they are."""
        with self._locked() as data:
            entries = data.get(self.principal, [])
            if not entries:
                return None
            first = min(entries, key=lambda e: e[0])
            return first[0] + LEDGER_WINDOW_SECONDS, int(first[1])


class UploadCounter:
    """The bytes one upload got confirmed, added to the ledger at most every few seconds and at the end.

    Counting as the upload goes (rather than once it completed) keeps the ledger true when an
    upload fails at 97 %: Drive counts those bytes against the daily cap too.
    """

    def __init__(self, ledger: UploadLedger, *, flush_seconds: float = 5.0):
        self._ledger = ledger
        self._flush_seconds = flush_seconds
        self._pending = 0
        self._last_flush = time.monotonic()

    def add(self, size: int) -> None:
        self._pending += size
        if time.monotonic() - self._last_flush >= self._flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._ledger.record(self._pending)
            self._pending = 0
        self._last_flush = time.monotonic()
