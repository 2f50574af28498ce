"""The run-level data lease (``services/data_lease.py``, ``ops/data_lease.py``) on a real PostgreSQL.

``lease_probe_job`` is wired exactly like the data-touching jobs (``run_data_lease`` in every
step, ``release_run_data_lease`` in the last, the failure hook): first → gate (no lease, a point
between two steps where the test acts) → two siblings → last.
"""

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from backup_pipeline.cli import main as cli_main
from backup_pipeline.concurrency import DATA_LEASE_TABLE, EXCLUSIVE_RUN_TAGS
from backup_pipeline.ops.backup import build_backup_job
from backup_pipeline.ops.data_lease import (
    holder_finished,
    release_data_lease_on_failure,
    release_run_data_lease,
    run_data_lease,
)
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.services import data_lease
from backup_pipeline.services.backup_parts import ErrorCode

from . import backup_helpers as h
from .fixtures.postgres import PgDatabase
from .fixtures.s3 import S3Server

URL_ENV = "BACKUP_PIPELINE_TEST_LEASE_DB_URL"
#: What the gate step does between the first step and the siblings (in-process runs only).
_between_steps: list[Callable[[dg.OpExecutionContext], None]] = []


@dg.op
def first(context: dg.OpExecutionContext, app_db: PostgresResource) -> str:
    with run_data_lease(context, app_db):
        return context.run_id


@dg.op
def gate(context: dg.OpExecutionContext, run_id: str) -> str:
    for action in _between_steps:
        action(context)
    return run_id


@dg.op
def sibling_a(context: dg.OpExecutionContext, app_db: PostgresResource, run_id: str) -> str:
    with run_data_lease(context, app_db):
        holder = app_db.data_lease_holder()
        return holder.run_id if holder else ""


@dg.op
def sibling_b(context: dg.OpExecutionContext, app_db: PostgresResource, run_id: str) -> str:
    with run_data_lease(context, app_db):
        holder = app_db.data_lease_holder()
        return holder.run_id if holder else ""


@dg.op
def last(context: dg.OpExecutionContext, app_db: PostgresResource, a: str, b: str) -> list[str]:
    with run_data_lease(context, app_db):
        pass
    release_run_data_lease(context, app_db)
    return [a, b]


@dg.job(
    tags=EXCLUSIVE_RUN_TAGS,
    hooks={release_data_lease_on_failure},
    resource_defs={"app_db": PostgresResource(database_url=dg.EnvVar(URL_ENV))},
)
def lease_probe_job() -> None:
    run_id = gate(first())
    last(sibling_a(run_id), sibling_b(run_id))


@pytest.fixture()
def app_db(fresh_pg_database: PgDatabase, monkeypatch: pytest.MonkeyPatch) -> Iterator[PostgresResource]:
    monkeypatch.setenv(URL_ENV, fresh_pg_database.url)
    _between_steps.clear()
    yield PostgresResource(database_url=fresh_pg_database.url)
    _between_steps.clear()


def _probe(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return lease_probe_job.execute_in_process(instance=instance, raise_on_error=False)


def _failure(result: dg.ExecuteInProcessResult) -> tuple[str, str, str]:
    """(step key, error code, description) of the run's first step failure."""
    first = h.expected_failures(result)[0]  # one line, no stack trace in the run view
    return first.step, first.code, f"[{first.code}] {first.message}"


def test_two_runs_cannot_interleave(app_db: PostgresResource) -> None:
    refused: list[dg.ExecuteInProcessResult] = []

    def run_b_between_steps_of_a(context: dg.OpExecutionContext) -> None:
        holder = app_db.data_lease_holder()
        assert holder is not None and holder.run_id == context.run_id  # A holds it between its steps
        _between_steps.clear()  # B's own gate does nothing
        refused.append(_probe(context.instance))

    with dg.instance_for_test() as instance:
        _between_steps.append(run_b_between_steps_of_a)
        run_a = _probe(instance)
        assert run_a.success  # A's later steps ran after B was refused
        assert run_a.output_for_node("last") == [run_a.run_id, run_a.run_id]  # both siblings under A's lease

        [run_b] = refused
        assert not run_b.success
        step, code, description = _failure(run_b)
        assert (step, code) == ("first", ErrorCode.LOCKED)
        assert run_a.run_id in description and "lease_probe_job" in description  # names holder run and job
        assert instance.get_run_by_id(run_b.run_id).status == dg.DagsterRunStatus.FAILURE  # type: ignore[union-attr]

        assert app_db.data_lease_holder() is None  # A's last op released it
        assert _probe(instance).success  # now B's turn


def test_sibling_steps_in_parallel_processes_share_the_lease(app_db: PostgresResource) -> None:
    with (
        dg.instance_for_test() as instance,
        dg.execute_job(dg.reconstructable(lease_probe_job), instance=instance) as result,
    ):
        assert result.success
        assert result.output_for_node("last") == [result.run_id, result.run_id]
        # The siblings ran in two processes: each shared the lease its run took in `first`.
        starts = result.filter_events(lambda e: e.event_type == dg.DagsterEventType.STEP_START)
        pids = {e.pid for e in starts if e.step_key in ("sibling_a", "sibling_b")}
        assert len(pids) == 2
    assert app_db.data_lease_holder() is None


def test_failed_run_releases_and_dead_holders_are_taken_over(app_db: PostgresResource) -> None:
    def fail(context: dg.OpExecutionContext) -> None:
        raise dg.Failure("the gate broke")

    with dg.instance_for_test() as instance:
        _between_steps.append(fail)
        failed = _probe(instance)
        assert not failed.success
        assert app_db.data_lease_holder() is None  # released by the failure hook
        _between_steps.clear()

        # A holder whose run record says it failed (its process was killed before any hook ran).
        dead_run = str(uuid.uuid4())
        instance.add_run(
            dg.DagsterRun(job_name="backup_job", run_id=dead_run, status=dg.DagsterRunStatus.FAILURE)
        )
        app_db.acquire_data_lease(dead_run, job="backup_job", holder="killed worker")
        taken = _probe(instance)
        assert taken.success
        warnings = [
            r.user_message
            for r in instance.all_logs(taken.run_id)
            if "took over the data lease" in r.user_message
        ]
        assert warnings and dead_run in warnings[0]

        # A holder whose run is still STARTED with a fresh heartbeat is alive ...
        stuck_run = str(uuid.uuid4())
        instance.add_run(
            dg.DagsterRun(job_name="restore_job", run_id=stuck_run, status=dg.DagsterRunStatus.STARTED)
        )
        app_db.acquire_data_lease(stuck_run, job="restore_job", holder="a worker")
        busy = _probe(instance)
        assert _failure(busy)[1] == ErrorCode.LOCKED and stuck_run in _failure(busy)[2]
        # ... until its heartbeat is older than the bound (the whole tree died, no run monitoring).
        with app_db.connect(autocommit=True) as conn:
            conn.execute(f"UPDATE {DATA_LEASE_TABLE} SET heartbeat_at = now() - interval '1 hour'")
        assert _probe(instance).success

    # A holder no Dagster instance knows (a CLI migration) is taken over only once stale.
    app_db.acquire_data_lease("cli-gone", job="storage migrate-drive (CLI)", holder="a shell")
    with pytest.raises(data_lease.DataLockBusy, match="cli-gone"):
        app_db.acquire_data_lease("cli-next", job="x", holder="y")
    with app_db.connect(autocommit=True) as conn:
        conn.execute(f"UPDATE {DATA_LEASE_TABLE} SET heartbeat_at = now() - interval '1 hour'")
    with dg.instance_for_test() as other:
        acquisition = app_db.acquire_data_lease(
            "cli-next", job="x", holder="y", holder_finished=holder_finished(other)
        )
    assert acquisition.outcome == "taken_over" and acquisition.previous is not None
    assert acquisition.previous.run_id == "cli-gone"


def test_heartbeat_refreshes_and_reports_a_lost_lease(app_db: PostgresResource) -> None:
    app_db.acquire_data_lease("run-1", job="j", holder="h")
    with app_db.connect(autocommit=True) as conn:
        conn.execute(f"UPDATE {DATA_LEASE_TABLE} SET heartbeat_at = now() - interval '1 hour'")
    lost = threading.Event()
    beat = data_lease.LeaseHeartbeat(
        app_db._lease_connect, "run-1", interval=0.05, on_lost=lambda _: lost.set()
    )
    with beat:
        for _ in range(200):
            holder = app_db.data_lease_holder()
            if holder and holder.heartbeat_age_seconds < 60:
                break
            threading.Event().wait(0.05)
        assert holder is not None and holder.heartbeat_age_seconds < 60  # refreshed from the thread
        with app_db.connect(autocommit=True) as conn:  # another run takes it over
            conn.execute(f"UPDATE {DATA_LEASE_TABLE} SET run_id = 'run-2'")
        assert lost.wait(10)
    assert beat.lost


def test_migration_cli_and_backup_exclude_each_other(
    app_db: PostgresResource, fresh_pg_database: PgDatabase, s3: S3Server, tmp_path: Path
) -> None:
    credentials = tmp_path / "drive-credentials.json"
    credentials.write_text(json.dumps({"type": "service_account"}))
    env = {
        **s3.env(),
        "BACKUP_PIPELINE_APP_DATABASE_URL": fresh_pg_database.url,
        "BACKUP_PIPELINE_SETTINGS_FILE": "",
        "BACKUP_PIPELINE_DRIVE_CREDENTIALS_FILE": str(credentials),
        "BACKUP_PIPELINE_STATE_DIR": str(tmp_path / "cli-state"),
    }
    cli_results: list[tuple[int, str]] = []

    def migrate_via_cli(context: dg.OpExecutionContext) -> None:
        result = CliRunner().invoke(cli_main, ["storage", "migrate-drive", "--dry-run"], env=env)
        cli_results.append((result.exit_code, result.output))

    with dg.instance_for_test() as instance:
        # A Dagster run holds the lease between its steps: the CLI is refused, naming it.
        _between_steps.append(migrate_via_cli)
        run = _probe(instance)
        assert run.success
        [(exit_code, output)] = cli_results
        assert exit_code == 1, output
        assert "held by" in output and run.run_id in output and "lease_probe_job" in output

        # The CLI holds it (the very call `storage migrate-drive` makes): a backup is refused.
        backup_env = h.make_env(tmp_path, fresh_pg_database, s3)
        with app_db.data_lock("cli-1234", job="storage migrate-drive (CLI)"):
            backup = build_backup_job(executor_def=dg.in_process_executor).execute_in_process(
                run_config=h.run_config(schema_version_query=""),
                resources=backup_env.resources(),
                instance=instance,
                raise_on_error=False,
            )
        step, code, description = _failure(backup)
        assert (step, code) == ("plan_backup", ErrorCode.LOCKED)
        assert "cli-1234" in description and "storage migrate-drive (CLI)" in description
        assert app_db.data_lease_holder() is None  # the CLI's block released it


def test_killed_single_process_holder_is_taken_over_at_once(app_db: PostgresResource) -> None:
    # The CLI migration holds the lease from one process; SIGKILL ends its database sessions, and
    # the next run must not wait out the staleness bound (a rerun right after a crash is the norm).
    import os
    import signal
    import subprocess
    import sys

    holder_script = (
        "import sys, time\n"
        "from backup_pipeline.resources.postgres import PostgresResource\n"
        "db = PostgresResource(database_url=sys.argv[1])\n"
        "with db.data_lock('cli-killed', job='storage migrate-drive (CLI)'):\n"
        "    print('holding', flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder_script, app_db.database_url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
        with pytest.raises(data_lease.DataLockBusy, match="cli-killed"):
            app_db.acquire_data_lease("next-run", job="backup_job", holder="worker")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    holder = app_db.data_lease_holder()
    assert holder is not None and holder.run_id == "cli-killed"  # the row outlives the process ...
    assert holder.heartbeat_age_seconds < 60  # ... with a fresh heartbeat
    acquisition = app_db.acquire_data_lease("next-run", job="backup_job", holder="worker")
    assert acquisition.outcome == "taken_over" and acquisition.previous is not None
    assert acquisition.previous.run_id == "cli-killed"


def test_role_without_create_gets_the_setup_sql_and_works_once_the_table_exists(
    app_db: PostgresResource, fresh_pg_database: PgDatabase
) -> None:
    import secrets

    from psycopg import sql

    from .fixtures.postgres import admin_connect

    role = f"bp_lease_{secrets.token_hex(4)}"
    with admin_connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        limited = PostgresResource(database_url=fresh_pg_database.url.replace("postgres@", f"{role}@", 1))
        with pytest.raises(data_lease.DataLockBusy, match="may not create it") as err:
            limited.acquire_data_lease("run-x", job="backup_job", holder="worker")
        assert "GRANT SELECT, INSERT, UPDATE, DELETE" in str(err.value)
        with fresh_pg_database.connect(autocommit=True) as conn:
            conn.execute(data_lease.CREATE_LEASE_TABLE)
            conn.execute(
                sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(
                    sql.Identifier(DATA_LEASE_TABLE), sql.Identifier(role)
                )
            )
        assert limited.acquire_data_lease("run-x", job="backup_job", holder="worker").outcome == "acquired"
    finally:
        with admin_connect() as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))  # in postgres db only
        with fresh_pg_database.connect(autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with admin_connect() as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
