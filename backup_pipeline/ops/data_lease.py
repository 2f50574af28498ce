"""The run-level data lease in Dagster: every data-touching job (backup, restore, retention,
delete, migration) holds it from its first data-touching step to its last.

* ``run_data_lease``: each such step takes the lease (the first step) or shares it (every
  later or sibling step of the same run, in whatever process) and heartbeats while it runs. A
  step of another run fails at once with ``BACKUP_LOCKED`` naming the holder run and job.
* The last op of a job calls ``release_run_data_lease``.
* A failed run releases through the ``release_data_lease_on_failure`` hook, but only once no
  other step of the run is still running (a sibling may still be writing); a step finishing
  normally in a run that already failed releases likewise. Whatever is missed (a killed
  process, a terminated run) is taken over by the next run once the holder's run is finished
  (its status here) or its heartbeat is stale (``services/data_lease.py``).
"""

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from backup_pipeline.ops.step_errors import expected_failure
from backup_pipeline.resources.postgres import DataLockBusy, PostgresResource, PostgresUnavailable
from backup_pipeline.services.backup_parts import ErrorCode
from backup_pipeline.services.data_lease import HolderFinished

#: A holder whose run has one of these statuses is alive (brief of issue 2: finished = anything else).
LIVE_RUN_STATUSES = frozenset(
    {
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.CANCELING,
    }
)
_STEP_EVENTS = {
    dg.DagsterEventType.STEP_START,
    dg.DagsterEventType.STEP_RESTARTED,
    dg.DagsterEventType.STEP_UP_FOR_RETRY,
    dg.DagsterEventType.STEP_SUCCESS,
    dg.DagsterEventType.STEP_FAILURE,
    dg.DagsterEventType.STEP_SKIPPED,
}
_UNFINISHED = {
    dg.DagsterEventType.STEP_START,
    dg.DagsterEventType.STEP_RESTARTED,
    dg.DagsterEventType.STEP_UP_FOR_RETRY,
}


def holder_finished(instance: dg.DagsterInstance) -> HolderFinished:
    """Whether a holder's Dagster run is finished; None when this instance does not know the run
    (the CLI migration, another Dagster instance): then only its heartbeat can prove it dead."""

    def finished(run_id: str) -> bool | None:
        run = instance.get_run_by_id(run_id)
        return None if run is None else run.status not in LIVE_RUN_STATUSES

    return finished


def _step_key(context: dg.OpExecutionContext) -> str:
    return context.get_step_execution_context().step.key


def lease_failure(context: dg.OpExecutionContext, exc: DataLockBusy | PostgresUnavailable) -> Exception:
    """``[BACKUP_LOCKED]`` (not retried: the holder's run may last hours) or ``[DATABASE_UNREACHABLE]``
    (retried by the step's retry policy if it has one), one line without a stack trace."""
    if isinstance(exc, DataLockBusy):
        return expected_failure(context, str(exc), ErrorCode.LOCKED)
    return expected_failure(context, str(exc), ErrorCode.DATABASE_UNREACHABLE, retryable=True)


def acquire_run_data_lease(context: dg.OpExecutionContext, app_db: PostgresResource) -> None:
    """Take or share the lease for this run; fails the step (``BACKUP_LOCKED`` / ``DATABASE_UNREACHABLE``) if not."""
    try:
        acquisition = app_db.acquire_data_lease(
            context.run_id,
            job=context.job_name,
            holder=f"step {_step_key(context)} on {socket.gethostname()} pid {os.getpid()}",
            holder_finished=holder_finished(context.instance),
        )
    except (DataLockBusy, PostgresUnavailable) as exc:
        raise lease_failure(context, exc) from None
    if acquisition.previous is not None:
        context.log.warning(f"took over the data lease from a dead holder: {acquisition.previous.describe()}")


@contextmanager
def run_data_lease(context: dg.OpExecutionContext, app_db: PostgresResource) -> Iterator[None]:
    """Hold this run's data lease while the block runs (taking it if this is the run's first step)."""
    acquire_run_data_lease(context, app_db)
    with app_db.data_lease_heartbeat(context.run_id, on_lost=context.log.error, on_error=context.log.warning):
        yield
    if run_has_failed(context.instance, context.run_id):
        _release_unless_steps_running(
            context.instance, app_db, context.run_id, _step_key(context), context.log
        )


def release_run_data_lease(context: dg.OpExecutionContext, app_db: PostgresResource) -> None:
    """The run's last op is done with the data: free the lease for the next run."""
    try:
        if app_db.release_data_lease(context.run_id):
            context.log.info("released the data lease")
    except PostgresUnavailable as exc:
        context.log.warning(f"could not release the data lease ({exc}); the next run takes it over")


def run_has_failed(instance: dg.DagsterInstance, run_id: str) -> bool:
    return bool(instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE))


def steps_running(instance: dg.DagsterInstance, run_id: str, *, besides: str) -> list[str]:
    """Step keys of this run that started (or wait for a retry) and have not finished, ``besides`` excluded."""
    last: dict[str, dg.DagsterEventType] = {}
    for record in instance.all_logs(run_id, of_type=_STEP_EVENTS):
        event = record.dagster_event
        if event is not None and event.step_key and event.step_key != besides:
            last[event.step_key] = event.event_type
    return sorted(key for key, event_type in last.items() if event_type in _UNFINISHED)


def _release_unless_steps_running(
    instance: dg.DagsterInstance,
    app_db: PostgresResource,
    run_id: str,
    step_key: str,
    log: dg.DagsterLogManager,
) -> None:
    running = steps_running(instance, run_id, besides=step_key)
    if running:
        log.info(f"the run failed; the data lease stays held while {', '.join(running)} still run(s)")
        return
    try:
        if app_db.release_data_lease(run_id):
            log.info("the run failed: released the data lease")
    except PostgresUnavailable as exc:
        log.warning(f"could not release the data lease ({exc}); the next run takes it over")


@dg.failure_hook(required_resource_keys={"app_db"})
def release_data_lease_on_failure(context: dg.HookContext) -> None:
    """A failed step frees its run's lease once no other step of the run is running."""
    _release_unless_steps_running(
        context.instance, context.resources.app_db, context.run_id, context.step_key, context.log
    )
