"""Measuring a command from outside: wall time, CPU time of its whole process tree, peak RSS per process.

CPU time is the larger of ``getrusage(RUSAGE_CHILDREN)`` around the run (every descendant that
was waited for) and the sum of each tree member's own CPU time as last sampled (processes a
forkserver forks are reaped by it, not by us, and a forkserver killed at the end takes its
children's time with it); peak RSS from each process's ``VmHWM`` (the kernel's
own high-water mark, so sampling every 0.1 s misses nothing but the last growth of a process that
exits between two samples). Long-lived servers the command talks to (moto, the Drive test server,
PostgreSQL) are not in the tree; their CPU time over the run is read separately via ``watch``.
"""

from __future__ import annotations

import os
import resource
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil


@dataclass
class ProcessPeak:
    label: str
    peak_rss_mb: float


@dataclass
class Measurement:
    name: str
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    processes: list[ProcessPeak] = field(default_factory=list)
    watched_cpu_s: dict[str, float] = field(default_factory=dict)
    started_at: float = 0.0
    output_bytes: int = 0
    stdout: str = ""

    def largest_process(self) -> str:
        if not self.processes:
            return "-"
        top = max(self.processes, key=lambda p: p.peak_rss_mb)
        return top.label


def _label(proc: psutil.Process) -> str:
    try:
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "?"
    if not cmd:
        return proc.name()
    exe = Path(cmd[0]).name
    if exe.startswith("python"):
        joined = " ".join(cmd[1:4])
        whole = " ".join(cmd)
        if "execute_step" in whole or "multiprocessing" in whole:
            return "python: dagster step worker"
        if "dagster" in joined and "job" in joined:
            return "python: dagster job execute"
        if "-c" in cmd[1:2]:
            return "python: inline script"
        module = cmd[2] if len(cmd) > 2 and cmd[1] == "-m" else Path(cmd[1]).name if len(cmd) > 1 else ""
        return f"python: {module}"
    if exe == "dagster":
        return "dagster: " + " ".join(cmd[1:3])
    return exe


def _hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _cpu_of(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)
    except psutil.NoSuchProcess:
        return 0.0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_measured(
    name: str,
    command: Sequence[str] | str,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    watch: Mapping[str, int] | None = None,
    interval: float = 0.1,
    capture: bool = False,
) -> Measurement:
    """Run ``command`` (a shell string runs under ``bash -o pipefail -c``), fail loudly on a non-zero exit."""
    argv = ["bash", "-o", "pipefail", "-c", command] if isinstance(command, str) else list(command)
    watch = dict(watch or {})
    watched_before = {key: _cpu_of(pid) for key, pid in watch.items()}
    cpu_before = _children_cpu()
    peaks: dict[int, tuple[str, int]] = {}
    own_cpu: dict[int, float] = {}
    started_at = time.time()
    start = time.perf_counter()
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-out-{os.getpid()}-{threading.get_ident()}.log"
    with out_path.open("w+b") as out:
        proc = subprocess.Popen(
            argv,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdout=out if capture else subprocess.DEVNULL,
            stderr=out,
        )
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                tree = []
            for member in tree:
                try:
                    times = member.cpu_times()
                    own_cpu[member.pid] = times.user + times.system
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    pass
                hwm = _hwm_kb(member.pid)
                if hwm:
                    label = peaks[member.pid][0] if member.pid in peaks else _label(member)
                    peaks[member.pid] = (label, max(hwm, peaks.get(member.pid, ("", 0))[1]))
            time.sleep(interval)
        wall = time.perf_counter() - start
        out.seek(0)
        text = out.read().decode(errors="replace")
    out_path.unlink(missing_ok=True)
    cpu = max(_children_cpu() - cpu_before, sum(own_cpu.values()))
    watched = {key: _cpu_of(pid) - watched_before[key] for key, pid in watch.items()}
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: exit {proc.returncode}\n{text[-4000:]}")
    by_label: dict[str, float] = {}
    for label, kb in peaks.values():
        by_label[label] = max(by_label.get(label, 0.0), kb / 1024)
    processes = sorted((ProcessPeak(k, v) for k, v in by_label.items()), key=lambda p: -p.peak_rss_mb)
    return Measurement(
        name=name,
        wall_s=wall,
        cpu_s=cpu,
        peak_rss_mb=max((p.peak_rss_mb for p in processes), default=0.0),
        processes=processes,
        watched_cpu_s=watched,
        started_at=started_at,
        stdout=text if capture else "",
    )


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
