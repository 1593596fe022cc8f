"""`newsletter db copy URL`: move everything into another database, e.g. SQLite → PostgreSQL.

An export and import would give every subscriber a new `token_id`, so every unsubscribe link in
mails already sent would stop working; a copy keeps every row as it is (ids, token_ids, the
consent log, the send journal). The target must be empty; it gets the same schema version
first, then every table in foreign-key order, streamed in batches (memory stays flat whatever
the size), all in ONE transaction of the target: a failed or interrupted copy leaves it empty.
The source is read in one read transaction, a consistent snapshot (stop `serve` and sends first
all the same: what they write after the snapshot is not copied).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from newsletter.db.engine import (
    DatabaseError,
    make_sqlite_directory,
    open_engine,
    read_transaction,
    write_transaction,
)
from newsletter.db.migrations import SCHEMA_VERSION, current_version, migrate, schema_version
from newsletter.db.schema import metadata

BATCH = 5000


@dataclass(frozen=True)
class CopyResult:
    target: str  # password hidden
    rows: dict[str, int]  # table → rows copied


def _load_tables() -> list[sa.Table]:
    # Every package declares its tables in the one MetaData when imported; migrations imports
    # them all. schema_version is written by `migrate` on the target, not copied.
    import newsletter.db.migrations  # noqa: F401

    return [t for t in metadata.sorted_tables if t.name != schema_version.name]


def copy_database(source_url: str, target_url: str,
                  on_table: Callable[[str, int], None] | None = None) -> CopyResult:
    """Copy every row of `source_url` into the empty database at `target_url`."""
    source = open_engine(source_url)
    make_sqlite_directory(target_url)
    target = open_engine(target_url)
    shown = target.url.render_as_string(hide_password=True)
    rows: dict[str, int] = {}
    try:
        with read_transaction(source) as src:
            if not sa.inspect(src).has_table(schema_version.name) or current_version(src) != SCHEMA_VERSION:
                raise DatabaseError("the source database is not at this program's schema version "
                                    f"{SCHEMA_VERSION}: run `newsletter db upgrade` first")
            with write_transaction(target) as dst:
                _refuse_non_empty(dst, shown)
                migrate(dst)
                for table in _load_tables():
                    rows[table.name] = _copy_table(src, dst, table)
                    if on_table:
                        on_table(table.name, rows[table.name])
                if dst.dialect.name == "postgresql":
                    _advance_sequences(dst)
    finally:
        source.dispose()
        target.dispose()
    return CopyResult(target=shown, rows=rows)


def _refuse_non_empty(conn: sa.Connection, shown: str) -> None:
    inspector = sa.inspect(conn)
    names = set(inspector.get_table_names())
    if schema_version.name in names and current_version(conn) > 0:
        raise DatabaseError(f"{shown} already holds a newsletter database; `db copy` only fills an "
                            "empty one (drop and re-create it, or pick another)")
    ours = {t.name for t in _load_tables()} & names
    if ours:
        raise DatabaseError(f"{shown} already has tables named like ours ({', '.join(sorted(ours))}); "
                            "`db copy` only fills an empty database")


def _copy_table(src: sa.Connection, dst: sa.Connection, table: sa.Table) -> int:
    order = list(table.primary_key.columns) or list(table.columns)
    result = src.execution_options(yield_per=BATCH).execute(sa.select(table).order_by(*order))
    insert = table.insert()
    count = 0
    for batch in result.partitions(BATCH):
        dst.execute(insert, [dict(row._mapping) for row in batch])
        count += len(batch)
    return count


def _advance_sequences(conn: sa.Connection) -> None:
    # Rows came with their ids: the serial sequences must continue after the highest one.
    for table in _load_tables():
        for column in table.primary_key.columns:
            if column.autoincrement is True or (
                    column.autoincrement == "auto" and isinstance(column.type, sa.Integer)
                    and len(table.primary_key.columns) == 1):
                conn.execute(sa.text(
                    "SELECT setval(pg_get_serial_sequence(:table, :column), "
                    f"COALESCE((SELECT MAX({column.name}) FROM {table.name}), 0) + 1, false) "
                    "WHERE pg_get_serial_sequence(:table, :column) IS NOT NULL"),
                    {"table": table.name, "column": column.name})
