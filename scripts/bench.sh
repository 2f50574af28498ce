#!/usr/bin/env bash
# The `bench` command: backup_pipeline's backup and restore jobs against pg_dump/tar/gzip/pigz/age/restic
# on the same generated data; writes docs/benchmarks.md and docs/bench/throughput.svg.
#   bash scripts/bench.sh --quick     # small dataset, 1 run each: checks the harness (< 3 min)
#   bash scripts/bench.sh             # ~1 GiB of objects + pgbench scale 20, 3 runs each
# Other options: --runs N --scale S --archive-runs N --workdir DIR --keep --no-doc --no-profile
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in pg_dump pg_restore pgbench age age-keygen pigz restic; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench: $tool is missing; run scripts/setup.sh" >&2; exit 2; }
done
pg_isready -q -h 127.0.0.1 -p 5432 || { echo "bench: PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 2; }
echo "bench: load average $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
exec .venv/bin/python -m backup_pipeline_tests.bench "$@"
