"""A 2 GiB generated stream through the Drive test server with the connection cut three times.

The uploader runs in its own process so its peak RSS is measured alone; the server counts
what it received, so re-sent bytes are measured, not assumed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from backup_pipeline.settings import DriveAuthMode
from backup_pipeline_tests.fixtures.drive import DriveFixture

SIZE = 2 * 1024**3
CHUNK = 8 * 1024 * 1024

UPLOADER = textwrap.dedent(
    """
    import hashlib, json, re, sys
    from backup_pipeline.destinations.base import RetryPolicy
    from backup_pipeline.destinations.google_drive import DriveConfig, GoogleDriveDestination
    from backup_pipeline.settings import DriveAuthMode

    cfg = json.loads(sys.argv[1])
    cfg["auth_mode"] = DriveAuthMode(cfg["auth_mode"])
    size = int(sys.argv[2])
    expected = hashlib.sha256()

    def generated():
        # Cheap, non-repeating bytes: a 1 MiB seed block re-keyed per block by a counter.
        seed = hashlib.shake_256(b"backup-pipeline").digest(1 << 20)
        for i in range(size >> 20):
            block = i.to_bytes(8, "big") + seed[8:]
            expected.update(block)
            yield block

    dest = GoogleDriveDestination(DriveConfig(**cfg), retry=RetryPolicy(attempts=8, initial_wait=0.05, max_wait=1))
    stored = dest.put("big/part", generated(), {"backupId": "big"})
    print(json.dumps({
        "size": stored.size, "sha256": stored.sha256, "expected_sha256": expected.hexdigest(),
        # VmHWM, not getrusage: Linux carries the pre-exec parent's (pytest's) max RSS into ru_maxrss.
        "peak_rss_bytes": int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024,
    }))
    """
)


@pytest.mark.slow
def test_2gib_upload_with_three_cuts(drive: DriveFixture) -> None:
    chunks = SIZE // CHUNK
    # Faults fire in order; each ``skip`` counts chunk requests after the previous fault fired.
    drive.fault("cut", route="upload_chunk", skip=chunks // 4, after_bytes=3 * 1024 * 1024 + 12345)
    drive.fault("cut", route="upload_chunk", skip=chunks // 4, after_bytes=100)
    drive.fault("cut", route="upload_chunk", skip=chunks // 4, after_bytes=CHUNK - 1)
    cfg = drive.config(DriveAuthMode.SHARED_DRIVE, chunk_size=CHUNK)
    cfg_json = {k: (v.value if k == "auth_mode" else v) for k, v in cfg.__dict__.items()}
    result = subprocess.run(
        [sys.executable, "-c", UPLOADER, json.dumps(cfg_json), str(SIZE)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    stats = drive.stats()
    print(json.dumps({"uploader": report, "server": stats}, indent=1))

    assert report["size"] == SIZE
    assert report["sha256"] == report["expected_sha256"]
    server_file = next(f for f in drive.files() if f["name"] == "big/part")
    assert (
        server_file["sha256Checksum"] == report["expected_sha256"]
    )  # computed by the server from what it stored
    assert stats["cuts"] == 3
    assert stats["upload_bytes_received"] - SIZE <= 3 * CHUNK  # at most one chunk re-sent per cut
    assert report["peak_rss_bytes"] < 128 * 1024 * 1024
