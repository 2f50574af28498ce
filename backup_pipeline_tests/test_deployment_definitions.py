"""The code location's Definitions load with every executor setting; the backup job runs on it."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from backup_pipeline.ops.backup import BACKUP_JOB_NAME
from backup_pipeline.settings import ExecutorKind, load_settings


@pytest.mark.parametrize("kind", list(ExecutorKind))
def test_definitions_load_with_each_executor_setting(
    kind: ExecutorKind, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKUP_PIPELINE_STATE_DIR", str(tmp_path / "state"))
    from backup_pipeline.definitions import build_definitions

    settings = load_settings(
        {
            "BACKUP_PIPELINE_EXECUTOR": kind.value,
            "BACKUP_PIPELINE_MAX_CONCURRENT_EXPORTS": "3",
            "BACKUP_PIPELINE_STATE_DIR": str(tmp_path / "state"),
        }
    )
    defs = build_definitions(settings)
    dg.Definitions.validate_loadable(defs)
    # Jobs without an executor of their own run on the code location's default; the backup
    # job (one step per bucket export) is built with executor_for as well.
    assert defs.executor is not None and defs.executor.name == kind.value
    backup_job = defs.resolve_job_def(BACKUP_JOB_NAME)
    assert backup_job.executor_def.name == kind.value
