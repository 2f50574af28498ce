"""The rows of the fault matrix, in the order they run, and the loop that runs them.

Rows are grouped by the settings the servers need (executor, destination): the servers are
restarted only between groups. Each row leaves the world as it found it (faults disarmed,
servers running, data as seeded) so rows are independent.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from . import scenarios as sc
from .world import World

Scenario = Callable[[World, sc.Row], sc.Row]


@dataclass(frozen=True)
class Case:
    group: str
    name: str
    fault: str
    run: Callable[..., sc.Row]
    quick: bool = False  # part of `drill --quick`
    needs_restore_baseline: bool = False
    executor: str = "in_process"
    destination: str = "local"


def _kill(phase: str) -> Callable[..., sc.Row]:
    return partial(sc.kill_backup_worker, phase=phase)


def _restore_kill(phase: str) -> Callable[..., sc.Row]:
    return lambda world, row, baseline: sc.kill_restore_worker(world, row, baseline, phase)


def _tamper(kind: str) -> Callable[..., sc.Row]:
    return lambda world, row, baseline: sc.tampered_restore(
        world,
        row,
        kind,
        baseline.victim,
        baseline.other,  # type: ignore[attr-defined]
    )


def _drive(
    preset: str, route: str = "upload_chunk", count: int = 2, **extra: object
) -> Callable[..., sc.Row]:
    return lambda world, row: sc.drive_fault(world, row, preset, route, count, **extra)


CASES: list[Case] = [
    # Backup: the run worker (and its pg_dump / step children) SIGKILLed at each phase.
    Case("backup kill", "run worker killed during pg_dump", "SIGKILL", _kill("dump"), quick=True),
    Case("backup kill", "run worker killed at bucket export start", "SIGKILL", _kill("bucket export")),
    Case("backup kill", "run worker killed mid-upload", "SIGKILL", _kill("upload"), quick=True),
    Case("backup kill", "run worker killed while finalizing (manifest)", "SIGKILL", _kill("manifest")),
    Case(
        "backup kill",
        "whole Dagster tree killed mid-upload, restarted",
        "SIGKILL all + restart",
        sc.kill_whole_tree,
        quick=True,
    ),
    # Backup: the sources fail.
    Case(
        "backup sources",
        "pg_dump connection terminated",
        "pg_terminate_backend",
        sc.terminate_pg_dump,
        quick=True,
    ),
    Case(
        "backup sources",
        "S3 server stopped for the rest of the run",
        "SIGTERM the S3 server",
        sc.stop_s3_during_run,
    ),
    Case(
        "backup sources",
        "S3 server frozen 8 s mid-upload",
        "SIGSTOP/SIGCONT the S3 server",
        sc.sigstop_s3_briefly,
    ),
    # Disk full on the local destination (a tmpfs).
    Case(
        "disk full", "destination too small for the backup", "tmpfs size", sc.disk_full_up_front, quick=True
    ),
    Case("disk full", "destination fills mid-upload", "fallocate filler", sc.disk_fills_mid_write),
    # Multiprocess executor (production default): parallel exports, per-step data lock.
    Case(
        "multiprocess",
        "step processes + run worker killed mid-upload",
        "SIGKILL",
        _kill("upload"),
        executor="multiprocess",
    ),
    # Drive test server faults.
    Case(
        "drive",
        "connection cut mid-chunk (x2)",
        "cut",
        _drive("cut", after_bytes=65536),
        destination="google_drive",
        quick=True,
    ),
    Case(
        "drive",
        "429 Too Many Requests (x3)",
        "429",
        _drive("too_many_requests", count=3),
        destination="google_drive",
    ),
    Case(
        "drive",
        "503 Backend Error (x3)",
        "503",
        _drive("unavailable", route="any", count=3, skip=4),
        destination="google_drive",
    ),
    Case(
        "drive", "408 with an HTML body (x2)", "408-HTML", _drive("timeout_html"), destination="google_drive"
    ),
    Case(
        "drive",
        "upload session expired (410)",
        "session_410",
        _drive("session_410", count=1),
        destination="google_drive",
    ),
    Case(
        "drive",
        "access tokens expired mid-run",
        "expire_tokens",
        _drive("expire_tokens"),
        destination="google_drive",
    ),
    Case(
        "drive",
        "storage quota exceeded",
        "storageQuotaExceeded",
        _drive("storage_quota", route="upload_start", count=1000, skip=2),
        destination="google_drive",
        quick=True,
    ),
    # Restore: the run worker SIGKILLed at each phase, then the restore rerun.
    Case(
        "restore kill",
        "killed while verifying parts",
        "SIGKILL",
        _restore_kill("verify"),
        needs_restore_baseline=True,
    ),
    Case(
        "restore kill",
        "killed during the safety backup",
        "SIGKILL",
        _restore_kill("safety backup"),
        needs_restore_baseline=True,
    ),
    Case(
        "restore kill",
        "killed during pg_restore",
        "SIGKILL",
        _restore_kill("database"),
        needs_restore_baseline=True,
        quick=True,
    ),
    Case(
        "restore kill",
        "killed while restoring buckets",
        "SIGKILL",
        _restore_kill("buckets"),
        needs_restore_baseline=True,
    ),
    # Tampered parts: a restore must refuse before anything changes.
    *(
        Case(
            "tampered part",
            f"database part: {kind}",
            kind,
            _tamper(kind),
            needs_restore_baseline=True,
            quick=quick,
        )
        for kind, quick in (
            ("header bit", True),
            ("chunk swap", False),
            ("truncation", True),
            ("trailing data", False),
            ("splice", False),
            ("part of another backup", True),
        )
    ),
]


@dataclass
class TamperBaseline(sc.RestoreBaseline):
    victim: str = ""
    other: str = ""


def run_cases(world: World, cases: Sequence[Case], log: Callable[[str], None] = print) -> list[sc.Row]:
    rows: list[sc.Row] = []
    baseline: TamperBaseline | None = None
    order = sorted(cases, key=lambda c: (c.executor != "in_process", c.destination != "local"))
    for case in order:
        if (case.executor, case.destination) != (world.executor, world.destination_kind):
            log(f"-- restarting the servers: executor={case.executor} destination={case.destination}")
            world.reconfigure(destination=case.destination, executor=case.executor)
            baseline = None
        row = sc.Row(group=case.group, name=case.name, fault=case.fault)
        started = time.monotonic()
        log(f"-- {case.group}: {case.name}")
        try:
            if case.needs_restore_baseline:
                # Each row's "next run" adds a backup, so retention (keep last N, pre-restore safety
                # sets included) eventually prunes the baseline sets: make new ones then.
                if baseline is None or not sc.database_parts_present(world, baseline.victim, baseline.other):
                    first = sc.restore_baseline(world)
                    second = sc.restore_baseline(world)
                    baseline = TamperBaseline(
                        backup_id=second.backup_id,
                        fingerprint=second.fingerprint,
                        victim=second.backup_id,
                        other=first.backup_id,
                    )
                row = case.run(world, row, baseline)
            else:
                row = case.run(world, row)
        except Exception as exc:
            row.outcome = sc.Outcome.ERROR
            row.detail = f"{type(exc).__name__}: {exc}"[:400]
            log(traceback.format_exc())
            _recover(world, log)
        row.seconds = round(time.monotonic() - started, 1)
        log(
            f"   {row.outcome.value} | run {row.run_status} | ledger {'true' if row.ledger_true else 'FALSE'} | "
            f"next run {'ok' if row.next_run_ok else 'FAILED'} | {row.seconds}s | {'; '.join(row.notes)}"
        )
        rows.append(row)
    return rows


def _recover(world: World, log: Callable[[str], None]) -> None:
    """After a drill error: servers back up, faults off, so the next row starts clean."""
    try:
        world.drive.clear_faults()
        world.s3.ensure_running()
        if any(p.poll() is not None for p in world.stack.processes.values()) or not world.stack.processes:
            world.start_stack()
        sc.settle(world)
    except Exception as exc:  # the next row reports what is still broken
        log(f"recovery failed: {exc}")
