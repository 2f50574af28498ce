#!/usr/bin/env bash
# README command (1): set up, seed a sample app (PostgreSQL database backup_pipeline_demo +
# an embedded S3 server), start Dagster (webserver + daemon) on a persistent home under
# .demo/, launch a first backup once the backup job exists, and print the UI address.
# Rerunnable: existing data, secrets and run history are kept; the servers are restarted; the
# first backup is launched only while no backup has succeeded yet (a manual backup within
# BACKUP_PIPELINE_MIN_MANUAL_BACKUP_INTERVAL_MINUTES of the last one is refused by design).
#
#   bash scripts/demo.sh          start (or restart)
#   bash scripts/demo.sh stop     stop the S3 server, webserver and daemon this demo started
#
# Overrides (a second demo next to yours, the test of this script): DEMO_DIR (default .demo),
# DEMO_UI_PORT (3000), DEMO_S3_PORT (9000), DEMO_DATABASE (backup_pipeline_demo),
# DEMO_SKIP_SETUP=1 (reuse the existing .venv; no pip, no apt).
set -euo pipefail
case "${DEMO_DIR:-}" in ""|/*) ;; *) DEMO_DIR="$PWD/$DEMO_DIR" ;; esac
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEMO=${DEMO_DIR:-$ROOT/.demo}
UI_PORT=${DEMO_UI_PORT:-3000}
S3_PORT=${DEMO_S3_PORT:-9000}
DB_NAME=${DEMO_DATABASE:-backup_pipeline_demo}
PY="$ROOT/.venv/bin/python"
ACTION=${1:-start}

STOP_CMD="bash scripts/demo.sh stop"
[ -n "${DEMO_DIR:-}" ] && STOP_CMD="DEMO_DIR=$DEMO $STOP_CMD"

group_alive() { kill -0 -- "-$1" 2>/dev/null; }

recorded_pid() {  # the pid in a pid file, if that process is still one this demo started
  local pidfile=$1 pid
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  # A pid file can outlive its process and the pid be reused: only our own venv's processes count.
  if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF "$ROOT/.venv/bin/"; then
    echo "$pid"
  else
    return 1
  fi
}

stop_group() {  # stop a process group this script started (setsid: group id = recorded pid)
  local pidfile=$1 name=$2 pid
  if pid=$(recorded_pid "$pidfile"); then
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do group_alive "$pid" || break; sleep 0.5; done
    if group_alive "$pid"; then kill -KILL -- "-$pid" 2>/dev/null || true; sleep 0.5; fi
    echo "demo: stopped $name (process group $pid)"
  fi
  rm -f "$pidfile"
}

port_free() {  # nothing listens on 127.0.0.1:$1 (SO_REUSEADDR: TIME_WAIT leftovers do not count)
  "$PY" -c 'import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try: s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError: sys.exit(1)' "$1"
}

require_free_port() {
  port_free "$1" && return 0
  echo "demo: port $1 is in use by a program this demo did not start; stop it or set $2" >&2
  exit 1
}

if [ "$ACTION" = stop ]; then
  stop_group "$DEMO/webserver.pid" "dagster-webserver"
  stop_group "$DEMO/daemon.pid" "dagster-daemon (and its runs)"
  stop_group "$DEMO/s3.pid" "embedded S3"
  echo "demo: stopped; data, secrets and history are kept in $DEMO (rerun: bash scripts/demo.sh)"
  exit 0
elif [ "$ACTION" != start ]; then
  echo "usage: bash scripts/demo.sh [start|stop]" >&2
  exit 2
fi

trap 'rc=$?; [ $rc = 0 ] || echo "demo: failed (exit $rc); logs in $DEMO; stop what was started: $STOP_CMD" >&2' EXIT

if [ "${DEMO_SKIP_SETUP:-0}" = 1 ]; then
  [ -x "$PY" ] || { echo "demo: DEMO_SKIP_SETUP=1 but $PY is missing; run bash scripts/setup.sh --for demo" >&2; exit 1; }
else
  bash scripts/setup.sh --for demo
fi
mkdir -p "$DEMO/dagster_home" "$DEMO/state" "$DEMO/backups"
DEMO=$(cd "$DEMO" && pwd)

# --- settings for everything below (the same variables an operator sets) ----------------
# Also the CLI's settings file (README "Command line"): BACKUP_PIPELINE_SETTINGS_FILE=.demo/demo.env.
cat > "$DEMO/demo.env" <<ENV
BACKUP_PIPELINE_APP_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/$DB_NAME
BACKUP_PIPELINE_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
BACKUP_PIPELINE_S3_ACCESS_KEY=demo-access-key
BACKUP_PIPELINE_S3_SECRET_KEY=demo-secret-key
BACKUP_PIPELINE_DESTINATION=local
BACKUP_PIPELINE_LOCAL_DESTINATION_PATH=$DEMO/backups
BACKUP_PIPELINE_STATE_DIR=$DEMO/state
BACKUP_PIPELINE_ORG_SECRET_FILE=$DEMO/org-secret
BACKUP_PIPELINE_URL=http://127.0.0.1:$UI_PORT
DAGSTER_HOME=$DEMO/dagster_home
ENV
chmod 600 "$DEMO/demo.env"  # it holds the (demo) S3 keys
set -a; . "$DEMO/demo.env"; set +a

# --- keys: the operator's set-up step (org secret file + recovery key pair), idempotent ----
# Losing .demo/org-secret loses access to the demo's backups; an existing one is kept.
"$ROOT/.venv/bin/backup-pipeline" keys init

# --- embedded S3 (moto server; in memory, so a restart means reseeding) -------------------
reseed=0
if recorded_pid "$DEMO/s3.pid" >/dev/null && curl -fsS -o /dev/null "http://127.0.0.1:$S3_PORT/moto-api/" 2>/dev/null; then
  echo "demo: embedded S3 (moto) already running on http://127.0.0.1:$S3_PORT"
else
  stop_group "$DEMO/s3.pid" "embedded S3"
  require_free_port "$S3_PORT" DEMO_S3_PORT
  AWS_ACCESS_KEY_ID=demo-access-key AWS_SECRET_ACCESS_KEY=demo-secret-key \
    setsid "$PY" -m moto.server -H 127.0.0.1 -p "$S3_PORT" >>"$DEMO/s3.log" 2>&1 < /dev/null &
  echo $! > "$DEMO/s3.pid"
  for _ in $(seq 1 120); do curl -fsS -o /dev/null "http://127.0.0.1:$S3_PORT/moto-api/" 2>/dev/null && break; sleep 0.5; done
  curl -fsS -o /dev/null "http://127.0.0.1:$S3_PORT/moto-api/" || { echo "demo: S3 server did not start, see $DEMO/s3.log" >&2; exit 1; }
  echo "demo: embedded S3 (moto) on http://127.0.0.1:$S3_PORT"
  reseed=1
fi

# --- sample app ---------------------------------------------------------------------------
if [ "$reseed" = 1 ]; then
  psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$DB_NAME\" WITH (FORCE)" >/dev/null
fi
"$PY" -m backup_pipeline.sample_app --if-empty \
  --database-url "$BACKUP_PIPELINE_APP_DATABASE_URL" --s3-endpoint "$BACKUP_PIPELINE_S3_ENDPOINT"

# --- Dagster instance: the repository's dagster.yaml with the embedded SQLite storage -----
"$PY" - "$ROOT/dagster.yaml" "$DAGSTER_HOME/dagster.yaml" <<'PYEOF'
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
config.pop("storage", None)  # no storage section: SQLite files under the persistent DAGSTER_HOME
open(sys.argv[2], "w").write("# generated by scripts/demo.sh from dagster.yaml (storage: embedded SQLite)\n" + yaml.safe_dump(config))
PYEOF

# Create the storage once, before several processes (webserver, daemon, code servers) race
# to initialise the same fresh SQLite files (seen: "alembic_version has more than one head").
"$PY" -c "from dagster import DagsterInstance; DagsterInstance.get().get_runs(limit=1)"

"$ROOT/.venv/bin/backup-pipeline" check || { echo "demo: backup-pipeline check failed" >&2; exit 1; }

# --- webserver + daemon ----------------------------------------------------------------------
stop_group "$DEMO/webserver.pid" "dagster-webserver"
stop_group "$DEMO/daemon.pid" "dagster-daemon (and its runs)"
# Another program on the UI port would answer /server_info and receive the first backup.
require_free_port "$UI_PORT" DEMO_UI_PORT
setsid "$ROOT/.venv/bin/dagster-webserver" -w workspace.yaml -h 127.0.0.1 -p "$UI_PORT" \
  >>"$DEMO/webserver.log" 2>&1 < /dev/null &
echo $! > "$DEMO/webserver.pid"
setsid "$ROOT/.venv/bin/dagster-daemon" run -w workspace.yaml >>"$DEMO/daemon.log" 2>&1 < /dev/null &
echo $! > "$DEMO/daemon.pid"
for _ in $(seq 1 300); do
  curl -fsS -o /dev/null "http://127.0.0.1:$UI_PORT/server_info" 2>/dev/null && break
  recorded_pid "$DEMO/webserver.pid" >/dev/null || break  # exited: no point waiting
  sleep 1
done
curl -fsS -o /dev/null "http://127.0.0.1:$UI_PORT/server_info" || { echo "demo: webserver did not start, see $DEMO/webserver.log" >&2; exit 1; }

# --- a first backup, once the backup job exists --------------------------------------------
"$PY" - "$UI_PORT" <<'PYEOF'
import sys, time
import requests
from dagster_graphql import DagsterGraphQLClient

port = int(sys.argv[1])
graphql_url = f"http://127.0.0.1:{port}/graphql"


def graphql(query: str) -> dict:
    response = requests.post(graphql_url, json={"query": query}, timeout=120).json()
    if response.get("errors"):
        sys.exit(f"demo: GraphQL error: {response['errors']}")
    return response["data"]


query = """{ repositoryOrError(repositorySelector: {repositoryLocationName: "backup_pipeline", repositoryName: "__repository__"}) {
  ... on Repository { jobs { name } } ... on PythonError { message } } }"""
location_query = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
runs_query = """{ runsOrError(filter: {pipelineName: "backup_job"}, limit: 20) {
  ... on Runs { results { runId status } } } }"""
deadline = time.monotonic() + 300
while True:  # the webserver answers before the code location finished loading
    entries = graphql(location_query)["workspaceOrError"]["locationEntries"]
    entry = next((e for e in entries if e["name"] == "backup_pipeline"), None)
    if entry is None:
        sys.exit(f"demo: the webserver on port {port} has no backup_pipeline code location")
    error = entry["locationOrLoadError"]
    if entry["loadStatus"] == "LOADED" and error and error["__typename"] == "PythonError":
        sys.exit(f"demo: the code location failed to load:\n{error['message']}")
    if entry["loadStatus"] == "LOADED" and error:
        break
    if time.monotonic() > deadline:
        sys.exit("demo: the code location did not load within 300 s; see the webserver log")
    time.sleep(1)
repo = graphql(query)["repositoryOrError"]
if "jobs" not in repo:
    sys.exit(f"demo: the code location failed to load: {repo.get('message')}")
jobs = {j["name"] for j in repo["jobs"]}
client = DagsterGraphQLClient("127.0.0.1", port_number=port)
if "backup_job" not in jobs:
    print("demo: backup_job is not part of the code location yet; skipping the first backup "
          f"(jobs: {', '.join(sorted(jobs))})")
    run_id = client.submit_job_execution("storage_health_job", repository_location_name="backup_pipeline",
                                         repository_name="__repository__")
    job = "storage_health_job"
else:
    job = "backup_job"
    runs = graphql(runs_query)["runsOrError"]["results"]
    succeeded = [r for r in runs if r["status"] == "SUCCESS"]
    running = [r for r in runs if r["status"] in ("QUEUED", "NOT_STARTED", "STARTING", "STARTED")]
    if succeeded:
        # Another manual backup now would be refused by the rate limit, and is not needed.
        print(f"demo: a backup exists already (backup_job run {succeeded[0]['runId']}: SUCCESS); "
              "not launching another  (back up now: Jobs -> backup_job -> Launchpad)")
        sys.exit(0)
    if running:
        run_id = running[0]["runId"]
        print(f"demo: waiting for the backup_job run in progress {run_id}")
    else:
        run_id = client.submit_job_execution("backup_job", repository_location_name="backup_pipeline",
                                             repository_name="__repository__",
                                             tags={"backup_pipeline/trigger": "demo"})
        print(f"demo: launched the first backup: backup_job run {run_id}")
deadline = time.monotonic() + 900
status = client.get_run_status(run_id)
while status.value not in ("SUCCESS", "FAILURE", "CANCELED") and time.monotonic() < deadline:
    time.sleep(2)
    status = client.get_run_status(run_id)
print(f"demo: {job} run {run_id}: {status.value}  (http://127.0.0.1:{port}/runs/{run_id})")
if status.value != "SUCCESS":
    sys.exit(1)
PYEOF

echo
echo "Dagster UI: http://127.0.0.1:$UI_PORT"
echo "Logs: $DEMO/webserver.log, $DEMO/daemon.log; settings: $DEMO/demo.env"
echo "CLI: export BACKUP_PIPELINE_SETTINGS_FILE=$DEMO/demo.env; then e.g. .venv/bin/backup-pipeline restore --list"
echo "Stop: $STOP_CMD   (rerun bash scripts/demo.sh to restart; data and history are kept)"
