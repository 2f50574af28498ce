"""README command (1), ``scripts/demo.sh``, against this checkout: it starts the embedded S3,
webserver and daemon, makes a first backup, can be rerun, and ``stop`` leaves nothing running.

The demo runs in a temporary directory on free ports with its own database
(DEMO_DIR / DEMO_UI_PORT / DEMO_S3_PORT / DEMO_DATABASE), so a developer's own demo is not
touched, and reuses this virtual environment (DEMO_SKIP_SETUP=1: no pip, no apt).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

from backup_pipeline_tests.fixtures.ports import free_port, port_open
from backup_pipeline_tests.fixtures.postgres import drop_database

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DEMO_SCRIPT = ROOT / "scripts" / "demo.sh"
PID_FILES = ("s3.pid", "webserver.pid", "daemon.pid")
CLI = str(Path(sys.executable).parent / "backup-pipeline")

REPOSITORY_QUERY = """{ repositoryOrError(repositorySelector: {repositoryLocationName: "backup_pipeline",
  repositoryName: "__repository__"}) { ... on Repository { jobs { name } schedules { name } sensors { name } }
  ... on PythonError { message } } }"""
RUN_QUERY = (
    """query($id: ID!) { runOrError(runId: $id) { ... on Run { jobName status tags { key value } } } }"""
)


def _demo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(DEMO_SCRIPT), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def _graphql(port: int, query: str, variables: dict[str, str] | None = None) -> dict:
    response = requests.post(
        f"http://127.0.0.1:{port}/graphql", json={"query": query, "variables": variables or {}}, timeout=120
    )
    response.raise_for_status()
    body = response.json()
    assert not body.get("errors"), body
    return body["data"]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _assert_cli_finds_the_demo(env: dict[str, str], demo_dir: Path, run_id: str) -> None:
    """README: one variable points the CLI at the demo, secrets and webserver address included."""
    settings = demo_dir / "demo.env"
    assert settings.stat().st_mode & 0o077 == 0  # it holds the S3 keys
    cli_env = {k: v for k, v in env.items() if not k.startswith("DEMO_")}
    cli_env["BACKUP_PIPELINE_SETTINGS_FILE"] = str(settings)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([CLI, *args], env=cli_env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
        return result

    backup_ids = {s["backup_id"] for s in json.loads(cli("restore", "--list", "--json").stdout)}
    assert len(backup_ids) == 1  # the first backup, listed without a key
    status = json.loads(cli("storage", "status", "--json").stdout)  # main: S3 keys only from the environment
    assert status["reachable"] and status["primary_bucket_exists"]
    runs = json.loads(cli("history", "--json").stdout)["runs"]  # main: the default port, not the demo's
    assert [r["run_id"] for r in runs] == [run_id] and runs[0]["backup_id"] in backup_ids


def test_demo_starts_backs_up_reruns_and_stops(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    ui_port, s3_port = free_port(), free_port()
    database = f"bp_test_demo_{uuid.uuid4().hex[:10]}"
    # A fresh shell: none of the developer's backup_pipeline or Dagster settings leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKUP_PIPELINE_", "DAGSTER_"))}
    env |= {
        "DEMO_DIR": str(demo_dir),
        "DEMO_UI_PORT": str(ui_port),
        "DEMO_S3_PORT": str(s3_port),
        "DEMO_DATABASE": database,
        "DEMO_SKIP_SETUP": "1",
    }
    pgids: set[int] = set()
    try:
        first = _demo(env)
        log = first.stdout + first.stderr
        assert first.returncode == 0, log
        assert f"Dagster UI: http://127.0.0.1:{ui_port}" in first.stdout, log
        launched = re.search(r"demo: backup_job run (\S+): SUCCESS", first.stdout)
        assert launched, log
        pgids |= {int((demo_dir / name).read_text()) for name in PID_FILES}

        run = _graphql(ui_port, RUN_QUERY, {"id": launched.group(1)})["runOrError"]
        assert run["jobName"] == "backup_job"
        assert run["status"] == "SUCCESS"
        assert {"key": "backup_pipeline/trigger", "value": "demo"} in run["tags"]
        repository = _graphql(ui_port, REPOSITORY_QUERY)["repositoryOrError"]
        assert {
            "backup_job",
            "restore_job",
            "retention_job",
            "delete_backup_job",
            "verify_backup_job",
            "migrate_drive_to_minio",
            "storage_health_job",
        } <= {j["name"] for j in repository["jobs"]}
        assert "backup_schedule" in {s["name"] for s in repository["schedules"]}
        assert repository["sensors"], repository
        # The backup set is complete (manifest written last) in the local destination, and the
        # run history lives in the persistent SQLite home under DEMO_DIR.
        assert list((demo_dir / "backups").glob("*.manifest.bpenc")), sorted(
            p.name for p in (demo_dir / "backups").iterdir()
        )
        assert (demo_dir / "dagster_home" / "history" / "runs.db").is_file()
        assert (demo_dir / "org-secret").stat().st_mode & 0o077 == 0
        _assert_cli_finds_the_demo(env, demo_dir, launched.group(1))

        # Rerun: servers restarted, the existing backup kept, no second (rate-limited) backup.
        second = _demo(env)
        log = second.stdout + second.stderr
        assert second.returncode == 0, log
        assert f"a backup exists already (backup_job run {launched.group(1)}: SUCCESS)" in second.stdout, log
        assert "embedded S3 (moto) already running" in second.stdout, log
        assert requests.get(f"http://127.0.0.1:{ui_port}/server_info", timeout=60).ok
        pgids |= {int((demo_dir / name).read_text()) for name in PID_FILES}
    finally:
        stop = _demo(env, "stop")
        drop_database(database)

    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert not [pgid for pgid in pgids if _group_alive(pgid)]
    assert not port_open(ui_port)
    assert not port_open(s3_port)
    assert not [name for name in PID_FILES if (demo_dir / name).exists()]
