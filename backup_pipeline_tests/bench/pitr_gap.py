"""Issue 20's second goal, measured for real: restore to a moment ``--gap-minutes`` (60) after a base
backup of the bench database vs restoring that base backup alone (goal: ≤ 2 ×).

The world is the PITR integration test's (``fixtures/pg_cluster.py``): a private PostgreSQL 15
cluster archiving through pgBackRest (async archive-push, AES-256 encryption) into SeaweedFS over
HTTPS on loopback. The database is the bench's (``pgbench -i -s <scale>``, scale 20 as
``dataset.FULL``). After one full base backup a light steady load (``pgbench -R <rate>``, one
client, ``nice -n 19``) runs for the gap, then both restores run through the product's
``restore_to_moment`` (pgbackrest restore + start + WAL replay + verify + restart), alternating,
``--rounds`` times each, so a cold page cache or a neighbour's load does not favour one side.

    nice -n 19 .venv/bin/python -m backup_pipeline_tests.bench.pitr_gap --gap-minutes 60 \\
        --out /tmp/pitr-gap.json

Figures go to ``--out`` (JSON) and, as a Markdown table, to stdout; docs/bench/pitr.md keeps them.
Everything it starts (SeaweedFS, the cluster, pgbench, restored copies) is stopped on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from backup_pipeline.archive.keys import OrgKeyring, RecoveryIdentity, generate_org_secret_file
from backup_pipeline.services import pitr
from backup_pipeline.services.pitr_engine import PgBackRest
from backup_pipeline.services.pitr_restore import (
    RestoreRequest,
    check_request,
    restore_to_moment,
    stop_restored,
)
from backup_pipeline.services.pitr_status import read_archiver_status
from backup_pipeline.settings import load_settings
from backup_pipeline_tests.fixtures.pg_cluster import (
    PG_BIN,
    PITR_SERVER_SETTINGS,
    PrivateCluster,
    TlsSeaweedFS,
    free_low_port,
    kill_pgbackrest_processes,
    make_work_root,
    pitr_settings_env,
    remove_tree,
    start_archiving_server,
    user_dir,
)

APP_DB = "app"
BUCKET = "pitr-bench"


def _say(text: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _loadavg() -> float:
    return os.getloadavg()[0]


@dataclass
class Timed:
    kind: str  # "base" or "gap"
    target: str
    reached: str | None
    total_seconds: float
    restore_seconds: float
    recovery_seconds: float
    rows: int
    load_before: float
    load_after: float

    def row(self) -> str:
        return (
            f"| {self.kind} | {self.target} | {self.reached} | {self.total_seconds:.1f} | "
            f"{self.restore_seconds:.1f} | {self.recovery_seconds:.1f} | {self.load_before:.2f} → "
            f"{self.load_after:.2f} |"
        )


def _settings_env(root: Path, cluster: PrivateCluster, s3: TlsSeaweedFS, org_secret: Path) -> dict[str, str]:
    return pitr_settings_env(root, cluster, s3, org_secret, stanza="bench", bucket=BUCKET, app_db=APP_DB)


def _pgbench(cluster: PrivateCluster, *args: str) -> list[str]:
    return [
        "nice",
        "-n",
        "19",
        str(PG_BIN / "pgbench"),
        "-h",
        str(cluster.socket_dir),
        "-p",
        str(cluster.port),
        "-U",
        "postgres",
        *args,
        APP_DB,
    ]


def _wait_archived(cluster: PrivateCluster, timeout: float = 300) -> str:
    segment = str(cluster.execute("SELECT pg_walfile_name(pg_switch_wal())")[0][0])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with cluster.connect(APP_DB, user="bp_pitr") as conn:
            status = read_archiver_status(conn)
        if status.last_archived_wal and status.last_archived_wal >= segment and not status.waiting_segments:
            return segment
        time.sleep(1)
    raise RuntimeError(f"segment {segment} not archived within {timeout} s")


def _restore(
    ctx: pitr.PitrContext,
    engine: PgBackRest,
    cluster: PrivateCluster,
    root: Path,
    kind: str,
    n: int,
    target: datetime,
) -> Timed:
    data_dir = root / f"restored-{kind}-{n}"
    request = RestoreRequest(target=target, data_dir=data_dir, port=free_low_port(), database=APP_DB)
    check_request(request, live_data_dir=cluster.data_dir, live_port=cluster.port, info=engine.info())
    subprocess.run(["sync"], check=False)
    load_before = _loadavg()
    started = time.monotonic()
    try:
        report = restore_to_moment(engine, request, pg_bin=PG_BIN, secrets_env=ctx.secrets_env())
        total = time.monotonic() - started
    finally:
        stop_restored(engine, PG_BIN, data_dir)
    remove_tree(data_dir)
    timed = Timed(
        kind=kind,
        target=target.isoformat(timespec="seconds"),
        reached=report.reached,
        total_seconds=total,
        restore_seconds=report.restore_seconds,
        recovery_seconds=report.recovery_seconds,
        rows=sum(report.tables.values()),
        load_before=load_before,
        load_after=_loadavg(),
    )
    _say(f"restore {kind} #{n}: {timed.row()}")
    return timed


def _server_settings(args: argparse.Namespace) -> dict[str, str]:
    """DEPLOYMENT.md's PITR server settings (``--wal-compression off`` to measure without it)."""
    return {**PITR_SERVER_SETTINGS, "wal_compression": args.wal_compression}


def _wal_stats(cluster: PrivateCluster) -> dict[str, int]:
    """pg_stat_wal's counters: the WAL records written (bytes, full-page images), without the unused
    tail of each segment an archive_timeout switch leaves, which the LSN distance counts."""
    row = cluster.execute("SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal")[0]
    return {"records": int(row[0]), "fpi": int(row[1]), "bytes": int(row[2])}


def _wal_bytes(cluster: PrivateCluster, start_lsn: str) -> int:
    row = cluster.execute(f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{start_lsn}')")
    return int(row[0][0])


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = make_work_root()
    weed_dir = Path(tempfile.mkdtemp(prefix="bp-pitr-bench-weed-"))
    s3 = TlsSeaweedFS(weed_dir, root)
    cluster = PrivateCluster(user_dir(root / "cluster", 0o755))
    load: subprocess.Popen[bytes] | None = None
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "gap_minutes": args.gap_minutes,
        "scale": args.scale,
        "rate_tps": args.rate,
    }
    try:
        s3.start()
        s3.server.client().make_bucket(BUCKET)
        org_secret = root / "org-secret"
        generate_org_secret_file(org_secret)
        env = _settings_env(root, cluster, s3, org_secret)
        os.environ.update(env)
        settings = load_settings(env)
        cfg = pitr.engine_config(settings)
        cfg = replace(
            cfg,
            restore_process_max=args.process_max or cfg.restore_process_max,
            archive_get_queue_max_mib=args.queue_max_mib or cfg.archive_get_queue_max_mib,
        )
        result["restore_process_max"] = cfg.restore_process_max
        result["archive_get_queue_max_mib"] = cfg.archive_get_queue_max_mib
        result["server_settings"] = server_settings = _server_settings(args)
        ctx = pitr.open_repo(
            settings,
            cfg=cfg,
            keyring=OrgKeyring.from_file(org_secret),
            recovery_keys=[RecoveryIdentity.generate().public_key],
            create_keystore=True,
            env=env,
        )
        start_archiving_server(cluster, ctx, root, "bench", server_settings)
        cluster.execute(f"CREATE DATABASE {APP_DB}")
        _say(f"pgbench -i -s {args.scale}")
        subprocess.run(_pgbench(cluster, "-i", "-q", "-s", str(args.scale)), check=True, capture_output=True)
        result["database_bytes"] = int(cluster.execute(f"SELECT pg_database_size('{APP_DB}')")[0][0])
        _say("full base backup")
        started = time.monotonic()
        info = pitr.run_base_backup(ctx, "full")
        result["base_backup_seconds"] = round(time.monotonic() - started, 1)
        base = info.usable_backups[-1]
        result["base_backup"] = base.label
        result["base_backup_end"] = base.stopped_at.isoformat()
        start_lsn = str(cluster.execute("SELECT pg_current_wal_lsn()")[0][0])
        start_stats = _wal_stats(cluster)
        gap = timedelta(minutes=args.gap_minutes)
        # The load runs past the target so a commit after it is archived: recovery stops there.
        load_seconds = int(gap.total_seconds()) + 90
        _say(f"steady load: pgbench -R {args.rate} for {load_seconds} s")
        load = subprocess.Popen(
            _pgbench(cluster, "-n", "-c", "1", "-R", str(args.rate), "-T", str(load_seconds)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        out, _ = load.communicate()
        result["load_returncode"] = load.returncode
        result["load_summary"] = [
            line
            for line in out.decode(errors="replace").splitlines()
            if "transactions actually processed" in line or line.startswith("tps")
        ]
        load = None
        result["wal_bytes_during_gap"] = _wal_bytes(cluster, start_lsn)
        end_stats = _wal_stats(cluster)
        result["wal_written_during_gap"] = {k: end_stats[k] - start_stats[k] for k in end_stats}
        _wait_archived(cluster)
        base_target = base.stopped_at + timedelta(seconds=1)
        gap_target = base.stopped_at + gap
        engines = {"": ctx.engine}
        if args.compare_defaults:
            # The same repository restored with pgBackRest's defaults (one process, 128 MiB
            # prefetch): what the restore-side settings are worth, on the same WAL.
            defaults = replace(
                cfg, work_dir=root / "pipeline-defaults", restore_process_max=1, archive_get_queue_max_mib=128
            )
            engines["-defaults"] = PgBackRest(defaults, ctx.secrets)
            engines["-defaults"].write_config()
        runs: list[Timed] = []
        for n in range(1, args.rounds + 1):
            for suffix, engine in engines.items():
                runs.append(_restore(ctx, engine, cluster, root, "base" + suffix, n, base_target))
                runs.append(_restore(ctx, engine, cluster, root, "gap" + suffix, n, gap_target))
        result["runs"] = [r.__dict__ for r in runs]
        for suffix in engines:
            base_times = sorted(r.total_seconds for r in runs if r.kind == "base" + suffix)
            gap_times = sorted(r.total_seconds for r in runs if r.kind == "gap" + suffix)
            result["ratio_best" + suffix] = round(gap_times[0] / base_times[0], 2)
            median = (args.rounds - 1) // 2
            result["ratio_median" + suffix] = round(gap_times[median] / base_times[median], 2)
        info = ctx.engine.info()
        result["repo_archive_min"] = info.archive_min
        result["repo_archive_max"] = info.archive_max
        result["segments_in_repo"] = len(pitr.archive_segments(ctx.client, ctx.engine.cfg))
        return result
    finally:
        if load is not None and load.poll() is None:
            load.send_signal(signal.SIGTERM)
            load.wait(30)
        cluster.stop()
        s3.close()
        kill_pgbackrest_processes(str(root))
        remove_tree(root)
        remove_tree(weed_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gap-minutes", type=float, default=60.0)
    parser.add_argument("--scale", type=int, default=20, help="pgbench scale (the bench database: 20)")
    parser.add_argument("--rate", type=float, default=10.0, help="pgbench transactions per second")
    parser.add_argument("--rounds", type=int, default=2, help="restores of each kind, alternating")
    parser.add_argument(
        "--wal-compression", default="lz4", help="the server's wal_compression (DEPLOYMENT.md: lz4)"
    )
    parser.add_argument(
        "--process-max", type=int, default=0, help="restore/archive-get processes (0: the product's)"
    )
    parser.add_argument(
        "--queue-max-mib", type=int, default=0, help="archive-get prefetch queue (0: the product's)"
    )
    parser.add_argument(
        "--compare-defaults",
        action="store_true",
        help="also restore with pgBackRest's restore defaults (process-max 1, 128 MiB prefetch)",
    )
    parser.add_argument("--out", type=Path, default=Path("pitr-gap.json"))
    args = parser.parse_args(argv)
    result = run(args)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print("| restore | target | moment reached | total s | pgbackrest restore s | start + replay s | load |")
    print("|---|---|---|---|---|---|---|")
    for r in result["runs"]:
        print(Timed(**r).row())
    for key, value in result.items():
        if key.startswith("ratio_"):
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
