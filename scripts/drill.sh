#!/usr/bin/env bash
# The reliability drill: the fault matrix against real processes (webserver + daemon, run
# workers, moto S3, the Drive test server, PostgreSQL), written to docs/reliability.md.
#   bash scripts/drill.sh            # every row (~20-40 minutes on 2 shared cores)
#   bash scripts/drill.sh --quick    # the quick subset
#   bash scripts/drill.sh --only "pg_dump"   # rows whose name contains the text
# Needs root for the tmpfs destination ("disk full" rows); without it those rows report a drill error.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m backup_pipeline_tests.drill "$@"
