"""Fault tests against the Drive v3 test server: every fault either ends in a complete upload
with matching checksums or in an error naming the cause — never a short file recorded as complete.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator

import pytest

from backup_pipeline.destinations import (
    AuthError,
    PermanentError,
    QuotaError,
    RetryableError,
    RetryingDestination,
)
from backup_pipeline.settings import DriveAuthMode
from backup_pipeline_tests.fixtures.drive import FAST_RETRY, SERVICE_ACCOUNT, SHARED_DRIVE_ID, DriveFixture

CHUNK = 256 * 1024
DATA = os.urandom(5 * CHUNK + 1234)  # six chunks, the last one ragged


def blocks(data: bytes = DATA, size: int = 100_000) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def complete_files(drive: DriveFixture) -> list[dict[str, object]]:
    return [f for f in drive.files() if f["mimeType"] != "application/vnd.google-apps.folder"]


def assert_uploaded_intact(drive: DriveFixture, data: bytes = DATA, abandoned_sessions: int = 0) -> None:
    files = complete_files(drive)
    assert len(files) == 1, files
    assert files[0]["size"] == str(len(data))
    assert files[0]["sha256Checksum"] == hashlib.sha256(data).hexdigest()
    assert drive.stats()["open_sessions"] == abandoned_sessions


@pytest.mark.parametrize(
    "preset",
    ["short", "cut", "rate_limit", "too_many_requests", "unavailable", "timeout_html", "expired_token"],
)
def test_transient_chunk_faults_still_complete_with_matching_checksums(
    drive: DriveFixture, preset: str
) -> None:
    drive.fault(preset, route="upload_chunk", skip=2, count=2)
    stored = drive.destination().put("part", blocks(), {"backupId": "b"})
    assert stored.size == len(DATA)
    assert stored.sha256 == hashlib.sha256(DATA).hexdigest()
    assert stored.md5 == hashlib.md5(DATA).hexdigest()
    assert drive.stats()["faults_fired"] == 2
    assert_uploaded_intact(drive)


def test_short_write_on_the_final_chunk_is_detected_and_completed(drive: DriveFixture) -> None:
    drive.fault("short", route="upload_chunk", skip=5, keep_bytes=1000)
    stored = drive.destination().put("part", blocks(), {})
    assert stored.sha256 == hashlib.sha256(DATA).hexdigest()
    assert_uploaded_intact(drive)


def test_cut_resends_at_most_the_interrupted_chunk(drive: DriveFixture) -> None:
    drive.fault("cut", route="upload_chunk", skip=1, after_bytes=100_000)
    drive.fault("cut", route="upload_chunk", skip=1, after_bytes=200_000)
    drive.destination().put("part", blocks(), {})
    stats = drive.stats()
    assert stats["cuts"] == 2
    assert stats["status_queries"] >= 2
    assert stats["upload_bytes_received"] - len(DATA) <= 2 * CHUNK
    assert_uploaded_intact(drive)


def test_faults_during_the_resume_status_query_are_retried(drive: DriveFixture) -> None:
    drive.fault("cut", route="upload_chunk", skip=1)
    drive.fault("unavailable", route="upload_status", count=2)
    drive.destination().put("part", blocks(), {})
    assert_uploaded_intact(drive)


@pytest.mark.parametrize("preset", ["session_404", "session_410"])
def test_lost_session_restarts_a_rewindable_stream(drive: DriveFixture, preset: str) -> None:
    drive.fault(preset, route="upload_chunk", skip=3)
    stored = drive.destination().put("part", io.BytesIO(DATA), {})
    assert stored.sha256 == hashlib.sha256(DATA).hexdigest()
    assert drive.stats()["sessions_started"] == 2
    assert_uploaded_intact(drive)


@pytest.mark.parametrize(("preset", "status"), [("session_404", "404"), ("session_410", "410")])
def test_lost_session_of_a_one_shot_stream_fails_naming_the_cause(
    drive: DriveFixture, preset: str, status: str
) -> None:
    drive.fault(preset, route="upload_chunk", skip=3)
    with pytest.raises(
        RetryableError, match=rf"session expired or was lost \(HTTP {status}\).*uploaded again"
    ):
        drive.destination().put("part", blocks(), {})
    assert complete_files(drive) == []


def test_throttling_on_session_start_is_retried(drive: DriveFixture) -> None:
    drive.fault("rate_limit", route="upload_start", count=2)
    drive.fault("too_many_requests", route="upload_start", count=1)
    drive.destination().put("part", blocks(), {})
    assert_uploaded_intact(drive)


def test_daily_upload_cap_fails_with_a_quota_error(drive: DriveFixture) -> None:
    drive.fault("daily_cap", route="upload_chunk", skip=1, count=1)
    with pytest.raises(QuotaError, match="750 GB per user per day"):
        drive.destination().put("part", blocks(), {})
    assert complete_files(drive) == []


def test_persistent_throttling_gives_up_with_a_retryable_error(drive: DriveFixture) -> None:
    drive.fault("rate_limit", route="upload_chunk", skip=1, count=100)
    with pytest.raises(RetryableError, match=r"userRateLimitExceeded.*throttling"):
        drive.destination().put("part", blocks(), {})
    assert complete_files(drive) == []


def test_access_token_expiring_mid_upload_is_refreshed(drive: DriveFixture) -> None:
    def expiring() -> Iterator[bytes]:
        for i, block in enumerate(blocks()):
            if i == 4:
                drive.expire_tokens()
            yield block

    drive.destination().put("part", expiring(), {})
    assert drive.stats()["tokens_issued"] >= 2
    assert_uploaded_intact(drive)


def test_service_account_outside_a_shared_drive_is_told_how_to_fix_it(drive: DriveFixture) -> None:
    # A service account acting as itself (no shared drive, no subject) has no storage.
    dest = drive.destination(DriveAuthMode.DELEGATION, subject=None)
    report = dest.check()
    assert not report.ok
    assert [s.name for s in report.steps if s.ok] == ["credentials", "folder", "space"]  # folders still work
    assert report.fix is not None and "storageQuotaExceeded" in report.fix
    assert "shared drive" in report.fix and SERVICE_ACCOUNT in report.fix
    with pytest.raises(QuotaError, match="Service accounts have no Drive storage"):
        dest.put("part", blocks(), {})


def test_storage_quota_fault_is_a_quota_error(drive: DriveFixture) -> None:
    drive.fault("storage_quota", route="upload_start")
    with pytest.raises(QuotaError, match="storageQuotaExceeded"):
        drive.destination().put("part", blocks(), {})


def test_unauthorized_delegation_names_client_id_and_scope(drive: DriveFixture) -> None:
    drive.server.config(unauthorized_delegation=[SERVICE_ACCOUNT])
    report = drive.destination(DriveAuthMode.DELEGATION).check()
    assert not report.ok and report.steps[0].name == "credentials"
    assert report.fix is not None
    assert "unauthorized_client" in report.fix and "112233445566778899001" in report.fix
    assert "https://www.googleapis.com/auth/drive.file" in report.fix
    assert "PRIVATE KEY" not in report.fix


def test_revoked_refresh_token_mentions_the_testing_mode_expiry(drive: DriveFixture) -> None:
    drive.fault("invalid_grant", route="token")
    with pytest.raises(AuthError, match=r"invalid_grant.*7 days"):
        list(drive.destination(DriveAuthMode.OAUTH).list())


def test_delete_without_organizer_role_is_explained(drive: DriveFixture) -> None:
    dest = drive.destination()
    stored = dest.put("part", blocks(), {})
    drive.add_shared_drive(SHARED_DRIVE_ID, {SERVICE_ACCOUNT: "fileOrganizer"})
    with pytest.raises(PermanentError, match=r"organizer.*Manage members") as err:
        dest.delete(stored.id)
    assert not isinstance(err.value, RetryableError)
    report = dest.check()
    assert not report.ok and report.steps[-1].name == "delete"


def test_metadata_and_download_faults_are_retried_by_the_wrapper(drive: DriveFixture) -> None:
    dest = RetryingDestination(drive.destination(), FAST_RETRY)
    stored = dest.put("part", blocks(), {"backupId": "b"})
    drive.fault("unavailable", route="metadata", count=2)
    assert [f.id for f in dest.list({"backupId": "b"})] == [stored.id]
    drive.fault("timeout_html", route="metadata")
    assert dest.stat(stored.id).sha256 == stored.sha256
    drive.fault("cut", route="download", after_bytes=300_000)
    drive.fault("too_many_requests", route="download")
    assert b"".join(dest.get(stored.id)) == DATA
    drive.fault("cut", route="download", after_bytes=1000)
    assert b"".join(dest.get(stored.id, 200_000, 900_000)) == DATA[200_000:900_000]
    drive.fault("unavailable", route="delete")
    dest.delete(stored.id)
    dest.delete(stored.id)


def test_interrupted_put_is_resumed_by_a_retried_operation(drive: DriveFixture) -> None:
    class DyingReader(io.RawIOBase):
        """A source that dies after 4 chunks (the op crashes); not seekable."""

        def __init__(self) -> None:
            self.data, self.pos = DATA, 0

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            if self.pos >= 4 * CHUNK + 5:
                raise ConnectionResetError("source connection lost")
            block = self.data[self.pos : self.pos + min(n, 50_000)]
            self.pos += len(block)
            return block

    dest = drive.destination()
    with pytest.raises(ConnectionResetError):
        dest.put("part", DyingReader(), {})
    sent_first = drive.stats()["upload_bytes_received"]
    assert sent_first >= 2 * CHUNK

    dest.put("part", blocks(), {})  # a retried op with the same, deterministic bytes
    stats = drive.stats()
    assert stats["sessions_started"] == 1
    assert stats["upload_bytes_received"] == len(DATA)  # nothing sent twice
    assert_uploaded_intact(drive)


def test_a_different_stream_after_an_interruption_starts_a_new_session(drive: DriveFixture) -> None:
    def dying() -> Iterator[bytes]:
        yield from blocks(DATA[: 3 * CHUNK])
        raise ConnectionResetError("source connection lost")

    dest = drive.destination()
    with pytest.raises(ConnectionResetError):
        dest.put("part", dying(), {})
    other = os.urandom(len(DATA))
    stored = dest.put("part", blocks(other), {})
    assert stored.sha256 == hashlib.sha256(other).hexdigest()
    assert drive.stats()["sessions_started"] == 2
    # The first session is abandoned (Drive expires it after a week); it never becomes a file.
    assert_uploaded_intact(drive, other, abandoned_sessions=1)
