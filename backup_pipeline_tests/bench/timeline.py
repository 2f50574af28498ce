"""Where a job run's wall time goes, read from Dagster's event log of that run.

``dagster job execute`` is timed from outside (launch = the moment the harness started the
process); the event log adds RUN_START, each step's STEP_WORKER_STARTING (the multiprocess
executor asked the forkserver for a worker), STEP_START, STEP_SUCCESS/FAILURE and RUN_SUCCESS.
From those: launch → RUN_START (interpreter, imports, code location, run creation), planning
(RUN_START → first data step start), the span where data moves, the tail after the last data
step (finalize, checks, RUN_SUCCESS) and the Dagster overhead (worker spawns, time with no op
running).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

# Steps that move backup data (their STEP_START is the "first byte" of a run); any other step
# is planning, checking or bookkeeping.
DATA_STEP_PREFIXES = (
    "dump_database",
    "export_bucket",
    "verify_restore_parts",
    "restore_database_step",
    "restore_bucket_step",
)


@dataclass(frozen=True)
class Step:
    key: str
    worker_starting: float | None
    start: float
    end: float

    @property
    def moves_data(self) -> bool:
        return self.key.startswith(DATA_STEP_PREFIXES)

    @property
    def spawn(self) -> float:
        return self.start - self.worker_starting if self.worker_starting is not None else 0.0


@dataclass
class RunTimeline:
    """One run, every time relative to the launch of its process."""

    launched: float
    wall: float
    run_start: float
    run_end: float
    steps: list[Step] = field(default_factory=list)

    def rel(self, t: float) -> float:
        return t - self.launched

    @property
    def data_steps(self) -> list[Step]:
        return [s for s in self.steps if s.moves_data]

    @property
    def first_byte(self) -> float:
        """Launch → STEP_START of the first step that moves data."""
        data = self.data_steps
        return self.rel(min(s.start for s in data)) if data else float("nan")

    @property
    def data_span(self) -> float:
        data = self.data_steps
        return max(s.end for s in data) - min(s.start for s in data) if data else 0.0

    @property
    def tail(self) -> float:
        """Last data step end → RUN_SUCCESS (finalize, manifest, checks, swap, bookkeeping steps)."""
        data = self.data_steps
        return self.run_end - max(s.end for s in data) if data else 0.0

    @property
    def no_op_running(self) -> float:
        covered = 0.0
        cursor = self.run_start
        for step in sorted(self.steps, key=lambda s: s.start):
            begin = max(step.start, cursor)
            if step.end > begin:
                covered += step.end - begin
                cursor = step.end
        return (self.run_end - self.run_start) - covered

    def figures(self) -> dict[str, float]:
        spawns = [s.spawn for s in self.steps if s.worker_starting is not None]
        bookkeeping = [s for s in self.steps if not s.moves_data]
        return {
            "launch_to_run_start": self.rel(self.run_start),
            "run_start_to_first_op": (min(s.start for s in self.steps) - self.run_start)
            if self.steps
            else 0.0,
            "launch_to_first_byte": self.first_byte,
            "data_span": self.data_span,
            "tail": self.tail,
            "run_duration": self.run_end - self.run_start,
            "no_op_running": self.no_op_running,
            "worker_spawn_median": statistics.median(spawns) if spawns else 0.0,
            "worker_spawn_total": sum(spawns),
            "bookkeeping_steps_s": sum(s.end - s.start for s in bookkeeping),
            "run_end_to_exit": self.launched + self.wall - self.run_end,
            "steps": float(len(self.steps)),
        }


def newest_run_timeline(dagster_home: Path, launched: float, wall: float) -> RunTimeline:
    """The timeline of the newest run of the instance at ``dagster_home``."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        run = instance.get_runs(limit=1)[0]
        records = instance.all_logs(run.run_id)
    run_start = run_end = None
    worker: dict[str, float] = {}
    start: dict[str, float] = {}
    steps: list[Step] = []
    for record in records:
        event = record.dagster_event
        if event is None:
            continue
        kind = event.event_type
        if kind is dg.DagsterEventType.RUN_START:
            run_start = record.timestamp
        elif kind in (dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE):
            run_end = record.timestamp
        elif kind is dg.DagsterEventType.STEP_WORKER_STARTING and event.step_key:
            worker[event.step_key] = record.timestamp
        elif kind is dg.DagsterEventType.STEP_START and event.step_key:
            start[event.step_key] = record.timestamp
        elif kind in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE) and event.step_key:
            key = event.step_key
            steps.append(Step(key, worker.get(key), start.get(key, record.timestamp), record.timestamp))
    run_start = run_start if run_start is not None else launched
    run_end = run_end if run_end is not None else launched + wall
    return RunTimeline(launched, wall, run_start, run_end, sorted(steps, key=lambda s: s.start))
