"""Ranged, resumable, streamed download of one part from a destination."""

from __future__ import annotations

import http.client
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from backup_pipeline.services.restore.common import RestoreRefused

log = logging.getLogger(__name__)

DOWNLOAD_CHUNK_BYTES = 8 * 1024 * 1024

log = logging.getLogger(__name__)


class RangedSource(Protocol):
    def get(self, file_id: str, start: int = 0, end: int | None = None) -> Any: ...


_TRANSIENT: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    http.client.IncompleteRead,
    http.client.HTTPException,
)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _TRANSIENT):
        return True
    # The destinations package classifies its errors; a class named *Retryable* is transient.
    return any("retryable" in cls.__name__.lower() for cls in type(exc).__mro__)


def _iter_body(body: Any, chunk_size: int) -> Iterator[bytes]:
    if isinstance(body, (bytes, bytearray)):
        yield bytes(body)
        return
    if hasattr(body, "read"):
        try:
            while True:
                block = body.read(chunk_size)
                if not block:
                    return
                yield block
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
    else:
        yield from body


def download_backup(
    source: RangedSource,
    file_id: str,
    size: int,
    *,
    start: int = 0,
    chunk_size: int = DOWNLOAD_CHUNK_BYTES,
    max_attempts: int = 6,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[bytes]:
    """Stream ``file_id`` from ``start`` to ``size``; a dropped connection resumes at the offset reached.

    Transient errors are retried with exponential backoff; each retry asks only for the
    bytes not yet yielded, so nothing is downloaded twice and memory stays one chunk.
    """
    offset = start
    failures = 0
    while offset < size:
        try:
            body = source.get(file_id, offset, size)  # end exclusive (destination contract)
            for block in _iter_body(body, chunk_size):
                if not block:
                    continue
                if offset + len(block) > size:
                    raise RestoreRefused(
                        f"part {file_id}: the destination sent more than the {size} bytes the manifest lists"
                    )
                offset += len(block)
                failures = 0
                if on_progress is not None:
                    on_progress(offset)
                yield block
            if offset < size:
                raise http.client.IncompleteRead(b"", size - offset)
        except BaseException as exc:
            if not _is_transient(exc) or failures + 1 >= max_attempts:
                raise
            failures += 1
            delay = min(30.0, 0.2 * 2**failures)
            log.warning(
                "download of %s interrupted at byte %d (%s); resuming in %.1fs",
                file_id,
                offset,
                type(exc).__name__,
                delay,
            )
            time.sleep(delay)
