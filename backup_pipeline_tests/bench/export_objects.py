"""Baseline export: download every object of every bucket to disk with the minio client, one stream.

    python -m backup_pipeline_tests.bench.export_objects '{"endpoint": ..., "access_key": ..., "secret_key": ..., "buckets": [...]}' DIR [STREAMS]

What an administrator's script would do before ``tar``/``restic`` (plain GETs, no tags); its time
is also the measure of how fast moto serves the objects at all. STREAMS > 1 downloads on that
many threads (a reference for what the S3 server allows, not the baseline).
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from minio import Minio


def client_from_json(argument: str) -> Minio:
    """A minio client for the server described by the scripts' JSON argument."""
    server = json.loads(argument)
    url = urlparse(server["endpoint"])
    return Minio(
        url.netloc,
        access_key=server["access_key"],
        secret_key=server["secret_key"],
        secure=url.scheme == "https",
    )


def main() -> None:
    client = client_from_json(sys.argv[1])
    target = Path(sys.argv[2])
    streams = int(sys.argv[3]) if len(sys.argv) > 3 else 1

    def download(bucket: str, key: str) -> None:
        path = target / bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        response = client.get_object(bucket, key)
        try:
            with path.open("wb") as handle:
                for chunk in response.stream(1 << 20):
                    handle.write(chunk)
        finally:
            response.close()
            response.release_conn()

    buckets = json.loads(sys.argv[1]).get("buckets") or [b.name for b in client.list_buckets()]
    listed = (
        (bucket, obj.object_name)
        for bucket in buckets
        for obj in client.list_objects(bucket, recursive=True)
        if obj.object_name is not None
    )
    count = 0
    if streams <= 1:
        for bucket, key in listed:
            download(bucket, key)
            count += 1
    else:
        with ThreadPoolExecutor(max_workers=streams) as pool:
            for _ in pool.map(lambda item: download(*item), listed):
                count += 1
    print(json.dumps({"objects": count}))


if __name__ == "__main__":
    main()
