"""Incremental object backups: the previous inventory × the current listing → only new/changed objects.

A bucket of a format-2 set has two parts: ``bucket-<name>`` (the objects this backup read:
new and changed ones, or all of them in a *full*) and ``inventory-<name>`` (every object of
the bucket with where its body lives, ``archive/inventory.py``). The diff is a merge of two
sorted streams — the previous set's inventory part, decrypted as it downloads, and the
ListObjectsV2 listing — so memory does not grow with the bucket.

Order and bounds: the inventory must list keys in order, but the body of a new object is
hashed only once the archive writer has read it, a few objects behind the listing
(read-ahead). Lines wait in a small queue until the objects before them are archived; when
that queue is full the listing pauses (``backup_buckets.PAUSE``) until the writer catches up.
The inventory part is uploaded on its own thread while the bucket part uploads, both through
the same encryptor; both are verified by ``finalize_backup`` before the manifest is written.

When is a bucket backed up in full (``choose_mode``): no earlier set of the bucket on this
destination; its set is format 1; its manifest, inventory or a part it references cannot be
read or verified (warning with the reason); every ``full_every``-th backup; or when the live
share of the older parts the previous set references fell below ``min_live_share``.

Seeding (``services/backup_seed.py``): the base may also be a seeding run's *seed checkpoint*
(the newest set with a manifest or a checkpoint wins); a seed is always continued incrementally.
With a ``BucketBudget`` a new or changed object is archived only while the budget holds it; the
others are *deferred*: in neither the bucket part nor the inventory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from minio import Minio

from ..archive.errors import ArchiveError
from ..archive.inventory import (
    DiffCounts,
    InventoryRecord,
    Listed,
    inventory_part_name,
    merge_listing,
    read_inventory,
)
from ..archive.keys import OrgKeyring
from ..archive.manifest import BucketSummary, Manifest, ReferencedPart
from ..archive.part_index import index_part_name
from ..archive.stream_crypto import decrypt_stream
from ..destinations.base import Destination, DestinationError, StoredFile
from .backup_buckets import (
    PAUSE,
    ArchiveWriter,
    BucketExportReport,
    BucketExportResult,
    ListedObject,
    ObjectRecord,
    ReadAhead,
    TagReading,
    iter_bucket_objects,
    iter_listing,
)
from .backup_index import upload_bucket_part
from .backup_parts import (
    PART_MANIFEST,
    PART_SEED,
    PROP_PART_NAME,
    BackupError,
    ErrorCode,
    bucket_part_name,
)
from .backup_seed import BucketBudget
from .backup_upload import Encryptor, UploadedPart, has_manifest, has_seed_checkpoint, list_sets, upload_part
from .bucket_versioning import bucket_versioning
from .progress import ProgressTracker

#: Inventory lines held while the objects before them are archived; the listing pauses beyond it.
MAX_HELD_LINES = 10_000
MANIFEST_LIMIT_BYTES = 512 * 1024 * 1024
#: ``mode_reason`` of a bucket backed up with incremental object backups off (every set is a full).
INCREMENTAL_OFF = "incremental object backups off"


@dataclass(frozen=True)
class IncrementalPolicy:
    """``BACKUP_PIPELINE_INCREMENTAL_OBJECTS`` / ``_FULL_EVERY`` / ``_INCREMENTAL_MIN_LIVE_SHARE``."""

    enabled: bool = False
    full_every: int = 7
    min_live_share: float = 0.5
    #: The run uploads within a budget (Drive's daily cap): a full that the rules would take is
    #: replaced by an incremental when a usable previous set exists (a full would re-seed).
    budget_limited: bool = False


@dataclass
class PreviousSet:
    """The newest complete set holding the bucket, with its manifest authenticated."""

    backup_id: str
    manifest: Manifest
    summary: BucketSummary
    files: dict[str, StoredFile]  # part name -> file, of that set
    seed: bool = False  # a seeding run's checkpoint, not a complete set

    def locations(self) -> dict[tuple[str, str], ReferencedPart]:
        """Every part the previous inventory can point at, described as a reference."""
        own = self.manifest.part(self.summary.part_name)
        index = next((p for p in self.manifest.parts if p.name == index_part_name(own.name)), None)
        found = {
            (self.backup_id, own.name): ReferencedPart(
                self.backup_id,
                own.name,
                own.ciphertext_size,
                own.ciphertext_sha256,
                own.plaintext_size,
                own.plaintext_sha256,
                self.summary.object_bytes,
                0,
                0,
                *(
                    (
                        index.name,
                        index.ciphertext_size,
                        index.ciphertext_sha256,
                        index.plaintext_size,
                        index.plaintext_sha256,
                    )
                    if index is not None
                    else ()
                ),
            )
        }
        for ref in self.summary.referenced_parts or ():
            found[(ref.backup_id, ref.part_name)] = ref
        return found


@dataclass(frozen=True)
class ModeChoice:
    full: bool
    reason: str
    previous: PreviousSet | None = None
    warning: str | None = None  # said in the log: the previous inventory could not be used


def _read_previous_manifest(
    destination: Destination,
    keyring: OrgKeyring,
    backup_id: str,
    stored: StoredFile,
    part_name: str = PART_MANIFEST,
) -> Manifest:
    plaintext = b""
    for block in decrypt_stream(
        destination.get(stored.id),
        expected_backup_id=backup_id,
        expected_part_name=part_name,
        org_keyring=keyring,
    ):
        plaintext += block
        if len(plaintext) > MANIFEST_LIMIT_BYTES:
            raise ArchiveError(f"manifest larger than {MANIFEST_LIMIT_BYTES} bytes")
    return Manifest.from_json(plaintext)


def open_previous_inventory(
    destination: Destination, keyring: OrgKeyring, previous: PreviousSet, bucket: str
) -> Iterator[InventoryRecord]:
    """The previous inventory, streamed and authenticated; its ciphertext SHA-256 is checked at the end."""
    name = inventory_part_name(bucket)
    record = previous.manifest.part(name)
    stored = previous.files[name]
    digest, size = hashlib.sha256(), 0

    def counted() -> Iterator[bytes]:
        nonlocal size
        for block in destination.get(stored.id):
            digest.update(block)
            size += len(block)
            yield block

    plaintext = decrypt_stream(
        counted(), expected_backup_id=previous.backup_id, expected_part_name=name, org_keyring=keyring
    )
    yield from read_inventory(plaintext)
    if size != record.ciphertext_size or digest.hexdigest() != record.ciphertext_sha256:
        raise ArchiveError(f"part {name!r} of backup {previous.backup_id} does not match its manifest")


def choose_mode(
    destination: Destination,
    keyring: OrgKeyring,
    installation_id: str,
    bucket: str,
    backup_id: str,
    policy: IncrementalPolicy,
) -> ModeChoice:
    """Full or incremental for this bucket, and why (see the module docstring)."""
    sets = list_sets(destination, installation_id)
    previous: PreviousSet | None = None
    for other in sorted(sets, reverse=True):
        if other == backup_id or other > backup_id:
            continue
        seed = not has_manifest(sets[other])
        if seed and not has_seed_checkpoint(sets[other]):
            continue
        files = {f.properties.get(PROP_PART_NAME, ""): f for f in sets[other]}
        document = PART_SEED if seed else PART_MANIFEST
        try:
            manifest = _read_previous_manifest(destination, keyring, other, files[document], document)
        except (ArchiveError, DestinationError) as exc:
            return ModeChoice(
                True,
                "previous manifest unreadable",
                warning=f"the manifest of {other} cannot be read ({exc})",
            )
        summary = manifest.bucket(bucket)
        if summary is None:
            continue  # that set left the bucket out: look further back
        if summary.inventory_part is None:
            return ModeChoice(True, f"the previous backup {other} has no inventory (format 1, or 3: sharded)")
        previous = PreviousSet(other, manifest, summary, files, seed=seed)
        break
    if previous is None:
        return ModeChoice(True, "no earlier backup of the bucket on this destination")
    problem = _check_previous(destination, keyring, previous, bucket, sets)
    if problem:
        return ModeChoice(
            True, "previous inventory unusable", warning=f"backup {previous.backup_id}: {problem}"
        )
    if previous.seed:
        # The full rules would restart the seed from nothing: a seed is always continued.
        return ModeChoice(False, f"continuing the seed checkpoint of {previous.backup_id}", previous)
    since = (previous.summary.since_full or 0) + 1
    full_reason: str | None = None
    if since >= policy.full_every:
        full_reason = f"every {policy.full_every}th backup is a full one"
    refs = previous.summary.referenced_parts or []
    total = sum(r.object_bytes for r in refs)
    live = sum(r.live_bytes for r in refs)
    if full_reason is None and total and live / total < policy.min_live_share:
        full_reason = (
            f"only {live / total:.0%} of the bytes in older parts are still used "
            f"(below {policy.min_live_share:.0%})"
        )
    if full_reason is not None and policy.budget_limited:
        return ModeChoice(
            False,
            f"incremental on {previous.backup_id}: a full ({full_reason}) does not fit today's upload allowance",
            previous,
        )
    if full_reason is not None:
        return ModeChoice(True, full_reason, previous)
    return ModeChoice(False, f"incremental on {previous.backup_id}", previous)


def _check_previous(
    destination: Destination,
    keyring: OrgKeyring,
    previous: PreviousSet,
    bucket: str,
    sets: dict[str, list[StoredFile]],
) -> str | None:
    """Why the previous inventory cannot be used (None: it can): a referenced part is gone or differs, or
    the inventory does not authenticate (read once here, before anything depends on it)."""
    for (backup_id, part_name), ref in previous.locations().items():
        stored = next(
            (f for f in sets.get(backup_id, ()) if f.properties.get(PROP_PART_NAME) == part_name), None
        )
        if stored is None:
            return f"part {part_name!r} of backup {backup_id}, which it references, is missing"
        if stored.size != ref.ciphertext_size or (
            stored.sha256 is not None and stored.sha256 != ref.ciphertext_sha256
        ):
            return f"part {part_name!r} of backup {backup_id} differs from the manifest"
    try:
        for _ in open_previous_inventory(destination, keyring, previous, bucket):
            pass
    except (ArchiveError, DestinationError, KeyError) as exc:
        return f"its inventory cannot be read: {exc}"
    return None


class _InventoryUpload:
    """Uploads the inventory part on its own thread from records put in key order."""

    _END = object()

    def __init__(
        self, upload: Callable[[Iterable[bytes]], UploadedPart], write: Callable[..., Iterator[bytes]]
    ):
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=4096)
        self._upload = upload
        self._write = write
        self.result: UploadedPart | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="inventory-upload", daemon=True)
        self._thread.start()

    def _records(self) -> Iterator[InventoryRecord]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _run(self) -> None:
        try:
            self.result = self._upload(self._write(self._records()))
        except BaseException as exc:  # handed to the export's thread
            self.error = exc

    def _put(self, item: Any) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    raise self.error or BackupError(
                        ErrorCode.INTERNAL, "the inventory upload stopped"
                    ) from None

    def put(self, record: InventoryRecord) -> None:
        self._put(record)

    def finish(self) -> UploadedPart:
        self._put(self._END)
        self._thread.join()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def abort(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._queue.put(BackupError(ErrorCode.INTERNAL, "bucket export failed"), timeout=5)
            self._thread.join(timeout=30)


@dataclass(frozen=True, slots=True)
class _ListedItem(Listed):
    original: ListedObject | None = None


@dataclass
class _Slot:
    key: str
    change: str
    record: InventoryRecord | None = None
    done: bool = False


@dataclass
class _Merge:
    """The ordered hand-over of inventory lines (see the module docstring)."""

    sink: _InventoryUpload
    backup_id: str
    part: str
    counts: DiffCounts = field(default_factory=DiffCounts)
    held: deque[_Slot] = field(default_factory=deque)
    waiting: dict[str, _Slot] = field(default_factory=dict)
    live: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    # Unchanged objects are carried over without a read; counting them keeps the step's progress
    # (whose totals are the whole bucket's) honest: it reaches 100 % when the bucket is covered.
    on_carried: Callable[[int], None] | None = None
    budget: BucketBudget | None = None  # seeding: new/changed objects beyond it are deferred

    def emit(self, slot: _Slot) -> None:
        if not self.waiting and not self.held:
            if slot.record is not None:
                self.sink.put(slot.record)
            return
        self.held.append(slot)

    def flush(self) -> None:
        while self.held and self.held[0].done:
            slot = self.held.popleft()
            if slot.record is not None:
                self.sink.put(slot.record)

    def to_fetch(
        self, merged: Iterator[tuple[Listed, InventoryRecord | None, str]]
    ) -> Iterator[ListedObject]:
        for listed, previous, change in merged:
            if previous is not None:
                used = self.live.setdefault((previous.backup_id, previous.part), [0, 0])
                used[0] += 1
                used[1] += previous.size
                if self.on_carried is not None:
                    self.on_carried(previous.size)
                self.emit(_Slot(listed.key, change, previous, done=True))
                if len(self.held) > MAX_HELD_LINES and self.waiting:
                    yield PAUSE
                continue
            if self.budget is not None and not self.budget.take(listed.key, listed.size):
                continue  # deferred: neither archived nor in the inventory (a later run uploads it)
            slot = _Slot(listed.key, change)
            self.waiting[listed.key] = slot
            self.held.append(slot)
            assert isinstance(listed, _ListedItem) and listed.original is not None
            yield listed.original

    def archived(self, record: ObjectRecord) -> None:
        slot = self.waiting.pop(record.key)
        if slot.change == "changed":
            self.counts.changed += 1
            self.counts.changed_bytes += record.size
        else:
            self.counts.new += 1
            self.counts.new_bytes += record.size
        slot.record = InventoryRecord(
            key=record.key,
            size=record.size,
            sha256=record.sha256,
            etag=record.etag,
            last_modified=record.last_modified.isoformat() if record.last_modified else None,
            content_type=record.content_type,
            backup_id=self.backup_id,
            part=self.part,
            headers=dict(record.headers),
            metadata=dict(record.metadata),
            tags=dict(record.tags),
        )
        slot.done = True
        self.flush()

    def skipped(self, key: str) -> None:
        slot = self.waiting.pop(key)
        slot.done = True
        self.flush()


def _listing(client: Minio, bucket: str) -> Iterator[Listed]:
    for obj in iter_listing(client, bucket):
        # UTC ISO 8601, as the tar's pax record and the archived objects' inventory lines write it.
        lm = obj.last_modified.astimezone(dt.UTC).isoformat() if obj.last_modified else None
        yield _ListedItem(obj.key, obj.size, obj.etag, lm, obj)


def export_bucket_incremental(
    client: Minio,
    bucket: str,
    destination: Destination,
    encryptor: Encryptor,
    archive_writer: ArchiveWriter,
    *,
    installation_id: str,
    backup_id: str,
    choice: ModeChoice,
    keyring: OrgKeyring,
    progress: ProgressTracker | None = None,
    read_ahead: ReadAhead = ReadAhead(),
    tag_reading: TagReading = "when_counted",
    budget: BucketBudget | None = None,
) -> BucketExportResult:
    """The ``bucket-<name>`` part (new and changed objects) and the ``inventory-<name>`` part, verified.

    With ``budget`` (seeding) new and changed objects beyond it are deferred (module docstring)."""
    from ..archive.inventory import write_inventory

    started = time.monotonic()
    report = BucketExportReport(bucket, keep_records=False)
    versioning = bucket_versioning(client, bucket)
    part_name = bucket_part_name(bucket)

    def upload(plaintext: Iterable[bytes], name: str) -> UploadedPart:
        return upload_part(
            destination,
            encryptor,
            installation_id=installation_id,
            backup_id=backup_id,
            part_name=name,
            plaintext=plaintext,
        )

    sink = _InventoryUpload(lambda p: upload(p, inventory_part_name(bucket)), write_inventory)
    merge = _Merge(
        sink,
        backup_id,
        part_name,
        on_carried=(lambda n: progress.add(n, objects=1)) if progress is not None else None,
        budget=budget,
    )
    previous = choice.previous if not choice.full else None
    old: Iterable[InventoryRecord] = (
        open_previous_inventory(destination, keyring, previous, bucket) if previous is not None else ()
    )

    def done(record: ObjectRecord) -> None:
        if progress is not None:
            progress.add(objects=1)
        merge.archived(record)

    objects = iter_bucket_objects(
        client,
        bucket,
        report,
        on_bytes=(lambda n: progress.add(n)) if progress is not None else None,
        on_object_done=done,
        read_ahead=read_ahead,
        tag_reading=tag_reading,
        listing=merge.to_fetch(merge_listing(_listing(client, bucket), old, merge.counts)),
        on_skipped=merge.skipped,
    )
    try:
        try:
            # The part index as for a full (format 1) set: a single-object restore reads the
            # objects this set archived by ranges; carried-over objects use their own part's index.
            part, index_part = upload_bucket_part(
                destination,
                encryptor,
                archive_writer,
                objects,
                installation_id=installation_id,
                backup_id=backup_id,
                part_name=part_name,
                with_index=True,
            )
        finally:
            objects.close()
        merge.flush()
        inventory_part = sink.finish()
    except BaseException:
        sink.abort()
        raise
    if progress is not None:
        progress.finish()
    counts = merge.counts
    locations = previous.locations() if previous is not None else {}
    referenced = []
    for (ref_id, ref_part), (objects_live, bytes_live) in sorted(merge.live.items()):
        ref = locations.get((ref_id, ref_part))
        if ref is None:
            raise BackupError(
                ErrorCode.INTERNAL,
                f"bucket {bucket}: the previous inventory points at part {ref_part!r} of {ref_id}, "
                "which its manifest does not describe",
            )
        referenced.append({**_ref_dict(ref), "live_objects": objects_live, "live_bytes": bytes_live})
    incremental = {
        "mode": "full" if choice.full else "incremental",
        "mode_reason": choice.reason,
        "base_backup_id": previous.backup_id if previous is not None else None,
        # Seeding runs do not advance the chain: the set that completes the seed is its first.
        "since_full": (
            (previous.summary.since_full or 0) + (0 if previous.seed else 1) if previous is not None else 0
        ),
        "total_objects": counts.unchanged + report.object_count,
        "total_bytes": counts.unchanged_bytes + report.plaintext_bytes,
        "diff": counts.to_dict(),
        "referenced_parts": referenced,
        **(
            {"deferred_objects": budget.deferred_objects, "deferred_bytes": budget.deferred_bytes}
            if budget is not None
            else {}
        ),
    }
    return BucketExportResult(
        bucket=bucket,
        part=part,
        object_count=report.object_count,
        plaintext_bytes=report.plaintext_bytes,
        changed=report.changed,
        vanished=report.vanished,
        inventory=[],
        seconds=time.monotonic() - started,
        unreadable=report.unreadable,
        inexact=report.inexact,
        versioning=versioning,
        inventory_part=inventory_part,
        index_part=index_part,
        incremental=incremental,
    )


def _ref_dict(ref: ReferencedPart) -> dict[str, Any]:
    return {
        "backup_id": ref.backup_id,
        "part_name": ref.part_name,
        "ciphertext_size": ref.ciphertext_size,
        "ciphertext_sha256": ref.ciphertext_sha256,
        "plaintext_size": ref.plaintext_size,
        "plaintext_sha256": ref.plaintext_sha256,
        "object_bytes": ref.object_bytes,
        "index_part_name": ref.index_part_name,
        "index_ciphertext_size": ref.index_ciphertext_size,
        "index_ciphertext_sha256": ref.index_ciphertext_sha256,
        "index_plaintext_size": ref.index_plaintext_size,
        "index_plaintext_sha256": ref.index_plaintext_sha256,
    }
