"""A small client for the pipeline's Dagster webserver over GraphQL (the seed's REST endpoints).

Built on ``dagster_graphql.DagsterGraphQLClient`` (run submission, status) plus a few GraphQL
queries it does not wrap (run history, one run's materialization and step stats). Works
through an authenticating reverse proxy: pass extra headers and/or basic auth.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml
from dagster import DagsterRunStatus
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError
from requests.auth import HTTPBasicAuth

from .change_counts import CHANGE_KEYS

BACKUP_JOB = "backup_job"
DELETE_JOB = "delete_backup_job"
RESTORE_JOB = "restore_job"
BACKUP_ID_TAG = "backup_pipeline/backup_id"
# Tags of a restore run (ops/restore.py): the safety set it made, and the set it restored.
SAFETY_BACKUP_TAG = "backup_pipeline/safety_backup_id"
#: ``seeding`` on a backup run that wrote a seed checkpoint, not a set (``services/backup_seed.OUTCOME_TAG``).
OUTCOME_TAG = "backup_pipeline/outcome"
RESTORE_OF_TAG = "backup_pipeline/restore_of"
TERMINAL = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


class ClientError(Exception):
    """The webserver could not be reached, or refused the request; message says which."""


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    status: str
    job_name: str
    backup_id: str | None
    start_time: float | None
    end_time: float | None
    tags: dict[str, str] = field(default_factory=dict)
    creation_time: float | None = None
    #: CHANGE_KEYS of the set the run made (None: not queried, or no complete set / older ledger).
    changes: dict[str, int] | None = None

    @property
    def outcome(self) -> str | None:
        """``seeding``: the run succeeded but its set is not complete yet (a first full spread over days)."""
        return self.tags.get(OUTCOME_TAG)

    @property
    def safety_backup_id(self) -> str | None:
        """The safety set a restore run made of the database it replaced (None: it made none)."""
        return self.tags.get(SAFETY_BACKUP_TAG)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "job_name": self.job_name,
            "backup_id": self.backup_id,
            "start_time": self.start_time,
            "end_time": self.end_time,
            **({"outcome": self.outcome} if self.outcome else {}),
            **({"changes": self.changes} if self.changes is not None else {}),
        }


@dataclass(frozen=True)
class HistoryEntry:
    """One line of ``history``: a backup run, or a safety set made inside a restore run."""

    run: RunSummary
    kind: str  # "backup" | "safety"

    @property
    def backup_id(self) -> str | None:
        return self.run.safety_backup_id if self.kind == "safety" else self.run.backup_id

    @property
    def restore_of(self) -> str | None:
        """For a safety set: the backup its restore run restored."""
        return self.run.tags.get(RESTORE_OF_TAG) if self.kind == "safety" else None

    def to_json(self) -> dict[str, Any]:
        data = {**self.run.to_json(), "kind": self.kind, "backup_id": self.backup_id}
        if self.kind == "safety":
            data["restore_of"] = self.restore_of
        return data


_RUN_FIELDS = """
  runId status jobName creationTime startTime endTime
  tags { key value }
"""

_RUNS_QUERY = (
    """
query BackupRuns($filter: RunsFilter, $cursor: String, $limit: Int) {
  runsOrError(filter: $filter, cursor: $cursor, limit: $limit) {
    __typename
    ... on Runs { results { """
    + _RUN_FIELDS
    + """ } }
    ... on PythonError { message }
    ... on InvalidPipelineRunsFilterError { message }
  }
}
"""
)

# The backup runs of ``history`` with the integer metadata of their backup_set materialization.
_HISTORY_QUERY = (
    """
query BackupHistory($filter: RunsFilter, $cursor: String, $limit: Int) {
  runsOrError(filter: $filter, cursor: $cursor, limit: $limit) {
    __typename
    ... on Runs { results { """
    + _RUN_FIELDS
    + """
      assetMaterializations {
        assetKey { path }
        metadataEntries { label ... on IntMetadataEntry { intRepr } }
      }
    } }
    ... on PythonError { message }
    ... on InvalidPipelineRunsFilterError { message }
  }
}
"""
)

_RUN_DETAIL_QUERY = (
    """
query BackupRun($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      """
    + _RUN_FIELDS
    + """
      stepStats { stepKey status }
      assetMaterializations {
        assetKey { path }
        metadataEntries {
          label
          ... on TextMetadataEntry { text }
          ... on IntMetadataEntry { intRepr }
          ... on FloatMetadataEntry { floatValue }
          ... on BoolMetadataEntry { boolValue }
          ... on JsonMetadataEntry { jsonString }
          ... on PathMetadataEntry { path }
          ... on MarkdownMetadataEntry { mdStr }
          ... on UrlMetadataEntry { url }
        }
      }
    }
    ... on RunNotFoundError { message }
    ... on PythonError { message }
  }
}
"""
)

_FAILURE_EVENTS_QUERY = """
query RunFailures($runId: ID!) {
  logsForRun(runId: $runId, limit: 1000) {
    __typename
    ... on EventConnection {
      events {
        __typename
        ... on ExecutionStepFailureEvent { stepKey message error { message } }
        ... on RunFailureEvent { message }
      }
    }
  }
}
"""


_JOB_PRESETS_QUERY = """
query JobPresets($selector: PipelineSelector!) {
  pipelineOrError(params: $selector) {
    __typename
    ... on Pipeline { presets { name runConfigYaml } }
    ... on PipelineNotFoundError { message }
    ... on PythonError { message }
  }
}
"""


def parse_url(url: str) -> tuple[str, int | None, bool, str]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--url: must be http(s)://host[:port][/prefix], got {url!r}")
    return parts.hostname, parts.port, parts.scheme == "https", parts.path.rstrip("/")


class PipelineClient:
    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        basic_auth: tuple[str, str] | None = None,
        timeout: int = 60,
    ):
        host, port, https, prefix = parse_url(url)
        self.url = url
        self.address = f"{host}:{port or (443 if https else 80)}"
        try:
            self.gql = DagsterGraphQLClient(
                host,
                port_number=port,
                use_https=https,
                timeout=timeout,
                headers=headers or None,
                auth=HTTPBasicAuth(*basic_auth) if basic_auth else None,
                path_prefix=prefix,
            )
        except Exception as exc:  # the client connects on construction
            raise self._error(exc, "connecting") from None

    def _query(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.gql._execute(query, variables)
        except DagsterGraphQLClientError as exc:
            raise self._error(exc, f"GraphQL request to {self.url}") from None

    def _error(self, exc: BaseException, doing: str) -> ClientError:
        """One line: the webserver's host, port and why it could not be reached (urllib3's
        "HTTPConnectionPool(...): Max retries exceeded ... Caused by NewConnectionError(...)" is
        three layers around a "Connection refused"); any other failure with what was being done."""
        reason = _connection_reason(exc)
        if reason is not None:
            return ClientError(f"cannot reach the Dagster webserver at {self.address}: {reason}")
        return ClientError(f"{doing} failed: {_short(exc)}")

    # --- runs ---------------------------------------------------------------------------

    def submit(
        self, job_name: str, run_config: dict[str, Any] | None = None, tags: dict[str, str] | None = None
    ) -> str:
        try:
            return self.gql.submit_job_execution(job_name, run_config=run_config or {}, tags=tags or {})
        except DagsterGraphQLClientError as exc:
            raise self._error(exc, f"launching {job_name}") from None

    def default_run_config(self, job_name: str) -> dict[str, Any]:
        """The job's default run config (what the Launchpad pre-fills, built from the settings)."""
        try:
            jobs = self.gql._get_repo_locations_and_names_with_pipeline(job_name)
        except DagsterGraphQLClientError as exc:
            raise self._error(exc, f"looking up {job_name}") from None
        if not jobs:
            raise ClientError(f"no job named {job_name} on {self.url}")
        selector = {
            "repositoryLocationName": jobs[0].repository_location_name,
            "repositoryName": jobs[0].repository_name,
            "pipelineName": job_name,
        }
        data = self._query(_JOB_PRESETS_QUERY, {"selector": selector})["pipelineOrError"]
        if data["__typename"] != "Pipeline":
            raise ClientError(f"{job_name}: {data.get('message', data['__typename'])}")
        presets = {p["name"]: p["runConfigYaml"] for p in data["presets"]}
        return dict(yaml.safe_load(presets.get("default") or "") or {})

    def run_backup(self, *, force: bool = False) -> str:
        config = None
        if force:
            # A run config naming plan_backup replaces the job's whole default op config (installation
            # id, buckets, interval from the settings), so force is added to the defaults, not sent alone.
            config = self.default_run_config(BACKUP_JOB)
            ops = config.setdefault("ops", {})
            ops.setdefault("plan_backup", {}).setdefault("config", {})["force"] = True
        return self.submit(BACKUP_JOB, config, {"backup_pipeline/trigger": "client"})

    def delete_backup(self, backup_id: str, *, force: bool = False) -> str:
        config = {
            "ops": {
                "delete_backup_op": {
                    "config": {"backup_id": backup_id, "confirm": f"delete {backup_id}", "force": force}
                }
            }
        }
        return self.submit(DELETE_JOB, config, {"backup_pipeline/trigger": "client"})

    def status(self, run_id: str) -> DagsterRunStatus:
        try:
            return self.gql.get_run_status(run_id)
        except DagsterGraphQLClientError as exc:
            raise self._error(exc, f"reading the status of run {run_id}") from None

    def wait(self, run_id: str, *, timeout: float = 6 * 3600, poll: float = 2.0) -> DagsterRunStatus:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(run_id)
            if status in TERMINAL:
                return status
            if time.monotonic() > deadline:
                raise ClientError(f"run {run_id} still {status.value} after {timeout:.0f}s")
            time.sleep(poll)

    def history(
        self,
        *,
        job_name: str = BACKUP_JOB,
        statuses: list[str] | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> list[RunSummary]:
        run_filter: dict[str, Any] = {"pipelineName": job_name}
        if statuses:
            run_filter["statuses"] = [s.upper() for s in statuses]
        data = self._query(_HISTORY_QUERY, {"filter": run_filter, "cursor": cursor, "limit": limit})[
            "runsOrError"
        ]
        if data["__typename"] != "Runs":
            raise ClientError(f"run history unavailable: {data.get('message', data['__typename'])}")
        return [_summary(r) for r in data["results"]]

    def _runs(self, run_filter: dict[str, Any], *, limit: int, cursor: str | None = None) -> list[RunSummary]:
        data = self._query(_RUNS_QUERY, {"filter": run_filter, "cursor": cursor, "limit": limit})[
            "runsOrError"
        ]
        if data["__typename"] != "Runs":
            raise ClientError(f"run history unavailable: {data.get('message', data['__typename'])}")
        return [_summary(r) for r in data["results"]]

    def backup_history(
        self, *, statuses: list[str] | None = None, limit: int = 20, cursor: str | None = None
    ) -> tuple[list[HistoryEntry], str | None]:
        """A page of backup runs (``limit``, after ``cursor``) with the safety sets that restore runs
        made in the same period, newest first; and the cursor of the next page (None: last page).

        Safety sets are made inside ``restore_job`` runs, so a listing of ``backup_job`` runs alone
        never showed them. They are complete sets: listed unless ``statuses`` leaves out success.
        """
        runs = self.history(statuses=statuses, limit=limit, cursor=cursor)
        next_cursor = runs[-1].run_id if len(runs) == limit else None
        entries = [HistoryEntry(run, "backup") for run in runs]
        if not statuses or "success" in {s.lower() for s in statuses}:
            # The page covers the time from its oldest run (all time before it on the last page)
            # up to the run before it (the cursor): each safety set lands on exactly one page.
            newer = self._runs({"runIds": [cursor]}, limit=1) if cursor else []
            window: dict[str, Any] = {"pipelineName": RESTORE_JOB}
            if newer and newer[0].creation_time is not None:
                window["createdBefore"] = newer[0].creation_time
            if next_cursor is not None and runs[-1].creation_time is not None:
                window["createdAfter"] = runs[-1].creation_time
            restores = self._runs(window, limit=1000)
            entries += [HistoryEntry(run, "safety") for run in restores if run.safety_backup_id]
        entries.sort(key=lambda e: e.run.creation_time or e.run.start_time or 0.0, reverse=True)
        return entries, next_cursor

    def find_backup_run(self, backup_id: str) -> RunSummary | None:
        run_filter = {"pipelineName": BACKUP_JOB, "tags": [{"key": BACKUP_ID_TAG, "value": backup_id}]}
        data = self._query(_RUNS_QUERY, {"filter": run_filter, "cursor": None, "limit": 1})["runsOrError"]
        if data["__typename"] != "Runs":
            raise ClientError(f"run lookup failed: {data.get('message', data['__typename'])}")
        return _summary(data["results"][0]) if data["results"] else None

    def show(self, backup_id: str) -> dict[str, Any]:
        """Status, sizes, counts, parts and errors of one backup (by backup id)."""
        summary = self.find_backup_run(backup_id)
        if summary is None:
            raise LookupError(f"no backup run with backup id {backup_id!r}")
        data = self._query(_RUN_DETAIL_QUERY, {"runId": summary.run_id})["runOrError"]
        if data["__typename"] != "Run":
            raise ClientError(f"run {summary.run_id}: {data.get('message', data['__typename'])}")
        metadata: dict[str, Any] = {}
        for mat in data["assetMaterializations"]:
            if mat["assetKey"]["path"] == ["backup_set"]:
                metadata = {e["label"]: _entry_value(e) for e in mat["metadataEntries"]}
        return {
            **summary.to_json(),
            "steps": {s["stepKey"]: s["status"] for s in data["stepStats"]},
            "ledger": metadata,
            "errors": self.errors(summary.run_id) if summary.status == "FAILURE" else [],
        }

    def find_backup_id(self, run_id: str) -> str | None:
        data = self._query(_RUN_DETAIL_QUERY, {"runId": run_id})["runOrError"]
        if data["__typename"] != "Run":
            return None
        return _summary(data).backup_id

    def errors(self, run_id: str) -> list[str]:
        data = self._query(_FAILURE_EVENTS_QUERY, {"runId": run_id})["logsForRun"]
        if data["__typename"] != "EventConnection":
            return []
        out, run_failures = [], []
        for event in data["events"]:
            if event["__typename"] == "ExecutionStepFailureEvent":
                message = str((event.get("error") or {}).get("message") or event.get("message") or "failed")
                message = message.strip().removeprefix("dagster._core.definitions.events.Failure: ")
                out.append(f"{event.get('stepKey')}: {message}")
            elif event["__typename"] == "RunFailureEvent" and event.get("message"):
                run_failures.append(f"run: {str(event['message']).strip()}")
        # A run can fail with no step failing (its worker died, a hook or the launcher failed).
        return out or run_failures


def _summary(run: dict[str, Any]) -> RunSummary:
    tags = {t["key"]: t["value"] for t in run.get("tags", [])}
    return RunSummary(
        run_id=run["runId"],
        status=run["status"],
        job_name=run["jobName"],
        backup_id=tags.get(BACKUP_ID_TAG),
        start_time=run.get("startTime"),
        end_time=run.get("endTime"),
        tags=tags,
        creation_time=run.get("creationTime"),
        changes=_changes(run.get("assetMaterializations")),
    )


def _changes(materializations: list[dict[str, Any]] | None) -> dict[str, int] | None:
    for mat in materializations or ():
        if mat["assetKey"]["path"] == ["backup_set"]:
            values = {e["label"]: e["intRepr"] for e in mat["metadataEntries"] if "intRepr" in e}
            if all(k in values for k in CHANGE_KEYS):
                return {k: int(values[k]) for k in CHANGE_KEYS}
    return None


def _entry_value(entry: dict[str, Any]) -> Any:
    # intRepr, not intValue: GraphQL's Int is 32-bit, Dagster sends null for a larger value
    # (a set of more than 2 GiB had no total_bytes in ``show``).
    if entry.get("intRepr") is not None:
        return int(entry["intRepr"])
    for key in ("text", "floatValue", "boolValue", "path", "mdStr", "url"):
        if key in entry and entry[key] is not None:
            return entry[key]
    if entry.get("jsonString"):
        return json.loads(entry["jsonString"])
    return None


def _connection_reason(exc: BaseException) -> str | None:
    """The operating system's reason ("Connection refused", "Name or service not known", "timed
    out") found under the layers requests, urllib3 and gql wrap around a failed connection."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror and type(current).__module__ == "builtins":
            return current.strerror
        if isinstance(current, OSError) and type(current).__module__ == "socket":  # gaierror, timeout
            return current.strerror or str(current) or "timed out"
        if type(current).__name__ in ("TimeoutError", "ConnectTimeoutError", "ReadTimeoutError"):
            return "timed out"
        nested = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        pending += [item for item in nested if isinstance(item, BaseException)]
    return None


def _short(exc: BaseException) -> str:
    # DagsterGraphQLClientError puts a generic line first and the cause (e.g. connection refused) after it.
    cause = exc.__cause__ or exc.__context__
    if cause is not None and "during execution of query" in str(exc):
        exc = cause
    args = [" ".join(str(a).split()) for a in exc.args if str(a).strip()]
    text = args[-1] if len(args) > 1 else (args[0] if args else "")
    return text[:400] if text else type(exc).__name__
