"""The destination contract: where encrypted backup parts are stored.

Modelled on restic's backend interface (``internal/backend/backend.go``): a small set of
operations with precise semantics, one conformance suite run against every implementation
(``backup_pipeline_tests/test_destinations.py``), and retries kept *outside* the
implementations in one wrapper (:class:`RetryingDestination`).

Semantics every implementation MUST honour
------------------------------------------
``put(name, stream, properties) -> StoredFile``
    Stores the bytes of ``stream`` (an iterable of ``bytes`` of unknown total length, or a
    binary file object) under the readable ``name`` with the string ``properties``. It
    returns only after the destination confirmed that the stored size, MD5 and SHA-256
    equal what was read from ``stream``. A failed put MUST NOT leave a file that ``list``
    or ``stat`` report as complete (temporary names, unfinished upload sessions and the
    like are invisible). Memory stays bounded (at most a couple of upload chunks).
    ``put`` is not retried by :class:`RetryingDestination` because a consumed stream cannot
    be replayed; implementations resume internally where the protocol allows it, and a
    ``RetryableError`` from ``put`` means "run the whole operation again with a new stream".
    Names are unique per backup by convention (they embed the backup id); putting a name
    that already exists is undefined (local: replaced, Drive: a second file).

``list_page(properties=None, page_size=..., page_token=None) -> ListPage``
    One page of the listing below: up to ``page_size`` files (a page MAY hold fewer, even
    none, while more follow: Drive returns partial pages) and ``next_token``, ``None`` on the
    last page. A page token is an opaque cursor that MUST stay valid for a repeated request:
    asking for the same token again returns that page again, so a failed page is retried
    on its own without skipping or repeating items. Pages are in a stable order (by name).

``list(properties=None, page_size=...) -> Iterator[StoredFile]``
    Every complete file, or those whose properties contain *all* given key/value pairs
    (equality): the pages of ``list_page`` followed lazily (``iterate_pages``).

``get(file_id, start=0, end=None) -> Iterator[bytes]``
    The bytes ``[start, end)`` (Python slice semantics, ``end`` exclusive, ``None`` = to the
    end). Raises ``NotFoundError`` eagerly (when called, not on first ``next``) for a
    missing file. Streams in bounded memory. A dropped connection is resumed with a new
    ranged request by :class:`RetryingDestination`.

``delete(file_id)``
    Permanent delete. Idempotent: deleting a file that does not exist is success. A
    destination that keeps files on purpose (S3 object lock, credentials without delete
    permission) raises :class:`LockedError` and deletes nothing of that file: callers treat
    it as a state ("locked until …"), not as a failure.

``stat(file_id) -> StoredFile``
    Metadata of one file; ``NotFoundError`` when it does not exist.

``check() -> CheckReport``
    A connection test that writes a small file, reads it back, compares, and deletes it
    (creating a folder is not enough: Drive service accounts may create folders but not
    store bytes). Never raises for a misconfiguration: the report carries the verdict and
    the fix.

``capacity() -> Capacity | None``
    What is known about free space and the remaining daily upload allowance.

Errors
------
Every failure is a :class:`DestinationError` subclass whose message names the cause and
the fix, and never contains a secret (no tokens, no key material, no credential content).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any, Protocol, TypeVar, runtime_checkable

import tenacity

# Drive appProperties limits, applied to every destination so a backup that works on a
# local folder also works on Drive.
MAX_PROPERTIES = 30
MAX_PROPERTY_BYTES = 124

T = TypeVar("T")

ByteStream = Iterable[bytes] | IO[bytes]


# --- errors ------------------------------------------------------------------------------


class DestinationError(Exception):
    """Base of every destination failure. ``str(err)`` names the cause and the fix."""

    retryable: bool = False
    #: Set by :class:`RetryPolicy` when it stopped retrying this error after that many attempts.
    gave_up_after: int | None = None

    def __str__(self) -> str:
        text = super().__str__()
        return text if self.gave_up_after is None else f"{text} (gave up after {self.gave_up_after} attempts)"


class NotFoundError(DestinationError):
    """The file (or folder) does not exist."""


class TrashedError(NotFoundError):
    """The file exists but is in the trash (Google Drive keeps it 30 days, restorable by a person).

    A ``NotFoundError`` to every caller that only needs "not usable"; the migration tells it
    apart so the operator learns the file can still be restored.
    """


class RetryableError(DestinationError):
    """Transient: network drop, 5xx, 429, rate limit, expired upload session. Retry with backoff."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(DestinationError):
    """Will fail again if retried unchanged: bad request, permissions, integrity."""


class AuthError(PermanentError):
    """Credentials missing, invalid, revoked or not authorised for the scope."""


class QuotaError(PermanentError):
    """No space left (or another storage limit of the destination)."""


class LockedError(PermanentError):
    """The destination refused to delete a file it keeps on purpose.

    ``until`` is the end of the file's retention (S3 object lock) when known; ``None`` when the
    refusal has no end date (a legal hold, or credentials that may not delete at all: the
    least-privilege policy of ``docs/guides/S3-DESTINATION.md``). Retention and delete report
    it as a state, retry after ``until`` on a later run, and never fail a run on it.
    """

    def __init__(self, message: str, *, until: datetime | None = None):
        super().__init__(message)
        self.until = until


class DailyCapError(QuotaError):
    """The destination's daily upload allowance (Drive: 750 GB per user per day) is used up.

    Raised only on evidence: before a backup, when its estimate exceeds what the upload
    ledger says is left; during an upload, when Drive answers with its daily-cap message AND
    the ledger shows the allowance (nearly) used. Otherwise the same answer is throttling.
    """


# Short aliases, as the contract is often described.
NotFound = NotFoundError
Retryable = RetryableError
Permanent = PermanentError
Auth = AuthError
Quota = QuotaError
DailyCap = DailyCapError
Locked = LockedError


# --- values ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredFile:
    """One complete file on a destination."""

    id: str
    name: str
    size: int
    md5: str | None  # lowercase hex
    sha256: str | None  # lowercase hex
    properties: dict[str, str] = field(default_factory=dict)
    created: datetime | None = None
    #: End of a retention period (S3 object lock) during which ``delete`` is refused; may be in
    #: the past. ``None``: the destination keeps no such date (local folder, Drive).
    locked_until: datetime | None = None


@dataclass(frozen=True)
class ListPage:
    """One page of a listing; ``next_token`` is ``None`` on the last page."""

    files: list[StoredFile]
    next_token: str | None = None


@dataclass(frozen=True)
class Capacity:
    """``None`` in a field means unknown/unlimited."""

    free_bytes: int | None
    daily_upload_remaining: int | None
    #: Sizes in decimal units (GB): the destination's limits are quoted that way (Google Drive:
    #: 750 GB a day, storage plans in GB/TB); a disk's free space reads in binary units (GiB), as df -h.
    decimal_units: bool = False
    #: The configured daily upload cap (Drive), for the seeding budget's safety margin.
    daily_upload_cap: int | None = None
    #: When the oldest upload counted against the cap leaves the 24-h window (epoch seconds), and
    #: how many bytes it frees then: "continues after HH:MM UTC when the window frees X".
    daily_window_frees: tuple[float, int] | None = None
    #: Every upload counted against the cap as (when it leaves the 24-h window, bytes), oldest
    #: first: when the window will have room for N bytes (the ``continue_seed`` sensor says so).
    daily_window_schedule: tuple[tuple[float, int], ...] = ()
    #: Downloads per day above which the destination throttles or bills (Drive: about 1 TB per
    #: Cloud project); a restore reading more is warned about, never refused.
    daily_download_threshold: int | None = None

    def size(self, n: int) -> str:
        return decimal_bytes(n) if self.decimal_units else human_bytes(n)


@dataclass
class CheckStep:
    name: str
    ok: bool
    detail: str


@dataclass
class CheckReport:
    """Result of :meth:`Destination.check`: a verdict, the steps, and the fix if it failed."""

    destination: str
    steps: list[CheckStep] = field(default_factory=list)
    fix: str | None = None
    capacity: Capacity | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(step.ok for step in self.steps)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.steps.append(CheckStep(name, ok, detail))

    def failed(self, name: str, exc: DestinationError) -> None:
        """A failed step worded by the error, which names the cause and the fix (so it is also the
        report's ``fix``); the destination's name, already the report's heading, is dropped."""
        detail = str(exc).removeprefix(f"{self.destination}: ")
        self.add(name, False, detail)
        self.fix = detail if not self.fix else f"{self.fix}\n{detail}"

    def fix_to_print(self) -> str | None:
        """The lines of ``fix`` that no step already says: what to print under the steps."""
        lines = [line for line in (self.fix or "").splitlines() if line.strip()]
        new = [line for line in lines if not any(line in step.detail for step in self.steps)]
        return "\n".join(new) or None


# --- the contract ------------------------------------------------------------------------


@runtime_checkable
class Destination(Protocol):
    """Storage for backup parts. See the module docstring for the exact semantics."""

    @property
    def description(self) -> str:
        """Human-readable, secret-free description, e.g. ``local folder /mnt/nas/backups``."""
        ...

    def put(self, name: str, stream: ByteStream, properties: Mapping[str, str]) -> StoredFile: ...

    def list_page(
        self, properties: Mapping[str, str] | None = None, page_size: int = 100, page_token: str | None = None
    ) -> ListPage: ...

    def list(
        self, properties: Mapping[str, str] | None = None, page_size: int = 100
    ) -> Iterator[StoredFile]: ...

    def get(self, file_id: str, start: int = 0, end: int | None = None) -> Iterator[bytes]: ...

    def delete(self, file_id: str) -> None: ...

    def stat(self, file_id: str) -> StoredFile: ...

    def check(self) -> CheckReport: ...

    def capacity(self) -> Capacity | None: ...


# --- helpers shared by implementations ---------------------------------------------------


def validate_properties(properties: Mapping[str, str]) -> dict[str, str]:
    """Reject properties Drive would reject, with the rule named (same limits everywhere)."""
    if len(properties) > MAX_PROPERTIES:
        raise PermanentError(f"too many properties ({len(properties)}); at most {MAX_PROPERTIES} per file")
    out: dict[str, str] = {}
    for key, value in properties.items():
        if not isinstance(key, str) or not isinstance(value, str) or not key:
            raise PermanentError(f"property {key!r}: keys and values must be non-empty strings / strings")
        if len(key.encode()) + len(value.encode()) > MAX_PROPERTY_BYTES:
            raise PermanentError(
                f"property {key!r}: key + value is {len(key.encode()) + len(value.encode())} bytes UTF-8; "
                f"at most {MAX_PROPERTY_BYTES}"
            )
        out[key] = value
    return out


def iter_stream(stream: ByteStream, read_size: int = 1 << 20) -> Iterator[bytes]:
    """Bytes of an iterable or of a binary file object (read in blocks, never by lines)."""
    read = getattr(stream, "read", None)
    if callable(read):
        while True:
            block = read(read_size)
            if not block:
                return
            yield block
    else:
        for block in stream:
            if block:
                yield bytes(block)


class Hashes:
    """Size, MD5 and SHA-256 of everything fed, the values every put is verified against."""

    def __init__(self) -> None:
        self.size = 0
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.sha256 = hashlib.sha256()

    def update(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        self.md5.update(data)
        self.sha256.update(data)


def iterate_pages(
    fetch_page: Callable[[Mapping[str, str] | None, int, str | None], ListPage],
    properties: Mapping[str, str] | None,
    page_size: int,
) -> Iterator[StoredFile]:
    """Every file of a paged listing, following ``next_token`` lazily (no retries here)."""
    token: str | None = None
    while True:
        page = fetch_page(properties, page_size, token)
        yield from page.files
        if not page.next_token:
            return
        token = page.next_token


def ensure_room(destination: Destination, expected_bytes: int, *, cap: Capacity | None = None) -> None:
    """Refuse up front an upload that cannot fit (free space, daily upload cap).

    Called by the backup before it starts, so a full drive or the 750 GB/day cap is found
    at 0 %, not at 97 %. ``cap``: the capacity already read (not asked again).
    """
    cap = cap if cap is not None else destination.capacity()
    if cap is None:
        return
    if cap.free_bytes is not None and expected_bytes > cap.free_bytes:
        raise QuotaError(
            f"{destination.description}: the backup needs about {cap.size(expected_bytes)} but only "
            f"{cap.size(cap.free_bytes)} is free. Free space (retention: keep fewer backups) or add storage."
        )
    if cap.daily_upload_remaining is not None and expected_bytes > cap.daily_upload_remaining:
        raise DailyCapError(
            f"{destination.description}: the backup needs about {decimal_bytes(expected_bytes)} but only "
            f"{decimal_bytes(cap.daily_upload_remaining)} remains of today's upload allowance (Google Drive "
            "allows 750 GB per user per day). Run the backup after the 24-hour window resets."
        )


def refusal_reasons(cap: Capacity | None) -> list[str]:
    """Why any backup would be refused right now: nothing free, or no upload allowance left.

    A backup is refused by :func:`ensure_room` when its estimate exceeds what is left; with
    nothing left, every backup is. Callers add the numbers they know (usage, ledger).
    """
    if cap is None:
        return []
    reasons = []
    if cap.free_bytes is not None and cap.free_bytes <= 0:
        reasons.append("0 bytes of storage are free")
    if cap.daily_upload_remaining is not None and cap.daily_upload_remaining <= 0:
        reasons.append("nothing is left of today's upload allowance")
    return reasons


def decimal_bytes(n: int) -> str:
    """Bytes in decimal units (1 GB = 10^9 bytes), as Google quotes Drive's limits (750 GB a day)."""
    return _scaled_bytes(n, 1000, ("kB", "MB", "GB", "TB"))


def human_bytes(n: int) -> str:
    """Bytes in binary units (1 GiB = 2^30 bytes), as df -h shows a disk."""
    return _scaled_bytes(n, 1024, ("KiB", "MiB", "GiB", "TiB"))


def _scaled_bytes(n: int, step: int, units: tuple[str, ...]) -> str:
    if n < step:
        return f"{n} B"
    size = float(n)
    for unit in units:
        size /= step
        if size < step or unit == units[-1]:
            break
    return f"{size:.1f} {unit}"


# --- retries (a wrapper, not sprinkled inside) -------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Truncated exponential backoff with full jitter, retrying only ``RetryableError``."""

    attempts: int = 8
    initial_wait: float = 1.0
    max_wait: float = 60.0

    def retrying(self) -> tenacity.Retrying:
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(
                lambda exc: isinstance(exc, DestinationError) and exc.retryable
            ),
            wait=_RetryAfterOrJitter(self.initial_wait, self.max_wait),
            stop=tenacity.stop_after_attempt(self.attempts),
            reraise=True,
        )

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        retrying = self.retrying()
        try:
            return retrying(fn, *args, **kwargs)
        except DestinationError as exc:
            attempts = int(retrying.statistics.get("attempt_number", 1))
            if exc.retryable and attempts >= self.attempts and exc.gave_up_after is None:
                exc.gave_up_after = attempts  # the message then says the retries are over
            raise


class _RetryAfterOrJitter(tenacity.wait.wait_base):
    """Honour a server's Retry-After when given (capped), else full-jitter exponential."""

    def __init__(self, initial: float, maximum: float):
        self._jitter = tenacity.wait_random_exponential(multiplier=initial, max=maximum)
        self._max = maximum

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            return min(exc.retry_after, self._max)
        return float(self._jitter(retry_state))


class RetryingDestination:
    """Wraps any destination: retries idempotent calls on ``RetryableError`` with backoff.

    ``get`` is resumed where it broke off (a new ranged request from the last byte
    delivered), so a consumer sees one uninterrupted stream. ``list`` is lazy: each page is
    fetched through ``list_page`` and retried on its own with the same page token (the
    contract keeps a token valid for a repeated request), so a listing interrupted on any
    page continues with that page — no item is yielded twice or skipped, and the items
    already yielded stay valid. ``put`` is passed through (see the module docstring);
    implementations retry their own idempotent protocol steps with the same
    :class:`RetryPolicy`. An error that survives every attempt says so in its message.
    """

    def __init__(self, inner: Destination, policy: RetryPolicy | None = None):
        self.inner = inner
        self.policy = policy or RetryPolicy()

    @property
    def description(self) -> str:
        return self.inner.description

    def put(self, name: str, stream: ByteStream, properties: Mapping[str, str]) -> StoredFile:
        return self.inner.put(name, stream, properties)

    def list_page(
        self, properties: Mapping[str, str] | None = None, page_size: int = 100, page_token: str | None = None
    ) -> ListPage:
        return self.policy.call(self.inner.list_page, properties, page_size, page_token)

    def list(self, properties: Mapping[str, str] | None = None, page_size: int = 100) -> Iterator[StoredFile]:
        # Each page is retried on its own with the same token (tokens stay valid for a repeated
        # request), so a failure on page 5 neither restarts the listing (duplicates) nor drops
        # page 5 (gaps). The first page is fetched now: its errors surface at the call.
        first = self.list_page(properties, page_size, None)
        return self._following(first, properties, page_size)

    def _following(
        self, page: ListPage, properties: Mapping[str, str] | None, page_size: int
    ) -> Iterator[StoredFile]:
        while True:
            yield from page.files
            if not page.next_token:
                return
            page = self.list_page(properties, page_size, page.next_token)

    def get(self, file_id: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        first = self.policy.call(self.inner.get, file_id, start, end)
        return self._resuming_get(first, file_id, start, end)

    def _resuming_get(
        self, stream: Iterator[bytes], file_id: str, start: int, end: int | None
    ) -> Iterator[bytes]:
        position = start
        failures = 0
        while True:
            try:
                for block in stream:
                    position += len(block)
                    failures = 0
                    yield block
                return
            except RetryableError:
                failures += 1
                if failures >= self.policy.attempts:
                    raise
                if end is not None and position >= end:
                    return
                stream = self.policy.call(self.inner.get, file_id, position, end)

    def delete(self, file_id: str) -> None:
        self.policy.call(self.inner.delete, file_id)

    def stat(self, file_id: str) -> StoredFile:
        return self.policy.call(self.inner.stat, file_id)

    def check(self) -> CheckReport:
        return self.inner.check()

    def capacity(self) -> Capacity | None:
        return self.policy.call(self.inner.capacity)
