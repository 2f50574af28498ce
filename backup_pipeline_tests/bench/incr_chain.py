"""Issue 18's chain goals on the bench dataset and SeaweedFS server: 1 % of the objects changed
before each backup, a chain of incremental sets, the restore of its 30th set.

    bash scripts/bench.sh --chain [--runs N] [--chain-length 30]

A sub-mode of the harness (setup, this, teardown; ~15 min, too slow for the default run): with
``BACKUP_PIPELINE_INCREMENTAL_OBJECTS=true`` and the product's default bounded-chain policy
(``BACKUP_PIPELINE_FULL_EVERY``, ``_INCREMENTAL_MIN_LIVE_SHARE``; a full is taken where the policy
says so and reported), before every backup but the first 1 % of the objects by count and about
1 % by bytes get new content (most the same size, some a different size). Then one more set
forced full (``BACKUP_PIPELINE_FULL_EVERY=1``) of the same data, and restore_job (database + every
bucket, into emptied buckets and a new database) of the chain's last set, of its deepest set
(most parts to read) and of that full, each compared with the source by the fidelity comparator
(``hostile/compare.py``). Figures go to ``docs/bench/incr-chain.json``; the Goals rows and the
"Incremental chain (issue 18)" section of ``docs/benchmarks.md`` are generated from it, here and
by every full harness run (``report.py``).
"""

from __future__ import annotations

import io
import json
import random
import re
import shutil
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from minio import Minio
from minio.commonconfig import Tags

from backup_pipeline.archive.keys import OrgKeyring
from backup_pipeline.archive.manifest import Manifest
from backup_pipeline.archive.stream_crypto import decrypt_stream
from backup_pipeline.destinations import LocalFolderDestination
from backup_pipeline.services.backup_parts import PART_MANIFEST, PROP_PART_NAME

from ..fixtures.s3 import S3Server
from ..hostile.compare import compare_buckets, compare_databases, snapshot_buckets, snapshot_database
from . import dataset as ds
from .measure import run_measured
from .series import MB, Goal, cell

if TYPE_CHECKING:
    from .harness import Bench

REPO = Path(__file__).resolve().parents[2]
CHAIN_JSON = REPO / "docs" / "bench" / "incr-chain.json"
SECTION = "Incremental chain (issue 18)"
CHANGED_SHARE = 0.01
UPLOAD_GOAL = 1.05  # uploaded object bytes ≤ 1.05 × the changed bytes
RESTORE_GOAL = 1.2  # restore of the 30th set ≤ 1.2 × the restore of a full set
# The Goals rows of this module start so (``update_doc`` replaces them by these prefixes).
MARK_CHANGED = "1 % changed:"
MARK_CHAIN = "chain of"


@dataclass
class SetFigures:
    """One backup of the chain: what changed before it, what it stored, what a restore reads."""

    number: int
    backup_id: str
    wall_s: float
    cpu_s: float
    modes: dict[str, str]  # bucket -> "full" | "incremental"
    reasons: dict[str, str]
    since_full: int
    changed_objects: int = 0
    changed_bytes: int = 0  # new sizes of the changed objects, over the buckets backed up incrementally
    changed_bytes_all: int = 0
    resized: int = 0
    bucket_part_bytes: int = 0  # ciphertext of this set's bucket-* parts
    index_part_bytes: int = 0
    inventory_part_bytes: int = 0
    database_part_bytes: int = 0
    manifest_bytes: int = 0
    live_bytes: int = 0  # the buckets' objects at this backup (sum of sizes)
    read_parts: int = 0  # bucket parts a whole restore reads (this set's and older sets')
    read_part_bytes: int = 0  # their ciphertext


@dataclass
class RestoreFigures:
    label: str
    number: int
    wall_s: list[float]
    cpu_s: list[float]
    differences: int
    first_differences: list[str] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(self.wall_s)


# --- changing 1 % of the objects ---------------------------------------------------------


def _smallest_media_group(spec: ds.DatasetSpec) -> tuple[int, int, int]:
    """(group number, first asset index, object size) of the smallest media objects."""
    first = 0
    best = (0, 0, spec.media_sizes[0][1])
    for group, (count, size) in enumerate(spec.media_sizes):
        if size <= best[2]:
            best = (group, first, size)
        first += count
    return best


def _media_key(spec: ds.DatasetSpec, group: int, index: int) -> str:
    ext = ds.MEDIA_TYPES[index % len(ds.MEDIA_TYPES)][0]
    return f"group-{group}/asset {index:04d}.{ext}"


def _doc_key(i: int) -> str:
    return f"docs/{i // 500:02d}/doc-{i:05d}.{'log' if i % 2 else 'json'}"


def change_objects(
    client: Minio, spec: ds.DatasetSpec, round_no: int, object_count: int, object_bytes: int
) -> tuple[dict[str, int], int, int]:
    """Give 1 % of the objects (by count; ≈ 1 % of the bytes) new content, different in every round.

    Media objects of the smallest group carry most of the bytes, documents make up the count.
    Returns (new bytes per bucket, objects changed, objects whose size changed)."""
    n = max(1, round(CHANGED_SHARE * object_count))
    group, first, size = _smallest_media_group(spec)
    group_count = spec.media_sizes[group][0]
    media = max(1, min(n - 1, group_count, round(CHANGED_SHARE * object_bytes / size)))
    rng = random.Random(f"{spec.seed}:chain:{round_no}")
    changed: dict[str, int] = {}
    resized = 0
    for j in range(media):
        index = first + (round_no * media + j) % group_count
        # One media object a round changes size (grows, then shrinks back the next time it is picked).
        new_size = size + (256 * ds.KIB if j == 0 and round_no % 2 else 0)
        resized += new_size != size
        ext_type = ds.MEDIA_TYPES[index % len(ds.MEDIA_TYPES)][1]
        client.put_object(
            ds.BUCKET_MEDIA,
            _media_key(spec, group, index),
            ds.KeystreamReader(spec.seed, f"chain/{round_no}/{index}", new_size),  # type: ignore[arg-type]
            new_size,
            content_type=ext_type,
            metadata={"origin": "bench", "seed": str(spec.seed)},
            part_size=64 * ds.MIB,
        )
        changed[ds.BUCKET_MEDIA] = changed.get(ds.BUCKET_MEDIA, 0) + new_size
    for i in rng.sample(range(spec.small_objects), n - media):
        key = _doc_key(i)
        old = client.stat_object(ds.BUCKET_DOCS, key).size or 0
        same_size = rng.random() < 0.7  # most keep their size (a new ETag only), the rest are resized
        target = old if same_size else rng.randint(spec.small_min_bytes, spec.small_max_bytes)
        body, content_type, _ = ds.small_document(rng, i, target)
        body = (body + b" " * target)[:target]  # exactly the chosen size
        resized += target != old
        tags = Tags.new_object_tags()
        if i % 5 == 0:
            tags["class"] = "report"
        client.put_object(
            ds.BUCKET_DOCS,
            key,
            io.BytesIO(body),
            len(body),
            content_type=content_type,
            metadata={"origin": "bench"},
            tags=tags if i % 5 == 0 else None,
        )
        changed[ds.BUCKET_DOCS] = changed.get(ds.BUCKET_DOCS, 0) + len(body)
    return changed, n, resized


# --- reading what a set stored ------------------------------------------------------------


def read_manifest(folder: Path, keyring: OrgKeyring, backup_id: str) -> Manifest:
    dest = LocalFolderDestination(str(folder))
    stored = {f.properties[PROP_PART_NAME]: f for f in dest.list({"backupId": backup_id})}
    plaintext = b"".join(
        decrypt_stream(
            dest.get(stored[PART_MANIFEST].id),
            expected_backup_id=backup_id,
            expected_part_name=PART_MANIFEST,
            org_keyring=keyring,
        )
    )
    return Manifest.from_json(plaintext)


def set_figures(
    folder: Path, keyring: OrgKeyring, number: int, backup_id: str, wall_s: float, cpu_s: float
) -> SetFigures:
    manifest = read_manifest(folder, keyring, backup_id)
    buckets = {b.bucket: b for b in manifest.buckets}
    since = [b.since_full or 0 for b in buckets.values()]
    figures = SetFigures(
        number,
        backup_id,
        wall_s,
        cpu_s,
        modes={name: b.mode or "full" for name, b in buckets.items()},
        reasons={name: b.mode_reason or "" for name, b in buckets.items()},
        since_full=max(since) if since else 0,
    )
    for part in manifest.parts:
        if part.kind == "bucket":
            figures.bucket_part_bytes += part.ciphertext_size
        elif part.kind == "index":
            figures.index_part_bytes += part.ciphertext_size
        elif part.kind == "inventory":
            figures.inventory_part_bytes += part.ciphertext_size
        elif part.kind == "database":
            figures.database_part_bytes += part.ciphertext_size
    stored = LocalFolderDestination(str(folder)).list({"backupId": backup_id})
    figures.manifest_bytes = sum(f.size for f in stored if f.properties.get(PROP_PART_NAME) == PART_MANIFEST)
    figures.read_parts = sum(1 for p in manifest.parts if p.kind == "bucket")
    figures.read_part_bytes = figures.bucket_part_bytes
    for b in buckets.values():
        figures.live_bytes += b.total_bytes if b.total_bytes is not None else b.object_bytes
        for ref in b.referenced_parts or ():
            figures.read_parts += 1
            figures.read_part_bytes += ref.ciphertext_size
    return figures


# --- the run -------------------------------------------------------------------------------


def new_data(bench: Bench, length: int) -> dict[str, Any]:
    """What ``CHAIN_JSON`` holds; ``run`` appends each set and restore as it is measured, so an
    interrupted run still leaves its figures (marked ``incomplete``)."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_line(),
        "load_before": list(bench.load_before),
        "load_after": list(bench.load_before),
        "runs": bench.runs,
        "length": length,
        "dataset": f"{bench.spec.describe()}: {bench.object_count} objects, {bench.object_bytes / MB:.0f} MB",
        "policy": "",
        "sets": [],
        "restores": [],
    }


def run(bench: Bench, length: int, data: dict[str, Any]) -> None:
    """The chain, the extra full, the restores (the chain's last set, the full, the deepest set)."""
    assert bench.s3 is not None
    from .harness import DB, NO_REFERENCES, RESTORE_DB

    folder = bench.work / "dest-chain"
    shutil.rmtree(folder, ignore_errors=True)
    env = {
        **bench.env("local"),
        "BACKUP_PIPELINE_LOCAL_DESTINATION_PATH": str(folder),
        "BACKUP_PIPELINE_INCREMENTAL_OBJECTS": "true",
    }
    data["policy"] = policy_line(env)
    keyring = OrgKeyring.from_file(str(bench.org_secret))
    client = bench.s3.client()
    count, total = bench.object_count, bench.object_bytes  # sizes each round (a resize drifts it by KiB)
    sets: list[SetFigures] = []
    for number in range(1, length + 2):
        changed: dict[str, int] = {}
        n = resized = 0
        extra: dict[str, str] = {}
        if number == length + 1:
            extra = {"BACKUP_PIPELINE_FULL_EVERY": "1"}  # the full set of the same data
        elif number > 1:
            changed, n, resized = change_objects(client, bench.spec, number, count, total)
        m = run_measured(
            f"chain set {number}",
            bench.dagster_cmd("backup_job"),
            # In-process: the chain's goal is about bytes, and 31 backups with a process per step cost
            # the shared machine ~5 CPU-s each for nothing measured here (the restores run as deployed).
            env={**env, "BACKUP_PIPELINE_EXECUTOR": "in_process", **extra},
            watch=bench.watch(),
        )
        figures = set_figures(folder, keyring, number, bench.latest_backup_id(), m.wall_s, m.cpu_s)
        figures.changed_objects, figures.resized = n, resized
        figures.changed_bytes_all = sum(changed.values())
        figures.changed_bytes = sum(v for b, v in changed.items() if figures.modes.get(b) == "incremental")
        sets.append(figures)
        data["sets"].append(asdict(figures))
        data["load_after"] = list(_loadavg())
        bench.log(
            f"chain set {number}: {m.wall_s:.1f}s wall, {m.cpu_s:.1f}s cpu; modes {figures.modes}; "
            f"changed {n} objects {figures.changed_bytes_all / MB:.2f} MB; bucket parts "
            f"{figures.bucket_part_bytes / MB:.2f} MB, index {figures.index_part_bytes / MB:.3f} MB; "
            f"a restore reads {figures.read_parts} parts, {figures.read_part_bytes / MB:.0f} MB"
        )

    bench.log("snapshot of the source (buckets and database) for the comparator")
    s3 = cast(S3Server, bench.s3)
    source_buckets = snapshot_buckets(s3, ds.BUCKETS)
    db_url = "postgresql://postgres@127.0.0.1:5432/{}"
    source_db = snapshot_database(db_url.format(DB))

    def wipe() -> None:
        assert bench.s3 is not None
        bench.s3.reset()
        subprocess.run(["dropdb", "--if-exists", "-h", "127.0.0.1", "-U", "postgres", RESTORE_DB], check=True)

    def restore(role: str, label: str, figures: SetFigures) -> None:
        config = {
            "ops": {
                "start_restore": {
                    "config": {
                        "backup_id": figures.backup_id,
                        "dry_run": False,
                        "confirm": f"restore {figures.backup_id}",
                        "scope": "full",
                        "target_database": RESTORE_DB,
                        "conflict_policy": "overwrite",
                        "consistency_query": NO_REFERENCES,
                    }
                }
            }
        }
        cmd = bench.dagster_cmd("restore_job", config, f"-chain-{figures.number}")
        result = RestoreFigures(label, figures.number, [], [], 0)
        for i in range(bench.runs):
            wipe()
            m = run_measured(label, cmd, env=env, watch=bench.watch())
            result.wall_s.append(m.wall_s)
            result.cpu_s.append(m.cpu_s)
            bench.log(f"{label} run {i + 1}: {m.wall_s:.1f}s wall, {m.cpu_s:.1f}s cpu")
        report = compare_buckets(source_buckets, snapshot_buckets(s3, ds.BUCKETS))
        report.extend(compare_databases(source_db, snapshot_database(db_url.format(RESTORE_DB))))
        result.differences = len(report.differences)
        result.first_differences = [d.line() for d in report.differences[:5]]
        bench.log(f"{label}: comparator {result.differences} difference(s)")
        data["restores"].append({"role": role, **asdict(result)})
        data["load_after"] = list(_loadavg())

    last, full = sets[length - 1], sets[length]
    deepest = max(sets[:length], key=lambda s: (s.read_parts, s.number))
    restore("last", f"restore_job full, set {last.number} of the chain", last)
    restore("full", f"restore_job full, set {full.number} (a full set of the same data)", full)
    if deepest.number != last.number:
        restore("deepest", f"restore_job full, set {deepest.number} (deepest of the chain)", deepest)
    wipe()


def _loadavg() -> tuple[float, float, float]:
    import os

    return os.getloadavg()


def machine_line() -> str:
    import os
    import platform

    import psutil

    cpu = re.sub(r"\s+", " ", platform.processor() or platform.machine())
    return f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.1f} GiB RAM"


def policy_line(env: dict[str, str]) -> str:
    from backup_pipeline.settings import BackupSettings

    fields = BackupSettings.model_fields
    every = env.get("BACKUP_PIPELINE_FULL_EVERY", str(fields["full_every"].default))
    share = env.get(
        "BACKUP_PIPELINE_INCREMENTAL_MIN_LIVE_SHARE", str(fields["incremental_min_live_share"].default)
    )
    return f"BACKUP_PIPELINE_FULL_EVERY={every}, BACKUP_PIPELINE_INCREMENTAL_MIN_LIVE_SHARE={share} (the defaults)"


# --- goals and the doc ---------------------------------------------------------------------


def load() -> dict[str, Any] | None:
    if not CHAIN_JSON.exists():
        return None
    return cast(dict[str, Any], json.loads(CHAIN_JSON.read_text()))


def _incremental_sets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The chain's sets (not the extra full) with a change and at least one bucket incremental."""
    return [
        s
        for s in data["sets"][: data["length"]]
        if s["changed_bytes"] > 0 and "incremental" in s["modes"].values()
    ]


def _uploaded(s: dict[str, Any]) -> int:
    """Object bytes a set uploaded: its bucket parts and their indexes (ciphertext). Fulls of
    some buckets in a mixed set would count their whole bucket: such sets are left out."""
    return int(s["bucket_part_bytes"] + s["index_part_bytes"])


def goals(data: dict[str, Any] | None) -> list[Goal]:
    if not data:
        return []
    found: list[Goal] = []
    when = f"`bench.sh --chain`, {data['date']}"
    incr = [s for s in _incremental_sets(data) if set(s["modes"].values()) == {"incremental"}]
    if incr:
        ratios = [_uploaded(s) / s["changed_bytes"] for s in incr]
        worst = max(incr, key=lambda s: _uploaded(s) / s["changed_bytes"])
        found.append(
            Goal(
                "18",
                f"{MARK_CHANGED} uploaded object bytes (bucket parts + their indexes) ≤ 1.05 × the changed bytes",
                max(ratios) <= UPLOAD_GOAL,
                f"worst of {len(incr)} incremental sets: {_uploaded(worst) / MB:.2f} MB vs "
                f"{worst['changed_bytes'] / MB:.2f} MB = {max(ratios):.3f} × (median {statistics.median(ratios):.3f} ×; "
                f"{when})",
                f"set {worst['number']}: bucket parts {worst['bucket_part_bytes'] / MB:.2f} MB, indexes "
                f"{worst['index_part_bytes'] / MB:.3f} MB (tar headers, gzip members, 16 B per 1 MiB chunk)",
            )
        )
    restores = data["restores"]
    roles = {r.get("role"): r for r in restores}
    if "last" in roles:
        last = roles["last"]
        length = data["length"]
        s30 = data["sets"][length - 1]
        chain_note = (
            f"set {length} is {_mode_text(s30)}; its restore reads {s30['read_parts']} bucket parts, "
            f"{s30['read_part_bytes'] / MB:.0f} MB for {s30['live_bytes'] / MB:.0f} MB live "
            f"({s30['read_part_bytes'] / s30['live_bytes']:.2f} ×)"
        )
        bad = [r for r in restores if r["differences"]]
        found.append(
            Goal(
                "18",
                f"{MARK_CHAIN} {length} sets, 1 % changed each time: the {_nth(length)} set restores equal to the "
                "source (fidelity comparator: buckets and database)",
                not last["differences"],
                f"{last['differences']} differences; {chain_note} ({when})",
                "; ".join(f"{r['label']}: {r['first_differences'][:2]}" for r in bad),
            )
        )
    if "last" in roles and "full" in roles:
        full = roles["full"]
        lw, fw = statistics.median(last["wall_s"]), statistics.median(full["wall_s"])
        found.append(
            Goal(
                "18",
                f"{MARK_CHAIN} {length} sets: the {_nth(length)} set's restore takes ≤ {RESTORE_GOAL} × the restore of "
                "a full set of the same data",
                lw <= RESTORE_GOAL * fw,
                f"{lw:.1f} s vs {fw:.1f} s = {lw / fw:.2f} × ({when})",
                chain_note,
            )
        )
    return found


def _nth(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _mode_text(s: dict[str, Any]) -> str:
    modes = set(s["modes"].values())
    if modes == {"full"}:
        return "a full"
    return f"incremental, {s['since_full']} after its full"


def section(data: dict[str, Any] | None) -> list[str]:
    """The "Incremental chain (issue 18)" section, from ``CHAIN_JSON``."""
    if not data:
        return []
    length = data["length"]
    load_b = " / ".join(f"{x:.2f}" for x in data["load_before"])
    load_a = " / ".join(f"{x:.2f}" for x in data["load_after"])
    lines = [
        f"## {SECTION}",
        "",
        f"Measured by `bash scripts/bench.sh --chain --runs {data['runs']}` (a sub-mode: ~15 min on a quiet machine; the full run "
        f"regenerates this section and its Goals rows from `docs/bench/incr-chain.json`), {data['date']}, "
        f"{data['machine']}; load average (1/5/15 min) before {load_b}, after {load_a}"
        + (" (**shared machine: the wall times are noisy**)" if max(data["load_before"]) > 2 else "")
        + f". Dataset: {data['dataset']}; SeaweedFS started by the harness; local-folder destination. "
        f"Incremental object backups on, policy {data['policy']}. Before every set but the first, 1 % of the "
        "objects by count (≈ 1 % of the bytes: 2 MiB media objects and small documents) get new content; "
        "most keep their size, some change it. The chain's backups run with the in-process executor (their "
        "bytes are the goal; their wall and CPU below are for orientation), the restores as deployed (a process "
        "per step). Set "
        f"{length + 1} is one more backup of the same data forced full (`BACKUP_PIPELINE_FULL_EVERY=1`).",
        "",
        *(
            [
                f"**This run did not finish** ({cell(data['incomplete'])}): the figures below are what it measured "
                f"before it stopped ({len(data['sets'])} of {length + 1} sets, {len(data['restores'])} restores).",
                "",
            ]
            if data.get("incomplete")
            else []
        ),
        "Uploaded object bytes = the set's bucket parts + their indexes (ciphertext); the inventories and "
        "the full database dump of every set are shown apart. Changed bytes = new sizes of the changed "
        "objects. Parts read = bucket parts a whole restore reads (its own and the older ones it "
        "references, each whole, verified first then streamed: twice).",
        "",
        "| set | modes | reason | changed objects (resized) | changed MB | uploaded object MB | × changed | "
        "inventories MB | dump MB | wall s | CPU s | parts read | read MB / live MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in data["sets"]:
        modes = sorted(set(s["modes"].values()))
        reasons = sorted({r for r in s["reasons"].values() if r})
        ratio = (
            f"{_uploaded(s) / s['changed_bytes']:.3f}"
            if s["changed_bytes"] and modes == ["incremental"]
            else ""
        )
        lines.append(
            f"| {s['number']} | {'/'.join(modes)} | {cell('; '.join(reasons))} | {s['changed_objects']} "
            f"({s['resized']}) | {s['changed_bytes_all'] / MB:.2f} | {_uploaded(s) / MB:.2f} | {ratio} | "
            f"{s['inventory_part_bytes'] / MB:.2f} | {s['database_part_bytes'] / MB:.1f} | {s['wall_s']:.1f} | "
            f"{s['cpu_s']:.1f} | {s['read_parts']} | {s['read_part_bytes'] / MB:.0f} / {s['live_bytes'] / MB:.0f} "
            f"= {s['read_part_bytes'] / s['live_bytes']:.2f} |"
        )
    fulls = [s["number"] for s in data["sets"][:length] if set(s["modes"].values()) == {"full"}]
    deepest = max(data["sets"][:length], key=lambda s: (s["read_parts"], s["number"]), default=None)
    last = data["sets"][length - 1] if len(data["sets"]) >= length else None
    lines += [
        "",
        f"The policy took a full at sets {', '.join(map(str, fulls))} of {length}"
        + (
            f": the {_nth(length)} set is not a {length}-set chain but {_mode_text(last)}. "
            if last is not None and len(fulls) > 1
            else ". "
        )
        + (
            f"The deepest set of the chain is set {deepest['number']} ({deepest['read_parts']} bucket parts)."
            if deepest is not None
            else ""
        ),
        "",
        "| restore (database + 3 buckets, restore_job) | wall s (runs) | CPU s (median) | comparator differences |",
        "|---|---|---|---|",
    ]
    for r in data["restores"]:
        walls = ", ".join(f"{w:.1f}" for w in r["wall_s"])
        lines.append(
            f"| {r['label']} | {statistics.median(r['wall_s']):.1f} ({walls}) | "
            f"{statistics.median(r['cpu_s']):.1f} | {_differences(r)} |"
        )
    lines.append("")
    return lines


def _differences(r: dict[str, Any]) -> str:
    # The deepest set is an older state of the source: the objects changed after it differ by design.
    if r.get("role") == "deepest":
        return f"{r['differences']} (the objects changed by the later sets: expected, not a fidelity check)"
    return str(r["differences"])


def update_doc(text: str, data: dict[str, Any]) -> str:
    """``text`` (docs/benchmarks.md) with this module's Goals rows and section replaced by ``data``'s."""
    rows = [
        f"| {g.issue} | {cell(g.text)} | {g.measured} | {'met' if g.met else '**not met**'} | "
        f"{cell(g.reason) if not g.met else ''} |"
        for g in goals(data)
    ]
    mine = (f"| 18 | {MARK_CHANGED} ", f"| 18 | {MARK_CHAIN} ")
    lines = [line for line in text.splitlines() if not line.startswith(mine)]
    table = [i for i, line in enumerate(lines) if line.startswith("| ") and _in_goals(lines, i)]
    at = (table[-1] + 1) if table else len(lines)
    lines[at:at] = rows
    out = "\n".join(lines) + "\n"
    pattern = re.compile(rf"^## {re.escape(SECTION)}[ \t]*\n.*?(?=^## |\Z)", flags=re.M | re.S)
    new = "\n".join(section(data)).rstrip() + "\n\n"
    if pattern.search(out):
        return pattern.sub(lambda _: new, out).rstrip() + "\n"
    return out.rstrip() + "\n\n" + new.rstrip() + "\n"


def _in_goals(lines: list[str], i: int) -> bool:
    for line in reversed(lines[:i]):
        if line.startswith("## "):
            return line.strip() == "## Goals"
    return False


def main(bench: Bench, length: int, write_doc: bool) -> None:
    from .report import DOC

    data = new_data(bench, length)
    try:
        run(bench, length, data)
    except (Exception, KeyboardInterrupt) as exc:  # what was measured is still written, marked so
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        data["incomplete"] = f"{type(exc).__name__}: {first}"
        raise
    finally:
        for goal in goals(data):
            bench.log(
                f"issue {goal.issue}: {goal.text}: {goal.measured} → {'met' if goal.met else 'NOT MET'}"
            )
        if write_doc and data["sets"]:
            CHAIN_JSON.parent.mkdir(parents=True, exist_ok=True)
            CHAIN_JSON.write_text(json.dumps(data, indent=1) + "\n")
            DOC.write_text(update_doc(DOC.read_text(), data))
            bench.log(f"wrote {CHAIN_JSON} and {DOC}")
