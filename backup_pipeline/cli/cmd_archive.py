"""``backup-pipeline decrypt | verify | inspect``: offline tools for backup parts.

They need nothing but this package, the part files and a key (the recovery key file or the
org secret file) — no server, database or network — so a backup can be recovered on a fresh
machine. Exit codes: 0 ok, 1 the part failed (authentication, truncation, integrity), 2 bad
input (missing file, malformed or mistyped key, bad option).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NoReturn

import click

from backup_pipeline.archive.errors import ArchiveError, IntegrityError
from backup_pipeline.archive.keys import OrgKeyring, RecoveryIdentity
from backup_pipeline.archive.manifest import MANIFEST_PART_NAME, Manifest
from backup_pipeline.archive.stream_crypto import decrypt_stream, open_header, read_header
from backup_pipeline.archive.streams import HashingCounter

READ_BLOCK = 1 << 20
# Below this size a progress bar is just noise.
PROGRESS_THRESHOLD = 64 << 20


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def _archive_errors() -> Iterator[None]:
    try:
        yield
    except ArchiveError as exc:
        _fail(str(exc), 2 if exc.bad_input else 1)


def _read_part(path: Path, label: str) -> Iterator[bytes]:
    """Read a part in blocks, with a rich progress bar on an interactive stderr for large files."""
    size = path.stat().st_size
    show = sys.stderr.isatty() and size >= PROGRESS_THRESHOLD
    with path.open("rb") as handle:
        if not show:
            while block := handle.read(READ_BLOCK):
                yield block
            return
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=True,
        ) as progress:
            task = progress.add_task(label, total=size)
            while block := handle.read(READ_BLOCK):
                progress.advance(task, len(block))
                yield block


def _keys(recovery_key_file: Path | None, org_secret_file: Path | None, *, required: bool) -> dict[str, Any]:
    if recovery_key_file and org_secret_file:
        _fail("give either --recovery-key-file or --org-secret-file, not both", 2)
    if required and not (recovery_key_file or org_secret_file):
        _fail("a key is needed: --recovery-key-file FILE or --org-secret-file FILE", 2)
    with _archive_errors():
        if recovery_key_file:
            return {"recovery_identity": RecoveryIdentity.from_file(recovery_key_file)}
        if org_secret_file:
            return {"org_keyring": OrgKeyring.from_file(org_secret_file)}
    return {}


def _key_options(function: Callable[..., Any]) -> Callable[..., Any]:
    file_type = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)
    function = click.option(
        "--org-secret-file", type=file_type, help="The org secret file (`<key id>:<base64>` lines)."
    )(function)
    function = click.option(
        "--recovery-key-file",
        type=file_type,
        help="File holding the recovery secret (BP-RECOVERY-SECRET-1…).",
    )(function)
    return function


_PART = click.argument("part", type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))


@click.command("decrypt")
@_PART
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the plaintext here (default: stdout). Written to OUTPUT.partial and renamed when complete.",
)
@click.option("--backup-id", help="Refuse the part unless it belongs to this backup id.")
@click.option("--part-name", help="Refuse the part unless it is this part (e.g. database, bucket-photos).")
@_key_options
def decrypt_command(
    part: Path,
    output: Path | None,
    backup_id: str | None,
    part_name: str | None,
    recovery_key_file: Path | None,
    org_secret_file: Path | None,
) -> None:
    """Decrypt PART: a bucket part becomes a .tar.gz, the database part a pg_restore archive.

    To stdout, the plaintext of each authenticated chunk is written as it arrives; if the part
    turns out truncated or damaged the command exits 1 and the output must be discarded.
    """
    keys = _keys(recovery_key_file, org_secret_file, required=True)
    if output is None and sys.stdout.isatty():
        _fail("refusing to write binary plaintext to a terminal; use -o FILE or redirect stdout", 2)
    plaintext = decrypt_stream(
        _read_part(part, f"decrypt {part.name}"),
        expected_backup_id=backup_id,
        expected_part_name=part_name,
        **keys,
    )
    if output is None:
        sink: IO[bytes] = sys.stdout.buffer
        with _archive_errors():
            for piece in plaintext:
                sink.write(piece)
            sink.flush()
        return
    partial = output.with_name(output.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle, _archive_errors():
            for piece in plaintext:
                handle.write(piece)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, output)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    click.echo(f"decrypted {part.name} -> {output}", err=True)


@click.command("verify")
@_PART
@click.option(
    "--manifest",
    "manifest_part",
    type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path),
    help="The set's encrypted manifest part: also check PART's sizes and SHA-256 against it.",
)
@_key_options
def verify_command(
    part: Path, manifest_part: Path | None, recovery_key_file: Path | None, org_secret_file: Path | None
) -> None:
    """Authenticate every chunk of PART without writing plaintext; optionally check it against the manifest."""
    keys = _keys(recovery_key_file, org_secret_file, required=True)
    with _archive_errors():
        with part.open("rb") as handle:
            header, _ = read_header([handle.read(64 << 10)])
        manifest = None
        if manifest_part is not None:
            manifest = _load_manifest(manifest_part, header.backup_id, keys)
        ciphertext = HashingCounter(_read_part(part, f"verify {part.name}"), md5=True)
        plaintext = HashingCounter()
        for piece in decrypt_stream(
            ciphertext, expected_backup_id=header.backup_id, expected_part_name=header.part_name, **keys
        ):
            plaintext.update(piece)
        click.echo(
            f"{part.name}: authentic, backup {header.backup_id}, part {header.part_name}, "
            f"{plaintext.size} plaintext bytes, plaintext sha256 {plaintext.sha256_hex}"
        )
        if manifest is not None:
            record = manifest.part(header.part_name)
            checks = {
                "ciphertext size": (ciphertext.size, record.ciphertext_size),
                "ciphertext sha256": (ciphertext.sha256_hex, record.ciphertext_sha256),
                "plaintext size": (plaintext.size, record.plaintext_size),
                "plaintext sha256": (plaintext.sha256_hex, record.plaintext_sha256),
            }
            wrong = [name for name, (found, expected) in checks.items() if found != expected]
            if wrong:
                raise IntegrityError(f"{part.name}: {', '.join(wrong)} differ from the manifest")
            click.echo(f"{part.name}: matches the manifest of backup {manifest.backup_id}")


def _load_manifest(manifest_part: Path, backup_id: str | None, keys: dict[str, Any]) -> Manifest:
    body = b"".join(
        decrypt_stream(
            _read_part(manifest_part, "manifest"),
            expected_backup_id=backup_id,
            expected_part_name=MANIFEST_PART_NAME,
            **keys,
        )
    )
    return Manifest.from_json(body)


@click.command("inspect")
@_PART
@click.option(
    "--json", "as_json", is_flag=True, help="With a key and a manifest part: print the whole manifest JSON."
)
@_key_options
def inspect_command(
    part: Path, as_json: bool, recovery_key_file: Path | None, org_secret_file: Path | None
) -> None:
    """Print PART's header; with a key, authenticate it, and for a manifest part print the manifest."""
    keys = _keys(recovery_key_file, org_secret_file, required=False)
    with _archive_errors():
        with part.open("rb") as handle:
            header, _ = read_header([handle.read(64 << 10)])
        trust = "authenticated" if keys else "NOT authenticated (no key given)"
        if keys:
            open_header(header, **keys)
        click.echo(f"part file:      {part} ({part.stat().st_size} bytes)")
        click.echo(f"header:         {header.size} bytes, {trust}")
        click.echo(f"format version: {header.version}, cipher suite {header.suite} (AES-256-GCM STREAM)")
        click.echo(f"chunk size:     {header.chunk_size} bytes")
        click.echo(f"backup id:      {header.backup_id}")
        click.echo(f"part name:      {header.part_name}")
        for number, stanza in enumerate(header.stanzas):
            click.echo(f"stanza {number}:       {stanza.describe()}")
        if keys and header.part_name == MANIFEST_PART_NAME:
            manifest = _load_manifest(part, header.backup_id, keys)
            if as_json:
                click.echo(manifest.to_json(), nl=False)
                return
            click.echo(f"manifest:       backup {manifest.backup_id} of {manifest.installation}")
            click.echo(f"  started {manifest.started_at}, finished {manifest.finished_at}")
            for name, version in sorted(manifest.versions.items()):
                click.echo(f"  version {name}: {version}")
            for record in manifest.parts:
                click.echo(
                    f"  part {record.name} ({record.kind}): {record.ciphertext_size} bytes encrypted, "
                    f"{record.plaintext_size} plaintext, sha256 {record.ciphertext_sha256}"
                )
            for bucket in manifest.buckets:
                click.echo(
                    f"  bucket {bucket.bucket}: {bucket.object_count} objects, {bucket.object_bytes} bytes"
                )
                for shard in bucket.shards or ():
                    click.echo(
                        f"    shard {shard.part_name}: keys after {shard.start_after!r} up to {shard.end!r}, "
                        f"{shard.object_count} objects, {shard.object_bytes} bytes"
                    )
                if bucket.inventory_part is not None:
                    click.echo(
                        f"    inventory part {bucket.inventory_part} ({bucket.mode}): {bucket.total_objects} "
                        f"objects, {bucket.total_bytes} bytes in the bucket at backup time"
                    )
            if any(b.inventory_part is None for b in manifest.buckets):
                click.echo(f"  inventory in the manifest: {len(manifest.inventory)} objects")
            for anomaly in manifest.anomalies:
                detail = f" ({anomaly.detail})" if anomaly.detail else ""
                click.echo(f"  {anomaly.kind} during backup: {anomaly.bucket}/{anomaly.key}{detail}")


def register(group: click.Group) -> None:
    group.add_command(decrypt_command)
    group.add_command(verify_command)
    group.add_command(inspect_command)
