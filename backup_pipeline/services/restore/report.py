"""The consistency report after a full restore: rows whose object is missing, objects no row uses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from minio import Minio

from backup_pipeline.services.restore.buckets import _bucket_exists
from backup_pipeline.services.restore.common import DEFAULT_CONSISTENCY_QUERY


def consistency_report(
    conninfo: str,
    client: Minio,
    buckets: Sequence[str],
    *,
    query: str = DEFAULT_CONSISTENCY_QUERY,
    examples: int = 20,
) -> dict[str, Any]:
    """Rows whose object is missing, and objects no row points to, in ``buckets``.

    ``query`` returns (bucket, object key) pairs the application references; other
    applications configure their own.
    """
    referenced: set[tuple[str, str]] = set()
    with psycopg.connect(conninfo) as conn:
        for bucket, key in conn.execute(query):  # type: ignore[arg-type]
            referenced.add((str(bucket), str(key)))
    present: set[tuple[str, str]] = set()
    for bucket in sorted(set(buckets) | {b for b, _ in referenced}):
        if not _bucket_exists(client, bucket):
            continue
        for obj in client.list_objects(bucket, recursive=True):
            if obj.object_name is not None:
                present.add((bucket, obj.object_name))
    in_scope = set(buckets)
    missing = sorted(referenced - present)
    unreferenced = sorted(p for p in present - referenced if p[0] in in_scope)
    return {
        "rows_checked": len(referenced),
        "objects_checked": len(present),
        "rows_pointing_to_missing_objects": len(missing),
        "unreferenced_objects": len(unreferenced),
        "missing_examples": [f"{b}/{k}" for b, k in missing[:examples]],
        "unreferenced_examples": [f"{b}/{k}" for b, k in unreferenced[:examples]],
    }
