"""Verification of one backup set: prove it restores, without touching production data.

Plain functions, no Dagster; ``ops/verification.py`` wires them into ``verify_backup_job``.

What :func:`verify_backup_set` does, in order (MUST):

1. Resolve the set on the destination and authenticate its manifest (``services/restore``).
2. Stream every part the manifest lists exactly once, authenticating every chunk (AEAD) and
   comparing ciphertext and plaintext size and SHA-256 with the manifest. The database part
   is fed, while it streams, to ``pg_restore`` into a **scratch database**
   (``bp_verify_p<32 hex>``, created for this run with the dump's encoding and locale and always
   dropped afterwards, on the application's server: the restore's own ``restore_into_scratch``,
   so a set that verifies is a set that restores); bucket parts are unpacked in memory-bounded streaming and a seeded
   random sample of objects is hashed and compared with the manifest's inventory. Nothing is
   written to the production database or buckets, no plaintext touches disk.
3. Sanity checks on the scratch database: every table the manifest lists exists with exactly
   the row count recorded at backup time (counted in pg_dump's own snapshot).

A verification killed mid-way leaves its scratch database behind; the next restore or
verification drops it (``services/restore/scratch.py``: the name proves whose it is, the
session lock it held proves its maker is gone).

The result is a :class:`VerificationReport`: ``ok`` only when every check passed. Damage
(a part that does not authenticate, a missing part, a row count or object hash that differs)
is a *verdict* (``ok=False``). Not being able to verify at all (destination unreachable,
scratch database cannot be created, wrong key, pg_restore too old) raises
:class:`VerificationError` instead: that says nothing about the set, and no verdict is recorded.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from backup_pipeline.archive.errors import ArchiveError, ArchiveKeyError
from backup_pipeline.archive.inventory import read_inventory
from backup_pipeline.archive.part_index import index_part_name, read_index
from backup_pipeline.destinations.base import Destination, DestinationError
from backup_pipeline.services import restore as rs
from backup_pipeline.services.backup_parts import (
    PART_DATABASE,
    PART_MANIFEST,
    PROP_PART_NAME,
    bucket_part_name,
    set_properties,
)
from backup_pipeline.services.errors import first_line
from backup_pipeline.services.table_rows import row_count_problems, row_counts, user_tables

SCRATCH_PREFIX = "bp_verify_"
READ_CHUNK = 1 << 20
DEFAULT_SAMPLE_SHARE = 0.05


class VerificationError(Exception):
    """Verification could not run; nothing is known about the set (no verdict is recorded)."""


@dataclass(frozen=True)
class VerificationOptions:
    sample_share: float = DEFAULT_SAMPLE_SHARE  # share of each bucket's objects restored and hashed
    seed: int | None = None  # None: a fresh seed per run (recorded in the report to reproduce it)

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_share <= 1.0:
            raise ValueError(f"sample_share: must be between 0 and 1, got {self.sample_share}")


@dataclass(frozen=True)
class ScratchServer:
    """The PostgreSQL server scratch databases are created on, and the pg_restore to use."""

    target: rs.PgTarget  # dbname: the application database (never written)
    pg_restore: Path
    pg_restore_version: str


@dataclass(frozen=True)
class CheckOutcome:
    name: str  # "manifest", "part:<part name>", "database:tables", "objects:<bucket>"
    ok: bool
    detail: str


@dataclass
class VerificationReport:
    backup_id: str
    seed: int
    sample_share: float
    scratch_database: str = ""
    checks: list[CheckOutcome] = field(default_factory=list)
    tables_checked: int = 0
    rows_checked: int = 0
    objects_sampled: int = 0
    objects_in_set: int = 0
    bytes_read: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[CheckOutcome]:
        return [c for c in self.checks if not c.ok]

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(CheckOutcome(name, ok, detail))

    def summary(self) -> str:
        if self.ok:
            parts = sum(1 for c in self.checks if c.name.startswith("part:"))
            return (
                f"backup {self.backup_id} verified: {parts} parts authenticated, {self.tables_checked} tables / "
                f"{self.rows_checked} rows match the manifest, {self.objects_sampled} of {self.objects_in_set} "
                f"objects restored and hashed (seed {self.seed})"
            )
        return f"backup {self.backup_id} failed verification: " + "; ".join(
            f"{c.name}: {c.detail}" for c in self.failures
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out


# --------------------------------------------------------------------------------------
# Scratch database
# --------------------------------------------------------------------------------------
def scratch_database_name(token: str) -> str:
    """``bp_verify_<token>``: a name the cleanup of a later run can prove is a verification's."""
    return rs.scratch_name(rs.VERIFY, token)


def table_row_counts(target: rs.PgTarget, tables: Sequence[str]) -> dict[str, int | None]:
    """``ONLY`` counts (as recorded at backup time) of the tables labelled ``tables``; None where absent."""
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        return row_counts(conn, tables)


def restored_table_count(target: rs.PgTarget) -> int:
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        return len(user_tables(conn))


# --------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------
def choose_sample(keys: Sequence[str], share: float, rng: random.Random) -> set[str]:
    """``ceil(share × n)`` keys (at least one when share > 0), reproducible from the seed."""
    if share <= 0 or not keys:
        return set()
    count = min(len(keys), max(1, math.ceil(share * len(keys))))
    return set(rng.sample(sorted(keys), count))


# --------------------------------------------------------------------------------------
# The procedure
# --------------------------------------------------------------------------------------
def _drain(blocks: Iterator[bytes]) -> int:
    """Read what a consumer left, so the part's end-to-end SHA-256 check runs."""
    return sum(len(b) for b in blocks)


def read_raw_manifest(
    destination: Destination, keys: rs.RestoreKeys, installation_id: str, backup_id: str
) -> dict[str, Any]:
    """The manifest document as the backup wrote it (``parse_manifest`` normalises away ``table_rows``)."""
    files = {
        f.properties.get(PROP_PART_NAME, ""): f
        for f in destination.list(set_properties(installation_id, backup_id))
    }
    stored = files[PART_MANIFEST]
    plaintext = rs.decrypt_backup(
        rs.download_backup(destination, stored.id, stored.size), keys, backup_id, PART_MANIFEST
    )
    document = bytearray()
    for block in plaintext:
        document += block
        if len(document) > rs.MANIFEST_LIMIT_BYTES:
            raise ValueError(f"manifest larger than {rs.MANIFEST_LIMIT_BYTES} bytes")
    raw = json.loads(bytes(document))
    return raw if isinstance(raw, dict) else {}


def verify_backup_set(
    destination: Destination,
    keys: rs.RestoreKeys,
    backup_id: str,
    *,
    installation_id: str,
    scratch: ScratchServer,
    options: VerificationOptions = VerificationOptions(),
    log: Any = lambda message: None,
) -> VerificationReport:
    """Verify one set end to end (see the module docstring); returns the verdict with details."""
    started = time.monotonic()
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**31)
    report = VerificationReport(backup_id=backup_id, seed=seed, sample_share=options.sample_share)
    try:
        _verify(destination, keys, backup_id, installation_id, scratch, options, report, log)
    except ArchiveKeyError as exc:
        raise VerificationError(f"the org secret cannot open backup {backup_id}: {exc}") from None
    except DestinationError as exc:
        raise VerificationError(
            f"cannot read backup {backup_id} from {destination.description}: {first_line(exc)}"
        ) from None
    except psycopg.OperationalError as exc:
        raise VerificationError(f"scratch database unavailable: {first_line(exc)}") from None
    report.seconds = round(time.monotonic() - started, 2)
    return report


def _verify(
    destination: Destination,
    keys: rs.RestoreKeys,
    backup_id: str,
    installation_id: str,
    scratch: ScratchServer,
    options: VerificationOptions,
    report: VerificationReport,
    log: Any,
) -> None:
    try:
        resolved = rs.resolve_backup(destination, keys, backup_id, installation_id=installation_id)
        raw = read_raw_manifest(destination, keys, installation_id, backup_id)
    except ArchiveKeyError:
        raise
    except (rs.RestoreRefused, ArchiveError, KeyError, ValueError) as exc:
        report.add("manifest", False, first_line(exc))
        return
    report.add("manifest", True, f"authenticated; lists {len(resolved.parts)} parts")
    if PART_DATABASE in resolved.parts:
        log("restoring the database part into a scratch database …")
        _verify_database(destination, keys, resolved, raw, scratch, report)
    rng = random.Random(report.seed)
    for bucket in resolved.buckets:
        log(f"authenticating bucket part {bucket} and hashing a sample …")
        _verify_bucket(destination, keys, resolved, bucket, options.sample_share, rng, report)
        if all(index_part_name(p) in resolved.parts for p in resolved.bucket_parts(bucket)):
            _verify_index(destination, keys, resolved, bucket, report)


def _verify_database(
    destination: Destination,
    keys: rs.RestoreKeys,
    resolved: rs.ResolvedBackup,
    raw: Mapping[str, Any],
    scratch: ScratchServer,
    report: VerificationReport,
) -> None:
    versions = resolved.versions()
    try:
        rs.check_restore_versions(
            scratch.pg_restore_version,
            versions.get("pg_dump"),
            versions.get("pg_server"),
            rs.server_version(scratch.target),
        )
    except rs.RestoreRefused as exc:
        raise VerificationError(f"cannot restore this set's dump here: {exc}") from None
    try:
        rs.check_can_create(scratch.target)
    except rs.RestoreRefused as exc:
        raise VerificationError(f"cannot create a scratch database: {exc}") from None
    rs.cleanup_leftovers(scratch.target)
    token = rs.process_token()
    name = scratch_database_name(token)
    report.scratch_database = name
    part = f"part:{PART_DATABASE}"
    blocks = rs.open_part(destination, keys, resolved, PART_DATABASE)
    try:
        with rs.claim_scratch(scratch.target, name):
            try:
                rs.restore_into_scratch(
                    blocks, scratch.target, name, pg_restore=scratch.pg_restore, ownership=rs.Ownership.NONE
                )
            except rs.PartVerificationError as exc:
                report.add(part, False, str(exc))
                report.add("database:tables", False, "not checked: the database part did not authenticate")
                return
            except rs.ScratchUnavailable as exc:
                raise VerificationError(str(exc)) from None
            except rs.RestoreError as exc:
                restore_problem: str | None = first_line(exc)
                try:  # was the part damaged, or does an authentic dump not restore?
                    _drain(blocks)
                except rs.PartVerificationError as damage:
                    report.add(part, False, str(damage))
                    report.add(
                        "database:tables", False, "not checked: the database part did not authenticate"
                    )
                    return
            else:
                restore_problem = None
                _drain(blocks)
            report.bytes_read += resolved.parts[PART_DATABASE].size
            report.add(part, True, f"{resolved.parts[PART_DATABASE].size} bytes authenticated")
            if restore_problem is not None:
                report.add("database:tables", False, f"pg_restore into {name} failed: {restore_problem}")
                return
            _check_tables(_scratch_target(scratch.target, name), raw, report)
    finally:
        rs.drop_database(scratch.target, name)


def _scratch_target(server: rs.PgTarget, name: str) -> rs.PgTarget:
    return rs.PgTarget(server.host, server.port, server.user, name, server.password)


def _check_tables(target: rs.PgTarget, raw: Mapping[str, Any], report: VerificationReport) -> None:
    expected = raw.get("table_rows")
    restored = restored_table_count(target)
    if not isinstance(expected, dict):
        # Sets made before the backup recorded row counts: the restore itself is the check.
        ok = restored > 0
        report.tables_checked = restored
        report.add(
            "database:tables",
            ok,
            f"{restored} tables restored; the manifest records no row counts to compare"
            if ok
            else "the dump restored no tables",
        )
        return
    actual = table_row_counts(target, sorted(expected))
    problems = row_count_problems({k: int(v) for k, v in expected.items()}, actual)
    report.tables_checked = len(expected)
    report.rows_checked = sum(int(v) for v in expected.values())
    if problems:
        report.add("database:tables", False, "; ".join(problems))
    else:
        report.add(
            "database:tables", True, f"{len(expected)} tables, {report.rows_checked} rows match the manifest"
        )


def _in_range(key: str, shard: Mapping[str, Any]) -> bool:
    start, end = shard.get("start_after"), shard.get("end")
    return (start is None or key > start) and (end is None or key <= end)


def _verify_index(
    destination: Destination,
    keys: rs.RestoreKeys,
    resolved: rs.ResolvedBackup,
    bucket: str,
    report: VerificationReport,
) -> None:
    """The bucket's part index (one per shard of a sharded bucket) authenticates and agrees with
    the manifest's inventory (every object once, same size and SHA-256, in its shard's range):
    a single-object restore would trust it. Format 2: against the inventory part instead."""
    info = resolved.manifest.get("incremental", {}).get(bucket)
    if info is not None:
        _verify_inventory_index(destination, keys, resolved, info, bucket_part_name(bucket), report)
        return
    inventory = resolved.inventory(bucket)
    total = 0
    for shard in resolved.shards(bucket):
        part_name = shard["part_name"]
        name = index_part_name(part_name)
        seen, wrong = 0, []
        try:
            for entry in read_index(rs.open_part(destination, keys, resolved, name), part_name):
                seen += 1
                want = inventory.get(entry.key)
                if (
                    want is None
                    or want.size != entry.size
                    or want.sha256 != entry.sha256
                    or not _in_range(entry.key, shard)
                ):
                    wrong.append(entry.key)
        except (rs.RestoreRefused, ArchiveError, KeyError) as exc:
            report.add(f"part:{name}", False, first_line(exc))
            return
        total += seen
        report.bytes_read += resolved.parts[name].size
        if wrong:
            report.add(
                f"part:{name}",
                False,
                f"{seen} entries; differing from the manifest: {', '.join(sorted(wrong)[:5])}",
            )
            return
        report.add(f"part:{name}", True, f"{resolved.parts[name].size} bytes authenticated, {seen} entries")
    if total != len(inventory):
        report.add(f"index:{bucket}", False, f"{total} index entries for {len(inventory)} objects")


def _verify_inventory_index(
    destination: Destination,
    keys: rs.RestoreKeys,
    resolved: rs.ResolvedBackup,
    info: Mapping[str, Any],
    part_name: str,
    report: VerificationReport,
) -> None:
    """Format 2: the index lists, in order, exactly the inventory lines that place an object in
    this set's own part (both ascend by key), with the same size and SHA-256; neither is held."""
    name = index_part_name(part_name)
    seen, wrong = 0, []
    try:
        own = (
            r
            for r in read_inventory(rs.open_part(destination, keys, resolved, info["inventory_part"]))
            if r.backup_id == resolved.backup_id and r.part == part_name
        )
        index = read_index(rs.open_part(destination, keys, resolved, name), part_name)
        for record, entry in itertools.zip_longest(own, index):
            seen += entry is not None
            if (
                record is None
                or entry is None
                or (record.key, record.size, record.sha256)
                != (
                    entry.key,
                    entry.size,
                    entry.sha256,
                )
            ):
                wrong.append(entry.key if entry is not None else record.key)
    except (rs.RestoreRefused, ArchiveError) as exc:
        report.add(f"part:{name}", False, first_line(exc))
        return
    report.bytes_read += resolved.parts[name].size
    if wrong:
        report.add(
            f"part:{name}",
            False,
            f"{seen} entries; differing from the inventory: {', '.join(sorted(wrong)[:5])}",
        )
        return
    report.add(f"part:{name}", True, f"{resolved.parts[name].size} bytes authenticated, {seen} entries")


def _verify_bucket(
    destination: Destination,
    keys: rs.RestoreKeys,
    resolved: rs.ResolvedBackup,
    bucket: str,
    share: float,
    rng: random.Random,
    report: VerificationReport,
) -> None:
    if bucket in resolved.manifest.get("incremental", {}):
        _verify_inventory_bucket(destination, keys, resolved, bucket, share, rng, report)
        return
    inventory = resolved.inventory(bucket)
    sample = choose_sample(list(inventory), share, rng)
    report.objects_in_set += len(inventory)
    seen: set[str] = set()
    mismatched: list[str] = []
    out_of_range: list[str] = []
    # A sharded bucket (format 3): every shard part, each object in its shard's key range.
    for shard in resolved.shards(bucket):
        part_name = shard["part_name"]
        blocks = rs.open_part(destination, keys, resolved, part_name)
        try:
            for entry in rs.bucket_entries(blocks):
                seen.add(entry.key)
                if not _in_range(entry.key, shard):
                    out_of_range.append(entry.key)
                if entry.key not in sample:
                    while entry.fileobj.read(READ_CHUNK):
                        pass
                    continue
                digest, size = hashlib.sha256(), 0
                while chunk := entry.fileobj.read(READ_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                want = inventory[entry.key]
                if size != want.size or digest.hexdigest() != want.sha256:
                    mismatched.append(entry.key)
            _drain(blocks)
        except rs.PartVerificationError as exc:
            report.add(f"part:{part_name}", False, str(exc))
            report.add(f"objects:{bucket}", False, "not checked: the bucket part did not authenticate")
            return
        except ArchiveError as exc:  # authentic but unreadable tar: a bug at backup time, still a failed set
            report.add(f"part:{part_name}", False, f"authentic bytes but not a readable archive: {exc}")
            return
        report.bytes_read += resolved.parts[part_name].size
        report.add(f"part:{part_name}", True, f"{resolved.parts[part_name].size} bytes authenticated")
    if out_of_range:
        report.add(
            f"shards:{bucket}",
            False,
            f"{len(out_of_range)} objects outside their shard's key range: {', '.join(out_of_range[:5])}",
        )
    report.objects_sampled += len(sample)
    problems = []
    if mismatched:
        problems.append(
            f"{len(mismatched)} sampled objects differ from the manifest: {', '.join(sorted(mismatched)[:5])}"
        )
    missing = sorted(set(inventory) - seen)
    if missing:
        problems.append(
            f"{len(missing)} objects of the manifest are not in the archive: {', '.join(missing[:5])}"
        )
    extra = sorted(seen - set(inventory))
    if extra:
        problems.append(f"{len(extra)} archived objects are not in the manifest: {', '.join(extra[:5])}")
    if problems:
        report.add(f"objects:{bucket}", False, "; ".join(problems))
    else:
        report.add(
            f"objects:{bucket}",
            True,
            f"{len(sample)} of {len(inventory)} objects restored and their SHA-256 matched",
        )


def _verify_inventory_bucket(
    destination: Destination,
    keys: rs.RestoreKeys,
    resolved: rs.ResolvedBackup,
    bucket: str,
    share: float,
    rng: random.Random,
    report: VerificationReport,
) -> None:
    """A format-2 bucket: the inventory and every part it names are authenticated end to end, every
    object the inventory lists must be found in its part, and a random ``share`` of them is hashed.

    The sample is drawn while streaming (each object with probability ``share``), so no key list
    is held in memory.
    """
    info = resolved.manifest["incremental"][bucket]
    source = rs.bucket_source(destination, keys, resolved, bucket)
    report.objects_in_set += source.count
    found = sampled = 0
    mismatched: list[str] = []
    try:
        for entry in source.entries:
            found += 1
            if rng.random() >= share:
                while entry.fileobj.read(READ_CHUNK):
                    pass
                continue
            sampled += 1
            digest, size = hashlib.sha256(), 0
            while chunk := entry.fileobj.read(READ_CHUNK):
                digest.update(chunk)
                size += len(chunk)
            want = source.inventory[entry.key]
            if size != want.size or digest.hexdigest() != want.sha256:
                mismatched.append(entry.key)
    except rs.RestoreRefused as exc:  # a part that does not authenticate, or an object missing from its part
        if isinstance(exc, rs.PartVerificationError):
            # Named as a format-1 set names it, so an operator (and an alert) sees which part is bad.
            report.add(f"part:{exc.part_name}", False, str(exc))
        report.add(f"objects:{bucket}", False, str(exc))
        return
    except ArchiveError as exc:
        report.add(f"objects:{bucket}", False, f"authentic bytes but not a readable archive: {exc}")
        return
    report.objects_sampled += sampled
    names = [info["inventory_part"], *(f"{r['backup_id']}/{r['part_name']}" for r in info["referenced"])]
    report.add(f"parts:{bucket}", True, f"inventory and the parts it names authenticated: {', '.join(names)}")
    problems = []
    if found != source.count:
        problems.append(f"{found} objects found in the parts, the manifest counts {source.count}")
    if mismatched:
        problems.append(
            f"{len(mismatched)} sampled objects differ from the inventory: {', '.join(sorted(mismatched)[:5])}"
        )
    if problems:
        report.add(f"objects:{bucket}", False, "; ".join(problems))
    else:
        report.add(
            f"objects:{bucket}", True, f"{sampled} of {found} objects restored and their SHA-256 matched"
        )
