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


def _chain_set(number: int, mode: str, changed: int, uploaded: int, parts: int) -> dict[str, object]:
    return {
        "number": number,
        "backup_id": f"id-{number}",
        "wall_s": 10.0,
        "cpu_s": 8.0,
        "modes": {"bench-docs": mode, "bench-media": mode},
        "reasons": {"bench-docs": "", "bench-media": ""},
        "since_full": 0 if mode == "full" else number - 1,
        "changed_objects": 51 if changed else 0,
        "changed_bytes": changed,
        "changed_bytes_all": changed,
        "resized": 3 if changed else 0,
        "bucket_part_bytes": uploaded,
        "index_part_bytes": 1000,
        "inventory_part_bytes": 300_000,
        "database_part_bytes": 6_000_000,
        "manifest_bytes": 5000,
        "live_bytes": 1_000_000_000,
        "read_parts": parts,
        "read_part_bytes": 1_010_000_000,
    }


def test_the_chain_rows_and_section_replace_their_previous_version_in_the_doc() -> None:
    """``bench.sh --chain`` rewrites only its own Goals rows and section of docs/benchmarks.md."""
    from backup_pipeline_tests.bench import incr_chain

    data = {
        "date": "2026-12-07 22:00 UTC",
        "machine": "x86_64, 2 cores, 23.5 GiB RAM",
        "load_before": [5.0, 4.0, 3.0],
        "load_after": [6.0, 5.0, 4.0],
        "runs": 2,
        "length": 3,
        "dataset": "test",
        "policy": "BACKUP_PIPELINE_FULL_EVERY=7",
        "sets": [
            _chain_set(1, "full", 0, 1_000_000_000, 2),
            _chain_set(2, "incremental", 10_000_000, 10_200_000, 4),
            _chain_set(3, "incremental", 10_000_000, 10_600_000, 6),
            _chain_set(4, "full", 0, 1_000_000_000, 2),
        ],
        "restores": [
            {
                "role": "last",
                "label": "set 3",
                "number": 3,
                "wall_s": [30.0, 34.0],
                "cpu_s": [20.0, 21.0],
                "differences": 0,
                "first_differences": [],
            },
            {
                "role": "full",
                "label": "set 4 (full)",
                "number": 4,
                "wall_s": [30.0, 30.0],
                "cpu_s": [20.0, 20.0],
                "differences": 0,
                "first_differences": [],
            },
        ],
    }
    goals = {g.text.split(":")[0]: g for g in incr_chain.goals(data)}
    changed = goals["1 % changed"]
    assert not changed.met and "1.060 ×" in changed.measured  # set 3: (10.6 MB + 1 kB) / 10 MB
    restores = [g for g in incr_chain.goals(data) if g.text.startswith("chain of")]
    assert [g.met for g in restores] == [True, True]  # equal; 32 s vs 30 s = 1.07 ×
    doc = "\n".join(
        [
            "# Benchmarks",
            "## Goals",
            "| issue | goal | measured | verdict | reason |",
            "|---|---|---|---|---|",
            "| 18 | 1 % changed: old row | x | met |  |",
            "| 18 | nothing changed: kept | y | met |  |",
            "",
            "## Backup",
            "table",
            "## Incremental chain (issue 18)",
            "old text",
            "## Archive",
            "kept",
        ]
    )
    once = incr_chain.update_doc(doc, data)
    assert incr_chain.update_doc(once, data) == once  # idempotent
    lines = once.splitlines()
    assert "| 18 | 1 % changed: old row | x | met |  |" not in lines
    assert lines[4] == "| 18 | nothing changed: kept | y | met |  |"
    assert lines[5].startswith("| 18 | 1 % changed: ") and lines[6].startswith(
        "| 18 | chain of 3 sets, 1 % changed each time: the 3rd set"
    )
    assert lines[8].startswith("| 18 | ") is False
    assert "old text" not in once and "## Archive\nkept" in once
    assert once.count("## Incremental chain (issue 18)") == 1
    assert "| 3 | incremental |" in once and "1.060" in once


def test_an_interrupted_chain_run_still_reports_what_it_measured() -> None:
    from backup_pipeline_tests.bench import incr_chain

    data = {
        "date": "2026-12-07 22:00 UTC",
        "machine": "x86_64",
        "load_before": [5.0, 4.0, 3.0],
        "load_after": [6.0, 5.0, 4.0],
        "runs": 2,
        "length": 30,
        "dataset": "test",
        "policy": "BACKUP_PIPELINE_FULL_EVERY=7",
        "sets": [
            _chain_set(1, "full", 0, 1_000_000_000, 2),
            _chain_set(2, "incremental", 10_000_000, 10_000_000, 4),
        ],
        "restores": [],
        "incomplete": "KeyboardInterrupt: stopped",
    }
    assert [g.text.split(":")[0] for g in incr_chain.goals(data)] == ["1 % changed"]
    text = "\n".join(incr_chain.section(data))
    assert "**This run did not finish** (KeyboardInterrupt: stopped)" in text and "2 of 31 sets" in text
