"""The index part of a bucket part, uploaded while the bucket part is written (BACKUP-FORMAT.md §8).

The index streams: each line the :class:`~backup_pipeline.archive.part_index.PartIndexWriter`
emits goes through a bounded queue to a second ``upload_part`` running on its own thread, so
no list of the bucket's entries is ever held and nothing is spooled to disk. The index part
is complete only when the bucket part is: :meth:`IndexUpload.finish` after the bucket part
verified, :meth:`IndexUpload.abort` (the index put fails, leaving nothing complete) otherwise.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator

from ..archive.part_index import PartIndexWriter, index_part_name
from ..destinations.base import Destination
from .backup_parts import SET_KIND_REGULAR
from .backup_upload import Encryptor, UploadedPart, upload_part

#: Lines are sent in blocks of about this size (the index of a million objects is ~150 MB).
_BLOCK = 64 * 1024
_DEPTH = 64  # blocks in flight: ~4 MiB at most


class _Abort(Exception):
    """Makes the index upload fail on purpose: the bucket part failed."""


class IndexUpload:
    """A running upload of the index part of ``bucket_part``; feed it through :attr:`writer`."""

    def __init__(
        self,
        destination: Destination,
        encryptor: Encryptor,
        *,
        installation_id: str,
        backup_id: str,
        bucket_part: str,
        set_kind: str = SET_KIND_REGULAR,
    ) -> None:
        self.part_name = index_part_name(bucket_part)
        self._queue: queue.Queue[bytes | _Abort | None] = queue.Queue(maxsize=_DEPTH)
        self._pending = bytearray()
        self._result: UploadedPart | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run,
            args=(destination, encryptor, installation_id, backup_id, set_kind),
            name=f"index-{bucket_part}",
            daemon=True,
        )
        self._thread.start()
        self.writer = PartIndexWriter(bucket_part, self._emit)

    def _run(
        self,
        destination: Destination,
        encryptor: Encryptor,
        installation_id: str,
        backup_id: str,
        set_kind: str,
    ) -> None:
        try:
            self._result = upload_part(
                destination,
                encryptor,
                installation_id=installation_id,
                backup_id=backup_id,
                part_name=self.part_name,
                plaintext=self._blocks(),
                set_kind=set_kind,
            )
        except BaseException as exc:  # handed to the caller's thread by finish()
            self._error = exc
            # Unblock a producer waiting on a full queue.
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break

    def _blocks(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, _Abort):
                raise item
            yield item

    def _put(self, item: bytes | _Abort | None) -> None:
        while True:
            if self._error is not None or not self._thread.is_alive():
                raise self._failure()
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _failure(self) -> BaseException:
        return self._error or RuntimeError(f"the upload of part {self.part_name!r} stopped")

    def _emit(self, line: bytes) -> None:
        self._pending += line
        if len(self._pending) >= _BLOCK:
            self._put(bytes(self._pending))
            self._pending.clear()

    def finish(self) -> UploadedPart:
        """End the index (after the bucket part verified) and wait for its upload's verification."""
        if not self.writer.finished:
            raise RuntimeError("the bucket part ended before its index was complete")
        if self._pending:
            self._put(bytes(self._pending))
            self._pending.clear()
        self._put(None)
        self._thread.join()
        if self._error is not None or self._result is None:
            raise self._failure()
        return self._result

    def abort(self) -> None:
        """The bucket part failed: make the index put fail too (no complete index is left)."""
        if self._thread.is_alive():
            # Full: the uploader is stuck on the destination; it is a daemon thread.
            with contextlib.suppress(queue.Full):
                self._queue.put(_Abort("the bucket part failed"), timeout=5)
            self._thread.join(timeout=30)


def upload_bucket_part(
    destination: Destination,
    encryptor: Encryptor,
    archive_writer: Callable[..., Iterable[bytes]],
    objects: Iterator[object],
    *,
    installation_id: str,
    backup_id: str,
    part_name: str,
    with_index: bool,
) -> tuple[UploadedPart, UploadedPart | None]:
    """The bucket part (``archive_writer(objects[, index writer])`` encrypted and put) and, with
    ``with_index``, its index part uploaded alongside; the index fails when the bucket part does."""
    index = (
        IndexUpload(
            destination,
            encryptor,
            installation_id=installation_id,
            backup_id=backup_id,
            bucket_part=part_name,
        )
        if with_index
        else None
    )
    try:
        part = upload_part(
            destination,
            encryptor,
            installation_id=installation_id,
            backup_id=backup_id,
            part_name=part_name,
            plaintext=archive_writer(objects, index.writer) if index else archive_writer(objects),
        )
        return part, index.finish() if index else None
    except BaseException:
        if index is not None:
            index.abort()
        raise
