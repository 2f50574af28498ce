#!/usr/bin/env bash
# Idempotent set-up for this kind of machine (Debian, Python 3.11, local PostgreSQL):
# system packages, the virtual environment with pinned versions, PostgreSQL running.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pair in "chromium:chromium" "age:age" "pigz:pigz" "restic:restic" "pg_dump:postgresql-client" "time:time" "pgbackrest:pgbackrest"; do
  cmd=${pair%%:*}; pkg=${pair##*:}
  if [ "$cmd" = time ]; then [ -x /usr/bin/time ] || need_apt+=("$pkg"); continue; fi
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" >/dev/null
  else
    sudo apt-get update -q >/dev/null && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" >/dev/null
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
# constraints.txt pins every transitive version (pip freeze of a working install).
.venv/bin/pip install -q -c constraints.txt -e ".[dev,deploy]"

# `docker compose config` validates docker-compose.yml (no engine needed); Debian's
# docker-compose (v1) stands in where the compose plugin is missing.
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
  echo "setup: installing docker-compose"
  if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo); fi
  "${SUDO[@]}" apt-get update -q >/dev/null
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker-compose >/dev/null
fi

# PostgreSQL: the machine's server on 127.0.0.1:5432.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "setup: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  pg_isready -h 127.0.0.1 -p 5432 || { echo "setup: PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }
fi
