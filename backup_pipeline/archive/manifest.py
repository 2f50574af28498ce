"""The manifest of a backup set (written last, as its own encrypted part) and the completeness check.

Memory: the inventory holds one :class:`InventoryEntry` per object (key, size, SHA-256 as hex).
Measured with ``sys.getsizeof`` on CPython 3.11 it costs about 330 bytes per entry plus the key's
length (slotted dataclass ~56 B, two str objects ~49 B + len each, list slot 8 B), i.e. about
400 MB per million objects with 60-byte keys, and its JSON about 150 B per entry. Backup sets
of more than a few hundred thousand objects should stream the inventory (see the spec's
"Manifest" section); the manifest format does not change for that.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from backup_pipeline.archive.errors import ManifestError

MANIFEST_FORMAT = "backup_pipeline.manifest/1"
#: A set with inventory parts (incremental object backups): bucket summaries say where every
#: object's body lives; version 1 sets are still read.
MANIFEST_FORMAT_V2 = "backup_pipeline.manifest/2"
#: A set with at least one sharded bucket (BACKUP-FORMAT.md §4.3): its objects are in several
#: parts by key range. A new number so that a reader of formats 1-2, which would restore only
#: the part a bucket summary names, refuses the set instead of restoring a bucket partly.
MANIFEST_FORMAT_V3 = "backup_pipeline.manifest/3"
MANIFEST_FORMATS = (MANIFEST_FORMAT, MANIFEST_FORMAT_V2, MANIFEST_FORMAT_V3)
MANIFEST_PART_NAME = "manifest"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")

#: ``index``: a bucket part's part index (BACKUP-FORMAT.md §8), its ``bucket`` set.
#: ``inventory``: a bucket's inventory (format 2, §5.3), its ``bucket`` set.
PartKind = Literal["database", "bucket", "index", "inventory"]
PART_KINDS = ("database", "bucket", "index", "inventory")
AnomalyKind = Literal["changed", "vanished", "unreadable", "inexact"]
ANOMALY_KINDS: tuple[AnomalyKind, ...] = ("changed", "vanished", "unreadable", "inexact")


@dataclass(frozen=True, slots=True)
class PartRecord:
    name: str
    kind: PartKind
    ciphertext_size: int
    ciphertext_sha256: str
    plaintext_size: int
    plaintext_sha256: str
    ciphertext_md5: str | None = None
    bucket: str | None = None
    file_name: str | None = None


@dataclass(frozen=True, slots=True)
class ReferencedPart:
    """A bucket part of an older set that holds bodies of this set's unchanged objects (format 2).

    Sizes and hashes are copied from that set's manifest when the backup read it, so a restore
    can verify the part even after retention forgot the older set (its manifest removed).
    ``object_bytes``: every object in the part; ``live_*``: those this set still uses.
    ``index_*``: that part's index part (BACKUP-FORMAT.md §8), copied the same way, so a
    single-object restore can read the older part by ranges; absent (None) when it has none.
    """

    backup_id: str
    part_name: str
    ciphertext_size: int
    ciphertext_sha256: str
    plaintext_size: int
    plaintext_sha256: str
    object_bytes: int
    live_objects: int
    live_bytes: int
    index_part_name: str | None = None
    index_ciphertext_size: int | None = None
    index_ciphertext_sha256: str | None = None
    index_plaintext_size: int | None = None
    index_plaintext_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class BucketShard:
    """One key range of a sharded bucket (format 3): the objects with ``start_after < key <= end``
    (byte-wise comparison of the UTF-8 keys; ``None`` = open end) are in part ``part_name``."""

    part_name: str
    start_after: str | None
    end: str | None
    object_count: int
    object_bytes: int
    index_part: str | None = None


@dataclass(frozen=True, slots=True)
class BucketSummary:
    bucket: str
    part_name: str
    object_count: int  # objects archived in this set's part
    object_bytes: int
    # Format 2 only (absent from format 1 JSON):
    inventory_part: str | None = None
    mode: str | None = None  # "full" | "incremental"
    mode_reason: str | None = None
    base_backup_id: str | None = None  # the set whose inventory was diffed (None: a full)
    since_full: int | None = None  # 0 for a full, else the base's + 1
    total_objects: int | None = None  # the bucket at this backup (inventory lines)
    total_bytes: int | None = None
    diff: dict[str, int] | None = None  # new/changed/unchanged/deleted (+ _bytes)
    referenced_parts: list[ReferencedPart] | None = None
    # Format 3 only, on a sharded bucket (absent from the JSON otherwise): every shard in key
    # order; ``part_name`` is then the first shard's part.
    shards: list[BucketShard] | None = None

    def part_names(self) -> list[str]:
        """The bucket parts holding this set's objects of the bucket, in key order."""
        return [s.part_name for s in self.shards] if self.shards else [self.part_name]


@dataclass(frozen=True, slots=True)
class InventoryEntry:
    bucket: str
    key: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ObjectAnomaly:
    """An object the backup did not archive exactly as listed.

    ``changed``: its length or ETag differed from the listing (archived as read, padded or cut
    to the GET's length); ``vanished``: deleted before it was read (not archived);
    ``unreadable``: skipped for a reason of its own, given in ``detail`` (not archived);
    ``inexact``: archived, but a header value was not UTF-8 (``detail`` names it).
    ``detail`` is absent from the JSON when None (manifests of older writers have none).
    """

    bucket: str
    key: str
    kind: AnomalyKind
    declared_size: int
    actual_size: int | None
    detail: str | None = None


@dataclass
class Manifest:
    backup_id: str
    installation: str
    started_at: str
    finished_at: str
    versions: dict[str, str]
    parts: list[PartRecord]
    buckets: list[BucketSummary] = field(default_factory=list)
    inventory: list[InventoryEntry] = field(default_factory=list)
    anomalies: list[ObjectAnomaly] = field(default_factory=list)
    format: str = MANIFEST_FORMAT
    # "schema.table" -> rows in the dump (counted in pg_dump's snapshot); checked by verification.
    # Optional: omitted when empty, ignored by readers that predate it.
    table_rows: dict[str, int] = field(default_factory=dict)

    def bucket(self, name: str) -> BucketSummary | None:
        return next((b for b in self.buckets if b.bucket == name), None)

    def part(self, name: str) -> PartRecord:
        for record in self.parts:
            if record.name == name:
                return record
        raise ManifestError(f"the manifest of backup {self.backup_id!r} lists no part {name!r}")

    def to_json(self) -> str:
        document = asdict(self)
        if not self.table_rows:
            del document["table_rows"]
        for anomaly in document["anomalies"]:
            if anomaly["detail"] is None:
                del anomaly["detail"]
        for bucket in document["buckets"]:
            if bucket["inventory_part"] is None:  # format 1: only the four original keys
                for key in _V2_BUCKET_KEYS:
                    del bucket[key]
            for ref in bucket.get("referenced_parts") or ():
                if ref["index_part_name"] is None:  # no index: the keys of sets written before indexes
                    for key in _REF_INDEX_KEYS:
                        del ref[key]
            if bucket["shards"] is None:
                del bucket["shards"]
        return json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False) + "\n"

    def to_bytes(self) -> bytes:
        return self.to_json().encode("utf-8")

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ManifestError(f"the manifest is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ManifestError("the manifest is not a JSON object")
        if raw.get("format") not in MANIFEST_FORMATS:
            raise ManifestError(
                f"manifest format {raw.get('format')!r} is not one of {', '.join(map(repr, MANIFEST_FORMATS))}"
            )
        try:
            parts = [_build(PartRecord, p, "parts") for p in _list(raw, "parts")]
            manifest = cls(
                backup_id=_str(raw, "backup_id"),
                installation=_str(raw, "installation"),
                started_at=_str(raw, "started_at"),
                finished_at=_str(raw, "finished_at"),
                versions={str(k): str(v) for k, v in _dict(raw, "versions").items()},
                parts=parts,
                buckets=[_bucket(b) for b in _list(raw, "buckets")],
                inventory=[_build(InventoryEntry, e, "inventory") for e in _list(raw, "inventory")],
                anomalies=[_build(ObjectAnomaly, a, "anomalies") for a in _list(raw, "anomalies")],
                table_rows={str(k): int(v) for k, v in _dict(raw, "table_rows").items()},
                format=raw["format"],
            )
        except (TypeError, KeyError, ValueError) as exc:
            raise ManifestError(f"the manifest does not follow the schema: {exc}") from None
        manifest.validate()
        return manifest

    def validate(self) -> None:
        names = [p.name for p in self.parts]
        if len(set(names)) != len(names):
            raise ManifestError("the manifest lists a part name twice")
        if MANIFEST_PART_NAME in names:
            raise ManifestError("the manifest cannot list itself as a part")
        for p in self.parts:
            if p.kind not in PART_KINDS:
                raise ManifestError(f"part {p.name!r}: kind must be one of {', '.join(PART_KINDS)}")
            if p.kind == "inventory" and self.format != MANIFEST_FORMAT_V2:
                raise ManifestError(f"part {p.name!r}: an inventory part needs format {MANIFEST_FORMAT_V2!r}")
            for label, value in (
                ("ciphertext_sha256", p.ciphertext_sha256),
                ("plaintext_sha256", p.plaintext_sha256),
            ):
                if not _SHA256.match(value):
                    raise ManifestError(f"part {p.name!r}: {label} is not 64 lowercase hex digits")
            if p.ciphertext_md5 is not None and not _MD5.match(p.ciphertext_md5):
                raise ManifestError(f"part {p.name!r}: ciphertext_md5 is not 32 lowercase hex digits")
            if p.ciphertext_size < 0 or p.plaintext_size < 0:
                raise ManifestError(f"part {p.name!r}: negative size")
        for b in self.buckets:
            if b.inventory_part is None:
                continue
            if self.format != MANIFEST_FORMAT_V2:
                raise ManifestError(
                    f"bucket {b.bucket!r}: inventory_part needs format {MANIFEST_FORMAT_V2!r}"
                )
            if b.inventory_part not in names or b.part_name not in names:
                raise ManifestError(
                    f"bucket {b.bucket!r}: inventory_part and part_name must be parts of the set"
                )
            if b.mode not in ("full", "incremental"):
                raise ManifestError(f"bucket {b.bucket!r}: mode must be 'full' or 'incremental'")
            for ref in b.referenced_parts or ():
                if not (_SHA256.match(ref.ciphertext_sha256) and _SHA256.match(ref.plaintext_sha256)):
                    raise ManifestError(
                        f"bucket {b.bucket!r}: referenced part hashes must be 64 lowercase hex"
                    )
                if ref.backup_id == self.backup_id:
                    raise ManifestError(f"bucket {b.bucket!r}: referenced_parts lists a part of this set")
                if ref.index_part_name is not None and not (
                    _SHA256.match(ref.index_ciphertext_sha256 or "")
                    and _SHA256.match(ref.index_plaintext_sha256 or "")
                    and isinstance(ref.index_ciphertext_size, int)
                    and isinstance(ref.index_plaintext_size, int)
                ):
                    raise ManifestError(
                        f"bucket {b.bucket!r}: a referenced index needs its sizes and 64-hex hashes"
                    )
        for b in self.buckets:
            if b.shards is not None:
                self._validate_shards(b, names)
        for entry in self.inventory:
            if not _SHA256.match(entry.sha256) or entry.size < 0:
                raise ManifestError(f"inventory entry {entry.bucket}/{entry.key!r}: bad size or sha256")
        for anomaly in self.anomalies:
            if anomaly.kind not in ANOMALY_KINDS:
                raise ManifestError(
                    f"anomaly {anomaly.bucket}/{anomaly.key!r}: kind must be one of {', '.join(ANOMALY_KINDS)}"
                )

    def _validate_shards(self, b: BucketSummary, names: list[str]) -> None:
        """Shards tile the key space without gap or overlap, so no object can be in two or none."""
        shards = b.shards or []
        where = f"bucket {b.bucket!r}"
        if self.format != MANIFEST_FORMAT_V3:
            raise ManifestError(f"{where}: shards need format {MANIFEST_FORMAT_V3!r}")
        if b.inventory_part is not None:
            raise ManifestError(f"{where}: a sharded bucket has no inventory part (not supported)")
        if not shards or shards[0].start_after is not None or shards[-1].end is not None:
            raise ManifestError(f"{where}: shards must start at the first key and end after the last")
        if b.part_name != shards[0].part_name:
            raise ManifestError(f"{where}: part_name must be the first shard's part")
        for before, after in itertools.pairwise(shards):
            if before.end is None or after.start_after != before.end:
                raise ManifestError(f"{where}: each shard must start after the previous shard's end")
        for s in shards:
            if s.start_after is not None and s.end is not None and _utf8(s.start_after) >= _utf8(s.end):
                raise ManifestError(f"{where}: shard {s.part_name!r} has an empty or inverted key range")
            if s.part_name not in names or (s.index_part is not None and s.index_part not in names):
                raise ManifestError(
                    f"{where}: shard part {s.part_name!r} (or its index) is not a part of the set"
                )
        if sum(s.object_count for s in shards) != b.object_count:
            raise ManifestError(f"{where}: the shards' object counts do not add up to the bucket's")


def _utf8(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


_V2_BUCKET_KEYS = (
    "inventory_part",
    "mode",
    "mode_reason",
    "base_backup_id",
    "since_full",
    "total_objects",
    "total_bytes",
    "diff",
    "referenced_parts",
)


_REF_INDEX_KEYS = (
    "index_part_name",
    "index_ciphertext_size",
    "index_ciphertext_sha256",
    "index_plaintext_size",
    "index_plaintext_sha256",
)


def _bucket(value: Any) -> BucketSummary:
    if isinstance(value, dict) and value.get("shards") is not None:
        value = {**value, "shards": [_build(BucketShard, s, "shards") for s in _list(value, "shards")]}
    if isinstance(value, dict) and value.get("referenced_parts") is not None:
        value = {
            **value,
            "referenced_parts": [
                _build(ReferencedPart, r, "referenced_parts") for r in value["referenced_parts"]
            ],
        }
    built: BucketSummary = _build(BucketSummary, value, "buckets")
    return built


def _list(raw: Mapping[str, Any], key: str) -> list[Any]:
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise ManifestError(f"manifest field {key!r} must be a list")
    return value


def _dict(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ManifestError(f"manifest field {key!r} must be an object")
    return value


def _str(raw: Mapping[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise ManifestError(f"manifest field {key!r} must be a non-empty string")
    return value


def _build(cls: Any, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise ManifestError(f"every entry of {where!r} must be an object")
    return cls(**value)


@dataclass(frozen=True, slots=True)
class StoredPart:
    """What the destination says about one stored part (hashes it cannot tell are ``None``)."""

    name: str
    size: int
    sha256: str | None = None
    md5: str | None = None


@dataclass(frozen=True)
class SetCompleteness:
    complete: bool
    missing: list[str]
    unexpected: list[str]
    mismatched: dict[str, str]

    def describe(self) -> str:
        if self.complete:
            return "complete"
        problems = []
        if self.missing:
            problems.append("missing parts: " + ", ".join(self.missing))
        if self.unexpected:
            problems.append("parts not in the manifest: " + ", ".join(self.unexpected))
        for name, reason in self.mismatched.items():
            problems.append(f"part {name}: {reason}")
        return "incomplete: " + "; ".join(problems)


def check_set_complete(manifest: Manifest | None, stored_parts: Iterable[StoredPart]) -> SetCompleteness:
    """Decide whether a backup set is complete: a manifest exists and every part it lists is stored
    with the recorded ciphertext size and (where the destination reports one) hash; no other part is
    stored. The manifest part itself is not listed in the manifest and is ignored here.

    A set without a manifest is never complete (all stored parts are reported as unexpected).
    """
    stored = {p.name: p for p in stored_parts if p.name != MANIFEST_PART_NAME}
    if manifest is None:
        return SetCompleteness(False, [MANIFEST_PART_NAME], sorted(stored), {})
    expected = {p.name: p for p in manifest.parts}
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    mismatched: dict[str, str] = {}
    for name in sorted(set(expected) & set(stored)):
        record, found = expected[name], stored[name]
        if found.size != record.ciphertext_size:
            mismatched[name] = f"size {found.size} != manifest {record.ciphertext_size}"
        elif found.sha256 is not None and found.sha256.lower() != record.ciphertext_sha256:
            mismatched[name] = "SHA-256 differs from the manifest"
        elif (
            found.md5 is not None
            and record.ciphertext_md5 is not None
            and found.md5.lower() != record.ciphertext_md5
        ):
            mismatched[name] = "MD5 differs from the manifest"
    return SetCompleteness(not (missing or unexpected or mismatched), missing, unexpected, mismatched)
