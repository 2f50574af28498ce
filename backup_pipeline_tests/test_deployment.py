"""The deployable stack: compose file, container entrypoint, instance config, executor switch.

No Docker engine runs here: ``docker compose config`` (or Debian's ``docker-compose``)
validates the compose files, the entrypoint runs under the machine's /bin/sh, and the
executors are built by Dagster's own executor factories against real instances.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.definitions.job_base import InMemoryJob

from backup_pipeline.executors import CELERY_BROKER_URL_ENV, ExecutorUnavailableError, executor_for
from backup_pipeline.settings import (
    APP_DATABASE_PASSWORD_ENV,
    S3_ACCESS_KEY_ENV,
    S3_SECRET_KEY_ENV,
    BackupSettings,
    ExecutorKind,
    load_settings,
)
from backup_pipeline_tests.fixtures.postgres import PgDatabase

ROOT = Path(__file__).resolve().parents[1]
SECRET_FILES = [
    "dagster_pg_password",
    "app_db_password",
    "minio_root_user",
    "minio_root_password",
    "org_secret",
    "drive_credentials.json",
    "htpasswd_admins",
    "htpasswd_viewers",
    "celery_broker_url",
    "rabbitmq.conf",
]


# --- docker compose config ------------------------------------------------------------------


def _compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    legacy = shutil.which("docker-compose")
    assert legacy, "neither `docker compose` nor `docker-compose` is installed (scripts/setup.sh installs it)"
    return [legacy]


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The secret files, made by the script the deployment guide tells operators to run."""
    directory = tmp_path_factory.mktemp("deploy") / "secrets"
    env = {**os.environ, "BACKUP_PIPELINE_SECRETS_DIR": str(directory)}
    result = subprocess.run(
        ["bash", str(ROOT / "deploy/make-secrets.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return directory


def _compose_config(secrets_dir: Path, *files: str) -> dict:
    args = [*_compose_command()]
    for file in files:
        args += ["-f", str(ROOT / file)]
    env = {**os.environ, "BACKUP_PIPELINE_SECRETS_DIR": str(secrets_dir)}
    result = subprocess.run([*args, "config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def test_make_secrets_writes_every_secret_once(secrets_dir: Path) -> None:
    assert sorted(p.name for p in secrets_dir.iterdir()) == sorted(SECRET_FILES)
    assert oct(secrets_dir.stat().st_mode & 0o777) == "0o700"
    admins = (secrets_dir / "htpasswd_admins").read_text()
    assert admins.startswith("admin:$apr1$")
    before = {p.name: p.read_bytes() for p in secrets_dir.iterdir()}
    env = {**os.environ, "BACKUP_PIPELINE_SECRETS_DIR": str(secrets_dir)}
    subprocess.run(["bash", str(ROOT / "deploy/make-secrets.sh")], env=env, check=True, capture_output=True)
    assert {p.name: p.read_bytes() for p in secrets_dir.iterdir()} == before, "a re-run rotated a secret"


def test_compose_file_is_valid_and_only_the_proxy_is_published(secrets_dir: Path) -> None:
    config = _compose_config(secrets_dir, "docker-compose.yml")
    services = config["services"]
    assert set(services) >= {
        "app-postgres",
        "dagster-postgres",
        "minio",
        "code-location",
        "webserver",
        "webserver-readonly",
        "daemon",
        "proxy",
    }
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published == {"proxy"}
    assert config["networks"]["backend"].get("internal") is True
    for name in ("webserver", "webserver-readonly", "daemon"):
        assert set(services[name]["networks"]) == {"backend"}, name
    assert "--read-only" in services["webserver-readonly"]["command"]
    assert "--read-only" not in services["webserver"]["command"]
    for name, svc in services.items():
        assert "healthcheck" in svc, f"{name} has no healthcheck"
    # Secrets are files; no password, key or token is in any service's environment.
    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            if any(word in key for word in ("PASSWORD", "SECRET", "ACCESS_KEY", "BROKER_URL")):
                assert key.endswith("_FILE"), f"{name}: {key} must come from a file"
                assert str(value).startswith("/run/secrets/") or value in (
                    "minio_root_user",
                    "minio_root_password",
                ), f"{name}: {key}={value}"
    code_env = services["code-location"]["environment"]
    for env_name in (APP_DATABASE_PASSWORD_ENV, S3_ACCESS_KEY_ENV, S3_SECRET_KEY_ENV):
        assert f"{env_name}_FILE" in code_env
    for secret in config["secrets"].values():
        assert Path(secret["file"]).parent == secrets_dir


def test_celery_override_is_valid(secrets_dir: Path) -> None:
    config = _compose_config(secrets_dir, "docker-compose.yml", "deploy/celery/docker-compose.celery.yml")
    services = config["services"]
    assert services["code-location"]["environment"]["BACKUP_PIPELINE_EXECUTOR"] == "celery"
    assert services["celery-worker"]["environment"]["BACKUP_PIPELINE_EXECUTOR"] == "celery"
    assert "rabbitmq" in services and not services["rabbitmq"].get("ports")


def test_a_broken_compose_file_is_rejected(secrets_dir: Path, tmp_path: Path) -> None:
    """The validation step can fail: a service with an unknown key does not pass."""
    broken = tmp_path / "docker-compose.yml"
    text = (ROOT / "docker-compose.yml").read_text()
    broken.write_text(text.replace("  proxy:\n", "  proxy:\n    restart_policy_typo: always\n", 1))
    env = {**os.environ, "BACKUP_PIPELINE_SECRETS_DIR": str(secrets_dir)}
    result = subprocess.run(
        [*_compose_command(), "-f", str(broken), "--project-directory", str(ROOT), "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "restart_policy_typo" in result.stderr


def test_nginx_guards_every_path_and_proxies_to_the_internal_webservers() -> None:
    conf = (ROOT / "deploy/nginx/nginx.conf").read_text()
    servers = conf.split("server {")[1:]
    assert len(servers) == 2
    upstreams = set()
    for server in servers:
        # Auth at server level covers / and /graphql; only /healthz turns it off.
        assert "auth_basic_user_file /run/secrets/htpasswd_" in server.split("location")[0]
        assert server.count("auth_basic off") == 1 and "location = /healthz" in server
        upstreams.add(server.split("proxy_pass ")[1].split(";")[0])
    assert upstreams == {"http://webserver:3000", "http://webserver-readonly:3000"}


# --- container entrypoint --------------------------------------------------------------------


def _entrypoint(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(ROOT / "deploy/docker-entrypoint.sh"), *command],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_entrypoint_exports_secret_files_as_variables(tmp_path: Path) -> None:
    password_file = tmp_path / "pw"
    password_file.write_text("s3cr3t with spaces\n")
    org_secret = tmp_path / "org"
    org_secret.write_text("k1:AAAA\n")
    result = _entrypoint(
        {
            f"{APP_DATABASE_PASSWORD_ENV}_FILE": str(password_file),
            "DAGSTER_PG_PASSWORD_FILE": str(password_file),
            "BACKUP_PIPELINE_ORG_SECRET_FILE": str(org_secret),
        },
        sys.executable,
        "-c",
        "import json, os; print(json.dumps(dict(os.environ)))",
    )
    assert result.returncode == 0, result.stderr
    import json

    env = json.loads(result.stdout)
    assert env[APP_DATABASE_PASSWORD_ENV] == "s3cr3t with spaces"
    assert env["DAGSTER_PG_PASSWORD"] == "s3cr3t with spaces"
    assert f"{APP_DATABASE_PASSWORD_ENV}_FILE" not in env
    # A settings field that is itself a file path stays a path: the org secret never enters the env.
    assert env["BACKUP_PIPELINE_ORG_SECRET_FILE"] == str(org_secret)
    assert "BACKUP_PIPELINE_ORG_SECRET" not in env


def test_entrypoint_refuses_a_missing_secret_file_without_printing_secrets(tmp_path: Path) -> None:
    result = _entrypoint({f"{S3_SECRET_KEY_ENV}_FILE": str(tmp_path / "absent")}, "true")
    assert result.returncode == 2
    assert f"{S3_SECRET_KEY_ENV}_FILE" in result.stderr and "not a readable file" in result.stderr
    both = tmp_path / "key"
    both.write_text("from-file")
    result = _entrypoint({f"{S3_SECRET_KEY_ENV}_FILE": str(both), S3_SECRET_KEY_ENV: "direct-value"}, "true")
    assert result.returncode == 2
    assert "set only one" in result.stderr
    assert "direct-value" not in result.stderr and "from-file" not in result.stderr


# --- the containers' dagster.yaml ------------------------------------------------------------


@pytest.fixture()
def deploy_instance(
    pg_database: PgDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dg.DagsterInstance]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy/dagster.yaml", home / "dagster.yaml")
    for name, value in {
        "DAGSTER_PG_HOST": pg_database.host,
        "DAGSTER_PG_PORT": str(pg_database.port),
        "DAGSTER_PG_USERNAME": pg_database.user,
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": pg_database.name,
    }.items():
        monkeypatch.setenv(name, value)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def test_deploy_dagster_yaml_gives_a_postgres_instance_with_the_exclusive_run_limit(
    deploy_instance: dg.DagsterInstance,
) -> None:
    from dagster._core.launcher import DefaultRunLauncher
    from dagster_postgres import PostgresRunStorage

    assert isinstance(deploy_instance.run_storage, PostgresRunStorage)
    assert isinstance(deploy_instance.run_launcher, DefaultRunLauncher)
    limits = deploy_instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
    assert {"key": "backup_pipeline/exclusive", "limit": 1} in limits
    assert deploy_instance.run_monitoring_enabled
    assert deploy_instance.run_monitoring_max_resume_run_attempts == 0


# --- executor switch -------------------------------------------------------------------------


@dg.op
def _noop() -> int:
    return 1


def _settings(kind: ExecutorKind, max_concurrent: int = 3) -> BackupSettings:
    return load_settings(
        {
            "BACKUP_PIPELINE_EXECUTOR": kind.value,
            "BACKUP_PIPELINE_MAX_CONCURRENT_EXPORTS": str(max_concurrent),
        }
    )


def _built_executor(executor_def: dg.ExecutorDefinition, instance: dg.DagsterInstance) -> dg.Executor:
    """What Dagster builds from the definition when a run starts (config resolved, factory called)."""

    @dg.job(executor_def=executor_def)
    def probe() -> None:
        _noop()

    dg.Definitions.validate_loadable(dg.Definitions(jobs=[probe]))
    resolved = executor_def.apply_config_mapping({})
    assert resolved.success, resolved.errors
    if resolved.value and "config" in resolved.value:  # a .configured() executor: defaults filled in
        config = resolved.value["config"]
    else:
        processed = process_config(executor_def.config_schema.config_type, {})
        assert processed.success, processed.errors
        config = processed.value
    context = dg.InitExecutorContext(
        job=InMemoryJob(probe), executor_def=executor_def, executor_config=config, instance=instance
    )
    return executor_def.executor_creation_fn(context)  # type: ignore[misc]


def test_in_process_setting() -> None:
    from dagster._core.executor.in_process import InProcessExecutor

    with dg.instance_for_test() as instance:
        executor = _built_executor(executor_for(_settings(ExecutorKind.IN_PROCESS)), instance)
    assert isinstance(executor, InProcessExecutor)


@pytest.mark.parametrize("max_concurrent", [1, 5])
def test_multiprocess_setting_caps_concurrency(max_concurrent: int) -> None:
    from dagster._core.executor.multiprocess import MultiprocessExecutor

    with dg.instance_for_test() as instance:
        executor = _built_executor(
            executor_for(_settings(ExecutorKind.MULTIPROCESS, max_concurrent)), instance
        )
    assert isinstance(executor, MultiprocessExecutor)
    assert executor._max_concurrent == max_concurrent


def test_k8s_setting_builds_one_pod_per_step_under_the_k8s_run_launcher(tmp_path: Path) -> None:
    """Instance as the Helm chart renders it (K8sRunLauncher); kubeconfig only parsed, no cluster."""
    from dagster._core.executor.step_delegating import StepDelegatingExecutor
    from dagster_k8s import K8sRunLauncher
    from dagster_k8s.executor import K8sStepHandler

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "backup"}}],
                "current-context": "x",
            }
        )
    )
    overrides = {
        "run_launcher": {
            "module": "dagster_k8s",
            "class": "K8sRunLauncher",
            "config": {
                "load_incluster_config": False,
                "kubeconfig_file": str(kubeconfig),
                "instance_config_map": "dagster-instance",
                "dagster_home": "/opt/dagster/dagster_home",
                "job_namespace": "backup",
                "service_account_name": "dagster",
                "image_pull_policy": "IfNotPresent",
            },
        }
    }
    with dg.instance_for_test(overrides=overrides) as instance:
        assert isinstance(instance.run_launcher, K8sRunLauncher)
        executor = _built_executor(executor_for(_settings(ExecutorKind.K8S, 4)), instance)
    assert isinstance(executor, StepDelegatingExecutor)
    assert isinstance(executor._step_handler, K8sStepHandler)
    assert executor._max_concurrent == 4


@pytest.mark.parametrize("broker", [None, "pyamqp://backup:pw@rabbitmq:5672//"])
def test_celery_setting_takes_the_broker_from_the_environment(
    broker: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster_celery.executor import CeleryExecutor

    if broker is None:
        monkeypatch.delenv(CELERY_BROKER_URL_ENV, raising=False)
    else:
        monkeypatch.setenv(CELERY_BROKER_URL_ENV, broker)
    executor_def = executor_for(_settings(ExecutorKind.CELERY))
    with dg.instance_for_test() as instance:
        executor = _built_executor(executor_def, instance)
    assert isinstance(executor, CeleryExecutor)
    # Unset: dagster-celery's own default broker (DAGSTER_CELERY_BROKER_HOST), not a launch-time error.
    assert executor.broker == (broker or "pyamqp://guest@localhost:5672//")


def test_docker_setting_forwards_settings_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster._core.executor.step_delegating import StepDelegatingExecutor
    from dagster_docker.docker_executor import DockerStepHandler

    monkeypatch.setenv(S3_SECRET_KEY_ENV, "very-secret")
    monkeypatch.setenv("BACKUP_PIPELINE_DOCKER_NETWORK", "backup_backend")
    executor_def = executor_for(_settings(ExecutorKind.DOCKER, 2))
    with dg.instance_for_test() as instance:
        executor = _built_executor(executor_def, instance)
    assert isinstance(executor, StepDelegatingExecutor)
    assert isinstance(executor._step_handler, DockerStepHandler)
    assert executor._max_concurrent == 2
    context = executor._step_handler._container_context
    # A bare NAME: docker_executor copies the value from the launching process, so the secret
    # itself is in no config.
    assert S3_SECRET_KEY_ENV in context.env_vars
    assert not any("very-secret" in entry for entry in context.env_vars)
    assert context.networks == ["backup_backend"]


@pytest.mark.parametrize(
    ("kind", "module", "distribution"),
    [
        (ExecutorKind.K8S, "dagster_k8s", "dagster-k8s"),
        (ExecutorKind.CELERY, "dagster_celery", "dagster-celery"),
        (ExecutorKind.DOCKER, "dagster_docker", "dagster-docker"),
    ],
)
def test_missing_integration_names_the_package(
    kind: ExecutorKind, module: str, distribution: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ExecutorUnavailableError) as err:
        executor_for(_settings(kind))
    message = str(err.value)
    assert f"BACKUP_PIPELINE_EXECUTOR={kind.value}" in message
    assert f"{distribution}==0.29.27" in message
