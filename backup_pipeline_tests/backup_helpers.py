"""Helpers shared by the backup tests: resources for a run, and reading a set back with the recovery key alone."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from backup_pipeline.archive.keys import (
    OrgKeyring,
    RecoveryIdentity,
    RecoveryKeyStore,
    generate_org_secret_file,
)
from backup_pipeline.archive.manifest import Manifest
from backup_pipeline.archive.stream_crypto import decrypt_stream
from backup_pipeline.archive.tar_parts import read_bucket_archive
from backup_pipeline.destinations.base import Destination, StoredFile
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.resources.keys import BackupKeysResource
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.resources.s3 import S3Resource
from backup_pipeline.services.backup_parts import (
    PART_DATABASE,
    PART_MANIFEST,
    PROP_PART_NAME,
    set_properties,
)
from backup_pipeline.services.backup_upload import list_sets

from .fixtures.drive import SHARED_DRIVE_ID, DriveFixture
from .fixtures.postgres import PgDatabase
from .fixtures.s3 import S3Server

INSTALLATION = "bp-test"


@dataclass
class BackupEnv:
    keys: BackupKeysResource
    destination: DestinationResource
    app_db: PostgresResource
    s3: S3Resource
    state_dir: Path

    def resources(self) -> dict[str, Any]:
        return {"keys": self.keys, "destination": self.destination, "app_db": self.app_db, "s3": self.s3}

    def dest(self) -> Destination:
        return self.destination.get_destination()

    def recovery_identity(self) -> RecoveryIdentity:
        """Exports the recovery secret once (as an administrator would) — all a restore needs."""
        store = RecoveryKeyStore(self.keys.state_dir, OrgKeyring.from_file(self.keys.org_secret_file))
        return RecoveryIdentity.from_bech32(store.export_secret())


def start_child_script(
    source: str, args: dict[str, Any], *, stdin: int | None = None, stderr: int | None = subprocess.DEVNULL
) -> subprocess.Popen[str]:
    """Run ``source`` (a ``python -c`` script reading ``json.loads(sys.argv[1])``) in a child process
    a test can SIGKILL: stdout is a text pipe, the test package importable."""
    return subprocess.Popen(
        [sys.executable, "-c", source, json.dumps(args)],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )


def make_env(
    tmp_path: Path, db: PgDatabase, s3: S3Server, destination: DestinationResource | None = None
) -> BackupEnv:
    state = tmp_path / "state"
    state.mkdir(parents=True, exist_ok=True)
    secret = state / "org-secret"
    generate_org_secret_file(secret)
    keys = BackupKeysResource(org_secret_file=str(secret), state_dir=str(state))
    keys.recovery_public_key()  # the set-up step: the recovery pair exists before the first backup
    return BackupEnv(
        keys=keys,
        destination=destination
        or DestinationResource(kind="local", local_path=str(tmp_path / "dest"), installation_id=INSTALLATION),
        app_db=PostgresResource(database_url=db.url),
        s3=S3Resource(endpoint=s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key),
        state_dir=state,
    )


def run_config(**overrides: Any) -> dict[str, Any]:
    config = {"installation_id": INSTALLATION, "progress_interval_seconds": 1.0, **overrides}
    return {"ops": {"plan_backup": {"config": config}}}


def set_files(dest: Destination, backup_id: str) -> dict[str, StoredFile]:
    return {f.properties[PROP_PART_NAME]: f for f in dest.list(set_properties(INSTALLATION, backup_id))}


def decrypt_part(
    dest: Destination, stored: StoredFile, backup_id: str, identity: RecoveryIdentity
) -> Iterator[bytes]:
    return decrypt_stream(
        dest.get(stored.id),
        expected_backup_id=backup_id,
        expected_part_name=stored.properties[PROP_PART_NAME],
        recovery_identity=identity,
    )


def read_manifest(dest: Destination, backup_id: str, identity: RecoveryIdentity) -> Manifest:
    files = set_files(dest, backup_id)
    return Manifest.from_json(b"".join(decrypt_part(dest, files[PART_MANIFEST], backup_id, identity)))


def pg_restore_list(dest: Destination, backup_id: str, identity: RecoveryIdentity) -> str:
    """``pg_restore --list`` of the decrypted database part, streamed through a pipe (no plaintext file)."""
    files = set_files(dest, backup_id)
    proc = subprocess.Popen(["pg_restore", "--list"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    import threading

    out = io.BytesIO()
    reader = threading.Thread(target=lambda: out.write(proc.stdout.read()))  # type: ignore[union-attr]
    reader.start()
    try:
        for chunk in decrypt_part(dest, files[PART_DATABASE], backup_id, identity):
            proc.stdin.write(chunk)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # --list reads the table of contents and exits without reading the data

    reader.join()
    assert proc.wait() == 0
    return out.getvalue().decode()


def iter_bucket_part(
    dest: Destination, backup_id: str, bucket: str, identity: RecoveryIdentity
) -> Iterator[Any]:
    files = set_files(dest, backup_id)
    yield from read_bucket_archive(decrypt_part(dest, files[f"bucket-{bucket}"], backup_id, identity))


def tar_readable(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return tar.getnames()


def only_backup_ids(dest: Destination) -> list[str]:
    return sorted(list_sets(dest, INSTALLATION))


def materializations(instance: dg.DagsterInstance) -> list[dict[str, Any]]:
    result = instance.fetch_materializations(dg.AssetKey("backup_set"), limit=100)
    return [
        {k: getattr(v, "value", v) for k, v in r.asset_materialization.metadata.items()}
        for r in result.records
        if r.asset_materialization
    ]


def evaluate_on_run_failure(sensor: Any, instance: dg.DagsterInstance, run_id: str) -> Any:
    """Run a run-failure sensor on the RUN_FAILURE event of ``run_id``, as the daemon would; its result."""
    run = instance.get_run_by_id(run_id)
    [failure] = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert run is not None and failure.dagster_event is not None
    return sensor(
        dg.build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_instance=instance,
            dagster_run=run,
            dagster_event=failure.dagster_event,
        ).for_run_failure()
    )


@dataclass(frozen=True)
class StepFailure:
    step: str
    code: str
    message: str  # without the ``[CODE] `` prefix


def expected_failures(result: dg.ExecuteInProcessResult) -> list[StepFailure]:
    """Every step failure of the run, each asserted to be what an expected failure records
    (``ops/step_errors.py``): ``[CODE] message`` and no stack trace, so the run view prints no
    "Stack Trace:" under it."""
    failures = []
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        error = data.error if data is not None else None
        assert error is not None, event
        assert error.stack == [] and error.cause is None, f"{event.step_key}: stack trace recorded\n{error}"
        match = re.match(r"\[([A-Z0-9_]+)\] (.*)", error.message, re.S)
        assert match, f"{event.step_key}: no [CODE] in {error.message!r}"
        failures.append(StepFailure(str(event.step_key), match.group(1), match.group(2)))
    return failures


def drive_destination(
    drive: DriveFixture, tmp_path: Path, *, installation_id: str = INSTALLATION, **overrides: Any
) -> DestinationResource:
    """A Google Drive destination on the Drive test server with short retries; ``overrides`` win."""
    settings: dict[str, Any] = {
        "kind": "google_drive",
        "installation_id": installation_id,
        "state_dir": str(tmp_path / "dest-state"),
        "drive_auth_mode": "shared_drive",
        "drive_credentials_file": str(drive.service_account_file),
        "drive_shared_drive_id": SHARED_DRIVE_ID,
        "drive_api_root": drive.server.url,
        "drive_token_uri": drive.server.token_uri,
        "retry_attempts": 4,
        "retry_initial_wait_seconds": 0.05,
        "retry_max_wait_seconds": 0.5,
    }
    return DestinationResource(**{**settings, **overrides})
