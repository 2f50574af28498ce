"""Backup sets: listing, resolving (manifest authenticated, parts present), opening and verifying parts."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backup_pipeline.archive.errors import ArchiveError, ArchiveKeyError
from backup_pipeline.archive.keys import OrgKeyring, RecoveryIdentity
from backup_pipeline.archive.manifest import MANIFEST_FORMATS, Manifest
from backup_pipeline.archive.stream_crypto import decrypt_stream
from backup_pipeline.destinations.base import Destination, StoredFile
from backup_pipeline.services.backup_parts import (
    APP_NAME,
    BUCKET_PART_PREFIX,
    PART_DATABASE,
    PART_MANIFEST,
    PROP_APP,
    PROP_BACKUP_ID,
    PROP_INSTALLATION,
    PROP_PART_NAME,
    SET_KIND_REGULAR,
    SET_KIND_SAFETY,
    TRIGGER_PRE_RESTORE,
    bucket_of_part,
    bucket_part_name,
    set_kind_of,
)
from backup_pipeline.services.restore.common import LATEST, IncomingObject, RestoreOptions, RestoreRefused
from backup_pipeline.services.restore.download import download_backup


@dataclass(frozen=True)
class RestoreKeys:
    """What can open a part: the org keyring (normal operation) or the recovery key (disaster recovery)."""

    org_keyring: OrgKeyring | None = None
    recovery_identity: RecoveryIdentity | None = None

    def __post_init__(self) -> None:
        if self.org_keyring is None and self.recovery_identity is None:
            raise RestoreRefused("restore needs the org secret file or the recovery key file")


@dataclass(frozen=True)
class BackupSetInfo:
    """One backup set as found on the destination (or the ledger)."""

    backup_id: str
    installation_id: str
    complete: bool  # a manifest exists
    parts: tuple[str, ...]
    size: int
    created: str | None
    source: str  # "ledger" or "destination"
    kind: str = SET_KIND_REGULAR  # SET_KIND_SAFETY: a restore's pre-restore backup of the database

    @property
    def is_safety(self) -> bool:
        return self.kind == SET_KIND_SAFETY

    def as_dict(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "installation_id": self.installation_id,
            "kind": self.kind,
            "complete": self.complete,
            "parts": list(self.parts),
            "size": self.size,
            "created": self.created,
            "source": self.source,
        }


def list_backups(
    destination: Destination,
    *,
    installation_id: str | None = None,
    ledger_backup_ids: Sequence[str] | None = None,
) -> list[BackupSetInfo]:
    """Backup sets, newest first.

    With ``ledger_backup_ids`` (from Dagster's records) only those sets are listed; without
    (a fresh installation, the ledger lost) every set is found on the destination by its file
    properties alone. Either way completeness is judged from the destination: a set without
    a manifest is listed as incomplete and never chosen as ``latest``; a safety set (``kind``
    ``safety``, the database a restore replaced) is listed as such and never chosen as ``latest``.
    """
    props = {PROP_APP: APP_NAME}
    if installation_id:
        props[PROP_INSTALLATION] = installation_id
    grouped: dict[tuple[str, str], list[StoredFile]] = {}
    for stored in destination.list(props):
        backup_id = stored.properties.get(PROP_BACKUP_ID)
        if not backup_id:
            continue
        key = (stored.properties.get(PROP_INSTALLATION, ""), backup_id)
        grouped.setdefault(key, []).append(stored)
    wanted = set(ledger_backup_ids) if ledger_backup_ids is not None else None
    sets = []
    for (installation, backup_id), files in grouped.items():
        if wanted is not None and backup_id not in wanted:
            continue
        names = tuple(sorted(f.properties.get(PROP_PART_NAME, f.name) for f in files))
        created = min((f.created for f in files if f.created is not None), default=None)
        sets.append(
            BackupSetInfo(
                backup_id=backup_id,
                installation_id=installation,
                complete=PART_MANIFEST in names,
                parts=names,
                size=sum(f.size for f in files),
                created=created.isoformat() if created else None,
                source="ledger" if wanted is not None else "destination",
                kind=set_kind_of(f.properties for f in files),
            )
        )
    sets.sort(key=lambda s: s.backup_id, reverse=True)
    return sets


@dataclass(frozen=True)
class PartRef:
    """One part as the manifest describes it, with the destination file that holds it."""

    part_name: str
    file_id: str
    size: int
    sha256: str
    plaintext_size: int
    plaintext_sha256: str
    #: The set the part belongs to when it is not the resolved set's own (format 2: referenced parts).
    backup_id: str | None = None


def referenced_key(backup_id: str, part_name: str) -> str:
    """The name under which ``ResolvedBackup.parts`` holds a part of another set (format 2)."""
    return f"{backup_id}/{part_name}"


@dataclass
class ResolvedBackup:
    """A set whose manifest was authenticated and whose listed parts all exist on the destination."""

    backup_id: str
    installation_id: str
    manifest: dict[str, Any]
    parts: dict[str, PartRef]

    @property
    def buckets(self) -> list[str]:
        return sorted({bucket_of_part(name) for name in self.parts if name.startswith(BUCKET_PART_PREFIX)})

    def shards(self, bucket: str) -> list[dict[str, Any]]:
        """A sharded bucket's shards in key order (``part_name``, ``index_part``, ``start_after``,
        ``end``); an unsharded bucket as one shard covering every key."""
        found = self.manifest.get("shards", {}).get(bucket)
        if found:
            return [dict(s) for s in found]
        part = bucket_part_name(bucket)
        return [{"part_name": part, "index_part": None, "start_after": None, "end": None}]

    def bucket_parts(self, bucket: str) -> list[str]:
        """The set's own bucket parts holding ``bucket``'s objects, in key order."""
        return [s["part_name"] for s in self.shards(bucket)]

    def inventory(self, bucket: str) -> dict[str, IncomingObject]:
        return {o.key: o for o in manifest_inventory(self.manifest, bucket)}

    def versions(self) -> dict[str, Any]:
        return dict(self.manifest.get("versions") or {})

    def table_rows(self) -> dict[str, int] | None:
        """Rows per table recorded at backup time (``None``: a set made before they were recorded)."""
        rows = self.manifest.get("table_rows")
        return {str(k): int(v) for k, v in rows.items()} if rows else None

    @property
    def is_safety(self) -> bool:
        return self.versions().get("trigger") == TRIGGER_PRE_RESTORE


def _read_all(blocks: Iterable[bytes], limit: int) -> bytes:
    out = bytearray()
    for block in blocks:
        out += block
        if len(out) > limit:
            raise RestoreRefused(f"manifest larger than {limit} bytes: refusing to read it")
    return bytes(out)


MANIFEST_LIMIT_BYTES = 512 * 1024 * 1024


def resolve_backup(
    destination: Destination,
    keys: RestoreKeys,
    backup_id: str = LATEST,
    *,
    installation_id: str | None = None,
    ledger_backup_ids: Sequence[str] | None = None,
) -> ResolvedBackup:
    """Find the set, authenticate its manifest, and check every part it lists is on the destination.

    ``latest`` is the newest complete *regular* set: never a safety set (those are restored by
    their id). Refuses (``RestoreRefused``) an unknown backup id, a set without manifest, and a
    set whose manifest lists parts that are missing (named) or whose files disagree in size.
    """
    sets = list_backups(destination, installation_id=installation_id, ledger_backup_ids=ledger_backup_ids)
    if backup_id != LATEST:
        matches = [s for s in sets if s.backup_id == backup_id]
        if not matches:
            raise RestoreRefused(f"backup_id: no backup {backup_id!r} on {destination.description}")
        if not matches[0].complete:
            raise RestoreRefused(
                f"backup {backup_id} is incomplete: it has no manifest (parts found: {', '.join(matches[0].parts)}); "
                "it is not a backup and cannot be restored"
            )
        return _resolve_set(destination, keys, matches[0])
    # ``latest``: the newest complete regular backup. Safety sets are skipped by their file
    # property, and sets written before that property existed by their manifest's trigger.
    for candidate in (s for s in sets if s.complete and not s.is_safety):
        resolved = _resolve_set(destination, keys, candidate)
        if not resolved.is_safety:
            return resolved
    raise RestoreRefused(
        f"backup_id: no complete regular backup set found on {destination.description}"
        + (f" for installation {installation_id!r}" if installation_id else "")
        + (
            " (only safety backups of restores: restore one by its id)"
            if any(s.complete for s in sets)
            else ""
        )
    )


def _resolve_set(destination: Destination, keys: RestoreKeys, chosen: BackupSetInfo) -> ResolvedBackup:
    files = {
        f.properties.get(PROP_PART_NAME, ""): f
        for f in destination.list(
            {PROP_APP: APP_NAME, PROP_INSTALLATION: chosen.installation_id, PROP_BACKUP_ID: chosen.backup_id}
        )
    }
    manifest_file = files[PART_MANIFEST]
    plaintext = decrypt_stream(
        download_backup(destination, manifest_file.id, manifest_file.size),
        expected_backup_id=chosen.backup_id,
        expected_part_name=PART_MANIFEST,
        org_keyring=keys.org_keyring,
        recovery_identity=keys.recovery_identity,
    )
    try:
        manifest = parse_manifest(_read_all(plaintext, MANIFEST_LIMIT_BYTES))
    except ArchiveKeyError:
        raise  # wrong or mistyped key: the caller reports it as bad input, apart from damage
    except ArchiveError as exc:
        raise RestoreRefused(
            f"backup {chosen.backup_id}: the manifest does not authenticate: {exc}"
        ) from None
    parts: dict[str, PartRef] = {}
    missing: list[str] = []
    for entry in manifest_parts(manifest):
        stored = files.get(entry["part_name"])
        if stored is None:
            missing.append(entry["part_name"])
            continue
        if stored.size != int(entry["size"]):
            raise RestoreRefused(
                f"backup {chosen.backup_id}: part {entry['part_name']!r} is {stored.size} bytes on the "
                f"destination, the manifest says {entry['size']} (truncated or replaced)"
            )
        parts[entry["part_name"]] = PartRef(
            part_name=entry["part_name"],
            file_id=stored.id,
            size=int(entry["size"]),
            sha256=str(entry["sha256"]),
            plaintext_size=int(entry["plaintext_size"]),
            plaintext_sha256=str(entry["plaintext_sha256"]),
        )
    for info in manifest.get("incremental", {}).values():
        for ref in info["referenced"]:
            key = referenced_key(ref["backup_id"], ref["part_name"])
            if key in parts:
                continue
            stored = next(
                iter(
                    destination.list(
                        {
                            PROP_APP: APP_NAME,
                            PROP_INSTALLATION: chosen.installation_id,
                            PROP_BACKUP_ID: ref["backup_id"],
                            PROP_PART_NAME: ref["part_name"],
                        }
                    )
                ),
                None,
            )
            if stored is None:
                missing.append(f"{ref['part_name']} of backup {ref['backup_id']} (referenced)")
                continue
            if stored.size != int(ref["size"]):
                raise RestoreRefused(
                    f"backup {chosen.backup_id}: part {ref['part_name']!r} of backup {ref['backup_id']}, which it "
                    f"references, is {stored.size} bytes on the destination, the manifest says {ref['size']}"
                )
            parts[key] = PartRef(
                part_name=ref["part_name"],
                file_id=stored.id,
                size=int(ref["size"]),
                sha256=str(ref["sha256"]),
                plaintext_size=int(ref["plaintext_size"]),
                plaintext_sha256=str(ref["plaintext_sha256"]),
                backup_id=ref["backup_id"],
            )
    for info in manifest.get("incremental", {}).values():
        for ref in info.get("referenced_indexes", ()):
            # Optional: without it, a single-object restore reads that older part whole.
            stored = _stored_part(destination, chosen.installation_id, ref["backup_id"], ref["part_name"])
            if stored is not None and stored.size == int(ref["size"]):
                parts[referenced_key(ref["backup_id"], ref["part_name"])] = PartRef(
                    part_name=ref["part_name"],
                    file_id=stored.id,
                    size=int(ref["size"]),
                    sha256=str(ref["sha256"]),
                    plaintext_size=int(ref["plaintext_size"]),
                    plaintext_sha256=str(ref["plaintext_sha256"]),
                    backup_id=ref["backup_id"],
                )
    if missing:
        raise RestoreRefused(
            f"backup {chosen.backup_id} is incomplete: the manifest lists parts missing on the destination: "
            + ", ".join(sorted(missing))
        )
    return ResolvedBackup(chosen.backup_id, chosen.installation_id, manifest, parts)


def needed_parts(resolved: ResolvedBackup, options: RestoreOptions) -> list[str]:
    """The parts a restore with ``options`` reads; unknown buckets are refused by name."""
    names: list[str] = []
    if options.restores_database:
        if PART_DATABASE not in resolved.parts:
            raise RestoreRefused(f"backup {resolved.backup_id} has no database part")
        names.append(PART_DATABASE)
    if options.restores_files:
        available = resolved.buckets
        unknown = sorted(set(options.buckets) - set(available))
        if unknown:
            raise RestoreRefused(
                f"buckets: {', '.join(unknown)} not in backup {resolved.backup_id} "
                f"(it has: {', '.join(available) or 'no buckets'})"
            )
        for bucket in options.buckets or available:
            names += resolved.bucket_parts(bucket)
            info = resolved.manifest.get("incremental", {}).get(bucket)
            if info is not None:  # format 2: the inventory and the older sets' parts it points at
                names.append(info["inventory_part"])
                names += [
                    referenced_key(r["backup_id"], r["part_name"])
                    for r in info["referenced"]
                    if referenced_key(r["backup_id"], r["part_name"]) not in names
                ]
    return names


class _Counter:
    def __init__(self) -> None:
        self.size = 0
        self.sha256 = hashlib.sha256()

    def wrap(self, blocks: Iterable[bytes]) -> Iterator[bytes]:
        for block in blocks:
            self.size += len(block)
            self.sha256.update(block)
            yield block


def _stored_part(
    destination: Destination, installation_id: str, backup_id: str, part_name: str
) -> StoredFile | None:
    found = destination.list(
        {
            PROP_APP: APP_NAME,
            PROP_INSTALLATION: installation_id,
            PROP_BACKUP_ID: backup_id,
            PROP_PART_NAME: part_name,
        }
    )
    return next(iter(found), None)


def open_part(
    destination: Destination,
    keys: RestoreKeys,
    resolved: ResolvedBackup,
    part_name: str,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[bytes]:
    """The authenticated plaintext of one part, streamed.

    Every chunk is authenticated before it is yielded; after the last one the ciphertext and
    plaintext SHA-256 and sizes are compared with the manifest, and a mismatch raises
    ``PartVerificationError`` *before* the iterator ends — so a consumer that acts only once
    the stream ended cleanly (pg_restore's transaction, the verify pass) never acts on it.
    """
    ref = resolved.parts[part_name]
    owner = ref.backup_id or resolved.backup_id
    cipher, plain = _Counter(), _Counter()
    try:
        ciphertext = cipher.wrap(download_backup(destination, ref.file_id, ref.size, on_progress=on_progress))
        yield from plain.wrap(
            decrypt_stream(
                ciphertext,
                expected_backup_id=owner,
                expected_part_name=ref.part_name,
                org_keyring=keys.org_keyring,
                recovery_identity=keys.recovery_identity,
            )
        )
    except ArchiveError as exc:
        raise PartVerificationError(owner, ref.part_name, f"{type(exc).__name__}: {exc}") from None
    problems = []
    if cipher.size != ref.size or cipher.sha256.hexdigest() != ref.sha256:
        problems.append(f"ciphertext {cipher.size} bytes / sha256 {cipher.sha256.hexdigest()[:16]}…")
    if plain.size != ref.plaintext_size or plain.sha256.hexdigest() != ref.plaintext_sha256:
        problems.append(f"plaintext {plain.size} bytes / sha256 {plain.sha256.hexdigest()[:16]}…")
    if problems:
        raise PartVerificationError(
            owner, ref.part_name, "does not match the manifest: " + "; ".join(problems)
        )


class PartVerificationError(RestoreRefused):
    def __init__(self, backup_id: str, part_name: str, detail: str):
        self.part_name = part_name
        super().__init__(f"backup {backup_id}, part {part_name!r}: {detail}; nothing was restored from it")


def verify_part(
    destination: Destination, keys: RestoreKeys, resolved: ResolvedBackup, part_name: str
) -> dict[str, Any]:
    """Authenticate one part end to end against the manifest, keeping no plaintext."""
    started = time.monotonic()
    size = 0
    for block in open_part(destination, keys, resolved, part_name):
        size += len(block)
    ref = resolved.parts[part_name]
    return {
        "part": part_name,
        "bytes": ref.size,
        "plaintext_bytes": size,
        "sha256": ref.sha256,
        "seconds": round(time.monotonic() - started, 2),
    }


def verify_parts(
    destination: Destination, keys: RestoreKeys, resolved: ResolvedBackup, part_names: Sequence[str]
) -> list[dict[str, Any]]:
    """Every needed part verified before anything is touched (the first failure refuses all)."""
    return [verify_part(destination, keys, resolved, name) for name in part_names]


def decrypt_backup(
    ciphertext: Iterable[bytes], keys: RestoreKeys, backup_id: str, part_name: str
) -> Iterator[bytes]:
    """Authenticated decryption of one part's ciphertext stream (see ``archive.stream_crypto``)."""
    return decrypt_stream(
        ciphertext,
        expected_backup_id=backup_id,
        expected_part_name=part_name,
        org_keyring=keys.org_keyring,
        recovery_identity=keys.recovery_identity,
    )


def parse_manifest(plaintext: bytes) -> dict[str, Any]:
    """The manifest, normalised to ``{backup_id, versions, parts: [...], inventory: {bucket: [...]}, table_rows}``.

    Reads the archive's ``Manifest`` schema (``backup_pipeline.manifest/1``) and the backup
    job's finalize document (``services/backup_finalize.manifest_document``).
    """
    import json

    try:
        raw = json.loads(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RestoreRefused(f"the manifest is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise RestoreRefused("the manifest is not a JSON object")
    if raw.get("format") in MANIFEST_FORMATS:
        try:
            m = Manifest.from_json(plaintext)
        except ArchiveError as exc:
            raise RestoreRefused(str(exc)) from None
        inventory: dict[str, list[list[Any]]] = {}
        for e in m.inventory:
            inventory.setdefault(e.bucket, []).append([e.key, e.size, e.sha256])
        return {
            "backup_id": m.backup_id,
            "versions": dict(m.versions),
            "parts": [
                {
                    "part_name": p.name,
                    "size": p.ciphertext_size,
                    "sha256": p.ciphertext_sha256,
                    "plaintext_size": p.plaintext_size,
                    "plaintext_sha256": p.plaintext_sha256,
                }
                for p in m.parts
            ],
            "inventory": inventory,
            "table_rows": dict(m.table_rows),
            "incremental": incremental_manifest_info(m),
            "shards": {
                b.bucket: [
                    {
                        "part_name": x.part_name,
                        "index_part": x.index_part,
                        "start_after": x.start_after,
                        "end": x.end,
                    }
                    for x in b.shards
                ]
                for b in m.buckets
                if b.shards
            },
        }
    if not isinstance(raw.get("parts"), list):
        raise RestoreRefused("the manifest has no list of parts")
    try:
        return {
            "backup_id": str(raw.get("backup_id", "")),
            "versions": {str(k): str(v) for k, v in (raw.get("versions") or {}).items() if v is not None},
            "parts": [
                {k: p[k] for k in ("part_name", "size", "sha256", "plaintext_size", "plaintext_sha256")}
                for p in raw["parts"]
            ],
            "inventory": {
                str(b["bucket"]): [[o["key"], int(o["size"]), o["sha256"]] for o in b.get("objects", [])]
                for b in raw.get("buckets", [])
            },
            "table_rows": {str(k): int(v) for k, v in (raw.get("table_rows") or {}).items()},
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise RestoreRefused(f"the manifest does not follow the schema: {exc!r}") from None


def manifest_parts(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [dict(p) for p in manifest.get("parts", [])]


def manifest_inventory(manifest: Mapping[str, Any], bucket: str) -> list[IncomingObject]:
    return [
        IncomingObject(str(k), int(n), str(h)) for k, n, h in manifest.get("inventory", {}).get(bucket, [])
    ]


def incremental_manifest_info(m: Any) -> dict[str, dict[str, Any]]:
    """Per format-2 bucket: inventory part, object count and the (backup id, part) pairs it reads."""
    out: dict[str, dict[str, Any]] = {}
    for b in m.buckets:
        if b.inventory_part is None:
            continue
        out[b.bucket] = {
            "inventory_part": b.inventory_part,
            "total_objects": b.total_objects or 0,
            "locations": [[m.backup_id, b.part_name]]
            + [[r.backup_id, r.part_name] for r in b.referenced_parts or ()],
            "referenced": [
                {
                    "backup_id": r.backup_id,
                    "part_name": r.part_name,
                    "size": r.ciphertext_size,
                    "sha256": r.ciphertext_sha256,
                    "plaintext_size": r.plaintext_size,
                    "plaintext_sha256": r.plaintext_sha256,
                }
                for r in b.referenced_parts or ()
            ],
            # The index parts of those parts (optional: single-object restores read them by ranges).
            "referenced_indexes": [
                {
                    "backup_id": r.backup_id,
                    "part_name": r.index_part_name,
                    "size": r.index_ciphertext_size,
                    "sha256": r.index_ciphertext_sha256,
                    "plaintext_size": r.index_plaintext_size,
                    "plaintext_sha256": r.index_plaintext_sha256,
                }
                for r in b.referenced_parts or ()
                if r.index_part_name is not None
            ],
        }
    return out
