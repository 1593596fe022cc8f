"""Opening a database and running transactions on it — the only dialect-specific code.

SQLite by default (WAL, foreign keys, busy timeout, FULL sync, secure_delete); the same code
runs on a PostgreSQL URL.

Concurrency: every write runs in `write_transaction`. On SQLite that is `BEGIN IMMEDIATE`,
which takes the write lock up front, so two writers (processes or threads) queue on the busy
timeout instead of both reading, then one failing with "database is locked" when upgrading its
read lock — and a read-modify-write inside one transaction never loses an update. On
PostgreSQL the reads that precede a write use ``SELECT … FOR UPDATE``. See docs/data-model.md.

Failures of the file itself — not a database, damaged, disk full, I/O error, locked for longer
than the busy timeout — become `DatabaseError` with one line naming the file and what to do, in
one place: the engine's `handle_error` event (`_sqlite_error`), which sees every statement,
BEGIN, COMMIT and connect of every Store, Journal and migration. Constraint violations
(`IntegrityError`) and programming errors pass through unchanged: callers handle those.

The busy timeout is 30 s; a SQLite URL may set another with pysqlite's own parameter,
``sqlite:///subscribers/newsletter.db?timeout=5`` (seconds).
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, ExceptionContext

from newsletter.errors import NewsletterError

SQLITE_BUSY_TIMEOUT_S = 30.0


class DatabaseError(NewsletterError):
    """The database cannot be opened or used (bad URL, missing driver, newer schema …)."""


def open_engine(url: str) -> Engine:
    """An engine for `url`, SQLite connections set up as described above. Does not connect."""
    try:
        sa_url = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise DatabaseError(f"invalid database URL `{url}`: {exc}") from None
    sqlite = sa_url.get_backend_name() == "sqlite"
    busy_timeout = _busy_timeout(sa_url) if sqlite else 0.0
    connect_args: dict[str, Any] = (
        {"check_same_thread": False, "timeout": busy_timeout} if sqlite else {}
    )
    try:
        engine = sa.create_engine(sa_url, connect_args=connect_args)
    except (sa.exc.NoSuchModuleError, ImportError) as exc:
        raise DatabaseError(
            f"cannot use the database URL {sa_url.render_as_string()}: {exc} (for PostgreSQL "
            "install a driver: pip install 'psycopg[binary]', URL postgresql+psycopg://…)"
        ) from None
    if sqlite:
        _setup_sqlite(engine, busy_timeout)
    return engine


def _busy_timeout(sa_url: sa.URL) -> float:
    """Seconds a SQLite connection waits for another's lock: the URL's `timeout`, else 30."""
    value = sa_url.query.get("timeout")
    if value is None:
        return SQLITE_BUSY_TIMEOUT_S
    try:
        seconds = float(value if isinstance(value, str) else value[-1])
    except ValueError:
        seconds = -1.0
    if not math.isfinite(seconds) or seconds < 0:
        raise DatabaseError(f"invalid database URL {sa_url.render_as_string()}: timeout must be "
                            "a number of seconds, e.g. ?timeout=30")
    return seconds


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
    except sqlite3.Error as exc:  # the raw cursor bypasses the engine's handle_error
        error = _sqlite_error(exc, engine.url.database, _busy_timeout(engine.url))
        if error is None:
            raise
        raise error from exc
    finally:
        raw.close()
    return not busy


# --- SQLite: connection set-up and errors ---------------------------------------------------

# Primary result codes (https://sqlite.org/rescode.html); extended codes keep them in the low byte.
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY, _SQLITE_IOERR = 5, 6, 8, 10
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 11, 13, 14, 26
_SQLITE_IOERR_READS = {266, 522}  # SQLITE_IOERR_READ, SQLITE_IOERR_SHORT_READ
_ROLLED_BACK = "nothing was half written (the transaction was rolled back)"


def _sqlite_error(exc: BaseException, database: str | None, timeout: float) -> DatabaseError | None:
    """The `DatabaseError` for a failure of the database file itself, or None for anything
    else (constraint violations, SQL errors: the caller's business)."""
    if not isinstance(exc, sqlite3.Error):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return None
    primary = code & 0xFF
    where = _display(database)
    if primary == _SQLITE_NOTADB:
        return DatabaseError(f"{where}: not a SQLite database ({exc}); restore it from a backup "
                             "or point [database] url at another file")
    if primary == _SQLITE_CORRUPT:
        return DatabaseError(f"{where}: the database file is damaged ({exc}); restore it from a "
                             "backup (`sqlite3 FILE .recover` may save what is left)")
    if primary == _SQLITE_FULL:
        return DatabaseError(f"{where}: the disk is full ({exc}); free space and run the command "
                             f"again; {_ROLLED_BACK}")
    if code in _SQLITE_IOERR_READS:
        return DatabaseError(f"{where}: reading the file failed ({exc}); the disk or the file may "
                             "be damaged: check the disk, or restore the file from a backup")
    if primary == _SQLITE_IOERR:
        # SQLite reports SQLITE_FULL only for ENOSPC; a write over a file-size limit (EFBIG) or
        # a quota (EDQUOT) is an I/O error, so this message names those causes too.
        return DatabaseError(f"{where}: writing the file failed ({exc}); the disk is full, the "
                             "file is over a size limit or quota, or the disk is failing — free "
                             f"space or check the disk and run the command again; {_ROLLED_BACK}")
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return DatabaseError(f"{where}: the database is locked by another process for more than "
                             f"{timeout:g} s ({exc}); wait until the other command (an import, a "
                             "send, a sqlite3 shell) is done and run this one again")
    if primary == _SQLITE_READONLY:
        return DatabaseError(f"{where}: the database cannot be written ({exc}); check the "
                             "permissions of the file, its -wal and -shm files and its directory")
    if primary == _SQLITE_CANTOPEN:
        return DatabaseError(f"{where}: cannot open the database file ({exc}); check that the "
                             "directory exists and can be written")
    return None


def _display(database: str | None) -> str:
    """The database file as the user would type it: relative to the working directory when
    below it."""
    if not database or database == ":memory:":
        return "the in-memory database"
    path = Path(database)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return os.fspath(path)


def _setup_sqlite(engine: Engine, busy_timeout: float) -> None:
    database = engine.url.database

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN, instead of pysqlite's implicit one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {round(busy_timeout * 1000)}")
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

    @sa.event.listens_for(engine, "handle_error")
    def _on_error(context: ExceptionContext) -> None:
        # Also called for errors while connecting (the PRAGMAs above on a file that is no
        # database), so every command meets the same one-line message.
        error = _sqlite_error(context.original_exception, database, busy_timeout)
        if error is not None:
            raise error
