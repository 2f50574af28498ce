"""Multipart uploads in progress, kept in ``state_dir`` so a later put of the same bytes resumes them.

``s3-upload-sessions/<hash>.json`` (0600) holds, for one (endpoint, bucket, key): the upload
id, the part size, when it was created, and for every part the server confirmed its number,
ETag, size and SHA-256. Nothing in it is a secret: an upload id is useless without the
credentials (unlike a Drive session URI). It is written after each confirmed part, removed
when the put ends (completed, or aborted because its source cannot be read again), and swept
— its upload aborted on the server — when left idle for a day by a process that died.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SESSIONS_DIR = "s3-upload-sessions"
#: A running upload rewrites its file at every part; one untouched this long was left by a dead process.
SESSION_IDLE_SECONDS = 24 * 3600


@dataclass(frozen=True)
class PartRecord:
    number: int
    etag: str
    size: int
    sha256: str  # base64, as S3's x-amz-checksum-sha256
    md5: str  # base64, as Content-MD5


@dataclass
class Session:
    endpoint: str
    bucket: str
    key: str
    upload_id: str
    part_size: int
    created: float
    parts: dict[int, PartRecord]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["parts"] = [asdict(p) for p in sorted(self.parts.values(), key=lambda p: p.number)]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Session:
        parts = {int(p["number"]): PartRecord(**p) for p in data["parts"]}
        return cls(
            endpoint=str(data["endpoint"]),
            bucket=str(data["bucket"]),
            key=str(data["key"]),
            upload_id=str(data["upload_id"]),
            part_size=int(data["part_size"]),
            created=float(data["created"]),
            parts=parts,
        )


class SessionStore:
    """The saved multipart upload of one (endpoint, bucket, key)."""

    def __init__(
        self, state_dir: Path, endpoint: str, bucket: str, key: str, *, clock: Callable[[], float] = time.time
    ):
        digest = hashlib.sha256(f"{endpoint}\0{bucket}\0{key}".encode()).hexdigest()[:32]
        self.path = state_dir / SESSIONS_DIR / f"{digest}.json"
        self.endpoint, self.bucket, self.key = endpoint, bucket, key
        self._clock = clock
        self.current: Session | None = None

    def load(self) -> Session | None:
        """The saved upload of this key, or None (a malformed file or one for another key is removed)."""
        try:
            session = Session.from_json(json.loads(self.path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            self.clear()
            return None
        if (session.endpoint, session.bucket, session.key) != (self.endpoint, self.bucket, self.key):
            return None  # a hash collision: not ours to touch
        self.current = session
        return session

    def begin(self, upload_id: str, part_size: int) -> Session:
        """A new upload, saved before its first part is sent."""
        self.current = Session(self.endpoint, self.bucket, self.key, upload_id, part_size, self._clock(), {})
        self._write()
        return self.current

    def record(self, part: PartRecord) -> None:
        """A part the server confirmed (its checksum compared): a later put need not send it again."""
        if self.current is None:
            raise RuntimeError("record() before begin() or load()")
        self.current.parts[part.number] = part
        self._write()

    def clear(self) -> None:
        self.current = None
        self.path.unlink(missing_ok=True)

    def _write(self) -> None:
        assert self.current is not None
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(self.current.to_json(), out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)


def idle_sessions(
    state_dir: Path, *, idle_seconds: float = SESSION_IDLE_SECONDS, clock: Callable[[], float] = time.time
) -> list[tuple[Path, Session | None]]:
    """Session files nobody has touched for ``idle_seconds`` (their upload may still be on the server)."""
    folder = state_dir / SESSIONS_DIR
    now = clock()
    found: list[tuple[Path, Session | None]] = []
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return found
    for path in entries:
        try:
            if now - path.stat().st_mtime < idle_seconds:
                continue
            session: Session | None = None
            if path.suffix == ".json":
                try:
                    session = Session.from_json(json.loads(path.read_text(encoding="utf-8")))
                except (ValueError, KeyError, TypeError):
                    session = None
            found.append((path, session))
        except FileNotFoundError:
            continue  # its put finished meanwhile
    return found
