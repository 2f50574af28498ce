"""The viewers' webserver (``dagster-webserver --read-only``) refuses to launch a run over /graphql.

Two real webservers on one instance (deploy/dagster.yaml on a fresh PostgreSQL database):
the read-only one answers the launch mutation with UnauthorizedError and no run is stored;
the writable one, given the very same request, queues the run (so the request is valid and
the refusal is the flag's doing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import requests

from backup_pipeline_tests.fixtures.ports import free_port, stop_process_groups, wait_until
from backup_pipeline_tests.fixtures.postgres import PgDatabase

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on UnauthorizedError { message }
    ... on PythonError { message }
  }
}
"""


@pytest.fixture(scope="module")
def instance_home(pg_database: PgDatabase, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(ROOT / "deploy/dagster.yaml", home / "dagster.yaml")
    (home / "probe_defs.py").write_text(
        textwrap.dedent(
            """
            import dagster as dg

            @dg.op
            def touch() -> None:
                pass

            @dg.job
            def probe_job() -> None:
                touch()

            defs = dg.Definitions(jobs=[probe_job])
            """
        )
    )
    (home / "workspace.yaml").write_text(
        f"load_from:\n  - python_file:\n      relative_path: {home / 'probe_defs.py'}\n"
        "      location_name: probe\n"
    )
    yield home


def _env(home: Path, db: PgDatabase) -> dict[str, str]:
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": db.host,
        "DAGSTER_PG_PORT": str(db.port),
        "DAGSTER_PG_USERNAME": db.user,
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": db.name,
    }


@pytest.fixture(scope="module")
def webservers(instance_home: Path, pg_database: PgDatabase) -> Iterator[dict[str, str]]:
    """{"read_only": url, "writable": url}; both started at once (2 cores: start-up dominates)."""
    # Create the schema first: two webservers migrating one empty database race each other.
    subprocess.run(
        [sys.executable, "-c", "import dagster as dg; dg.DagsterInstance.get().dispose()"],
        env=_env(instance_home, pg_database),
        check=True,
        timeout=120,
    )
    webserver = str(Path(sys.executable).with_name("dagster-webserver"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, str] = {}
    logs = {}
    try:
        for name, extra in (("read_only", ["--read-only"]), ("writable", [])):
            port = free_port()
            logs[name] = open(instance_home / f"{name}.log", "wb")  # noqa: SIM115 - closed below
            procs[name] = subprocess.Popen(
                [
                    webserver,
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-w",
                    str(instance_home / "workspace.yaml"),
                    *extra,
                ],
                env=_env(instance_home, pg_database),
                stdout=logs[name],
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            urls[name] = f"http://127.0.0.1:{port}"
        for name, url in urls.items():
            wait_until(
                lambda url=url: _location_loaded(url),
                timeout=120,
                what=f"{name} webserver ({(instance_home / f'{name}.log')})",
                interval=0.5,
            )
        yield urls
    finally:
        stop_process_groups(procs.values(), timeout=20)
        for log in logs.values():
            log.close()


def _graphql(url: str, query: str, variables: dict | None = None) -> dict:
    response = requests.post(
        f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60
    )
    assert response.status_code == 200, response.text[-3000:]
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


def _location_loaded(url: str) -> bool:
    data = _graphql(
        url,
        "{ workspaceOrError { ... on Workspace { locationEntries { name "
        "locationOrLoadError { __typename } } } } }",
    )
    entries = data["workspaceOrError"]["locationEntries"]
    return any(
        e["name"] == "probe" and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"
        for e in entries
    )


def _launch(url: str) -> dict:
    params = {
        "selector": {
            "repositoryLocationName": "probe",
            "repositoryName": "__repository__",
            "jobName": "probe_job",
        },
        "runConfigData": {},
    }
    return _graphql(url, LAUNCH, {"params": params})["launchRun"]


def _stored_runs(home: Path, db: PgDatabase, monkeypatch: pytest.MonkeyPatch) -> int:
    for key, value in _env(home, db).items():
        if key.startswith("DAGSTER_"):
            monkeypatch.setenv(key, value)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return len(instance.get_runs(filters=dg.RunsFilter(job_name="probe_job")))


def test_read_only_webserver_refuses_to_launch(
    webservers: dict[str, str], instance_home: Path, pg_database: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = _launch(webservers["read_only"])
    assert refused["__typename"] == "UnauthorizedError", refused
    assert _stored_runs(instance_home, pg_database, monkeypatch) == 0

    permissions = _graphql(webservers["read_only"], "{ permissions { permission value } }")["permissions"]
    granted = {p["permission"] for p in permissions if p["value"]}
    assert "launch_pipeline_execution" not in granted
    assert "start_schedule" not in granted and "terminate_pipeline_execution" not in granted


def test_the_same_launch_succeeds_on_the_writable_webserver(
    webservers: dict[str, str], instance_home: Path, pg_database: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    accepted = _launch(webservers["writable"])
    assert accepted["__typename"] == "LaunchRunSuccess", accepted
    # deploy/dagster.yaml queues runs (the daemon would start them): stored, QUEUED.
    assert accepted["run"]["status"] == "QUEUED"
    assert _stored_runs(instance_home, pg_database, monkeypatch) == 1
