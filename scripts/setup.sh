#!/usr/bin/env bash
# Idempotent set-up for this kind of machine (Debian, Python 3.11, local PostgreSQL): the Debian
# packages and Python extras one purpose needs, the virtual environment with pinned versions,
# PostgreSQL running.
#
#   bash scripts/setup.sh --for demo    what scripts/demo.sh runs: pg_dump/pg_restore, the package,
#                                       the embedded S3 server (SeaweedFS); no browser, no benchmark tools
#   bash scripts/setup.sh --for test    what scripts/test.sh runs: + Chromium (UI tests), docker-compose
#                                       (deployment tests), the dev tools (pytest, ruff, mypy, Playwright)
#   bash scripts/setup.sh --for bench   what scripts/bench.sh needs: + age, pigz, restic, /usr/bin/time, py-spy
#   bash scripts/setup.sh               all of the above
#   bash scripts/setup.sh --for demo --list   print the Debian packages and extras, install nothing
#
# When another apt-get or dpkg is running, it waits for its lock (APT_LOCK_TIMEOUT, default 900 s)
# instead of failing with exit 100.
set -euo pipefail
cd "$(dirname "$0")/.."

purpose=all
list_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --for) purpose=${2:-}; shift 2 || { echo "setup: --for needs demo, test or bench" >&2; exit 2; } ;;
    --for=*) purpose=${1#--for=}; shift ;;
    --list) list_only=1; shift ;;
    *) echo "usage: bash scripts/setup.sh [--for demo|test|bench] [--list]" >&2; exit 2 ;;
  esac
done

# command:package pairs, and the pip extras, per purpose.
demo_tools=("pg_dump:postgresql-client" "psql:postgresql-client")
test_tools=("chromium:chromium" "docker-compose:docker-compose" "pgbackrest:pgbackrest")
bench_tools=("age:age" "pigz:pigz" "restic:restic" "time:time" "pgbench:postgresql-client")
case "$purpose" in
  demo) tools=("${demo_tools[@]}"); extras="demo" ;;
  test) tools=("${demo_tools[@]}" "${test_tools[@]}"); extras="dev,deploy" ;;
  bench) tools=("${demo_tools[@]}" "${bench_tools[@]}"); extras="dev,deploy,bench" ;;
  all) tools=("${demo_tools[@]}" "${test_tools[@]}" "${bench_tools[@]}"); extras="dev,deploy,bench" ;;
  *) echo "setup: --for must be demo, test, bench or all, got '$purpose'" >&2; exit 2 ;;
esac

have() {  # the command is available (docker-compose: or the `docker compose` plugin)
  case "$1" in
    time) [ -x /usr/bin/time ] ;;
    docker-compose) docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1 ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

need_apt=()
for pair in "${tools[@]}"; do
  cmd=${pair%%:*}; pkg=${pair##*:}
  if [ "$list_only" = 1 ] || ! have "$cmd"; then
    [[ " ${need_apt[*]} " == *" $pkg "* ]] || need_apt+=("$pkg")
  fi
done
if [ "$list_only" = 1 ]; then
  echo "debian: ${need_apt[*]}"
  echo "extras: $extras"
  exit 0
fi

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo); fi
  # shellcheck source=scripts/apt_get_waiting.sh
  . scripts/apt_get_waiting.sh
  apt_get_waiting update -q
  plain=() compose=()
  for pkg in "${need_apt[@]}"; do
    if [ "$pkg" = docker-compose ]; then compose+=("$pkg"); else plain+=("$pkg"); fi
  done
  [ ${#plain[@]} -eq 0 ] || apt_get_waiting install -y -q "${plain[@]}"
  # Debian's docker-compose (v1) only validates docker-compose.yml in the tests (no engine needed):
  # its recommends (the Docker engine) are not.
  [ ${#compose[@]} -eq 0 ] || apt_get_waiting install -y -q --no-install-recommends "${compose[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
# constraints.txt pins every transitive version (pip freeze of a working install).
.venv/bin/pip install -q -c constraints.txt -e ".[$extras]"

# PostgreSQL: the machine's server on 127.0.0.1:5432.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "setup: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  pg_isready -h 127.0.0.1 -p 5432 || { echo "setup: PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }
fi
