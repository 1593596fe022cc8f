"""Opening a database and running transactions on it — the only dialect-specific code.

SQLite by default (WAL, foreign keys, busy timeout, FULL sync, secure_delete); the same code
runs on a PostgreSQL URL.

Concurrency: every write runs in `write_transaction`. On SQLite that is `BEGIN IMMEDIATE`,
which takes the write lock up front, so two writers (processes or threads) queue on the busy
timeout instead of both reading, then one failing with "database is locked" when upgrading its
read lock — and a read-modify-write inside one transaction never loses an update. On
PostgreSQL the reads that precede a write use ``SELECT … FOR UPDATE``. See docs/data-model.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from newsletter.errors import NewsletterError

SQLITE_BUSY_TIMEOUT_MS = 30_000


class DatabaseError(NewsletterError):
    """The database cannot be opened or used (bad URL, missing driver, newer schema …)."""


def open_engine(url: str) -> Engine:
    """An engine for `url`, SQLite connections set up as described above. Does not connect."""
    try:
        sa_url = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise DatabaseError(f"invalid database URL `{url}`: {exc}") from None
    sqlite = sa_url.get_backend_name() == "sqlite"
    connect_args: dict[str, Any] = (
        {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000} if sqlite else {}
    )
    try:
        engine = sa.create_engine(sa_url, connect_args=connect_args)
    except (sa.exc.NoSuchModuleError, ImportError) as exc:
        raise DatabaseError(
            f"cannot use the database URL {sa_url.render_as_string()}: {exc} (for PostgreSQL "
            "install a driver: pip install 'psycopg[binary]', URL postgresql+psycopg://…)"
        ) from None
    if sqlite:
        _setup_sqlite(engine)
    return engine


def make_sqlite_directory(url: str) -> None:
    """Create the directory a SQLite file URL points into (nothing for other URLs)."""
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() == "sqlite" and sa_url.database and sa_url.database != ":memory:":
        Path(sa_url.database).parent.mkdir(parents=True, exist_ok=True)


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A write transaction: committed on success, rolled back on any exception."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.execution_options(sqlite_begin="IMMEDIATE")
        with conn.begin():
            yield conn


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction (consistent snapshot)."""
    with engine.connect() as conn, conn.begin():
        yield conn


def checkpoint(engine: Engine) -> bool:
    """SQLite: copy the WAL into the database file and empty it, so deleted rows do not linger
    in `-wal` (secure_delete then has zeroed them in the file). True when fully done; False if
    a reader still needed old frames (the next checkpoint finishes it). No-op elsewhere."""
    if engine.dialect.name != "sqlite":
        return True
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        # Outside any transaction (isolation_level None): a checkpoint cannot run inside one.
        busy, _log_frames, _done = cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        cursor.close()
    finally:
        raw.close()
    return not busy


def _setup_sqlite(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN, instead of pysqlite's implicit one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        # FULL: a committed unsubscribe survives even a power cut, not only a process crash.
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        # Erased subscribers (`remove --forget`) must not linger in free pages of the file.
        cursor.execute("PRAGMA secure_delete = ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")
