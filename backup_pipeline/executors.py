"""The Dagster executor of every job, chosen from ``settings.executor`` alone.

Job authors pass ``executor_def=executor_for(settings)``; nobody picks an executor in run
config, so the Launchpad cannot move a backup onto another executor. The optional
integrations (dagster-k8s, dagster-celery, dagster-docker) are imported only when chosen,
so the default install stays small and a missing package fails the code location at load
with the package to install, not with a bare ImportError in the middle of a run.

Where a backend needs a URL that may carry a password (the Celery broker), the executor is
configured with ``{"env": NAME}``: Dagster resolves it in the step process and the UI shows
only the variable name.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

from dagster import ExecutorDefinition, in_process_executor, multiprocess_executor

from backup_pipeline.settings import ENV_PREFIX, BackupSettings, ExecutorKind

# Environment variables the celery and docker executors read. Only their *names* end up in
# the executor config (and so in the UI).
CELERY_BROKER_URL_ENV = "DAGSTER_CELERY_BROKER_URL"
CELERY_BACKEND_URL_ENV = "DAGSTER_CELERY_BACKEND_URL"
DOCKER_NETWORK_ENV = "BACKUP_PIPELINE_DOCKER_NETWORK"

# Imported once by the multiprocess executor's forkserver, before it forks each step worker.
# The instance's storage classes too: a worker rehydrates the run/event storage of the instance
# it reports to, and `import dagster` does not import them (sqlalchemy, alembic, the SQLite and
# PostgreSQL storages): without them each step paid ~1-2.6 s of imports before its first line
# (py-spy of backup_job, docs/benchmarks.md). Imports only: no connection is opened.
FORKSERVER_PRELOAD = (
    "dagster",
    "backup_pipeline.definitions",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.storage.migration.utils",
    "dagster._core.storage.root",
    "dagster._core.storage.defs_state.blob_storage_state_storage",
    "dagster_postgres",
)

# The version every optional integration must have: the Dagster family is pinned together.
INTEGRATION_VERSION = "0.29.27"

_OPTIONAL_PACKAGES: dict[ExecutorKind, tuple[str, str, str]] = {
    # kind: (module, distribution, executor attribute)
    ExecutorKind.K8S: ("dagster_k8s", "dagster-k8s", "k8s_job_executor"),
    ExecutorKind.CELERY: ("dagster_celery", "dagster-celery", "celery_executor"),
    ExecutorKind.DOCKER: ("dagster_docker", "dagster-docker", "docker_executor"),
}


class ExecutorUnavailableError(RuntimeError):
    """The chosen executor's integration package is not installed."""


def _import_integration(kind: ExecutorKind) -> ModuleType:
    module_name, distribution, _ = _OPTIONAL_PACKAGES[kind]
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ExecutorUnavailableError(
            f"{ENV_PREFIX}EXECUTOR={kind.value} needs the {distribution} package, which is not installed: "
            f"pip install -c constraints.txt '{distribution}=={INTEGRATION_VERSION}' "
            f"(or install backup_pipeline with the 'deploy' extra)"
        ) from exc


def _docker_executor_config(settings: BackupSettings) -> dict[str, Any]:
    # Step containers get the same settings and secret variables as the run container:
    # docker_executor forwards a bare NAME with the value of the launching process.
    forwarded = sorted(
        name for name in os.environ if name.startswith(ENV_PREFIX) or name == "DAGSTER_PG_PASSWORD"
    )
    config: dict[str, Any] = {"max_concurrent": settings.max_concurrent_exports, "env_vars": forwarded}
    network = os.environ.get(DOCKER_NETWORK_ENV)
    if network:
        config["networks"] = [network]
    return config


def _celery_executor_config() -> dict[str, Any]:
    config: dict[str, Any] = {}
    # Only when set: {"env": NAME} of an unset variable fails every run at launch, whereas
    # dagster-celery's own default (pyamqp://guest@$DAGSTER_CELERY_BROKER_HOST//) may suffice.
    if os.environ.get(CELERY_BROKER_URL_ENV):
        config["broker"] = {"env": CELERY_BROKER_URL_ENV}
    if os.environ.get(CELERY_BACKEND_URL_ENV):
        config["backend"] = {"env": CELERY_BACKEND_URL_ENV}
    return config


def executor_for(settings: BackupSettings) -> ExecutorDefinition:
    """The executor every job of this code location uses, from ``settings.executor``.

    - ``in_process``: one process, steps one after another (debugging, tiny installs).
    - ``multiprocess``: one process per step (forked from a preloaded forkserver), at most
      ``max_concurrent_exports`` at once.
    - ``k8s``: one Kubernetes Job per step (so each bucket export gets its own pod), at most
      ``max_concurrent_exports`` at once; image, namespace and secrets come from the
      K8sRunLauncher of the instance (Helm values in ``deploy/k8s/``).
    - ``celery``: steps go to Celery workers; concurrency is the workers' ``-c``.
    - ``docker``: one container per step, at most ``max_concurrent_exports`` at once.

    Raises ExecutorUnavailableError naming the package to install when an optional
    integration is missing.
    """
    kind = settings.executor
    if kind is ExecutorKind.IN_PROCESS:
        return in_process_executor
    if kind is ExecutorKind.MULTIPROCESS:
        return multiprocess_executor.configured(
            {
                "max_concurrent": settings.max_concurrent_exports,
                # A spawned step process imports dagster and the code location anew (seconds per
                # step); a forkserver that preloaded them forks a ready worker instead. Nothing
                # opens a connection at import time, so the forked workers share no sockets.
                "start_method": {"forkserver": {"preload_modules": list(FORKSERVER_PRELOAD)}},
            },
            name="multiprocess",
        )

    module = _import_integration(kind)
    executor: ExecutorDefinition = getattr(module, _OPTIONAL_PACKAGES[kind][2])
    if kind is ExecutorKind.K8S:
        return executor.configured({"max_concurrent": settings.max_concurrent_exports}, name="k8s")
    if kind is ExecutorKind.CELERY:
        return executor.configured(_celery_executor_config(), name="celery")
    return executor.configured(_docker_executor_config(settings), name="docker")
