"""The floor of a pipeline: the fastest raw transfer of the benchmark's objects with the same server.

    python -m backup_pipeline_tests.bench.floors get '{"endpoint": ..., ...}' STREAMS
    python -m backup_pipeline_tests.bench.floors put '{"endpoint": ..., ...}' STREAMS

``get``: list every bucket, GET every object and drop the bytes (no disk, no hashing), on
STREAMS threads. ``put``: PUT every object of the dataset (same keys, sizes, content types,
metadata and tags, the documents' very bytes) from memory into emptied buckets, on STREAMS
threads. Both start with the largest object, which goes as one stream (multipart of 64 MiB
parts for the PUT, as the restore job sends it), so with several streams the floor is the
larger of the biggest object's single-stream time and the whole set at the server's aggregate
rate — the shape the jobs have (one stream per large object, small ones on a thread pool).

Media bodies are one random MiB repeated (incompressible, as the dataset's media; generating
the dataset's keystream would cost the client ~2 s of CPU per GB, which is not transfer); the
documents are regenerated before the clock starts. Prints one JSON line: ``seconds`` is the
transfer alone (interpreter start and preparation excluded), the figure the goals use.
"""

from __future__ import annotations

import io
import json
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from minio import Minio
from minio.commonconfig import Tags

from . import dataset as ds
from .export_objects import client_from_json

CHUNK = 1 << 20
PART = 64 * ds.MIB


@dataclass(frozen=True)
class FloorObject:
    bucket: str
    key: str
    size: int
    content_type: str
    metadata: dict[str, str]
    body: bytes | None = None  # documents only; media bodies are generated while sent
    tagged: bool = False


class RepeatingReader(io.RawIOBase):
    """``size`` bytes of one random MiB, repeated, produced as they are read (never the whole body)."""

    PATTERN = os.urandom(CHUNK)

    def __init__(self, size: int) -> None:
        self._left = size
        self._offset = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        step = self._left if size is None or size < 0 else min(size, self._left)
        out = bytearray()
        while len(out) < step:
            take = min(step - len(out), CHUNK - self._offset)
            out += self.PATTERN[self._offset : self._offset + take]
            self._offset = (self._offset + take) % CHUNK
        self._left -= step
        return bytes(out)


def dataset_objects(spec: ds.DatasetSpec) -> list[FloorObject]:
    """Every object ``dataset.load_objects`` writes, in the same order and with the same headers."""
    media = {"origin": "bench", "seed": str(spec.seed)}
    objects = [
        FloorObject(
            ds.BUCKET_LARGE,
            "videos/2026/all-hands-recording.mp4",
            spec.large_object_bytes,
            "video/mp4",
            media,
        )
    ]
    index = 0
    for group, (count, size) in enumerate(spec.media_sizes):
        for _ in range(count):
            ext, content_type = ds.MEDIA_TYPES[index % len(ds.MEDIA_TYPES)]
            key = f"group-{group}/asset {index:04d}.{ext}"
            objects.append(FloorObject(ds.BUCKET_MEDIA, key, size, content_type, media))
            index += 1
    rng = random.Random(spec.seed)
    for i in range(spec.small_objects):
        size = rng.randint(spec.small_min_bytes, spec.small_max_bytes)
        body, content_type, ext = ds.small_document(rng, i, size)
        key = f"docs/{i // 500:02d}/doc-{i:05d}.{ext}"
        objects.append(
            FloorObject(
                ds.BUCKET_DOCS, key, len(body), content_type, {"origin": "bench"}, body, tagged=i % 5 == 0
            )
        )
    return objects


def put_one(client: Minio, obj: FloorObject) -> int:
    tags = None
    if obj.tagged:
        tags = Tags.new_object_tags()
        tags["class"] = "report"
    data = io.BytesIO(obj.body) if obj.body is not None else RepeatingReader(obj.size)
    client.put_object(
        obj.bucket,
        obj.key,
        data,  # type: ignore[arg-type]
        obj.size,
        content_type=obj.content_type,
        metadata=obj.metadata,  # type: ignore[arg-type]
        tags=tags,
        part_size=PART,
    )
    return obj.size


def get_one(client: Minio, bucket: str, key: str) -> int:
    response = client.get_object(bucket, key)
    received = 0
    try:
        for chunk in response.stream(CHUNK, decode_content=False):
            received += len(chunk)
    finally:
        response.close()
        response.release_conn()
    return received


def floor_get(client: Minio, buckets: list[str], streams: int) -> dict[str, float]:
    started = time.perf_counter()
    listed = [
        (obj.size or 0, bucket, obj.object_name)
        for bucket in buckets
        for obj in client.list_objects(bucket, recursive=True)
        if obj.object_name is not None
    ]
    listing = time.perf_counter() - started
    listed.sort(key=lambda item: -item[0])
    largest: list[float] = []

    def fetch(item: tuple[int, str, str]) -> int:
        begun = time.perf_counter()
        received = get_one(client, item[1], item[2])
        if item is listed[0]:
            largest.append(time.perf_counter() - begun)
        return received

    with ThreadPoolExecutor(max_workers=streams) as pool:
        total = sum(pool.map(fetch, listed))
    return {
        "seconds": time.perf_counter() - started,
        "listing_seconds": listing,
        "largest_seconds": largest[0] if largest else 0.0,
        "objects": len(listed),
        "bytes": total,
    }


def floor_put(client: Minio, spec: ds.DatasetSpec, streams: int) -> dict[str, float]:
    objects = sorted(dataset_objects(spec), key=lambda o: -o.size)
    for bucket in ds.BUCKETS:
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
    largest: list[float] = []

    def send(obj: FloorObject) -> int:
        begun = time.perf_counter()
        sent = put_one(client, obj)
        if obj is objects[0]:
            largest.append(time.perf_counter() - begun)
        return sent

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=streams) as pool:
        total = sum(pool.map(send, objects))
    return {
        "seconds": time.perf_counter() - started,
        "largest_seconds": largest[0] if largest else 0.0,
        "objects": len(objects),
        "bytes": total,
    }


def main() -> None:
    mode, server, streams = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = client_from_json(server)
    config = json.loads(server)
    if mode == "get":
        result = floor_get(client, list(config["buckets"]), streams)
    elif mode == "put":
        spec = ds.QUICK if config.get("quick") else ds.FULL
        if config.get("pgbench_scale") is not None:
            spec = ds.DatasetSpec(**{**spec.__dict__, "pgbench_scale": config["pgbench_scale"]})
        result = floor_put(client, spec, streams)
    else:
        raise SystemExit(f"floors: mode must be get or put, got {mode!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
