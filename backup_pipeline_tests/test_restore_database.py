"""Database restore against the machine's PostgreSQL, no Dagster: a backup set of a small database
built to reproduce what broke ``pg_restore --clean --single-transaction`` (a view pg_dump splits
into a placeholder and a rule, a partitioned table with a primary key and a default partition,
quoted identifiers with ``"``, spaces and non-ASCII, a large object), restored into an empty
database, over a populated one and into another name; failures and kills mid-way; ownership."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from backup_pipeline.archive.keys import OrgKeyring, generate_org_secret_file
from backup_pipeline.concurrency import DATA_LEASE_TABLE
from backup_pipeline.destinations.local_folder import LocalFolderDestination
from backup_pipeline.ops.backup import build_encryptor
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.resources.postgres import PostgresResource, locate_pg_tools
from backup_pipeline.services import restore as svc
from backup_pipeline.services.backup_database import dump_database
from backup_pipeline.services.backup_finalize import FinalizeInput, finalize_backup
from backup_pipeline.services.backup_parts import PART_DATABASE, new_backup_id
from backup_pipeline.services.backup_upload import upload_part
from backup_pipeline.services.data_lease import CREATE_LEASE_TABLE
from backup_pipeline_tests.fixtures.postgres import PgDatabase, admin_connect, create_database, drop_database
from backup_pipeline_tests.restore_support import normalised_dump

INSTALLATION = "db-restore-test"
QUOTED_SCHEMA = 'Weird "Schema" ü'
QUOTED_TABLE = "Table With Spaces"

# Each statement reproduces one thing the old restore could not do (see the module docstring).
HOSTILE_SCHEMA = """
CREATE SCHEMA app;
CREATE TABLE app.t (id int PRIMARY KEY, name text);
CREATE TABLE app.u (id int PRIMARY KEY, t_id int REFERENCES app.t (id));
-- GROUP BY the primary key makes t.name functionally dependent: pg_dump writes a placeholder
-- view and a _RETURN rule that depends on the key (restored after it).
CREATE VIEW app.v AS SELECT t.id, t.name, count(u.id) AS n FROM app.t JOIN app.u ON u.t_id = t.id GROUP BY t.id;
CREATE VIEW app.v2 AS SELECT id, n FROM app.v WHERE n > 0;
CREATE TABLE app.p (id int, k int, PRIMARY KEY (id, k)) PARTITION BY RANGE (k);
CREATE TABLE app.p1 PARTITION OF app.p FOR VALUES FROM (0) TO (10);
CREATE TABLE app.pd PARTITION OF app.p DEFAULT;
CREATE SCHEMA "Weird ""Schema"" ü";
CREATE TABLE "Weird ""Schema"" ü"."Table With Spaces" (id int PRIMARY KEY, "Col ü" text);
CREATE TABLE "Weird ""Schema"" ü"."dotted.name" (x int);
"""


def _fill(conn: psycopg.Connection, rows: int, note: str) -> None:
    conn.execute("INSERT INTO app.t SELECT g, %s || g FROM generate_series(1, %s) g", (note, rows))
    conn.execute("INSERT INTO app.u SELECT g, 1 + g %% %s FROM generate_series(1, %s) g", (rows, rows * 2))
    conn.execute("INSERT INTO app.p SELECT g, g %% 20 FROM generate_series(1, %s) g", (rows,))
    conn.execute(
        sql.SQL("INSERT INTO {} SELECT g, %s || g FROM generate_series(1, %s) g").format(
            sql.Identifier(QUOTED_SCHEMA, QUOTED_TABLE)
        ),
        (note, rows),
    )
    conn.execute(
        sql.SQL("INSERT INTO {} SELECT g FROM generate_series(1, 3) g").format(
            sql.Identifier(QUOTED_SCHEMA, "dotted.name")
        )
    )
    conn.execute("SELECT lo_from_bytea(0, convert_to(%s, 'UTF8'))", (f"large object of {note}",))


def build_hostile(db: PgDatabase, rows: int, note: str) -> None:
    with db.connect() as conn:
        conn.execute(HOSTILE_SCHEMA)
        _fill(conn, rows, note)


def pg_dump_bytes(db: PgDatabase) -> bytes:
    tools = locate_pg_tools()
    return subprocess.run(
        [str(tools.pg_dump.path), "-Fc", "-d", db.url], check=True, capture_output=True
    ).stdout


def schema_sql(dbname: str) -> str:
    """``pg_dump --schema-only`` with owners and grants, normalised (``restore_support``)."""
    return normalised_dump(f"postgresql://postgres@127.0.0.1:5432/{dbname}", schema_only=True, owners=True)


def data_digest(dbname: str) -> dict[str, Any]:
    """Rows (count and an ordered hash) of every table, the views' output, large objects."""
    out: dict[str, Any] = {}
    with admin_connect_to(dbname) as conn:
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'v') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg\\_%%' AND c.relname <> %s ORDER BY 1, 2",
            (DATA_LEASE_TABLE,),
        ).fetchall()
        for schema, name in tables:
            row = conn.execute(
                sql.SQL(
                    "SELECT count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {} x"
                ).format(sql.Identifier(schema, name))
            ).fetchone()
            out[f"{schema}.{name}"] = row
        out["large objects"] = conn.execute(
            "SELECT array_agg(convert_from(lo_get(oid), 'UTF8') ORDER BY 1) FROM pg_largeobject_metadata"
        ).fetchone()
    return out


def admin_connect_to(dbname: str) -> psycopg.Connection:
    return psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{dbname}", autocommit=True)


def databases(prefix: str) -> set[str]:
    with admin_connect() as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,))
        return {str(r[0]) for r in rows.fetchall()}


@dataclass
class Sets:
    """A local destination with backup sets made by the backup's own functions (database only)."""

    root: Path

    def __post_init__(self) -> None:
        self.org_secret = self.root / "org-secret"
        generate_org_secret_file(self.org_secret)
        self.keys_resource = BackupKeysResource(
            org_secret_file=str(self.org_secret), state_dir=str(self.root / "state")
        )
        self.destination = LocalFolderDestination(str(self.root / "backups"))
        self.keys = svc.RestoreKeys(org_keyring=OrgKeyring.from_file(self.org_secret))

    def backup(
        self, db: PgDatabase, *, set_kind: str = "regular", versions: dict[str, str] | None = None
    ) -> str:
        encryptor, _ = build_encryptor(self.keys_resource)
        backup_id = new_backup_id()
        # The kind only when it is not the default: the same calls then run on code before it existed.
        kind = {} if set_kind == "regular" else {"set_kind": set_kind}
        database = dump_database(
            PostgresResource(database_url=db.url),
            self.destination,
            encryptor,
            installation_id=INSTALLATION,
            backup_id=backup_id,
            **kind,
        )
        self._finalize(backup_id, database.to_dict(), versions or {}, **kind)
        return backup_id

    def backup_of_dump(self, plaintext: bytes) -> str:
        """An authentic set whose database part is ``plaintext`` (e.g. a truncated dump)."""
        encryptor, _ = build_encryptor(self.keys_resource)
        backup_id = new_backup_id()
        part = upload_part(
            self.destination,
            encryptor,
            installation_id=INSTALLATION,
            backup_id=backup_id,
            part_name=PART_DATABASE,
            plaintext=[plaintext],
        )
        version = locate_pg_tools().pg_dump.version
        database = {"part": part.to_dict(), "server_version": version, "pg_dump_version": version}
        self._finalize(backup_id, {**database, "schema_version": None, "seconds": 0, "table_rows": {}}, {})
        return backup_id

    def _finalize(
        self, backup_id: str, database: dict[str, Any], versions: dict[str, str], **kind: str
    ) -> None:
        encryptor, key_ids = build_encryptor(self.keys_resource)
        finalize_backup(
            self.destination,
            encryptor,
            FinalizeInput(
                installation_id=INSTALLATION,
                backup_id=backup_id,
                started_at=datetime.now(UTC).isoformat(),
                database=database,
                buckets=[],
                key_ids=key_ids,
                versions=versions,
                **kind,  # type: ignore[arg-type]
            ),
        )

    def restore(
        self, backup_id: str, target: str, log: list[str] | None = None, **options: Any
    ) -> dict[str, Any]:
        dry_run = options.pop("dry_run", False)
        return svc.run_restore(
            self.destination,
            self.keys,
            svc.RestoreOptions(
                backup_id=backup_id,
                scope=svc.RestoreScope.DATABASE,
                dry_run=dry_run,
                confirm=svc.confirmation_phrase(backup_id),
                **options,
            ),
            pg_target=pg_target(target),
            pg_restore=locate_pg_tools().pg_restore.path,
            s3_client=None,
            installation_id=INSTALLATION,
            safety_backup=lambda _target: "not needed here",
            log=(log if log is not None else []).append,
        )


def pg_target(dbname: str) -> svc.PgTarget:
    return svc.PgTarget.from_url(f"postgresql://postgres@127.0.0.1:5432/{dbname}")


@pytest.fixture()
def sets(tmp_path: Path) -> Sets:
    return Sets(tmp_path)


@pytest.fixture()
def source() -> Iterator[PgDatabase]:
    db = create_database("bp_dbr_src")
    build_hostile(db, 200, "backup")
    with db.connect() as conn:  # most of the dump is data: a cut half-way lands in it, after the schema
        conn.execute("CREATE TABLE app.bulk AS SELECT g, md5(g::text) FROM generate_series(1, 30000) g")
    yield db
    drop_database(db.name)


@pytest.fixture()
def new_name() -> Iterator[str]:
    name = f"bp_dbr_new_{uuid.uuid4().hex[:10]}"
    yield name
    drop_database(name)


def test_the_hostile_dump_really_holds_a_rule_split_view(source: PgDatabase) -> None:
    listing = subprocess.run(
        [str(locate_pg_tools().pg_restore.path), "--list"],
        input=pg_dump_bytes(source),
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert " RULE app v _RETURN " in listing
    assert "TABLE ATTACH app pd" in listing


def test_restore_into_an_empty_database(sets: Sets, source: PgDatabase, new_name: str) -> None:
    """Disaster recovery: the target does not exist. Failed before with ``schema "app" does not
    exist`` (placeholder view created before its schema) and left the created database behind."""
    backup_id = sets.backup(source)
    report = sets.restore(backup_id, new_name)
    assert schema_sql(new_name) == schema_sql(source.name)
    assert data_digest(new_name) == data_digest(source.name)
    database = report["database"]
    assert database["replaced_database"] is None and database["database_properties_from"] == "backup"
    assert not svc.database_exists(pg_target(new_name), database["scratch_database"])
    assert {t["table"] for t in database["tables"]} >= {f"{QUOTED_SCHEMA}.{QUOTED_TABLE}", "app.p1", "app.pd"}


def test_restore_over_a_populated_database_with_partitioned_keys(sets: Sets, source: PgDatabase) -> None:
    """Failed before with ``cannot drop inherited constraint "p1_pkey"`` (--clean in one transaction)."""
    target = create_database("bp_dbr_dst")
    try:
        build_hostile(target, 30, "current")
        with target.connect() as conn:
            conn.execute("CREATE TABLE app.made_after_backup (x int)")
        backup_id = sets.backup(source)
        report = sets.restore(backup_id, target.name)
        assert schema_sql(target.name) == schema_sql(source.name)  # made_after_backup is gone too
        assert data_digest(target.name) == data_digest(source.name)
        replaced = report["database"]["replaced_database"]
        assert replaced and not svc.database_exists(pg_target(target.name), replaced)
    finally:
        drop_database(target.name)


def test_restore_into_another_name_leaves_the_source_alone(
    sets: Sets, source: PgDatabase, new_name: str
) -> None:
    backup_id = sets.backup(source)
    before = (schema_sql(source.name), data_digest(source.name))
    sets.restore(backup_id, new_name)
    assert (schema_sql(source.name), data_digest(source.name)) == before
    assert data_digest(new_name) == before[1]


def test_dry_run_on_quoted_names_agrees_with_the_real_run(sets: Sets, source: PgDatabase) -> None:
    """The dry run crashed (``InvalidName`` from ``to_regclass`` on stripped quotes) when the target
    has tables and the dump holds quoted identifiers."""
    target = create_database("bp_dbr_dry")
    try:
        build_hostile(target, 30, "current")
        backup_id = sets.backup(source)
        plan = sets.restore(backup_id, target.name, dry_run=True)["database"]
        planned = {t["table"]: (t["rows_in_backup"], t["rows_now"]) for t in plan["tables"]}
        assert planned[f"{QUOTED_SCHEMA}.{QUOTED_TABLE}"] == (200, 30)
        assert planned[f"{QUOTED_SCHEMA}.dotted.name"] == (3, 3)
        real = sets.restore(backup_id, target.name)["database"]
        assert {t["table"]: t["rows"] for t in real["tables"]} == {k: v[0] for k, v in planned.items()}
        # An older set without table_rows in its manifest: counted from the dump, same answer.
        counted = svc.dump_row_counts(
            iter([pg_dump_bytes(source)]), pg_restore=locate_pg_tools().pg_restore.path
        )
        assert counted == {k: v[0] for k, v in planned.items()}
    finally:
        drop_database(target.name)


def test_database_properties_target_kept_backup_applied_to_a_new_database(
    sets: Sets, source: PgDatabase, new_name: str
) -> None:
    with admin_connect() as conn:
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS 'the backed-up one'").format(sql.Identifier(source.name))
        )
        conn.execute(sql.SQL("ALTER DATABASE {} SET work_mem = '7MB'").format(sql.Identifier(source.name)))
    backup_id = sets.backup(source)
    sets.restore(backup_id, new_name)
    assert _properties(new_name) == ("the backed-up one", ["work_mem=7MB"])
    with admin_connect() as conn:
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS 'the target'").format(sql.Identifier(new_name)))
        conn.execute(sql.SQL("ALTER DATABASE {} SET work_mem = '3MB'").format(sql.Identifier(new_name)))
    sets.restore(backup_id, new_name)
    assert _properties(new_name) == ("the target", ["work_mem=3MB"])


def _properties(dbname: str) -> tuple[str | None, list[str]]:
    with admin_connect() as conn:
        row = conn.execute(
            "SELECT shobj_description(d.oid, 'pg_database'), s.setconfig FROM pg_database d "
            "LEFT JOIN pg_db_role_setting s ON s.setdatabase = d.oid AND s.setrole = 0 WHERE d.datname = %s",
            (dbname,),
        ).fetchone()
    assert row is not None
    return row[0], list(row[1] or [])


def test_swap_ends_other_sessions_and_carries_the_data_lease(sets: Sets, source: PgDatabase) -> None:
    target = create_database("bp_dbr_live")
    try:
        build_hostile(target, 5, "current")
        with target.connect(autocommit=True) as conn:
            conn.execute(CREATE_LEASE_TABLE)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (name, run_id, job, holder) VALUES ('lock', 'run-1', 'restore_job', 'me')"
                ).format(sql.Identifier("public", DATA_LEASE_TABLE))
            )
        backup_id = sets.backup(source)
        app = target.connect(autocommit=True)  # the application, still connected
        try:
            report = sets.restore(backup_id, target.name, keep_previous_database=True)
            with pytest.raises(psycopg.OperationalError):
                app.execute("SELECT 1")
        finally:
            app.close()
        database = report["database"]
        assert database["data_lease_rows_carried"] == 1 and database["previous_kept"]
        with target.connect() as conn:
            lease = conn.execute(
                sql.SQL("SELECT run_id FROM {}").format(sql.Identifier("public", DATA_LEASE_TABLE))
            )
            assert lease.fetchall() == [("run-1",)]
        assert data_digest(target.name) == data_digest(source.name)
        # Kept on request: the previous database, untouched, under its bp_replaced_ name.
        assert data_digest(database["replaced_database"])["app.t"][0] == 5
    finally:
        drop_database(target.name)
        if "report" in locals():
            drop_database(report["database"]["replaced_database"])


# --- failures mid-way: the target as before, nothing the run created left ------------------------


@pytest.fixture()
def populated() -> Iterator[PgDatabase]:
    db = create_database("bp_dbr_keep")
    build_hostile(db, 40, "current")
    yield db
    drop_database(db.name)


def _state(db: PgDatabase) -> tuple[str, dict[str, Any]]:
    return schema_sql(db.name), data_digest(db.name)


def test_pg_restore_error_midway_leaves_the_target_and_no_scratch(
    sets: Sets, source: PgDatabase, populated: PgDatabase
) -> None:
    before = _state(populated)
    dump = pg_dump_bytes(source)
    backup_id = sets.backup_of_dump(dump[: len(dump) * 2 // 3])  # authentic, but cut in the data
    with pytest.raises(svc.RestoreError, match="was not touched") as failure:
        sets.restore(backup_id, populated.name)
    scratch = str(failure.value).split("scratch database ", 1)[1].split(" ", 1)[0]
    assert scratch.startswith("bp_restore_p") and not svc.database_exists(pg_target(populated.name), scratch)
    assert _state(populated) == before


def test_source_failing_or_pg_restore_killed_drops_the_scratch(
    source: PgDatabase, populated: PgDatabase
) -> None:
    target = pg_target(populated.name)
    tools = locate_pg_tools()
    dump = pg_dump_bytes(source)
    before = _state(populated)

    def failing() -> Iterator[bytes]:
        yield dump[: len(dump) // 2]
        raise ConnectionResetError("download cut")

    name = svc.scratch_name(svc.RESTORE, svc.process_token())
    with svc.claim_scratch(target, name), pytest.raises(ConnectionResetError):
        svc.restore_into_scratch(failing(), target, name, pg_restore=tools.pg_restore.path)
    assert not svc.database_exists(target, name)

    # pg_restore killed while it restores: the stream waits until the kill happened.
    killed = threading.Event()

    def slow() -> Iterator[bytes]:
        yield dump[: len(dump) // 2]
        victim = _child_pg_restore()
        os.kill(victim, signal.SIGKILL)
        killed.set()
        yield dump[len(dump) // 2 :]

    name = svc.scratch_name(svc.RESTORE, svc.process_token())
    with svc.claim_scratch(target, name), pytest.raises(svc.RestoreError, match="was not touched"):
        svc.restore_into_scratch(slow(), target, name, pg_restore=tools.pg_restore.path)
    assert killed.is_set() and not svc.database_exists(target, name)
    assert _state(populated) == before


def _child_pg_restore() -> int:
    """The pid of this process's ``pg_restore --exit-on-error`` child."""
    for _ in range(100):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == os.getpid() and cmdline[0].endswith(b"pg_restore") and b"--exit-on-error" in cmdline:
                return int(entry.name)
        time.sleep(0.05)
    raise AssertionError("no pg_restore child found")


KILLED_RESTORE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from backup_pipeline.services import restore as svc
    dump, dbname, marker, pg_restore = Path(sys.argv[1]).read_bytes(), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    target = svc.PgTarget.from_url("postgresql://postgres@127.0.0.1:5432/" + dbname)

    def blocks():
        yield dump[: len(dump) // 2]
        marker.write_text(name)
        time.sleep(600)  # killed here, with pg_restore half-way through the scratch database
        yield dump[len(dump) // 2 :]

    name = svc.scratch_name(svc.RESTORE, svc.process_token())
    with svc.claim_scratch(target, name):
        svc.restore_into_scratch(blocks(), target, name, pg_restore=pg_restore)
    """
)


def test_sigkilled_restore_leaves_the_target_and_the_next_run_drops_its_scratch(
    sets: Sets, source: PgDatabase, populated: PgDatabase, tmp_path: Path
) -> None:
    before = _state(populated)
    (tmp_path / "dump").write_bytes(pg_dump_bytes(source))
    marker = tmp_path / "scratch-name"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILLED_RESTORE,
            str(tmp_path / "dump"),
            populated.name,
            str(marker),
            str(locate_pg_tools().pg_restore.path),
        ]
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the restore did not get half-way"
        scratch = marker.read_text()
        assert svc.database_exists(pg_target(populated.name), scratch)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _state(populated) == before
    _wait_until_unclaimed(scratch)  # the server notices the dead session
    # The next real restore (any target on this server) starts by dropping provable leftovers.
    backup_id = sets.backup(source)
    new_name = f"bp_dbr_next_{uuid.uuid4().hex[:8]}"
    try:
        sets.restore(backup_id, new_name)
        assert not svc.database_exists(pg_target(populated.name), scratch)
    finally:
        drop_database(new_name)
    assert _state(populated) == before


def _wait_until_unclaimed(name: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with svc.claim_scratch(pg_target("postgres"), name):
                return
        except svc.ScratchUnavailable:
            assert time.monotonic() < deadline, f"{name} still claimed"
            time.sleep(0.1)


def test_cleanup_drops_only_what_it_can_prove_dead() -> None:
    target = pg_target("postgres")
    run_id = str(uuid.uuid4())
    dagster = svc.scratch_name(svc.RESTORE, svc.run_token(run_id))
    claimed = svc.scratch_name(svc.VERIFY, svc.process_token())
    dead = svc.scratch_name(svc.VERIFY, svc.process_token())
    foreign = f"bp_restore_{uuid.uuid4().hex[:8]}"  # not our exact pattern
    replaced = svc.replaced_name(svc.process_token())
    names = [dagster, claimed, dead, foreign, replaced]
    with admin_connect() as conn:
        for name in names:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with svc.claim_scratch(target, claimed):
            result = svc.cleanup_leftovers(target, run_finished=lambda rid: None if rid != run_id else False)
            assert claimed in result.in_use and dagster in result.in_use
            assert dead not in databases(dead)  # dropped by this cleanup (or a concurrent one)
            assert replaced in result.replaced
            assert svc.cleanup_leftovers(target).unproven.count(dagster) == 1
            result = svc.cleanup_leftovers(target, run_finished=lambda rid: rid == run_id)
            assert dagster in result.dropped and claimed in result.in_use
        assert claimed in svc.cleanup_leftovers(target).dropped
        left = databases("bp_")
        assert foreign in left and replaced in left
        assert not {dagster, claimed, dead} & left
    finally:
        for name in names:
            drop_database(name)


# --- ownership ------------------------------------------------------------------------------------


@pytest.fixture()
def role() -> Iterator[str]:
    name = f"bp_dbr_owner_{uuid.uuid4().hex[:8]}"
    with admin_connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(name)))
    yield name
    with admin_connect() as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def _owner_and_grants(dbname: str, role: str) -> tuple[str, bool]:
    with admin_connect_to(dbname) as conn:
        row = conn.execute(
            "SELECT tableowner, has_table_privilege(%s, 'app.t', 'SELECT') FROM pg_tables "
            "WHERE schemaname = 'app' AND tablename = 'owned'",
            (role,),
        ).fetchone()
    assert row is not None
    return str(row[0]), bool(row[1])


def test_ownership_source_none_and_missing_roles(
    sets: Sets, source: PgDatabase, role: str, new_name: str
) -> None:
    with source.connect() as conn:
        conn.execute("CREATE TABLE app.owned (x int)")
        conn.execute(sql.SQL("ALTER TABLE app.owned OWNER TO {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON app.t TO {}").format(sql.Identifier(role)))
    backup_id = sets.backup(source)

    sets.restore(backup_id, new_name)  # ownership: source (the default), the role exists
    assert _owner_and_grants(new_name, role) == (role, True)
    drop_database(new_name)

    # Whatever owned by and granted to the role goes with it; the backup still names it.
    with source.connect() as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with admin_connect() as conn:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    log: list[str] = []
    with pytest.raises(svc.RestoreRefused, match=rf"ownership: .*'{role}'.* ownership none"):
        sets.restore(backup_id, new_name, log)
    assert log == ["verifying database …"]  # refused after reading the dump, before anything else
    dry = sets.restore(backup_id, new_name, dry_run=True)  # touches nothing, says the same
    assert len(dry["would_refuse"]) == 1 and f"'{role}'" in dry["would_refuse"][0]
    assert not svc.database_exists(pg_target("postgres"), new_name)

    sets.restore(backup_id, new_name, ownership=svc.Ownership.NONE)
    with admin_connect_to(new_name) as conn:
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'owned'").fetchone()
    assert owner == ("postgres",)


def test_a_role_without_createdb_is_refused_naming_the_fix(sets: Sets, source: PgDatabase, role: str) -> None:
    with admin_connect() as conn:
        conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)))
    target = svc.PgTarget.from_url(f"postgresql://{role}@127.0.0.1:5432/{source.name}")
    with pytest.raises(svc.RestoreRefused, match="CREATEDB"):
        svc.check_privileges(target)
    with admin_connect() as conn:
        conn.execute(sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(role)))
    with pytest.raises(svc.RestoreRefused, match=f"does not own database '{source.name}'"):
        svc.check_privileges(target)


def test_the_dump_table_of_contents_is_read_without_the_data(role: str, source: PgDatabase) -> None:
    with source.connect() as conn:
        conn.execute("ALTER TABLE app.t ENABLE ROW LEVEL SECURITY")
        conn.execute(sql.SQL("CREATE POLICY p ON app.t TO {} USING (true)").format(sql.Identifier(role)))
        conn.execute(sql.SQL('GRANT USAGE ON SCHEMA "Weird ""Schema"" ü" TO {}').format(sql.Identifier(role)))
    dump = pg_dump_bytes(source)
    read: list[int] = []

    def blocks() -> Iterator[bytes]:
        for i in range(0, len(dump), 4096):
            read.append(i)
            yield dump[i : i + 4096]

    facts, stream = svc.inspect_dump(blocks(), pg_restore=locate_pg_tools().pg_restore.path)
    assert len(read) * 4096 < len(dump)  # the table of contents only
    assert b"".join(stream) == dump  # and the whole stream again, in order
    assert facts.name == source.name and "ENCODING = 'UTF8'" in facts.create_options
    assert role in facts.policy_roles and role in facts.acl_roles and "postgres" in facts.owners
    assert facts.roles_needed(svc.Ownership.NONE) == frozenset({role})


def test_schema_only_into_another_name(sets: Sets, source: PgDatabase, new_name: str) -> None:
    backup_id = sets.backup(source)
    report = sets.restore(backup_id, new_name, schema_only=True)
    assert schema_sql(new_name) == schema_sql(source.name)
    assert all(rows == 0 for rows in (t["rows"] for t in report["database"]["tables"]))


# --- latest and safety sets ---------------------------------------------------------------------


def test_latest_is_the_newest_regular_set_never_a_safety_set(
    sets: Sets, source: PgDatabase, tmp_path: Path
) -> None:
    """After a restore its safety set was the newest complete set, so ``latest`` picked it."""
    regular = sets.backup(source)
    time.sleep(1.01)  # backup ids sort by the second
    # A safety set as restores wrote them before sets had a kind: only its manifest says so.
    unlabelled = sets.backup(source, versions={"trigger": "pre-restore"})
    assert svc.resolve_backup(sets.destination, sets.keys, installation_id=INSTALLATION).backup_id == regular
    time.sleep(1.01)
    labelled = sets.backup(source, set_kind="safety", versions={"trigger": "pre-restore"})
    listed = {s.backup_id: s for s in svc.list_backups(sets.destination, installation_id=INSTALLATION)}
    assert listed[labelled].kind == "safety" and listed[regular].kind == "regular"
    assert svc.resolve_backup(sets.destination, sets.keys).backup_id == regular
    # Explicitly by id, a safety set restores (that is how a restore is undone).
    assert svc.resolve_backup(sets.destination, sets.keys, labelled).backup_id == labelled
    assert svc.resolve_backup(sets.destination, sets.keys, unlabelled).is_safety

    from click.testing import CliRunner

    from backup_pipeline.cli.cmd_restore import restore_command

    env = {
        "BACKUP_PIPELINE_DESTINATION": "local",
        "BACKUP_PIPELINE_LOCAL_DESTINATION_PATH": str(sets.root / "backups"),
        "BACKUP_PIPELINE_INSTALLATION_ID": INSTALLATION,
        "BACKUP_PIPELINE_STATE_DIR": str(tmp_path / "cli-state"),
    }
    args = ["--org-secret-file", str(sets.org_secret), "--list"]
    listing = CliRunner().invoke(restore_command, args, env=env)
    assert listing.exit_code == 0, listing.output
    lines = {line.split()[0]: line for line in listing.output.splitlines()[1:]}
    assert "SAFETY" in lines[labelled] and "SAFETY" not in lines[regular]
    as_json = CliRunner().invoke(restore_command, [*args, "--json"], env=env)
    assert {s["backup_id"]: s["kind"] for s in json.loads(as_json.output)}[labelled] == "safety"

    with pytest.raises(svc.RestoreRefused, match="only safety backups"):
        only_safety = Sets(tmp_path / "only-safety")
        only_safety.backup(source, set_kind="safety", versions={"trigger": "pre-restore"})
        svc.resolve_backup(only_safety.destination, only_safety.keys)


def test_a_swap_that_fails_renames_nothing(populated: PgDatabase) -> None:
    """The renames and the database-level statements are one transaction."""
    target = pg_target(populated.name)
    token = svc.process_token()
    scratch = svc.scratch_name(svc.RESTORE, token)
    with admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
    try:
        broken = svc.DatabaseFacts(statements=("ALTER DATABASE nowhere_at_all SET work_mem = '1MB';",))
        with pytest.raises(svc.RestoreError, match="nothing was renamed"):
            svc.swap_into_place(
                target,
                scratch,
                token=token,
                source_facts=svc.DatabaseFacts(),
                ownership=svc.Ownership.SOURCE,
                target_facts=broken,
            )
        assert svc.database_exists(target, scratch) and svc.database_exists(target, populated.name)
        assert not svc.database_exists(target, svc.replaced_name(token))
        assert data_digest(populated.name)["app.t"][0] == 40
    finally:
        drop_database(scratch)
