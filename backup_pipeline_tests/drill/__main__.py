"""``python -m backup_pipeline_tests.drill [--quick] [--only TEXT] [--output PATH]``: the fault matrix.

Starts its own world (S3, Drive test server, databases, webserver + daemon), runs every row
(or the quick subset), prints one line per row and writes ``docs/reliability.md``.
Exit 0 when no row lost data or hit a drill error, 1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from .matrix import CASES, run_cases
from .report import now, render
from .scenarios import Outcome
from .world import DrillData, World

REPO_ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="drill", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="only the rows marked quick (~1/3)")
    parser.add_argument("--only", action="append", default=[], help="rows whose name contains TEXT")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "docs" / "reliability.md")
    parser.add_argument("--workdir", type=Path, default=None, help="kept afterwards (default: a temp dir)")
    args = parser.parse_args(argv)

    cases = [c for c in CASES if (not args.quick or c.quick)]
    if args.only:
        cases = [c for c in cases if any(t.lower() in c.name.lower() for t in args.only)]
        if not cases:
            parser.error(f"--only {args.only}: no row matches")
    data = DrillData()
    command = (
        "bash scripts/drill.sh"
        + (" --quick" if args.quick else "")
        + "".join(f" --only {t!r}" for t in args.only)
    )
    started, t0 = now(), time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f}s] {message}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bp-drill-") as tmp:
        root = args.workdir or Path(tmp)
        with World(root, data, log=log) as world:
            log(f"world up (destination tmpfs: {world.tmpfs}); {len(cases)} row(s)")
            rows = run_cases(world, cases, log=log)
    seconds = time.monotonic() - t0
    described = (
        f"sample app (3 buckets, {data.small_objects} small objects, large objects "
        f"{', '.join(f'{b >> 20} MiB' for b in data.large_object_bytes)}, a {data.filler_rows}-row filler table)"
    )
    args.output.write_text(render(rows, command, started, seconds, described))
    log(f"wrote {args.output}")
    bad = [r for r in rows if r.outcome in (Outcome.DATA_LOST, Outcome.ERROR)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
