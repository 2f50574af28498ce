"""Runs the migration service in its own process, so a test can SIGKILL it mid-batch.

``python -m backup_pipeline_tests.migration_runner '<json>'`` with keys db_url, s3_endpoint,
s3_access_key, s3_secret_key, source_folder, bucket, batch_size, concurrency, part_size.
Prints the summary as JSON; exit 0 complete, 1 assets left or the run stopped.
"""

from __future__ import annotations

import json
import sys

from backup_pipeline.destinations.base import RetryingDestination
from backup_pipeline.destinations.local_folder import LocalFolderDestination
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.resources.s3 import S3Resource
from backup_pipeline.services import migration as mig


def main(raw: str) -> int:
    args = json.loads(raw)
    app_db = PostgresResource(database_url=args["db_url"])
    s3 = S3Resource(
        endpoint=args["s3_endpoint"],
        access_key=args["s3_access_key"],
        secret_key=args["s3_secret_key"],
        connect_timeout_seconds=args.get("s3_timeout", 10.0),
        read_timeout_seconds=args.get("s3_timeout", 300.0),
        retries=args.get("s3_retries", 3),
    )
    ctx = mig.MigrationContext(
        connect=app_db.connect,
        drive=lambda: RetryingDestination(LocalFolderDestination(args["source_folder"])),
        minio=s3.client(),
        bucket=args.get("bucket", "media"),
        options=mig.MigrationOptions(
            batch_size=args.get("batch_size", 50),
            concurrency=args.get("concurrency", 4),
            part_size=args.get("part_size", mig.DEFAULT_PART_SIZE),
        ),
        run_id=args.get("run_id", "runner"),
        endpoint=s3.endpoint,
    )
    with app_db.data_lock(ctx.run_id):
        summary = mig.run_migration(ctx)
    print(json.dumps(summary.as_dict(), default=str))
    return 0 if summary.complete else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
