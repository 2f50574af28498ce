"""Issue 20's first goal, measured for real: RPO ≤ 60 s with DEPLOYMENT.md's server settings.

The world is the PITR integration test's (``fixtures/pg_cluster.py``): a private PostgreSQL 15
cluster with ``PITR_SERVER_SETTINGS`` (``archive_timeout = 60``) archiving through pgBackRest
(async archive-push, AES-256 encryption) into SeaweedFS over HTTPS on loopback. After one full
base backup a writer commits one row with its commit-time timestamp about every second. At a
moment T the server is lost: the postmaster is killed (``pg_ctl stop -m immediate``), the
server's pgbackrest processes with it (the machine is gone, so is its async archive-push), and
the data directory, ``pg_wal`` included, is deleted. Then the product's ``restore_to_moment``
restores ``latest`` from the repository into a new directory and

    RPO = T − the newest commit found in the restored copy

Each round is a fresh world; ``--write-seconds`` is drawn per round between ``--min-seconds`` and
``--max-seconds`` so T falls at a different phase of the ``archive_timeout`` cycle.

    nice -n 19 .venv/bin/python -m backup_pipeline_tests.bench.pitr_rpo --rounds 3 --out /tmp/pitr-rpo.json

Figures go to ``--out`` (JSON) and, as a Markdown table, to stdout; docs/bench/pitr.md keeps them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from backup_pipeline.archive.keys import OrgKeyring, RecoveryIdentity, generate_org_secret_file
from backup_pipeline.services import pitr
from backup_pipeline.services.pitr_restore import (
    RestoreReport,
    RestoreRequest,
    check_request,
    restore_to_moment,
    stop_restored,
)
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
    run_as_user,
    start_archiving_server,
    user_dir,
)

APP_DB = "app"
BUCKET = "pitr-rpo"
TICKS = "CREATE TABLE ticks (id bigserial PRIMARY KEY, at timestamptz NOT NULL)"
#: clock_timestamp() at the INSERT: the commit follows within milliseconds (autocommit).
TICK = "INSERT INTO ticks (at) VALUES (clock_timestamp()) RETURNING at"


def _say(text: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@dataclass
class RpoRound:
    archive_timeout_seconds: int
    write_seconds: float
    commits_written: int
    last_written: str  # newest commit on the server before the loss
    lost_at: str  # T
    newest_restored: str | None
    commits_restored: int
    rpo_seconds: float | None  # T − newest_restored
    restore_seconds: float

    def row(self) -> str:
        rpo = f"{self.rpo_seconds:.1f}" if self.rpo_seconds is not None else "—"
        return (
            f"| {self.archive_timeout_seconds} | {self.write_seconds:.0f} | {self.lost_at[11:23]} | "
            f"{(self.newest_restored or '—')[11:23]} | {self.commits_written} | {self.commits_restored} | "
            f"**{rpo}** | {self.restore_seconds:.1f} |"
        )


def settings_env(root: Path, cluster: PrivateCluster, s3: TlsSeaweedFS, org_secret: Path) -> dict[str, str]:
    return pitr_settings_env(root, cluster, s3, org_secret, stanza="rpo", bucket=BUCKET, app_db=APP_DB)


def lose_server(cluster: PrivateCluster, server_conf: Path) -> None:
    """The machine is gone: postmaster killed (no shutdown checkpoint, no final archiving), the
    server's own pgbackrest processes (its async archive-push) killed, the data directory deleted."""
    argv = [str(PG_BIN / "pg_ctl"), "-D", str(cluster.data_dir), "-m", "immediate", "-w", "stop"]
    user = run_as_user()
    subprocess.run(["runuser", "-u", user, "--", *argv] if user else argv, check=False, capture_output=True)
    kill_pgbackrest_processes(str(server_conf))
    remove_tree(cluster.data_dir)


def measure_round(
    archive_timeout: int,
    write_seconds: float,
    *,
    interval: float = 1.0,
    say: Callable[[str], None] = _say,
) -> RpoRound:
    """One fresh world: base backup, a commit every ``interval`` s for ``write_seconds``, loss, restore."""
    root = make_work_root()
    weed_dir = Path(tempfile.mkdtemp(prefix="bp-pitr-rpo-weed-"))
    s3 = TlsSeaweedFS(weed_dir, root)
    cluster = PrivateCluster(user_dir(root / "cluster", 0o755))
    saved_env = dict(os.environ)
    restored_dir = root / "restored"
    ctx: pitr.PitrContext | None = None
    try:
        s3.start()
        s3.server.client().make_bucket(BUCKET)
        org_secret = root / "org-secret"
        generate_org_secret_file(org_secret)
        env = settings_env(root, cluster, s3, org_secret)
        os.environ.update(env)
        settings = load_settings(env)
        ctx = pitr.open_repo(
            settings,
            keyring=OrgKeyring.from_file(org_secret),
            recovery_keys=[RecoveryIdentity.generate().public_key],
            create_keystore=True,
            env=env,
        )
        server_conf = start_archiving_server(
            cluster, ctx, root, "rpo", {**PITR_SERVER_SETTINGS, "archive_timeout": str(archive_timeout)}
        )
        cluster.execute(f"CREATE DATABASE {APP_DB}")
        cluster.execute(TICKS, APP_DB)
        say("full base backup")
        pitr.run_base_backup(ctx, "full")
        say(
            f"a commit every {interval:.0f} s for {write_seconds:.0f} s (archive_timeout = {archive_timeout})"
        )
        written = 0
        last: datetime | None = None
        with cluster.connect(APP_DB) as conn:
            stop_at = time.monotonic() + write_seconds
            while time.monotonic() < stop_at:
                row = conn.execute(TICK).fetchone()
                assert row is not None
                last, written = row[0], written + 1
                time.sleep(interval)
        lost_at = datetime.now(UTC)
        lose_server(cluster, server_conf)
        say(f"server lost at {lost_at.isoformat(timespec='milliseconds')}; restoring latest")
        request = RestoreRequest(target=None, data_dir=restored_dir, port=free_low_port(), database=APP_DB)
        check_request(request, live_data_dir=cluster.data_dir, live_port=cluster.port, info=ctx.engine.info())
        started = time.monotonic()
        report = restore_to_moment(ctx.engine, request, pg_bin=PG_BIN, secrets_env=ctx.secrets_env())
        restore_seconds = time.monotonic() - started
        newest, count = _newest_restored(report)
        assert last is not None
        result = RpoRound(
            archive_timeout_seconds=archive_timeout,
            write_seconds=write_seconds,
            commits_written=written,
            last_written=last.astimezone(UTC).isoformat(timespec="milliseconds"),
            lost_at=lost_at.isoformat(timespec="milliseconds"),
            newest_restored=newest.astimezone(UTC).isoformat(timespec="milliseconds") if newest else None,
            commits_restored=count,
            rpo_seconds=(lost_at - newest).total_seconds() if newest else None,
            restore_seconds=restore_seconds,
        )
        say(f"round: {result.row()}")
        return result
    finally:
        if ctx is not None:
            stop_restored(ctx.engine, PG_BIN, restored_dir)
        cluster.stop()
        s3.close()
        kill_pgbackrest_processes(str(root))
        os.environ.clear()
        os.environ.update(saved_env)
        remove_tree(root)
        remove_tree(weed_dir)


def _newest_restored(report: RestoreReport) -> tuple[datetime | None, int]:
    """The newest tick and the tick count in the restored copy (restarted by restore_to_moment)."""
    with psycopg.connect(host=report.socket_dir, port=report.port, dbname=APP_DB, user="postgres") as conn:
        row = conn.execute("SELECT max(at), count(*) FROM ticks").fetchone()
    assert row is not None
    return row[0], int(row[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--archive-timeout", type=int, default=int(PITR_SERVER_SETTINGS["archive_timeout"]))
    parser.add_argument("--min-seconds", type=float, default=70.0, help="shortest write period")
    parser.add_argument("--max-seconds", type=float, default=190.0, help="longest write period")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("pitr-rpo.json"))
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "server_settings": {**PITR_SERVER_SETTINGS, "archive_timeout": str(args.archive_timeout)},
        "rounds": [],
    }
    for n in range(1, args.rounds + 1):
        seconds = rng.uniform(args.min_seconds, args.max_seconds)
        _say(f"round {n}/{args.rounds}")
        result["rounds"].append(measure_round(args.archive_timeout, seconds).__dict__)
    rpos = [r["rpo_seconds"] for r in result["rounds"] if r["rpo_seconds"] is not None]
    result["rpo_max_seconds"] = max(rpos) if rpos else None
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(
        "| archive_timeout s | writes s | lost at (T) | newest restored | commits written | restored | RPO s | restore s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in result["rounds"]:
        print(RpoRound(**r).row())
    print(f"\nRPO max: {result['rpo_max_seconds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
