"""``S3Destination``: the destination contract on one bucket (and prefix) of any S3-compatible server.

Reading rules (what makes a locked set restorable after an attack with the product's own
credentials):

- A key's file is its **oldest** version that is not a delete marker. This destination writes
  each name once (``upload.py``) and deletes every version of it, so that version is the one it
  wrote; a later PUT (a new version) or DELETE without version id (a delete marker) by anyone
  else does not change what is listed, read, or restored.
- File ids pin that version (``layout.py``), so ``get``/``stat`` of a listed id read exactly the
  bytes the listing described.

``delete`` removes every version and delete marker of the key, newest first and the listed
version last, so an interrupted delete leaves the file listed rather than a newer stranger. It
refuses up front, deleting nothing, when a version is under retention or a legal hold, and
turns a server refusal (AccessDenied: the least-privilege policy) into the same
``LockedError``. It never sends ``x-amz-bypass-governance-retention``.
"""

from __future__ import annotations

import builtins
import itertools
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime

from ..base import (
    AuthError,
    ByteStream,
    Capacity,
    CheckReport,
    DestinationError,
    ListPage,
    LockedError,
    NotFoundError,
    PermanentError,
    RetryableError,
    RetryPolicy,
    StoredFile,
    iterate_pages,
)
from .client import GUIDE, S3Client, VersionEntry, locked_error, parse_time, retention_of
from .config import CredentialsLoader, S3Config
from .layout import (
    MD5_HEADER,
    MD5_TAG,
    PROPERTIES_HEADER,
    SHA256_HEADER,
    SHA256_TAG,
    Layout,
    decode_properties,
    pinned,
)
from .protection import Protection, read_protection
from .upload import Uploader

READ_BLOCK = 1 << 20
#: Keys examined by one ``list_page`` call at most: a filter matching little still returns
#: (a short page and a token) after a bounded amount of work, so each page stays retryable.
SCAN_LIMIT = 1000


class S3Destination:
    def __init__(self, config: S3Config, credentials: CredentialsLoader, *, retry: RetryPolicy | None = None):
        self.cfg = config
        self.client = S3Client(config, credentials)
        self.layout = Layout(config.prefix)
        self.retry = retry or RetryPolicy()
        self._protection: Protection | None = None
        self._protection_lock = threading.Lock()
        self.uploader = Uploader(
            config, self.client, self.layout, self.retry, self.protection, self._from_head
        )

    @property
    def description(self) -> str:
        return self.cfg.description

    def protection(self) -> Protection:
        """Versioning and object lock of the bucket, read once per destination object."""
        with self._protection_lock:
            if self._protection is None:
                self._protection = read_protection(self.client)
            return self._protection

    # --- contract ---------------------------------------------------------------------------

    def put(self, name: str, stream: ByteStream, properties: Mapping[str, str]) -> StoredFile:
        return self.uploader.put(name, stream, properties)

    def list_page(
        self, properties: Mapping[str, str] | None = None, page_size: int = 100, page_token: str | None = None
    ) -> ListPage:
        """Files in key order; the token is the last key examined (a repeated token gives the same page)."""
        if page_size < 1:
            raise PermanentError(f"page_size must be at least 1, got {page_size}")
        wanted = dict(properties or {})
        keys = _Peekable(self._listed_versions(self.layout.listing_prefix(wanted), page_token))
        files: list[StoredFile] = []
        examined = 0
        last_key: str | None = None
        while len(files) < page_size and examined < SCAN_LIMIT:
            batch = list(itertools.islice(keys, page_size - len(files)))
            if not batch:
                return ListPage(files)
            examined += len(batch)
            last_key = batch[-1].key
            for stored in self._describe_many(batch):
                if stored is not None and all(stored.properties.get(k) == v for k, v in wanted.items()):
                    files.append(stored)
        return ListPage(files, next_token=last_key if keys.has_more() else None)

    def list(self, properties: Mapping[str, str] | None = None, page_size: int = 100) -> Iterator[StoredFile]:
        return iterate_pages(self.list_page, properties, page_size)

    def stat(self, file_id: str) -> StoredFile:
        key, version = self.layout.parse_id(file_id)
        return self._describe(key, version)

    def get(self, file_id: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        key, version = self.layout.parse_id(file_id)
        if start < 0 or (end is not None and end < start):
            raise PermanentError(f"invalid range [{start}, {end}) for {file_id!r}")
        if end is not None and end == start:
            self.stat(file_id)  # NotFoundError now, as for any other range
            return iter(())
        length = 0 if end is None else end - start

        def open_body():  # type: ignore[no-untyped-def]
            return self.client.minio.get_object(
                self.cfg.bucket,
                key,
                offset=start,
                length=length,
                version_id=version if pinned(version) else None,
            )

        try:
            response = self.client.call(f"reading {key}", open_body)
        except PermanentError as exc:
            if "InvalidRange" not in str(exc):
                raise
            self.stat(file_id)  # exists, and the range starts at or past its end
            return iter(())
        return self._body(key, response)

    def _body(self, key: str, response) -> Iterator[bytes]:  # type: ignore[no-untyped-def]
        try:
            while True:
                try:
                    block = response.read(READ_BLOCK, decode_content=False)
                except Exception as exc:  # urllib3 ProtocolError/ReadTimeoutError, OSError
                    raise RetryableError(
                        f"{self.description}: reading {key}: the connection broke ({type(exc).__name__})"
                    ) from None
                if not block:
                    return
                yield block
        finally:
            response.close()
            response.release_conn()

    def delete(self, file_id: str) -> None:
        key, _ = self.layout.parse_id(file_id)
        versions = self.client.key_versions(key, versioned=self.protection().versioned)
        if not versions:
            return
        live = [v for v in versions if not v.is_delete_marker]
        now = datetime.now(UTC)
        locks: list[tuple[datetime | None, str | None, bool]] = []
        for version in live:
            try:
                mode, until, hold = retention_of(
                    self.client.head(key, version.version_id, f"checking {key}").headers
                )
            except NotFoundError:
                continue
            if hold or (until is not None and until > now):
                locks.append((until, mode, hold))
        if locks:
            # A legal hold has no end; otherwise the file is free when its last lock ends.
            worst = next((lock for lock in locks if lock[2]), None) or max(
                locks, key=lambda lock: lock[0] or now
            )
            raise locked_error(self.description, key, *worst)
        markers = [v for v in versions if v.is_delete_marker]
        deleted = 0
        for version in markers + live:  # live is newest first: the listed (oldest) version goes last
            try:
                self.client.delete_version(key, version.version_id, f"deleting {key}")
            except NotFoundError:
                continue
            except AuthError as exc:
                done = (
                    "Nothing of it was deleted" if not deleted else f"{deleted} newer version(s) were deleted"
                )
                raise LockedError(
                    f"{self.description}: the server refused to delete {key} ({exc}); these credentials may not "
                    f"delete (the least-privilege policy of {GUIDE}) or the file is locked. {done}; the file "
                    "stays listed"
                ) from None
            deleted += 1

    def check(self) -> CheckReport:
        from .check import run_check

        return run_check(self)

    def capacity(self) -> Capacity | None:
        return None  # S3 reports no free space; quotas (B2 caps, Wasabi) surface as QuotaError on write

    # --- reading metadata -------------------------------------------------------------------

    def _listed_versions(self, prefix: str, start_after: str | None) -> Iterator[VersionEntry]:
        """Per key (in listing order), its oldest version that is not a delete marker."""
        listing = self.client.versions(prefix, start_after, versioned=self.protection().versioned)
        grouped = itertools.groupby(listing, key=lambda v: v.key)
        for key, versions in grouped:
            if self.layout.name_of(key) is None:
                continue
            live = [v for v in versions if not v.is_delete_marker]
            if live:
                yield live[-1]

    def _describe_many(self, batch: Sequence[VersionEntry]) -> Sequence[StoredFile | None]:
        def one(entry: VersionEntry) -> StoredFile | None:
            try:
                return self._describe(entry.key, entry.version_id)
            except NotFoundError:
                return None  # deleted between the listing and the HEAD

        if len(batch) == 1:
            return [one(batch[0])]
        with ThreadPoolExecutor(max_workers=min(self.cfg.list_workers, len(batch))) as pool:
            return list(pool.map(one, batch))

    def _describe(self, key: str, version: str | None) -> StoredFile:
        response = self.client.head(key, version, f"reading the metadata of {key}")
        stored = self._from_head(key, version, response.headers)
        if stored.sha256 is None and int(response.headers.get("x-amz-tagging-count") or 0) > 0:
            tags = self._hash_tags(key, version)
            stored = replace(stored, md5=tags.get(MD5_TAG), sha256=tags.get(SHA256_TAG))
        return stored

    def _hash_tags(self, key: str, version: str | None) -> dict[str, str]:
        try:
            tags = self.client.call(
                f"reading the tags of {key}",
                lambda: self.client.minio.get_object_tags(
                    self.cfg.bucket, key, version_id=version if pinned(version) else None
                ),
            )
        except (AuthError, NotFoundError):
            return {}
        return dict(tags or {})

    def _from_head(self, key: str, version: str | None, headers: Mapping[str, str]) -> StoredFile:
        name = self.layout.name_of(key)
        if name is None:
            raise NotFoundError(f"{self.description}: {key} is not a file of this destination")
        version = version if pinned(version) else headers.get("x-amz-version-id")
        mode, until, _hold = retention_of(headers)
        modified = headers.get("last-modified")
        return StoredFile(
            id=self.layout.file_id(key, version),
            name=name,
            size=int(headers.get("content-length", "0")),
            md5=headers.get(MD5_HEADER),
            sha256=headers.get(SHA256_HEADER),
            properties=decode_properties(headers.get(PROPERTIES_HEADER)),
            created=parse_time(modified) if modified else None,
            locked_until=until if mode else None,
        )


class _Peekable:
    """An iterator that can tell whether another item follows (fetching it, once)."""

    def __init__(self, items: Iterator[VersionEntry]):
        self._items = items
        self._next: builtins.list[VersionEntry] = []

    def __iter__(self) -> _Peekable:
        return self

    def __next__(self) -> VersionEntry:
        if self._next:
            return self._next.pop()
        return next(self._items)

    def has_more(self) -> bool:
        if not self._next:
            try:
                self._next.append(next(self._items))
            except StopIteration:
                return False
        return True


__all__ = ["DestinationError", "S3Destination"]
