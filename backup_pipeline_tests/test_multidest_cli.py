"""``backup-pipeline restore`` with several destinations: ``--list`` per destination (an unreachable one
says so), ``--destination`` names one, and the copy a restore reads is the first reachable complete one.

Local folders and an S3 destination on a closed port (nothing listens: connection refused)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from backup_pipeline.cli import main
from backup_pipeline.cli.destination_choice import NoCompleteCopy, list_across, pick_copy
from backup_pipeline.destinations.local_folder import LocalFolderDestination
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.settings import load_settings
from backup_pipeline_tests.fixtures.ports import free_port
from backup_pipeline_tests.test_copy_sets import ID_NEW, ID_OLD, INSTALLATION, make_set


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    nas, old = LocalFolderDestination(tmp_path / "nas"), LocalFolderDestination(tmp_path / "old")
    make_set(nas, ID_NEW, {"database": 1000}, manifest=False)  # a copy that never finished
    make_set(old, ID_NEW, {"database": 1000})
    make_set(old, ID_OLD, {"database": 1000})
    return {
        "BACKUP_PIPELINE_STATE_DIR": str(tmp_path / "state"),
        "BACKUP_PIPELINE_DESTINATIONS": "nas,offline,old",
        "BACKUP_PIPELINE_DESTINATION_NAS_KIND": "local",
        "BACKUP_PIPELINE_DESTINATION_NAS_PATH": str(tmp_path / "nas"),
        "BACKUP_PIPELINE_DESTINATION_OLD_KIND": "local",
        "BACKUP_PIPELINE_DESTINATION_OLD_PATH": str(tmp_path / "old"),
        "BACKUP_PIPELINE_DESTINATION_OFFLINE_KIND": "s3",
        "BACKUP_PIPELINE_DESTINATION_OFFLINE_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "BACKUP_PIPELINE_DESTINATION_OFFLINE_S3_BUCKET": "nowhere",
        "BACKUP_PIPELINE_DESTINATION_OFFLINE_S3_ACCESS_KEY": "offline-access",
        "BACKUP_PIPELINE_DESTINATION_OFFLINE_S3_SECRET_KEY": "offline-secret-never-printed",
        "BACKUP_PIPELINE_DESTINATION_RETRY_ATTEMPTS": "1",
    }


def _run(args: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    for key in list(os.environ):
        if key.startswith("BACKUP_PIPELINE_"):
            monkeypatch.delenv(key)
    result = CliRunner().invoke(main, args, env=env)
    return result.exit_code, result.stdout, result.stderr


def test_list_shows_every_destination_and_which_cannot_be_read(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = _run(["restore", "--list"], env, monkeypatch)
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].startswith("destination nas: 1 backup set(s) on local folder")
    assert f"  {ID_NEW}  {INSTALLATION}" in lines[1] and "INCOMPLETE (no manifest)" in lines[1]
    assert lines[2].startswith("destination offline: UNREACHABLE (")
    assert lines[3].startswith("destination old: 2 backup set(s)")
    assert "offline-secret-never-printed" not in out + err


def test_an_unknown_destination_name_is_bad_input(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = _run(["restore", "--list", "--destination", "tape"], env, monkeypatch)
    assert code == 2
    assert "--destination: no destination named 'tape'; known: nas, offline, old" in err


def test_the_first_reachable_complete_copy_of_the_newest_set_is_chosen(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    resources = DestinationResource.from_settings(load_settings(env)).all_named()
    said: list[str] = []
    chosen, backup_id = pick_copy(list_across(resources, INSTALLATION), "latest", said.append)
    assert (chosen.name, backup_id) == ("old", ID_NEW)
    assert said[0].startswith("destination offline: unreachable, skipped (")
    assert said[1] == f"destination nas: copy INCOMPLETE (no manifest) of {ID_NEW}, skipped"
    assert said[2].startswith(f"restoring {ID_NEW} from destination old (local folder ")

    only_nas = [r for r in resources if r.label == "nas"]
    with pytest.raises(NoCompleteCopy, match="no reachable destination holds a complete backup set"):
        pick_copy(list_across(only_nas, INSTALLATION), "latest", said.append)
    with pytest.raises(NoCompleteCopy, match=f"complete copy of {ID_OLD}"):
        pick_copy(list_across(only_nas, INSTALLATION), ID_OLD, said.append)


def test_a_named_destinations_s3_keys_are_masked_in_cli_errors() -> None:
    from backup_pipeline.cli.errors import mask_secrets

    environ = {
        "BACKUP_PIPELINE_DESTINATION_S3LOCK_S3_SECRET_KEY": "named-secret-value",
        "BACKUP_PIPELINE_DESTINATION_S3LOCK_S3_ACCESS_KEY": "named-access-value",
        "BACKUP_PIPELINE_S3_DESTINATION_SECRET_KEY": "single-secret-value",
    }
    text = "failed: named-secret-value / named-access-value / single-secret-value"
    assert mask_secrets(text, environ) == "failed: *** / *** / ***"


def test_destination_check_and_ls_take_a_named_destination(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = _run(["destination", "ls", "--destination", "old"], env, monkeypatch)
    assert code == 0, out + err
    assert len(out.splitlines()) == 4 and ID_OLD in out and ID_NEW in out  # two sets of database + manifest
    code, out, err = _run(["destination", "check", "--destination", "nas", "--json"], env, monkeypatch)
    assert code == 0, out + err
    assert '"ok": true' in out and str(Path(env["BACKUP_PIPELINE_DESTINATION_NAS_PATH"])) in out
    code, _, err = _run(["destination", "ls", "--destination", "tape"], env, monkeypatch)
    assert code == 2 and "no destination named 'tape'; known: nas, offline, old" in err
