"""``backup-pipeline history`` lists the safety sets restores made, labelled, with their restore run.

A safety set is made inside a ``restore_job`` run (the database it replaces, backed up first), so
main's history, a listing of ``backup_job`` runs, never showed one. The runs here are real: a
backup job and a restore job executed by Dagster on a dagster-postgres instance, served by a
real ``dagster-webserver`` (empty workspace: the history reads run storage only) that the CLI
queries over GraphQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import requests
from click.testing import CliRunner

from backup_pipeline import client as client_module
from backup_pipeline.cli import main
from backup_pipeline.ops import restore as restore_ops
from backup_pipeline_tests.fixtures.dagster import DagsterHome
from backup_pipeline_tests.fixtures.ports import free_port, stop_process_groups, wait_until
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server
from backup_pipeline_tests.restore_support import Installation, confirm


@pytest.fixture()
def webserver(dagster_home: DagsterHome, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "webserver.log").open("ab")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster-webserver"),
            "--empty-workspace",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env={**os.environ, **dagster_home.env()},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: requests.get(f"{url}/server_info", timeout=2).status_code == 200,
            timeout=120,
            what="dagster-webserver",
            interval=0.5,
        )
        yield url
    finally:
        stop_process_groups([proc])
        log.close()


def _history(url: str, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["history", "--url", url, "--json", *args])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def test_history_lists_safety_sets_with_the_restore_run_that_made_them(
    pg_database: PgDatabase, s3: S3Server, tmp_path: Path, dagster_home: DagsterHome, webserver: str
) -> None:
    with pg_database.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version text)")
        conn.execute("CREATE TABLE IF NOT EXISTS notes (id int PRIMARY KEY, body text)")
        conn.execute(
            "INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 50) g ON CONFLICT DO NOTHING"
        )
    inst = Installation(pg_database, s3, tmp_path)
    with dagster_home.instance() as instance:
        first = inst.backup(instance)
        restored = inst.restore(
            instance, backup_id=first, scope="database", dry_run=False, confirm=confirm(first)
        )
        assert restored.success
        safety = restored.dagster_run.tags[restore_ops.TAG_SAFETY_BACKUP]
        second = inst.backup(instance)
        backup_runs = {
            run.tags["backup_pipeline/backup_id"]: run.run_id
            for run in instance.get_runs(dg.RunsFilter(job_name="backup_job"))
        }

    everything = _history(webserver)["runs"]
    assert [(r["kind"], r["backup_id"]) for r in everything] == [
        ("backup", second),
        ("safety", safety),
        ("backup", first),
    ]
    entry = everything[1]
    assert entry["job_name"] == "restore_job" and entry["run_id"] == restored.run_id
    assert entry["status"] == "SUCCESS" and entry["restore_of"] == first

    # Each backup run shows what its set changed: the backup_set metadata that ``show`` prints too
    # (format 1: every object is new, nothing shared; uploaded = the set's parts).
    shown = CliRunner().invoke(main, ["show", "--url", webserver, "--json", second])
    assert shown.exit_code == 0, shown.output
    ledger = json.loads(shown.stdout)["ledger"]
    assert everything[0]["changes"] == {k: ledger[k] for k in client_module.CHANGE_KEYS}
    assert everything[0]["changes"]["uploaded_bytes"] == ledger["total_bytes"] > 0
    assert "changes" not in entry  # a safety set: made inside a restore run, not listed with counts
    shown_text = CliRunner().invoke(main, ["show", "--url", webserver, second])
    [changes] = [line for line in shown_text.output.splitlines() if line.startswith("  changes: ")]
    assert (
        changes.startswith(f"  changes: +{ledger['objects_new']} (")
        and "~0 (0 B) -0 (0 B) objects" in changes
    )

    text = CliRunner().invoke(main, ["history", "--url", webserver])
    assert text.exit_code == 0, text.output
    [backup_line] = [line for line in text.output.splitlines() if second in line]
    assert "uploaded, 0 B shared with older sets" in backup_line, backup_line
    [line] = [line for line in text.output.splitlines() if safety in line]
    assert (
        "SAFETY" in line and f"made by restore run {restored.run_id}" in line and f"restoring {first}" in line
    )

    # Pages of one backup run each: the safety set appears once, on the page of the run before it.
    page1 = _history(webserver, "--limit", "1")
    assert [r["backup_id"] for r in page1["runs"]] == [second]
    page2 = _history(webserver, "--limit", "1", "--cursor", page1["next_cursor"])
    assert [r["backup_id"] for r in page2["runs"]] == [safety, first]
    assert page2["next_cursor"] == backup_runs[first]
    page3 = _history(webserver, "--limit", "1", "--cursor", page2["next_cursor"])
    assert page3 == {"runs": [], "next_cursor": None}

    # A safety set is a complete set, not a failed run.
    assert [r["kind"] for r in _history(webserver, "--status", "failure")["runs"]] == []
    assert safety in [r["backup_id"] for r in _history(webserver, "--status", "success")["runs"]]


def test_the_client_reads_the_tags_the_restore_job_writes() -> None:
    # client.py does not import the ops (the CLI would load Dagster's whole job machinery).
    assert client_module.SAFETY_BACKUP_TAG == restore_ops.TAG_SAFETY_BACKUP
    assert client_module.RESTORE_OF_TAG == restore_ops.TAG_RESTORE_OF
