"""The restore job's side of the bucket undo journal (``services/restore/undo_journal.py``).

A restore run changes its buckets in parallel steps and the database only in ``finish_restore``;
the run is all-or-nothing across all of them:

* ``start_restore`` (a real run, once it holds the data lease, so no other restore is alive)
  rolls back the journals of killed runs before anything else (``recover_at_start``).
* Each ``restore_bucket_step`` journals its bucket (``journaled_bucket``). A step that fails rolls
  its bucket back itself and marks the run ``ABORTED``; a step that starts after a step of the
  run failed writes nothing, and one that succeeds after it rolls its own bucket back and fails
  (the run's ``STEP_FAILURE`` events say so even once a rollback removed the marker). The run's
  lock file orders these decisions.
* The failure hook ``roll_back_buckets_on_failure`` (any step of the run) marks the run and rolls
  back every bucket no step is writing right now; a step still writing sees the mark when done.
* ``finish_restore`` commits after the database swap (``commit_buckets``): ``COMMITTED`` first,
  then the undo copies go. After that a failure (the consistency report) rolls nothing back.

A rollback that cannot finish (S3 unreachable) keeps the journal; the next real restore (job or
CLI) completes it first. The lock files need the run's steps on one host (in-process or
multiprocess executor, or a state dir shared by the step hosts).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg

from backup_pipeline.ops.data_lease import holder_finished
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.services import restore as svc
from backup_pipeline.services.restore.undo_journal import BucketJournal, RunJournal, UndoError


def run_journal(
    context: dg.OpExecutionContext | dg.HookContext, destination: DestinationResource
) -> RunJournal:
    return RunJournal(Path(destination.state_dir), svc.run_token(context.run_id))


def recover_at_start(
    context: dg.OpExecutionContext, destination: DestinationResource, client: Any, *, dry_run: bool
) -> list[dict[str, Any]]:
    """Killed restores' journals: rolled back (a dry run only names them). Raises ``UndoError``."""
    lines: list[str] = []
    recovered = svc.recover_before_restore(
        Path(destination.state_dir),
        client,
        dry_run=dry_run,
        run_finished=holder_finished(context.instance),
        log=lines.append,
    )
    for line in lines:
        context.log.warning(line)
    return recovered


@contextmanager
def journaled_bucket(
    context: dg.OpExecutionContext, destination: DestinationResource, client: Any, bucket: str
) -> Iterator[BucketJournal]:
    """The bucket's journal while the step writes; on failure the bucket is rolled back (and the
    run marked aborted) before the error propagates, the message then says so."""
    journal = run_journal(context, destination)
    if _step_failed(context):
        raise svc.RestoreRolledBack(
            f"bucket {bucket}: another step of this restore failed; nothing was restored"
        )
    try:
        with journal.open_bucket(client, bucket) as bucket_journal:
            yield bucket_journal
    except svc.RestoreError as exc:
        raise svc.RestoreError(f"{exc}; {abort_run(context, journal, client)}") from exc
    except BaseException:
        abort_run(context, journal, client)
        raise
    with journal.run_lock():
        aborted = journal.aborted or _step_failed(context)
    if aborted:
        message = abort_run(context, journal, client)
        raise svc.RestoreRolledBack(f"bucket {bucket}: another step of this restore failed; {message}")


def _step_failed(context: dg.OpExecutionContext) -> bool:
    """Whether a step of this run failed already (its failure hook may have rolled back and
    removed the journal directory, marker included, before this step opened its journal)."""
    failures = context.instance.get_records_for_run(
        context.run_id, of_type=dg.DagsterEventType.STEP_FAILURE, limit=1
    )
    return bool(failures.records)


def abort_run(context: dg.OpExecutionContext | dg.HookContext, journal: RunJournal, client: Any) -> str:
    """Mark the run aborted and roll back every bucket no step is writing; what happened, in words."""
    with journal.run_lock():
        if journal.committed:
            return "the restore had committed: nothing rolled back"
        journal.mark_aborted()
        try:
            undone = journal.rollback(client, only_idle=True)
        except UndoError as exc:
            context.log.error(str(exc))
            return str(exc)
    message = undone.message()
    context.log.warning(message)
    return message


def commit_buckets(context: dg.OpExecutionContext, destination: DestinationResource, client: Any) -> None:
    """The run succeeded (database swapped): record it, then drop the undo copies."""
    journal = run_journal(context, destination)
    if not journal.exists():
        return
    with journal.run_lock():
        if journal.aborted:
            raise svc.RestoreError(
                "a bucket step of this restore failed after all: its buckets were rolled back"
            )
        try:
            done = journal.commit(client)
        except UndoError as exc:  # committed; only the cleanup is left to the next restore
            context.log.warning(str(exc))
            return
    context.log.info(done.message())


@dg.failure_hook(required_resource_keys={"s3", "destination"})
def roll_back_buckets_on_failure(context: dg.HookContext) -> None:
    """A failed step: the run will not commit, so every bucket it changed is put back."""
    journal = run_journal(context, context.resources.destination)
    if not journal.exists():
        return
    try:
        abort_run(context, journal, context.resources.s3.client())
    except Exception as exc:  # the journal stays: the next restore rolls back first
        context.log.error(
            f"rolling back the buckets failed ({type(exc).__name__}); the next restore does it first"
        )
