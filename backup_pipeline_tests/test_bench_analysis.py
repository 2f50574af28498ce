"""The benchmark's analysis of a run: py-spy samples by activity and process, event-log figures."""

from __future__ import annotations

from backup_pipeline_tests.bench.profiles import parse_raw
from backup_pipeline_tests.bench.timeline import RunTimeline, Step

WORKER = (
    'process 12:"/venv/bin/python -B -c from multiprocessing.forkserver import main; main(6, 7)";'
    "<module> (<string>:1);main (multiprocessing/forkserver.py:274);_serve_one (multiprocessing/forkserver.py:313);"
)


def test_samples_go_to_the_innermost_activity_and_their_process() -> None:
    raw = "\n".join(
        [
            WORKER
            + "export_bucket (backup_pipeline/services/backup_buckets.py:527);update (backup_pipeline/archive/streams.py:37);HashingCounter.update (x.py:1) 30",
            WORKER
            + "export_bucket (backup_pipeline/services/backup_buckets.py:527);_encrypt_payload (backup_pipeline/archive/stream_crypto.py:263) 20",
            'process 10:"";main (dagster/_cli/__init__.py:50);store_event (dagster/_core/storage/event_log/sqlite/sqlite_event_log.py:272) 10',
            'process 11:"/venv/bin/python -B -c from multiprocessing.forkserver import main; main(6, 7)";'
            "<module> (<string>:1);_find_and_load (<frozen importlib._bootstrap>:1176) 5",
        ]
    )
    profile = parse_raw(raw, rate=100)
    assert profile.total == 65
    assert profile.by_activity["hashing (SHA-256/MD5)"] == 30
    assert profile.by_activity["encrypting / decrypting"] == 20
    assert profile.by_activity["Dagster (events, storage, executor, op wiring)"] == 10
    assert profile.by_activity["importing modules (process start)"] == 5
    assert profile.by_process == {
        "step workers (forked)": 50,
        "dagster job execute (run coordinator)": 10,
        "forkserver (preloading dagster and the code location)": 5,
    }
    assert profile.seconds(profile.total) == 0.65


def test_a_timeline_splits_a_run_into_launch_data_and_tail() -> None:
    t = RunTimeline(
        launched=100.0,
        wall=20.0,
        run_start=102.0,
        run_end=118.0,
        steps=[
            Step("plan_backup", 102.5, 104.0, 105.0),
            Step("dump_database", 105.5, 106.0, 108.0),
            Step("export_bucket[a]", 105.5, 106.5, 114.0),
            Step("finalize_backup", 114.5, 115.0, 116.0),
        ],
    )
    f = t.figures()
    assert f["launch_to_run_start"] == 2.0
    assert f["launch_to_first_byte"] == 6.0  # dump_database's STEP_START
    assert f["data_span"] == 8.0
    assert f["tail"] == 4.0  # last data step end -> RUN_SUCCESS
    assert f["no_op_running"] == 16.0 - (1.0 + 8.0 + 1.0)
    assert f["worker_spawn_total"] == 1.5 + 0.5 + 1.0 + 0.5
    assert f["run_end_to_exit"] == 2.0
