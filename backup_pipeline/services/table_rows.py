"""Tables and their row counts, named the way the manifest's ``table_rows`` names them.

The backup counts rows in pg_dump's snapshot, verification and restore count them again in the
restored database, and the restore's dry run counts them in the target: all through these
functions, so the four agree on which tables exist and how each is named.

A table is a pair of identifiers (``TableRef``), looked up in the catalog by exact name and
queried with ``psycopg.sql.Identifier``: never a string that is split, unquoted or handed to
``to_regclass`` (a schema ``"Weird ""Schema"" ü"`` or a table ``"Table With Spaces"`` is no
special case). ``display`` (``schema.table``, unquoted) is only a label: it is the manifest's key
and what the operator reads, and it is matched against the catalog's own pairs, never parsed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import psycopg
from psycopg import sql

# Ordinary tables of the application: not partitioned parents (their rows live in the
# partitions, each counted by itself), not temporary, not system, not an extension's.
_USER_TABLES = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


@dataclass(frozen=True, order=True)
class TableRef:
    schema: str
    name: str

    @property
    def display(self) -> str:
        """``schema.table`` as the manifest's ``table_rows`` keys it (a label, never parsed back)."""
        return f"{self.schema}.{self.name}"

    def identifier(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)


def user_tables(conn: psycopg.Connection) -> list[TableRef]:
    """Every ordinary table of the database, ordered by schema and name."""
    return [TableRef(str(schema), str(name)) for schema, name in conn.execute(_USER_TABLES).fetchall()]


def count_rows(conn: psycopg.Connection, table: TableRef) -> int:
    """Rows of this table alone (``ONLY``: a parent's inherited rows are its children's)."""
    row = conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(table.identifier())).fetchone()
    return int(row[0]) if row else 0


def tables_by_display(tables: Iterable[TableRef]) -> dict[str, TableRef]:
    """Catalog tables keyed by their label, to find the tables a manifest names."""
    return {table.display: table for table in tables}


def row_counts(conn: psycopg.Connection, wanted: Iterable[str]) -> dict[str, int | None]:
    """Row counts of the tables labelled ``wanted`` (manifest keys); ``None`` where no such table exists."""
    present = tables_by_display(user_tables(conn))
    result: dict[str, int | None] = {}
    for label in wanted:
        table = present.get(label)
        result[label] = None if table is None else count_rows(conn, table)
    return result


def row_count_problems(expected: Mapping[str, int], actual: Mapping[str, int | None]) -> list[str]:
    """What differs between the recorded and the counted rows, one phrase per table."""
    problems = []
    for label in sorted(expected):
        want, got = int(expected[label]), actual.get(label)
        if got is None:
            problems.append(f"{label} missing")
        elif got != want:
            problems.append(f"{label} has {got} rows, the manifest {want}")
    return problems
