"""Fault tests against the Drive v3 test server: every fault either ends in a complete upload
with matching checksums or in an error naming the cause — never a short file recorded as complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backup_pipeline.destinations import (
    AuthError,
    DailyCapError,
    PermanentError,
    QuotaError,
    RetryableError,
    RetryingDestination,
    ensure_room,
)
from backup_pipeline.destinations.google_drive import state as drive_state
from backup_pipeline.destinations.google_drive.state import UploadLedger
from backup_pipeline.services.backup_parts import ErrorCode
from backup_pipeline.services.backup_upload import destination_failure
from backup_pipeline.settings import DriveAuthMode
from backup_pipeline_tests.fixtures.drive import (
    CLIENT_ID,
    DELEGATED_USER,
    FAST_RETRY,
    SERVICE_ACCOUNT,
    SHARED_DRIVE_ID,
    DriveFixture,
)

CHUNK = 256 * 1024
DATA = os.urandom(5 * CHUNK + 1234)  # six chunks, the last one ragged


def blocks(data: bytes = DATA, size: int = 100_000) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def complete_files(drive: DriveFixture) -> list[dict[str, object]]:
    return [f for f in drive.files() if f["mimeType"] != "application/vnd.google-apps.folder"]


def session_files(drive: DriveFixture) -> list[Path]:
    return sorted((drive.tmp / "state" / "drive-upload-sessions").glob("*"))


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


@pytest.mark.parametrize("status", [403, 429])
def test_the_daily_cap_wording_with_the_allowance_left_is_throttling_and_retried(
    drive: DriveFixture, status: int
) -> None:
    # "User rate limit exceeded." is also what a throttled request can get; the ledger shows
    # nothing uploaded today, so it is no evidence of the 750 GB cap: retry, do not fail.
    drive.fault("daily_cap", route="upload_chunk", skip=1, count=2, status=status)
    stored = drive.destination().put("part", blocks(), {})
    assert stored.sha256 == hashlib.sha256(DATA).hexdigest()
    assert drive.stats()["faults_fired"] == 2
    assert_uploaded_intact(drive)


def test_the_daily_cap_is_decided_from_the_ledger_and_drives_message(drive: DriveFixture) -> None:
    # A cap just above one DATA upload: after the first put the ledger shows >= 90 % used.
    cap = len(DATA) + 100_000
    dest = drive.destination(daily_upload_cap_bytes=cap)
    dest.put("first", blocks(), {})
    drive.fault("daily_cap", route="upload_chunk", skip=1, count=1)
    with pytest.raises(DailyCapError, match="750 GB per user per day") as err:
        dest.put("second", blocks(), {})
    # Google quotes the cap in GB: the figures are decimal (main printed MiB/GiB beside "750 GB").
    assert f"of the {cap / 1e6:.1f} MB allowance in the last 24 h" in str(err.value)
    assert "iB" not in str(err.value)
    assert drive.stats()["faults_fired"] == 1  # not retried: waiting minutes does not lift a daily cap
    assert destination_failure(err.value, "uploading part 'database'").code == ErrorCode.DAILY_CAP
    assert [f["name"] for f in complete_files(drive)] == ["first"]
    assert session_files(drive) == []


def test_the_daily_cap_wording_on_a_listing_is_throttling_even_with_the_allowance_used(
    drive: DriveFixture,
) -> None:
    dest = drive.destination(daily_upload_cap_bytes=len(DATA))
    dest.put("first", blocks(), {})  # the whole allowance used
    drive.fault("daily_cap", route="list", count=2)  # the cap limits uploads, not reads
    assert [f.name for f in RetryingDestination(dest, FAST_RETRY).list()] == ["first"]


def test_the_pre_flight_refuses_a_backup_over_the_daily_allowance_with_the_daily_cap_code(
    drive: DriveFixture,
) -> None:
    dest = drive.destination(daily_upload_cap_bytes=len(DATA) + 100_000)
    dest.put("first", blocks(), {})
    with pytest.raises(DailyCapError, match="remains of today's upload allowance") as err:
        ensure_room(RetryingDestination(dest, FAST_RETRY), 500_000)
    assert destination_failure(err.value, "plan").code == ErrorCode.DAILY_CAP
    ensure_room(RetryingDestination(dest, FAST_RETRY), 50_000)  # what still fits is not refused


def test_throttling_that_never_ends_says_the_retries_are_over(drive: DriveFixture) -> None:
    drive.fault("daily_cap", route="upload_chunk", skip=1, count=100, status=429)
    with pytest.raises(RetryableError) as err:
        drive.destination().put("part", blocks(), {})
    text = str(err.value)
    assert "treated as throttling" in text and "this pipeline uploaded only" in text
    assert text.endswith(f"(gave up after {FAST_RETRY.attempts} attempts)")
    assert not isinstance(err.value, QuotaError)
    assert session_files(drive) == []


def test_persistent_throttling_gives_up_with_a_retryable_error(drive: DriveFixture) -> None:
    drive.fault("rate_limit", route="upload_chunk", skip=1, count=100)
    with pytest.raises(RetryableError, match=r"userRateLimitExceeded.*throttling"):
        drive.destination().put("part", blocks(), {})
    assert complete_files(drive) == []


def test_access_token_expiring_during_a_backup_is_refreshed(drive: DriveFixture) -> None:
    # Chunk PUTs need no token (the session URI is the capability); the next part's session
    # start and the listings do: they get 401, refresh, and go on.
    dest = drive.destination()
    dest.put("part-1", blocks(), {})
    drive.expire_tokens()
    dest.put("part-2", blocks(), {})
    drive.expire_tokens()
    assert sorted(f.name for f in dest.list()) == ["part-1", "part-2"]
    assert drive.stats()["tokens_issued"] == 3


def test_delegation_without_a_subject_is_told_to_set_one(drive: DriveFixture) -> None:
    # A service account acting as itself (no subject) has no storage: Google says so.
    dest = drive.destination(DriveAuthMode.DELEGATION, subject=None)
    report = dest.check()
    assert not report.ok
    assert [s.name for s in report.steps if s.ok] == ["credentials", "folder"]  # folders still work
    space = next(s for s in report.steps if s.name == "space")
    assert "a backup would be refused now: 0 bytes of storage are free" in space.detail
    assert report.fix is not None and "storageQuotaExceeded" in report.fix
    assert "BACKUP_PIPELINE_DRIVE_SUBJECT" in report.fix and SERVICE_ACCOUNT in report.fix
    with pytest.raises(QuotaError, match="no user to act as is set"):
        dest.put("part", blocks(), {})


def test_delegation_not_in_effect_is_named_with_client_id_and_scope(drive: DriveFixture) -> None:
    # Google's own words: "Service Accounts do not have storage quota" — not a full Drive.
    drive.fault("storage_quota", route="upload_start")
    with pytest.raises(QuotaError) as err:
        drive.destination(DriveAuthMode.DELEGATION).put("part", blocks(), {})
    text = str(err.value)
    assert "delegation is not in effect" in text and f"not to {DELEGATED_USER}" in text
    assert CLIENT_ID in text and "https://www.googleapis.com/auth/drive.file" in text
    assert "buy" not in text


def test_oauth_answered_as_a_service_account_is_explained(drive: DriveFixture) -> None:
    drive.fault("storage_quota", route="upload_start")
    with pytest.raises(QuotaError, match="acts as a user") as err:
        drive.destination(DriveAuthMode.OAUTH).put("part", blocks(), {})
    assert "buy" not in str(err.value)


@pytest.mark.parametrize("mode", [DriveAuthMode.DELEGATION, DriveAuthMode.OAUTH])
def test_a_full_drive_is_told_to_free_space(drive: DriveFixture, mode: DriveAuthMode) -> None:
    drive.server.config(storage_limit=len(DATA) // 2)  # the server answers with the user's-quota message
    with pytest.raises(QuotaError) as err:
        drive.destination(mode).put("part", blocks(), {})
    text = str(err.value)
    assert "The user's Drive storage quota has been exceeded" in text
    assert "is full" in text and "retention" in text and "trash" in text
    assert "service account" not in text.lower()


def test_shared_drive_with_the_folder_inside_is_not_blamed_on_the_folder(drive: DriveFixture) -> None:
    drive.fault("storage_quota", route="upload_start")
    with pytest.raises(QuotaError) as err:
        drive.destination().put("part", blocks(), {})
    text = str(err.value)
    assert f"although the backup folder is in shared drive {SHARED_DRIVE_ID}" in text
    assert "Manage members" in text
    assert "BACKUP_PIPELINE_DRIVE_FOLDER_ID to a folder inside" not in text


def test_shared_drive_with_a_folder_outside_it_names_the_folder(drive: DriveFixture) -> None:
    # A folder in the service account's own My Drive (folders need no storage) used as the backup folder.
    outside = drive.destination(DriveAuthMode.DELEGATION, subject=None).folder_id()
    with pytest.raises(QuotaError) as err:
        drive.destination(folder_id=outside).put("part", blocks(), {})
    text = str(err.value)
    assert f"the backup folder {outside} is not in any shared drive" in text
    assert f"BACKUP_PIPELINE_DRIVE_FOLDER_ID to a folder inside shared drive {SHARED_DRIVE_ID}" in text


def test_shared_drive_whose_pooled_storage_is_full_says_so(drive: DriveFixture) -> None:
    drive.fault("storage_full", route="upload_start")
    with pytest.raises(QuotaError, match="organisation's pooled storage, which is full") as err:
        drive.destination().put("part", blocks(), {})
    assert "FOLDER_ID" not in str(err.value)


def test_storage_quota_fault_is_a_quota_error(drive: DriveFixture) -> None:
    drive.fault("storage_quota", route="upload_start")
    with pytest.raises(QuotaError, match="storageQuotaExceeded"):
        drive.destination().put("part", blocks(), {})


def test_an_unknown_shared_drive_gets_the_membership_hint(drive: DriveFixture) -> None:
    report = drive.destination(shared_drive_id="0AnoSuchDrive").check()
    assert not report.ok
    assert [(s.name, s.ok) for s in report.steps] == [("credentials", True), ("folder", False)]
    assert report.fix is not None
    assert "Shared drive not found" in report.fix and "is not a member" in report.fix
    assert "Manage members" in report.fix and SERVICE_ACCOUNT in report.fix


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


class DyingFile(io.RawIOBase):
    """A seekable source that dies after ``limit`` bytes (the op crashes): its bytes can be read again."""

    def __init__(self, data: bytes, limit: int) -> None:
        self.data, self.pos, self.limit = data, 0, limit

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos
        return pos

    def read(self, n: int = -1) -> bytes:
        if self.pos >= self.limit:
            raise ConnectionResetError("source connection lost")
        block = self.data[self.pos : self.pos + min(n, 50_000)]
        self.pos += len(block)
        return block


def test_interrupted_put_of_a_seekable_source_is_resumed_by_a_retried_operation(drive: DriveFixture) -> None:
    dest = drive.destination()
    with pytest.raises(ConnectionResetError):
        dest.put("part", DyingFile(DATA, 4 * CHUNK + 5), {})
    sent_first = drive.stats()["upload_bytes_received"]
    assert sent_first >= 2 * CHUNK
    assert len(session_files(drive)) == 1  # kept: the same bytes can be sent again

    dest.put("part", blocks(), {})  # a retried op with the same, deterministic bytes
    stats = drive.stats()
    assert stats["sessions_started"] == 1
    assert stats["upload_bytes_received"] == len(DATA)  # nothing sent twice
    assert_uploaded_intact(drive)
    assert session_files(drive) == []


def test_a_different_stream_after_an_interruption_starts_a_new_session(drive: DriveFixture) -> None:
    dest = drive.destination()
    with pytest.raises(ConnectionResetError):
        dest.put("part", DyingFile(DATA, 3 * CHUNK), {})
    other = os.urandom(len(DATA))
    stored = dest.put("part", blocks(other), {})
    assert stored.sha256 == hashlib.sha256(other).hexdigest()
    assert drive.stats()["sessions_started"] == 2
    # The first session is abandoned (Drive expires it after a week); it never becomes a file.
    assert_uploaded_intact(drive, other, abandoned_sessions=1)
    assert session_files(drive) == []


# --- resumable session files: a session URI is a bearer capability -----------------------------


def dying_stream() -> Iterator[bytes]:
    yield from blocks(DATA[: 3 * CHUNK])
    raise ConnectionResetError("source connection lost")


@pytest.mark.parametrize("failure", ["source dies", "drive keeps failing", "session lost"])
def test_a_failed_part_leaves_no_session_file(drive: DriveFixture, failure: str) -> None:
    # A backup part is an encryption stream (a fresh salt every time): nothing could resume it.
    if failure == "drive keeps failing":
        drive.fault("unavailable", route="upload", skip=2, count=1000)
    if failure == "session lost":
        drive.fault("session_404", route="upload_chunk", skip=2)
    modes: list[list[int]] = []

    def watched() -> Iterator[bytes]:
        for i, block in enumerate(blocks() if failure != "source dies" else dying_stream()):
            if i == 5:
                modes.append([path.stat().st_mode & 0o777 for path in session_files(drive)])
            yield block

    with pytest.raises((ConnectionResetError, RetryableError)):
        drive.destination().put("part", watched(), {})
    assert modes == [[0o600]]  # it existed, owner-only, while the part was uploading
    assert session_files(drive) == []
    assert complete_files(drive) == []


def _age_session(path: Path, *, created_days_ago: float | None, idle_hours: float = 0) -> None:
    data = json.loads(path.read_text())
    if created_days_ago is None:
        data.pop("created")
    else:
        data["created"] = time.time() - created_days_ago * 86400
    path.write_text(json.dumps(data))
    stamp = time.time() - idle_hours * 3600
    os.utime(path, (stamp, stamp))


@pytest.mark.parametrize("created_days_ago", [7.01, None])
def test_a_session_past_drives_week_is_never_resumed(
    drive: DriveFixture, created_days_ago: float | None
) -> None:
    with pytest.raises(ConnectionResetError):
        drive.destination().put("part", DyingFile(DATA, 4 * CHUNK + 5), {})
    (saved,) = session_files(drive)
    _age_session(saved, created_days_ago=created_days_ago)
    drive.destination().put("part", blocks(), {})
    assert drive.stats()["sessions_started"] == 2  # the expired URI was not used
    assert session_files(drive) == []
    assert_uploaded_intact(drive, abandoned_sessions=1)


def test_leftover_session_files_are_swept_by_the_next_backup_and_retention(drive: DriveFixture) -> None:
    for name in ("a", "b", "c"):
        with pytest.raises(ConnectionResetError):
            drive.destination().put(name, DyingFile(DATA, 2 * CHUNK + 5), {})
    live, idle, expired = session_files(drive)
    _age_session(idle, created_days_ago=0.1, idle_hours=2)  # a crashed process's file
    _age_session(expired, created_days_ago=8)
    dest = drive.destination()
    dest.capacity()  # the backup's pre-flight
    assert session_files(drive) == [live]
    _age_session(live, created_days_ago=0.5, idle_hours=1.5)
    list(RetryingDestination(drive.destination(), FAST_RETRY).list())  # a retention run
    assert session_files(drive) == []


# --- listings ----------------------------------------------------------------------------------


def test_a_failed_listing_page_is_retried_with_its_own_token(drive: DriveFixture) -> None:
    dest = RetryingDestination(drive.destination(), FAST_RETRY)
    names = [f"set/part-{i}" for i in range(7)]
    for name in names:
        dest.put(name, [name.encode()], {"backupId": "b"})
    drive.server.config(list_page_limit=2)  # Drive's partial pages: 4 pages for 7 files
    drive.fault("unavailable", route="list", skip=1, count=2)  # page 2 fails twice
    # Armed faults are taken in order: this one counts requests once the first is spent
    # (page 2's third try, page 3), then fails page 4 once.
    drive.fault("too_many_requests", route="list", skip=2, count=1)
    listing = dest.list({"backupId": "b"})
    first = next(listing)
    rest = list(listing)
    assert [f.name for f in [first, *rest]] == names  # each file once, in order, none skipped
    assert drive.stats()["faults_fired"] == 3


def test_the_restore_listing_survives_a_503_on_page_two(drive: DriveFixture) -> None:
    from backup_pipeline.services.restore import list_backups

    dest = RetryingDestination(drive.destination(), FAST_RETRY)
    for i in range(5):
        props = {
            "app": "backup_pipeline",
            "installationId": "acme",
            "backupId": f"20260101T00000{i}Z-0000000{i}",
        }
        dest.put(f"acme-{i}.manifest.bpenc", [b"m"], dict(props, partName="manifest"))
    drive.server.config(list_page_limit=2)
    drive.fault("unavailable", route="list", skip=1)
    sets = list_backups(dest, installation_id="acme")
    assert len(sets) == 5 and all(s.complete for s in sets)


# --- destination check ---------------------------------------------------------------------------


def test_the_check_uploads_several_chunks_with_a_status_query_at_the_production_chunk_size(
    drive: DriveFixture,
) -> None:
    report = drive.destination(chunk_size=8 * 1024 * 1024).check()
    assert report.ok, report
    stats = drive.stats()
    assert stats["upload_chunks"] == 3 and stats["sessions_started"] == 1
    assert stats["status_queries_unknown_total"] == 1  # Content-Range: bytes */*
    write = next(s for s in report.steps if s.name == "write")
    assert "3 chunks in one resumable session" in write.detail
    assert "status query after chunk 1 reported 262144 bytes held" in write.detail
    assert complete_files(drive) == []


def test_the_check_fails_when_a_backup_would_be_refused_for_the_daily_cap(drive: DriveFixture) -> None:
    cap = len(DATA)
    dest = drive.destination(daily_upload_cap_bytes=cap)
    dest.put("earlier", blocks(), {})  # the ledger now shows the whole allowance used
    report = dest.check()
    assert not report.ok
    space = next(s for s in report.steps if s.name == "space")
    assert not space.ok
    assert "a backup would be refused now: nothing is left of today's upload allowance" in space.detail
    assert (
        f"0 B of today's {cap / 1e6:.1f} MB upload allowance left ({cap / 1e6:.1f} MB uploaded"
        in space.detail
    )
    assert "iB" not in space.detail
    assert report.capacity is not None and report.capacity.daily_upload_remaining == 0
    assert report.fix is not None and "leave the 24-hour window at" in report.fix
    # The rest of the check still ran: the connection itself is fine.
    assert [(s.name, s.ok) for s in report.steps][-3:] == [
        ("write", True),
        ("read back", True),
        ("delete", True),
    ]


def test_the_check_fails_when_the_drive_is_full(drive: DriveFixture) -> None:
    drive.server.config(storage_limit=0)
    report = drive.destination(DriveAuthMode.OAUTH).check()
    space = next(s for s in report.steps if s.name == "space")
    assert not space.ok and "0 bytes of storage are free" in space.detail
    assert "0 B free (0 B of 0 B used)" in space.detail
    assert report.fix is not None and "empty the Drive trash" in report.fix


def test_a_ledger_write_that_dies_midway_leaves_the_previous_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload ledger is the day's evidence against Drive's 750 GB cap: a process killed while
    recording must leave the previous count, not an empty ledger that would read as 'nothing
    uploaded today' and let the next run plan past the cap (seen with a SIGKILL in a seeding run)."""
    ledger = UploadLedger(tmp_path, "backup@example.com")
    ledger.record(700 * 10**9)

    def dies_midway(data: object, out: io.TextIOBase) -> None:
        out.write('{"half')
        raise KeyboardInterrupt  # as a kill between the start and the end of the write

    monkeypatch.setattr(drive_state.json, "dump", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        ledger.record(5)
    monkeypatch.undo()
    assert ledger.uploaded_last_24h() == 700 * 10**9
    ledger.record(5)
    assert UploadLedger(tmp_path, "backup@example.com").uploaded_last_24h() == 700 * 10**9 + 5
