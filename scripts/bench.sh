#!/usr/bin/env bash
# The `bench` command: backup_pipeline's backup and restore jobs against pg_dump/tar/gzip/pigz/age/restic
# and against each pipeline's floor (raw GET/PUT of the same objects, pg_dump/pg_restore alone) on the
# same generated data and a SeaweedFS server it starts itself; where each job's time and CPU go (event
# log, py-spy), the goals' verdicts; writes docs/benchmarks.md and docs/bench/throughput.svg. Unattended.
#   bash scripts/bench.sh --quick     # small dataset, 1 run each: checks the harness (~10 min)
#   bash scripts/bench.sh             # ~1 GiB of objects + pgbench scale 20, 3 runs each
#   bash scripts/bench.sh --chain     # only issue 18's chain goals (1 % changed, restore of the 30th set; ~15 min)
#   BENCH_S3_ACCESS_KEY=… BENCH_S3_SECRET_KEY=… bash scripts/bench.sh --s3-endpoint http://minio:9000
#                                     # against an external S3 server (only the bench-* buckets are touched)
# Other options: --runs N --scale S --archive-runs N --workdir DIR --keep --no-doc --no-profile --phases LIST
#
# The working tree is shared with colleagues editing it, so by default the harness runs on a clean
# snapshot of HEAD (`git archive`, no uncommitted edits) and copies the two generated files back;
# --working-tree runs the tree as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in pg_dump pg_restore pgbench age age-keygen pigz restic; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench: $tool is missing; run bash scripts/setup.sh --for bench" >&2; exit 2; }
done
[ -x .venv/bin/weed ] || [ "${*#*--s3-endpoint}" != "$*" ] || { echo "bench: .venv/bin/weed (SeaweedFS) is missing; run bash scripts/setup.sh --for bench" >&2; exit 2; }
[ -x .venv/bin/py-spy ] || echo "bench: py-spy is missing (bash scripts/setup.sh --for bench): the profiles fall back to cProfile of the main thread" >&2
pg_isready -q -h 127.0.0.1 -p 5432 || { echo "bench: PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 2; }
export PGOPTIONS="-c client_min_messages=warning"  # no NOTICE of each dropdb --if-exists in the log
echo "bench: load average $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
PY="$PWD/.venv/bin/python"
args=()
snapshot=1
for arg in "$@"; do
  if [ "$arg" = --working-tree ]; then snapshot=0; else args+=("$arg"); fi
done
if [ "$snapshot" = 0 ]; then
  exec "$PY" -m backup_pipeline_tests.bench "${args[@]}"
fi
head=$(git rev-parse --short HEAD)
snap=$(mktemp -d /tmp/bp-bench-code-XXXXXX)
trap 'rm -rf "$snap"' EXIT
git archive HEAD | tar -x -C "$snap"
# The snapshot's packages come first on sys.path (the venv's editable install is a meta-path finder consulted after it).
status=0
(cd "$snap" && PYTHONPATH="$snap" BENCH_CODE_REF="git commit $head (clean snapshot via git archive)" \
  "$PY" -m backup_pipeline_tests.bench "${args[@]}") || status=$?
if [ -f "$snap/docs/benchmarks.md" ] && ! cmp -s "$snap/docs/benchmarks.md" docs/benchmarks.md; then
  cp "$snap/docs/benchmarks.md" docs/benchmarks.md
  mkdir -p docs/bench && cp "$snap"/docs/bench/*.svg docs/bench/
  [ ! -f "$snap/docs/bench/incr-chain.json" ] || cp "$snap/docs/bench/incr-chain.json" docs/bench/  # --chain
  echo "bench: wrote docs/benchmarks.md and docs/bench/ (code: $head)"
fi
exit "$status"
