"""Disaster recovery across several destinations: list the sets on each, and choose the copy to read.

With ``BACKUP_PIPELINE_DESTINATIONS`` naming several destinations, ``backup-pipeline restore``
looks at each in settings order (the primary first). ``--list`` shows every destination's sets
(or why it could not be read); a restore picks the newest complete regular set any reachable
destination holds (``latest``) or the id given, and reads it from the first reachable destination
holding it *complete* (its manifest present; the restore then authenticates every part). An
unreachable destination, or one where the set is missing or incomplete, is skipped with a line
saying so.

Not a command module (no ``cmd_`` prefix): ``cli/__init__.py`` does not register it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backup_pipeline.destinations.base import Destination, DestinationError

if TYPE_CHECKING:
    from backup_pipeline.resources.destination import DestinationResource
    from backup_pipeline.services.restore import BackupSetInfo


@dataclass
class Listing:
    name: str
    destination: Destination
    sets: list[BackupSetInfo] | None  # None: unreachable
    error: str = ""


def list_across(resources: list[DestinationResource], installation_id: str | None) -> list[Listing]:
    """Each destination's sets (newest first), or the reason it could not be listed."""
    from backup_pipeline.services import restore as svc

    out = []
    for resource in resources:
        destination = resource.get_destination()
        try:
            sets = svc.list_backups(destination, installation_id=installation_id)
        except DestinationError as exc:
            out.append(Listing(resource.label, destination, None, str(exc)))
            continue
        out.append(Listing(resource.label, destination, sets))
    return out


class NoCompleteCopy(Exception):
    """No reachable destination holds a complete copy of the set asked for."""


def pick_copy(listings: list[Listing], backup_id: str, log: Callable[[str], None]) -> tuple[Listing, str]:
    """The destination to restore from and the set id (``latest`` resolved across destinations)."""
    from backup_pipeline.services import restore as svc

    reachable = [listing for listing in listings if listing.sets is not None]
    for listing in listings:
        if listing.sets is None:
            log(f"destination {listing.name}: unreachable, skipped ({listing.error})")
    wanted = backup_id
    if backup_id == svc.LATEST:
        complete = [
            s.backup_id for listing in reachable for s in listing.sets or [] if s.complete and not s.is_safety
        ]
        if not complete:
            raise NoCompleteCopy(
                "no reachable destination holds a complete backup set: "
                + "; ".join(
                    f"{li.name}: {'unreachable' if li.sets is None else 'none complete'}" for li in listings
                )
            )
        wanted = max(complete)  # backup ids sort by time
    for listing in reachable:
        found = next((s for s in listing.sets or [] if s.backup_id == wanted), None)
        if found is not None and found.complete:
            log(f"restoring {wanted} from destination {listing.name} ({listing.destination.description})")
            return listing, wanted
        log(
            f"destination {listing.name}: "
            + ("no copy" if found is None else "copy INCOMPLETE (no manifest)")
            + f" of {wanted}, skipped"
        )
    raise NoCompleteCopy(f"no reachable destination holds a complete copy of {wanted}")
