"""Archive throughput benchmark: our tar+gzip+encrypt / decrypt+gunzip vs tar|gzip -1|age, tar|pigz|age, restic.

    .venv/bin/python -m backup_pipeline_tests.bench.bench_archive [--gib 1] [--workdir /tmp/bench]

Generates ~60 % media-like (random bytes as .jpg/.mp4) and ~40 % compressible text files,
runs each pipeline once over the same files (output to a file on the same disk), and prints
wall time, MB/s of input and peak RSS. Not a test: it is run by hand (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1 << 20

OURS_ENCRYPT = r"""
import json, mimetypes, os, sys
from pathlib import Path
from backup_pipeline.archive.keys import OrgKeyring, RecoveryIdentity
from backup_pipeline.archive.stream_crypto import encrypt_stream
from backup_pipeline.archive.streams import HashingCounter, iter_file
from backup_pipeline.archive.tar_parts import SourceObject, write_bucket_archive

src, out = Path(sys.argv[1]), Path(sys.argv[2])
def opener(path):
    def open_():
        with path.open("rb") as handle:
            yield from iter_file(handle)
    return open_
objects = (
    SourceObject(str(p.relative_to(src)), p.stat().st_size, mimetypes.guess_type(p.name)[0], open=opener(p))
    for p in sorted(src.rglob("*")) if p.is_file()
)
inventory = []
plain = HashingCounter()
cipher = HashingCounter()
stream = encrypt_stream(
    plain.wrap(write_bucket_archive(objects, compress_level=1, inventory=inventory)),
    backup_id="bench", part_name="bucket-bench", org_keyring=OrgKeyring([("k1", bytes(32))]),
    recovery_public_key=RecoveryIdentity(bytes(range(32))).public_key,
)
with out.open("wb") as handle:
    for piece in cipher.wrap(stream):
        handle.write(piece)
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({"objects": len(inventory), "part_bytes": cipher.size, "peak_rss_mb": hwm / 1024}))
"""

OURS_DECRYPT = r"""
import hashlib, json, sys
from backup_pipeline.archive.keys import RecoveryIdentity
from backup_pipeline.archive.stream_crypto import decrypt_stream
from backup_pipeline.archive.streams import iter_file
from backup_pipeline.archive.tar_parts import read_bucket_archive

with open(sys.argv[1], "rb") as handle:
    plaintext = decrypt_stream(iter_file(handle), expected_backup_id="bench", expected_part_name="bucket-bench",
                               recovery_identity=RecoveryIdentity(bytes(range(32))))
    count = total = 0
    for item in read_bucket_archive(plaintext):
        digest = hashlib.sha256()
        for chunk in item.iter_chunks():
            digest.update(chunk)
            total += len(chunk)
        count += 1
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({"objects": count, "bytes": total, "peak_rss_mb": hwm / 1024}))
"""

WORDS = [
    "the",
    "request",
    "user",
    "order",
    "item",
    "invoice",
    "payment",
    "shipped",
    "pending",
    "error",
    "warning",
    "info",
    "debug",
    "customer",
    "account",
    "session",
    "token",
    "created",
    "updated",
    "deleted",
    "status",
    "total",
    "amount",
    "currency",
    "address",
    "city",
    "street",
]


def make_dataset(root: Path, total: int, seed: int = 7) -> int:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    media_target, text_target = int(total * 0.6), total - int(total * 0.6)
    made = 0
    index = 0
    while made < media_target:
        size = min(rng.randint(2 * MIB, 40 * MIB), media_target - made)
        suffix = rng.choice([".jpg", ".mp4", ".png", ".zip"])
        (root / "media").mkdir(exist_ok=True)
        with (root / f"media/{index:04d}{suffix}").open("wb") as fh:
            remaining = size
            while remaining:
                step = min(4 * MIB, remaining)
                fh.write(os.urandom(step))
                remaining -= step
        made += size
        index += 1
    (root / "text").mkdir(exist_ok=True)
    text_made = 0
    while text_made < text_target:
        size = min(rng.randint(64 * 1024, 8 * MIB), text_target - text_made)
        lines = []
        length = 0
        while length < size:
            line = (
                f"2026-01-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} "
                + " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
                + f" id={rng.randint(0, 10**9)} ms={rng.random() * 100:.2f}\n"
            )
            lines.append(line)
            length += len(line)
        (root / f"text/{index:04d}.log").write_bytes("".join(lines).encode()[:size])
        text_made += size
        index += 1
    return made + text_made


def timed(
    command: list[str] | str, *, shell: bool = False, env: dict[str, str] | None = None
) -> tuple[float, str, float]:
    """Wall seconds, stdout, and the peak RSS (MB) of the largest process of the pipeline (GNU time)."""
    start = time.perf_counter()
    if shell:
        wrapped = f"/usr/bin/time -f '%M' -o /tmp/bench-rss bash -c {json.dumps(command)}"
        result = subprocess.run(wrapped, shell=True, capture_output=True, text=True, env=env, check=True)
    else:
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    elapsed = time.perf_counter() - start
    rss = 0.0
    if shell and Path("/tmp/bench-rss").exists():
        rss = int(Path("/tmp/bench-rss").read_text().split()[-1]) / 1024
    return elapsed, result.stdout, rss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-archive-"))
    data = work / "data"
    total = make_dataset(data, int(args.gib * (1 << 30)))
    subprocess.run(["sync"], check=True)
    mb = total / 1e6
    rows = []

    def row(name: str, seconds: float, out_bytes: int, rss: float, note: str = "") -> None:
        rows.append((name, seconds, mb / seconds, out_bytes, rss, note))
        print(
            f"{name:38s} {seconds:7.2f} s {mb / seconds:8.1f} MB/s  out {out_bytes / 1e6:8.1f} MB  rss {rss:6.1f} MB {note}",
            flush=True,
        )

    part = work / "ours.bpa"
    seconds, out, _ = timed([sys.executable, "-c", OURS_ENCRYPT, str(data), str(part)])
    info = json.loads(out)
    row(
        "ours: tar+gzip(-1, media stored)+encrypt",
        seconds,
        part.stat().st_size,
        info["peak_rss_mb"],
        f"{info['objects']} objects",
    )
    seconds, out, _ = timed([sys.executable, "-c", OURS_DECRYPT, str(part)])
    info = json.loads(out)
    row("ours: decrypt+gunzip+untar (sha256)", seconds, info["bytes"], info["peak_rss_mb"])

    key = work / "age.key"
    subprocess.run(["age-keygen", "-o", str(key)], capture_output=True, check=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(key)], capture_output=True, text=True, check=True
    ).stdout.strip()
    for name, compressor in (("tar | gzip -1 | age", "gzip -1"), ("tar | pigz | age", "pigz")):
        out_file = work / "baseline.age"
        seconds, _, rss = timed(
            f"tar -cf - -C {data} . | {compressor} | age -r {recipient} > {out_file}", shell=True
        )
        row(name, seconds, out_file.stat().st_size, rss)
        out_file.unlink()
    repo = work / "restic-repo"
    env = {**os.environ, "RESTIC_PASSWORD": "bench", "RESTIC_REPOSITORY": str(repo)}
    subprocess.run(["restic", "init", "-q"], env=env, check=True, capture_output=True)
    seconds, _, rss = timed(f"restic backup -q {data}", shell=True, env=env)
    repo_size = sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())
    row("restic backup (first run)", seconds, repo_size, rss)

    print(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d %H:%M %Z"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or ''} python {platform.python_version()}",
                "input_mb": mb,
            }
        )
    )
    if args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
