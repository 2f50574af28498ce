"""How the ``backup-pipeline`` command reports a failure: one line and an exit code, never a traceback.

Every command lets the product's own errors propagate; the group in ``cli/__init__.py`` hands
them to :func:`describe_failure`, which words them as one line and picks the exit code
(docs/ARCHITECTURE.md "CLI exit codes"): 1 the operation failed, 2 bad input. An exception
the product does not know is a bug: it is reported as one line too, with the way to see the
traceback (``--debug`` or ``BACKUP_PIPELINE_DEBUG=1``).

Exception classes are matched by module and name, and only when their module is already
imported (an exception can only be an instance of a loaded class): the offline commands
(``decrypt`` on a fresh machine) do not pay for importing Dagster-backed modules.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

#: Set to 1 (or pass ``--debug``) to get Python's traceback instead of the one-line report.
DEBUG_ENV = "BACKUP_PIPELINE_DEBUG"
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

#: Environment variables whose values are secrets: masked in every line the CLI reports.
SECRET_ENVS = (
    "BACKUP_PIPELINE_APP_DATABASE_PASSWORD",
    "BACKUP_PIPELINE_S3_ACCESS_KEY",
    "BACKUP_PIPELINE_S3_SECRET_KEY",
    "BACKUP_PIPELINE_CLIENT_PASSWORD",
    "BACKUP_PIPELINE_PITR_S3_ACCESS_KEY",
    "BACKUP_PIPELINE_PITR_S3_SECRET_KEY",
    "BACKUP_PIPELINE_S3_DESTINATION_ACCESS_KEY",
    "BACKUP_PIPELINE_S3_DESTINATION_SECRET_KEY",
)
#: A named destination's S3 key pair (``destination_settings.SECRET_FIELDS``), whatever its name.
_NAMED_SECRET_ENV = re.compile(r"^BACKUP_PIPELINE_DESTINATION_[A-Z0-9_]+_S3_(ACCESS|SECRET)_KEY$")
# Shorter values are no real keys (test fixtures use "a"); masking them would garble the line.
_MIN_MASKED_LENGTH = 8

#: The product's expected failures: (module, class name, exit code). A bad-input subclass of an
#: archive error is told apart by its ``bad_input`` flag, see describe_failure.
KNOWN_FAILURES: tuple[tuple[str, str, int], ...] = (
    ("backup_pipeline.settings", "SettingsError", EXIT_BAD_INPUT),
    ("backup_pipeline.archive.errors", "ArchiveError", EXIT_FAILED),
    ("backup_pipeline.destinations.base", "DestinationError", EXIT_FAILED),
    ("backup_pipeline.resources.s3", "S3Unavailable", EXIT_FAILED),
    ("backup_pipeline.resources.postgres", "PostgresUnavailable", EXIT_FAILED),
    ("backup_pipeline.resources.postgres", "PgToolsError", EXIT_FAILED),
    ("backup_pipeline.services.data_lease", "DataLockBusy", EXIT_FAILED),
    ("backup_pipeline.services.restore.common", "RestoreError", EXIT_FAILED),
    ("backup_pipeline.services.migration", "MigrationError", EXIT_FAILED),
    ("backup_pipeline.services.verification", "VerificationError", EXIT_FAILED),
    ("backup_pipeline.services.retention", "RetentionError", EXIT_FAILED),
    ("backup_pipeline.services.backup_parts", "BackupError", EXIT_FAILED),
    ("backup_pipeline.client", "ClientError", EXIT_FAILED),
    ("backup_pipeline.alerts", "AlertDeliveryError", EXIT_FAILED),
    ("backup_pipeline.alerts", "AlertConfigError", EXIT_BAD_INPUT),
    ("backup_pipeline.executors", "ExecutorUnavailableError", EXIT_FAILED),
    ("backup_pipeline.services.pitr", "PitrSetupError", EXIT_BAD_INPUT),
    ("backup_pipeline.services.pitr_engine", "PitrEngineError", EXIT_FAILED),
    ("backup_pipeline.services.pitr_keys", "PitrKeyError", EXIT_FAILED),
    ("backup_pipeline.services.pitr_restore", "PitrRestoreFailed", EXIT_FAILED),
    ("backup_pipeline.services.pitr_restore", "PitrRestoreRefused", EXIT_FAILED),
    # psycopg errors outside PostgresUnavailable (a query on a connection that broke).
    ("psycopg", "Error", EXIT_FAILED),
)
# minio and urllib3: an S3 call the service did not wrap; worded like every other S3 failure.
_S3_LIBRARY_ERRORS = (("minio.error", "MinioException"), ("urllib3.exceptions", "HTTPError"))


@dataclass(frozen=True)
class Failure:
    """What the CLI prints (``error: <message>``) and exits with."""

    message: str
    exit_code: int


def _loaded_class(module_name: str, class_name: str) -> type[BaseException] | None:
    module = sys.modules.get(module_name)
    cls = getattr(module, class_name, None) if module is not None else None
    return cls if isinstance(cls, type) and issubclass(cls, BaseException) else None


def one_line(text: str) -> str:
    """Whitespace (newlines, tabs of libpq's hints) collapsed: a report is one line."""
    return " ".join(text.split())


def mask_secrets(text: str, environ: dict[str, str] | None = None) -> str:
    source = os.environ if environ is None else environ
    for name in [*SECRET_ENVS, *(key for key in source if _NAMED_SECRET_ENV.match(key))]:
        value = source.get(name) or ""
        if len(value) >= _MIN_MASKED_LENGTH:
            text = text.replace(value, "***")
    return text


def _message(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


def describe_failure(exc: BaseException) -> Failure:
    """One line and an exit code for ``exc`` (an exception the product does not know is a bug)."""
    settings_error = _loaded_class("backup_pipeline.settings", "SettingsError")
    if settings_error is not None and isinstance(exc, settings_error):
        problems = getattr(exc, "problems", None) or [_message(exc)]
        return _failure("invalid settings: " + "; ".join(problems), EXIT_BAD_INPUT)
    for module_name, class_name, code in KNOWN_FAILURES:
        cls = _loaded_class(module_name, class_name)
        if cls is None or not isinstance(exc, cls):
            continue
        if getattr(exc, "bad_input", False):
            code = EXIT_BAD_INPUT
        text = _message(exc)
        if module_name == "psycopg":
            text = f"PostgreSQL: {text}"
        return _failure(text, code)
    for module_name, class_name in _S3_LIBRARY_ERRORS:
        cls = _loaded_class(module_name, class_name)
        if cls is not None and isinstance(exc, cls):
            from backup_pipeline.services.errors import s3_error_reason

            endpoint = os.environ.get("BACKUP_PIPELINE_S3_ENDPOINT") or "(BACKUP_PIPELINE_S3_ENDPOINT)"
            return _failure(s3_error_reason(exc, endpoint, "a request"), EXIT_FAILED)
    if isinstance(exc, OSError) and exc.filename is not None:
        # A file the operator named or configured (key file, state dir, local folder).
        return _failure(f"{exc.filename}: {exc.strerror or _message(exc)}", EXIT_FAILED)
    return Failure(
        message=mask_secrets(
            one_line(
                f"unexpected {type(exc).__name__}: {_message(exc)} — this is a bug; rerun with --debug "
                f"(or {DEBUG_ENV}=1) to see the traceback, and report it"
            )
        ),
        exit_code=EXIT_FAILED,
    )


def _failure(text: str, code: int) -> Failure:
    return Failure(message=mask_secrets(one_line(text)), exit_code=code)
