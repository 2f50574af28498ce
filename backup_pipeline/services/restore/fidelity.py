"""Whether a restore target holds an object exactly as written: what a dry run can predict from a
key (``key_risk``), and what the server serves after a put (``served_differently``)."""

from __future__ import annotations

from collections.abc import Mapping

from minio import Minio

from backup_pipeline.services.backup_parts import UNDO_PREFIX
from backup_pipeline.services.object_headers import RECORDED_HEADERS, record_headers

#: Scanned at most when a listing must confirm a key (see ``_listed_as_written``).
LISTING_SCAN = 1000


def shown_key(key: str, limit: int = 120) -> str:
    """``key`` for a one-line message: a long one shortened in the middle, its length said."""
    if len(key) <= limit:
        return key
    return f"{key[: limit // 2]}…{key[-limit // 3 :]} ({len(key.encode('utf-8', 'surrogatepass'))} bytes)"


#: Key shapes some S3 servers cannot hold as written (S3-COMPATIBILITY.md): a dry run names them.
KEY_BYTES_MAX = 1024
SEGMENT_BYTES_MAX = 255


def key_risk(key: str) -> str | None:
    """Why ``key`` may not be restorable exactly on some servers, or None."""
    raw = key.encode("utf-8", "surrogatepass")
    if len(raw) > KEY_BYTES_MAX:
        return f"key of {len(raw)} bytes (S3 allows {KEY_BYTES_MAX})"
    *folders, name = key.split("/")
    if len(name.encode("utf-8", "surrogatepass")) > SEGMENT_BYTES_MAX:
        return f"a path segment over {SEGMENT_BYTES_MAX} bytes (refused by SeaweedFS)"
    if any(len(part.encode("utf-8", "surrogatepass")) > SEGMENT_BYTES_MAX for part in folders):
        return f"a path segment over {SEGMENT_BYTES_MAX} bytes (file systems behind some servers refuse it)"
    if normalisable(key):
        return "'//', a leading '/' or '\\' (stored under a normalised key by SeaweedFS)"
    if key.startswith(UNDO_PREFIX):
        return f"the reserved prefix {UNDO_PREFIX} (the restore's undo copies)"
    return None


def served_differently(
    client: Minio,
    bucket: str,
    key: str,
    size: int,
    content_type: str,
    headers: Mapping[str, str],
    metadata: Mapping[str, str],
) -> str | None:
    """What the server serves for ``key`` that differs from what was written, or None.

    One HEAD: size, Content-Type, the recorded standard headers and user metadata (tags are
    sent with the put, which a server refuses rather than drops).
    """
    stat = client.stat_object(bucket, key)
    wrong: list[str] = []
    if int(stat.size or 0) != size:
        wrong.append(f"size {stat.size} (written {size})")
    written_type = content_type or "application/octet-stream"
    if (stat.content_type or "") != written_type:
        wrong.append(f"Content-Type {stat.content_type!r} (written {written_type!r})")
    served = record_headers((stat.metadata or {}).items())
    # The names the put sends (object_headers.put_headers), as a GET records them.
    canonical = {name.lower(): name for name in RECORDED_HEADERS}
    written_headers = {canonical[k.lower()]: v for k, v in headers.items() if k.lower() in canonical}
    for name in sorted(set(served.headers) | set(written_headers)):
        if served.headers.get(name) != written_headers.get(name):
            wrong.append(f"{name} {served.headers.get(name)!r} (written {written_headers.get(name)!r})")
    written_meta = {k.lower(): v for k, v in metadata.items()}
    for name in sorted(set(served.metadata) | set(written_meta)):
        if served.metadata.get(name) != written_meta.get(name):
            wrong.append(
                f"metadata {name} {served.metadata.get(name)!r} (written {written_meta.get(name)!r})"
            )
    if normalisable(key) and not _listed_as_written(client, bucket, key):
        wrong.append("the key: the server stored it under another one (normalised like a path)")
    return "served differently: " + "; ".join(wrong) if wrong else None


def normalisable(key: str) -> bool:
    """Keys some servers store under another key (SeaweedFS: ``//``, a leading ``/``, ``\\``)."""
    return "//" in key or key.startswith("/") or "\\" in key


def _listed_as_written(client: Minio, bucket: str, key: str, limit: int = LISTING_SCAN) -> bool:
    """Whether a listing shows ``key`` itself (a HEAD of a normalised key finds the other object).

    Listed from the part of the key before what a server may rewrite, since SeaweedFS normalises
    a prefix too and even echoes it as a key; keys come in order, so the scan stops at the first
    one past ``key``, or after ``limit`` (then the key is not confirmed, and is reported).
    """
    cuts = [i for i in (key.find("//"), key.find("\\")) if i >= 0]
    prefix = "" if key.startswith("/") else key[: min(cuts)] if cuts else key
    for seen, obj in enumerate(client.list_objects(bucket, prefix=prefix or None, recursive=True)):
        name = obj.object_name or ""
        if name == key:
            return True
        if name > key or seen >= limit:
            return False
    return False
