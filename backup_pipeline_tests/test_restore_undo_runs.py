"""Issue 15: a restore run is all-or-nothing for its buckets too, through the product's entry points.

The backup set is made by a real ``backup_job`` run from moto (which stores a key SeaweedFS
refuses: a last path segment over 255 bytes) and restored into the suite's SeaweedFS over
populated buckets — the "objects backed up elsewhere" case of S3-COMPATIBILITY.md:

* ``restore_job`` with the default ``on_unrestorable=fail``: the run fails naming the object, and
  every bucket (including one whose step had succeeded) and the database are as before, with no
  journal and no undo copy left; with ``continue`` the run succeeds and lists the object.
* ``backup-pipeline restore`` (a subprocess) killed with SIGKILL midway: the next CLI restore
  rolls the buckets back before anything else (here before refusing a wrong confirmation).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from backup_pipeline.services import restore as svc
from backup_pipeline.services.restore.undo_journal import JOURNAL_DIR, UNDO_PREFIX, RunJournal
from backup_pipeline_tests.fixtures.postgres import PgDatabase, create_database, drop_database
from backup_pipeline_tests.fixtures.s3 import S3Server
from backup_pipeline_tests.hostile.buckets import CorpusObject, put_object
from backup_pipeline_tests.hostile.compare import compare_buckets, snapshot_buckets
from backup_pipeline_tests.restore_support import (
    INSTALLATION,
    Installation,
    confirm,
    normalised_dump,
    step_metadata,
)

# Steps run before and after the failing bucket (MEDIA), whatever order the executor takes.
MEDIA, DOCS, MANY = "undo-media", "undo-docs", "undo-zz-many"
REFUSED_KEY = "m/" + "x" * 300  # stored by moto, refused by SeaweedFS (KeyTooLongError)
MANY_OBJECTS = 600
VENV_BIN = Path(sys.executable).parent


def _source_objects() -> dict[str, list[CorpusObject]]:
    media = [
        CorpusObject(f"a/{i:03d}.txt", f"backup media {i}".encode(), headers={"Content-Type": "text/plain"})
        for i in range(40)
    ]
    media.append(
        CorpusObject(REFUSED_KEY, b"a key SeaweedFS refuses", headers={"Content-Type": "text/plain"})
    )
    media += [CorpusObject(f"z/{i:03d}.txt", f"backup late {i}".encode()) for i in range(40)]
    docs = [
        CorpusObject(f"doc-{i:02d}.txt", f"backup doc {i}".encode(), tags={"v": "backup"}) for i in range(20)
    ]
    many = [CorpusObject(f"k/{i:05d}", f"backup {i}".encode() * 20) for i in range(MANY_OBJECTS)]
    return {MEDIA: media, DOCS: docs, MANY: many}


def _populate_target(s3: S3Server) -> None:
    """The target before the restore: other versions (headers, metadata, tags) of some keys, extras."""
    client = s3.client()
    for bucket in (MEDIA, DOCS, MANY):
        client.make_bucket(bucket)
    for i in range(0, 40, 3):
        put_object(
            s3,
            MEDIA,
            CorpusObject(
                f"a/{i:03d}.txt",
                f"current {i}".encode(),
                headers={"Content-Type": "text/markdown", "x-amz-meta-who": "Grüße"},
                tags={"state": "current"},
            ),
        )
    put_object(s3, MEDIA, CorpusObject("only-in-target.txt", b"extra"))
    for i in range(0, 20, 2):
        put_object(
            s3, DOCS, CorpusObject(f"doc-{i:02d}.txt", b"current doc", headers={"Cache-Control": "no-store"})
        )
    for i in range(MANY_OBJECTS):
        put_object(s3, MANY, CorpusObject(f"k/{i:05d}", f"current {i}".encode(), tags={"n": str(i % 7)}))


@dataclasses.dataclass
class World:
    root: Path
    source_db: PgDatabase
    backup_id: str

    def installation(self, db: PgDatabase, s3: S3Server) -> Installation:
        return Installation(db, s3, self.root)

    def journals(self) -> list[Path]:
        root = self.root / "state" / JOURNAL_DIR
        return sorted(root.iterdir()) if root.is_dir() else []


@pytest.fixture(scope="module")
def world(moto_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("undo")
    source_db = create_database("bp_undo_src")
    try:
        with psycopg.connect(source_db.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
            conn.execute("INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 50) g")
        moto_server.ensure_running()
        moto_server.reset()
        client = moto_server.client()
        for bucket, objects in _source_objects().items():
            client.make_bucket(bucket)
            for obj in objects:
                put_object(moto_server, bucket, obj, client)
        with dg.instance_for_test() as instance:
            source = Installation(source_db, moto_server, root)
            backup_id = source.backup(instance)
        yield World(root, source_db, backup_id)
    finally:
        moto_server.reset()
        drop_database(source_db.name)


def _restore(world: World, db: PgDatabase, s3: S3Server, **config: Any) -> dg.ExecuteInProcessResult:
    with dg.instance_for_test() as instance:
        return world.installation(db, s3).restore(
            instance, backup_id=world.backup_id, dry_run=False, confirm=confirm(world.backup_id), **config
        )


def _failure_text(result: dg.ExecuteInProcessResult) -> str:
    texts = []
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            data = event.event_specific_data
            user = getattr(data, "user_failure_data", None)
            error = getattr(data, "error", None)
            texts.append(
                f"{event.step_key}: {getattr(user, 'description', '') or ''} {getattr(error, 'message', '')}"
            )
    return "\n".join(texts)


def _no_undo_copies(s3: S3Server) -> None:
    client = s3.client()
    for bucket in client.list_buckets():
        left = list(client.list_objects(bucket.name, prefix=UNDO_PREFIX, recursive=True))
        assert left == [], f"undo copies left in {bucket.name}"


@pytest.fixture()
def target_db() -> Iterator[PgDatabase]:
    db = create_database("bp_undo_target")
    with psycopg.connect(db.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO notes VALUES (1, 'the application moved on')")
    yield db
    drop_database(db.name)


def test_default_fail_rolls_back_every_bucket_and_leaves_the_database(
    world: World, s3: S3Server, target_db: PgDatabase
) -> None:
    _populate_target(s3)
    before = snapshot_buckets(s3, always_read_tags=True)
    db_before = normalised_dump(target_db.url)

    result = _restore(world, target_db, s3, conflict_policy="overwrite")

    assert not result.success
    failure = _failure_text(result)
    assert "refused by the server: KeyTooLongError" in failure and "rolled back" in failure, failure
    report = compare_buckets(before, snapshot_buckets(s3, always_read_tags=True))
    assert report.differences == [], report.render()
    assert normalised_dump(target_db.url) == db_before, "the database was not swapped"
    assert world.journals() == [], "the journal is removed after the rollback"
    _no_undo_copies(s3)


def test_continue_succeeds_and_lists_the_object_the_target_cannot_hold(
    world: World, s3: S3Server, target_db: PgDatabase
) -> None:
    _populate_target(s3)

    result = _restore(
        world, target_db, s3, scope="files", conflict_policy="overwrite", on_unrestorable="continue"
    )

    assert result.success, _failure_text(result)
    steps = step_metadata(result, "restore_bucket_step")
    (media,) = [m for m in steps.values() if m["bucket"] == MEDIA]
    assert media["failed"] == 1 and media["unrestorable"] == [
        f"{REFUSED_KEY}: refused by the server: KeyTooLongError"
    ]
    assert media["added"] + media["overwritten"] == 80
    finish = step_metadata(result, "finish_restore")["finish_restore"]
    assert finish["buckets"][MEDIA]["failed"] == 1
    stored = snapshot_buckets(s3, [MEDIA])[MEDIA]
    assert stored["a/000.txt"].sha256 != "" and REFUSED_KEY not in stored
    assert world.journals() == []
    _no_undo_copies(s3)


def _cli_env(world: World, s3: S3Server, db: PgDatabase) -> dict[str, str]:
    return {
        "PATH": f"{VENV_BIN}:/usr/bin:/bin",
        "HOME": str(world.root),
        "LANG": "C.UTF-8",
        "BACKUP_PIPELINE_DESTINATION": "local",
        "BACKUP_PIPELINE_LOCAL_DESTINATION_PATH": str(world.root / "backups"),
        "BACKUP_PIPELINE_INSTALLATION_ID": INSTALLATION,
        "BACKUP_PIPELINE_STATE_DIR": str(world.root / "state"),
        "BACKUP_PIPELINE_APP_DATABASE_URL": db.url,
        **s3.env(),
    }


def _cli(world: World, *args: str) -> list[str]:
    return [
        "backup-pipeline",
        "restore",
        "--org-secret-file",
        str(world.root / "org-secret"),
        "--scope",
        "files",
        "--bucket",
        MANY,
        "--conflict-policy",
        "overwrite",
        *args,
    ]


def _journal_lines(world: World) -> int:
    return sum(len(p.read_bytes().splitlines()) for d in world.journals() for p in d.glob("*.jsonl"))


def test_a_killed_cli_restore_is_rolled_back_by_the_next_run_first(
    world: World, s3: S3Server, target_db: PgDatabase
) -> None:
    _populate_target(s3)
    before = snapshot_buckets(s3, [MANY], always_read_tags=True)
    env = _cli_env(world, s3, target_db)
    process = subprocess.Popen(
        _cli(world, "--no-dry-run", "--confirm", f"restore {world.backup_id}"),
        env=env,
        cwd=world.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while _journal_lines(world) < 100 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, f"the restore ended before it could be killed: {process.communicate()}"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]
    assert compare_buckets(before, snapshot_buckets(s3, [MANY], always_read_tags=True)).differences, (
        "the killed run had changed objects"
    )
    assert len(world.journals()) == 1

    again = subprocess.run(
        _cli(world, "--no-dry-run", "--confirm", "restore something-else"),
        env=env,
        cwd=world.root,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert again.returncode == 1 and "confirm" in again.stderr, again.stderr
    assert "rolled back the buckets of restore p" in again.stderr, again.stderr
    report = compare_buckets(before, snapshot_buckets(s3, [MANY], always_read_tags=True))
    assert report.differences == [], report.render()
    assert world.journals() == []
    _no_undo_copies(s3)


def test_the_dry_run_journals_nothing_and_names_the_key_at_risk(
    world: World, s3: S3Server, target_db: PgDatabase
) -> None:
    _populate_target(s3)
    done = subprocess.run(
        [*_cli(world)[:6], "--bucket", MEDIA, "--json"],
        env=_cli_env(world, s3, target_db),
        cwd=world.root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert '"at_risk": 1' in done.stdout
    assert world.journals() == []


def test_restore_job_rolls_back_a_killed_restores_journal_before_anything_else(
    world: World, s3: S3Server, target_db: PgDatabase
) -> None:
    _populate_target(s3)
    before = snapshot_buckets(s3, [MANY], always_read_tags=True)
    # A restore killed half-way (a CLI process: its owner lock is gone with it).
    killed = RunJournal(world.root / "state", svc.process_token())
    half = {f"k/{i:05d}": f"half-restored {i}".encode() for i in range(50)}
    entries = (
        svc.RestoreEntry(
            key=k, size=len(v), content_type="text/plain", metadata={}, tags={}, fileobj=io.BytesIO(v)
        )
        for k, v in half.items()
    )
    inventory = {k: svc.IncomingObject(k, len(v), hashlib.sha256(v).hexdigest()) for k, v in half.items()}
    with killed.open_bucket(s3.client(), MANY) as journal:
        svc.restore_bucket(
            s3.client(), MANY, entries, inventory, svc.ConflictPolicy.OVERWRITE, "x", journal=journal
        )
    assert compare_buckets(before, snapshot_buckets(s3, [MANY], always_read_tags=True)).differences

    result = _restore(world, target_db, s3, scope="files", buckets=[DOCS], conflict_policy="overwrite")

    assert result.success, _failure_text(result)
    recovered = step_metadata(result, "start_restore")["start_restore"]["recovered_undo_journals"]
    assert [r["token"] for r in recovered] == [killed.token] and recovered[0]["restored"] == 50
    report = compare_buckets(before, snapshot_buckets(s3, [MANY], always_read_tags=True))
    assert report.differences == [], report.render()
    assert world.journals() == []
    _no_undo_copies(s3)
