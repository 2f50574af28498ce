"""Shared set-up of the end-to-end tests that run the product through a real webserver + daemon.

``product_env`` is the environment an operator would give the servers (settings + secrets);
``module_stack`` starts ONE webserver + daemon per test module (the function-scoped
``dagster_stack`` fixture would start one per test, which the 2-core CI cannot afford).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import dagster as dg
from dagster._core.scheduler.instigation import InstigatorType

from backup_pipeline.archive.keys import OrgKeyring, RecoveryKeyStore, generate_org_secret_file
from backup_pipeline_tests.fixtures.dagster import SAFETY_NET_SENSORS, DagsterStack, make_dagster_home
from backup_pipeline_tests.fixtures.ports import free_port
from backup_pipeline_tests.fixtures.postgres import drop_database

INSTALLATION = "bp-e2e"


@dataclass
class ProductFiles:
    state_dir: Path
    org_secret_file: Path
    backups_dir: Path

    def recovery_store(self) -> RecoveryKeyStore:
        return RecoveryKeyStore(self.state_dir, OrgKeyring.from_file(self.org_secret_file))


def product_files(root: Path) -> ProductFiles:
    """State dir with an org secret and the recovery key pair made (the installation's set-up step)."""
    state = root / "state"
    state.mkdir(parents=True, exist_ok=True)
    files = ProductFiles(state_dir=state, org_secret_file=state / "org-secret", backups_dir=root / "backups")
    generate_org_secret_file(files.org_secret_file)
    files.recovery_store().ensure()
    return files


def product_env(
    files: ProductFiles, database_url: str, s3_env: dict[str, str], **settings: str
) -> dict[str, str]:
    """Settings for the servers; ``settings`` are extra BACKUP_PIPELINE_<NAME> values (lower-case names)."""
    env = {
        **s3_env,
        "BACKUP_PIPELINE_INSTALLATION_ID": INSTALLATION,
        "BACKUP_PIPELINE_APP_DATABASE_URL": database_url,
        "BACKUP_PIPELINE_STATE_DIR": str(files.state_dir),
        "BACKUP_PIPELINE_LOCAL_DESTINATION_PATH": str(files.backups_dir),
        "BACKUP_PIPELINE_ORG_SECRET_FILE": str(files.org_secret_file),
        # One process per run: the 2-core CI machine runs the whole suite at once.
        "BACKUP_PIPELINE_EXECUTOR": "in_process",
    }
    env.update({f"BACKUP_PIPELINE_{name.upper()}": value for name, value in settings.items()})
    return env


@contextmanager
def module_stack(
    root: Path, env: dict[str, str], artifacts_dir: Path, label: str, sensors_off: tuple[str, ...] = ()
) -> Iterator[DagsterStack]:
    """A Dagster home on a fresh dagster-postgres database and one running webserver + daemon;
    ``sensors_off`` are switched off (over GraphQL) before the daemon starts, besides the safety nets."""
    home = make_dagster_home(root / "dagster_home")
    log_dir = root / "dagster_logs"
    log_dir.mkdir(exist_ok=True)
    stack = DagsterStack(
        home=home, port=free_port(), log_dir=log_dir, env=env, sensors_off=(*SAFETY_NET_SENSORS, *sensors_off)
    )
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        for log in log_dir.glob("*.log"):
            (artifacts_dir / f"{label}-{log.name}").write_bytes(log.read_bytes())
        drop_database(home.database.name)


def wait_for(
    predicate: Callable[[], bool], *, timeout: float, what: str, stack: DagsterStack, interval: float = 1.0
) -> None:
    """Poll ``predicate``; on timeout fail with the daemon log tail (what the daemon was doing)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}\n--- daemon ---\n{stack.log_tail('daemon', 60)}"
                f"\n--- code server (run workers) ---\n{stack.log_tail('code-server', 30)}"
            )
        for name, proc in stack.processes.items():
            if proc.poll() is not None:
                raise AssertionError(f"dagster-{name} died waiting for {what}:\n{stack.log_tail(name)}")
        time.sleep(interval)


def sensor_ticked(stack: DagsterStack, sensor: str) -> bool:
    """True once the daemon evaluated ``sensor`` at least once."""
    with stack.home.instance() as instance:
        for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
            if state.instigator_name == sensor:
                return bool(instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1))
    return False


def wait_for_first_ticks(stack: DagsterStack, *sensors: str, timeout: float = 300) -> None:
    """Wait until the daemon evaluated each run-status sensor once. Such a sensor starts from its
    first tick: a run that ended before it is never seen, and under load the daemon's first tick
    can come after a short backup (its follow-up run would then never be launched)."""
    for sensor in sensors:
        wait_for(
            partial(sensor_ticked, stack, sensor), timeout=timeout, what=f"{sensor}'s first tick", stack=stack
        )


FINISHED = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def runs_of(instance: dg.DagsterInstance, job_name: str, finished: bool = False) -> list[dg.DagsterRun]:
    """Runs of ``job_name``, oldest first."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(job_name=job_name, statuses=list(FINISHED) if finished else None)
    )
    return list(reversed(runs))


def queue_is_idle(instance: dg.DagsterInstance) -> bool:
    """No run queued, starting or running (the sensors may still request more)."""
    busy = [
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.CANCELING,
    ]
    return not instance.get_runs(filters=dg.RunsFilter(statuses=busy), limit=1)
