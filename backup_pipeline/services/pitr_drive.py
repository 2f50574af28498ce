"""PITR on Google Drive (opt-in): base backups and WAL bundles copied from the pgBackRest repository.

WAL goes continuously to the S3 repository (docs/architecture/PITR.md §3); Drive receives, per
copy run, (a) each base backup not on Drive yet and (b) one *bundle* of the WAL segments archived
since the previous bundle — one Drive file per bundle, never one per segment.

Each copied *unit* (``base-<label>`` or ``wal-<first>-<last>``) is two Drive files:

* the data part: the repository files as a pax tar (stored gzip members: pgBackRest's files are
  already compressed and encrypted) inside the product's container (``archive/stream_crypto.py``:
  AES-256-GCM, sealed to the org key and every recovery key) — streamed from S3 to Drive, never
  whole in memory, nothing on disk;
* the unit manifest (JSON, same container), written LAST, only after the data part was uploaded
  and verified (Drive's size + MD5 + SHA-256 against what was streamed). It names the data file,
  its size and SHA-256, and the bundle index: first and last segment (and every segment with its
  arrival time), or the base backup's label, stop time and WAL range.

What is encrypted by what: the repository files are pgBackRest's ciphertext (AES-256-CBC under the
repository passphrase); the container around them is the product's (org key + recovery keys); the
base part also carries the PITR key store (the passphrase sealed to org + recovery keys), so Drive
plus the recovery key alone restore (``pitr_drive_restore.py``).

Write ordering (MUST): strays of interrupted runs removed → base units, oldest first → one WAL
bundle: data part uploaded and verified → manifest. A unit without a manifest is not complete: the
window, the next bundle's start and restores read manifests only, so an interrupted run leaves
nothing that claims to be complete and the next run bundles from the last complete bundle's last
segment on (no gap, no duplicate). Drive file properties carry the index too (no keys needed to
compute the window for the UI); ``app`` is ``backup_pipeline_pitr``, so backup-set listings,
retention and the ledger never see these files.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from minio import Minio

from backup_pipeline.archive.keys import OrgKeyring, RecoveryIdentity, RecoveryPublicKey
from backup_pipeline.archive.stream_crypto import decrypt_stream, encrypt_stream
from backup_pipeline.archive.streams import HashingCounter
from backup_pipeline.archive.tar_parts import ArchivedObjectRecord, SourceObject, write_bucket_archive
from backup_pipeline.destinations.base import Destination, StoredFile
from backup_pipeline.services.pitr_engine import EngineConfig, RepoInfo, segment_name, segment_number
from backup_pipeline.services.pitr_keys import keystore_key

PITR_APP = "backup_pipeline_pitr"
MANIFEST_FORMAT = "backup_pipeline.pitr-drive/1"
PROP_APP = "app"
PROP_INSTALLATION = "installationId"
PROP_STANZA = "stanza"
PROP_UNIT = "unit"
PROP_ROLE = "role"  # data | manifest
PROP_KIND = "kind"  # base | wal
PROP_FIRST = "first"
PROP_LAST = "last"
PROP_LAST_AT = "lastAt"
PROP_LABEL = "label"
PROP_STOP = "stoppedAt"
PROP_WAL_START = "walStart"
PROP_WAL_STOP = "walStop"
PROP_GAPS = "gaps"
ROLE_DATA = "data"
ROLE_MANIFEST = "manifest"
KIND_BASE = "base"
KIND_WAL = "wal"
#: Inside a data part: the repository's files under ``repo/`` (their path relative to the
#: repository path), the key store under its own name.
REPO_PREFIX = "repo/"
KEYSTORE_ENTRY = "keystore.bpenc"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


class PitrDriveError(RuntimeError):
    """The Drive copy or the Drive restore cannot go on; the message says what and where."""


def is_segment(name: str) -> bool:
    return len(name) == 24 and all(c in "0123456789ABCDEF" for c in name)


def crypto_backup_id(stanza: str) -> str:
    return f"pitr-{stanza}"


def file_name(installation_id: str, stanza: str, unit: str, role: str) -> str:
    suffix = ".manifest.bpenc" if role == ROLE_MANIFEST else ".bpenc"
    return f"{installation_id}-pitr-{stanza}.{unit}{suffix}"


def base_unit(label: str) -> str:
    return f"base-{label}"


def wal_unit(first: str, last: str) -> str:
    return f"wal-{first}-{last}"


def _iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds") if value else "none"


# --- the index on Drive ---------------------------------------------------------------------


@dataclass(frozen=True)
class DriveUnit:
    """A complete unit on Drive (its manifest exists), from the manifest file's properties."""

    unit: str
    kind: str
    manifest: StoredFile
    properties: dict[str, str]

    @property
    def first(self) -> str:
        return self.properties.get(PROP_FIRST, "")

    @property
    def last(self) -> str:
        return self.properties.get(PROP_LAST, "")

    @property
    def last_at(self) -> datetime | None:
        value = self.properties.get(PROP_LAST_AT)
        return datetime.fromisoformat(value) if value else None

    @property
    def stopped_at(self) -> datetime | None:
        value = self.properties.get(PROP_STOP)
        return datetime.fromisoformat(value) if value else None


@dataclass
class DriveIndex:
    """What Drive holds for one stanza: complete units and data parts without a manifest (strays)."""

    bases: list[DriveUnit] = field(default_factory=list)  # oldest first
    bundles: list[DriveUnit] = field(default_factory=list)  # by first segment
    data: dict[str, list[StoredFile]] = field(default_factory=dict)  # unit → its data files
    strays: list[StoredFile] = field(default_factory=list)

    @property
    def last_segment(self) -> str | None:
        return max((b.last for b in self.bundles), default=None)

    def data_file(self, unit: DriveUnit, name: str) -> StoredFile:
        for stored in self.data.get(unit.unit, []):
            if stored.name == name:
                return stored
        raise PitrDriveError(f"the data part {name} of {unit.unit} is missing on Drive")


def stanza_properties(installation_id: str, stanza: str) -> dict[str, str]:
    return {PROP_APP: PITR_APP, PROP_INSTALLATION: installation_id, PROP_STANZA: stanza}


def read_index(destination: Destination, installation_id: str, stanza: str) -> DriveIndex:
    manifests: dict[str, StoredFile] = {}
    data: dict[str, list[StoredFile]] = {}
    for stored in destination.list(stanza_properties(installation_id, stanza)):
        unit = stored.properties.get(PROP_UNIT, "")
        if stored.properties.get(PROP_ROLE) == ROLE_MANIFEST:
            manifests[unit] = stored
        else:
            data.setdefault(unit, []).append(stored)
    index = DriveIndex(data=data)
    for unit, stored in manifests.items():
        item = DriveUnit(unit, stored.properties.get(PROP_KIND, ""), stored, dict(stored.properties))
        (index.bases if item.kind == KIND_BASE else index.bundles).append(item)
    index.bases.sort(key=lambda u: u.properties.get(PROP_LABEL, ""))
    index.bundles.sort(key=lambda u: u.first)
    index.strays = [f for unit, files in data.items() if unit not in manifests for f in files]
    return index


# --- gaps and the window --------------------------------------------------------------------


def chain_gaps(names: Sequence[str]) -> list[str]:
    """Segments missing between consecutive names of the same timeline (sorted input)."""
    missing: list[str] = []
    for before, after in itertools.pairwise(names):
        tl_a, n_a = segment_number(before)
        tl_b, n_b = segment_number(after)
        if tl_a == tl_b:
            missing += [segment_name(tl_a, n) for n in range(n_a + 1, n_b)]
    return missing


@dataclass(frozen=True)
class Chain:
    """The bundles replay reads from one base backup on, up to the first gap."""

    base: DriveUnit
    bundles: tuple[DriveUnit, ...]
    reach: datetime | None  # arrival of the last segment before the first gap; None: unusable
    gap: str | None  # where the chain breaks ("segment X missing" / "N inside wal-…")


def _succ(name: str) -> tuple[int, int]:
    timeline, number = segment_number(name)
    return timeline, number + 1


def base_chain(index: DriveIndex, base: DriveUnit) -> Chain:
    """From the bundle holding the base's first WAL segment on, while bundles follow each other
    (next first = previous last + 1 on the same timeline) and hold no gap inside."""
    start = base.properties.get(PROP_WAL_START, "")
    stop = base.properties.get(PROP_WAL_STOP, "")
    chain: list[DriveUnit] = []
    gap: str | None = None
    for bundle in index.bundles:
        if bundle.last < start:
            continue
        if not chain:
            if bundle.first > start:
                gap = f"segment {start} (the base backup's first) is in no bundle"
                break
        else:
            previous = chain[-1].last
            tl_b, n_b = segment_number(bundle.first)
            if (tl_b, n_b) != _succ(previous) and tl_b == segment_number(previous)[0]:
                gap = f"segments {segment_name(*_succ(previous))} to {segment_name(tl_b, n_b - 1)} missing"
                break
        inner = int(bundle.properties.get(PROP_GAPS, "0") or 0)
        if inner and chain:
            gap = f"{inner} segment(s) missing inside {bundle.unit}"
            break
        chain.append(bundle)
        if inner:  # the gap lies before or after the base's start inside the first bundle: be safe
            gap = f"{inner} segment(s) missing inside {bundle.unit}"
            break
    covered = bool(chain) and chain[-1].last >= stop
    reach = chain[-1].last_at if covered else None
    return Chain(base, tuple(chain), reach, gap)


@dataclass(frozen=True)
class DriveWindow:
    """What Drive alone can restore: from the oldest base with its WAL to the furthest gap-free reach."""

    earliest: datetime | None
    latest: datetime | None
    base_backups: int
    bundles: int
    last_segment: str | None
    gaps: tuple[str, ...]

    def metadata(self, prefix: str = "drive_") -> dict[str, Any]:
        return {
            f"{prefix}earliest_restorable": _iso(self.earliest),
            f"{prefix}latest_restorable": _iso(self.latest),
            f"{prefix}base_backups": self.base_backups,
            f"{prefix}wal_bundles": self.bundles,
            f"{prefix}wal_last_segment": self.last_segment or "none",
            f"{prefix}wal_gaps": len(self.gaps),
            f"{prefix}wal_gap_examples": "; ".join(self.gaps[:3]) or "none",
        }


def usable_chains(index: DriveIndex) -> list[Chain]:
    """A chain per base backup on Drive whose WAL reaches past its end, oldest base first."""
    return [c for c in (base_chain(index, b) for b in index.bases) if c.reach is not None]


def drive_window(index: DriveIndex) -> DriveWindow:
    """From the manifests' properties only (no keys needed)."""
    chains = usable_chains(index)
    gaps = sorted({c.gap for c in (base_chain(index, b) for b in index.bases) if c.gap})
    earliest = min((c.base.stopped_at for c in chains if c.base.stopped_at), default=None)
    return DriveWindow(
        earliest=earliest + timedelta(seconds=1) if earliest else None,
        latest=max((c.reach for c in chains if c.reach), default=None),
        base_backups=len(index.bases),
        bundles=len(index.bundles),
        last_segment=index.last_segment,
        gaps=tuple(gaps),
    )


# --- reading the S3 repository -------------------------------------------------------------


@dataclass(frozen=True)
class RepoFile:
    key: str  # full object key in the bucket
    rel: str  # path relative to the repository path
    size: int
    modified: datetime | None


def _repo_root(cfg: EngineConfig) -> str:
    return cfg.repo.path.strip("/") + "/"


def list_repo(client: Minio, cfg: EngineConfig, sub: str) -> list[RepoFile]:
    root = _repo_root(cfg)
    out = []
    for obj in client.list_objects(cfg.repo.bucket, prefix=root + sub, recursive=True):
        key = obj.object_name or ""
        if key.endswith("/"):
            continue
        out.append(RepoFile(key, key[len(root) :], int(obj.size or 0), obj.last_modified))
    return out


def _stream_object(client: Minio, bucket: str, key: str) -> Iterator[bytes]:
    response = client.get_object(bucket, key)
    try:
        yield from response.stream(1 << 20)
    finally:
        response.close()
        response.release_conn()


def _source(client: Minio, bucket: str, item: RepoFile, entry: str | None = None) -> SourceObject:
    return SourceObject(
        key=entry or REPO_PREFIX + item.rel,
        size=item.size,
        last_modified=item.modified,
        open=lambda: _stream_object(client, bucket, item.key),
    )


# --- writing units --------------------------------------------------------------------------


@dataclass
class CopyKeys:
    org_keyring: OrgKeyring
    recovery_keys: Sequence[RecoveryPublicKey]


def _seal(chunks: Iterable[bytes], stanza: str, part: str, keys: CopyKeys) -> Iterator[bytes]:
    return encrypt_stream(
        chunks,
        backup_id=crypto_backup_id(stanza),
        part_name=part,
        org_keyring=keys.org_keyring,
        recovery_public_key=list(keys.recovery_keys),
    )


@dataclass
class UnitResult:
    unit: str
    files: int
    size: int


def put_unit(
    destination: Destination,
    *,
    installation_id: str,
    stanza: str,
    unit: str,
    kind: str,
    sources: Sequence[SourceObject],
    keys: CopyKeys,
    index_props: Mapping[str, str],
    manifest_extra: Mapping[str, Any],
    before_manifest: Callable[[], None] = lambda: None,
) -> UnitResult:
    """Data part streamed (S3 → tar → container → Drive), verified, then the manifest LAST."""
    records: list[ArchivedObjectRecord] = []
    plain = write_bucket_archive(sources, compress_level=0, inventory=records, workers=1)
    counter = HashingCounter()
    base_props = {**stanza_properties(installation_id, stanza), PROP_UNIT: unit, PROP_KIND: kind}
    data_name = file_name(installation_id, stanza, unit, ROLE_DATA)
    stored = destination.put(
        data_name,
        counter.wrap(_seal(plain, stanza, unit, keys)),
        {**base_props, PROP_ROLE: ROLE_DATA},
    )
    bad = [r.key for r in records if r.status != "ok"]
    if bad:
        destination.delete(stored.id)
        raise PitrDriveError(
            f"{unit}: repository files changed or vanished while copied ({', '.join(bad[:3])}): "
            "expired meanwhile? The next run copies again"
        )
    if stored.size != counter.size or (stored.sha256 and stored.sha256 != counter.sha256_hex):
        raise PitrDriveError(f"{unit}: the data part on Drive does not match what was streamed")
    before_manifest()
    manifest = {
        "format": MANIFEST_FORMAT,
        "stanza": stanza,
        "unit": unit,
        "kind": kind,
        "data_file": data_name,
        "data_size": counter.size,
        "data_sha256": counter.sha256_hex,
        "files": [[r.key, r.size, r.sha256] for r in records],
        "written_at": _iso(datetime.now(UTC)),
        **manifest_extra,
    }
    body = json.dumps(manifest, sort_keys=True).encode("utf-8")
    destination.put(
        file_name(installation_id, stanza, unit, ROLE_MANIFEST),
        _seal([body], stanza, unit + ".manifest", keys),
        {**base_props, **index_props, PROP_ROLE: ROLE_MANIFEST},
    )
    return UnitResult(unit, len(records), counter.size)


def copy_base(
    destination: Destination,
    client: Minio,
    cfg: EngineConfig,
    info: RepoInfo,
    label: str,
    *,
    installation_id: str,
    keys: CopyKeys,
) -> UnitResult:
    """One base backup: its folder, the two info files (with .copy), and the PITR key store."""
    backup = next(b for b in info.usable_backups if b.label == label)
    stanza = cfg.stanza
    files = list_repo(client, cfg, f"backup/{stanza}/{label}/")
    infos = [
        f
        for f in list_repo(client, cfg, f"backup/{stanza}/backup.info")
        + list_repo(client, cfg, f"archive/{stanza}/archive.info")
        if "/" not in f.rel.rsplit("/", 1)[-1]
    ]
    if not files:
        raise PitrDriveError(f"base backup {label} has no files in the repository (expired meanwhile?)")
    keystore = client.stat_object(cfg.repo.bucket, keystore_key(stanza))
    sources = [_source(client, cfg.repo.bucket, f) for f in [*infos, *files]]
    sources.append(
        _source(
            client,
            cfg.repo.bucket,
            RepoFile(keystore_key(stanza), "", int(keystore.size or 0), keystore.last_modified),
            KEYSTORE_ENTRY,
        )
    )
    unit = base_unit(label)
    props = {
        PROP_LABEL: label,
        PROP_STOP: _iso(backup.stopped_at),
        PROP_WAL_START: backup.wal_start,
        PROP_WAL_STOP: backup.wal_stop,
    }
    extra = {
        "label": label,
        "type": backup.type,
        "references": list(backup.references),
        "started_at": _iso(backup.started_at),
        "stopped_at": _iso(backup.stopped_at),
        "wal_start": backup.wal_start,
        "wal_stop": backup.wal_stop,
    }
    return put_unit(
        destination,
        installation_id=installation_id,
        stanza=stanza,
        unit=unit,
        kind=KIND_BASE,
        sources=sources,
        keys=keys,
        index_props=props,
        manifest_extra=extra,
    )


def archive_files(client: Minio, cfg: EngineConfig) -> list[tuple[str, RepoFile]]:
    """(24-hex segment name or "" for history files, file) of the WAL archive, info files excluded."""
    out = []
    for item in list_repo(client, cfg, f"archive/{cfg.stanza}/"):
        leaf = item.rel.rsplit("/", 1)[-1]
        if leaf.startswith("archive.info"):
            continue
        if leaf.endswith(".history"):
            out.append(("", item))
        elif is_segment(leaf[:24]):
            out.append((leaf[:24], item))
    return out


def plan_bundle(
    files: Sequence[tuple[str, RepoFile]], after: str | None
) -> tuple[list[RepoFile], list[tuple[str, str]], list[str]]:
    """What the next bundle holds: every segment after ``after`` (and ``.backup`` files of those
    segments; history files every time, they are tiny); its segments with arrival times; gaps."""
    segments: dict[str, RepoFile] = {}
    for name, item in files:
        leaf = item.rel.rsplit("/", 1)[-1]
        if name and len(leaf) > 24 and leaf[24] == "-" and (after is None or name > after):
            segments.setdefault(name, item)
    if not segments:
        return [], [], []
    names = sorted(segments)
    last = names[-1]
    chosen = [segments[n] for n in names]
    for name, item in files:
        leaf = item.rel.rsplit("/", 1)[-1]
        if not name or (leaf.endswith(".backup") and (after is None or name > after) and name <= last):
            chosen.append(item)
    timed = [(n, _iso(segments[n].modified)) for n in names]
    gaps = chain_gaps(([after] if after else []) + names)
    return chosen, timed, gaps


def copy_bundle(
    destination: Destination,
    client: Minio,
    cfg: EngineConfig,
    *,
    installation_id: str,
    keys: CopyKeys,
    after: str | None,
    before_manifest: Callable[[], None] = lambda: None,
) -> UnitResult | None:
    chosen, timed, gaps = plan_bundle(archive_files(client, cfg), after)
    if not timed:
        return None
    first, last = timed[0][0], timed[-1][0]
    last_at = max(t for _n, t in timed)
    props = {PROP_FIRST: first, PROP_LAST: last, PROP_LAST_AT: last_at, PROP_GAPS: str(len(gaps))}
    extra = {
        "first": first,
        "last": last,
        "after": after,
        "segments": timed,
        "gaps": gaps,
        "last_archived_at": last_at,
    }
    return put_unit(
        destination,
        installation_id=installation_id,
        stanza=cfg.stanza,
        unit=wal_unit(first, last),
        kind=KIND_WAL,
        sources=[_source(client, cfg.repo.bucket, f) for f in chosen],
        keys=keys,
        index_props=props,
        manifest_extra=extra,
        before_manifest=before_manifest,
    )


def plan_expiry(index: DriveIndex, info: RepoInfo) -> list[DriveUnit]:
    """Units Drive no longer needs, following pgBackRest's own retention (``expire``).

    Base units older than the oldest base backup the repository still keeps — only when that one
    is complete on Drive, so Drive never drops its last restorable base on the word of an empty or
    re-created repository — then the bundles that end before the oldest kept base's first segment.
    """
    usable = info.usable_backups
    if not usable:
        return []
    oldest = usable[0].label
    kept_on_drive = [b for b in index.bases if b.properties.get(PROP_LABEL) == oldest]
    if not kept_on_drive:
        return []
    start = kept_on_drive[0].properties.get(PROP_WAL_START, "")
    old_bases = [b for b in index.bases if b.properties.get(PROP_LABEL, "") < oldest]
    old_bundles = [b for b in index.bundles if start and b.last < start]
    return [*old_bases, *old_bundles]


def expire_units(destination: Destination, index: DriveIndex, units: Sequence[DriveUnit]) -> int:
    """Manifest first (the unit stops counting at once), then its data part."""
    for unit in units:
        destination.delete(unit.manifest.id)
        for stored in index.data.get(unit.unit, []):
            destination.delete(stored.id)
    return len(units)


@dataclass
class CopyReport:
    bases: list[UnitResult]
    bundle: UnitResult | None
    strays_removed: int
    window: DriveWindow
    expired: int = 0

    def metadata(self) -> dict[str, Any]:
        return {
            **self.window.metadata(),
            "drive_base_backups_copied": len(self.bases),
            "drive_bundle": self.bundle.unit if self.bundle else "none (no new WAL)",
            "drive_bundle_bytes": self.bundle.size if self.bundle else 0,
            "drive_bundle_files": self.bundle.files if self.bundle else 0,
            "drive_bytes_written": sum(u.size for u in self.bases) + (self.bundle.size if self.bundle else 0),
            "drive_strays_removed": self.strays_removed,
            "drive_units_expired": self.expired,
        }


def copy_to_drive(
    destination: Destination,
    client: Minio,
    cfg: EngineConfig,
    info: RepoInfo,
    *,
    installation_id: str,
    keys: CopyKeys,
    log: Callable[[str], None] = lambda _m: None,
    before_manifest: Callable[[], None] = lambda: None,
) -> CopyReport:
    """One copy run: strays removed → new base backups (oldest first) → one WAL bundle → units
    older than what the repository keeps expired (:func:`plan_expiry`)."""
    index = read_index(destination, installation_id, cfg.stanza)
    strays = len(index.strays)
    for stray in index.strays:
        log(f"removing {stray.name}: data part of an interrupted run (no manifest)")
        destination.delete(stray.id)
    have = {b.properties.get(PROP_LABEL) for b in index.bases}
    bases = []
    for backup in info.usable_backups:
        if backup.label not in have:
            log(f"copying base backup {backup.label} to Drive")
            bases.append(
                copy_base(
                    destination, client, cfg, info, backup.label, installation_id=installation_id, keys=keys
                )
            )
    after = index.last_segment
    bundle = copy_bundle(
        destination,
        client,
        cfg,
        installation_id=installation_id,
        keys=keys,
        after=after,
        before_manifest=before_manifest,
    )
    if bundle is not None:
        log(f"WAL bundle {bundle.unit}: {bundle.files} files, {bundle.size} bytes")
    index = read_index(destination, installation_id, cfg.stanza)
    expired = plan_expiry(index, info)
    for unit in expired:
        log(f"expiring {unit.unit} on Drive: older than the oldest base backup the repository keeps")
    if expired:
        expire_units(destination, index, expired)
        index = read_index(destination, installation_id, cfg.stanza)
    return CopyReport(bases, bundle, strays, drive_window(index), len(expired))


# --- reading units back ---------------------------------------------------------------------


def open_part(
    destination: Destination,
    stored: StoredFile,
    stanza: str,
    part: str,
    *,
    keyring: OrgKeyring | None,
    recovery: RecoveryIdentity | None,
) -> Iterator[bytes]:
    """A part's plaintext, authenticated chunk by chunk (the header binds stanza and unit)."""
    return decrypt_stream(
        destination.get(stored.id),
        expected_backup_id=crypto_backup_id(stanza),
        expected_part_name=part,
        org_keyring=keyring,
        recovery_identity=recovery,
    )


def read_manifest(
    destination: Destination,
    unit: DriveUnit,
    stanza: str,
    *,
    keyring: OrgKeyring | None,
    recovery: RecoveryIdentity | None,
) -> dict[str, Any]:
    body = bytearray()
    for chunk in open_part(
        destination, unit.manifest, stanza, unit.unit + ".manifest", keyring=keyring, recovery=recovery
    ):
        body += chunk
        if len(body) > MAX_MANIFEST_BYTES:
            raise PitrDriveError(f"the manifest of {unit.unit} is larger than a manifest can be")
    manifest = json.loads(bytes(body))
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("unit") != unit.unit:
        raise PitrDriveError(f"the manifest of {unit.unit} is not a {MANIFEST_FORMAT} manifest of that unit")
    return dict(manifest)
