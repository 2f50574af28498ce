"""The key layout of migrated objects and the Content-Type they are written with."""

from __future__ import annotations

import unicodedata

from backup_pipeline.services.migration.model import (
    DEFAULT_KEY_PREFIX,
    MAX_KEY_NAME_BYTES,
)


def safe_object_name(filename: str | None) -> str:
    """A file name usable as the last segment of an S3 key.

    Unicode is kept (NFC), path separators and control characters become ``_`` (a name with
    ``/`` must not create pseudo-folders), ``.``/``..`` are replaced, and the name is cut to
    200 UTF-8 bytes keeping its extension.
    """
    name = unicodedata.normalize("NFC", filename or "").strip()
    name = "".join("_" if ch in "/\\" or unicodedata.category(ch) in ("Cc", "Cf") else ch for ch in name)
    if name in ("", ".", ".."):
        name = "file"
    if len(name.encode("utf-8")) > MAX_KEY_NAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        if not (dot and stem and len(ext.encode("utf-8")) <= 16):
            stem, ext = name, ""
        suffix = f".{ext}" if ext else ""
        room = MAX_KEY_NAME_BYTES - len(suffix.encode("utf-8"))
        name = stem.encode("utf-8")[:room].decode("utf-8", errors="ignore") + suffix
    return name


def object_key_for(asset_id: str, filename: str | None, prefix: str = DEFAULT_KEY_PREFIX) -> str:
    """``<prefix><asset id>/<safe file name>``: unique per asset, stable across runs."""
    return f"{prefix}{safe_object_name(asset_id)}/{safe_object_name(filename)}"


def choose_content_type(recorded: str | None) -> str:
    """The content type the application recorded, if it is a well-formed ``type/subtype``.

    Drive's own mimeType is not used: it is often guessed from the name, and the app's
    value is what it served until now.
    """
    value = (recorded or "").strip()
    main, slash, sub = value.partition("/")
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$&^_.+-")
    params_ok = all(32 <= ord(c) < 127 for c in value)
    if (
        slash
        and main
        and sub.split(";")[0].strip()
        and set(main) <= allowed
        and params_ok
        and len(value) <= 255
    ):
        return value
    return "application/octet-stream"
