"""RPO after losing the database server: the restore of ``latest`` reaches a commit no older than
``archive_timeout`` plus one archive round trip before the loss (issue 20, goal 1's mechanics).

The bench's own round (``bench/pitr_rpo.py``) with a short ``archive_timeout`` so it fits a test:
a private PostgreSQL 15 cluster with DEPLOYMENT.md's settings archiving through pgBackRest into
SeaweedFS over HTTPS, a full base backup, one commit a second, then the server is killed
(``pg_ctl -m immediate``, its pgbackrest processes SIGKILLed) and its data directory deleted, and
the product's ``restore_to_moment`` restores ``latest`` into a new directory. The bound is a
correctness property of archive_timeout (a forced segment switch every interval, archived at
once), not a speed figure: the margin covers the archive round trip on a loaded machine.
"""

from __future__ import annotations

from datetime import datetime

from backup_pipeline_tests.bench.pitr_rpo import measure_round

ARCHIVE_TIMEOUT = 10
#: pushing the switched segment (async archive-push: encrypt, compress, HTTPS PUT) and one tick
ARCHIVE_ROUND_TRIP_MARGIN = 15


def test_latest_after_losing_the_server_reaches_back_within_archive_timeout() -> None:
    # 2.5 intervals of writes: at least two forced switches before the loss
    result = measure_round(ARCHIVE_TIMEOUT, write_seconds=25, say=lambda _m: None)
    assert result.newest_restored is not None and result.rpo_seconds is not None
    newest = datetime.fromisoformat(result.newest_restored)
    lost_at = datetime.fromisoformat(result.lost_at)
    # nothing after the last commit the server made is invented
    assert newest <= datetime.fromisoformat(result.last_written) < lost_at
    assert 1 <= result.commits_restored <= result.commits_written
    # the RPO bound: what was lost is at most the open segment of the last archive_timeout interval
    assert result.rpo_seconds <= ARCHIVE_TIMEOUT + ARCHIVE_ROUND_TRIP_MARGIN, result
    # and the restore did not simply return the base backup: the forced switches were archived
    assert result.commits_restored >= result.commits_written - (ARCHIVE_TIMEOUT + ARCHIVE_ROUND_TRIP_MARGIN)
