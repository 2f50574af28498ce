"""A folder on a local disk or a NAS mount as a destination (NOT off-site on its own).

Layout under ``root``::

    <name>                  the data, under its readable name (may contain ``/``)
    .meta/<name>.json       sidecar: properties, size, md5, sha256, created
    .tmp/                   temporary names of puts in progress

Write ordering (MUST): data to ``.tmp/``, fsync, verify size and checksums by reading it
back, sidecar to ``.tmp/`` + fsync + rename into ``.meta/``, rename the data to its name,
fsync both directories. A file exists for ``list``/``stat`` only when both the data and
its sidecar are in place with matching size, so a crash at any point leaves nothing that
looks complete (leftovers in ``.tmp/`` are removed by the next put).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from backup_pipeline.durable_files import fsync_dir

from .base import (
    ByteStream,
    Capacity,
    CheckReport,
    DestinationError,
    Hashes,
    ListPage,
    NotFoundError,
    PermanentError,
    QuotaError,
    StoredFile,
    human_bytes,
    iter_stream,
    iterate_pages,
    refusal_reasons,
    validate_properties,
)

_META = ".meta"
_TMP = ".tmp"
_STALE_TMP_SECONDS = 24 * 3600


class LocalFolderDestination:
    def __init__(self, root: str | os.PathLike[str], *, read_size: int = 1 << 20):
        self.root = Path(root)
        self.read_size = read_size

    @property
    def description(self) -> str:
        return f"local folder {self.root}"

    # --- paths -------------------------------------------------------------------------

    def _data_path(self, name: str) -> Path:
        return self.root / _checked_name(name)

    def _meta_path(self, name: str) -> Path:
        return self.root / _META / (_checked_name(name) + ".json")

    def _prepare(self) -> None:
        try:
            (self.root / _META).mkdir(parents=True, exist_ok=True)
            (self.root / _TMP).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PermanentError(
                f"{self.description}: cannot create the folder ({exc.strerror}). Check that the path "
                "exists, is mounted and is writable by this user (BACKUP_PIPELINE_LOCAL_DESTINATION_PATH)."
            ) from None

    # --- contract ----------------------------------------------------------------------

    def put(self, name: str, stream: ByteStream, properties: Mapping[str, str]) -> StoredFile:
        props = validate_properties(properties)
        data_path = self._data_path(name)
        meta_path = self._meta_path(name)
        self._prepare()
        self._remove_stale_tmp()
        tmp_data = self.root / _TMP / f"{uuid.uuid4().hex}.part"
        tmp_meta = self.root / _TMP / f"{uuid.uuid4().hex}.meta"
        hashes = Hashes()
        try:
            with open(tmp_data, "wb") as out:
                for block in _source(iter_stream(stream, self.read_size)):
                    hashes.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            self._verify(tmp_data, hashes)
            stored = StoredFile(
                id=name,
                name=name,
                size=hashes.size,
                md5=hashes.md5.hexdigest(),
                sha256=hashes.sha256.hexdigest(),
                properties=props,
                created=datetime.now(UTC),
            )
            with open(tmp_meta, "w", encoding="utf-8") as out:
                json.dump(_meta_json(stored), out)
                out.flush()
                os.fsync(out.fileno())
            meta_path.parent.mkdir(parents=True, exist_ok=True)
            data_path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp_meta, meta_path)
            os.replace(tmp_data, data_path)
            fsync_dir(meta_path.parent)
            fsync_dir(data_path.parent)
            return stored
        except _SourceFailed as failed:
            raise failed.original from None  # the caller's stream broke, not the disk
        except OSError as exc:
            raise _os_error(self.description, exc) from None
        finally:
            for leftover in (tmp_data, tmp_meta):
                leftover.unlink(missing_ok=True)

    def _verify(self, path: Path, sent: Hashes) -> None:
        """Read the written file back: size and checksums must equal what was received."""
        check = Hashes()
        with open(path, "rb") as f:
            while block := f.read(self.read_size):
                check.update(block)
        if (check.size, check.sha256.digest(), check.md5.digest()) != (
            sent.size,
            sent.sha256.digest(),
            sent.md5.digest(),
        ):
            raise PermanentError(
                f"{self.description}: the written file reads back as {check.size} bytes with a different "
                f"checksum than the {sent.size} bytes sent; the disk or mount is unreliable. Nothing was recorded."
            )

    def _remove_stale_tmp(self) -> None:
        cutoff = time.time() - _STALE_TMP_SECONDS
        for leftover in (self.root / _TMP).iterdir():
            try:
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
            except OSError:
                continue  # another process's put may be using or removing it

    def list_page(
        self, properties: Mapping[str, str] | None = None, page_size: int = 100, page_token: str | None = None
    ) -> ListPage:
        """Files by name; the token is the last name returned, so a repeated token gives the same page."""
        if page_size < 1:
            raise PermanentError(f"page_size must be at least 1, got {page_size}")
        meta_root = self.root / _META
        for path in (self.root, meta_root):
            # A file where the folder should be is a misconfiguration, not "no backups yet".
            if path.exists() and not path.is_dir():
                raise PermanentError(
                    f"{self.description}: {path} is not a folder. Check BACKUP_PIPELINE_LOCAL_DESTINATION_PATH."
                )
        if not meta_root.is_dir():
            return ListPage([])
        wanted = dict(properties or {})
        names = sorted(
            meta_file.relative_to(meta_root).as_posix().removesuffix(".json")
            for meta_file in meta_root.rglob("*.json")
        )
        files: list[StoredFile] = []
        for name in names:
            if page_token is not None and name <= page_token:
                continue
            try:
                stored = self.stat(name)
            except NotFoundError:
                continue  # half-deleted or half-written: not a complete file
            if not all(stored.properties.get(k) == v for k, v in wanted.items()):
                continue
            if len(files) == page_size:
                return ListPage(files, next_token=files[-1].name)
            files.append(stored)
        return ListPage(files)

    def list(self, properties: Mapping[str, str] | None = None, page_size: int = 100) -> Iterator[StoredFile]:
        return iterate_pages(self.list_page, properties, page_size)

    def get(self, file_id: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        stored = self.stat(file_id)
        if start < 0 or (end is not None and end < start):
            raise PermanentError(f"invalid range [{start}, {end}) for {file_id!r}")
        stop = stored.size if end is None else min(end, stored.size)
        try:
            f = open(self._data_path(file_id), "rb")  # noqa: SIM115 - closed by the generator
        except FileNotFoundError:
            raise NotFoundError(f"{self.description}: {file_id!r} does not exist") from None

        def blocks() -> Iterator[bytes]:
            with f:
                f.seek(start)
                remaining = max(0, stop - start)
                while remaining > 0:
                    block = f.read(min(self.read_size, remaining))
                    if not block:
                        raise PermanentError(f"{self.description}: {file_id!r} is shorter than recorded")
                    remaining -= len(block)
                    yield block

        return blocks()

    def delete(self, file_id: str) -> None:
        try:
            self._data_path(file_id).unlink(missing_ok=True)
            self._meta_path(file_id).unlink(missing_ok=True)
        except OSError as exc:
            raise _os_error(self.description, exc) from None

    def stat(self, file_id: str) -> StoredFile:
        meta_path = self._meta_path(file_id)
        data_path = self._data_path(file_id)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            size = data_path.stat().st_size
        except FileNotFoundError:
            raise NotFoundError(f"{self.description}: {file_id!r} does not exist") from None
        except (OSError, ValueError) as exc:
            raise PermanentError(f"{self.description}: cannot read metadata of {file_id!r}: {exc}") from None
        if size != meta["size"]:
            raise NotFoundError(
                f"{self.description}: {file_id!r} is {size} bytes but {meta['size']} were recorded; "
                "it is not a complete file"
            )
        return StoredFile(
            id=file_id,
            name=file_id,
            size=meta["size"],
            md5=meta["md5"],
            sha256=meta["sha256"],
            properties=dict(meta["properties"]),
            created=datetime.fromisoformat(meta["created"]),
        )

    def check(self) -> CheckReport:
        report = CheckReport(destination=self.description)
        name = f".check-{uuid.uuid4().hex}"
        payload = os.urandom(4096)
        try:
            report.capacity = self.capacity()
            refused = refusal_reasons(report.capacity)
            free = report.capacity.free_bytes if report.capacity else None
            free_text = "free space unknown" if free is None else f"{human_bytes(free)} free"
            if refused:
                report.add("space", False, f"a backup would be refused: {'; '.join(refused)}")
                report.fix = (
                    f"{self.description}: free space on this disk, or point the destination elsewhere"
                )
            else:
                report.add("space", True, free_text)
            stored = self.put(name, [payload], {"purpose": "connection-check"})
            report.add("write", True, f"wrote {stored.size} bytes")
            back = b"".join(self.get(stored.id))
            if back != payload:
                report.add("read back", False, "the file read back differs from what was written")
                report.fix = "The disk or network mount returns different bytes than written; check it."
                return report
            report.add("read back", True, "contents match")
            self.delete(stored.id)
            report.add("delete", True, "test file deleted")
        except DestinationError as exc:
            report.failed("write/read/delete", exc)
        return report

    def capacity(self) -> Capacity | None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            return Capacity(free_bytes=shutil.disk_usage(self.root).free, daily_upload_remaining=None)
        except OSError as exc:
            raise _os_error(self.description, exc) from None


class _SourceFailed(Exception):
    def __init__(self, original: BaseException):
        super().__init__(str(original))
        self.original = original


def _source(blocks: Iterator[bytes]) -> Iterator[bytes]:
    """Tell the caller's stream errors apart from this folder's own OSErrors."""
    while True:
        try:
            block = next(blocks)
        except StopIteration:
            return
        except Exception as exc:
            raise _SourceFailed(exc) from exc
        yield block


def _checked_name(name: str) -> str:
    path = PurePosixPath(name)
    if (
        not name
        or name != path.as_posix()
        or path.is_absolute()
        or any(part in ("..", ".", "") for part in path.parts)
        or path.parts[0] in (_META, _TMP)
        or "\\" in name
        or "\0" in name
    ):
        raise PermanentError(
            f"invalid file name {name!r}: use a relative path of '/'-separated segments, "
            f"without '..', '.', empty segments, or a leading {_META}/{_TMP}"
        )
    return name


def _meta_json(stored: StoredFile) -> dict[str, object]:
    return {
        "size": stored.size,
        "md5": stored.md5,
        "sha256": stored.sha256,
        "properties": stored.properties,
        "created": stored.created.isoformat() if stored.created else None,
    }


def _os_error(description: str, exc: OSError) -> DestinationError:
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return QuotaError(f"{description}: no space left on the device; free space or point it elsewhere")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermanentError(
            f"{description}: permission denied ({exc.strerror}); make the folder writable by this user"
        )
    if exc.errno == errno.ENOTDIR or (
        exc.errno == errno.EEXIST and exc.filename is not None and not os.path.isdir(exc.filename)
    ):
        # mkdir on a file where the folder should be says "File exists": say what is wrong.
        where = exc.filename or description
        return PermanentError(
            f"{description}: {where} is not a folder. Check BACKUP_PIPELINE_LOCAL_DESTINATION_PATH."
        )
    return PermanentError(f"{description}: {exc.strerror or exc}")
