"""What the UI and the outside world are told after a backup, with Dagster's test helpers and real
components (PostgreSQL, the S3 test server, a local destination, an HTTP receiver on a socket):

- every safety check has a verdict judging the NEWEST backup_set materialization (recorded by the
  backup run itself, and by the status sensor for any other materialization);
- the recovery key that was never exported is a failing WARN check naming the host command;
- backup runs carry only the tags people filter by; sizes and counts are metadata;
- a refused manual backup is CANCELED (labelled), never FAILURE;
- the first backup requests its verification at once;
- the heartbeat is pinged on success and failure (Healthchecks.io and Uptime Kuma styles).
"""

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import dagster as dg
import pytest

from backup_pipeline import admin_view, ledger, safety
from backup_pipeline.archive.keys import OrgKeyring, RecoveryKeyStore, generate_org_secret_file
from backup_pipeline.ops.backup import build_backup_job
from backup_pipeline.ops.verification import build_verify_after_backup_sensor, verify_backup_job
from backup_pipeline.sample_app import SeedSpec, seed_sample_app
from backup_pipeline.sensors import build_heartbeat_failure_sensor, build_heartbeat_success_sensor
from backup_pipeline.settings import BackupSettings, load_settings

from . import backup_helpers as h
from .fixtures.alert_receivers import WebhookReceiver
from .fixtures.postgres import PgDatabase
from .fixtures.s3 import S3Server

SAFETY_CHECKS = {
    safety.FRESHNESS_CHECK,
    safety.DESTINATION_CHECK,
    safety.VERIFICATION_CHECK,
    safety.RECOVERY_KEY_CHECK,
}


def _settings(env: h.BackupEnv, **extra: str) -> BackupSettings:
    return load_settings(
        env={
            "BACKUP_PIPELINE_STATE_DIR": str(env.state_dir),
            "BACKUP_PIPELINE_LOCAL_DESTINATION_PATH": env.destination.local_path,
            **{f"BACKUP_PIPELINE_{k.upper()}": v for k, v in extra.items()},
        }
    )


def _latest_checks(
    instance: dg.DagsterInstance, asset: dg.AssetKey = safety.BACKUP_SET_ASSET
) -> dict[str, Any]:
    keys = [dg.AssetCheckKey(asset, name) for name in SAFETY_CHECKS]
    found = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    return {key.name: record for key, record in found.items()}


def _success_context(sensor: Any, instance: dg.DagsterInstance, run_id: str) -> Any:
    run = instance.get_run_by_id(run_id)
    [event] = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_SUCCESS)
    assert run is not None and event.dagster_event is not None
    return dg.build_run_status_sensor_context(
        sensor_name=sensor.name, dagster_instance=instance, dagster_run=run, dagster_event=event.dagster_event
    )


@pytest.fixture()
def app(fresh_pg_database: PgDatabase, s3: S3Server) -> PgDatabase:
    with fresh_pg_database.connect() as conn:
        seed_sample_app(conn, s3.client(), SeedSpec(small_objects=12, large_object_bytes=(), users=5))
    return fresh_pg_database


def test_a_backup_run_records_every_safety_check_for_its_own_materialization_and_few_tags(
    app: PgDatabase, s3: S3Server, tmp_path: Path
) -> None:
    env = h.make_env(tmp_path, app, s3)
    settings = _settings(env, min_manual_backup_interval_minutes="30")
    job = build_backup_job(
        executor_def=dg.in_process_executor, record_checks=admin_view.build_record_checks_op(settings)
    )
    config = h.run_config(min_manual_backup_interval_minutes=30)
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(run_config=config, resources=env.resources(), instance=instance)
        assert result.success
        run = instance.get_run_by_id(result.run_id)
        assert run is not None
        # The run list shows only what people filter by: the backup id is no longer cut off.
        ours = {k for k in run.tags if k.startswith("backup_pipeline/")}
        assert ours == {"backup_pipeline/backup_id", "backup_pipeline/trigger", "backup_pipeline/exclusive"}
        summary = result.output_for_node("finalize_backup")
        finalize_meta = {
            k: getattr(v, "value", v)
            for e in result.all_events
            if e.event_type is dg.DagsterEventType.STEP_OUTPUT and e.step_key == "finalize_backup"
            for k, v in e.step_output_data.metadata.items()  # type: ignore[union-attr]
        }
        assert finalize_meta["backup_id"] == summary["backup_id"] and finalize_meta["objects"] > 0
        assert finalize_meta["size"].endswith(("B", "KiB", "MiB"))

        # Every safety check judges THIS materialization (same run): none reads "Not evaluated".
        latest = _latest_checks(instance)
        assert set(latest) == SAFETY_CHECKS
        assert all(record.run_id == result.run_id for record in latest.values())
        verdicts = {name: record.evaluation for name, record in latest.items()}
        assert verdicts[safety.FRESHNESS_CHECK].passed
        assert not verdicts[safety.DESTINATION_CHECK].passed
        assert verdicts[safety.DESTINATION_CHECK].severity is dg.AssetCheckSeverity.WARN
        assert "NOT off-site" in (verdicts[safety.DESTINATION_CHECK].description or "")
        recovery = verdicts[safety.RECOVERY_KEY_CHECK]
        assert not recovery.passed and recovery.severity is dg.AssetCheckSeverity.WARN
        assert "backup-pipeline keys export-recovery" in (recovery.description or "")
        assert not verdicts[safety.VERIFICATION_CHECK].passed  # nothing verified yet

        # The first backup asks for its verification at once, of this very set.
        sensor = build_verify_after_backup_sensor()
        request = sensor(_success_context(sensor, instance, result.run_id))
        assert isinstance(request, dg.RunRequest)
        backup_id = summary["backup_id"]
        assert request.run_config["ops"]["verify_backup_set_op"]["config"]["backup_id"] == backup_id
        assert request.tags[ledger.BACKUP_ID_TAG] == backup_id
        assert request.run_key == f"verify-after-{result.run_id}"
        assert sensor.job_name == verify_backup_job.name
        instance.report_runless_asset_event(
            ledger.verification_observation(backup_id, ok=True, summary="ok", details={})
        )
        assert isinstance(sensor(_success_context(sensor, instance, result.run_id)), dg.SkipReason)

        # A second manual backup within the interval is refused: CANCELED and labelled, not FAILURE.
        refused = job.execute_in_process(
            run_config=config, resources=env.resources(), instance=instance, raise_on_error=False
        )
        refused_run = instance.get_run_by_id(refused.run_id)
        assert refused_run is not None and refused_run.status is dg.DagsterRunStatus.CANCELED
        assert refused_run.tags["backup_pipeline/outcome"] == "refused"
        failure = refused.failure_data_for_node("plan_backup")
        assert failure is not None and failure.error is not None and failure.error.stack == []
        assert "MANUAL_BACKUP_TOO_SOON" in failure.error.message
        assert len(ledger.complete_sets(instance)) == 1


@dg.op
def safety_backup(context: dg.OpExecutionContext) -> None:
    metadata = {"backup_id": "20261127T023000Z-0a1b2c3d", "trigger": "pre-restore"}
    context.log_event(dg.AssetMaterialization(asset_key="backup_set", metadata=metadata))


@dg.job(name="restore_job")
def restore_with_safety_backup() -> None:
    safety_backup()


def test_status_sensor_records_every_check_again_for_a_new_materialization(tmp_path: Path) -> None:
    state = tmp_path / "state"
    secret = state / "org-secret"
    state.mkdir()
    generate_org_secret_file(secret)
    store = RecoveryKeyStore(state, OrgKeyring.from_file(secret))
    store.ensure()
    settings = load_settings(env={"BACKUP_PIPELINE_STATE_DIR": str(state)})
    sensor = admin_view.build_status_sensor(settings)

    def tick(instance: dg.DagsterInstance, cursor: str | None = None) -> Any:
        data = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor))
        for event in data.asset_events:
            instance.report_runless_asset_event(event)  # what the daemon does with them
        return data

    with dg.instance_for_test() as instance:
        first = tick(instance)
        assert {e.check_name for e in _checks_of(first, safety.BACKUP_SET_ASSET)} == SAFETY_CHECKS
        # backup_health: one materialization + its check, red (ERROR) while anything is unsafe.
        [health] = _checks_of(first, safety.HEALTH_ASSET)
        assert not health.passed and health.severity is dg.AssetCheckSeverity.ERROR
        assert "NOT SAFE" in (health.description or "") and "NOT off-site" in (health.description or "")
        assert "never exported" in (health.description or "")
        assert [e.asset_key for e in first.asset_events if isinstance(e, dg.AssetMaterialization)] == [
            safety.HEALTH_ASSET
        ]
        quiet = tick(instance, first.cursor)
        assert quiet.asset_events == []

        # A backup_set materialization from elsewhere (e.g. a restore's safety backup): the
        # unchanged warnings are recorded again, for it, so Dagster does not show "Not evaluated".
        assert restore_with_safety_backup.execute_in_process(instance=instance).success
        target = safety.latest_materialization(instance, safety.BACKUP_SET_ASSET)
        assert target is not None
        again = tick(instance, quiet.cursor)
        recorded = {e.check_name: e for e in _checks_of(again, safety.BACKUP_SET_ASSET)}
        assert set(recorded) == SAFETY_CHECKS
        assert all(e.target_materialization_data.storage_id == target.storage_id for e in recorded.values())
        latest = _latest_checks(instance)
        assert all(safety.judges(record, target) for record in latest.values())

        # The recovery key exported on the host: the warning turns green without a click.
        store.export_secret()
        exported = tick(instance, again.cursor)
        assert [(e.check_name, e.passed) for e in _checks_of(exported, safety.BACKUP_SET_ASSET)] == [
            (safety.RECOVERY_KEY_CHECK, True)
        ]
        [health] = _checks_of(exported, safety.HEALTH_ASSET)  # the answer changed (fewer reasons)
        assert not health.passed and "never exported" not in (health.description or "")
        assert json.loads(exported.cursor or "{}").keys() == SAFETY_CHECKS | {safety.HEALTH_CHECK}


def _checks_of(data: Any, asset: dg.AssetKey) -> list[dg.AssetCheckEvaluation]:
    return [e for e in data.asset_events if isinstance(e, dg.AssetCheckEvaluation) and e.asset_key == asset]


def test_recovery_key_check_without_a_key_store_names_the_host_command(tmp_path: Path) -> None:
    verdict = safety.recovery_key_verdict(tmp_path / "empty-state")
    assert not verdict.passed and verdict.severity is dg.AssetCheckSeverity.WARN
    assert safety.EXPORT_RECOVERY_COMMAND in verdict.description
    assert "docker compose exec code-location backup-pipeline keys export-recovery" in verdict.description


def _failing_backup_run(instance: dg.DagsterInstance) -> str:
    @dg.op(name="dump_database")
    def dump() -> None:
        raise dg.Failure(description="pg_dump exited with 1: connection refused")

    @dg.job(name="backup_job", tags={ledger.BACKUP_ID_TAG: "20261127T023000Z-0a1b2c3d"})
    def backup_job() -> None:
        dump()

    return backup_job.execute_in_process(instance=instance, raise_on_error=False).run_id


@pytest.mark.parametrize("kind", ["healthchecks", "uptime_kuma"])
def test_heartbeat_is_pinged_after_success_and_failure(
    kind: str, app: PgDatabase, s3: S3Server, tmp_path: Path, webhook_receiver: WebhookReceiver
) -> None:
    env = h.make_env(tmp_path, app, s3)
    url_file = tmp_path / "heartbeat-url"
    token_url = webhook_receiver.url.replace("/hooks/backup", "/ping/5f1e2d3c-token")
    url_file.write_text(token_url + ("?status=up&msg=OK&ping=" if kind == "uptime_kuma" else "") + "\n")
    settings = _settings(env, heartbeat_url_file=str(url_file), heartbeat_kind=kind)
    with dg.instance_for_test() as instance:
        ok = build_backup_job(executor_def=dg.in_process_executor).execute_in_process(
            run_config=h.run_config(), resources=env.resources(), instance=instance
        )
        success = build_heartbeat_success_sensor(settings)
        told = success(_success_context(success, instance, ok.run_id))
        failed_run = _failing_backup_run(instance)
        h.evaluate_on_run_failure(build_heartbeat_failure_sensor(settings), instance, failed_run)

    backup_id = ok.dagster_run.tags[ledger.BACKUP_ID_TAG]
    assert isinstance(told, dg.SkipReason) and "heartbeat ok sent to http://127.0.0.1" in (
        told.skip_message or ""
    )
    up, down = webhook_receiver.wait_for(2)
    if kind == "healthchecks":
        assert (up.method, up.path) == ("POST", "/ping/5f1e2d3c-token")
        assert backup_id in up.body.decode() and "complete" in up.body.decode()
        assert (down.method, down.path) == ("POST", "/ping/5f1e2d3c-token/fail")
        assert "pg_dump exited with 1" in down.body.decode()
    else:
        assert up.method == down.method == "GET"
        query_up, query_down = (parse_qs(urlsplit(r.path).query) for r in (up, down))
        assert urlsplit(up.path).path == "/ping/5f1e2d3c-token"
        assert query_up["status"] == ["up"] and backup_id in query_up["msg"][0]
        assert query_down["status"] == ["down"] and "pg_dump exited with 1" in query_down["msg"][0]


def test_a_failed_ping_is_a_warning_never_an_error(tmp_path: Path, webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.status_codes = [503, 503, 503]
    url_file = tmp_path / "heartbeat-url"
    url_file.write_text(webhook_receiver.url.replace("/hooks/backup", "/ping/secret-token-123456"))
    settings = load_settings(
        env={"BACKUP_PIPELINE_STATE_DIR": str(tmp_path), "BACKUP_PIPELINE_HEARTBEAT_URL_FILE": str(url_file)}
    )
    with dg.instance_for_test() as instance:
        failed_run = _failing_backup_run(instance)
        result = h.evaluate_on_run_failure(build_heartbeat_failure_sensor(settings), instance, failed_run)
    assert isinstance(result, dg.SkipReason)
    message = result.skip_message or ""
    assert "heartbeat NOT sent" in message and "HTTP 503" in message
    assert "secret-token" not in message  # the URL's token is never shown
    assert len(webhook_receiver.requests) == 3  # retried


def test_legacy_drive_resource_has_its_own_description(tmp_path: Path) -> None:
    from backup_pipeline.definitions import build_definitions

    defs = build_definitions(load_settings(env={"BACKUP_PIPELINE_STATE_DIR": str(tmp_path)}))
    resources = defs.get_repository_def().get_top_level_resources()
    legacy, backups = resources["legacy_drive"].description, resources["destination"].description
    assert legacy and backups and legacy != backups
    assert "legacy" in legacy.lower() and "migration" in legacy.lower()


@dg.op(name="verify_backup_set_op")
def verified_op() -> None:
    pass


@dg.job(name="verify_backup_job", tags={ledger.BACKUP_ID_TAG: "20261127T023000Z-0a1b2c3d"})
def passing_verification() -> None:
    verified_op()


def test_successes_are_announced_only_when_failures_only_is_off(
    tmp_path: Path, webhook_receiver: WebhookReceiver
) -> None:
    urls = tmp_path / "apprise-urls"
    urls.write_text(webhook_receiver.url.replace("http://", "json://") + "\n")
    with dg.instance_for_test() as instance:
        run_id = passing_verification.execute_in_process(instance=instance).run_id
        for failures_only, expected in (("true", 0), ("false", 1)):
            settings = load_settings(
                env={
                    "BACKUP_PIPELINE_STATE_DIR": str(tmp_path),
                    "BACKUP_PIPELINE_ALERT_APPRISE_URLS_FILE": str(urls),
                    "BACKUP_PIPELINE_ALERT_FAILURES_ONLY": failures_only,
                }
            )
            sensor = build_heartbeat_success_sensor(settings)
            sensor(_success_context(sensor, instance, run_id))
            assert len(webhook_receiver.requests) == expected
    payload = json.loads(webhook_receiver.requests[0].body)
    assert payload["type"] == "success" and "20261127T023000Z-0a1b2c3d verified" in payload["message"]


def test_bad_verification_input_fails_in_one_line_without_a_stack_trace(tmp_path: Path) -> None:
    from backup_pipeline.resources.destination import DestinationResource
    from backup_pipeline.resources.keys import BackupKeysResource
    from backup_pipeline.resources.policy import BackupPolicyResource
    from backup_pipeline.resources.postgres import PostgresResource

    resources = {
        "destination": DestinationResource(kind="local", local_path=str(tmp_path / "dest")),
        "keys": BackupKeysResource(org_secret_file=str(tmp_path / "none"), state_dir=str(tmp_path)),
        "app_db": PostgresResource(database_url="postgresql://postgres@127.0.0.1:5432/postgres"),
        "backup_policy": BackupPolicyResource(state_dir=str(tmp_path)),
    }
    with dg.instance_for_test() as instance:
        result = verify_backup_job.execute_in_process(
            instance=instance,
            resources=resources,
            run_config={"ops": {"verify_backup_set_op": {"config": {"backup_id": "last tuesday"}}}},
            raise_on_error=False,
        )
    failure = result.failure_data_for_node("verify_backup_set_op")
    assert failure is not None and failure.error is not None
    assert (
        failure.error.message
        == "[BAD_INPUT] backup_id: 'last tuesday' is not a backup id (yyyymmddThhmmssZ-xxxxxxxx)"
    )
    assert failure.error.stack == []


@dg.op(ins={"finalized": dg.In(dg.Nothing)})
def failing_after_finalize() -> None:
    raise RuntimeError("the display step broke after the backup was complete")


def test_a_failure_after_finalize_keeps_the_complete_set(
    app: PgDatabase, s3: S3Server, tmp_path: Path
) -> None:
    env = h.make_env(tmp_path, app, s3)
    job = build_backup_job(executor_def=dg.in_process_executor, record_checks=failing_after_finalize)
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            run_config=h.run_config(), resources=env.resources(), instance=instance, raise_on_error=False
        )
        assert not result.success  # the step after finalize failed...
        [entry] = ledger.complete_sets(instance)
    # ...but the failure hook must not delete a set whose manifest was written and recorded.
    assert h.only_backup_ids(env.dest()) == [entry.backup_id]
    assert "manifest" in h.set_files(env.dest(), entry.backup_id)


def test_a_migration_run_records_primary_storage_status_for_its_materialization(
    fresh_pg_database: PgDatabase, s3: S3Server, tmp_path: Path
) -> None:
    import uuid

    from backup_pipeline.destinations.local_folder import LocalFolderDestination
    from backup_pipeline.ops import migration as migration_ops
    from backup_pipeline.resources import PostgresResource, S3Resource
    from backup_pipeline.resources.destination import DestinationResource
    from backup_pipeline_tests.migration_data import create_legacy_assets, standard_specs

    drive = LocalFolderDestination(tmp_path / "drive")  # same contract as the Drive client
    with fresh_pg_database.connect() as conn:
        create_legacy_assets(
            conn, standard_specs(4, []), lambda name, stream: drive.put(f"f{uuid.uuid4().hex}", stream, {}).id
        )
    resources = {
        "app_db": PostgresResource(database_url=fresh_pg_database.url),
        "s3": S3Resource(endpoint=s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key),
        migration_ops.LEGACY_DRIVE: DestinationResource(kind="local", local_path=str(tmp_path / "drive")),
    }
    config = {"dry_run": True}
    run_config = {
        "ops": {
            n: {"config": config} for n in ("plan_drive_migration", "migrate_batch", "finish_drive_migration")
        }
    }
    with dg.instance_for_test() as instance:
        result = migration_ops.migrate_drive_to_minio.execute_in_process(
            run_config=run_config, resources=resources, instance=instance
        )
        key = dg.AssetCheckKey(migration_ops.STORAGE_MIGRATION_ASSET, migration_ops.STORAGE_STATUS_CHECK)
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key]).get(key)
    # Judged in the same run as the storage_migration materialization: current, not "Not evaluated".
    assert record is not None and record.run_id == result.run_id
    assert record.evaluation is not None and not record.evaluation.passed  # assets are still in Drive
    assert "still in Google Drive" in (record.evaluation.description or "")
