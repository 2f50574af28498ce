"""Small building blocks for pipelines of byte chunks (``Iterable[bytes]``).

Everything here is pull-based and holds at most one block (or a bounded window of blocks)
in memory, so a multi-GB stream costs the same memory as a small one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class HashingCounter:
    """Pass chunks through unchanged while counting bytes and computing SHA-256 (and MD5 if asked).

    Iterate it (or call :meth:`wrap`) to consume the source; ``sha256_hex`` / ``size`` are final
    once the iteration has finished. MD5 is only for comparing with destinations that report it
    (Google Drive's ``md5Checksum``, S3 ETags), never for integrity decisions on its own.
    """

    def __init__(self, chunks: Iterable[bytes] | None = None, *, md5: bool = False) -> None:
        self._chunks = chunks
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False) if md5 else None
        self.size = 0
        self.finished = False

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        self._sha256.update(chunk)
        if self._md5 is not None:
            self._md5.update(chunk)
        self.size += len(chunk)

    def wrap(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.update(chunk)
            yield chunk
        self.finished = True

    def __iter__(self) -> Iterator[bytes]:
        if self._chunks is None:
            raise TypeError("HashingCounter was created without a source; use wrap(chunks)")
        return self.wrap(self._chunks)

    @property
    def sha256_hex(self) -> str:
        return self._sha256.hexdigest()

    @property
    def md5_hex(self) -> str | None:
        return None if self._md5 is None else self._md5.hexdigest()


def rechunk(chunks: Iterable[bytes], block_size: int) -> Iterator[bytes]:
    """Re-cut a stream into blocks of exactly ``block_size`` bytes; the last one may be shorter.

    An empty stream yields nothing. Chunks already of the right size pass through without a copy.
    """
    if block_size <= 0:
        raise ValueError("block_size must be positive")
    pending = bytearray()
    for chunk in chunks:
        if not chunk:
            continue
        if not pending and len(chunk) == block_size:
            yield bytes(chunk)
            continue
        pending += chunk
        while len(pending) >= block_size:
            yield bytes(pending[:block_size])
            del pending[:block_size]
    if pending:
        yield bytes(pending)


def read_exactly(chunk_iter: Iterator[bytes], buffer: bytearray, wanted: int) -> bool:
    """Top up ``buffer`` from ``chunk_iter`` until it holds ``wanted`` bytes; False if the stream ended first."""
    while len(buffer) < wanted:
        try:
            chunk = next(chunk_iter)
        except StopIteration:
            return False
        buffer += chunk
    return True


class IterStream(io.RawIOBase):
    """A read-only file-like object over an iterator of byte chunks (e.g. for ``minio.put_object``).

    ``read(n)`` returns at most ``n`` bytes and ``b""`` only at the end of the stream.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        super().__init__()
        self._iter = iter(chunks)
        self._pending = memoryview(b"")
        self._pending_owner = b""
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> bool:
        for chunk in self._iter:
            if chunk:
                self._pending_owner = bytes(chunk)
                self._pending = memoryview(self._pending_owner)
                return True
        return False

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            parts = [bytes(self._pending)]
            self._pending = memoryview(b"")
            parts.extend(bytes(c) for c in self._iter)
            data = b"".join(parts)
            self.bytes_read += len(data)
            return data
        if size == 0:
            return b""
        if not self._pending and not self._next_chunk():
            return b""
        data = bytes(self._pending[:size])
        self._pending = self._pending[size:]
        self.bytes_read += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)


def iter_file(fileobj: Any, block_size: int = 1 << 20) -> Iterator[bytes]:
    """Read a binary file-like object in blocks until EOF."""
    while True:
        block = fileobj.read(block_size)
        if not block:
            return
        yield block


def ordered_parallel_map(
    fn: Callable[[T], R], items: Iterable[T], *, workers: int = 2, window: int = 4
) -> Iterator[R]:
    """``map(fn, items)`` on a small thread pool, results in input order, at most ``window`` in flight.

    Worth it only when ``fn`` releases the GIL (zlib, hashlib and AES-GCM do on large buffers);
    the window bounds memory to ``window`` inputs plus outputs.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    in_flight: queue.SimpleQueue[Future[R]] = queue.SimpleQueue()
    count = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="archive") as pool:
        try:
            for item in items:
                in_flight.put(pool.submit(fn, item))
                count += 1
                if count >= window:
                    count -= 1
                    yield in_flight.get().result()
            while count:
                count -= 1
                yield in_flight.get().result()
        finally:
            while not in_flight.empty():
                in_flight.get().cancel()


def prefetch(chunks: Iterable[bytes], *, depth: int = 4) -> Iterator[bytes]:
    """Run the producer of ``chunks`` in a background thread, ``depth`` chunks ahead.

    Lets a CPU-heavy producer (tar + gzip) overlap with a CPU-heavy consumer (encryption,
    hashing, upload). Exceptions of the producer are re-raised in the consumer.
    """
    slots: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                while True:
                    if stop.is_set():
                        return
                    try:
                        slots.put(("data", chunk), timeout=0.1)
                        break
                    except queue.Full:
                        continue
            slots.put(("end", None))
        except BaseException as exc:  # re-raised in the consumer thread
            slots.put(("error", exc))

    thread = threading.Thread(target=produce, name="archive-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "data":
                yield value
            elif kind == "end":
                return
            else:
                raise value
    finally:
        stop.set()
        # Drain so a producer blocked on put() sees the stop flag.
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):
                slots.get(timeout=0.1)
        thread.join()
