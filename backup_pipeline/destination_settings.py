"""Several destinations per installation: the named destinations and the copy policy, from settings.

``BACKUP_PIPELINE_DESTINATIONS=drive,s3lock,nas`` names them (the first is the primary unless
``BACKUP_PIPELINE_PRIMARY_DESTINATION`` says otherwise); each name's fields are
``BACKUP_PIPELINE_DESTINATION_<NAME>_<FIELD>`` (:data:`FIELDS`), the same rules as the
single-destination settings they stand for (a named S3 destination's ``BUCKET`` is checked like
``BACKUP_PIPELINE_S3_DESTINATION_BUCKET``). Secrets stay out of settings here too: Drive and S3
credentials are file *paths*, or, for S3, the pair of environment variables
``BACKUP_PIPELINE_DESTINATION_<NAME>_S3_ACCESS_KEY`` / ``..._S3_SECRET_KEY`` read when the
destination first connects.

Without ``BACKUP_PIPELINE_DESTINATIONS`` nothing changes: the one destination of
``BACKUP_PIPELINE_DESTINATION`` is the primary, named after its kind.

No Dagster here (the CLI loads settings without it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

if TYPE_CHECKING:
    from backup_pipeline.settings import BackupSettings

ENV_PREFIX = "BACKUP_PIPELINE_"
NAMED_PREFIX = f"{ENV_PREFIX}DESTINATION_"
#: Lower-case letters, digits and '_' (the name is also a step's mapping key and an env-var part).
NAME_RULE = re.compile(r"^[a-z][a-z0-9_]{0,19}$")
#: Names taken by the single-destination settings that share the prefix
#: (BACKUP_PIPELINE_DESTINATION_RETRY_ATTEMPTS, ..._RETRY_MAX_WAIT_SECONDS).
RESERVED_NAMES = frozenset({"retry"})

#: ``BACKUP_PIPELINE_DESTINATION_<NAME>_<FIELD>`` → the ``BackupSettings`` field it stands for.
FIELDS: dict[str, str] = {
    "KIND": "destination",
    "PATH": "local_destination_path",
    "DRIVE_AUTH_MODE": "drive_auth_mode",
    "DRIVE_CREDENTIALS_FILE": "drive_credentials_file",
    "DRIVE_SHARED_DRIVE_ID": "drive_shared_drive_id",
    "DRIVE_SUBJECT": "drive_subject",
    "DRIVE_FOLDER_ID": "drive_folder_id",
    "DRIVE_SCOPE": "drive_scope",
    "DRIVE_API_ROOT": "drive_api_root",
    "DRIVE_TOKEN_URI": "drive_token_uri",
    "DRIVE_DAILY_UPLOAD_CAP_BYTES": "drive_daily_upload_cap_bytes",
    "DRIVE_DAILY_DOWNLOAD_THRESHOLD_BYTES": "drive_daily_download_threshold_bytes",
    "S3_ENDPOINT": "s3_destination_endpoint",
    "S3_BUCKET": "s3_destination_bucket",
    "S3_PREFIX": "s3_destination_prefix",
    "S3_REGION": "s3_destination_region",
    "S3_CREDENTIALS_FILE": "s3_destination_credentials_file",
    "S3_STORAGE_CLASS": "s3_destination_storage_class",
    "S3_PART_SIZE_MIB": "s3_destination_part_size_mib",
    "S3_LOCK_MODE": "s3_destination_lock_mode",
    "S3_LOCK_DAYS": "s3_destination_lock_days",
    "S3_LOCK_MARGIN_DAYS": "s3_destination_lock_margin_days",
}
#: Fields of a named destination that are not single-destination settings.
OWN_FIELDS = ("OFFSITE", "KEEP_LAST")
#: Secret environment variables of a named S3 destination: never settings, only their names travel.
SECRET_FIELDS = ("S3_ACCESS_KEY", "S3_SECRET_KEY")
_SETTING_TO_SUFFIX = {field: suffix for suffix, field in FIELDS.items()}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_name(name: str, suffix: str) -> str:
    """``BACKUP_PIPELINE_DESTINATION_<NAME>_<SUFFIX>``."""
    return f"{NAMED_PREFIX}{name.upper()}_{suffix}"


@dataclass(frozen=True)
class NamedDestination:
    """One destination of the installation and what the 3-2-1 status counts it as."""

    name: str
    #: The single-destination settings this destination stands for (``destination`` = its kind).
    settings: BackupSettings
    primary: bool
    offsite: bool
    keep_last: int
    #: ``<prefix>ACCESS_KEY`` / ``<prefix>SECRET_KEY``: the environment variables with this S3
    #: destination's key pair (no credentials file); None: the single-destination pair.
    s3_key_env_prefix: str | None = None

    @property
    def kind(self) -> str:
        return self.settings.destination.value


def options_from_env(names: list[str], values: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """The raw ``<FIELD>: value`` of each listed name found in ``values`` (the environment)."""
    out: dict[str, dict[str, str]] = {name: {} for name in names}
    # Longest name first: with names "s3" and "s3_lock", BACKUP_PIPELINE_DESTINATION_S3_LOCK_KIND
    # belongs to s3_lock.
    for name in sorted(names, key=len, reverse=True):
        prefix = f"{NAMED_PREFIX}{name.upper()}_"
        for key, value in values.items():
            if key.startswith(prefix) and not any(
                key.startswith(f"{NAMED_PREFIX}{other.upper()}_") and len(other) > len(name)
                for other in names
            ):
                out[name][key.removeprefix(prefix)] = value
    return out


def check_names(names: list[str], primary: str | None) -> list[str]:
    """Problems of ``destinations`` / ``primary_destination`` themselves (each names its variable)."""
    problems = []
    bad = [n for n in names if not NAME_RULE.match(n) or n in RESERVED_NAMES]
    if bad:
        problems.append(
            f"{ENV_PREFIX}DESTINATIONS: names must be 1-20 of a-z, 0-9, '_' starting with a letter "
            f"(and not {', '.join(sorted(RESERVED_NAMES))}), got {', '.join(bad)}"
        )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"{ENV_PREFIX}DESTINATIONS: names must be unique, repeated: {', '.join(duplicates)}")
    if primary is not None and names and primary not in names:
        problems.append(
            f"{ENV_PREFIX}PRIMARY_DESTINATION: must be one of {ENV_PREFIX}DESTINATIONS "
            f"({', '.join(names)}), got {primary!r}"
        )
    if primary is not None and not names:
        problems.append(f"{ENV_PREFIX}PRIMARY_DESTINATION: needs {ENV_PREFIX}DESTINATIONS")
    return problems


def _bool(raw: str, variable: str, problems: list[str]) -> bool | None:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    problems.append(f"{variable}: must be true or false, got {raw!r}")
    return None


def build_named(
    base: BackupSettings, options: Mapping[str, Mapping[str, str]]
) -> tuple[list[NamedDestination], list[str]]:
    """Each named destination validated with the single-destination rules; problems name the
    ``BACKUP_PIPELINE_DESTINATION_<NAME>_<FIELD>`` variable."""
    from backup_pipeline.settings import BackupSettings, DestinationKind

    names = list(base.destinations)
    primary = base.primary_destination or (names[0] if names else None)
    problems: list[str] = []
    out: list[NamedDestination] = []
    # What a named destination inherits: everything but the destination fields and the list itself.
    inherited = base.model_dump(
        exclude={
            "destinations",
            "primary_destination",
            "copy_policy",
            "copy_policy_severity",
            *FIELDS.values(),
        }
    )
    for name in names:
        raw = dict(options.get(name, {}))
        unknown = sorted(set(raw) - set(FIELDS) - set(OWN_FIELDS) - set(SECRET_FIELDS))
        if unknown:
            problems.append(
                f"{', '.join(env_name(name, u) for u in unknown)}: unknown field(s); known: "
                + ", ".join([*FIELDS, *OWN_FIELDS, *SECRET_FIELDS])
            )
        if "KIND" not in raw:
            problems.append(
                f"{env_name(name, 'KIND')}: required for destination {name!r} "
                f"({', '.join(k.value for k in DestinationKind)})"
            )
            continue
        values: dict[str, Any] = dict(inherited)
        for suffix, field in FIELDS.items():
            if suffix in raw:
                values[field] = raw[suffix]
        try:
            sub = BackupSettings.model_validate(values)
        except ValidationError as exc:
            problems.extend(_named_problems(name, exc))
            continue
        offsite: bool | None = sub.destination is not DestinationKind.LOCAL
        if "OFFSITE" in raw:
            offsite = _bool(raw["OFFSITE"], env_name(name, "OFFSITE"), problems)
        keep_last = base.retention_keep_last
        if "KEEP_LAST" in raw:
            try:
                keep_last = int(raw["KEEP_LAST"])
                if not 1 <= keep_last <= 1000:
                    raise ValueError
            except ValueError:
                problems.append(f"{env_name(name, 'KEEP_LAST')}: must be an integer from 1 to 1000")
                continue
        secrets = [s for s in SECRET_FIELDS if s in raw]
        if secrets and sub.destination is not DestinationKind.S3:
            problems.append(f"{env_name(name, secrets[0])}: only for KIND=s3")
        if len(secrets) == 1:
            missing = next(s for s in SECRET_FIELDS if s not in secrets)
            problems.append(f"{env_name(name, missing)}: must be set with {env_name(name, secrets[0])}")
        if offsite is None:
            continue
        out.append(
            NamedDestination(
                name=name,
                settings=sub,
                primary=name == primary,
                offsite=offsite,
                keep_last=keep_last,
                s3_key_env_prefix=env_name(name, "S3_") if len(secrets) == 2 else None,
            )
        )
    return out, problems


def _named_problems(name: str, exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        # A model-level rule names the single-destination variables: say the named ones instead.
        for field, suffix in _SETTING_TO_SUFFIX.items():
            msg = msg.replace(f"{ENV_PREFIX}{field.upper()}", env_name(name, suffix))
        msg = msg.replace("destination=", f"{env_name(name, 'KIND')}=")
        field_suffix = _SETTING_TO_SUFFIX.get(loc)
        problems.append(f"{env_name(name, field_suffix)}: {msg}" if field_suffix else msg)
    return problems


def single(settings: BackupSettings) -> NamedDestination:
    """The one destination of an installation without ``BACKUP_PIPELINE_DESTINATIONS``."""
    return NamedDestination(
        name=settings.destination.value,
        settings=settings,
        primary=True,
        offsite=settings.off_site_destination,
        keep_last=settings.retention_keep_last,
    )


# --- the copy policy (3-2-1) -----------------------------------------------------------------

POLICY_KEYS = ("copies", "kinds", "offsite", "immutable")


@dataclass(frozen=True)
class CopyPolicy:
    """What the ``backup_3_2_1`` check demands of the newest set (0 = not demanded)."""

    copies: int = 1
    kinds: int = 0
    offsite: int = 0
    immutable: int = 0

    def describe(self) -> str:
        return ", ".join(f"{key}={getattr(self, key)}" for key in POLICY_KEYS if getattr(self, key))


def parse_copy_policy(raw: str) -> CopyPolicy:
    """``copies=2,offsite=1,immutable=1`` (also ``kinds``); empty: one copy, nothing else demanded.
    Raises ValueError naming the bad item."""
    values: dict[str, int] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        key, sep, number = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in POLICY_KEYS:
            raise ValueError(f"items are {'/'.join(POLICY_KEYS)}=<n> separated by ',', got {item!r}")
        if key in values:
            raise ValueError(f"{key} given twice")
        try:
            values[key] = int(number)
        except ValueError:
            raise ValueError(f"{key}: must be a whole number, got {number.strip()!r}") from None
        if not 0 <= values[key] <= 20:
            raise ValueError(f"{key}: must be from 0 to 20, got {values[key]}")
    policy = CopyPolicy(**values)
    if policy.copies < max(policy.kinds, policy.offsite, policy.immutable, 1):
        raise ValueError(
            f"copies={policy.copies} cannot hold kinds/offsite/immutable={policy.kinds}/{policy.offsite}/"
            f"{policy.immutable}; copies must be at least 1 and at least each of them"
        )
    return policy
