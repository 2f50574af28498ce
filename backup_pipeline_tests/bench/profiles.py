"""Profiles of one job run: where its CPU goes, by activity, across every process and thread.

py-spy (``record --subprocesses --format raw``) samples the run as deployed (multiprocess
executor: the ``dagster job execute`` process, the forkserver and each step worker, every
thread) without changing it; idle samples (a thread blocked in a socket read, a lock or a
sleep) are left out, so samples ÷ rate ≈ CPU seconds. Each sample is given to the activity of
the innermost frame that matches a rule below (``CATEGORIES``): a SHA-256 update called from
the archive writer is hashing, not archiving. py-spy sees Python frames only: time inside a C
call (zlib, OpenSSL, a socket) counts for the Python function that made it, which is what the
rules match. cProfile (main thread of one in-process run) is the fallback without py-spy.
"""

from __future__ import annotations

import io
import pstats
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_RATE = 100  # Hz

# (activity, pattern on "function (path:line)"), tried on each frame from the innermost out.
CATEGORIES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("hashing (SHA-256/MD5)", r"HashingCounter|_HashingReader|\bsha256\b|object_sha256|hashlib"),
        ("compressing / decompressing", r"gzip_members\.py|\bzlib\b|gunzip|compress"),
        ("encrypting / decrypting", r"stream_crypto\.py|aead|_encrypt_payload|_decrypt_payload"),
        ("tar framing (pack / unpack)", r"tar_parts\.py|tarfile\.py"),
        ("listing (ListObjectsV2)", r"iter_listing|list_objects|_listing|ExistingSizes|ElementTree|xml"),
        (
            "S3 requests (HTTP, signing, TLS-free sockets)",
            r"urllib3|minio/|http/client\.py|socket\.py|ssl\.py",
        ),
        ("destination write / read", r"destinations/"),
        (
            "pg_dump / pg_restore pipes",
            r"backup_database\.py|restore/database\.py|restore/pipes\.py|subprocess\.py",
        ),
        ("S3 object loop (backup_buckets / restore buckets)", r"backup_buckets\.py|restore/buckets\.py"),
        ("importing modules (process start)", r"<frozen importlib|_find_and_load|exec_module"),
        ("Dagster (events, storage, executor, op wiring)", r"dagster|sqlalchemy|sqlite|alembic|grpc"),
    )
)
OTHER = "other"


@dataclass
class CpuProfile:
    """CPU samples of one run, per activity and per process kind."""

    rate: int
    by_activity: Counter[str] = field(default_factory=Counter)
    by_process: Counter[str] = field(default_factory=Counter)
    by_function: Counter[str] = field(default_factory=Counter)
    total: int = 0

    def seconds(self, samples: int) -> float:
        return samples / self.rate


# ``process PID:"command line"`` (the command line may hold ``;``: python -c code), then frames.
_HEADER = re.compile(r'^process (\d+):"(.*?)";(?=\S+ \()')


def _process_kind(command: str, frames: Sequence[str]) -> str:
    if "multiprocessing.forkserver" in command:
        # The forkserver preloads dagster and the code location, then forks one worker per step
        # (a worker's stack goes through the forkserver's _serve_one).
        if any("_serve_one" in f for f in frames):
            return "step workers (forked)"
        return "forkserver (preloading dagster and the code location)"
    if not command or "dagster" in command:
        return "dagster job execute (run coordinator)"
    return "other process (" + command.split(" ")[-1][-40:] + ")"


def classify(frames: Sequence[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in CATEGORIES:
            if pattern.search(frame):
                return name
    return OTHER


def parse_raw(text: str, rate: int = SAMPLE_RATE) -> CpuProfile:
    """py-spy's raw (collapsed-stack) output: ``process …;frame;…;frame COUNT`` per line."""
    profile = CpuProfile(rate)
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        match = _HEADER.match(stack)
        command, rest = (match.group(2), stack[match.end() :]) if match else ("", stack)
        frames = [f for f in rest.split(";") if f and not f.startswith("thread ")]
        profile.total += count
        profile.by_activity[classify(frames)] += count
        profile.by_process[_process_kind(command, frames)] += count
        if frames:
            profile.by_function[_short(frames[-1])] += count
    return profile


def _short(frame: str) -> str:
    frame = re.sub(r"\(\S*/site-packages/", "(", frame)
    frame = re.sub(r"\(\S*/(backup_pipeline[^/]*/)", r"(\1", frame)
    return re.sub(r"\(\S*/lib/python3\.\d+/", "(", frame)


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record(command: Sequence[str], env: Mapping[str, str], out: Path) -> CpuProfile:
    """Run ``command`` under ``py-spy record`` and parse its samples (non-idle, all threads)."""
    spy = py_spy()
    assert spy is not None
    result = subprocess.run(
        [
            spy,
            "record",
            "--subprocesses",
            "--format",
            "raw",
            "--rate",
            str(SAMPLE_RATE),
            "--nonblocking",  # do not pause the sampled threads: the run's timing stays its own
            "-o",
            str(out),
            "--",
            *command,
        ],
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"py-spy record failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}"
        )
    return parse_raw(out.read_text())


def cprofile_text(out: Path, repo: Path) -> str:
    """Top functions of a cProfile dump (fallback when py-spy is missing)."""
    buffer = io.StringIO()
    stats = pstats.Stats(str(out), stream=buffer)
    stats.sort_stats("tottime").print_stats(15)
    stats.sort_stats("cumulative").print_stats("backup_pipeline/(services|archive|destinations)", 15)
    text = buffer.getvalue()
    start = text.find("   ncalls")
    lines = [
        line.replace(str(repo) + "/", "").replace(sys.prefix + "/", "") for line in text[start:].splitlines()
    ]
    site = re.compile(r"/\S*/site-packages/")
    return "\n".join(site.sub("", line) for line in lines if line.strip())
