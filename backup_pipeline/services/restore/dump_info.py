"""What a custom-format dump says about its database, read from its table of contents only.

``inspect_dump`` peeks at the head of a dump stream: it feeds it to ``pg_restore --create
--schema-only --file=-``, which renders the SQL of every schema object from the table of
contents at the start of the archive and exits without reading the table data. The blocks it
consumed are kept (the TOC's size, bounded by the schema, not the data) and replayed in front
of the rest of the stream, so the caller still reads every byte once, in order.

From that rendering it keeps (small, no data):

* the ``CREATE DATABASE`` options (encoding, locale, locale provider): the restore creates its
  scratch database with them from ``template0``, as ``pg_restore --create`` would;
* the database-level statements (owner, comment, ``ALTER DATABASE … SET``, per-role settings,
  grants), which ``pg_restore`` without ``--create`` never emits;
* the roles the dump refers to: object owners (each entry's ``Owner:``), grantees and grantors
  of privileges, and roles that row-level security policies or user mappings name. A restore
  checks they exist before it touches anything.

Statements are read as pg_dump writes them (one entry per ``-- Name: …; Type: …`` header,
identifiers quoted the SQL way); identifiers are parsed as identifiers, never stripped of quotes.
"""

from __future__ import annotations

import codecs
import re
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backup_pipeline.services.restore.common import Ownership, RestoreError
from backup_pipeline.services.restore.pipes import FedProcess

#: An SQL identifier as pg_dump's ``fmtId`` writes it: bare lower case, or double-quoted with ``""``.
IDENT = r'(?:"(?:[^"]|"")*"|[a-z_][a-z0-9_$]*)'
#: Role lists (policies) are written ``a, b``; ``PUBLIC`` (the keyword) is not a role.
_IDENT_LIST = rf"{IDENT}(?:, {IDENT})*"
#: The head of a dump is replayed from memory; a table of contents this large is not a schema.
PEEK_LIMIT_BYTES = 256 * 1024 * 1024

_HEADER = re.compile(
    r"^-- Name: (?P<name>.*); Type: (?P<type>[A-Z][A-Z ]*); Schema: (?P<schema>.*); Owner: (?P<owner>.*)$"
)
_CLIENT_ENCODING = re.compile(r"^SET client_encoding = '(?P<encoding>[^']+)';$")
_CREATE_DATABASE = re.compile(rf"^CREATE DATABASE (?P<name>{IDENT}) WITH (?P<options>.*);$", re.S)
_TABLESPACE_OPTION = re.compile(rf" TABLESPACE = {IDENT}")
_OID_OPTION = re.compile(r" OID = \d+")
_GRANT = re.compile(
    rf"^(?:ALTER DEFAULT PRIVILEGES FOR ROLE (?P<for>{IDENT})(?: IN SCHEMA {IDENT})? )?"
    rf"(?:GRANT .+ TO (?P<grantee>{IDENT})(?: WITH (?:GRANT|ADMIN) OPTION)?"
    rf"|REVOKE .+ FROM (?P<revokee>{IDENT})(?: CASCADE)?)"
    rf"(?: GRANTED BY (?P<grantor>{IDENT}))?;$"
)
_SESSION_AUTHORIZATION = re.compile(rf"^SET SESSION AUTHORIZATION (?P<role>{IDENT});$")
_ROLE_IN_DATABASE = re.compile(rf"^ALTER ROLE (?P<role>{IDENT}) IN DATABASE ")
_POLICY = re.compile(
    rf"^CREATE POLICY {IDENT} ON {IDENT}\.{IDENT}(?: AS \w+)?(?: FOR \w+)? TO (?P<roles>{_IDENT_LIST})(?: |;|$)"
)
_USER_MAPPING = re.compile(rf"^CREATE USER MAPPING FOR (?P<role>{IDENT}) SERVER ")
#: Entry types whose statements belong to the database itself (``--create`` only).
_DATABASE_TYPES = {"DATABASE", "DATABASE PROPERTIES"}
_DATABASE_NAMED_TYPES = {"COMMENT", "ACL", "SECURITY LABEL"}
#: Statements of those entries that carry roles, dropped under ``ownership: none``.
_ROLE_STATEMENT = re.compile(
    r"^(?:GRANT |REVOKE |ALTER ROLE |ALTER DATABASE \S.* OWNER TO |SET SESSION |RESET SESSION )", re.S
)
# PostgreSQL encoding names that Python spells differently (the rest are found by codecs.lookup).
_PY_ENCODINGS = {"UTF8": "utf-8", "SQL_ASCII": "latin-1", "LATIN1": "latin-1", "WIN1252": "cp1252"}
_NOT_ROLES = {"PUBLIC", "-", ""}


def unquote_ident(text: str) -> str:
    """The name an identifier written by pg_dump stands for."""
    if text.startswith('"'):
        return text[1:-1].replace('""', '"')
    return text


def quote_ident(name: str) -> str:
    """Always quoted: valid for any name, whatever pg_dump would have written."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class DatabaseFacts:
    """The database-level part of a dump (or of ``pg_dump --create`` of a live database)."""

    name: str = ""  # the database the statements name
    name_as_written: str = ""  # the identifier as pg_dump wrote it in those statements
    create_options: str = ""  # the WITH clause of CREATE DATABASE, without TABLESPACE / OID
    statements: tuple[str, ...] = ()  # owner, comment, settings, grants: in pg_dump's order
    owners: frozenset[str] = frozenset()
    acl_roles: frozenset[str] = frozenset()  # grantees, grantors, per-role settings
    policy_roles: frozenset[str] = frozenset()  # needed whatever the ownership option

    def roles_needed(self, ownership: Ownership) -> frozenset[str]:
        if ownership is Ownership.NONE:
            return self.policy_roles
        return self.owners | self.acl_roles | self.policy_roles

    def statements_for(self, database: str, ownership: Ownership) -> list[str]:
        """The database-level statements retargeted at ``database`` (``none``: without roles)."""
        out = []
        for statement in self.statements:
            if ownership is Ownership.NONE and _ROLE_STATEMENT.match(statement):
                continue
            out.append(_retarget(statement, self.name_as_written, quote_ident(database)))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "name_as_written": self.name_as_written,
            "create_options": self.create_options,
            "statements": list(self.statements),
            "owners": sorted(self.owners),
            "acl_roles": sorted(self.acl_roles),
            "policy_roles": sorted(self.policy_roles),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DatabaseFacts:
        return cls(
            name=str(raw.get("name", "")),
            name_as_written=str(raw.get("name_as_written", "")),
            create_options=str(raw.get("create_options", "")),
            statements=tuple(str(s) for s in raw.get("statements", ())),
            owners=frozenset(raw.get("owners", ())),
            acl_roles=frozenset(raw.get("acl_roles", ())),
            policy_roles=frozenset(raw.get("policy_roles", ())),
        )


def _retarget(statement: str, old: str, new: str) -> str:
    """Point a database-level statement at another database: its first ``DATABASE <old>``."""
    pattern = re.compile(r"\bDATABASE " + re.escape(old) + r"(?=[ ;])")
    return pattern.sub(lambda _m: "DATABASE " + new, statement, count=1)


def _python_encoding(pg_name: str) -> str:
    name = _PY_ENCODINGS.get(pg_name.upper(), pg_name)
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "utf-8"


@dataclass
class _Parser:
    """Reads pg_dump's SQL rendering line by line, keeping only what ``DatabaseFacts`` holds."""

    encoding: str = "utf-8"
    entry_type: str = ""
    entry_is_database: bool = False
    pending: list[str] = field(default_factory=list)
    quote: str = ""  # the quote character of an open literal or identifier
    statements: list[str] = field(default_factory=list)
    owners: set[str] = field(default_factory=set)
    acl_roles: set[str] = field(default_factory=set)
    policy_roles: set[str] = field(default_factory=set)

    def feed(self, raw: bytes) -> None:
        line = raw.decode(self.encoding, "replace").rstrip("\r\n")
        if self.quote:  # inside a string literal that spans lines
            self._collect(line)
            return
        if self._header(line):
            return
        self._roles(line)
        # psql meta-commands (\connect, \restrict), comments and session settings between entries.
        if line.startswith(("\\", "--", "SET ", "SELECT pg_catalog.set_config(")) or not line.strip():
            return
        if self.entry_is_database:
            self._collect(line)

    def _header(self, line: str) -> bool:
        header = _HEADER.match(line)
        if header:
            self._close_statement()
            self.entry_type = header["type"]
            self.entry_is_database = self.entry_type in _DATABASE_TYPES or (
                self.entry_type in _DATABASE_NAMED_TYPES and header["name"].startswith("DATABASE ")
            )
            owner = header["owner"]
            if owner not in _NOT_ROLES:
                self.owners.add(owner)
            return True
        encoding = _CLIENT_ENCODING.match(line)
        if encoding:
            self.encoding = _python_encoding(encoding["encoding"])
            return True
        return False

    def _roles(self, line: str) -> None:
        grant = _GRANT.match(line)
        if grant:
            for group in ("for", "grantee", "revokee", "grantor"):
                if grant[group]:
                    self._add(self.acl_roles, grant[group])
            return
        for pattern, sink in (
            (_SESSION_AUTHORIZATION, self.acl_roles),
            (_ROLE_IN_DATABASE, self.acl_roles),
            (_USER_MAPPING, self.policy_roles),
        ):
            match = pattern.match(line)
            if match:
                self._add(sink, match["role"])
                return
        policy = _POLICY.match(line)
        if policy:
            for ident in re.findall(IDENT, policy["roles"]):
                self._add(self.policy_roles, ident)

    @staticmethod
    def _add(sink: set[str], ident: str) -> None:
        if ident != "PUBLIC":
            sink.add(unquote_ident(ident))

    def _collect(self, line: str) -> None:
        """Whole statements of a database-level entry; literals and identifiers may span lines."""
        self.pending.append(line)
        for char in line:
            if self.quote:
                if char == self.quote:
                    self.quote = ""  # a doubled quote closes and reopens: same state after both
            elif char in "'\"":
                self.quote = char
        if not self.quote and line.rstrip().endswith(";"):
            self._close_statement()

    def _close_statement(self) -> None:
        if self.pending:
            self.statements.append("\n".join(self.pending))
        self.pending = []
        self.quote = ""

    def facts(self) -> DatabaseFacts:
        self._close_statement()
        name = written = options = ""
        rest: list[str] = []
        for statement in self.statements:
            create = _CREATE_DATABASE.match(statement)
            if create and not written:
                written = create["name"]
                name = unquote_ident(written)
                options = _OID_OPTION.sub("", _TABLESPACE_OPTION.sub("", create["options"])).strip()
            else:
                rest.append(statement)
        return DatabaseFacts(
            name=name,
            name_as_written=written,
            create_options=options,
            statements=tuple(rest),
            owners=frozenset(self.owners),
            acl_roles=frozenset(self.acl_roles),
            policy_roles=frozenset(self.policy_roles),
        )


def parse_rendering(lines: Iterable[bytes]) -> DatabaseFacts:
    """``DatabaseFacts`` from pg_dump's / pg_restore's SQL rendering (with ``--create``)."""
    parser = _Parser()
    for line in lines:
        parser.feed(line)
    return parser.facts()


def inspect_dump(dump_blocks: Iterable[bytes], *, pg_restore: Path) -> tuple[DatabaseFacts, Iterator[bytes]]:
    """The dump's ``DatabaseFacts`` and the whole stream again (head replayed, then the rest).

    Reads only as far as ``pg_restore`` needs for the table of contents. A source failing
    during the peek fails the returned stream at the same point, never silently shortens it.
    """
    fed = FedProcess(
        [str(pg_restore), "--create", "--schema-only", "--file=-"], dump_blocks, keep_limit=PEEK_LIMIT_BYTES
    )
    try:
        facts = parse_rendering(fed.stdout)
    finally:
        code = fed.wait()
    if fed.failure is not None and code != 0:
        raise fed.failure  # the source failed (or was too large) before the table of contents was read
    if code != 0:
        raise RestoreError(
            f"pg_restore could not read the dump's table of contents (exit {code}): {fed.tail.text()}"
        )

    def replay() -> Iterator[bytes]:
        yield from fed.head
        fed.head.clear()
        if fed.failure is not None:
            raise fed.failure
        if not fed.source_exhausted:
            yield from fed.source

    return facts, replay()


def database_facts_of(dbname: str, *, pg_dump: Path, env: Mapping[str, str]) -> DatabaseFacts:
    """``DatabaseFacts`` of a live database: ``pg_dump --create --schema-only`` with every schema
    excluded renders exactly its database-level properties (owner, comment, settings, grants)."""
    proc = subprocess.run(
        [str(pg_dump), "--create", "--schema-only", "--exclude-schema=*", "--no-password"],
        env={**env, "PGDATABASE": dbname},
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise RestoreError(
            f"pg_dump could not read the properties of database {dbname!r}: {detail[-1] if detail else proc.returncode}"
        )
    return parse_rendering(proc.stdout.splitlines())
