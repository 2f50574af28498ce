"""``docs/benchmarks.md`` and ``docs/bench/throughput.svg`` from one harness run.

Every figure comes from the run (``Bench.series``, its event-log timelines and py-spy
profiles); the hand-written "## Archive", "## Point-in-time recovery (issue 20)", "## Single-object restore (issue 18)" and "## A bucket of 200 000 objects (issue 18)" sections of
the existing doc are kept verbatim (``KEPT_SECTIONS``). A
section whose pipeline was not measured says so instead of inventing a figure.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from . import goals as goal_rules
from . import incr_chain
from .chart import Bar, throughput_svg
from .series import MB, Goal, Series, cell

if TYPE_CHECKING:
    from .harness import Bench

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "benchmarks.md"
CHART = REPO / "docs" / "bench" / "throughput.svg"


def safe(bench: Bench, build: Callable[[], Any], fallback: Any) -> Any:
    """A section of the report, or ``fallback`` when a run it needs failed (noted, never invented)."""
    try:
        return build()
    except (
        KeyError,
        ValueError,
        StopIteration,
        statistics.StatisticsError,
        ZeroDivisionError,
        AttributeError,
    ) as exc:
        name = getattr(getattr(build, "func", build), "__name__", "section")
        bench.notes.append(f"{name}: not produced ({type(exc).__name__}: {exc})")
        return fallback


def all_goals(bench: Bench) -> list[Goal]:
    found: list[Goal] = []
    found += safe(bench, lambda: goal_rules.issue16(bench.series, bench.profiles), [])
    found += goal_rules.issue3(getattr(bench, "archive_rows", {}))
    found += safe(bench, lambda: goal_rules.issue7(bench.series), [])
    found += safe(bench, lambda: goal_rules.issue18(bench.series), [])
    found += safe(bench, lambda: incr_chain.goals(incr_chain.load()), [])  # from `bench.sh --chain`
    return found


def code_ref() -> str:
    given = os.environ.get("BENCH_CODE_REF")
    if given:
        return given
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
    commit = head.stdout.strip() or "?"
    return f"the working tree at git commit {commit}" + (
        " with uncommitted edits" if dirty.stdout.strip() else ""
    )


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def machine(bench: Bench) -> list[str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    import dagster

    from .profiles import py_spy

    server = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-Atc", "SHOW server_version", "postgres"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    weed = Path(sys.executable).parent / "weed"
    spy = py_spy()
    return [
        f"- Machine: {cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.1f} GiB RAM, "
        f"Linux {platform.release()}",
        f"- Load average (1/5/15 min) before: {' / '.join(f'{x:.2f}' for x in bench.load_before)}; after: "
        f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())}"
        + (
            " (**load above the core count: the machine was shared, figures are noisy and slower than on an "
            "idle machine**)"
            if max(bench.load_before) > (os.cpu_count() or 1)
            else ""
        ),
        f"- Date: {datetime.fromtimestamp(bench.started, UTC):%Y-%m-%d %H:%M} UTC; harness time "
        f"{(time.time() - bench.started) / 60:.1f} min",
        f"- Versions: Python {platform.python_version()}, dagster {dagster.__version__}, SeaweedFS "
        f"{_version([str(weed), 'version']) if weed.exists() else '?'}, PostgreSQL server {server}, "
        f"{_version(['pg_dump', '--version'])}, age {_version(['age', '--version'])}, "
        f"{_version(['pigz', '--version'])}, {_version(['restic', 'version'])}, "
        f"py-spy {_version([spy, '--version']) if spy else 'not installed'}",
    ]


def write(bench: Bench) -> None:
    command = "bash scripts/bench.sh" + (
        " " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
    )
    external = bench.external_s3
    lines = [
        "# Benchmarks",
        "",
        "<!-- generated by `bash scripts/bench.sh` (backup_pipeline_tests/bench/) except the Archive and PITR "
        "sections, which the harness keeps as written; do not edit figures by hand -->",
        "",
        f"Produced by `{command}`"
        + (
            " (**quick mode: small dataset, 1 run — checks the harness, the figures are not the benchmark**)"
            if bench.quick
            else ""
        )
        + ".",
        "",
        f"- Code measured: {code_ref()}",
        *machine(bench),
        f"- Dataset: {bench.spec.describe()}: {bench.object_count} objects, {bench.object_bytes / MB:.0f} MB of "
        f"objects + {bench.db_bytes / MB:.0f} MB database (`pg_database_size`) = {bench.data_bytes / MB:.0f} MB.",
        "- S3 server: "
        + (
            f"{bench.s3.endpoint if bench.s3 else '?'} (an external server given with --s3-endpoint; its CPU is not "
            "measured, the S3 server columns read 0)"
            if external
            else "SeaweedFS (`weed mini`, one process: master, volume, filer, S3 gateway) started by the harness on "
            "its own data directory on this machine; its CPU is measured beside each pipeline and excluded from "
            "the pipeline's own"
        )
        + "; PostgreSQL is the machine's server.",
        f"- Runs: {bench.runs} per pipeline; tables show the median and (min–max) of wall time. CPU is user+system "
        "of the whole process tree (each member's own CPU as last sampled, or the waited-for descendants' rusage "
        "if larger); peak RSS is the largest `VmHWM` of any single process of the tree (sampled every 0.1 s). "
        "Throughput = dataset bytes (or the part restored) / median wall.",
        "",
    ]
    goals = all_goals(bench)
    lines += [
        "## Goals",
        "",
        "Computed from this run's own figures (same data, same S3 server).",
        "",
        "| issue | goal | measured | verdict | where missed, the measured reason |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {g.issue} | {cell(g.text)} | {g.measured} | {'met' if g.met else '**not met**'} | "
        f"{cell(g.reason) if not g.met else ''} |"
        for g in goals
    ]
    lines += [""]
    lines += safe(
        bench, lambda: headline(bench), ["(headline not produced: a pipeline was not measured)", ""]
    )
    for group, title in (
        ("backup", "Backup"),
        ("export", "Baseline export steps"),
        ("floor", "Floors: the same bytes, raw, with the same server"),
        ("restore", "Restore"),
        ("cli", "Archive CLI (offline decrypt / verify of one part)"),
    ):
        lines += table(bench, group, title)
    for section in (
        floors_section,
        ratios,
        time_section,
        cpu_section,
        overheads_section,
        processes,
        s3_section,
        archive_section,
    ):
        lines += safe(bench, partial(section, bench), [f"({section.__name__} not produced)", ""])
    # Issue 18's chain, measured by the `--chain` sub-mode: regenerated from its JSON, not re-run.
    lines += safe(bench, lambda: incr_chain.section(incr_chain.load()), [])
    for title, text in bench.cprofiles.items():
        lines += [f"### cProfile: {title}", "", "```", text, "```", ""]
    method = [
        "backup_job and restore_job run as `dagster job execute -m backup_pipeline.definitions -a defs -j …` "
        "(the code location as deployed: settings from environment variables, the multiprocess executor, "
        "a temporary DAGSTER_HOME on SQLite), one process per step.",
        "Baselines run the same data: `pg_dump -Fc` to a file and every object downloaded to disk first "
        "(plaintext on disk, which backup_pipeline never writes), then the archive/encrypt step on those files.",
        "Restores: restore_job writes the objects back into the S3 server (buckets emptied first) and the database "
        "into a new database, after authenticating every part; the baselines without “→ S3” only unpack files to "
        "local disk (and `pg_restore` into a new database).",
        "Floors (`floors.py`): a fresh Python process lists and GETs every object to nowhere, or PUTs every "
        "object of the dataset from memory, largest first, on 1 or 8 threads (the jobs' parallelism); the "
        "figure is the transfer alone (interpreter start and preparing the documents' bytes excluded; the "
        "process's own wall time is in the floor table). `pg_dump`/`pg_restore` alone are timed as processes.",
        "By default (the rows without “incremental on”) a backup with nothing changed writes a full new set; "
        "with `BACKUP_PIPELINE_INCREMENTAL_OBJECTS=true` (rows “incremental on”, a folder of their own) a set "
        "uploads only new and changed objects plus the full database dump and the inventories; restic's second "
        "run deduplicates.",
    ]
    lines += ["## Notes", "", *[f"- {n}" for n in [*method, *bench.notes]], ""]
    generated = "\n".join(lines)
    kept = kept_archive_section()
    if kept:
        generated = generated.rstrip() + "\n\n" + kept
    DOC.write_text(generated.rstrip() + "\n")
    CHART.parent.mkdir(parents=True, exist_ok=True)
    bars = [
        Bar(x.label, x.mbps, x.kind, x.group)
        for x in bench.series.values()
        if x.group in ("backup", "restore")
    ]
    CHART.write_text(
        throughput_svg(
            bars,
            title=f"Throughput per pipeline, MB/s ({'quick' if bench.quick else 'full'} dataset, median of {bench.runs})",
        )
    )
    bench.log(f"wrote {DOC} and {CHART}")


def headline(bench: Bench) -> list[str]:
    s = bench.series
    return [
        "![throughput per pipeline](bench/throughput.svg)",
        "",
        f"Headline: backup job → local {s['ours_local'].wall:.1f} s ({s['ours_local'].mbps:.0f} MB/s), "
        f"restore job (full) {s['ours_restore'].wall:.1f} s ({s['ours_restore'].mbps:.0f} MB/s).",
        "",
    ]


def table(bench: Bench, group: str, title: str) -> list[str]:
    rows = [x for x in bench.series.values() if x.group == group]
    if not rows:
        return []
    lines = [
        f"## {title}",
        "",
        "| pipeline | wall s (min–max) | MB/s | CPU s | CPU s/GB | peak RSS MB (process) | output MB | S3 server CPU s "
        "| Drive server CPU s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for x in rows:
        lo, hi = x.spread("wall_s")
        top = max(x.runs, key=lambda r: r.peak_rss_mb)
        out = statistics.median(r.output_bytes for r in x.runs)
        name = f"**{x.label}**" if x.kind == "ours" else cell(x.label)
        lines.append(
            f"| {name} | {x.wall:.1f} ({lo:.1f}–{hi:.1f}) | {x.mbps:.0f} | {x.cpu:.1f} | {x.cpu_per_gb:.1f} | "
            f"{x.peak:.0f} ({top.largest_process()}) | {out / MB:.0f} | {x.watched('s3'):.1f} | {x.watched('drive'):.1f} |"
        )
    return [*lines, ""]


def floors_section(bench: Bench) -> list[str]:
    details = bench.floor_details
    if not details:
        return []
    lines = [
        "### Floor details (first run of each)",
        "",
        "| floor | transfer s | of which listing s | largest object alone s | process wall s (start + prepare + transfer) |",
        "|---|---|---|---|---|",
    ]
    for key, d in details.items():
        largest = d.get("largest_seconds")
        listing = d.get("listing_seconds")
        lines.append(
            f"| {cell(bench.series[key].label)} | {d['seconds']:.1f} | "
            f"{'' if listing is None else f'{listing:.1f}'} | {'' if largest is None else f'{largest:.1f}'} | "
            f"{d['process_wall_s']:.1f} |"
        )
    return [*lines, ""]


def ratios(bench: Bench) -> list[str]:
    s = bench.series
    base_export = s["pg_dump"].wall + s["export"].wall
    pairs = [
        (
            "backup_job → local",
            s["ours_local"].wall,
            "its floor: max(pg_dump, raw GET 8 streams)",
            max(s["floor_pg_dump"].wall, s["floor_get8"].wall),
        ),
        (
            "backup_job → local",
            s["ours_local"].wall,
            "pg_dump + export + tar | pigz | age",
            base_export + s["pigz"].wall,
        ),
        (
            "backup_job → local",
            s["ours_local"].wall,
            "pg_dump + export + tar | gzip -1 | age",
            base_export + s["gzip"].wall,
        ),
        (
            "backup_job → local",
            s["ours_local"].wall,
            "pg_dump + export + restic backup (first)",
            base_export + s["restic1"].wall,
        ),
        (
            "backup_job → local, nothing changed",
            s["ours_second"].wall,
            "pg_dump + export + restic backup (second)",
            base_export + s["restic2"].wall,
        ),
        *(
            [
                (
                    "backup_job → local, incremental on, nothing changed",
                    s["ours_incr_same"].wall,
                    "pg_dump -Fc + restic backup (second; its files already on disk)",
                    s["pg_dump"].wall + s["restic2"].wall,
                )
            ]
            if "ours_incr_same" in s
            else []
        ),
        (
            "backup_job → Drive test server",
            s["ours_drive"].wall,
            "pg_dump + export + tar | pigz | age",
            base_export + s["pigz"].wall,
        ),
        (
            "restore_job full",
            s["ours_restore"].wall,
            "its floor: raw PUT 8 streams + pg_restore",
            s["floor_put8"].wall + s["floor_pg_restore"].wall,
        ),
        (
            "restore_job full",
            s["ours_restore"].wall,
            "age -d | gunzip | tar x + objects → S3 + pg_restore",
            s["base_restore_s3"].wall,
        ),
        (
            "restore_job full",
            s["ours_restore"].wall,
            "age -d | gunzip | tar x + pg_restore (local disk)",
            s["base_restore"].wall,
        ),
        (
            "restore_job files",
            s["ours_restore_files"].wall,
            "restic restore + raw PUT 8 streams",
            s["restic_restore"].wall + s["floor_put8"].wall,
        ),
        (
            "restore_job files",
            s["ours_restore_files"].wall,
            "restic restore + objects → S3 (1 stream)",
            s["restic_restore_s3"].wall,
        ),
        (
            "restore_job one bucket",
            s["ours_restore_bucket"].wall,
            "age -d | gunzip | tar x (one bucket, local disk)",
            s["base_restore_bucket"].wall,
        ),
    ]
    lines = [
        "## Ratios backup_pipeline / baseline (median wall time; < 1 means backup_pipeline is faster)",
        "",
        "| backup_pipeline | s | baseline | s | ratio |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {cell(a)} | {x:.1f} | {cell(b)} | {y:.1f} | **{x / y:.2f}** |" for a, x, b, y in pairs]
    return [*lines, ""]


def time_section(bench: Bench) -> list[str]:
    lines = [
        "## Where each job's wall time goes (Dagster event log, median over runs)",
        "",
        "| run | wall s | launch → RUN_START s | RUN_START → first data step s | **launch → first byte s** | "
        "data steps span s | after last data step s | RUN_SUCCESS → exit s | no op running s | worker spawns s "
        "(total; median per step) | steps |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in bench.series.values():
        if not x.timelines:
            continue

        def med(key: str, x: Series = x) -> float:
            return x.timeline(key)

        lines.append(
            f"| {cell(x.label)} | {x.wall:.1f} | {med('launch_to_run_start'):.1f} | "
            f"{med('launch_to_first_byte') - med('launch_to_run_start'):.1f} | **{med('launch_to_first_byte'):.1f}** | "
            f"{med('data_span'):.1f} | {med('tail'):.1f} | {med('run_end_to_exit'):.1f} | {med('no_op_running'):.1f} | "
            f"{med('worker_spawn_total'):.1f}; {med('worker_spawn_median'):.1f} | {med('steps'):.0f} |"
        )
    lines += [
        "",
        "launch → RUN_START: `dagster job execute` starting, importing the code location and creating the run. "
        "First byte: STEP_START of the first step that moves data (dump, export, part verification, database or "
        "bucket restore). Data steps span: first data step start → last data step end. After: finalize / manifest "
        "/ checks / swap and bookkeeping steps up to RUN_SUCCESS. No op running: RUN_START → RUN_SUCCESS time "
        "when no step was executing (op boundaries, event writes, worker start). Worker spawn: "
        "STEP_WORKER_STARTING → STEP_START (a process forked from the run's forkserver, which preloaded dagster "
        "and the code location; the first step also waits for the forkserver to start).",
        "",
    ]
    for key in ("ours_local", "ours_restore"):
        job = bench.series.get(key)
        if job is None or not job.timelines:
            continue
        t = job.median_timeline()
        lines += [
            f"### Steps of the median run: {job.label} ({t.wall:.1f} s)",
            "",
            "| step | worker spawn s | starts at s (from launch) | runs s | moves data |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {cell(step.key)} | {step.spawn:.1f} | {t.rel(step.start):.1f} | {step.end - step.start:.1f} | "
            f"{'yes' if step.moves_data else ''} |"
            for step in t.steps
        ]
        lines.append("")
    return lines


def cpu_section(bench: Bench) -> list[str]:
    if not bench.profiles:
        return []
    lines = [
        "## Where each job's CPU goes (py-spy, every process and thread of one more run)",
        "",
        "Samples of running (not waiting) Python threads at 100 Hz, given to the innermost frame's activity "
        "(`profiles.CATEGORIES`); time in C (zlib, OpenSSL, sockets) counts for the Python function that called "
        "it. pg_dump / pg_restore and the S3 server are other programs and not sampled.",
        "",
    ]
    for name, profile in bench.profiles.items():
        total = profile.seconds(profile.total)
        lines += [
            f"### {name}_job: {total:.1f} CPU s sampled",
            "",
            "| activity | CPU s | share |",
            "|---|---|---|",
        ]
        lines += [
            f"| {cell(activity)} | {profile.seconds(n):.1f} | {100 * n / profile.total:.0f} % |"
            for activity, n in profile.by_activity.most_common()
        ]
        lines += ["", "| process | CPU s |", "|---|---|"]
        lines += [f"| {cell(p)} | {profile.seconds(n):.1f} |" for p, n in profile.by_process.most_common()]
        lines += ["", "Innermost functions with the most samples:", "", "| function | CPU s |", "|---|---|"]
        lines += [f"| `{f}` | {profile.seconds(n):.1f} |" for f, n in profile.by_function.most_common(12)]
        lines.append("")
    return lines


@dataclass(frozen=True)
class Overhead:
    seconds: float
    unit: str  # "wall s" | "CPU s"
    title: str
    evidence: str
    remedy: str


def measured_overheads(bench: Bench) -> list[Overhead]:
    """The overheads that keep the jobs from their floor, each with its measured size."""
    s = bench.series
    found: list[Overhead] = []
    backup, restore = s.get("ours_local"), s.get("ours_restore")
    if backup and backup.timelines:
        t = backup.median_timeline()
        large = [st for st in t.steps if st.key.startswith("export_bucket") and "large" in st.key]
        floor_largest = bench.floor_details.get("floor_get8", {}).get("largest_seconds")
        if large and floor_largest:
            step = large[0]
            found.append(
                Overhead(
                    (step.end - step.start) - floor_largest,
                    "wall s",
                    "Single-stream part for the largest bucket",
                    f"export of `{ds_large()}` (one {bench.spec.large_object_bytes / 2**20:.0f} MiB object) ran "
                    f"{step.end - step.start:.1f} s in one step, one stream (GET → tar → gzip → encrypt → write); the "
                    f"raw GET of that object alone took {floor_largest:.1f} s; it ended "
                    f"{t.rel(step.end):.1f} s after launch of a {t.wall:.1f} s run",
                    "split a bucket's part by size (e.g. a new part every 256 MiB of input, or one part per object "
                    "above it) so a large bucket becomes several parts exported by parallel steps/threads, and read "
                    "an object above ~64 MiB with parallel ranged GETs into one ordered stream",
                )
            )
        f = t.figures()
        found.append(
            Overhead(
                f["launch_to_first_byte"],
                "wall s",
                "Backup launch latency (launch → first data step)",
                f"launch → RUN_START {f['launch_to_run_start']:.1f} s, then plan_backup and the workers' spawn "
                f"{f['launch_to_first_byte'] - f['launch_to_run_start']:.1f} s",
                "start the dump and the bucket exports without waiting for a separate planning step's process: "
                "plan in the run coordinator (a run-level hook or the first op in-process) and keep the forkserver "
                "warm; the launch itself (`dagster job execute`, imports) is Dagster's",
            )
        )
        found.append(
            Overhead(
                f["tail"] + f["run_end_to_exit"],
                "wall s",
                "Backup tail (finalize, manifest, checks) and exit",
                f"last data step end → RUN_SUCCESS {f['tail']:.1f} s, RUN_SUCCESS → exit {f['run_end_to_exit']:.1f} s",
                "run finalize and record_backup_checks in one step; the re-stat of every part is a few requests",
            )
        )
    if restore and restore.timelines:
        t = restore.median_timeline()
        f = t.figures()
        verify = [st for st in t.steps if st.key.startswith("verify_restore_parts")]
        if verify:
            v = verify[0]
            found.append(
                Overhead(
                    v.end - v.start,
                    "wall s",
                    "Restore authenticates every part, then streams it again",
                    f"verify_restore_parts read and authenticated all parts for {v.end - v.start:.1f} s before the "
                    "database and bucket steps read them a second time",
                    "one pass: the STREAM container already releases plaintext only after each chunk's tag verified; "
                    "verify the manifest's SHA-256 of a part while restoring it (database into the scratch DB, which "
                    "is dropped on failure; objects into the bucket only as their chunk authenticates), and keep pass 1 "
                    "only for dry runs — or run pass 1 of part N+1 while part N restores",
                )
            )
        bookkeeping = [st for st in t.steps if not st.moves_data]
        found.append(
            Overhead(
                sum(st.end - st.start for st in bookkeeping) + f["no_op_running"],
                "wall s",
                f"Restore graph: {len(t.steps)} steps, of which {len(bookkeeping)} move no data",
                ", ".join(f"{st.key} {st.end - st.start:.1f} s" for st in bookkeeping)
                + f"; no op running {f['no_op_running']:.1f} s (worker spawns {f['worker_spawn_total']:.1f} s)",
                "fold start_restore, safety_backup (a no-op for a new target database), fan_out_buckets and "
                "finish_restore into the data steps or run them in the coordinator; each step costs a worker "
                "spawn and event writes even when it does nothing",
            )
        )
        found.append(
            Overhead(
                f["launch_to_first_byte"],
                "wall s",
                "Restore launch latency (launch → first data step)",
                f"launch → RUN_START {f['launch_to_run_start']:.1f} s, start_restore and spawns "
                f"{f['launch_to_first_byte'] - f['launch_to_run_start']:.1f} s",
                "as for the backup: resolve the set in the first data step",
            )
        )
    for name, job_key, floor_key in (
        ("backup", "ours_local", "floor_get8"),
        ("restore", "ours_restore", "floor_put8"),
    ):
        profile = bench.profiles.get(name)
        if profile is None or job_key not in s or floor_key not in s:
            continue
        per_object = (
            profile.by_activity["S3 object loop (backup_buckets / restore buckets)"]
            + profile.by_activity["S3 requests (HTTP, signing, TLS-free sockets)"]
            + profile.by_activity["listing (ListObjectsV2)"]
        )
        floor_cpu = s[floor_key].cpu
        found.append(
            Overhead(
                profile.seconds(per_object) - floor_cpu,
                "CPU s",
                f"{name.capitalize()}: per-object Python work around the S3 requests",
                f"object loop + S3 requests + listing {profile.seconds(per_object):.1f} CPU s in the job "
                f"({1000 * profile.seconds(per_object) / max(bench.object_count, 1):.2f} ms per object) vs "
                f"{floor_cpu:.1f} CPU s for the whole raw transfer process ({s[floor_key].label}); hashing "
                f"{profile.seconds(profile.by_activity['hashing (SHA-256/MD5)']):.1f} s, compression "
                f"{profile.seconds(profile.by_activity['compressing / decompressing']):.1f} s, encryption "
                f"{profile.seconds(profile.by_activity['encrypting / decrypting']):.1f} s, Dagster "
                f"{profile.seconds(profile.by_activity['Dagster (events, storage, executor, op wiring)']):.1f} s",
                "hash each body once (one SHA-256 per object, reused for the manifest and the part's plaintext "
                "hash only where needed), read small bodies with `urllib3` directly into the tar writer's buffer "
                "instead of per-object generator chains, and batch per-object bookkeeping (inventory rows, "
                "progress) instead of doing it per request",
            )
        )
    return sorted(found, key=lambda o: -o.seconds)


def ds_large() -> str:
    from .dataset import BUCKET_LARGE

    return BUCKET_LARGE


def overheads_section(bench: Bench) -> list[str]:
    found = measured_overheads(bench)
    if not found:
        return []
    lines = [
        "## Analysis: what keeps the jobs from their floor, largest first",
        "",
        "Measured in this run (event log of the median run, py-spy of one more run); the remedy is a "
        "recommendation for the code that owns it, not a measured result.",
        "",
    ]
    for i, o in enumerate(found, 1):
        lines += [f"{i}. **{o.title}: {o.seconds:.1f} {o.unit}.** {o.evidence}. *Remedy:* {o.remedy}.", ""]
    return lines


def processes(bench: Bench) -> list[str]:
    lines = [
        "## Peak RSS per process (max over runs)",
        "",
        "| pipeline | processes (peak RSS MB) |",
        "|---|---|",
    ]
    for x in bench.series.values():
        merged: dict[str, float] = {}
        for r in x.runs:
            for p in r.processes:
                merged[p.label] = max(merged.get(p.label, 0.0), p.peak_rss_mb)
        text = ", ".join(f"{k} {v:.0f}" for k, v in sorted(merged.items(), key=lambda kv: -kv[1])[:6])
        lines.append(f"| {cell(x.label)} | {text} |")
    return [*lines, ""]


def s3_section(bench: Bench) -> list[str]:
    if bench.external_s3:
        return []
    s = bench.series
    lines = [
        "## The S3 server's own CPU (SeaweedFS, excluded from every pipeline's CPU)",
        "",
        "| pipeline | wall s | S3 server CPU s | share of wall |",
        "|---|---|---|---|",
    ]
    for key in (
        "floor_get1",
        "floor_get8",
        "export",
        "ours_local",
        "floor_put1",
        "floor_put8",
        "base_restore_s3",
        "ours_restore",
        "ours_restore_files",
    ):
        if key in s:
            x = s[key]
            lines.append(
                f"| {cell(x.label)} | {x.wall:.1f} | {x.watched('s3'):.1f} | {100 * x.watched('s3') / x.wall:.0f} % |"
            )
    return [*lines, ""]


def archive_section(bench: Bench) -> list[str]:
    rows = getattr(bench, "archive_rows", {})
    if not rows:
        return []
    lines = [
        "## Issue 3 goal: the archive micro-benchmark, run by the harness",
        "",
        f"`python -m backup_pipeline_tests.bench.bench_archive --gib {bench.archive_gib}` (its own dataset: 60 % "
        "media-like random files, 40 % log text), "
        f"{bench.args.archive_runs or bench.runs} run(s), median:",
        "",
        "| pipeline | wall s | MB/s (min–max) | peak RSS MB |",
        "|---|---|---|---|",
    ]
    for name, (wall, mbps, lo, hi, rss) in rows.items():
        lines.append(f"| {cell(name)} | {wall:.1f} | {mbps:.0f} ({lo:.0f}–{hi:.0f}) | {rss:.0f} |")
    return [*lines, ""]


#: Hand-written sections of the existing doc, kept verbatim: their figures come from other scripts
#: (bench_archive.py; pitr_gap.py, whose hour-long run the harness does not repeat).
KEPT_SECTIONS = (
    "Archive",
    "Point-in-time recovery (issue 20)",
    "Single-object restore (issue 18)",
    "A bucket of 200 000 objects (issue 18)",  # bench/many_objects.py
)


def kept_archive_section() -> str:
    """The hand-written sections (``KEPT_SECTIONS``) of the existing doc, kept verbatim."""
    if not DOC.exists():
        return ""
    text = DOC.read_text()
    kept = []
    for title in KEPT_SECTIONS:
        match = re.search(rf"^## {re.escape(title)}[ \t]*\n.*?(?=^## |\Z)", text, flags=re.M | re.S)
        if match:
            kept.append(match.group(0).rstrip())
    return "\n\n".join(kept) + "\n" if kept else ""
