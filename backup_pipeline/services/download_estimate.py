"""How many bytes a restore downloads, and the warning when that passes the destination's daily
download threshold (Google Drive: about 1 TB per Cloud project per day, then throttled or billed).

docs/architecture/BACKUP-STRATEGY.md, "The download threshold": a warning, never a refusal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..destinations.base import Capacity, Destination, DestinationError, decimal_bytes
from .backup_parts import (
    BUCKET_PART_PREFIX,
    KIND_BUCKET,
    KIND_INDEX,
    KIND_INVENTORY,
    PROP_PART_KIND,
    bucket_of_part,
)
from .backup_upload import has_manifest, list_sets

#: A restore reads every part twice: the verify pass authenticates it end to end before
#: anything is touched, then the restore streams it again.
READS_PER_PART = 2


def restore_download_bytes(
    manifest: Mapping[str, Any], own_parts: Mapping[str, int], needed: Iterable[str]
) -> int:
    """Ciphertext bytes a restore of ``needed`` parts downloads (older sets' referenced parts included).

    ``manifest``: the resolved manifest dict (``services/restore/sets.resolve_backup``);
    ``own_parts``: part name -> ciphertext size of the set's own parts.
    """
    needed = list(needed)
    total = sum(own_parts.get(name, 0) for name in needed)
    buckets = {bucket_of_part(n) for n in needed if n.startswith(BUCKET_PART_PREFIX)}
    for bucket, info in (manifest.get("incremental") or {}).items():
        if bucket in buckets:
            total += sum(int(ref.get("size") or 0) for ref in info.get("referenced", ()))
    return total * READS_PER_PART


def download_warning(cap: Capacity | None, download_bytes: int, where: str) -> str | None:
    """The warning for a restore that downloads more than the threshold in a day (None: below it)."""
    threshold = cap.daily_download_threshold if cap is not None else None
    if threshold is None or download_bytes <= threshold:
        return None
    return (
        f"this restore downloads about {decimal_bytes(download_bytes)} from {where} (every part is read "
        f"twice: verified first, then restored), more than the {decimal_bytes(threshold)} a day above which "
        "Google throttles the project's Drive downloads or bills them. The restore goes ahead; expect it to "
        "slow down past that point, or restore part of the buckets now and the rest tomorrow."
    )


def restore_download_note(destination: Destination, resolved: Any, needed: Iterable[str]) -> str | None:
    """The restore pre-flight's warning (``resolved``: a ``services/restore`` ResolvedBackup); a
    destination that cannot say its limits gives none (the estimate must never stop a restore)."""
    try:
        cap = destination.capacity()
    except DestinationError:
        return None
    own = {name: ref.size for name, ref in resolved.parts.items() if ref.backup_id is None}
    return download_warning(
        cap, restore_download_bytes(resolved.manifest, own, needed), destination.description
    )


def newest_set_download_note(destination: Destination, installation_id: str) -> str | None:
    """``destination check``'s warning, from the listing alone (no keys: the manifest stays closed).

    The newest complete set's own files, plus — when it has inventories (incremental object
    backups) — every older bucket part it may reference: an upper estimate of what restoring it reads.
    """
    try:
        cap = destination.capacity()
        sets = list_sets(destination, installation_id)
    except DestinationError:
        return None
    complete = sorted(b for b, files in sets.items() if has_manifest(files))
    if not complete:
        return None
    newest = complete[-1]
    total = sum(f.size for f in sets[newest])
    if any(f.properties.get(PROP_PART_KIND) == KIND_INVENTORY for f in sets[newest]):
        total += sum(
            f.size
            for backup_id, files in sets.items()
            if backup_id < newest
            for f in files
            if f.properties.get(PROP_PART_KIND) in (KIND_BUCKET, KIND_INDEX)
        )
    note = download_warning(cap, total * READS_PER_PART, destination.description)
    return f"newest backup {newest}: {note}" if note else None
