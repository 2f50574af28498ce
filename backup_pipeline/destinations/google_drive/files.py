"""Drive file resources and query literals, as the destination contract sees them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..base import StoredFile


def stored_file(item: Mapping[str, Any]) -> StoredFile:
    """A Drive file resource (``FILE_FIELDS``) as a StoredFile."""
    created = item.get("createdTime")
    return StoredFile(
        id=str(item["id"]),
        name=str(item.get("name", "")),
        size=int(item.get("size", 0)),
        md5=item.get("md5Checksum"),
        sha256=item.get("sha256Checksum"),
        properties=dict(item.get("appProperties") or {}),
        created=datetime.fromisoformat(created.replace("Z", "+00:00")) if created else None,
    )


def quoted(value: str) -> str:
    """Escape a Drive query string literal."""
    return value.replace("\\", "\\\\").replace("'", "\\'")
