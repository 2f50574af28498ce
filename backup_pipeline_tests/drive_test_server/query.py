"""Drive's request languages: ``fields=`` projections, ``q=`` queries, multipart upload bodies."""

from __future__ import annotations

import json
import re
from typing import Any

from .state import ApiError, FileRecord

# --- fields= projection ------------------------------------------------------------------------


def parse_fields(spec: str) -> dict[str, Any]:
    """``nextPageToken,files(id,name)`` → ``{"nextPageToken": {}, "files": {"id": {}, "name": {}}}``."""
    result: dict[str, Any] = {}
    i = 0
    while i < len(spec):
        match = re.match(r"\s*([A-Za-z_*][\w*]*(?:/[\w*]+)*)\s*", spec[i:])
        if not match:
            raise ApiError(400, "invalidParameter", f"Invalid field selection {spec}")
        name = match.group(1)
        i += match.end()
        sub: dict[str, Any] = {}
        if i < len(spec) and spec[i] == "(":
            depth, j = 1, i + 1
            while j < len(spec) and depth:
                depth += {"(": 1, ")": -1}.get(spec[j], 0)
                j += 1
            sub = parse_fields(spec[i + 1 : j - 1])
            i = j
        parts = name.split("/")
        node = result
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = sub
        while i < len(spec) and spec[i] in " ,":
            i += 1
    return result


def project(value: Any, selection: dict[str, Any]) -> Any:
    if not selection or "*" in selection:
        return value
    if isinstance(value, list):
        return [project(v, selection) for v in value]
    if isinstance(value, dict):
        return {k: project(value[k], sub) for k, sub in selection.items() if k in value}
    return value


# --- q= ------------------------------------------------------------------------------------------

_LITERAL = r"'((?:[^'\\]|\\.)*)'"
_TERMS = [
    ("in_parents", re.compile(rf"{_LITERAL}\s+in\s+parents")),
    ("trashed", re.compile(r"trashed\s*(=|!=)\s*(true|false)")),
    ("name", re.compile(rf"name\s*(=|!=|contains)\s*{_LITERAL}")),
    ("mime", re.compile(rf"mimeType\s*(=|!=)\s*{_LITERAL}")),
    (
        "app_prop",
        re.compile(rf"appProperties\s+has\s*\{{\s*key\s*=\s*{_LITERAL}\s+and\s+value\s*=\s*{_LITERAL}\s*\}}"),
    ),
]


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_query(q: str) -> list[tuple[str, tuple[str, ...]]]:
    terms: list[tuple[str, tuple[str, ...]]] = []
    rest = q.strip()
    while rest:
        for kind, pattern in _TERMS:
            match = pattern.match(rest)
            if match:
                terms.append((kind, match.groups()))
                rest = rest[match.end() :].strip()
                break
        else:
            raise ApiError(400, "invalid", f"Invalid Value: unsupported query near {rest[:40]!r}")
        if rest:
            joiner = re.match(r"and\s+", rest)
            if not joiner:
                raise ApiError(400, "invalid", f"Invalid Value: only 'and' is supported near {rest[:40]!r}")
            rest = rest[joiner.end() :]
    return terms


def query_matches(record: FileRecord, terms: list[tuple[str, tuple[str, ...]]]) -> bool:
    for kind, groups in terms:
        if kind == "in_parents" and _unescape(groups[0]) not in record.parents:
            return False
        if kind == "trashed" and (record.trashed == (groups[1] == "true")) != (groups[0] == "="):
            return False
        if kind == "name":
            value = _unescape(groups[1])
            ok = value in record.name if groups[0] == "contains" else record.name == value
            if ok != (groups[0] != "!="):
                return False
        if kind == "mime" and (record.mime_type == _unescape(groups[1])) != (groups[0] == "="):
            return False
        if kind == "app_prop" and record.app_properties.get(_unescape(groups[0])) != _unescape(groups[1]):
            return False
    return True


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, Any], bytes]:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise ApiError(400, "badContent", "multipart upload without a boundary")
    boundary = b"--" + match.group(1).encode()
    parts = [p for p in body.split(boundary) if p.strip() not in (b"", b"--")]
    if len(parts) < 2:
        raise ApiError(400, "badContent", "multipart upload needs metadata and media parts")

    def payload(part: bytes) -> bytes:
        _head, _, data = part.partition(b"\r\n\r\n")
        return data.removesuffix(b"\r\n")

    try:
        meta = json.loads(payload(parts[0]) or b"{}")
    except ValueError:
        raise ApiError(400, "parseError", "metadata part is not JSON") from None
    return meta, payload(parts[1])
