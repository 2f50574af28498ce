"""Issue 18 goal: a bucket of 200 000 objects backs up and restores with no process above 256 MB peak RSS.

``python -m backup_pipeline_tests.bench.many_objects [--objects 200000] [--workdir DIR] [--keep]``:
starts its own SeaweedFS (``s3.py``), fills one bucket with ``--objects`` small objects (parallel
PUTs of 64..2 048-byte bodies), a tiny database beside it, then runs ``backup_job`` to a local
folder and ``restore_job`` (files, into the emptied bucket) as ``dagster job execute`` processes,
measured from outside (``measure.py``: every process of the tree, its peak RSS from ``VmHWM``,
and the CPU time of the tree). Prints one JSON document: per run the wall and CPU seconds, every
process's peak RSS against the 256 MB goal, the manifest's size, and whether the restored bucket
equals the source (count and SHA-256 of every body). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from minio import Minio

from backup_pipeline.archive.keys import generate_org_secret_file
from backup_pipeline.resources.keys import BackupKeysResource

from ..fixtures.s3_servers import s3_settings_env
from ..fixtures.seaweedfs import SeaweedFSServer
from .measure import Measurement, run_measured, tree_size
from .s3 import start_seaweedfs
from .s3 import stop as stop_s3

GOAL_MB = 256.0
BUCKET = "bench-many"
DB = "bench_many_objects"
INSTALLATION = "bench-many"
PUT_WORKERS = 32


def _body(i: int) -> bytes:
    rng = random.Random(i)
    return rng.randbytes(rng.randint(64, 2048))


def fill_bucket(client: Minio, count: int) -> tuple[int, dict[str, str]]:
    """``count`` objects ``obj/<nnnnnnn>``: their bytes and SHA-256 per key (the comparator's reference)."""
    if not client.bucket_exists(BUCKET):
        client.make_bucket(BUCKET)

    def put(i: int) -> tuple[str, str, int]:
        key, data = f"obj/{i:07d}", _body(i)
        client.put_object(BUCKET, key, io.BytesIO(data), len(data), content_type="application/octet-stream")
        return key, hashlib.sha256(data).hexdigest(), len(data)

    digests: dict[str, str] = {}
    total = 0
    with ThreadPoolExecutor(PUT_WORKERS) as pool:
        for key, digest, size in pool.map(put, range(count), chunksize=256):
            digests[key] = digest
            total += size
    return total, digests


def bucket_digests(client: Minio) -> dict[str, str]:
    keys = [o.object_name for o in client.list_objects(BUCKET, recursive=True) if o.object_name]

    def get(key: str) -> tuple[str, str]:
        response = client.get_object(BUCKET, key)
        try:
            return key, hashlib.sha256(response.read()).hexdigest()
        finally:
            response.close()
            response.release_conn()

    with ThreadPoolExecutor(PUT_WORKERS) as pool:
        return dict(pool.map(get, keys, chunksize=256))


def empty_bucket(client: Minio) -> None:
    from minio.deleteobjects import DeleteObject

    names = (
        DeleteObject(o.object_name) for o in client.list_objects(BUCKET, recursive=True) if o.object_name
    )
    for error in client.remove_objects(BUCKET, names):
        raise RuntimeError(f"could not empty {BUCKET}: {error}")


def _psql(sql: str, db: str = "postgres") -> None:
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql],
        check=True,
        capture_output=True,
    )


def _summary(m: Measurement) -> dict[str, Any]:
    return {
        "wall_s": round(m.wall_s, 1),
        "cpu_s": round(m.cpu_s, 1),
        "s3_server_cpu_s": round(m.watched_cpu_s.get("s3", 0.0), 1),
        "peak_rss_mb": round(m.peak_rss_mb, 1),
        "processes": {p.label: round(p.peak_rss_mb, 1) for p in m.processes},
        "goal_met": m.peak_rss_mb <= GOAL_MB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--objects", type=int, default=200_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--s3-endpoint",
        default=None,
        help="use this S3 server instead of starting one (credentials from BENCH_S3_ACCESS_KEY / "
        "BENCH_S3_SECRET_KEY); only the bench-many bucket is touched",
    )
    parser.add_argument(
        "--s3-pid", type=int, default=None, help="that server's pid (its CPU time is reported)"
    )
    parser.add_argument(
        "--s3-dir",
        type=Path,
        default=None,
        help="start SeaweedFS on the data of an earlier run (its <workdir>; use with --no-fill); removed at the end",
    )
    parser.add_argument(
        "--no-fill",
        action="store_true",
        help="back up the bench-many bucket as it is (objects of an earlier fill)",
    )
    parser.add_argument(
        "--restore-conflict",
        choices=("overwrite", "skip"),
        default="overwrite",
        help="overwrite: empty the bucket and restore every object (PUTs); skip: restore onto the bucket as "
        "it is, every object already there (the whole set is read, authenticated and matched, no PUT)",
    )
    parser.add_argument(
        "--shard-max-objects",
        type=int,
        default=None,
        help="BACKUP_PIPELINE_SHARD_MAX_OBJECTS for the backup (default: the product's default)",
    )
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bp-bench-many-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()

    def log(message: str) -> None:
        print(f"[many-objects {time.time() - started:6.0f}s] {message}", file=sys.stderr, flush=True)

    load_before = os.getloadavg()
    s3: SeaweedFSServer | None = None
    if args.s3_endpoint:
        key, secret = os.environ["BENCH_S3_ACCESS_KEY"], os.environ["BENCH_S3_SECRET_KEY"]
        url = urlsplit(args.s3_endpoint)
        client = Minio(url.netloc, access_key=key, secret_key=secret, secure=url.scheme == "https")
        s3_env = s3_settings_env(args.s3_endpoint, key, secret, "us-east-1")
        s3_pid = args.s3_pid
    else:
        s3 = start_seaweedfs(args.s3_dir or work)
        client, s3_env, s3_pid = s3.client(), s3.env(), s3.pid
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="minutes"),
        "objects": args.objects,
        "cores": os.cpu_count(),
        "load_before": [round(x, 2) for x in load_before],
    }
    try:
        t0 = time.perf_counter()
        if args.no_fill:
            # Bodies are a function of the key's number: the reference needs no GET.
            keys = [o.object_name for o in client.list_objects(BUCKET, recursive=True) if o.object_name]
            bodies = {k: _body(int(k.split("/")[1])) for k in keys}
            source = {k: hashlib.sha256(b).hexdigest() for k, b in bodies.items()}
            object_bytes = sum(len(b) for b in bodies.values())
            del bodies
        else:
            object_bytes, source = fill_bucket(client, args.objects)
        result["objects"] = len(source)
        result["object_bytes"] = object_bytes
        result["fill_s"] = round(time.perf_counter() - t0, 1)
        log(f"{len(source)} objects ({object_bytes} bytes) in {result['fill_s']} s")
        subprocess.run(["dropdb", "--if-exists", "-h", "127.0.0.1", "-U", "postgres", DB], check=True)
        subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", DB], check=True)
        _psql("CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, 'one')", DB)
        state = work / "state"
        state.mkdir(exist_ok=True)
        org_secret = state / "org-secret"
        if not org_secret.exists():
            generate_org_secret_file(org_secret)
        BackupKeysResource(org_secret_file=str(org_secret), state_dir=str(state)).recovery_public_key()
        home = work / "dagster-home"
        home.mkdir(exist_ok=True)
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        dest = work / "dest-local"
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "BACKUP_PIPELINE_INSTALLATION_ID": INSTALLATION,
            "BACKUP_PIPELINE_APP_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{DB}",
            "BACKUP_PIPELINE_STATE_DIR": str(state),
            "BACKUP_PIPELINE_ORG_SECRET_FILE": str(org_secret),
            "BACKUP_PIPELINE_MIN_MANUAL_BACKUP_INTERVAL_MINUTES": "0",
            "BACKUP_PIPELINE_DESTINATION": "local",
            "BACKUP_PIPELINE_LOCAL_DESTINATION_PATH": str(dest),
            **s3_env,
            "BACKUP_PIPELINE_BUCKETS_INCLUDE": BUCKET,
        }
        if args.shard_max_objects:
            env["BACKUP_PIPELINE_SHARD_MAX_OBJECTS"] = str(args.shard_max_objects)
        base = [
            sys.executable,
            "-m",
            "dagster",
            "job",
            "execute",
            "-m",
            "backup_pipeline.definitions",
            "-a",
            "defs",
        ]
        watch = {"s3": s3_pid} if s3_pid is not None else {}
        log("backup_job …")
        backup = run_measured("backup_job", [*base, "-j", "backup_job"], env=env, watch=watch)
        result["backup"] = _summary(backup)
        result["backup"]["destination_bytes"] = tree_size(dest)
        manifests = [p for p in dest.rglob("*") if p.is_file() and "manifest" in p.name]
        result["backup"]["manifest_ciphertext_bytes"] = sum(p.stat().st_size for p in manifests)
        log(f"backup: {result['backup']}")
        backup_id = _latest_backup_id(home)
        result["restore_conflict"] = args.restore_conflict
        if args.restore_conflict == "overwrite":
            empty_bucket(client)
        config = work / "restore.json"
        config.write_text(
            json.dumps(
                {
                    "ops": {
                        "start_restore": {
                            "config": {
                                "backup_id": backup_id,
                                "dry_run": False,
                                "confirm": f"restore {backup_id}",
                                "scope": "files",
                                "conflict_policy": args.restore_conflict,
                            }
                        }
                    }
                }
            )
        )
        log("restore_job …")
        restore = run_measured(
            "restore_job", [*base, "-j", "restore_job", "-c", str(config)], env=env, watch=watch
        )
        result["restore"] = _summary(restore)
        log(f"restore: {result['restore']}")
        if args.restore_conflict == "overwrite":
            restored = bucket_digests(client)
            result["restored_equal"] = restored == source
            result["restored_objects"] = len(restored)
        # skip: nothing was written, so there is nothing to compare (the run read, authenticated and
        # matched every object of the set against the target's listing).
        result["load_after"] = [round(x, 2) for x in os.getloadavg()]
        result["goal_met"] = bool(result["backup"]["goal_met"] and result["restore"]["goal_met"])
    finally:
        if s3 is not None:
            stop_s3(s3)
        subprocess.run(["dropdb", "--if-exists", "-h", "127.0.0.1", "-U", "postgres", DB], check=False)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))


def _latest_backup_id(home: Path) -> str:
    import dagster as dg

    from backup_pipeline import ledger

    with dg.DagsterInstance.from_config(str(home)) as instance:
        entry = ledger.latest_complete(instance)
    assert entry is not None, "no complete backup in the bench instance"
    return entry.backup_id


if __name__ == "__main__":
    main()
