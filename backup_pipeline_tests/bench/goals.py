"""The goals' verdicts, computed from the figures of the run that produced the report.

Issue 16's goals are judged against the floor measured in the same run (same data, same S3
server, same parallelism), issue 3's archive goals against the micro-benchmark, and the older
issue 5/7 goals are kept for comparison. A missed goal carries its measured reason: the part of
the wall time that is not data moving (launch, planning, tail, worker spawns) and, for CPU, the
activities the profile found.
"""

from __future__ import annotations

from collections.abc import Mapping

from .profiles import CpuProfile
from .series import Goal, Series

BACKUP_SERIES = ("ours_local", "ours_second", "ours_drive")
RESTORE_SERIES = ("ours_restore", "ours_restore_bucket", "ours_restore_files")
FIRST_BYTE_BUDGET_S = 3.0
PRODUCT_RSS_MB = 256
ARCHIVE_CLI_RSS_MB = 128


def _ratio(ours: float, base: float) -> str:
    return f"{ours:.1f} s vs {base:.1f} s = {ours / base:.2f} ×"


def wall_reason(job: Series, floor: float) -> str:
    """Where the job's time above its floor went, from the median run's event log."""
    if not job.timelines:
        return ""
    t = job.median_timeline().figures()
    return (
        f"{job.wall - floor:.1f} s above the floor: launch → first data step {t['launch_to_first_byte']:.1f} s, "
        f"data steps {t['data_span']:.1f} s (floor {floor:.1f} s), after the last data step {t['tail']:.1f} s, "
        f"exit {t['run_end_to_exit']:.1f} s; {t['steps']:.0f} steps, worker spawns {t['worker_spawn_total']:.1f} s in all"
    )


def cpu_reason(profile: CpuProfile | None, top: int = 4) -> str:
    if profile is None or not profile.total:
        return ""
    parts = [f"{name} {profile.seconds(n):.1f} s" for name, n in profile.by_activity.most_common(top)]
    return (
        f"profile (CPU of every process and thread, {profile.seconds(profile.total):.1f} s sampled): "
        + ", ".join(parts)
    )


def issue16(s: Mapping[str, Series], profiles: Mapping[str, CpuProfile]) -> list[Goal]:
    goals: list[Goal] = []
    parallel = next(k for k in s if k.startswith("floor_get") and k != "floor_get1")
    put_parallel = next(k for k in s if k.startswith("floor_put") and k != "floor_put1")
    backup, restore, files = s["ours_local"], s["ours_restore"], s["ours_restore_files"]

    floor_b = max(s["floor_pg_dump"].wall, s[parallel].wall)
    goals.append(
        Goal(
            "16",
            f"backup_job wall ≤ 1.15 × its floor (max of pg_dump and raw GET of all objects, {s[parallel].label})",
            backup.wall <= 1.15 * floor_b,
            _ratio(backup.wall, floor_b),
            wall_reason(backup, floor_b),
        )
    )
    base = s["pg_dump"].wall + s["export"].wall + s["pigz"].wall
    goals.append(
        Goal(
            "16",
            "backup_job wall ≤ 0.5 × (pg_dump -Fc + export to disk + tar | pigz | age)",
            backup.wall <= 0.5 * base,
            _ratio(backup.wall, base),
            wall_reason(backup, floor_b),
        )
    )
    floor_r = s[put_parallel].wall + s["floor_pg_restore"].wall
    goals.append(
        Goal(
            "16",
            f"restore_job (full) wall ≤ 1.25 × its floor (raw PUT of all objects, {s[put_parallel].label}, + pg_restore)",
            restore.wall <= 1.25 * floor_r,
            _ratio(restore.wall, floor_r),
            wall_reason(restore, floor_r),
        )
    )
    floor_f = s["restic_restore"].wall + s[put_parallel].wall
    goals.append(
        Goal(
            "16",
            "restore_job files-only wall ≤ 1.0 × (restic restore + the same raw PUT)",
            files.wall <= floor_f,
            _ratio(files.wall, floor_f),
            wall_reason(files, s[put_parallel].wall),
        )
    )
    for name, job in (("backup", backup), ("restore", restore)):
        if not job.timelines:
            continue
        first = job.timeline("launch_to_first_byte")
        t = job.median_timeline().figures()
        goals.append(
            Goal(
                "16",
                f"launch-to-first-byte ≤ {FIRST_BYTE_BUDGET_S:.0f} s ({name}: launch → STEP_START of the first data step)",
                first <= FIRST_BYTE_BUDGET_S,
                f"{first:.1f} s",
                f"launch → RUN_START {t['launch_to_run_start']:.1f} s (interpreter, imports, code location, run "
                f"record), RUN_START → first data step {t['launch_to_first_byte'] - t['launch_to_run_start']:.1f} s "
                "(planning steps and their worker spawns)",
            )
        )
    ours = [x for x in s.values() if x.kind == "ours"]
    top = max(ours, key=lambda x: x.peak)
    goals.append(
        Goal(
            "16",
            f"no product process above {PRODUCT_RSS_MB} MB peak RSS (the S3 server excluded)",
            top.peak <= PRODUCT_RSS_MB,
            f"max {top.peak:.0f} MB ({top.label}: {max(top.runs, key=lambda r: r.peak_rss_mb).largest_process()})",
        )
    )
    cli = [x for x in s.values() if x.group == "cli"]
    if cli:
        top_cli = max(cli, key=lambda x: x.peak)
        goals.append(
            Goal(
                "16",
                f"the archive CLI below {ARCHIVE_CLI_RSS_MB} MB peak RSS",
                top_cli.peak < ARCHIVE_CLI_RSS_MB,
                f"max {top_cli.peak:.0f} MB ({top_cli.label})",
            )
        )
    pigz = s["pigz"]
    goals.append(
        Goal(
            "16",
            "backup_job's own CPU per GB ≤ `tar | pigz | age`'s (S3 server and PostgreSQL excluded)",
            backup.cpu_per_gb <= pigz.cpu_per_gb,
            f"{backup.cpu_per_gb:.1f} vs {pigz.cpu_per_gb:.1f} CPU s/GB = {backup.cpu_per_gb / pigz.cpu_per_gb:.2f} ×",
            cpu_reason(profiles.get("backup")),
        )
    )
    unpack = s["base_restore"]
    goals.append(
        Goal(
            "16",
            "restore_job's own CPU per GB ≤ 1.5 × `age -d | gunzip | tar x` (+ pg_restore)'s",
            restore.cpu_per_gb <= 1.5 * unpack.cpu_per_gb,
            f"{restore.cpu_per_gb:.1f} vs {unpack.cpu_per_gb:.1f} CPU s/GB = "
            f"{restore.cpu_per_gb / unpack.cpu_per_gb:.2f} ×",
            cpu_reason(profiles.get("restore")),
        )
    )
    return goals


def issue18(s: Mapping[str, Series]) -> list[Goal]:
    """Incremental objects, nothing changed: ≤ 1 % of the first set's bytes and ≤ 0.15 × its wall."""
    first, same = s.get("ours_incr_first"), s.get("ours_incr_same")
    if first is None or same is None or not first.runs or not same.runs:
        return []
    first_out = min(r.output_bytes for r in first.runs)
    same_out = max(r.output_bytes for r in same.runs)
    t = same.median_timeline().figures() if same.timelines else None
    reason = (
        f"launch → first data step {t['launch_to_first_byte']:.1f} s, data steps {t['data_span']:.1f} s "
        f"(the full pg_dump each time), tail {t['tail']:.1f} s, exit {t['run_end_to_exit']:.1f} s"
        if t
        else ""
    )
    return [
        Goal(
            "18",
            "nothing changed: the second backup uploads ≤ 1 % of the first's bytes (all parts counted, "
            "database dump included)",
            same_out <= 0.01 * first_out,
            f"{same_out / 1e6:.1f} MB vs {first_out / 1e6:.1f} MB = {100 * same_out / first_out:.2f} %",
        ),
        Goal(
            "18",
            "nothing changed: the second backup takes ≤ 0.15 × the first's wall time",
            same.wall <= 0.15 * first.wall,
            _ratio(same.wall, first.wall),
            reason,
        ),
    ]


def issue3(archive_rows: Mapping[str, tuple[float, float, float, float, float]]) -> list[Goal]:
    ours = next((v for k, v in archive_rows.items() if k.startswith("ours: tar")), None)
    pigz = archive_rows.get("tar | pigz | age")
    restic = archive_rows.get("restic backup (first run)")
    if not (ours and pigz and restic):
        return []
    rss = max(v[4] for k, v in archive_rows.items() if k.startswith("ours"))
    return [
        Goal(
            "3",
            "archive throughput ≥ 2 × `tar | pigz | age`",
            ours[1] >= 2 * pigz[1],
            f"{ours[1]:.0f} vs {pigz[1]:.0f} MB/s = {ours[1] / pigz[1]:.2f} ×",
        ),
        Goal(
            "3",
            "archive throughput ≥ `restic backup` first run",
            ours[1] >= restic[1],
            f"{ours[1]:.0f} vs {restic[1]:.0f} MB/s = {ours[1] / restic[1]:.2f} ×",
        ),
        Goal("3", "archive peak RSS < 128 MB", rss < 128, f"{rss:.0f} MB"),
    ]


def issue7(s: Mapping[str, Series]) -> list[Goal]:
    """The older restore goals, against baselines that stop at files on local disk."""
    restore, files = s["ours_restore"], s["ours_restore_files"]
    return [
        Goal(
            "7",
            "restore job wall ≤ 0.5 × (age -d | gunzip | tar x + pg_restore)",
            restore.wall <= 0.5 * s["base_restore"].wall,
            _ratio(restore.wall, s["base_restore"].wall),
            "the baseline writes to local disk, no S3 server at all",
        ),
        Goal(
            "7",
            "files restored no slower than `restic restore`",
            files.wall <= s["restic_restore"].wall,
            _ratio(files.wall, s["restic_restore"].wall),
            "the baseline writes to local disk, no S3 server at all",
        ),
    ]
