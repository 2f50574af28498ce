"""Settings of sharded bucket exports (``services/bucket_shards.py``), kept apart from
``settings.py`` (already long): the two fields and their one cross-check."""

from __future__ import annotations

from collections.abc import Set
from typing import Any

from pydantic import Field

#: Defaults: above every bucket the tests and benches back up, so their sets keep format 1.
DEFAULT_MAX_OBJECTS = 100_000
DEFAULT_MAX_BYTES = 8 * 1024**3

MAX_OBJECTS_ENV = "BACKUP_PIPELINE_SHARD_MAX_OBJECTS"
MAX_BYTES_ENV = "BACKUP_PIPELINE_SHARD_MAX_BYTES"

MAX_OBJECTS_FIELD: Any = Field(
    DEFAULT_MAX_OBJECTS,
    ge=1,
    description="A bucket with more objects than this is backed up in several parts (shards) by key range, "
    "each by its own step in parallel; a failed shard is retried alone (docs/architecture/BACKUP-STRATEGY.md, "
    "Sharded buckets). Not with incremental_objects.",
)
MAX_BYTES_FIELD: Any = Field(
    DEFAULT_MAX_BYTES,
    ge=1,
    description="Likewise, a bucket with more bytes than this (8 GiB) is backed up in shards of at most "
    "this many bytes (a single object larger than this is one shard of its own).",
)


def check_shards_with_incremental(incremental_objects: bool, fields_set: Set[str]) -> None:
    """Incremental sets are never sharded (their inventory and diff are per bucket part): an
    operator who set a shard limit with them is told, rather than seeing it silently ignored."""
    chosen = [
        env
        for name, env in (("shard_max_objects", MAX_OBJECTS_ENV), ("shard_max_bytes", MAX_BYTES_ENV))
        if name in fields_set
    ]
    if incremental_objects and chosen:
        raise ValueError(
            f"{', '.join(chosen)}: sharded buckets are not supported with BACKUP_PIPELINE_INCREMENTAL_OBJECTS "
            "(incremental sets back up each bucket in one part); unset one of them"
        )
