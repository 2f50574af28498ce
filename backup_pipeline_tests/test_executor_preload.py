"""The multiprocess executor's forkserver preloads what a step worker imports before its op runs.

A step worker is forked from the forkserver; whatever the forkserver did not import, every
worker imports again (measured: the instance's storage modules cost 1-2.6 s per step). This
test plays a worker's start in a fresh interpreter: preload, then open the instance a step
reports to (SQLite, as the demo and the bench; PostgreSQL's storage module is preloaded too).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from backup_pipeline.executors import FORKSERVER_PRELOAD

WORKER_START = """
import importlib, json, sys
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
before = set(sys.modules)
from dagster import DagsterInstance
instance = DagsterInstance.from_config(sys.argv[2])
instance.get_runs(limit=1)
instance.event_log_storage  # the storage a step writes its events to
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_a_step_worker_imports_no_storage_module_after_the_fork(tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    result = subprocess.run(
        [sys.executable, "-c", WORKER_START, json.dumps(list(FORKSERVER_PRELOAD)), str(home)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    imported = json.loads(result.stdout.strip().splitlines()[-1])
    heavy = [m for m in imported if m.startswith(("sqlalchemy", "alembic", "dagster._core.storage"))]
    assert heavy == [], f"{len(heavy)} modules imported after the fork, e.g. {heavy[:5]}"
    assert "dagster_postgres" in FORKSERVER_PRELOAD  # the production instance's storage
