"""Baseline import: upload a directory tree (``DIR/<bucket>/<key>``) into S3 with the minio client, one stream.

    python -m backup_pipeline_tests.bench.import_objects '{"endpoint": ..., "access_key": ..., "secret_key": ...}' DIR

What an administrator's script does after ``tar x`` or ``restic restore`` to put the files back
where the application reads them (plain PUTs; content types, metadata and tags are not kept
by those tools, so they are not restored).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .export_objects import client_from_json


def main() -> None:
    client = client_from_json(sys.argv[1])
    source = Path(sys.argv[2])
    count = 0
    for bucket_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        if not client.bucket_exists(bucket_dir.name):
            client.make_bucket(bucket_dir.name)
        for path in sorted(p for p in bucket_dir.rglob("*") if p.is_file()):
            client.fput_object(bucket_dir.name, path.relative_to(bucket_dir).as_posix(), str(path))
            count += 1
    print(json.dumps({"objects": count}))


if __name__ == "__main__":
    main()
