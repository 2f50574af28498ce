"""Which parts of other sets the kept sets still need (format-2 sets reference older bucket parts).

Deleting a set must not break a set that is kept: a format-2 set (incremental object backups)
lists, per bucket, the bucket parts of older sets that hold its unchanged objects
(``referenced_parts`` in its manifest). Retention and the backup's clean-up of dead sets read
those lists from the manifests alone and never delete a part a kept set references, nor that
part's index (the reference names it too); the forgotten set's manifest and its other parts
go (manifest first), its referenced parts stay until no kept set references them, and the next run collects them then (restic's prune order:
nothing a remaining snapshot needs is removed, a crash leaves only garbage).

Only sets that hold an inventory part (``partKind=inventory`` in the listing) can reference
anything, so only their manifests are read, and only they need the org keyring.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..archive.errors import ArchiveError
from ..archive.keys import OrgKeyring
from ..archive.manifest import Manifest
from ..archive.stream_crypto import decrypt_stream
from ..destinations.base import Destination, DestinationError, StoredFile
from .backup_parts import KIND_INVENTORY, PART_MANIFEST, PART_SEED, PROP_PART_KIND, PROP_PART_NAME

MANIFEST_LIMIT_BYTES = 512 * 1024 * 1024


class ReferencesUnknown(Exception):
    """A kept set's manifest could not be read: which parts it needs is unknown, so nothing may go."""


@dataclass
class References:
    """(owning backup id, part name) → the kept sets that reference that part."""

    by_part: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def of_set(self, backup_id: str) -> dict[str, list[str]]:
        """Part name → referencing sets, for the parts of ``backup_id`` that must stay."""
        return {part: sorted(refs) for (owner, part), refs in self.by_part.items() if owner == backup_id}


def may_reference(files: Iterable[StoredFile]) -> bool:
    """A complete set with an inventory part (format 2), or a seeding run's set (its seed checkpoint
    is a manifest under another name): it may reference older parts."""
    kinds = [f.properties.get(PROP_PART_KIND) for f in files]
    names = [f.properties.get(PROP_PART_NAME) for f in files]
    return KIND_INVENTORY in kinds and (PART_MANIFEST in names or PART_SEED in names)


def read_manifest(
    destination: Destination,
    keyring: OrgKeyring,
    backup_id: str,
    stored: StoredFile,
    part_name: str = PART_MANIFEST,
) -> Manifest:
    plaintext = bytearray()
    for block in decrypt_stream(
        destination.get(stored.id),
        expected_backup_id=backup_id,
        expected_part_name=part_name,
        org_keyring=keyring,
    ):
        plaintext += block
        if len(plaintext) > MANIFEST_LIMIT_BYTES:
            raise ArchiveError(f"manifest larger than {MANIFEST_LIMIT_BYTES} bytes")
    return Manifest.from_json(bytes(plaintext))


def find_references(
    destination: Destination,
    keyring: Callable[[], OrgKeyring],
    grouped: Mapping[str, list[StoredFile]],
    kept: Iterable[str],
) -> References:
    """What the ``kept`` sets reference; ``keyring`` is loaded only when a format-2 set is kept."""
    refs = References()
    ring: OrgKeyring | None = None
    for backup_id in kept:
        files = grouped.get(backup_id, [])
        if not may_reference(files):
            continue
        # The manifest of a complete set; else the seed checkpoint of a seed still kept.
        names = {f.properties.get(PROP_PART_NAME): f for f in files}
        part_name = PART_MANIFEST if PART_MANIFEST in names else PART_SEED
        try:
            ring = ring or keyring()
            manifest = read_manifest(destination, ring, backup_id, names[part_name], part_name)
        except (ArchiveError, DestinationError, OSError, ValueError) as exc:
            raise ReferencesUnknown(
                f"the manifest of backup {backup_id} cannot be read ({type(exc).__name__}: {exc}), so the parts of "
                "older sets it references are unknown: nothing was deleted"
            ) from None
        for bucket in manifest.buckets:
            for ref in bucket.referenced_parts or ():
                refs.by_part.setdefault((ref.backup_id, ref.part_name), set()).add(backup_id)
                if ref.index_part_name is not None:
                    # Its index stays with it: a single-object restore of the kept set reads it.
                    refs.by_part.setdefault((ref.backup_id, ref.index_part_name), set()).add(backup_id)
    return refs
