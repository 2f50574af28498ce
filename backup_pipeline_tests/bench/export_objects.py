"""Baseline export: download every object of every bucket to disk with the minio client, one stream.

    python -m backup_pipeline_tests.bench.export_objects '{"endpoint": ..., "access_key": ..., "secret_key": ...}' DIR

What an administrator's script would do before ``tar``/``restic`` (plain GETs, no tags); its time
is also the measure of how fast moto serves the objects at all.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import urlparse

from minio import Minio


def main() -> None:
    server = json.loads(sys.argv[1])
    target = Path(sys.argv[2])
    url = urlparse(server["endpoint"])
    client = Minio(
        url.netloc,
        access_key=server["access_key"],
        secret_key=server["secret_key"],
        secure=url.scheme == "https",
    )
    count = 0
    for bucket in client.list_buckets():
        for obj in client.list_objects(bucket.name, recursive=True):
            assert obj.object_name is not None
            path = target / bucket.name / obj.object_name
            path.parent.mkdir(parents=True, exist_ok=True)
            response = client.get_object(bucket.name, obj.object_name)
            try:
                with path.open("wb") as handle:
                    for chunk in response.stream(1 << 20):
                        handle.write(chunk)
            finally:
                response.close()
                response.release_conn()
            count += 1
    print(json.dumps({"objects": count}))


if __name__ == "__main__":
    main()
