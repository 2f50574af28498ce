"""Every ``backup-pipeline`` command against an unreachable destination, S3 server, database and
webserver: the documented exit code, one ``error:`` line, no traceback, no secret.

The installed console script runs as a subprocess, as an operator runs it. The installation
is real: a sample database and bucket on the machine's PostgreSQL and the S3 test server, one
complete backup set made by the backup job in a local folder, and a few media assets still
in "Google Drive". Each scenario then points one setting at something unusable: a local
destination path that is a file, a Drive API root on a closed port, an S3 endpoint or a
database on a closed port, a webserver on a closed port.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click
import dagster as dg
import pytest
from click.testing import CliRunner

from backup_pipeline.cli import main
from backup_pipeline.cli.errors import KNOWN_FAILURES
from backup_pipeline.destinations.local_folder import LocalFolderDestination
from backup_pipeline.sample_app.content import GeneratedStream
from backup_pipeline.sample_app.seed import apply_schema
from backup_pipeline_tests.fixtures.ports import free_port
from backup_pipeline_tests.fixtures.postgres import PgDatabase
from backup_pipeline_tests.fixtures.s3 import S3Server
from backup_pipeline_tests.migration_data import LegacySpec, create_legacy_assets
from backup_pipeline_tests.restore_support import INSTALLATION, Installation, confirm

CLI = str(Path(sys.executable).parent / "backup-pipeline")
DB_PASSWORD = "db-password-never-printed"
S3_SECRET = "s3-secret-never-printed"


@dataclass
class World:
    inst: Installation
    backup_id: str
    recovery_key_file: Path
    oauth_file: Path
    a_file: Path

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_PIPELINE_")}
        env.update(
            {
                "NO_COLOR": "1",
                "BACKUP_PIPELINE_INSTALLATION_ID": INSTALLATION,
                "BACKUP_PIPELINE_STATE_DIR": str(self.inst.root / "cli-state"),
                "BACKUP_PIPELINE_APP_DATABASE_URL": self.inst.db.url,
                **self.inst.s3.env(),
                "BACKUP_PIPELINE_DESTINATION": "local",
                "BACKUP_PIPELINE_LOCAL_DESTINATION_PATH": str(self.inst.backups_dir),
                "BACKUP_PIPELINE_ORG_SECRET_FILE": str(self.inst.org_secret_file),
                # The legacy files' Drive (storage migrate-drive); unreachable unless a test says so.
                "BACKUP_PIPELINE_DRIVE_AUTH_MODE": "oauth",
                "BACKUP_PIPELINE_DRIVE_CREDENTIALS_FILE": str(self.oauth_file),
                "BACKUP_PIPELINE_DRIVE_API_ROOT": f"http://127.0.0.1:{free_port()}/",
                "BACKUP_PIPELINE_DRIVE_TOKEN_URI": f"http://127.0.0.1:{free_port()}/token",
                "BACKUP_PIPELINE_PRIMARY_BUCKET": "media",
                # A small retry budget: each unreachable-Drive call gives up after 2 attempts and
                # 0.2 s instead of 8 attempts and minutes of back-off (main: the module took ~8 min).
                # test_destinations_cli proves the default budget retries.
                "BACKUP_PIPELINE_DESTINATION_RETRY_ATTEMPTS": "2",
                "BACKUP_PIPELINE_DESTINATION_RETRY_MAX_WAIT_SECONDS": "0.2",
            }
        )
        env.update(overrides)
        return env


@pytest.fixture(scope="module")
def world(
    pg_database: PgDatabase, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    if s3_server.process is None or s3_server.process.poll() is not None:
        s3_server.start()
    s3_server.reset()
    root = tmp_path_factory.mktemp("cli_errors")
    inst = Installation(pg_database, s3_server, root)
    legacy = LocalFolderDestination(root / "legacy-drive")
    with pg_database.connect() as conn:
        apply_schema(conn)
        create_legacy_assets(
            conn,
            [LegacySpec("a.jpg", 1_000), LegacySpec("b.jpg", 2_000)],
            lambda name, stream: legacy.put(f"f{uuid.uuid4().hex}", stream, {}).id,
        )
    client = s3_server.client()
    client.make_bucket("media")
    content = GeneratedStream("cli-errors", 4_000).read()
    client.put_object("media", "photos/one.jpg", io.BytesIO(content), len(content))
    backup_id = inst.backup(dg.DagsterInstance.ephemeral())
    oauth = root / "oauth.json"
    oauth.write_text(
        json.dumps(
            {
                "type": "authorized_user",
                "client_id": "test-client",
                "client_secret": "test-client-secret",
                "refresh_token": "1//test-refresh-token",
            }
        )
    )
    a_file = root / "not-a-folder"
    a_file.write_text("a file where a folder should be\n")
    yield World(inst, backup_id, inst.export_recovery_key(root / "recovery.key"), oauth, a_file)


@dataclass(frozen=True)
class Outcome:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]

    def describe(self) -> str:
        return f"$ backup-pipeline {' '.join(self.args)}\n-> {self.returncode}\n{self.stdout}{self.stderr}"


def _run(env: dict[str, str], args: tuple[str, ...]) -> Outcome:
    result = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=600)
    outcome = Outcome(args, result.returncode, result.stdout, result.stderr)
    print(outcome.describe())  # shown by pytest when the test fails
    return outcome


def _run_all(env: dict[str, str], commands: list[tuple[str, ...]]) -> list[Outcome]:
    # In parallel: most of them wait on connection retries, not on the CPU.
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        return list(pool.map(lambda args: _run(env, args), commands))


def _assert_reported(outcome: Outcome, code: int, *, in_output: str = "") -> None:
    text = outcome.describe()
    assert outcome.returncode == code, text
    assert "Traceback" not in outcome.stdout + outcome.stderr, text
    for secret in (DB_PASSWORD, S3_SECRET):
        assert secret not in outcome.stdout + outcome.stderr, text
    assert in_output in outcome.stdout + outcome.stderr, text


def _assert_one_error_line(outcome: Outcome, code: int, *, mentions: str) -> None:
    _assert_reported(outcome, code)
    assert len(outcome.error_lines) == 1, outcome.describe()
    assert mentions in outcome.error_lines[0], outcome.describe()


def _restore(world: World, *args: str) -> tuple[str, ...]:
    return ("restore", "--recovery-key-file", str(world.recovery_key_file), *args)


def _fetch(world: World) -> tuple[str, ...]:
    return ("fetch", "--backup-id", "latest", "--to", str(world.inst.root / "fetched"))


def test_the_installation_works_before_anything_is_broken(world: World) -> None:
    env = world.env()
    listed, dry_run = _run_all(env, [("restore", "--list", "--json"), _restore(world, "--scope", "full")])
    _assert_reported(listed, 0)
    assert [s["backup_id"] for s in json.loads(listed.stdout)] == [world.backup_id]
    _assert_reported(dry_run, 0, in_output=f"backup {world.backup_id}: ")


def test_restore_list_needs_no_key(world: World) -> None:
    """Listing reads file properties only; on main it refused without --recovery-key-file."""
    outcome = _run(world.env(), ("restore", "--list"))
    _assert_reported(outcome, 0, in_output=world.backup_id)
    assert "1 backup set(s) on local folder" in outcome.stdout


def test_a_settings_file_can_hold_the_secrets_and_the_environment_wins(world: World, tmp_path: Path) -> None:
    """Main read the S3 keys and the database password from the environment only."""
    env = world.env()
    secrets = {
        name: env.pop(name) for name in ("BACKUP_PIPELINE_S3_ACCESS_KEY", "BACKUP_PIPELINE_S3_SECRET_KEY")
    }
    settings = tmp_path / "settings.env"
    settings.write_text(
        "".join(f"{name}={value}\n" for name, value in secrets.items())
        + f"BACKUP_PIPELINE_PRIMARY_BUCKET=media\nBACKUP_PIPELINE_S3_ENDPOINT={env.pop('BACKUP_PIPELINE_S3_ENDPOINT')}\n"
    )
    settings.chmod(0o600)
    from_file = _run({**env, "BACKUP_PIPELINE_SETTINGS_FILE": str(settings)}, ("storage", "status", "--json"))
    _assert_reported(from_file, 0)
    assert json.loads(from_file.stdout)["reachable"] is True
    as_option = _run(env, ("--settings-file", str(settings), "storage", "status", "--json"))
    _assert_reported(as_option, 0)
    # A variable set in the environment wins over the file.
    closed = f"http://127.0.0.1:{free_port()}"
    overridden = _run(
        {**env, "BACKUP_PIPELINE_SETTINGS_FILE": str(settings), "BACKUP_PIPELINE_S3_ENDPOINT": closed},
        ("storage", "status"),
    )
    _assert_one_error_line(overridden, 1, mentions=f"S3 endpoint {closed}")


def test_every_command_against_a_local_destination_that_is_a_file(world: World) -> None:
    env = world.env(BACKUP_PIPELINE_LOCAL_DESTINATION_PATH=str(world.a_file))
    check, dest_check, dest_ls, listing, restore, fetch = _run_all(
        env,
        [
            ("check",),
            ("destination", "check"),
            ("destination", "ls"),
            ("restore", "--list"),
            _restore(world),
            _fetch(world),
        ],
    )
    _assert_reported(check, 1, in_output="FAIL destination")
    _assert_reported(dest_check, 1, in_output="verdict: FAILED")
    # The reason once, no "fix:" repeating it (main printed it twice, as "File exists").
    assert dest_check.stdout.count("is not a folder") == 1 and "fix:" not in dest_check.stdout, (
        dest_check.describe()
    )
    [check_line] = [line for line in check.stdout.splitlines() if "destination" in line and "FAIL" in line]
    assert check_line.count("is not a folder") == 1 and "— fix:" not in check_line, check.describe()
    # On main both listed nothing and exited 0: a file looked like an empty destination.
    _assert_one_error_line(dest_ls, 1, mentions="is not a folder")
    _assert_one_error_line(listing, 1, mentions="is not a folder")
    _assert_one_error_line(restore, 1, mentions="is not a folder")
    _assert_one_error_line(fetch, 1, mentions="is not a folder")


def test_every_command_against_an_unreachable_google_drive(world: World) -> None:
    """A Drive API root on a closed port: the destination retries, then one line (main: a traceback)."""
    env = world.env(
        BACKUP_PIPELINE_DESTINATION="google_drive",
        BACKUP_PIPELINE_APP_DATABASE_PASSWORD=DB_PASSWORD,
    )
    listing, restore, dest_ls, migrate, check, dest_check, fetch = _run_all(
        env,
        [
            ("restore", "--list"),
            _restore(world),
            ("destination", "ls"),
            ("storage", "migrate-drive"),
            ("check",),
            ("destination", "check"),
            _fetch(world),
        ],
    )
    # Not beside the real run: both take the data lease, the second would be refused.
    dry_run = _run(env, ("storage", "migrate-drive", "--dry-run"))
    _assert_one_error_line(listing, 1, mentions="Google Drive")
    _assert_one_error_line(restore, 1, mentions="Google Drive")
    _assert_one_error_line(dest_ls, 1, mentions="Google Drive")
    _assert_one_error_line(fetch, 1, mentions="Google Drive")
    _assert_reported(dest_check, 1, in_output="verdict: FAILED")
    _assert_one_error_line(dry_run, 1, mentions="Google Drive unavailable")
    # The real run stops at the first asset instead of failing each one after its own retries.
    _assert_one_error_line(migrate, 1, mentions="the migration stopped: Google Drive unavailable")
    assert "× Google Drive unavailable" in migrate.stdout, migrate.describe()
    _assert_reported(check, 1, in_output="FAIL destination")


def test_every_command_against_an_unreachable_s3_server(world: World) -> None:
    env = world.env(
        BACKUP_PIPELINE_S3_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        BACKUP_PIPELINE_S3_SECRET_KEY=S3_SECRET,
    )
    check, files_dry_run, files_restore, status, migrate = _run_all(
        env,
        [
            ("check",),
            _restore(world, "--scope", "files"),
            _restore(world, "--scope", "files", "--no-dry-run", "--confirm", confirm(world.backup_id)),
            ("storage", "status"),
            ("storage", "migrate-drive"),
        ],
    )
    _assert_reported(check, 1, in_output="FAIL s3")
    _assert_one_error_line(files_dry_run, 1, mentions="S3 endpoint")
    _assert_one_error_line(files_restore, 1, mentions="S3 endpoint")
    _assert_one_error_line(status, 1, mentions="S3 endpoint")
    _assert_one_error_line(migrate, 1, mentions="S3 endpoint")


def test_restoring_files_without_s3_keys_is_refused_naming_them(world: World) -> None:
    env = world.env()
    del env["BACKUP_PIPELINE_S3_SECRET_KEY"]
    outcome = _run(env, _restore(world, "--scope", "files"))
    # main: "no S3 endpoint configured (BACKUP_PIPELINE_S3_ENDPOINT)" while it was configured
    _assert_one_error_line(outcome, 1, mentions="BACKUP_PIPELINE_S3_SECRET_KEY")
    assert "refused, nothing was changed" in outcome.error_lines[0]


def test_every_command_against_an_unreachable_database(world: World) -> None:
    port = free_port()
    env = world.env(
        BACKUP_PIPELINE_APP_DATABASE_URL=f"postgresql://app@127.0.0.1:{port}/appdb",
        BACKUP_PIPELINE_APP_DATABASE_PASSWORD=DB_PASSWORD,
    )
    check, db_dry_run, full_dry_run, status, migrate, migrate_dry_run = _run_all(
        env,
        [
            ("check",),
            _restore(world, "--scope", "database"),
            _restore(world),
            ("storage", "status"),
            ("storage", "migrate-drive"),
            ("storage", "migrate-drive", "--dry-run"),
        ],
    )
    _assert_reported(check, 1, in_output="FAIL postgres")
    # libpq's reason, not only its hint (main: "Is the server running on that host ...?" alone).
    [postgres_line] = [line for line in check.stdout.splitlines() if line.startswith("FAIL postgres")]
    assert "Connection refused" in postgres_line, check.describe()
    for outcome in (db_dry_run, full_dry_run, status, migrate, migrate_dry_run):
        _assert_one_error_line(outcome, 1, mentions=str(port))
        assert "Connection refused" in outcome.error_lines[0], outcome.describe()


def test_every_client_command_against_an_unreachable_webserver(world: World) -> None:
    port = free_port()
    env = world.env(BACKUP_PIPELINE_URL=f"http://127.0.0.1:{port}")
    outcomes = _run_all(
        env,
        [
            ("run", "backup"),
            ("run", "backup", "--wait"),
            ("history",),
            ("show", world.backup_id),
            ("delete", world.backup_id, "--yes"),
        ],
    )
    for outcome in outcomes:
        # Host, port and reason; main: urllib3's "HTTPConnectionPool(...): Max retries exceeded ...".
        _assert_one_error_line(outcome, 1, mentions="127.0.0.1")
        assert outcome.error_lines == [
            f"error: cannot reach the Dagster webserver at 127.0.0.1:{port}: Connection refused"
        ], outcome.describe()


def test_offline_commands_report_bad_files_in_one_line(world: World, tmp_path: Path) -> None:
    garbage = tmp_path / "not-a-part"
    garbage.write_bytes(b"this is not an encrypted backup part" * 10)
    env = world.env(BACKUP_PIPELINE_STATE_DIR=str(world.a_file))
    key = ("--recovery-key-file", str(world.recovery_key_file))
    inspect, verify, decrypt, keys_status, keys_export, audit = _run_all(
        env,
        [
            ("inspect", str(garbage)),
            ("verify", str(garbage), *key),
            ("decrypt", str(garbage), "-o", str(tmp_path / "out"), *key),
            ("keys", "status"),
            ("keys", "export-recovery"),
            ("audit",),
        ],
    )
    for outcome in (inspect, verify, decrypt):  # a damaged part is a failure, not bad input
        _assert_one_error_line(outcome, 1, mentions="not a backup_pipeline archive part")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    for outcome in (keys_status, keys_export):
        _assert_one_error_line(outcome, 1, mentions=str(world.a_file))
    # main: "no audit records", exit 0, as if the trail were empty.
    _assert_one_error_line(audit, 2, mentions=f"BACKUP_PIPELINE_STATE_DIR: {world.a_file} is a file")


def test_bad_settings_are_one_line_naming_the_field_exit_2(world: World) -> None:
    env = world.env(BACKUP_PIPELINE_SCHEDULE_TIME="25:61", BACKUP_PIPELINE_RETENTION_KEEP_LAST="0")
    commands = [("settings",), ("keys", "status"), ("restore", "--list")]
    for outcome in _run_all(env, commands):
        _assert_one_error_line(outcome, 2, mentions="BACKUP_PIPELINE_SCHEDULE_TIME")
        assert "BACKUP_PIPELINE_RETENTION_KEEP_LAST" in outcome.error_lines[0], outcome.describe()


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback() -> None:
    def boom() -> None:
        raise KeyError("an-internal-detail")

    main.add_command(click.Command("boom-for-test", callback=boom))
    try:
        runner = CliRunner()
        plain = runner.invoke(main, ["boom-for-test"])
        debug = runner.invoke(main, ["--debug", "boom-for-test"])
    finally:
        main.commands.pop("boom-for-test")
    assert (plain.exit_code == 1 and plain.exception is None) or isinstance(plain.exception, SystemExit)
    lines = plain.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unexpected KeyError"), plain.stderr
    assert "--debug" in lines[0] and "Traceback" not in plain.output
    assert isinstance(debug.exception, KeyError)  # re-raised: Python prints the traceback


def test_every_known_failure_class_exists() -> None:
    """The table matches classes by module and name: a rename must not silently drop one."""
    import importlib

    for module_name, class_name, _code in KNOWN_FAILURES:
        cls = getattr(importlib.import_module(module_name), class_name)
        assert issubclass(cls, Exception), (module_name, class_name)
