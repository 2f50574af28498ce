"""Deterministic object content, generated on the fly (a 200 MB object never sits in memory)."""

from __future__ import annotations

import hashlib
import io
import random

_TEXT = (
    "Rechnung Nr. {n} — Größe, Überweisung, café, naïve, 日本語のテキスト, emoji 📦. "
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit. Line {n}.\n"
)


class GeneratedStream(io.RawIOBase):
    """A readable stream of ``size`` deterministic bytes; hashes what it hands out.

    ``compressible`` yields repetitive unicode text (like documents); otherwise
    pseudo-random bytes (like photos and videos, which gzip cannot shrink).
    """

    def __init__(self, seed: int | str, size: int, *, compressible: bool = False):
        self._rng = random.Random(str(seed))
        self._remaining = size
        self._compressible = compressible
        self._pending = b""
        self._line = 0
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)

    def readable(self) -> bool:
        return True

    def _produce(self, n: int) -> bytes:
        if not self._compressible:
            return self._rng.randbytes(n)
        parts = []
        produced = 0
        while produced < n:
            self._line += 1
            line = _TEXT.format(n=self._line).encode()
            parts.append(line)
            produced += len(line)
        return b"".join(parts)

    def read(self, size: int | None = -1) -> bytes:
        if self._remaining <= 0:
            return b""
        want = self._remaining if size is None or size < 0 else min(size, self._remaining)
        while len(self._pending) < want:
            self._pending += self._produce(max(want - len(self._pending), 64 * 1024))
        out, self._pending = self._pending[:want], self._pending[want:]
        self._remaining -= len(out)
        self.sha256.update(out)
        self.md5.update(out)
        return out

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def generated_bytes(seed: int | str, size: int, *, compressible: bool = False) -> bytes:
    """The whole content of a small generated object (tests compare against it)."""
    return GeneratedStream(seed, size, compressible=compressible).read()


def digest_of(seed: int | str, size: int, *, compressible: bool = False) -> tuple[str, str]:
    """(sha256, md5) hex of a generated content, streamed."""
    stream = GeneratedStream(seed, size, compressible=compressible)
    while stream.read(1 << 20):
        pass
    return stream.sha256.hexdigest(), stream.md5.hexdigest()
