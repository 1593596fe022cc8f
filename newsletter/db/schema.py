"""What every package's table definitions share: one MetaData (one database, one naming
convention), timezone-aware UTC timestamps, server-side "now", text sorted the same on every
backend, and chunking for IN lists.

The tables themselves live with the package that owns them (docs/data-model.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

# Portable upper bound for bound parameters in one IN (…) query.
CHUNK = 900

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores no offset: naive UTC there)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Server-side "now" (UTC on SQLite, timestamptz on PostgreSQL): bulk inserts can leave the
# timestamps out and save a Python conversion per row.
NOW = sa.func.now()


class ByCodePoint(sa.sql.expression.ColumnElement[str]):
    """Text sorted by code point, as SQLite sorts it: on PostgreSQL ``COLLATE "C"``, whatever the
    database's collation (en_US or ICU would put "a-list" before "B-list" and ignore punctuation
    first), so listings and exports come out in the same order on both back-ends."""

    inherit_cache = True
    _traverse_internals: ClassVar[Any] = [("text", InternalTraversal.dp_clauseelement)]

    def __init__(self, text: sa.ColumnElement[str]) -> None:
        self.text = text
        self.type = text.type


def by_code_point(text: sa.ColumnElement[str]) -> ByCodePoint:
    """`text` for ORDER BY, sorted by code point on every backend (see `ByCodePoint`)."""
    return ByCodePoint(text)


@compiles(ByCodePoint)
def _by_code_point(element: ByCodePoint, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.text, **kw)


@compiles(ByCodePoint, "postgresql")
def _by_code_point_pg(element: ByCodePoint, compiler: SQLCompiler, **kw: Any) -> str:
    return f'{compiler.process(element.text, **kw)} COLLATE "C"'


# GDPR erasure reaches every table that holds a person's data, each owned by its package: an
# owner registers its part here (at import, next to its tables) and `Store.forget` runs them all
# in its transaction — the audience package needs no import of the packages above it.
SubscriberEraser = Callable[[sa.Connection, int], None]
subscriber_erasers: list[SubscriberEraser] = []


def erases_subscriber(fn: SubscriberEraser) -> SubscriberEraser:
    """Register a table owner's part of erasing a subscriber (called with the subscriber id)."""
    subscriber_erasers.append(fn)
    return fn


def utcnow() -> datetime:
    return datetime.now(UTC)


def one_of(column: str, values: Iterable[str]) -> str:
    """The SQL of a CHECK constraint: `column` holds one of `values`."""
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def chunked(items: list[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
