"""The drill's world: every component a real process, as in production.

One :class:`World` owns an S3 server (SeaweedFS, data on disk), the Drive v3 test server, an application database
on the machine's PostgreSQL, the product's state files, a Dagster home on dagster-postgres
(run monitoring polling every few seconds, so dead runs are found quickly) and ONE
``dagster-webserver`` + ``dagster-daemon`` pair running the product with the multiprocess
executor (the production default). Faults are applied from outside: signals to processes,
``pg_terminate_backend``, the Drive server's control API, bytes changed on the destination.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import psutil
import yaml
from psycopg import sql

from backup_pipeline import ledger
from backup_pipeline.destinations.base import Destination
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.sample_app import SeedSpec, seed_sample_app
from backup_pipeline.settings import load_settings
from backup_pipeline_tests.e2e.e2e_support import ProductFiles, product_env, product_files
from backup_pipeline_tests.fixtures.dagster import DagsterHome, DagsterStack, make_dagster_home
from backup_pipeline_tests.fixtures.drive import (
    SERVICE_ACCOUNT,
    SHARED_DRIVE_ID,
    DriveTestServer,
    write_service_account_key,
)
from backup_pipeline_tests.fixtures.ports import free_port
from backup_pipeline_tests.fixtures.postgres import PgDatabase, admin_connect, create_database, drop_database
from backup_pipeline_tests.fixtures.seaweedfs import SeaweedFSServer

INSTALLATION = "bp-drill"
MiB = 1024 * 1024
BACKUP_JOB = "backup_job"
RESTORE_JOB = "restore_job"
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


@dataclass(frozen=True)
class DrillData:
    """How much data: enough that every phase lasts long enough to be hit by a signal."""

    large_object_bytes: tuple[int, ...] = (20 * MiB,)
    small_objects: int = 200
    filler_rows: int = 200_000  # ~20 MB table: pg_dump runs for a few seconds

    def seed_spec(self) -> SeedSpec:
        return SeedSpec(
            small_objects=self.small_objects,
            large_object_bytes=self.large_object_bytes,
            users=100,
            comments=1000,
            audit_events=1000,
            sessions=50,
        )


def fast_monitoring(home: DagsterHome, max_runtime_seconds: int) -> None:
    """The repository's dagster.yaml with run monitoring polling every 2 s (production: 60 s) and a
    maximum runtime the drill's small runs never reach; everything else unchanged."""
    path = home.path / "dagster.yaml"
    config = yaml.safe_load(path.read_text())
    config["run_monitoring"] = {
        **config.get("run_monitoring", {}),
        "enabled": True,
        "poll_interval_seconds": 2,
        "max_runtime_seconds": max_runtime_seconds,
        # A run that a loaded machine takes over 60 s to start is slow, not dead (60 s failed the
        # kills module once). Not the production 300 s: the whole-tree kill can catch a sensor's
        # run in STARTING, and only this timeout fails it (scenarios.settle waits 420 s).
        "start_timeout_seconds": 180,
        "max_resume_run_attempts": 0,
    }
    path.write_text(yaml.safe_dump(config))


@dataclass
class World:
    root: Path
    data: DrillData = field(default_factory=DrillData)
    max_runtime_seconds: int = 120
    log: Callable[[str], None] = print
    s3: SeaweedFSServer = field(init=False)
    drive: DriveTestServer = field(init=False)
    db: PgDatabase = field(init=False)
    files: ProductFiles = field(init=False)
    home: DagsterHome = field(init=False)
    stack: DagsterStack = field(init=False)
    executor: str = "in_process"
    destination_kind: str = "local"
    local_path: Path | None = None
    tmpfs: bool = False
    _instance: dg.DagsterInstance | None = None
    _stacks_started: int = 0

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> World:
        self.root.mkdir(parents=True, exist_ok=True)
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        self.s3 = SeaweedFSServer(self.root / "seaweedfs")
        self.s3.start()
        self.drive = DriveTestServer(
            port=free_port(), data_dir=self.root / "drive-data", log_path=logs / "drive.log"
        )
        self.drive.start()
        self.db = create_database("bp_drill_app")
        self.files = product_files(self.root)
        self.local_path = self.files.backups_dir
        self.tmpfs = mount_tmpfs(self.local_path, TMPFS_SIZE)
        self.seed()
        self.home = make_dagster_home(self.root / "dagster_home")
        self.start_stack()
        return self

    def __exit__(self, *exc: object) -> None:
        with _quiet():
            self.stack.stop()
        if self._instance is not None:
            with _quiet():
                self._instance.dispose()
        self.s3.close()
        self.drive.stop()
        with _quiet():
            drop_database(self.db.name)
        with _quiet():
            drop_database(self.home.database.name)
        if self.tmpfs:
            subprocess.run(["umount", str(self.files.backups_dir)], check=False)

    def seed(self) -> None:
        with self.db.connect() as conn:
            seed_sample_app(conn, self.s3.client(), self.data.seed_spec())
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS drill_filler AS SELECT g AS id, md5(g::text) || md5((g*7)::text) "
                    "AS payload FROM generate_series(1, {}) g"
                ).format(sql.Literal(self.data.filler_rows))
            )
            conn.commit()

    # --- the product's environment and the Dagster stack ----------------------------------

    def env(self) -> dict[str, str]:
        settings = {"executor": self.executor}
        env = product_env(self.files, self.db.url, self.s3.env(), **settings)
        env["BACKUP_PIPELINE_INSTALLATION_ID"] = INSTALLATION
        assert self.local_path is not None
        env["BACKUP_PIPELINE_LOCAL_DESTINATION_PATH"] = str(self.local_path)
        if self.destination_kind == "google_drive":
            key = write_service_account_key(self.root / "drive-sa.json", self.drive.token_uri)
            env.update(
                {
                    "BACKUP_PIPELINE_DESTINATION": "google_drive",
                    "BACKUP_PIPELINE_DRIVE_AUTH_MODE": "shared_drive",
                    "BACKUP_PIPELINE_DRIVE_CREDENTIALS_FILE": str(key),
                    "BACKUP_PIPELINE_DRIVE_API_ROOT": self.drive.url,
                    "BACKUP_PIPELINE_DRIVE_TOKEN_URI": self.drive.token_uri,
                    "BACKUP_PIPELINE_DRIVE_SHARED_DRIVE_ID": SHARED_DRIVE_ID,
                }
            )
        return env

    def start_stack(self) -> None:
        # Multiprocess runs start a process per step: on 2 shared cores they take minutes.
        fast_monitoring(self.home, self.max_runtime_seconds * (3 if self.executor == "multiprocess" else 1))
        log_dir = self.root / "logs" / f"stack-{self._stacks_started}"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._stacks_started += 1
        self.stack = DagsterStack(home=self.home, port=free_port(), log_dir=log_dir, env=self.env())
        self.stack.start()

    def reconfigure(self, destination: str | None = None, executor: str | None = None) -> None:
        """Restart the servers with other settings (settings are read when the code location loads)."""
        self.stack.stop()
        kind = self.destination_kind = destination or self.destination_kind
        self.executor = executor or self.executor
        if kind == "google_drive":
            self.drive.reset()
            self.drive.add_shared_drive(SHARED_DRIVE_ID, {SERVICE_ACCOUNT: "organizer"})
        self.start_stack()

    def stack_processes(self) -> list[psutil.Process]:
        """Webserver, daemon, their code servers, run workers and step processes."""
        found: dict[int, psutil.Process] = {}
        for proc in self.stack.processes.values():
            try:
                top = psutil.Process(proc.pid)
                found[top.pid] = top
                for child in top.children(recursive=True):
                    found[child.pid] = child
            except psutil.NoSuchProcess:
                continue
        # Run workers and step processes may have been started in their own sessions.
        for pid in list(found):
            with _quiet():
                for child in found[pid].children(recursive=True):
                    found[child.pid] = child
        return list(found.values())

    def kill_stack_tree(self) -> int:
        """SIGKILL every process of the stack at once (a host crash, an OOM of the container)."""
        procs = self.stack_processes()
        for proc in procs:
            with _quiet():
                proc.send_signal(signal.SIGKILL)
        for proc in self.stack.processes.values():
            with _quiet():
                proc.wait(10)
        psutil.wait_procs(procs, timeout=10)
        self.stack.processes.clear()
        return len(procs)

    @property
    def instance(self) -> dg.DagsterInstance:
        if self._instance is None:
            self._instance = self.home.instance()
        return self._instance

    # --- runs -----------------------------------------------------------------------------

    def submit_backup(self) -> str:
        config = {"installation_id": INSTALLATION, "progress_interval_seconds": 1.0}
        return self.stack.submit_job(BACKUP_JOB, {"ops": {"plan_backup": {"config": config}}})

    def submit_restore(self, backup_id: str, **config: Any) -> str:
        values: dict[str, Any] = {
            "backup_id": backup_id,
            "scope": "full",
            "conflict_policy": "overwrite",
            "dry_run": False,
            "confirm": f"restore {backup_id}",
            **config,
        }
        return self.stack.submit_job(RESTORE_JOB, {"ops": {"start_restore": {"config": values}}})

    def status(self, run_id: str) -> dg.DagsterRunStatus:
        run = self.instance.get_run_by_id(run_id)
        assert run is not None, run_id
        return run.status

    def wait(self, run_id: str, timeout: float = 420) -> dg.DagsterRunStatus:
        deadline = time.monotonic() + timeout
        while (status := self.status(run_id)) not in FINISHED:
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {status.value} after {timeout:.0f}s")
            time.sleep(0.5)
        return status

    def backup(self, timeout: float = 420) -> tuple[dg.DagsterRunStatus, str | None]:
        run_id = self.submit_backup()
        status = self.wait(run_id, timeout)
        return status, self.backup_id(run_id)

    def backup_id(self, run_id: str) -> str | None:
        run = self.instance.get_run_by_id(run_id)
        return run.tags.get(ledger.BACKUP_ID_TAG) if run else None

    def step_events(self, run_id: str, event_type: dg.DagsterEventType) -> list[str]:
        return [e.step_key or "" for e in self.instance.all_logs(run_id, of_type=event_type)]

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str, run_id: str) -> bool:
        """Poll ``predicate`` until true; False if the run finished first (the phase was missed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            if self.status(run_id) in FINISHED:
                return predicate()
            time.sleep(0.05)
        raise TimeoutError(f"{what} did not happen within {timeout:.0f}s (run {run_id})")

    def failure_reason(self, run_id: str) -> str:
        """The first failed step's error (its first line), or the run failure message."""
        for record in self.instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
            data = record.dagster_event.event_specific_data if record.dagster_event else None
            error = getattr(data, "error", None)
            message = getattr(error, "message", None) or record.message or ""
            return f"{record.step_key}: {message.strip().splitlines()[0][:240]}" if message.strip() else ""
        for record in self.instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE):
            return (record.message or "").strip()[:240]
        return ""

    def step_started(self, run_id: str, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self.step_events(run_id, dg.DagsterEventType.STEP_START))

    def run_worker_pid(self, run_id: str) -> int | None:
        """The run worker's pid, from the engine event Dagster logs when it starts the run process."""
        for record in self.instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
            data = record.dagster_event.event_specific_data if record.dagster_event else None
            metadata = getattr(data, "metadata", None) or {}
            pid = metadata.get("pid")
            if pid is not None and "Started process for run" in (record.message or ""):
                return int(getattr(pid, "value", pid))
        return None

    def kill_run_worker(self, run_id: str) -> list[int]:
        """SIGKILL the run worker and the step processes it started (the run's process tree)."""
        pid = self.run_worker_pid(run_id)
        if pid is None:
            raise RuntimeError(f"no run worker pid logged for run {run_id}")
        try:
            worker = psutil.Process(pid)
            tree = [worker, *worker.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for proc in tree:
            with _quiet():
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(tree, timeout=10)
        return [p.pid for p in tree]

    def backends(self, application_name: str) -> list[int]:
        with admin_connect() as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
                (self.db.name, application_name),
            ).fetchall()
        return [int(r[0]) for r in rows]

    def pg_dump_backends(self) -> list[int]:
        """The dump's connections: pg_dump's own (PGAPPNAME=backup_pipeline) and the snapshot holder's."""
        return self.backends("backup_pipeline") + self.backends("backup_pipeline dump snapshot")

    def worker_runs(self, run_id: str, program: str) -> bool:
        """True while the run worker (or one of its step processes) runs ``program`` (pg_dump, pg_restore)."""
        pid = self.run_worker_pid(run_id)
        if pid is None:
            return False
        try:
            return any(p.name() == program for p in psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            return False

    def resize_destination(self, size: int | None) -> None:
        """Change the size of the destination's tmpfs (None: back to the default)."""
        if not self.tmpfs:
            raise RuntimeError("the local destination is not a tmpfs (mount was not permitted)")
        size = size or TMPFS_SIZE
        subprocess.run(
            ["mount", "-o", f"remount,size={size}", str(self.files.backups_dir)],
            check=True,
            capture_output=True,
        )

    def terminate_backends(self, pids: list[int]) -> None:
        with admin_connect() as conn:
            for pid in pids:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))

    # --- what is true afterwards ----------------------------------------------------------

    def destination(self) -> Destination:
        """The destination as the product builds it from the same settings, its retry policy
        included: a Drive listing hit by a 503 is retried here as the product's own calls are
        (the drill judged the ledger through a bare GoogleDriveDestination, without retries)."""
        env = {"BACKUP_PIPELINE_INSTALLATION_ID": INSTALLATION}
        if self.destination_kind == "google_drive":
            key = write_service_account_key(self.root / "drive-sa.json", self.drive.token_uri)
            env.update(
                {
                    "BACKUP_PIPELINE_DESTINATION": "google_drive",
                    "BACKUP_PIPELINE_STATE_DIR": str(self.root / "drive-state"),
                    "BACKUP_PIPELINE_DRIVE_AUTH_MODE": "shared_drive",
                    "BACKUP_PIPELINE_DRIVE_CREDENTIALS_FILE": str(key),
                    "BACKUP_PIPELINE_DRIVE_API_ROOT": self.drive.url,
                    "BACKUP_PIPELINE_DRIVE_TOKEN_URI": self.drive.token_uri,
                    "BACKUP_PIPELINE_DRIVE_SHARED_DRIVE_ID": SHARED_DRIVE_ID,
                }
            )
        else:
            assert self.local_path is not None
            env["BACKUP_PIPELINE_LOCAL_DESTINATION_PATH"] = str(self.local_path)
        return DestinationResource.from_settings(load_settings(env=env)).get_destination()

    def ledger_check(self) -> tuple[bool, str]:
        """The ledger is true when every set Dagster lists as complete has its manifest on the
        destination and every set with a manifest is complete in Dagster."""
        # Compare only the sets recorded for the destination in use (rows switch between local and Drive).
        local = self.destination_kind == "local"
        dag = [
            e
            for e in ledger.from_dagster(self.instance)
            if not e.complete or str(e.metadata.get("destination", "")).startswith("local folder") == local
        ]
        dest = ledger.from_destination(self.destination(), INSTALLATION)
        rec = ledger.reconcile(dag, dest)
        ok = not rec.missing_on_destination and not rec.unknown_to_dagster
        detail = (
            f"complete={sum(e.complete for e in dag)} missing_on_destination={rec.missing_on_destination} "
            f"unknown_to_dagster={rec.unknown_to_dagster} incomplete_on_destination={rec.incomplete_on_destination}"
        )
        return ok, detail

    def incomplete_sets(self) -> list[str]:
        return [
            e.backup_id for e in ledger.from_destination(self.destination(), INSTALLATION) if not e.complete
        ]

    def fingerprint(self) -> dict[str, str]:
        """The application's backed-up data: per table (except the excluded sessions/caches) an
        order-independent digest of its rows, per object the
        SHA-256 of its bytes and its size (ETags differ between single and multipart uploads)."""
        state: dict[str, str] = {}
        with self.db.connect() as conn:
            tables = conn.execute(
                "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) FROM information_schema.tables "
                "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
            ).fetchall()
            for (table,) in tables:
                if table == "public.sessions" or table.endswith("_cache"):
                    continue  # rows not backed up by design (exclude_table_patterns default)
                if table.startswith("public.backup_pipeline_"):
                    continue  # the product's own bookkeeping (data lease), not application data
                row = conn.execute(
                    sql.SQL(
                        "SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))), '') FROM {} t"
                    ).format(sql.SQL(table))
                ).fetchone()
                state[f"table {table}"] = f"{row[0]}:{row[1]}" if row else ""
        client = self.s3.client()
        for bucket in sorted(b.name for b in client.list_buckets()):
            for obj in client.list_objects(bucket, recursive=True):
                response = client.get_object(bucket, obj.object_name or "")
                try:
                    digest = hashlib.sha256()
                    for block in response.stream(1 << 20):
                        digest.update(block)
                finally:
                    response.close()
                    response.release_conn()
                state[f"object {bucket}/{obj.object_name}"] = f"{obj.size}:{digest.hexdigest()}"
        return state


def differences(before: dict[str, str], after: dict[str, str], limit: int = 4) -> list[str]:
    """What differs between two fingerprints (for notes)."""
    keys = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    shown = [f"{k}: {before.get(k, 'missing')[:20]} -> {after.get(k, 'missing')[:20]}" for k in keys[:limit]]
    return shown + ([f"... {len(keys) - limit} more"] if len(keys) > limit else [])


TMPFS_SIZE = 3 << 30


def mount_tmpfs(path: Path, size: int) -> bool:
    """Mount a tmpfs as the local destination, so "disk full" can be made real; False if not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, check=False
    )
    return result.returncode == 0


class _quiet:
    """``contextlib.suppress(Exception)`` for clean-up paths (one line instead of three)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> bool:
        return exc_type is not None and issubclass(exc_type, Exception)
