"""No secret reaches what Dagster stores or shows, after real runs through webserver + daemon.

A backup to the Drive v3 test server (service-account key), a restore dry run and a refused
restore (a failure path) run through a real dagster-webserver + dagster-daemon, with the app
database reached as a Postgres role that has a password. Then everything Dagster keeps or
prints is scanned for every secret of the installation, in raw and encoded forms:

- the event log of every run (instance API) and a plain-SQL dump of the whole Dagster
  storage database (run storage, event log, schedules/sensor ticks, run tags and config);
- run config and run tags;
- every file under the Dagster home: captured compute logs (stdout/stderr of the steps),
  pickled step outputs of the IO manager, anything else written there;
- the webserver and daemon logs; the audit trail.

Secrets: the org secret (raw bytes, base64, hex), the Drive service account's private key
(every PEM body line), the database password, the S3 secret key, the recovery secret
(Bech32 text and raw bytes). The scanner is proved able to fail: a planted secret is found.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from dagster._serdes import serialize_value
from psycopg import sql

from backup_pipeline.archive.keys import RECOVERY_SECRET_HRP, OrgKeyring, bech32_decode
from backup_pipeline.audit import audit_path
from backup_pipeline.concurrency import DATA_LEASE_TABLE
from backup_pipeline.sample_app import SeedSpec, seed_sample_app
from backup_pipeline.services.data_lease import CREATE_LEASE_TABLE
from backup_pipeline_tests.e2e.e2e_support import product_env, product_files
from backup_pipeline_tests.fixtures.dagster import DagsterStack, StartDagster
from backup_pipeline_tests.fixtures.drive import DriveFixture
from backup_pipeline_tests.fixtures.postgres import PG_HOST, PG_PORT, PgDatabase, admin_connect
from backup_pipeline_tests.fixtures.s3 import S3Server

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Needle:
    name: str  # which secret and which encoding (never the value itself)
    value: bytes


def encodings(name: str, raw: bytes) -> list[Needle]:
    """A binary secret as it could appear in text: raw, base64 (std/url, with or without padding), hex."""
    b64 = base64.b64encode(raw)
    return [
        Needle(f"{name} (raw)", raw),
        Needle(f"{name} (base64)", b64.rstrip(b"=")),
        Needle(f"{name} (base64url)", base64.urlsafe_b64encode(raw).rstrip(b"=")),
        Needle(f"{name} (hex)", raw.hex().encode()),
    ]


def text_secret(name: str, text: str) -> list[Needle]:
    return [Needle(name, text.encode()), *encodings(name, text.encode())[1:3]]


def pem_body_lines(pem: str) -> list[str]:
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


@dataclass
class Corpus:
    """Everything to scan, as (where, bytes)."""

    items: list[tuple[str, bytes]]

    def find(self, needles: list[Needle]) -> list[str]:
        hits = []
        for where, data in self.items:
            for needle in needles:
                if needle.value in data:
                    hits.append(f"{needle.name} in {where}")
        return hits


def collect(stack: DagsterStack, state_dir: Path) -> Corpus:
    items: list[tuple[str, bytes]] = []
    with stack.home.instance() as instance:
        runs = instance.get_runs()
        assert runs, "nothing to scan"
        for run in runs:
            where = f"run {run.run_id[:8]} ({run.job_name})"
            items.append((f"{where} run config", json.dumps(run.run_config, default=str).encode()))
            items.append((f"{where} tags", json.dumps(dict(run.tags)).encode()))
            for record in instance.all_logs(run.run_id):
                kind = record.dagster_event_type.value if record.dagster_event_type else "log message"
                items.append((f"{where} event {kind}", serialize_value(record).encode()))
    db = stack.home.database
    dump = subprocess.run(
        ["pg_dump", "--format=plain", "-h", db.host, "-p", str(db.port), "-U", db.user, db.name],
        capture_output=True,
        check=True,
    ).stdout
    items.append((f"pg_dump of the Dagster storage database {db.name}", dump))
    for path in sorted(p for p in stack.home.path.rglob("*") if p.is_file()):
        items.append((f"Dagster home file {path.relative_to(stack.home.path)}", path.read_bytes()))
    for log in sorted(stack.log_dir.glob("*.log")):
        items.append((f"server log {log.name}", log.read_bytes()))
    items.append(("audit trail", audit_path(state_dir).read_bytes()))
    return Corpus(items)


@pytest.fixture()
def app_role(pg_database: PgDatabase) -> Iterator[tuple[str, str]]:
    """A login role with a password that can read (dump) the app database."""
    role, password = f"bp_scan_{secrets.token_hex(4)}", f"pw-{secrets.token_urlsafe(24)}"
    with admin_connect() as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
        )
        conn.execute(sql.SQL("GRANT pg_read_all_data TO {}").format(sql.Identifier(role)))
    # Least privilege as documented: the role may not create tables, so the database owner creates
    # the data-lease table once and grants the role DML on it alone.
    with pg_database.connect(autocommit=True) as conn:
        conn.execute(CREATE_LEASE_TABLE)
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON public.{} TO {}").format(
                sql.Identifier(DATA_LEASE_TABLE), sql.Identifier(role)
            )
        )
    yield role, password
    with pg_database.connect(autocommit=True) as conn:  # its grant on the lease table
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with admin_connect() as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_no_secret_in_event_log_config_tags_compute_logs_server_logs_or_audit(
    pg_database: PgDatabase,
    s3: S3Server,
    drive: DriveFixture,
    app_role: tuple[str, str],
    dagster_stack: StartDagster,
    tmp_path: Path,
) -> None:
    with pg_database.connect() as conn:
        seed_sample_app(conn, s3.client(), SeedSpec(small_objects=12, large_object_bytes=(), users=10))
    role, db_password = app_role
    files = product_files(tmp_path)
    drive_env = {k: v for k, v in drive.env().items() if k != "BACKUP_PIPELINE_STATE_DIR"}
    env = {
        **product_env(
            files,
            f"postgresql://{role}@{PG_HOST}:{PG_PORT}/{pg_database.name}",
            s3.env(),
            schedule_enabled="false",
            min_manual_backup_interval_minutes="0",
        ),
        **drive_env,
        "BACKUP_PIPELINE_APP_DATABASE_PASSWORD": db_password,
    }
    stack = dagster_stack(env)

    backup_run = stack.submit_job("backup_job")
    assert stack.wait_for_run(backup_run) is dg.DagsterRunStatus.SUCCESS, stack.log_tail("code-server")
    restore_config = {"ops": {"start_restore": {"config": {"backup_id": "latest", "dry_run": True}}}}
    dry_run = stack.submit_job("restore_job", run_config=restore_config)
    assert stack.wait_for_run(dry_run) is dg.DagsterRunStatus.SUCCESS, stack.log_tail("code-server")
    refused_config = {"ops": {"start_restore": {"config": {"backup_id": "latest", "dry_run": False}}}}
    refused = stack.submit_job("restore_job", run_config=refused_config)
    assert stack.wait_for_run(refused) is dg.DagsterRunStatus.FAILURE  # no confirmation phrase

    # The secrets, read from where the installation keeps them (the recovery secret is exported
    # now, as the administrator would, after the runs used only its public half).
    keyring = OrgKeyring.from_file(files.org_secret_file)
    recovery_text = files.recovery_store().export_secret()
    sa_key = json.loads(drive.service_account_file.read_text())["private_key"]
    needles = [
        *[
            n
            for key_id in keyring.key_ids
            for n in encodings(f"org secret {key_id}", keyring.get(key_id).secret)
        ],
        *[
            Needle(f"Drive private key line {i}", line.encode())
            for i, line in enumerate(pem_body_lines(sa_key))
        ],
        *text_secret("database password", db_password),
        *text_secret("S3 secret key", s3.secret_key),
        Needle("recovery secret (bech32)", recovery_text.upper().encode()),
        Needle("recovery secret (bech32, lower case)", recovery_text.lower().encode()),
        *encodings(
            "recovery secret",
            bech32_decode(
                recovery_text, expected_hrp=RECOVERY_SECRET_HRP, payload_size=32, what="recovery key"
            ),
        ),
    ]
    assert len(pem_body_lines(sa_key)) > 20

    corpus = collect(stack, files.state_dir)
    wheres = [where for where, _ in corpus.items]
    # The scan covers what it claims: step events, captured compute logs, both server logs, audit.
    assert any("event STEP_SUCCESS" in w for w in wheres) and any(
        "ASSET_MATERIALIZATION" in w for w in wheres
    )
    compute_logs = [w for w in wheres if w.startswith("Dagster home file") and w.endswith((".err", ".out"))]
    assert compute_logs, wheres
    assert {"server log dagster-webserver.log", "server log dagster-daemon.log"} <= set(wheres)
    assert corpus.find([Needle("the backup run id", backup_run.encode())])
    assert corpus.find(needles) == []

    # The scanner can fail: a secret planted in one run's event log (base64) and in a compute
    # log (a PEM line) is reported, under the encoding and the place it was planted.
    canary = secrets.token_bytes(32)
    with stack.home.instance() as instance:
        run = instance.get_run_by_id(backup_run)
        assert run is not None
        instance.report_engine_event(f"planted {base64.b64encode(canary).decode()}", run)
    planted_log = stack.home.path / compute_logs[0].removeprefix("Dagster home file ")
    with planted_log.open("a") as fh:
        fh.write(pem_body_lines(sa_key)[3] + "\n")
    hits = collect(stack, files.state_dir).find([*encodings("canary", canary), *needles])
    assert any(h.startswith("canary (base64) in run") and "ENGINE_EVENT" in h for h in hits), hits
    assert f"Drive private key line 3 in Dagster home file {planted_log.relative_to(stack.home.path)}" in hits
