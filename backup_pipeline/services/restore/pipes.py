"""A stream of blocks fed to a child process (``pg_restore``) while its output is read."""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from typing import IO

from backup_pipeline.services.restore.common import RestoreError


class StderrTail(threading.Thread):
    """Drains a process's stderr so it never blocks, keeping the last lines for the error."""

    def __init__(self, stream: IO[bytes]):
        super().__init__(daemon=True)
        self._stream = stream
        self.lines: deque[str] = deque(maxlen=30)

    def run(self) -> None:
        for raw in iter(self._stream.readline, b""):
            self.lines.append(raw.decode("utf-8", "replace").rstrip())

    def text(self) -> str:
        return "\n".join(self.lines)


class FedProcess:
    """``cmd`` with ``blocks`` written to its stdin by a thread; its stdout is the caller's to read.

    * The process may stop reading early (``pg_restore`` has what it needs): feeding ends there.
    * The source failing is kept in ``failure`` and kills the process, so nothing of a
      truncated stream is ever taken for a whole one.
    * ``keep_limit``: every block taken from the source is kept in ``head`` (the caller replays
      them), up to this many bytes; more is a ``RestoreError`` in ``failure``.
    """

    def __init__(
        self,
        cmd: list[str],
        blocks: Iterable[bytes],
        *,
        keep_limit: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None and self.proc.stderr is not None
        self.stdout: IO[bytes] = self.proc.stdout
        self.source = iter(blocks)
        self.head: list[bytes] = []
        self.failure: BaseException | None = None
        self.source_exhausted = False
        self._keep_limit = keep_limit
        self._stdin = self.proc.stdin
        self._feeder = threading.Thread(target=self._feed, name="pg-feed", daemon=True)
        self._feeder.start()
        self.tail = StderrTail(self.proc.stderr)
        self.tail.start()

    def _feed(self) -> None:
        kept = 0
        try:
            for block in self.source:
                if self._keep_limit is not None:
                    self.head.append(block)
                    kept += len(block)
                    if kept > self._keep_limit:
                        self.failure = RestoreError(
                            f"the dump's table of contents exceeds {self._keep_limit} bytes"
                        )
                        self.proc.kill()
                        return
                try:
                    self._stdin.write(block)
                except OSError:
                    return  # the process stopped reading (broken pipe): it has what it needs
            self.source_exhausted = True
        except BaseException as exc:  # the source failed
            self.failure = exc
            self.proc.kill()
        finally:
            with contextlib.suppress(OSError):
                self._stdin.close()

    def wait(self) -> int:
        """The exit code, once the feeding and the stderr reader are done."""
        code = self.proc.wait()
        self._feeder.join()
        self.tail.join(5)
        return code
