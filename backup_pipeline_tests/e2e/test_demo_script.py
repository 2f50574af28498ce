"""README command (1), ``scripts/demo.sh``, against this checkout: it starts the embedded S3
(SeaweedFS on a data directory under the demo directory), webserver and daemon, makes a first
backup, can be rerun, and ``stop`` leaves nothing running and no socket file behind; started
again after a stop it finds the same buckets, does not reseed, and its first backup restores.

The demo runs in a temporary directory on free ports with its own database
(DEMO_DIR / DEMO_UI_PORT / DEMO_S3_PORT / DEMO_S3_PORT_BASE / DEMO_DATABASE), so a developer's
own demo is not touched, and reuses this virtual environment (DEMO_SKIP_SETUP=1: no pip, no apt).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests
from minio import Minio

from backup_pipeline_tests.fixtures.ports import free_port, port_open
from backup_pipeline_tests.fixtures.postgres import drop_database
from backup_pipeline_tests.fixtures.seaweedfs import ephemeral_port_floor, port_is_free

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


# demo.sh's SeaweedFS ports from DEMO_S3_PORT_BASE (its header): base..base+7 and base+10007.
DEMO_S3_PORT_OFFSETS = (*range(8), 10_007)


def _free_s3_port_base() -> int:
    """A base whose nine ports are free, below the ephemeral range (as demo.sh's default is)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(10_000, ephemeral_port_floor() - 10_010)
        if all(port_is_free(base + offset) for offset in DEMO_S3_PORT_OFFSETS):
            return base
    raise RuntimeError("no free port range for the demo's SeaweedFS")


def _settings(demo_dir: Path) -> dict[str, str]:
    lines = (demo_dir / "demo.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _buckets(demo_dir: Path) -> dict[str, dict[str, str]]:
    """Every object of the demo's S3 server: bucket -> key -> SHA-256 of a sample of its bytes
    (the first 64 KiB of every tenth object, the ETag of the others)."""
    settings = _settings(demo_dir)
    client = Minio(
        settings["BACKUP_PIPELINE_S3_ENDPOINT"].removeprefix("http://"),
        access_key=settings["BACKUP_PIPELINE_S3_ACCESS_KEY"],
        secret_key=settings["BACKUP_PIPELINE_S3_SECRET_KEY"],
        secure=False,
        region="us-east-1",
    )
    found: dict[str, dict[str, str]] = {}
    for bucket in client.list_buckets():
        objects = found.setdefault(bucket.name, {})
        for index, obj in enumerate(client.list_objects(bucket.name, recursive=True)):
            assert obj.object_name is not None
            if index % 10:
                objects[obj.object_name] = f"etag {obj.etag}"
                continue
            response = client.get_object(bucket.name, obj.object_name, length=65536)
            try:
                objects[obj.object_name] = hashlib.sha256(response.read()).hexdigest()
            finally:
                response.close()
                response.release_conn()
    return found


def _weed_sockets(base: int) -> list[Path]:
    """Socket files of the demo's weed left in the system temp folder (weed names them by port)."""
    ports = {str(base + offset) for offset in DEMO_S3_PORT_OFFSETS}
    return [p for p in Path("/tmp").glob("seaweedfs-*.sock") if p.stem.rsplit("-", 1)[-1] in ports]


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


def _cli(env: dict[str, str], demo_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cli_env = {k: v for k, v in env.items() if not k.startswith("DEMO_")}
    cli_env["BACKUP_PIPELINE_SETTINGS_FILE"] = str(demo_dir / "demo.env")
    result = subprocess.run([CLI, *args], env=cli_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
    return result


def _assert_first_backup_restores(
    env: dict[str, str], demo_dir: Path, source_db: str, target_db: str
) -> None:
    """After a restart the first backup still matches the buckets object for object (a dry run
    that overwrites only what differs finds nothing to do) and restores the database elsewhere."""
    keys = ("--org-secret-file", str(demo_dir / "org-secret"), "--json")
    dry = json.loads(
        _cli(env, demo_dir, "restore", "--dry-run", "--conflict-policy", "if_different", *keys).stdout
    )
    assert dry["would_refuse"] == []
    assert dry["buckets"] and all(
        b["completed"] and b["skipped"] > 0 and b["added"] == b["overwritten"] == b["failed"] == 0
        for b in dry["buckets"].values()
    ), dry["buckets"]
    assert all(t["rows_in_backup"] == t["rows_now"] for t in dry["database"]["tables"]), dry["database"]
    backup_id = dry["backup_id"]
    real = json.loads(
        _cli(
            env,
            demo_dir,
            "restore",
            "--no-dry-run",
            "--backup-id",
            backup_id,
            "--confirm",
            f"restore {backup_id}",
            "--scope",
            "database",
            "--target-database",
            target_db,
            *keys,
        ).stdout
    )
    restored = {t["table"]: t["rows"] for t in real["database"]["tables"]}
    assert restored == {t["table"]: t["rows_in_backup"] for t in dry["database"]["tables"]}
    assert restored["public.media_assets"] > 0

    def count(db: str) -> str:
        return subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-Atc", "SELECT count(*) FROM media_assets", db],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    assert count(target_db) == count(source_db)


def _assert_cli_finds_the_demo(env: dict[str, str], demo_dir: Path, run_id: str) -> None:
    """README: one variable points the CLI at the demo, secrets and webserver address included."""
    assert (demo_dir / "demo.env").stat().st_mode & 0o077 == 0  # it holds the S3 keys
    listed = json.loads(_cli(env, demo_dir, "restore", "--list", "--json").stdout)
    backup_ids = {s["backup_id"] for s in listed}
    assert len(backup_ids) == 1  # the first backup, listed without a key
    status = json.loads(_cli(env, demo_dir, "storage", "status", "--json").stdout)  # S3 keys from the file
    assert status["reachable"] and status["primary_bucket_exists"]
    runs = json.loads(_cli(env, demo_dir, "history", "--json").stdout)["runs"]  # the demo's port
    assert [r["run_id"] for r in runs] == [run_id] and runs[0]["backup_id"] in backup_ids


def test_demo_starts_backs_up_reruns_and_stops(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    ui_port, s3_port, s3_base = free_port(), free_port(), _free_s3_port_base()
    database = f"bp_test_demo_{uuid.uuid4().hex[:10]}"
    restored_database = database + "_restored"
    # A fresh shell: none of the developer's backup_pipeline or Dagster settings leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKUP_PIPELINE_", "DAGSTER_"))}
    env |= {
        "DEMO_DIR": str(demo_dir),
        "DEMO_UI_PORT": str(ui_port),
        "DEMO_S3_PORT": str(s3_port),
        "DEMO_S3_PORT_BASE": str(s3_base),
        "DEMO_DATABASE": database,
        "DEMO_SKIP_SETUP": "1",
    }
    pgids: set[int] = set()
    stopped: list[subprocess.CompletedProcess[str]] = []
    try:
        first = _demo(env)
        log = first.stdout + first.stderr
        assert first.returncode == 0, log
        assert f"Dagster UI: http://127.0.0.1:{ui_port}" in first.stdout, log
        assert "embedded S3 (SeaweedFS" in first.stdout, log
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
        assert (demo_dir / "s3" / "identities.json").stat().st_mode & 0o077 == 0  # the S3 keys
        _assert_cli_finds_the_demo(env, demo_dir, launched.group(1))
        buckets = _buckets(demo_dir)
        assert len(buckets) == 3 and all(buckets.values()), {b: len(o) for b, o in buckets.items()}

        # Rerun: servers restarted, the existing backup kept, no second (rate-limited) backup.
        second = _demo(env)
        log = second.stdout + second.stderr
        assert second.returncode == 0, log
        assert f"a backup exists already (backup_job run {launched.group(1)}: SUCCESS)" in second.stdout, log
        assert "embedded S3 (SeaweedFS) already running" in second.stdout, log
        assert requests.get(f"http://127.0.0.1:{ui_port}/server_info", timeout=60).ok
        pgids |= {int((demo_dir / name).read_text()) for name in PID_FILES}

        # Stop: nothing of the demo left running, no weed socket file left in /tmp.
        stopped.append(_demo(env, "stop"))
        assert stopped[-1].returncode == 0, stopped[-1].stdout + stopped[-1].stderr
        assert not [pgid for pgid in pgids if _group_alive(pgid)]
        assert not [p for p in (ui_port, s3_port, s3_base) if port_open(p)]
        assert not _weed_sockets(s3_base)
        assert not list((demo_dir / "s3" / "sockets").glob("*.sock"))

        # Start again after the stop: the same buckets (count and bytes), no reseed, and the
        # first backup still restores.
        third = _demo(env)
        log = third.stdout + third.stderr
        assert third.returncode == 0, log
        assert "sample app already seeded" in third.stdout, log
        assert f"a backup exists already (backup_job run {launched.group(1)}: SUCCESS)" in third.stdout, log
        pgids |= {int((demo_dir / name).read_text()) for name in PID_FILES}
        assert _buckets(demo_dir) == buckets
        _assert_first_backup_restores(env, demo_dir, database, restored_database)
    finally:
        stopped.append(_demo(env, "stop"))
        drop_database(database)
        drop_database(restored_database)

    assert stopped[-1].returncode == 0, stopped[-1].stdout + stopped[-1].stderr
    assert not [pgid for pgid in pgids if _group_alive(pgid)]
    assert not port_open(ui_port)
    assert not port_open(s3_port)
    assert not _weed_sockets(s3_base)
    assert not [name for name in PID_FILES if (demo_dir / name).exists()]
