"""Buckets above the shard limits: split by key range, exported by parallel steps, read back whole.

The shard planning and the manifest's shard rules run without servers; the job tests run the
real backup job (execute_in_process) against PostgreSQL, SeaweedFS and a local folder
destination, then restore with the disaster-recovery CLI, verify the set, and restore single
objects through a shard's part index.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from click.testing import CliRunner

from backup_pipeline.archive.errors import ManifestError
from backup_pipeline.archive.keys import OrgKeyring, RecoveryIdentity, RecoveryKeyStore
from backup_pipeline.archive.manifest import MANIFEST_FORMAT_V3, Manifest
from backup_pipeline.cli import main
from backup_pipeline.destinations.base import Destination, RetryableError
from backup_pipeline.ops.backup import BACKUP_ID_TAG, build_backup_job
from backup_pipeline.ops.restore import restore_job
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.postgres import locate_pg_tools
from backup_pipeline.services import restore as svc
from backup_pipeline.services.backup_buckets import ListedObject
from backup_pipeline.services.backup_parts import PROP_PART_NAME, bucket_of_part, shard_part_name
from backup_pipeline.services.bucket_shards import ShardLimits, summarize_and_shard
from backup_pipeline.services.restore.single_object import FolderTarget, restore_objects, restore_selection
from backup_pipeline.services.verification import ScratchServer, verify_backup_set
from backup_pipeline.settings import SettingsError, load_settings

from . import backup_helpers as h
from .fixtures.postgres import PgDatabase
from .fixtures.s3 import S3Server
from .hostile.buckets import CorpusObject, hostile_objects, put_object
from .hostile.compare import compare_buckets, snapshot_buckets
from .restore_support import step_metadata

BUCKET = "sharded-src"
OTHER = "small-src"


# --- planning and the manifest's rules (no servers) -------------------------------------------


def _listing(keys: list[str], size: int = 10) -> list[ListedObject]:
    return [ListedObject(k, size, "e") for k in keys]


def test_shards_tile_the_key_space_and_never_split_or_drop_a_key() -> None:
    rng = random.Random(18)
    # Keys that sort right next to each other: a key, the same with '/', ' ', '-', '0' or a
    # non-ASCII letter appended, and unicode keys (compared as code points = UTF-8 bytes).
    base = [f"k/{i:03d}" for i in range(0, 300, 7)]
    keys = sorted(
        {k + suffix for k in base for suffix in ("", "/", " ", "-", "0", "ü")}
        | {"é", "z/日本", "\u00e9x", "folder/"}
    )
    for max_objects in (1, 2, 3, 7, 50, len(keys) - 1):
        summary, shards = summarize_and_shard("b", _listing(keys), ShardLimits(max_objects=max_objects))
        assert summary.objects == len(keys)
        assert shards[0].start_after is None and shards[-1].end is None
        assert all(a.end == b.start_after for a, b in itertools.pairwise(shards))
        for key in [*keys, "", "k/", "k/000\x00", "\U0010ffff"]:
            assert sum(s.contains(key) for s in shards) == 1, (max_objects, key)
        assert [sum(s.contains(k) for k in keys) for s in shards] == [s.objects for s in shards]
        assert all(s.objects <= max_objects for s in shards)
        # A boundary is a key of the listing: that key is in the shard before, never the next.
        for before, after in itertools.pairwise(shards):
            assert before.end in keys and before.contains(before.end) and not after.contains(before.end)
    # Within the limits: not sharded (the set keeps today's format).
    assert summarize_and_shard("b", _listing(keys), ShardLimits(max_objects=len(keys)))[1] == []
    assert summarize_and_shard("b", _listing(keys), None)[1] == []
    # By bytes: a shard closes before the object that would overflow it; an object larger than
    # the limit is a shard of its own.
    sizes = [rng.randint(1, 40) for _ in range(60)] + [500] + [3] * 5
    listing = [ListedObject(f"o{i:03d}", n, "e") for i, n in enumerate(sizes)]
    _, shards = summarize_and_shard("b", listing, ShardLimits(max_bytes=100))
    assert sum(s.objects for s in shards) == len(sizes)
    assert all(s.bytes <= 100 or s.objects == 1 for s in shards)


def test_a_listing_out_of_byte_order_still_gives_increasing_ranges() -> None:
    # SeaweedFS lists "a/b" (a directory's child) before "a-c" although '-' < '/'.
    keys = ["a", "a/b", "a/c", "a-c", "a-d", "b", "b/x", "b-y", "c"]
    _, shards = summarize_and_shard("b", _listing(keys), ShardLimits(max_objects=2))
    ends = [s.end for s in shards[:-1]]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)
    for key in keys:
        assert sum(s.contains(key) for s in shards) == 1


def _sharded_manifest(**change: Any) -> dict[str, Any]:
    part = {
        "ciphertext_size": 1,
        "ciphertext_sha256": "a" * 64,
        "plaintext_size": 1,
        "plaintext_sha256": "b" * 64,
        "ciphertext_md5": None,
        "file_name": None,
    }
    names = [shard_part_name("b", 1), shard_part_name("b", 2)]
    shards = [
        {"part_name": names[0], "start_after": None, "end": "m", "object_count": 2, "object_bytes": 5},
        {"part_name": names[1], "start_after": "m", "end": None, "object_count": 1, "object_bytes": 5},
    ]
    doc: dict[str, Any] = {
        "format": MANIFEST_FORMAT_V3,
        "backup_id": "20260101T000000Z-00000000",
        "installation": "i",
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:00:01+00:00",
        "versions": {},
        "parts": [{**part, "name": n, "kind": "bucket", "bucket": "b"} for n in names],
        "buckets": [
            {"bucket": "b", "part_name": names[0], "object_count": 3, "object_bytes": 10, "shards": shards}
        ],
        "inventory": [],
        "anomalies": [],
    }
    for key, value in change.items():
        if key.startswith("shard"):
            doc["buckets"][0]["shards"][int(key[-1])].update(value)
        else:
            doc[key] = value
    return doc


def test_manifest_shards_must_tile_the_key_space_and_need_format_3() -> None:
    ok = Manifest.from_json(json.dumps(_sharded_manifest()))
    assert ok.buckets[0].part_names() == ["bucket-b@0001", "bucket-b@0002"]
    assert {bucket_of_part(n) for n in ok.buckets[0].part_names()} == {"b"}
    assert Manifest.from_json(ok.to_json()) == ok  # round trip keeps the shards
    bad = {
        "format 1": {"format": "backup_pipeline.manifest/1"},
        "gap": {"shard1": {"start_after": "n"}},
        "open start": {"shard0": {"start_after": "a"}},
        "closed end": {"shard1": {"end": "z"}},
        "counts": {"shard1": {"object_count": 5}},
        "unknown part": {"shard1": {"part_name": "bucket-b@0009"}},
    }
    for what, change in bad.items():
        with pytest.raises(ManifestError):
            Manifest.from_json(json.dumps(_sharded_manifest(**change)))
            pytest.fail(what)


def test_shard_limits_are_validated_and_refused_with_incremental_objects() -> None:
    assert load_settings(env={}).shard_max_objects == 100_000
    assert load_settings(env={}).shard_max_bytes == 8 * 1024**3
    with pytest.raises(SettingsError, match="BACKUP_PIPELINE_SHARD_MAX_OBJECTS: Input should be greater"):
        load_settings(env={"BACKUP_PIPELINE_SHARD_MAX_OBJECTS": "0"})
    with pytest.raises(SettingsError, match="BACKUP_PIPELINE_SHARD_MAX_BYTES: Input should be a valid"):
        load_settings(env={"BACKUP_PIPELINE_SHARD_MAX_BYTES": "8G"})
    assert load_settings(env={"BACKUP_PIPELINE_SHARD_MAX_OBJECTS": "5000"}).shard_max_objects == 5000
    incremental = {"BACKUP_PIPELINE_INCREMENTAL_OBJECTS": "true"}
    with pytest.raises(
        SettingsError, match="BACKUP_PIPELINE_SHARD_MAX_BYTES: sharded buckets are not supported"
    ):
        load_settings(env={**incremental, "BACKUP_PIPELINE_SHARD_MAX_BYTES": "1000"})
    assert load_settings(
        env=incremental
    ).incremental_objects  # the defaults alone: unsharded incremental sets


# --- the backup job ---------------------------------------------------------------------------


def _corpus() -> list[CorpusObject]:
    """Hostile objects (gzip-encoded bodies, keys ending in '/', unicode, headers, tags) that the
    S3 client can address, plus a few hundred small keys that sort next to each other."""
    # Not the path-like oddities (the hostile round trip covers what SeaweedFS does to them).
    odd = (
        "a//",
        "dots/",
        "/",
        "..",
        "spaces",
        "percent",
        "plus",
        "question",
        "back\\",
        "control",
        "tab",
        "newline",
    )
    hostile = [o for o in hostile_objects() if not o.key.startswith(odd)]
    near = [
        CorpusObject(f"n/{i:03d}{suffix}", f"{i}{suffix}".encode() * (i % 5 + 1), via="minio")
        for i in range(90)
        for suffix in ("", "/", "-", "ü")
    ]
    return hostile + near


@pytest.fixture()
def env(tmp_path: Path, fresh_pg_database: PgDatabase, s3: S3Server) -> h.BackupEnv:
    with fresh_pg_database.connect() as conn:  # verification restores the dump and counts rows
        conn.execute("CREATE TABLE files (key text PRIMARY KEY)")
        conn.execute("INSERT INTO files SELECT 'n/' || g FROM generate_series(1, 20) g")
    client = s3.client()
    for bucket in (BUCKET, OTHER):
        client.make_bucket(bucket)
    for obj in _corpus():
        try:
            put_object(s3, BUCKET, obj, client)
        except RuntimeError:
            continue  # refused by this server (SeaweedFS: keys over 255 bytes): not in the reference

    for i in range(5):
        put_object(s3, OTHER, CorpusObject(f"o{i}", b"x" * i, via="minio"), client)
    return h.make_env(tmp_path, fresh_pg_database, s3)


@pytest.fixture()
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def _backup(
    env: h.BackupEnv, instance: dg.DagsterInstance, resources: dict[str, Any] | None = None, **config: Any
) -> dg.ExecuteInProcessResult:
    return build_backup_job(executor_def=dg.in_process_executor).execute_in_process(
        run_config=h.run_config(exclude_table_patterns=[], **config),
        resources={**env.resources(), **(resources or {})},
        instance=instance,
        raise_on_error=False,
    )


def test_sharded_bucket_backs_up_in_parts_and_restores_equal(
    env: h.BackupEnv,
    s3: S3Server,
    instance: dg.DagsterInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = snapshot_buckets(s3, [BUCKET, OTHER])
    count = len(before[BUCKET])
    # SeaweedFS keeps one of "n/007" and "n/007/" (a file and a folder of one name): ~290 objects.
    assert count > 250
    result = _backup(env, instance, shard_max_objects=count // 3 + 1)
    assert result.success
    backup_id = str(result.dagster_run.tags[BACKUP_ID_TAG])
    steps = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}
    assert {f"export_bucket[sharded_src_shard000{n}]" for n in (1, 2, 3)} | {
        "export_bucket[small_src]"
    } <= steps

    # Exported once, as an administrator does at set-up: the CLI below restores with it alone.
    recovery = tmp_path / "recovery.key"
    store = RecoveryKeyStore(env.keys.state_dir, OrgKeyring.from_file(env.keys.org_secret_file))
    recovery.write_text(store.export_secret() + "\n")
    manifest = h.read_manifest(
        env.dest(), backup_id, RecoveryIdentity.from_bech32(recovery.read_text().strip())
    )
    assert manifest.format == MANIFEST_FORMAT_V3
    sharded, small = manifest.bucket(BUCKET), manifest.bucket(OTHER)
    assert sharded is not None and sharded.shards is not None and len(sharded.shards) == 3
    assert sharded.object_count == count == sum(s.object_count for s in sharded.shards)
    assert small is not None and small.shards is None and small.part_name == f"bucket-{OTHER}"
    files = set(h.set_files(env.dest(), backup_id))
    for n, shard in enumerate(sharded.shards, start=1):
        assert shard.part_name == f"bucket-{BUCKET}@000{n}" and shard.index_part == f"index-{BUCKET}@000{n}"
        assert {shard.part_name, shard.index_part} <= files
    # Every archived key is in its shard's range and in one shard only.
    assert len({e.key for e in manifest.inventory if e.bucket == BUCKET}) == count

    # Verification authenticates every shard part and index.
    tools = locate_pg_tools()
    keys = svc.RestoreKeys(org_keyring=OrgKeyring.from_file(env.keys.org_secret_file))
    report = verify_backup_set(
        env.dest(),
        keys,
        backup_id,
        installation_id=h.INSTALLATION,
        scratch=ScratchServer(
            svc.PgTarget.from_url(env.app_db.database_url), tools.pg_restore.path, tools.pg_restore.version
        ),
    )
    assert report.ok, report.summary()
    checked = {c.name for c in report.checks}
    assert {f"part:{s.part_name}" for s in sharded.shards} | {
        f"part:{s.index_part}" for s in sharded.shards
    } <= checked

    # Single objects through a shard's index: a key of the middle shard only reads that shard.
    middle = sharded.shards[1]
    key = next(
        e.key for e in manifest.inventory if e.bucket == BUCKET and middle.start_after < e.key <= middle.end
    )
    resolved = svc.resolve_backup(env.dest(), keys, backup_id)
    one = restore_objects(
        env.dest(), keys, resolved, BUCKET, restore_selection([key]), FolderTarget(tmp_path / "one")
    )
    assert [o["key"] for o in one.objects] == [key]
    assert middle.index_part is not None
    assert one.index_bytes_downloaded == resolved.parts[middle.index_part].size  # no other shard's index
    # A prefix spanning every shard.
    every = restore_objects(
        env.dest(), keys, resolved, BUCKET, restore_selection(prefix="n/"), FolderTarget(tmp_path / "n")
    )
    assert len(every.objects) == sum(1 for k in before[BUCKET] if k.startswith("n/")) > 200

    # The disaster-recovery CLI with the recovery key alone restores the emptied bucket equal.
    client = s3.client()
    for obj in list(client.list_objects(BUCKET, recursive=True)):
        client.remove_object(BUCKET, str(obj.object_name))
    # The restore job plans one step for the bucket, reading every shard.
    dry = restore_job.execute_in_process(
        instance=instance,
        resources=env.resources(),
        run_config={"ops": {"start_restore": {"config": {"backup_id": backup_id, "scope": "files"}}}},
    )
    planned = step_metadata(dry, "restore_bucket_step")
    assert {k: v["added"] for k, v in planned.items()} == {
        "restore_bucket_step[sharded_src]": count,
        "restore_bucket_step[small_src]": 0,
    }
    for name in list(os.environ):
        if name.startswith("BACKUP_PIPELINE_"):
            monkeypatch.delenv(name)
    cli_env = {
        "BACKUP_PIPELINE_DESTINATION": "local",
        "BACKUP_PIPELINE_LOCAL_DESTINATION_PATH": str(env.destination.local_path),
        "BACKUP_PIPELINE_STATE_DIR": str(tmp_path / "cli-state"),
        "BACKUP_PIPELINE_APP_DATABASE_URL": env.app_db.database_url,
        "BACKUP_PIPELINE_S3_ENDPOINT": s3.endpoint,
        "BACKUP_PIPELINE_S3_ACCESS_KEY": s3.access_key,
        "BACKUP_PIPELINE_S3_SECRET_KEY": s3.secret_key,
    }
    args = ["restore", "--recovery-key-file", str(recovery), "--backup-id", backup_id, "--scope", "files"]
    args += ["--bucket", BUCKET, "--no-dry-run", "--confirm", svc.confirmation_phrase(backup_id), "--json"]
    outcome = CliRunner().invoke(main, args, env=cli_env)
    assert outcome.exit_code == 0, outcome.output
    assert json.loads(outcome.stdout)["buckets"][BUCKET]["added"] == count
    after = snapshot_buckets(s3, [BUCKET, OTHER])
    differences = compare_buckets(before, after)
    assert not differences.differences, differences.render()


class _ShardPutFailsOnce:
    """The real destination, except that the first upload of one part fails as a Drive 503 would."""

    def __init__(self, inner: Destination, part: str, failed: list[str]) -> None:
        self.inner, self.part, self.failed = inner, part, failed

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put(self, name: str, stream: Any, properties: Any) -> Any:
        if properties.get(PROP_PART_NAME) == self.part and not self.failed:
            self.failed.append(name)
            raise RetryableError("503 backendError (injected for this test)")
        return self.inner.put(name, stream, properties)


FAILED: list[str] = []


class _FlakyDestination(DestinationResource):
    def get_destination(self) -> Destination:
        return _ShardPutFailsOnce(super().get_destination(), shard_part_name(BUCKET, 2), FAILED)  # type: ignore[return-value]


def test_a_failed_shard_is_retried_alone(env: h.BackupEnv, instance: dg.DagsterInstance) -> None:
    FAILED.clear()
    flaky = _FlakyDestination(**{**env.destination.model_dump(), "retry_attempts": 1})
    result = _backup(env, instance, {"destination": flaky}, shard_max_objects=100)
    assert result.success
    assert FAILED, "the shard's upload did fail once"
    starts: dict[str, int] = {}  # attempts per step: its start, and each restart by the retry policy
    for event in result.all_events:
        if event.event_type_value in ("STEP_START", "STEP_RESTARTED") and event.step_key:
            starts[event.step_key] = starts.get(event.step_key, 0) + 1
    shard_steps = {k: n for k, n in starts.items() if k.startswith("export_bucket[sharded_src")}
    assert len(shard_steps) == 3
    assert shard_steps.pop("export_bucket[sharded_src_shard0002]") == 2
    assert set(shard_steps.values()) == {1}, "the other shards ran once"
    backup_id = str(result.dagster_run.tags[BACKUP_ID_TAG])
    manifest = h.read_manifest(env.dest(), backup_id, env.recovery_identity())
    sharded = manifest.bucket(BUCKET)
    assert sharded is not None and sharded.shards is not None and len(sharded.shards) == 3
    # The failed attempt left no stray file: the set is exactly what the manifest lists.
    assert set(h.set_files(env.dest(), backup_id)) == {p.name for p in manifest.parts} | {"manifest"}
