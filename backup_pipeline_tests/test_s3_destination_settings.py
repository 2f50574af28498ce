"""Settings, credentials, key layout and the least-privilege policy of the S3 destination, and its
CLI (``destination check|policy``); the CLI check runs against the suite's SeaweedFS."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from backup_pipeline.cli import main
from backup_pipeline.destinations.base import AuthError, PermanentError, RetryingDestination
from backup_pipeline.destinations.s3 import S3Destination, credentials_from, least_privilege_policy
from backup_pipeline.destinations.s3.layout import Layout, decode_properties, encode_properties
from backup_pipeline.resources.destination import DestinationResource
from backup_pipeline.settings import SettingsError, load_settings
from backup_pipeline_tests.fixtures import s3_destination as sd
from backup_pipeline_tests.fixtures.s3 import SeaweedFSServer

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "S3-DESTINATION.md"
BASE = {
    "BACKUP_PIPELINE_DESTINATION": "s3",
    "BACKUP_PIPELINE_S3_DESTINATION_ENDPOINT": "https://s3.eu-central-1.amazonaws.com",
    "BACKUP_PIPELINE_S3_DESTINATION_BUCKET": "acme-backups",
}


def _problems(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as err:
        load_settings(env)
    return str(err.value)


# --- settings -------------------------------------------------------------------------------------


def test_destination_s3_needs_endpoint_and_bucket() -> None:
    text = _problems({"BACKUP_PIPELINE_DESTINATION": "s3"})
    assert (
        "BACKUP_PIPELINE_S3_DESTINATION_ENDPOINT" in text and "BACKUP_PIPELINE_S3_DESTINATION_BUCKET" in text
    )


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("S3_DESTINATION_ENDPOINT", "s3.amazonaws.com", "http:// or https://"),
        ("S3_DESTINATION_BUCKET", "Acme_Backups", "not a valid S3 bucket name"),
        ("S3_DESTINATION_PREFIX", "/backups", "without a leading '/'"),
        ("S3_DESTINATION_PREFIX", "a//b", "empty, '.' or '..' segments"),
        ("S3_DESTINATION_STORAGE_CLASS", "GLACIER", "cannot be read until restored"),
        ("S3_DESTINATION_STORAGE_CLASS", "standard_ia", "capitals"),
        ("S3_DESTINATION_PART_SIZE_MIB", "4", "greater than or equal to 5"),
        ("S3_DESTINATION_LOCK_MODE", "legal-hold", "governance"),
        ("S3_DESTINATION_CREDENTIALS_FILE", "/nonexistent/credentials", "file not found"),
    ],
)
def test_bad_values_name_the_field_and_the_rule(field: str, value: str, rule: str) -> None:
    text = _problems({**BASE, f"BACKUP_PIPELINE_{field}": value})
    assert f"BACKUP_PIPELINE_{field}" in text and rule in text, text


def test_the_lock_lasts_until_retention_would_delete_the_set_plus_a_margin() -> None:
    daily = load_settings({**BASE, "BACKUP_PIPELINE_RETENTION_KEEP_LAST": "7"})
    assert daily.s3_destination_retention_days == 7 + 2
    weekly = load_settings(
        {**BASE, "BACKUP_PIPELINE_RETENTION_KEEP_LAST": "4", "BACKUP_PIPELINE_SCHEDULE_FREQUENCY": "weekly",
         "BACKUP_PIPELINE_S3_DESTINATION_LOCK_MARGIN_DAYS": "5"}
    )  # fmt: skip
    assert weekly.s3_destination_retention_days == 4 * 7 + 5
    fixed = load_settings({**BASE, "BACKUP_PIPELINE_S3_DESTINATION_LOCK_DAYS": "30"})
    assert fixed.s3_destination_retention_days == 30


def test_the_resource_builds_the_destination_without_reading_credentials() -> None:
    settings = load_settings({**BASE, "BACKUP_PIPELINE_S3_DESTINATION_PREFIX": "prod"})
    resource = DestinationResource.from_settings(settings)
    assert "secret" not in resource.model_dump_json().lower()
    built = resource.get_destination()
    assert isinstance(built, RetryingDestination) and isinstance(built.inner, S3Destination)
    assert (
        built.inner.cfg.prefix == "prod/"
        and built.inner.cfg.lock_days == settings.s3_destination_retention_days
    )
    assert built.description == "S3 bucket s3://acme-backups/prod/ at https://s3.eu-central-1.amazonaws.com"


# --- credentials ----------------------------------------------------------------------------------


def test_credentials_from_an_aws_credentials_file(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    path.write_text("[default]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = s3cr3t/with+signs\n")
    creds = credentials_from(str(path))()
    assert (creds.access_key, creds.secret_key) == ("AKIAEXAMPLE", "s3cr3t/with+signs")
    assert "s3cr3t" not in repr(creds)


def test_credential_errors_name_what_is_missing_never_the_secret(tmp_path: Path) -> None:
    half = tmp_path / "half"
    half.write_text("[default]\naws_access_key_id = AKIAEXAMPLE\n")
    with pytest.raises(AuthError, match="lacks aws_secret_access_key"):
        credentials_from(str(half))()
    broken = tmp_path / "broken"
    broken.write_text("aws_secret_access_key = leaked-if-quoted\n")  # no section header
    with pytest.raises(AuthError) as err:
        credentials_from(str(broken))()
    assert "not an AWS credentials file" in str(err.value) and "leaked-if-quoted" not in str(err.value)
    with pytest.raises(AuthError, match="BACKUP_PIPELINE_S3_DESTINATION_ACCESS_KEY and "):
        credentials_from(None, environ={})()


# --- layout ---------------------------------------------------------------------------------------


def test_ids_pin_versions_and_round_trip() -> None:
    layout = Layout("backups/")
    key = layout.key_for("acme-x.database.bpenc", {"backupId": "20260101T000000Z-0000aaaa"})
    assert key == "backups/20260101T000000Z-0000aaaa/acme-x.database.bpenc"
    pinned = layout.file_id(key, "3HL4kqtJlcpXroDTDmJ")
    assert pinned == "20260101T000000Z-0000aaaa/acme-x.database.bpenc?versionId=3HL4kqtJlcpXroDTDmJ"
    assert layout.parse_id(pinned) == (key, "3HL4kqtJlcpXroDTDmJ")
    assert layout.parse_id(layout.file_id(key, "null")) == (key, None)
    assert layout.key_for("probe", {"purpose": "check"}) == "backups/_/probe"
    assert layout.listing_prefix({"backupId": "b1"}) == "backups/b1/"
    assert layout.listing_prefix({"backupId": "not a token"}) == "backups/_/"


@pytest.mark.parametrize("name", ["", "a//b", "../x", "a/./b", "x?versionId=1", "tab\there", "a\\b"])
def test_names_a_path_normalising_server_would_rewrite_are_refused(name: str) -> None:
    with pytest.raises(PermanentError, match="invalid file name"):
        Layout("").key_for(name, {})


def test_properties_survive_as_metadata_and_the_2_kb_limit_is_named() -> None:
    props = {"backupId": "b1", "note": "Übersicht 100% fertig", "camelCase": "a  b"}
    headers = encode_properties(props, None, None)
    assert all(ord(ch) < 128 and ch != " " for ch in headers["x-amz-meta-bp-properties"])
    assert decode_properties(headers["x-amz-meta-bp-properties"]) == props
    many = {f"key{i:02d}": "v" * 110 for i in range(20)}
    with pytest.raises(PermanentError, match="S3 allows at most 2048"):
        encode_properties(many, None, None)


# --- the least-privilege policy -------------------------------------------------------------------


def test_the_policy_can_write_and_read_but_never_delete_or_bypass() -> None:
    policy = least_privilege_policy("acme-backups", "prod/")
    allowed = [a for s in policy["Statement"] if s["Effect"] == "Allow" for a in s["Action"]]
    denied = [a for s in policy["Statement"] if s["Effect"] == "Deny" for a in s["Action"]]
    assert {"s3:PutObject", "s3:PutObjectRetention", "s3:GetObjectVersion", "s3:ListBucketVersions"} <= set(
        allowed
    )
    assert not [a for a in allowed if "Delete" in a or "Bypass" in a or a.endswith("*")]
    assert {"s3:DeleteObject", "s3:DeleteObjectVersion", "s3:BypassGovernanceRetention"} <= set(denied)


def test_the_guide_shows_exactly_the_policy_the_product_prints() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    block = re.search(r"<!-- policy:acme-backups:prod/ -->\n```json\n(.*?)```", text, flags=re.S)
    assert block, "the guide's policy block is marked <!-- policy:acme-backups:prod/ -->"
    assert json.loads(block.group(1)) == least_privilege_policy("acme-backups", "prod/")


# --- CLI ------------------------------------------------------------------------------------------


def _run(args: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    for key in list(os.environ):
        if key.startswith("BACKUP_PIPELINE_"):
            monkeypatch.delenv(key)
    result = CliRunner().invoke(main, args, env=env)
    return result.exit_code, result.output


def test_cli_prints_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = _run(
        ["destination", "policy", "--bucket", "acme-backups", "--prefix", "prod"], {}, monkeypatch
    )
    assert code == 0 and json.loads(out) == least_privilege_policy("acme-backups", "prod/")
    code, out = _run(["destination", "policy"], {}, monkeypatch)
    assert code == 2 and "--bucket" in out


def test_cli_check_on_a_locked_bucket_with_the_products_credentials(
    s3: SeaweedFSServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sd.make_bucket(s3, object_lock=True)
    env = sd.settings_env(s3, tmp_path / "state")
    code, out = _run(["destination", "check"], env, monkeypatch)
    assert code == 0, out
    assert "object lock: enabled; no bucket default retention; this destination writes GOVERNANCE retention " \
        "for 9 days on every part" in out  # fmt: skip
    assert "versioning: enabled" in out and "refused, as it must be" in out
    assert "verdict: OK" in out and sd.WRITER_SECRET_KEY not in out

    code, out = _run(
        ["destination", "check"], {**env, "BACKUP_PIPELINE_S3_DESTINATION_SECRET_KEY": "wrong"}, monkeypatch
    )
    assert code == 1 and "verdict: FAILED" in out and "a wrong access key pair" in out
