"""Uploads: media, multipart and resumable (``PUT`` on the session URI with Drive's 308 semantics).

Mixed into ``DriveHandler``; the plumbing (``_read``, ``_json``, ``_principal``, ``_fault``…) is its.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from typing import Any

from .query import parse_fields, parse_multipart, project
from .state import MULTIPART_LIMIT, UNIT, ApiError, Cut, Fault, FileRecord, UploadSession


class UploadRoutes:
    """The upload routes of the handler."""

    def _upload_start(self) -> None:
        principal = self._principal()
        upload_type = self.query.get("uploadType", "media")
        if upload_type == "resumable":
            meta = self._json_body()
            self._validate_properties(meta.get("appProperties") or {})
            parents, drive_id = self._resolve_parents(principal, meta.get("parents"))
            length = self.headers.get("X-Upload-Content-Length")
            self._check_storage(principal, drive_id, int(length) if length else None)
            upload_id = secrets.token_urlsafe(18)
            session = UploadSession(
                id=upload_id,
                metadata=dict(meta, parents=parents),
                owner=principal,
                drive_id=drive_id,
                fields=self.query.get("fields"),
                path=self.state.data_dir / "blobs" / f"upload-{upload_id}",
            )
            session.path.touch()
            with self.state.lock:
                self.state.sessions[upload_id] = session
                self.state.stats["sessions_started"] += 1
            location = f"{self._base_url()}/upload/drive/v3/files?uploadType=resumable&upload_id={upload_id}"
            return self._send(200, b"", {"Location": location, "X-GUploader-UploadID": upload_id})
        if upload_type == "media":
            parents, drive_id = self._resolve_parents(principal, None)
            self._check_storage(principal, drive_id, self._body_left)
            record = self._create_record(principal, {}, drive_id, parents)
            self._store_blob(record, self._body_chunks(self._body_left))
        elif upload_type == "multipart":
            if self._body_left > MULTIPART_LIMIT:
                raise ApiError(
                    413, "uploadTooLarge", "Multipart uploads are limited to 5 MB; use a resumable upload."
                )
            meta, media = parse_multipart(self.headers.get("Content-Type", ""), self._read(self._body_left))
            self._validate_properties(meta.get("appProperties") or {})
            parents, drive_id = self._resolve_parents(principal, meta.get("parents"))
            self._check_storage(principal, drive_id, len(media))
            record = self._create_record(principal, meta, drive_id, parents)
            self._store_blob(record, iter([media]))
        else:
            raise ApiError(400, "invalid", f"Invalid uploadType {upload_type}")
        self._json(200, self._file_json(record))

    def _body_chunks(self, n: int) -> Any:
        while n > 0:
            data = self._read(min(n, 1 << 20))
            n -= len(data)
            yield data

    def _store_blob(self, record: FileRecord, chunks: Any) -> None:
        path = self.state.data_dir / "blobs" / record.id
        md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
        size = 0
        with open(path, "wb") as out:
            for data in chunks:
                md5.update(data)
                sha.update(data)
                out.write(data)
                size += len(data)
        record.size, record.md5, record.sha256, record.blob = size, md5.hexdigest(), sha.hexdigest(), path
        with self.state.lock:
            self.state.files[record.id] = record

    def _upload_put(self, route: str) -> None:
        upload_id = self.query.get("upload_id", "")
        with self.state.lock:
            session = self.state.sessions.get(upload_id)
        fault = self._fault(route)
        if session is None:
            raise ApiError(404, "notFound", "The upload session was not found or has expired.")
        if fault is not None and fault.action == "session_gone":
            with self.state.lock:
                self.state.sessions.pop(upload_id, None)
            session.path.unlink(missing_ok=True)
            raise ApiError(
                fault.status, "notFound" if fault.status == 404 else "gone", "The upload session has expired."
            )
        header = self.headers.get("Content-Range", "")
        status_query = re.fullmatch(r"bytes \*/(\d+|\*)", header)
        chunk = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", header)
        if not (status_query or chunk):
            raise ApiError(400, "badContentRange", f"Invalid Content-Range {header!r}")
        with session.lock:
            if session.done is not None:
                return self._json(200, self._session_json(session, session.done))
            if status_query:
                self.state.stats["status_queries"] += 1
                total = status_query.group(1)
                if total == "*":
                    self.state.stats["status_queries_unknown_total"] += 1
                if self._body_left:
                    raise ApiError(400, "badContentRange", "A status query has no body")
                if total != "*" and int(total) == session.received:
                    return self._finish(session)
                return self._incomplete(session)
            assert chunk is not None
            first, last, total_text = int(chunk.group(1)), int(chunk.group(2)), chunk.group(3)
            total = None if total_text == "*" else int(total_text)
            length = last - first + 1
            if length != self._body_left or length <= 0:
                raise ApiError(400, "badContentRange", "Content-Range does not match Content-Length")
            if first > session.received:
                raise ApiError(
                    400,
                    "badContentRange",
                    f"Chunk starts at {first} but only {session.received} bytes were received",
                )
            is_final = total is not None and last + 1 == total
            if not is_final and length % UNIT:
                raise ApiError(
                    400,
                    "invalid",
                    "Invalid request. The chunk size must be a multiple of 256 KiB except for the final chunk.",
                )
            if total is not None and last + 1 > total:
                raise ApiError(400, "badContentRange", "Chunk ends after the declared total")
            self._receive_chunk(session, first, length, fault)
            if total is not None and session.received == total:
                return self._finish(session)
            return self._incomplete(session)

    def _receive_chunk(self, session: UploadSession, first: int, length: int, fault: Fault | None) -> None:
        """Read the body; commit bytes to disk + hashes in 256 KiB units (all of them once the body is complete)."""
        stats = self.state.stats
        skip = session.received - first  # bytes of this chunk the server already holds
        cut_at = None
        keep = None
        if fault is not None and fault.action == "cut":
            cut_at = fault.after_bytes if fault.after_bytes is not None else length // 2
        if fault is not None and fault.action == "short":
            keep = fault.keep_bytes if fault.keep_bytes is not None else (length // 2) // UNIT * UNIT
        pending = bytearray()
        read = 0
        kept = 0
        with open(session.path, "ab") as out:
            while read < length:
                want = min(UNIT, length - read)
                if cut_at is not None:
                    want = min(want, cut_at - read)
                    if want <= 0:
                        stats["upload_bytes_received"] += read
                        raise Cut  # whatever was pending is lost, like a real dropped request
                data = self._read(want)
                read += len(data)
                if skip > 0:
                    dropped = min(skip, len(data))
                    data, skip = data[dropped:], skip - dropped
                if keep is not None:
                    data = data[: max(0, keep - kept)]
                    kept += len(data)
                pending += data
                if len(pending) >= UNIT and read < length:
                    self._commit(session, out, bytes(pending))
                    pending.clear()
            self._commit(session, out, bytes(pending))
        stats["upload_bytes_received"] += read
        stats["upload_chunks"] += 1

    def _commit(self, session: UploadSession, out: Any, data: bytes) -> None:
        if not data:
            return
        out.write(data)
        session.md5.update(data)
        session.sha256.update(data)
        session.received += len(data)
        self.state.stats["upload_bytes_committed"] += len(data)

    def _incomplete(self, session: UploadSession) -> None:
        headers = {"X-GUploader-UploadID": session.id}
        if session.received:
            headers["Range"] = f"bytes=0-{session.received - 1}"
        self._send(308, b"", headers)  # never a Location on a 308

    def _finish(self, session: UploadSession) -> None:
        principal = session.owner
        self._check_storage(principal, session.drive_id, session.received)
        record = self._create_record(
            principal, session.metadata, session.drive_id, session.metadata["parents"]
        )
        final_path = self.state.data_dir / "blobs" / record.id
        os.replace(session.path, final_path)
        record.size, record.md5, record.sha256, record.blob = (
            session.received,
            session.md5.hexdigest(),
            session.sha256.hexdigest(),
            final_path,
        )
        with self.state.lock:
            self.state.files[record.id] = record
            self.state.stats["uploads_completed"] += 1
        session.done = record
        self._json(200, self._session_json(session, record))

    def _session_json(self, session: UploadSession, record: FileRecord) -> Any:
        return project(record.resource(), parse_fields(session.fields or "kind,id,name,mimeType"))
