#!/usr/bin/env bash
# README command (2): set up everything the tests need, then run the whole suite.
# Exit non-zero when any test fails or when no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --for test
echo "== ruff"
.venv/bin/ruff check backup_pipeline backup_pipeline_tests scripts
.venv/bin/ruff format --check backup_pipeline backup_pipeline_tests scripts
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
mkdir -p test-artifacts
# Three xdist workers on CI's 2 cores: the end-to-end modules use 15-40 % of a core while they
# wait on servers, run queues and wall-clock ticks, so a third worker fills the idle core;
# whole modules per worker (module-scoped databases, servers and scenarios stay in one process),
# longest modules first (backup_pipeline_tests/fixtures/scheduling.py; --no-loadscope-reorder
# keeps that order). PYTEST_WORKERS=0 runs serially; plain `pytest` is serial too.
set +e
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-3}" --dist loadfile --no-loadscope-reorder --durations=15 --junitxml=test-artifacts/junit.xml "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then echo "test.sh: no tests were collected: failing" >&2; exit 1; fi
exit "$rc"
