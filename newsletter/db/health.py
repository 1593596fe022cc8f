"""Is the database healthy? `probe_write`: a committed write, as every unsubscribe needs one.

Reads keep working on a full disk, so a health check that only reads says "ok" while every
one-click unsubscribe answers 500. The probe rewrites the newest `schema_version` row with its
own values in a write transaction: no data changes, but SQLite appends the page to the WAL and
syncs it, and PostgreSQL writes a new row version and its WAL record — disk space, like any
other write. (A test checks that the probe grows the WAL and fails when the disk is full.)

`probe(conn)` is the same statement inside a caller's transaction: `newsletter serve` runs it
in its writer's group commit (`web/writer.py`), the very path its unsubscribes take.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from newsletter.db.engine import DatabaseError, write_transaction
from newsletter.db.migrations import schema_version


def probe(conn: Connection) -> None:
    """The probe's write inside the caller's write transaction (the commit is the caller's)."""
    newest = sa.select(sa.func.max(schema_version.c.version)).scalar_subquery()
    statement = (sa.update(schema_version).where(schema_version.c.version == newest)
                 .values(version=schema_version.c.version))
    if conn.execute(statement).rowcount != 1:
        # An empty table would make the probe write nothing and prove nothing.
        raise DatabaseError("the database has no schema version; it was not opened by newsletter")


def probe_write(engine: Engine) -> None:
    """Commit a write that changes no data; `DatabaseError` when the database does not take it."""
    try:
        with write_transaction(engine) as conn:
            probe(conn)
    except DatabaseError:  # the engine's own account of a failing SQLite file (db/engine.py)
        raise
    except sa.exc.SQLAlchemyError as exc:
        # The driver's message ("database or disk is full"), not SQLAlchemy's with the statement.
        raise DatabaseError(f"the database does not accept writes: {getattr(exc, 'orig', None) or exc}") \
            from exc
