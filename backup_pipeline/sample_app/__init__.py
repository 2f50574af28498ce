"""The sample application this pipeline protects: schema + realistic seed data (demo and tests).

``python -m backup_pipeline.sample_app --help`` seeds a database and an S3 endpoint by hand.
"""

from .content import GeneratedStream, digest_of, generated_bytes
from .seed import (
    DEFAULT_BUCKETS,
    PRIMARY_BUCKET,
    LegacyDriveFile,
    SeededObject,
    SeedReport,
    SeedSpec,
    apply_schema,
    insert_legacy_drive_rows,
    legacy_drive_content,
    legacy_drive_file,
    plan_objects,
    read_object,
    seed_buckets,
    seed_database,
    seed_sample_app,
)

__all__ = [
    "DEFAULT_BUCKETS",
    "PRIMARY_BUCKET",
    "GeneratedStream",
    "LegacyDriveFile",
    "SeedReport",
    "SeedSpec",
    "SeededObject",
    "apply_schema",
    "digest_of",
    "generated_bytes",
    "insert_legacy_drive_rows",
    "legacy_drive_content",
    "legacy_drive_file",
    "plan_objects",
    "read_object",
    "seed_buckets",
    "seed_database",
    "seed_sample_app",
]
