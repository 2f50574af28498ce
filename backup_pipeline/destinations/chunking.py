"""Reading an upload source in fixed-size chunks, and rewinding a seekable one.

Shared by the upload loops of Google Drive (resumable session chunks) and S3 (multipart
parts): both send one chunk at a time and keep at most one chunk in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .base import ByteStream


def fixed_chunks(blocks: Iterator[bytes], size: int) -> Iterator[tuple[memoryview, bool]]:
    """Fixed-size chunks in ONE reused buffer, each flagged whether it is the last.

    The yielded view is valid until the next iteration (the caller sends it first). A full
    chunk is only known to be the last when the source is exhausted, so one more block is
    pulled before handing it out (an exact multiple of the chunk size must not end with an
    invalid empty chunk). Memory: one chunk plus one source block; no per-chunk allocation,
    which keeps glibc from growing the heap by a chunk per round.
    """
    source = iter(blocks)
    buffer = bytearray(size)
    view = memoryview(buffer)
    carry = memoryview(b"")
    exhausted = False
    while True:
        filled = min(len(carry), size)
        view[:filled] = carry[:filled]
        carry = carry[filled:]
        while filled < size and not exhausted:
            try:
                block = memoryview(next(source))
            except StopIteration:
                exhausted = True
                break
            take = min(len(block), size - filled)
            view[filled : filled + take] = block[:take]
            filled += take
            carry = block[take:]
        if filled == size and not carry and not exhausted:
            try:
                carry = memoryview(next(source))
            except StopIteration:
                exhausted = True
        last = exhausted and not carry
        yield view[:filled], last
        if last:
            return


def rewinder(stream: ByteStream) -> Callable[[], None] | None:
    """A way to read a seekable source again from where the put started, or None."""
    seekable = getattr(stream, "seekable", None)
    if callable(seekable) and seekable():
        start = stream.tell()  # type: ignore[union-attr]

        def rewind() -> None:
            stream.seek(start)  # type: ignore[union-attr]

        return rewind
    return None
