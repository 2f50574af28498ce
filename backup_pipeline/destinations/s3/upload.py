"""Putting a file: one PUT for a small one, a resumable multipart upload for a large one.

Write ordering (MUST):

1. The name must not exist yet (any live version): S3 cannot replace a locked version, and a
   second version would not be the one listed. On a versioned bucket the PUT / Complete also
   carries ``If-None-Match: *`` so the server refuses a race.
2. Every request carrying bytes carries ``Content-MD5`` and ``x-amz-checksum-sha256`` of
   exactly those bytes: the server refuses the request (``BadDigest``) unless what it
   received hashes to them, and an echoed checksum is compared too. Object-lock retention
   (mode + retain-until date), storage class and the properties are sent with the first
   request (PUT or CreateMultipartUpload); nothing about the object changes afterwards
   except, for a multipart object, the two hash tags.
3. A multipart upload is recorded in ``state_dir`` (``state.py``) before its first part and
   after each part the server confirmed. A part that fails is retried on its own (its bytes
   are in memory) with the destination's retry policy: a cut connection costs one part, not
   the upload. The completion is checked against the composite checksum
   (SHA-256 of the parts' SHA-256s, ``-<parts>``) computed here.
4. After the PUT / Complete, a HEAD of the new version MUST report the size (and, when the
   server keeps checksums, the checksum) sent; only then does ``put`` return, with an id
   pinned to that version.
5. A put that fails aborts its multipart upload and removes the session file — unless the
   source is a seekable file: then both are kept and the next put of the same name resumes
   after the parts whose SHA-256 still matches, re-sending only the rest. A put whose saved
   upload does not match its first part (a fresh encryption salt) aborts it and starts over.
   Sessions left by a dead process are aborted on the server after a day idle.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from minio.commonconfig import Tags

from ..base import (
    ByteStream,
    DestinationError,
    Hashes,
    NotFoundError,
    PermanentError,
    RetryableError,
    RetryPolicy,
    StoredFile,
    iter_stream,
    validate_properties,
)
from ..chunking import fixed_chunks, rewinder
from .client import S3Client, parse_time
from .config import S3Config
from .layout import MD5_TAG, SHA256_TAG, Layout, encode_properties, pinned
from .protection import Protection
from .state import PartRecord, SessionStore, idle_sessions

CONTENT_TYPE = "application/octet-stream"
#: An upload of ours on the server with no session file (state_dir lost) is aborted after this.
ORPHAN_UPLOAD_AGE = timedelta(days=7)

#: (key, version id, HEAD response headers) -> the file as ``stat`` reports it
Describe = Callable[[str, str | None, Mapping[str, str]], StoredFile]


@dataclass(frozen=True)
class Sent:
    """What a put sent: the size and hashes the server's answers are checked against."""

    size: int
    md5_hex: str
    sha256_hex: str
    checksum: str  # x-amz-checksum-sha256 the server should report (composite "…-N" for multipart)


class Uploader:
    def __init__(
        self,
        config: S3Config,
        client: S3Client,
        layout: Layout,
        retry: RetryPolicy,
        protection: Callable[[], Protection],
        describe: Describe,
    ):
        self.cfg = config
        self.client = client
        self.layout = layout
        self.retry = retry
        self._protection = protection
        self._describe = describe
        self._swept = False
        #: Bytes of the last put that a saved upload already held (a resumed upload skips them).
        self.last_resumed_bytes = 0

    # --- put --------------------------------------------------------------------------------

    def put(
        self,
        name: str,
        stream: ByteStream,
        properties: Mapping[str, str],
        *,
        retain_until: datetime | None = None,
    ) -> StoredFile:
        """``retain_until`` overrides the configured retention (the check's short-lived probe)."""
        props = validate_properties(properties)
        key = self.layout.key_for(name, props)
        encode_properties(props, "0" * 32, "0" * 64)  # the 2 KB metadata limit, before any byte is read
        protection = self._protection()
        self._sweep_once()
        self._refuse_existing(key, protection)
        self.last_resumed_bytes = 0
        headers = self._object_headers(protection, retain_until)
        chunks = fixed_chunks(iter_stream(stream, 1 << 20), self.cfg.part_size)
        first, last = next(chunks)
        if last:
            return self._single(key, props, bytes(first), headers, protection)
        return self._multipart(key, props, first, chunks, headers, protection, stream)

    def _object_headers(self, protection: Protection, retain_until: datetime | None) -> dict[str, str]:
        headers = {"Content-Type": CONTENT_TYPE}
        if self.cfg.storage_class:
            headers["x-amz-storage-class"] = self.cfg.storage_class
        if protection.writes_retention(self.cfg):
            headers["x-amz-object-lock-mode"] = self.cfg.lock_mode.header
            headers["x-amz-object-lock-retain-until-date"] = _s3_time(retain_until or self.cfg.retain_until())
        return headers

    def _refuse_existing(self, key: str, protection: Protection) -> None:
        versions = self.retry.call(self.client.key_versions, key, versioned=protection.versioned)
        live = [v for v in versions if not v.is_delete_marker]
        if live:
            raise PermanentError(
                f"{self.cfg.description}: {key} already exists ({len(live)} version(s)); S3 files are written "
                "once here — delete it first (a locked file cannot be deleted before its retention ends)"
            )

    # --- one PUT ------------------------------------------------------------------------------

    def _single(
        self, key: str, props: dict[str, str], data: bytes, headers: dict[str, str], protection: Protection
    ) -> StoredFile:
        md5 = hashlib.md5(data, usedforsecurity=False)
        sha = hashlib.sha256(data)
        sent = Sent(len(data), md5.hexdigest(), sha.hexdigest(), _b64(sha.digest()))
        request = {
            **headers,
            **encode_properties(props, sent.md5_hex, sent.sha256_hex),
            "Content-MD5": _b64(md5.digest()),
            "x-amz-checksum-sha256": sent.checksum,
        }
        if protection.versioned:
            request["If-None-Match"] = "*"

        def send() -> str | None:
            response = self.client.execute(f"uploading {key}", "PUT", key, body=data, headers=request)
            echoed = response.headers.get("x-amz-checksum-sha256")
            if echoed and echoed != sent.checksum:
                raise PermanentError(
                    f"{self.cfg.description}: uploading {key}: the server reports SHA-256 {echoed}, sent {sent.checksum}"
                )
            return response.headers.get("x-amz-version-id")

        version = self._write_once(key, sent, send)
        return self._verified(key, version, sent, props)

    # --- multipart ----------------------------------------------------------------------------

    def _multipart(
        self,
        key: str,
        props: dict[str, str],
        first: memoryview,
        chunks: Iterator[tuple[memoryview, bool]],
        headers: dict[str, str],
        protection: Protection,
        stream: ByteStream,
    ) -> StoredFile:
        store = SessionStore(Path(self.cfg.state_dir), self.cfg.endpoint, self.cfg.bucket, key)
        upload_id, saved = self._resumable(store)
        hashes = Hashes()
        done: list[PartRecord] = []
        chunk, last = first, False
        number = 0
        try:
            while True:
                number += 1
                hashes.update(chunk)
                data = bytes(chunk)
                record = saved.get(number)
                sha = hashlib.sha256(data).digest()
                if record is not None and record.size == len(data) and record.sha256 == _b64(sha):
                    done.append(record)
                    self.last_resumed_bytes += len(data)
                else:
                    if record is not None:  # these bytes differ from the saved upload's
                        if self.last_resumed_bytes:
                            raise RetryableError(
                                f"{self.cfg.description}: uploading {key}: the stream differs from the interrupted "
                                f"upload it was resuming after {self.last_resumed_bytes} bytes; that upload was "
                                "discarded — retry the operation"
                            )
                        self._abort(key, upload_id)
                        store.clear()
                        upload_id, saved = None, {}
                    if upload_id is None:
                        upload_id = self._create(key, {**headers, **encode_properties(props, None, None)})
                        store.begin(upload_id, self.cfg.part_size)
                    record = self._upload_part(key, upload_id, number, data, sha)
                    store.record(record)
                    done.append(record)
                del data
                if last:
                    break
                chunk, last = next(chunks)
            assert upload_id is not None
            sent = Sent(hashes.size, hashes.md5.hexdigest(), hashes.sha256.hexdigest(), _composite(done))
            version = self._complete(key, upload_id, done, sent, protection)
        except BaseException as exc:
            keep = (
                isinstance(exc, DestinationError) and upload_id is not None and rewinder(stream) is not None
            )
            if not keep:
                self._abort(key, upload_id)
                store.clear()
            elif isinstance(exc, DestinationError):
                exc.args = (
                    f"{exc.args[0] if exc.args else exc}; the multipart upload ({len(done)} part(s) confirmed) is "
                    "kept for a later put of the same file to resume",
                )
            raise
        store.clear()
        self._tag_hashes(key, version, sent)
        return self._verified(key, version, sent, props)

    def _resumable(self, store: SessionStore) -> tuple[str | None, dict[int, PartRecord]]:
        """A saved upload of this key and its parts the server still holds (same ETag and size)."""
        session = store.load()
        if session is None:
            return None, {}
        try:
            held = self.retry.call(self._list_parts, store.key, session.upload_id)
        except NotFoundError:
            store.clear()  # completed or aborted meanwhile
            return None, {}
        parts = {n: p for n, p in session.parts.items() if held.get(n) == (p.etag.strip('"'), p.size)}
        if session.part_size != self.cfg.part_size or not parts:
            self._abort(store.key, session.upload_id)
            store.clear()
            return None, {}
        return session.upload_id, parts

    def _list_parts(self, key: str, upload_id: str) -> dict[int, tuple[str, int]]:
        held: dict[int, tuple[str, int]] = {}
        marker = "0"
        while True:
            response = self.client.execute(
                f"listing the parts of {key}",
                "GET",
                key,
                query_params={"uploadId": upload_id, "part-number-marker": marker},
            )
            root = ElementTree.fromstring(response.data)
            for part in root.iterfind("{*}Part"):
                number = int(_child(part, "PartNumber") or 0)
                held[number] = ((_child(part, "ETag") or "").strip('"'), int(_child(part, "Size") or -1))
            if (_child(root, "IsTruncated") or "false").lower() != "true":
                return held
            marker = _child(root, "NextPartNumberMarker") or str(max(held, default=0))

    def _create(self, key: str, headers: dict[str, str]) -> str:
        request = {**headers, "x-amz-checksum-algorithm": "SHA256"}

        def create() -> str:
            response = self.client.execute(
                f"starting the upload of {key}", "POST", key, headers=request, query_params={"uploads": ""}
            )
            upload_id = _child(ElementTree.fromstring(response.data), "UploadId")
            if not upload_id:
                raise PermanentError(
                    f"{self.cfg.description}: starting the upload of {key}: no UploadId in the answer"
                )
            return upload_id

        return self.retry.call(create)

    def _upload_part(self, key: str, upload_id: str, number: int, data: bytes, sha: bytes) -> PartRecord:
        md5 = _b64(hashlib.md5(data, usedforsecurity=False).digest())
        checksum = _b64(sha)

        def send() -> PartRecord:
            response = self.client.execute(
                f"uploading part {number} of {key}",
                "PUT",
                key,
                body=data,
                headers={"Content-MD5": md5, "x-amz-checksum-sha256": checksum},
                query_params={"partNumber": str(number), "uploadId": upload_id},
            )
            echoed = response.headers.get("x-amz-checksum-sha256")
            if echoed and echoed != checksum:
                raise RetryableError(
                    f"{self.cfg.description}: part {number} of {key}: the server reports SHA-256 {echoed}, sent {checksum}"
                )
            etag = str(response.headers.get("etag", "")).strip('"')
            return PartRecord(number=number, etag=etag, size=len(data), sha256=checksum, md5=md5)

        return self.retry.call(send)

    def _complete(
        self, key: str, upload_id: str, parts: list[PartRecord], sent: Sent, protection: Protection
    ) -> str | None:
        body = (
            "<CompleteMultipartUpload>"
            + "".join(
                f'<Part><PartNumber>{p.number}</PartNumber><ETag>"{escape(p.etag)}"</ETag>'
                f"<ChecksumSHA256>{p.sha256}</ChecksumSHA256></Part>"
                for p in parts
            )
            + "</CompleteMultipartUpload>"
        ).encode()
        headers = {
            "Content-Type": "application/xml",
            "Content-MD5": _b64(hashlib.md5(body, usedforsecurity=False).digest()),
        }
        if protection.versioned:
            headers["If-None-Match"] = "*"

        def complete() -> str | None:
            response = self.client.execute(
                f"completing the upload of {key}",
                "POST",
                key,
                body=body,
                headers=headers,
                query_params={"uploadId": upload_id},
            )
            root = ElementTree.fromstring(response.data)
            if root.tag.rsplit("}", 1)[-1] == "Error":  # S3 may answer 200 and put the error in the body
                code = _child(root, "Code") or "InternalError"
                raise (RetryableError if code in ("InternalError", "SlowDown") else PermanentError)(
                    f"{self.cfg.description}: completing the upload of {key}: {code}: {_child(root, 'Message') or ''}"
                )
            reported = _child(root, "ChecksumSHA256")
            if reported and reported != sent.checksum:
                raise PermanentError(
                    f"{self.cfg.description}: completing the upload of {key}: the server reports SHA-256 {reported}, "
                    f"the parts sent make {sent.checksum}"
                )
            return response.headers.get("x-amz-version-id")

        return self._write_once(key, sent, complete)

    def _abort(self, key: str, upload_id: str | None) -> None:
        if upload_id is None:
            return
        # Already gone, or unreachable: the sweep and the bucket's lifecycle rule catch it.
        with contextlib.suppress(DestinationError):
            self.client.execute(
                f"aborting the upload of {key}", "DELETE", key, query_params={"uploadId": upload_id}
            )

    def _tag_hashes(self, key: str, version: str | None, sent: Sent) -> None:
        """Full-object MD5 and SHA-256 of a multipart object (unknown when it was created) as tags.

        Best effort: without s3:PutObjectTagging the object lists without these hashes; the
        composite checksum was verified at upload, and restore authenticates every byte anyway.
        """
        tags = Tags.new_object_tags()
        tags[MD5_TAG] = sent.md5_hex
        tags[SHA256_TAG] = sent.sha256_hex
        with contextlib.suppress(DestinationError):
            self.retry.call(
                self.client.call,
                f"tagging {key}",
                lambda: self.client.minio.set_object_tags(
                    self.cfg.bucket, key, tags, version_id=version if pinned(version) else None
                ),
            )

    # --- after the write ----------------------------------------------------------------------

    def _write_once(self, key: str, sent: Sent, request: Callable[[], str | None]) -> str | None:
        """The PUT / Complete that creates the object, retried; its version id."""
        attempts = 0

        def attempt() -> str | None:
            nonlocal attempts
            attempts += 1
            return request()

        try:
            return self.retry.call(attempt)
        except (PermanentError, NotFoundError) as exc:
            return self._adopt_after_retry(key, sent, exc, attempts)

    def _adopt_after_retry(self, key: str, sent: Sent, exc: DestinationError, attempts: int) -> str | None:
        """A retried PUT/Complete refused because the object now exists: our first attempt landed
        (its answer was lost) when the object holds exactly what was sent; else re-raise."""
        if attempts < 2:
            raise exc
        for version in self.retry.call(self.client.key_versions, key, versioned=self._protection().versioned):
            if version.is_delete_marker:
                continue
            response = self.client.head(key, version.version_id, f"checking {key}")
            if _matches(response.headers, sent):
                return version.version_id
        raise exc

    def _verified(self, key: str, version: str | None, sent: Sent, props: dict[str, str]) -> StoredFile:
        response = self.retry.call(self.client.head, key, version, f"verifying {key}")
        size = int(response.headers.get("content-length", "-1"))
        reported = response.headers.get("x-amz-checksum-sha256")
        if size != sent.size or (reported and reported != sent.checksum):
            raise PermanentError(
                f"{self.cfg.description}: {key} reads back as {size} bytes / SHA-256 {reported}, sent "
                f"{sent.size} bytes / {sent.checksum}; nothing was recorded"
            )
        version = version or response.headers.get("x-amz-version-id")
        stored = self._describe(key, version, response.headers)
        return replace(stored, size=sent.size, md5=sent.md5_hex, sha256=sent.sha256_hex, properties=props)

    # --- leftovers of dead processes ----------------------------------------------------------

    def _sweep_once(self) -> None:
        if self._swept:
            return
        self._swept = True
        for path, session in idle_sessions(Path(self.cfg.state_dir)):
            if session is not None and (session.endpoint, session.bucket) == (
                self.cfg.endpoint,
                self.cfg.bucket,
            ):
                self._abort(session.key, session.upload_id)
            if session is None or (session.endpoint, session.bucket) == (self.cfg.endpoint, self.cfg.bucket):
                path.unlink(missing_ok=True)
        self._abort_orphans()

    def _abort_orphans(self) -> None:
        """Uploads under our prefix older than a week: their session file is gone (a lost state_dir)."""
        cutoff = datetime.now(UTC) - ORPHAN_UPLOAD_AGE
        try:
            response = self.client.execute(
                "listing unfinished uploads",
                "GET",
                None,
                query_params={"uploads": "", "prefix": self.cfg.prefix},
            )
            root = ElementTree.fromstring(response.data)
        except (DestinationError, ElementTree.ParseError):
            return  # without s3:ListBucketMultipartUploads: the bucket's lifecycle rule is the backstop
        for upload in root.iterfind("{*}Upload"):
            initiated_text = _child(upload, "Initiated")
            initiated = parse_time(initiated_text) if initiated_text else None
            key, upload_id = _child(upload, "Key"), _child(upload, "UploadId")
            if key and upload_id and initiated is not None and initiated < cutoff:
                self._abort(key, upload_id)


def _matches(headers: Mapping[str, str], sent: Sent) -> bool:
    size = int(headers.get("content-length", "-1"))
    reported = headers.get("x-amz-checksum-sha256")
    if reported:
        return size == sent.size and reported == sent.checksum
    return size == sent.size and headers.get("x-amz-meta-bp-sha256") == sent.sha256_hex


def _composite(parts: list[PartRecord]) -> str:
    joined = b"".join(base64.b64decode(p.sha256) for p in parts)
    return f"{_b64(hashlib.sha256(joined).digest())}-{len(parts)}"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _s3_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _child(element: ElementTree.Element, name: str) -> str | None:
    found = element.find(f"{{*}}{name}")
    if found is None:
        found = element.find(name)
    return found.text.strip() if found is not None and found.text else None
