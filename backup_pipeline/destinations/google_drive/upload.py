"""Resumable uploads to Drive: our own chunk loop, sessions saved for a retried put, the check's probe.

Upload write ordering (MUST):
1. the session URI is saved under ``state_dir/drive-upload-sessions/`` (mode 0600, with its
   creation time: a session URI lets anyone append to it) before the first byte is sent, and
   each chunk's end offset with the SHA-256 of the stream up to it before the chunk is sent;
2. after a drop, 5xx or 429 the server is asked where to resume (``bytes */*``) and only
   bytes from that offset are sent again — at most one chunk per interruption;
3. the final reply's ``size``, ``md5Checksum`` and ``sha256Checksum`` MUST equal what was
   read from the stream, else the file is deleted and the put fails;
4. the session file is removed when the put ends. After a failure it is kept only when the
   source is a seekable file, whose same bytes a later put can send: a later put of the same
   name into the same folder resumes the saved session when the new stream's bytes hash to the
   recorded prefix. Any other source (an encryption pipeline: a fresh salt every time) could
   never resume it, so its session is removed at once. Bytes Drive confirmed are counted in
   the daily ledger as the upload goes.

google-api-python-client's ``num_retries`` on chunk PUTs re-sends consumed streams (design
note §2), hence this loop.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests

from ..base import (
    ByteStream,
    DestinationError,
    Hashes,
    PermanentError,
    RetryableError,
    RetryPolicy,
    StoredFile,
    iter_stream,
)
from ..chunking import fixed_chunks, rewinder
from .client import DriveClient
from .config import FILE_FIELDS, FILE_MIME, UPLOAD_GRANULARITY, DriveConfig
from .errors import SessionGone
from .files import stored_file
from .state import SessionStore, UploadCounter, UploadLedger


class ResumableUploader:
    def __init__(
        self,
        config: DriveConfig,
        client: DriveClient,
        retry: RetryPolicy,
        *,
        ledger: Callable[[], UploadLedger],
        delete: Callable[[str], None],
    ):
        self.cfg = config
        self.client = client
        self.retry = retry
        self._ledger = ledger
        self._delete = delete

    def put(self, name: str, folder: str, props: dict[str, str], stream: ByteStream) -> StoredFile:
        store = SessionStore(Path(self.cfg.state_dir), f"{self.client.creds.principal()}\0{folder}\0{name}")
        rewind = rewinder(stream)
        counter = UploadCounter(self._ledger())
        restarts = 0
        try:
            while True:
                try:
                    stored = self._upload(name, folder, props, stream, store, counter)
                    break
                except SessionGone as gone:
                    store.clear()
                    restarts += 1
                    if rewind is None or restarts > 3:
                        raise RetryableError(
                            f"upload {name}: {gone.why}; the stream cannot be rewound, so the whole part must be "
                            "uploaded again (retry the operation). Nothing was recorded as complete"
                        ) from None
                    rewind()
        except BaseException:
            if rewind is None:
                store.clear()  # nothing could ever resume it: do not leave a write capability behind
            raise
        finally:
            counter.flush()
        store.clear()
        return stored

    def probe(self, name: str, folder: str, props: dict[str, str], payload: bytes) -> tuple[StoredFile, str]:
        """The check's upload: chunks of the smallest size Drive allows, a status query after the first.

        Proves what a backup needs — a session, several chunk PUTs answered 308 with the bytes
        held, a ``bytes */*`` status query telling where to resume, the final chunk and the
        checksums — whatever the configured chunk size.
        """
        view = memoryview(payload)
        pieces = [view[i : i + UPLOAD_GRANULARITY] for i in range(0, len(payload), UPLOAD_GRANULARITY)]
        if len(pieces) < 2:
            raise ValueError("the probe needs more than one chunk")
        hashes = Hashes()
        hashes.update(payload)
        counter = UploadCounter(self._ledger())
        uri = self._start_session(name, folder, props)
        final: dict[str, Any] | None = None
        held = 0
        position = 0
        try:
            for number, piece in enumerate(pieces):
                last = number == len(pieces) - 1
                result = self._finish_chunk(
                    uri, piece, position, len(payload) if last else None, name, counter
                )
                position += len(piece)
                if number == 0:
                    held, done = self.retry.call(self._query, uri, None, name)
                    if done is not None or held != position:
                        raise PermanentError(
                            f"upload {name}: after the first chunk ({position} bytes confirmed) the status query "
                            f"(Content-Range: bytes */*) reported {held} bytes held; resuming an upload would "
                            "not work through this connection (a proxy rewriting uploads?)"
                        )
                if last:
                    final = result
        finally:
            counter.flush()
        if final is None:
            raise PermanentError(f"upload {name}: Drive did not confirm the end of the upload")
        stored = self._verified(name, final, hashes)
        return stored, (
            f"{len(pieces)} chunks in one resumable session; the status query after chunk 1 "
            f"reported {held} bytes held"
        )

    def _start_session(self, name: str, folder: str, props: dict[str, str]) -> str:
        url = f"{self.cfg.root}upload/drive/v3/files"
        params = {"uploadType": "resumable", "supportsAllDrives": "true", "fields": FILE_FIELDS}
        body: dict[str, Any] = {
            "name": name,
            "parents": [folder],
            "mimeType": FILE_MIME,
            "appProperties": props,
        }

        def start() -> str:
            response = self.client.call(
                f"start upload of {name}",
                lambda: self.client.session().post(
                    url,
                    params=params,
                    json=body,
                    headers={"X-Upload-Content-Type": FILE_MIME},
                    timeout=self.cfg.timeout,
                ),
            )
            if response.status_code != 200 or "Location" not in response.headers:
                raise self.client.errors.http_error(
                    f"start upload of {name}", response.status_code, response.content, response.headers
                )
            return str(response.headers["Location"])

        return self.retry.call(start)

    def _upload(
        self,
        name: str,
        folder: str,
        props: dict[str, str],
        stream: ByteStream,
        store: SessionStore,
        counter: UploadCounter,
    ) -> StoredFile:
        chunk_size = self.cfg.chunk_size
        saved = store.load()
        uri: str | None = None
        resume_at = 0
        boundaries: dict[str, str] = {}
        if saved and saved.get("chunk_size") == chunk_size:
            try:
                offset, final = self.retry.call(self._query, saved["uri"], None, name)
            except SessionGone:
                offset, final = 0, None
            if final is not None:
                # A previous attempt finished but never returned: an orphan that would duplicate this part.
                with contextlib.suppress(DestinationError):
                    self._delete(str(final["id"]))
            elif offset > 0 and str(offset) in saved.get("boundaries", {}):
                uri, resume_at, boundaries = saved["uri"], offset, dict(saved["boundaries"])
        if uri is None:
            store.clear()
            uri = self._start_session(name, folder, props)
            store.begin(uri, chunk_size)

        hashes = Hashes()
        position = 0
        final = None
        for chunk, is_last in fixed_chunks(iter_stream(stream, 1 << 20), chunk_size):
            hashes.update(chunk)
            chunk_end = position + len(chunk)
            if resume_at and chunk_end <= resume_at:
                recorded = boundaries.get(str(chunk_end))
                if recorded is not None and recorded != hashes.sha256.copy().hexdigest():
                    if position != 0:
                        raise RetryableError(
                            f"upload {name}: the stream differs from the interrupted upload it was resuming after "
                            f"{position} bytes; the saved session was discarded — retry the operation"
                        )
                    # A different stream (fresh encryption salt): a new session from the first chunk.
                    resume_at = 0
                    uri = self._start_session(name, folder, props)
                    boundaries = {}
                    store.begin(uri, chunk_size)
                elif chunk_end < resume_at or not is_last:
                    position = chunk_end
                    continue
                else:  # the server holds every byte; only the final "this is the end" is missing
                    final = self._finish_chunk(
                        uri, chunk, position, chunk_end, name, counter, skip_to=chunk_end
                    )
                    break
            if not is_last:
                boundaries[str(chunk_end)] = hashes.sha256.copy().hexdigest()
                store.record(boundaries)
            result = self._finish_chunk(uri, chunk, position, chunk_end if is_last else None, name, counter)
            position = chunk_end
            if is_last:
                final = result
            del chunk  # let the next chunk be assembled without this one still alive
        if final is None:
            raise PermanentError(f"upload {name}: Drive did not confirm the end of the upload")
        return self._verified(name, final, hashes)

    def _finish_chunk(
        self,
        uri: str,
        chunk: memoryview,
        start: int,
        total: int | None,
        name: str,
        counter: UploadCounter,
        skip_to: int | None = None,
    ) -> dict[str, Any] | None:
        """Send ``chunk`` (stream offset ``start``) until Drive confirmed all of it.

        Returns the file metadata when this was the last chunk (``total`` known).
        """
        end = start + len(chunk)
        state = {"confirmed": skip_to if skip_to is not None else start, "unsure": False, "stalls": 0}

        def advance(offset: int) -> None:
            if offset > state["confirmed"]:
                counter.add(offset - int(state["confirmed"]))
            state["confirmed"] = offset

        def step() -> tuple[bool, dict[str, Any] | None]:
            if state["unsure"]:
                offset, final = self._query(uri, total, name)
                if final is not None:
                    advance(end)
                    return True, final
                if offset < start:
                    raise SessionGone(
                        f"Drive kept only {offset} bytes, less than already confirmed ({start})"
                    )
                advance(offset)
                state["unsure"] = False
            confirmed = int(state["confirmed"])
            body = chunk if confirmed == start else chunk[confirmed - start :]
            try:
                offset, final = self._send(uri, body, confirmed, total, name)
            except RetryableError:
                state["unsure"] = True
                raise
            if final is not None:
                advance(end)
                return True, final
            if offset < start:
                raise SessionGone(f"Drive kept only {offset} bytes, less than already confirmed ({start})")
            if offset <= confirmed:
                state["stalls"] += 1
                if state["stalls"] >= self.retry.attempts:
                    raise PermanentError(
                        f"upload {name}: Drive keeps refusing the bytes at offset {confirmed}"
                    )
            else:
                state["stalls"] = 0
            advance(offset)
            return offset >= end and total is None, None

        while True:
            done, final = self.retry.call(step)
            if final is not None or done:
                return final

    def _send(
        self, uri: str, body: memoryview, offset: int, total: int | None, name: str
    ) -> tuple[int, dict[str, Any] | None]:
        total_text = "*" if total is None else str(total)
        if body:
            content_range = f"bytes {offset}-{offset + len(body) - 1}/{total_text}"
        else:
            content_range = f"bytes */{total_text}"
        response = self.client.call(
            f"upload {name}",
            lambda: self.client.put_chunk(uri, body, {"Content-Range": content_range}),
        )
        return self._upload_reply(response, name)

    def _query(self, uri: str, total: int | None, name: str) -> tuple[int, dict[str, Any] | None]:
        """Ask the session how many bytes Drive holds (``Content-Range: bytes */TOTAL``)."""
        return self._send(uri, memoryview(b""), 0, total, name)

    def _upload_reply(self, response: requests.Response, name: str) -> tuple[int, dict[str, Any] | None]:
        if response.status_code == 308:
            match = re.fullmatch(r"bytes=0-(\d+)", response.headers.get("Range", ""))
            return (int(match.group(1)) + 1 if match else 0), None
        if response.status_code in (200, 201):
            return -1, response.json()
        if response.status_code in (404, 410):
            raise SessionGone(f"the upload session expired or was lost (HTTP {response.status_code})")
        raise self.client.errors.http_error(
            f"upload {name}", response.status_code, response.content, response.headers
        )

    def _verified(self, name: str, final: Mapping[str, Any], sent: Hashes) -> StoredFile:
        stored = stored_file(final)
        problems = []
        if stored.size != sent.size:
            problems.append(f"size {stored.size} != {sent.size} sent")
        if stored.md5 is None and stored.sha256 is None:
            problems.append("Drive reported no checksum")
        if stored.md5 is not None and stored.md5 != sent.md5.hexdigest():
            problems.append("MD5 differs")
        if stored.sha256 is not None and stored.sha256 != sent.sha256.hexdigest():
            problems.append("SHA-256 differs")
        if problems:
            with contextlib.suppress(DestinationError):
                self._delete(stored.id)
            raise RetryableError(
                f"upload {name}: Drive stored something else than was sent ({'; '.join(problems)}); the file was "
                "deleted — retry the operation"
            )
        return stored
