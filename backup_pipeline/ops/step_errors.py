"""Expected step failures without a Python stack trace in the run view, and refused runs.

Dagster's run view prints ``Stack Trace:`` under every step failure whose error carries a
stack, ``dg.Failure`` included (its ``description`` is shown, then the frames of the op and of
Dagster's executor). For an expected outcome — a refusal, bad input, a documented error code — a
stack trace is noise that reads as a crash. :func:`quiet_failure` builds the one exception type
whose recorded error Dagster takes as given: a ``DagsterUserCodeProcessError`` (meant for errors
forwarded from another process) carrying one ``SerializableErrorInfo`` with the message and an
empty stack. The step still fails (hooks run, the run ends FAILURE or CANCELED as usual, the
failure sensors read the message), only the frames are gone. ``test_schedules_rate_limit.py``
asserts the recorded stack is empty, so a Dagster upgrade that changes this is noticed.

:func:`refuse_run` ends a run CANCELED instead of FAILURE: it marks the run canceling with the
reason (Dagster then records "Run was canceled" rather than a failure once the failed step is
counted), tags it ``backup_pipeline/outcome=refused`` and fails the step quietly. A refused run
is not a failed one: ``alert_on_run_failure`` never sees it and nothing retries it.

:func:`expected_failure` is what ops raise for an expected failure with a stable code (the
backup's ``[ERROR_CODE]`` failures, a refused restore or deletion, bad config): quiet, except
that a retryable one in a step whose retry policy still allows a retry is raised as a
``dg.Failure`` Dagster retries (a quiet failure is never retried: Dagster takes it as its own
error). The last attempt is quiet again, so what the run view keeps is one line. Unexpected
exceptions are never wrapped: their stack trace is what a developer needs.
"""

from __future__ import annotations

from typing import NoReturn

import dagster as dg
from dagster._core.errors import DagsterUserCodeProcessError
from dagster._utils.error import SerializableErrorInfo

OUTCOME_TAG = "backup_pipeline/outcome"
OUTCOME_REFUSED = "refused"


def quiet_failure(description: str, code: str | None = None) -> DagsterUserCodeProcessError:
    """An exception that fails the step with ``[code] description`` and no stack trace in the UI."""
    message = f"[{code}] {description}" if code else description
    info = SerializableErrorInfo(message=message, stack=[], cls_name=code or "ExpectedFailure")
    return DagsterUserCodeProcessError(message, user_code_process_error_infos=[info])


def expected_failure(
    context: dg.OpExecutionContext, description: str, code: str, *, retryable: bool = False
) -> Exception:
    """The exception for an expected failure of this step: ``[code] description``, no stack trace,
    unless ``retryable`` and this step's retry policy still has a retry left (then Dagster retries it)."""
    if retryable and retries_left(context):
        return dg.Failure(
            description=f"[{code}] {description}",
            metadata={"error_code": code, "retryable": True},
            allow_retries=True,
        )
    return quiet_failure(description, code)


def retries_left(context: dg.OpExecutionContext) -> bool:
    """Whether Dagster would retry this step if it failed now (its retry policy, this attempt, the run's mode)."""
    step = context.get_step_execution_context()
    policy = step.op_retry_policy
    return policy is not None and not step.retry_mode.disabled and context.retry_number < policy.max_retries


def refuse_run(context: dg.OpExecutionContext, reason: str, *, code: str) -> NoReturn:
    """End this run CANCELED with ``reason`` (tag, warning, canceling event); never returns."""
    context.instance.add_run_tags(context.run_id, {OUTCOME_TAG: OUTCOME_REFUSED})
    context.log.warning(f"[{code}] {reason}")
    run = context.instance.get_run_by_id(context.run_id)
    if run is not None:
        context.instance.report_run_canceling(run, message=f"Refused, not failed: {reason}")
    raise quiet_failure(reason, code)


def is_refused(run: dg.DagsterRun) -> bool:
    return run.tags.get(OUTCOME_TAG) == OUTCOME_REFUSED
