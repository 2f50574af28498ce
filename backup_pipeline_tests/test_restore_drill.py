"""The disaster-recovery drill, run exactly as docs/guides/BACKUP-RESTORE-GUIDE.md § 4 writes it.

An installation backs up to the Drive v3 test server; then everything but Drive's contents
and the exported recovery key is gone: a new, empty database name and an emptied S3 server,
no org secret, no Dagster instance, no state directory. The guide's shell blocks run in bash
with only the example values of its `export` lines replaced by this test's endpoints.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import pytest

from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline_tests.fixtures.drive import SHARED_DRIVE_ID, DriveFixture
from backup_pipeline_tests.fixtures.postgres import PgDatabase, drop_database
from backup_pipeline_tests.fixtures.s3 import S3Server
from backup_pipeline_tests.restore_support import (
    INSTALLATION,
    Installation,
    normalised_dump,
    s3_snapshot,
    wipe_database,
)

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "BACKUP-RESTORE-GUIDE.md"
VENV_BIN = Path(sys.executable).parent


def guide_procedure() -> list[str]:
    """The bash blocks of § 4 of the guide, in order: the procedure itself, before its optional
    subsections (``### One object …``), which are not steps of the drill."""
    text = GUIDE.read_text(encoding="utf-8")
    section = text.split("## 4. Disaster recovery", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def _drive_resource(drive: DriveFixture, state_dir: Path) -> DestinationResource:
    return DestinationResource(
        kind="google_drive",
        installation_id=INSTALLATION,
        state_dir=str(state_dir),
        drive_auth_mode="shared_drive",
        drive_credentials_file=str(drive.service_account_file),
        drive_shared_drive_id=SHARED_DRIVE_ID,
        drive_api_root=drive.server.url,
        drive_token_uri=drive.server.token_uri,
        drive_chunk_size_mib=1,
        retry_attempts=3,
        retry_initial_wait_seconds=0.05,
        retry_max_wait_seconds=0.2,
    )


def _run_guide(values: dict[str, str], workdir: Path, blocks: list[str]) -> subprocess.CompletedProcess[str]:
    script = ["set -euo pipefail"]
    for block in blocks:
        for line in block.splitlines():
            match = re.match(r"export (\w+)=", line)
            if match:
                name = match.group(1)
                assert name in values, f"the guide sets {name}; the drill has no value for it"
                line = f"export {name}={values[name]!r}".replace("'", "'")
            script.append(line)
    env = {
        "PATH": f"{VENV_BIN}:/usr/bin:/bin",
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
    }
    return subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=workdir, env=env, capture_output=True, text=True, timeout=240
    )


def test_disaster_recovery_drill_as_written_in_the_guide(
    drive: DriveFixture, s3: S3Server, pg_database: PgDatabase, tmp_path: Path
) -> None:
    wipe_database(pg_database)
    old = Installation(pg_database, s3, tmp_path / "old-server")
    old.seed()
    with dg.instance_for_test() as instance:
        backup_id = old.backup(instance, destination=_drive_resource(drive, old.state_dir))
    db_before, s3_before = normalised_dump(pg_database.url), s3_snapshot(s3.client())
    recovery_key = old.export_recovery_key(tmp_path / "recovery-key.txt")

    # The disaster: only Drive's contents and the recovery key survive.
    s3.reset()
    new_db = f"bp_drill_{uuid.uuid4().hex[:8]}"
    fresh = tmp_path / "new-machine"
    fresh.mkdir()
    values = {
        "BACKUP_PIPELINE_DESTINATION": "google_drive",
        "BACKUP_PIPELINE_DRIVE_AUTH_MODE": "shared_drive",
        "BACKUP_PIPELINE_DRIVE_CREDENTIALS_FILE": str(drive.service_account_file),
        "BACKUP_PIPELINE_DRIVE_SHARED_DRIVE_ID": SHARED_DRIVE_ID,
        "BACKUP_PIPELINE_INSTALLATION_ID": INSTALLATION,
        "BACKUP_PIPELINE_STATE_DIR": str(fresh / "state"),
        "BACKUP_PIPELINE_APP_DATABASE_URL": f"postgresql://{pg_database.user}@{pg_database.host}:{pg_database.port}/{new_db}",
        "BACKUP_PIPELINE_S3_ENDPOINT": s3.endpoint,
        "BACKUP_PIPELINE_S3_ACCESS_KEY": s3.access_key,
        "BACKUP_PIPELINE_S3_SECRET_KEY": s3.secret_key,
        "RECOVERY_KEY_FILE": str(recovery_key),
    }
    blocks = guide_procedure()
    assert len(blocks) == 4, "configure, list, dry run, restore"
    # The test server is not Google: only the API root and token endpoint differ, set like
    # any other setting, in the environment the guide's commands inherit.
    blocks.insert(
        1,
        f"export BACKUP_PIPELINE_DRIVE_API_ROOT={drive.server.url}\n"
        f"export BACKUP_PIPELINE_DRIVE_TOKEN_URI={drive.server.token_uri}\n",
    )
    values["BACKUP_PIPELINE_DRIVE_API_ROOT"] = drive.server.url
    values["BACKUP_PIPELINE_DRIVE_TOKEN_URI"] = drive.server.token_uri
    try:
        done = _run_guide(values, fresh, blocks)
        assert done.returncode == 0, done.stdout + done.stderr
        assert backup_id in done.stdout
        assert "0 rows point to missing objects" in done.stdout
        restored = PgDatabase(new_db, pg_database.host, pg_database.port, pg_database.user)
        assert normalised_dump(restored.url) == db_before
        assert s3_snapshot(s3.client()) == s3_before
    finally:
        drop_database(new_db)


@pytest.mark.parametrize("damage", ["wrong_key", "typo"])
def test_wrong_or_mistyped_recovery_key_is_bad_input(
    drive: DriveFixture, s3: S3Server, pg_database: PgDatabase, tmp_path: Path, damage: str
) -> None:
    from backup_pipeline.archive.keys import RecoveryIdentity

    wipe_database(pg_database)
    old = Installation(pg_database, s3, tmp_path / "old")
    with pg_database.connect() as conn:
        conn.execute(
            "CREATE TABLE schema_migrations (version text); INSERT INTO schema_migrations VALUES ('001')"
        )
    with dg.instance_for_test() as instance:
        old.backup(instance, destination=_drive_resource(drive, old.state_dir))
    key_file = tmp_path / "key.txt"
    if damage == "wrong_key":
        key_file.write_text(RecoveryIdentity.generate().to_bech32())
    else:
        good = old.export_recovery_key(tmp_path / "good.txt").read_text().strip()
        i = len(good) // 2
        swap = "Q" if good[i].upper() != "Q" else "P"
        key_file.write_text(good[:i] + (swap if good[i].isupper() else swap.lower()) + good[i + 1 :])
    env = {
        "PATH": f"{VENV_BIN}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "BACKUP_PIPELINE_DESTINATION": "google_drive",
        "BACKUP_PIPELINE_DRIVE_CREDENTIALS_FILE": str(drive.service_account_file),
        "BACKUP_PIPELINE_DRIVE_SHARED_DRIVE_ID": SHARED_DRIVE_ID,
        "BACKUP_PIPELINE_DRIVE_API_ROOT": drive.server.url,
        "BACKUP_PIPELINE_DRIVE_TOKEN_URI": drive.server.token_uri,
        "BACKUP_PIPELINE_INSTALLATION_ID": INSTALLATION,
        "BACKUP_PIPELINE_STATE_DIR": str(tmp_path / "state"),
        "BACKUP_PIPELINE_APP_DATABASE_URL": pg_database.url,
    }
    done = subprocess.run(
        ["backup-pipeline", "restore", "--recovery-key-file", str(key_file), "--backup-id", "latest"],
        env={**env, "PATH": env["PATH"]},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    message = done.stderr.lower()
    assert ("checksum" in message or "typo" in message) if damage == "typo" else "recovery key" in message
    assert str(key_file.read_text().strip()) not in done.stdout + done.stderr
    _ = os  # the environment above is complete on purpose: nothing of the test process leaks in
