"""Issue 18 goal: one object restored from a 1 GB bucket part downloads <= 2 x its size + one chunk.

``python -m backup_pipeline_tests.bench.single_object [--gib 1] [--folder /tmp/x]``: a bucket part
of mixed objects (4 KiB .. 4 MiB, media so stored members: the part is ~ the objects' size) and
its index are written encrypted to a local-folder destination, streamed; then objects of several
sizes are read back through the index alone, counting the bytes every ranged ``get`` returned.
Prints one JSON document (sizes, bytes downloaded, ratio, goal verdict per object).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from backup_pipeline.archive.keys import OrgKeyring
from backup_pipeline.archive.part_index import PartIndexWriter, read_index
from backup_pipeline.archive.stream_crypto import decrypt_stream, encrypt_stream, open_header, read_header
from backup_pipeline.archive.tar_parts import SourceObject, read_indexed_object, write_bucket_archive
from backup_pipeline.destinations import LocalFolderDestination

ORG = OrgKeyring([("bench", bytes(range(32)))])
CHUNK = (1 << 20) + 16


def _body(seed: int, size: int) -> Iterator[bytes]:
    block = hashlib.sha256(str(seed).encode()).digest() * (1 << 15)  # 1 MiB, distinct per object
    while size:
        n = min(size, len(block))
        yield block[:n]
        size -= n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--folder", type=Path, default=None)
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="bp-bench-single-"))
    rng = random.Random(18)
    total, sizes = int(args.gib * (1 << 30)), []
    while sum(sizes) < total:
        sizes.append(rng.choice([4 << 10, 60 << 10, 300 << 10, 1 << 20, 4 << 20]) + rng.randint(0, 4095))
    # Named probes of the sizes the goal is about, in the middle of the part.
    probes = {"probe/8MiB": 8 << 20, "probe/2MiB": 2 << 20, "probe/1MiB": 1 << 20, "probe/100KiB": 100 << 10}
    keys = [f"obj/{i:06d}" for i in range(len(sizes))]
    middle = len(keys) // 2
    objects = [(k, s) for k, s in zip(keys[:middle], sizes[:middle], strict=True)]
    objects += sorted(probes.items()) + list(zip(keys[middle:], sizes[middle:], strict=True))
    dest = LocalFolderDestination(folder)
    lines: list[bytes] = []  # the index of a GiB of 1 MiB objects is ~150 KB: fine for a bench
    index = PartIndexWriter("bucket-bench", lines.append)
    sources = (
        SourceObject(k, s, "image/jpeg", open=lambda k=k, s=s: _body(zlib.crc32(k.encode()), s))  # type: ignore[misc]
        for k, s in objects
    )
    started = time.monotonic()
    part = dest.put(
        "bench.bucket-bench.bpenc",
        encrypt_stream(
            write_bucket_archive(sources, compress_level=1, index=index),
            backup_id="bench",
            part_name="bucket-bench",
            org_keyring=ORG,
            recovery_public_key=None,
        ),
        {},
    )
    write_seconds = time.monotonic() - started
    entries = {e.key: e for e in read_index(lines, "bucket-bench")}
    header = read_header(dest.get(part.id, 0, 2048))[0]
    aead = open_header(header, org_keyring=ORG, expected_backup_id="bench", expected_part_name="bucket-bench")
    results = []
    for key in sorted(probes):
        served = 0

        def fetch(start: int, end: int) -> Iterator[bytes]:
            nonlocal served
            for block in dest.get(part.id, start, end):
                served += len(block)
                yield block

        t0 = time.monotonic()
        found = read_indexed_object(fetch, header, aead, part.size, entries[key])
        digest = hashlib.sha256()
        for block in iter(lambda: found.fileobj.read(1 << 20), b""):  # noqa: B023 - read now
            digest.update(block)
        assert digest.hexdigest() == entries[key].sha256
        size = probes[key]
        results.append(
            {
                "object": key,
                "size": size,
                "downloaded": served + 2048,  # + the header fetch
                "ratio": round((served + 2048) / size, 3),
                "goal_bytes": 2 * size + CHUNK,
                "goal_met": served + 2048 <= 2 * size + CHUNK,
                "seconds": round(time.monotonic() - t0, 3),
            }
        )
    # The whole part still decrypts as one stream (final chunk enforced).
    whole = sum(
        len(b)
        for b in decrypt_stream(
            dest.get(part.id), expected_backup_id="bench", expected_part_name="bucket-bench", org_keyring=ORG
        )
    )
    print(
        json.dumps(
            {
                "part_bytes": part.size,
                "part_plaintext_bytes": whole,
                "objects": len(objects),
                "index_bytes": sum(len(line) for line in lines),
                "write_seconds": round(write_seconds, 1),
                "probes": results,
            },
            indent=1,
        )
    )
    if args.folder is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
