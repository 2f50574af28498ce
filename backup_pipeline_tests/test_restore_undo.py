"""Issue 15, bucket side of "a failed restore leaves everything as before": the undo journal
(``services/restore/undo_journal.py``) and ``on_unrestorable`` against the suite's real S3 server
(SeaweedFS), without Dagster. Before/after states are compared with ``hostile/compare.py``:
bytes, standard headers, user metadata (non-ASCII included) and tags of every object."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from backup_pipeline.services import restore as svc
from backup_pipeline.services.restore.undo_journal import (
    JOURNAL_DIR,
    UNDO_PREFIX,
    RunJournal,
    UndoError,
    recover_journals,
)
from backup_pipeline_tests.fixtures.s3 import S3Server
from backup_pipeline_tests.hostile.buckets import CorpusObject, put_object
from backup_pipeline_tests.hostile.compare import compare_buckets, snapshot_buckets

BUCKET = "undo-target"
#: A last path segment of 300 bytes: S3 stores it, SeaweedFS refuses the put (KeyTooLongError).
REFUSED_KEY = "m/" + "x" * 300


def _current() -> list[CorpusObject]:
    """What the bucket holds before the restore: headers, non-ASCII metadata, tags, a folder marker."""
    return [
        CorpusObject(
            "a/overwritten-1.txt",
            b"current one",
            headers={
                "Content-Type": "text/plain",
                "Cache-Control": "max-age=60",
                "Content-Disposition": 'attachment; filename="one.txt"',
                "x-amz-meta-owner": "Grüße, €100",
            },
            tags={"state": "current", "n": "1"},
        ),
        CorpusObject("a/overwritten-2.bin", b"\x00\x01current two" * 50, tags={"state": "current"}),
        CorpusObject(
            "z/overwritten-3.txt",
            b"current three",
            headers={"Content-Type": "text/csv", "Content-Language": "de"},
        ),
        # A folder marker: SeaweedFS cannot CopyObject from or to one exactly (copy_exactly streams).
        CorpusObject(
            "folder/", b"", headers={"Content-Type": "text/x-folder", "x-amz-meta-m": "v"}, tags={"t": "1"}
        ),
        CorpusObject("untouched.txt", b"not in the backup"),
    ]


def _backup_objects() -> dict[str, bytes]:
    objects = {
        "a/overwritten-1.txt": b"restored one, longer",
        "a/overwritten-2.bin": b"restored two",
        "b/new-1.txt": b"new one",
        "b/new-2.txt": b"new two",
        REFUSED_KEY: b"the target refuses this key",
        "z/overwritten-3.txt": b"restored three",
        "z/new-3.txt": b"new three",
    }
    return dict(sorted(objects.items()))  # the archive's (listing) order


def _entries(objects: dict[str, bytes]) -> Iterator[svc.RestoreEntry]:
    for key, data in objects.items():
        yield svc.RestoreEntry(
            key=key,
            size=len(data),
            content_type="text/plain",
            metadata={"state": "restored"},
            tags={"state": "restored"},
            fileobj=io.BytesIO(data),
            headers={"Cache-Control": "no-cache"},
        )


def _inventory(objects: dict[str, bytes]) -> dict[str, svc.IncomingObject]:
    return {k: svc.IncomingObject(k, len(v), hashlib.sha256(v).hexdigest()) for k, v in objects.items()}


def _populate(s3: S3Server) -> None:
    s3.client().make_bucket(BUCKET)
    for obj in _current():
        put_object(s3, BUCKET, obj)


def _restore(
    s3: S3Server,
    journal: RunJournal,
    objects: dict[str, bytes],
    on_unrestorable: svc.OnUnrestorable,
    **kwargs: object,
) -> svc.BucketSummary:
    with journal.open_bucket(s3.client(), BUCKET) as bucket_journal:
        return svc.restore_bucket(
            s3.client(),
            BUCKET,
            _entries(objects),
            _inventory(objects),
            svc.ConflictPolicy.OVERWRITE,
            "bk1",
            journal=bucket_journal,
            on_unrestorable=on_unrestorable,
            **kwargs,  # type: ignore[arg-type]
        )


def _undo_objects(s3: S3Server, bucket: str = BUCKET) -> list[str]:
    return [o.object_name or "" for o in s3.client().list_objects(bucket, prefix=UNDO_PREFIX, recursive=True)]


@pytest.mark.parametrize("streamed", [False, True], ids=["parallel", "streamed"])
def test_a_key_the_server_refuses_midway_fails_and_the_rollback_restores_the_bucket_exactly(
    s3: S3Server, tmp_path: Path, streamed: bool
) -> None:
    _populate(s3)
    before = snapshot_buckets(s3, [BUCKET], always_read_tags=True)
    journal = RunJournal(tmp_path, svc.process_token())

    with pytest.raises(svc.BucketRestoreFailed) as info:
        _restore(
            s3,
            journal,
            _backup_objects(),
            svc.OnUnrestorable.FAIL,
            small_object_bytes=0 if streamed else svc.SMALL_OBJECT_BYTES,
        )
    assert svc.shown_key(REFUSED_KEY) in str(info.value)
    assert "refused by the server: KeyTooLongError" in str(info.value)
    changed = snapshot_buckets(s3, [BUCKET], always_read_tags=True)
    assert compare_buckets(before, changed).differences, "objects before the refused one were changed"

    undone = journal.rollback(s3.client())

    assert undone.restored >= 1 and undone.deleted >= 1
    after = snapshot_buckets(s3, [BUCKET], always_read_tags=True)
    report = compare_buckets(before, after)
    assert report.differences == [], report.render()
    assert _undo_objects(s3) == []
    assert not (tmp_path / JOURNAL_DIR / journal.token).exists(), "the journal is removed after the rollback"


def test_continue_restores_the_rest_and_names_the_refused_object(s3: S3Server, tmp_path: Path) -> None:
    _populate(s3)
    journal = RunJournal(tmp_path, svc.process_token())
    reported: list[str] = []

    summary = _restore(
        s3, journal, _backup_objects(), svc.OnUnrestorable.CONTINUE, report_unrestorable=reported.append
    )
    journal.commit(s3.client())

    assert summary.completed and summary.failed == 1
    assert summary.added == 3 and summary.overwritten == 3
    assert len(reported) == 1 and REFUSED_KEY in reported[0]
    assert summary.as_dict()["unrestorable"] == [f"{REFUSED_KEY}: refused by the server: KeyTooLongError"]
    stored = snapshot_buckets(s3, [BUCKET])[BUCKET]
    expected = {k: hashlib.sha256(v).hexdigest() for k, v in _backup_objects().items() if k != REFUSED_KEY}
    assert {k: stored[k].sha256 for k in expected} == expected
    assert ("cache-control", "no-cache") in stored["a/overwritten-1.txt"].headers
    assert _undo_objects(s3) == [], "a committed run leaves no undo copy"
    assert not (tmp_path / JOURNAL_DIR).exists() or not any((tmp_path / JOURNAL_DIR).iterdir())


def test_an_object_served_differently_is_unrestorable(s3: S3Server, tmp_path: Path) -> None:
    """SeaweedFS serves ``image/jpeg`` for ``.jpg`` written as ``application/octet-stream``."""
    _populate(s3)
    before = snapshot_buckets(s3, [BUCKET], always_read_tags=True)
    data = b"\xff\xd8 not really a jpeg"
    entry = svc.RestoreEntry(
        key="photos/p.jpg",
        size=len(data),
        content_type="application/octet-stream",
        metadata={},
        tags={},
        fileobj=io.BytesIO(data),
    )
    journal = RunJournal(tmp_path, svc.process_token())
    with pytest.raises(svc.BucketRestoreFailed) as info, journal.open_bucket(s3.client(), BUCKET) as bj:
        svc.restore_bucket(
            s3.client(),
            BUCKET,
            [entry],
            {},
            svc.ConflictPolicy.OVERWRITE,
            "bk1",
            journal=bj,
            on_unrestorable=svc.OnUnrestorable.FAIL,
        )
    assert "served differently: Content-Type 'image/jpeg'" in str(info.value)
    journal.rollback(s3.client())
    assert compare_buckets(before, snapshot_buckets(s3, [BUCKET], always_read_tags=True)).differences == []


def test_s3_down_midway_keeps_the_journal_and_the_next_run_rolls_back_first(
    s3: S3Server, tmp_path: Path
) -> None:
    _populate(s3)
    before = snapshot_buckets(s3, [BUCKET], always_read_tags=True)
    objects = {k: v for k, v in _backup_objects().items() if k != REFUSED_KEY}
    keys = list(objects)

    def entries() -> Iterator[svc.RestoreEntry]:
        for i, entry in enumerate(_entries(objects)):
            if i == 4:
                s3.stop()
            yield entry

    journal = RunJournal(tmp_path, svc.process_token())
    with pytest.raises(svc.BucketRestoreFailed), journal.open_bucket(s3.client(), BUCKET) as bucket_journal:
        svc.restore_bucket(
            s3.client(),
            BUCKET,
            entries(),
            _inventory(objects),
            svc.ConflictPolicy.OVERWRITE,
            "bk1",
            journal=bucket_journal,
            on_unrestorable=svc.OnUnrestorable.FAIL,
            small_object_bytes=0,  # one at a time: the first four are written for sure
        )
    with pytest.raises(UndoError, match="the next restore rolls back first"):
        journal.rollback(s3.client())
    assert journal.exists(), "a rollback that could not finish keeps the journal"

    s3.start()
    changed = snapshot_buckets(s3, [BUCKET], always_read_tags=True)
    assert {k for k in keys[:4]} <= set(changed[BUCKET]), "the first objects were written"
    done, left = recover_journals(tmp_path, s3.client())

    assert [d.token for d in done] == [journal.token] and left == []
    assert "rolled back the buckets of restore" in done[0].message()
    report = compare_buckets(before, snapshot_buckets(s3, [BUCKET], always_read_tags=True))
    assert report.differences == [], report.render()
    assert _undo_objects(s3) == [] and not journal.exists()


def test_a_bucket_the_restore_created_is_removed_by_the_rollback(s3: S3Server, tmp_path: Path) -> None:
    journal = RunJournal(tmp_path, svc.process_token())
    with pytest.raises(svc.BucketRestoreFailed):
        _restore(s3, journal, _backup_objects(), svc.OnUnrestorable.FAIL)
    assert s3.client().bucket_exists(BUCKET)
    undone = journal.rollback(s3.client())
    assert undone.buckets_removed == [BUCKET]
    assert not s3.client().bucket_exists(BUCKET)


def test_a_live_process_journal_is_left_alone_and_a_committed_one_is_only_cleaned_up(
    s3: S3Server, tmp_path: Path
) -> None:
    _populate(s3)
    objects = {k: v for k, v in _backup_objects().items() if k != REFUSED_KEY}
    live = RunJournal(tmp_path, svc.process_token())
    live.hold()
    _restore(s3, live, objects, svc.OnUnrestorable.FAIL)
    restored = snapshot_buckets(s3, [BUCKET], always_read_tags=True)
    restored[BUCKET] = {k: v for k, v in restored[BUCKET].items() if not k.startswith(UNDO_PREFIX)}

    done, left = recover_journals(tmp_path, s3.client())
    assert done == [] and len(left) == 1, "the owner still runs: nothing is rolled back"

    (live.directory / "COMMITTED").write_text("COMMITTED\n")  # as if killed right after the commit mark
    live.release()
    done, left = recover_journals(tmp_path, s3.client())
    assert [d.committed for d in done] == [True] and left == []
    after = snapshot_buckets(s3, [BUCKET], always_read_tags=True)
    assert compare_buckets(restored, after).differences == [], "a committed restore is never rolled back"
    assert _undo_objects(s3) == []


def test_keep_both_of_a_folder_marker_keeps_it_a_folder(s3: S3Server, tmp_path: Path) -> None:
    assert svc.keep_both_key("a/b/", "bk1") == "a/b.restored-bk1/"
    assert svc.keep_both_key("a/b.txt", "bk1") == "a/b.txt.restored-bk1"
    _populate(s3)
    client = s3.client()
    data = b"a folder marker with a body in the backup"
    entry = svc.RestoreEntry(
        key="folder/",
        size=len(data),
        content_type="text/plain",
        metadata={},
        tags={},
        fileobj=io.BytesIO(data),
    )
    journal = RunJournal(tmp_path, svc.process_token())
    with journal.open_bucket(client, BUCKET) as bucket_journal:
        summary = svc.restore_bucket(
            client, BUCKET, [entry], {}, svc.ConflictPolicy.KEEP_BOTH, "bk1", journal=bucket_journal
        )
    assert summary.kept_both == 1
    keys = {o.object_name for o in client.list_objects(BUCKET, recursive=True)}
    assert {"folder/", "folder.restored-bk1/"} <= keys


def test_the_dry_run_names_keys_some_servers_refuse(s3: S3Server) -> None:
    objects = _backup_objects()
    plan = svc.plan_bucket(s3.client(), BUCKET, _inventory(objects).values(), svc.ConflictPolicy.OVERWRITE)
    assert plan["at_risk"] == 1
    assert plan["at_risk_keys"] == [f"{REFUSED_KEY}: a path segment over 255 bytes (refused by SeaweedFS)"]


def test_backups_skip_the_undo_copies_a_killed_restore_left(s3: S3Server) -> None:
    from backup_pipeline.services.backup_buckets import iter_listing

    _populate(s3)
    put_object(s3, BUCKET, CorpusObject(f"{UNDO_PREFIX}p{'0' * 32}/1", b"an old version"))
    listed = [o.key for o in iter_listing(s3.client(), BUCKET)]
    assert sorted(listed) == sorted(o.key for o in _current())


def test_a_key_the_server_normalises_is_unrestorable_and_the_object_it_replaced_comes_back(
    s3: S3Server, tmp_path: Path
) -> None:
    """SeaweedFS stores ``n//x.txt`` as ``n/x.txt``: writing it replaces that object."""
    _populate(s3)
    put_object(s3, BUCKET, CorpusObject("n/x.txt", b"the object a normalised key lands on"))
    before = snapshot_buckets(s3, [BUCKET], always_read_tags=True)
    objects = {"n//x.txt": b"restored under a key with a double slash"}
    journal = RunJournal(tmp_path, svc.process_token())

    with pytest.raises(svc.BucketRestoreFailed) as info:
        _restore(s3, journal, objects, svc.OnUnrestorable.FAIL)
    assert "the server stored it under another one" in str(info.value)

    journal.rollback(s3.client())
    report = compare_buckets(before, snapshot_buckets(s3, [BUCKET], always_read_tags=True))
    assert report.differences == [], report.render()


def test_a_retried_bucket_reopens_its_journal_and_the_rollback_still_reaches_the_first_state(
    s3: S3Server, tmp_path: Path
) -> None:
    """A retried step writes the same bucket again: its undo copies never replace the first ones."""
    _populate(s3)
    before = snapshot_buckets(s3, [BUCKET], always_read_tags=True)
    objects = {k: v for k, v in _backup_objects().items() if k != REFUSED_KEY}
    journal = RunJournal(tmp_path, svc.process_token())
    _restore(s3, journal, objects, svc.OnUnrestorable.FAIL)
    second = {k: v + b" (second attempt)" for k, v in objects.items()}
    summary = _restore(s3, journal, second, svc.OnUnrestorable.FAIL)
    assert summary.overwritten == len(second)

    journal.rollback(s3.client())
    report = compare_buckets(before, snapshot_buckets(s3, [BUCKET], always_read_tags=True))
    assert report.differences == [], report.render()
    assert _undo_objects(s3) == []


def test_a_folder_marker_is_saved_and_put_back_exactly(s3: S3Server, tmp_path: Path) -> None:
    """SeaweedFS can neither CopyObject from a folder marker nor to one exactly, and a put over an
    existing one keeps the old headers: the restore names it, the undo copy is streamed."""
    _populate(s3)
    before = snapshot_buckets(s3, [BUCKET], always_read_tags=True)
    journal = RunJournal(tmp_path, svc.process_token())

    summary = _restore(s3, journal, {"folder/": b""}, svc.OnUnrestorable.CONTINUE)

    assert summary.overwritten == 1 and summary.inexact == 1
    assert summary.unrestorable[0].startswith("folder/: served differently: Cache-Control None")
    assert len(_undo_objects(s3)) == 1, "the old folder marker was copied aside"
    journal.rollback(s3.client())
    report = compare_buckets(before, snapshot_buckets(s3, [BUCKET], always_read_tags=True))
    assert report.differences == [], report.render()
