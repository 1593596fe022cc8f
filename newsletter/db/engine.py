"""Opening a database and running transactions on it — the only dialect-specific code.

SQLite by default (WAL, foreign keys, busy timeout, FULL sync, secure_delete); the same code
runs on a PostgreSQL URL (psycopg 3: `pip install 'newsletter[postgres]'`,
``postgresql+psycopg://USER@HOST/DATABASE``). Other databases are refused.

Concurrency: every write runs in `write_transaction`. On SQLite that is `BEGIN IMMEDIATE`,
which takes the write lock up front, so two writers (processes or threads) queue on the busy
timeout instead of both reading, then one failing with "database is locked" when upgrading its
read lock — and a read-modify-write inside one transaction never loses an update. On
PostgreSQL the reads that precede a write use ``SELECT … FOR UPDATE`` (and the store locks
what it is about to change, `audience/writes.py`). See docs/data-model.md.

Failures of the database itself — on SQLite: not a database, damaged, disk full, I/O error,
locked for longer than the busy timeout; on PostgreSQL: server not reachable, login refused, no
such database, disk full, read-only, no free connection, a deadlock, a lock wait over
`lock_timeout` — become `DatabaseError` with one line naming the database and what to do, in one
place: the engine's `handle_error` event (`_sqlite_error`, `_postgresql_error`), which sees
every statement, BEGIN, COMMIT and connect of every Store, Journal and migration. Constraint
violations (`IntegrityError`) and programming errors pass through unchanged: callers handle those.
No message shows the URL's password (`_shown`).

The busy timeout is 30 s; a SQLite URL may set another with pysqlite's own parameter,
``sqlite:///subscribers/newsletter.db?timeout=5`` (seconds). On PostgreSQL the same 30 s are
the session's `lock_timeout`, unless the URL passes its own server ``options``.
"""

from __future__ import annotations

import math
import os
import re
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


POSTGRES_DRIVER_HINT = ("for PostgreSQL install the driver: pip install 'newsletter[postgres]', "
                        "and use a URL postgresql+psycopg://USER@HOST/DATABASE")


def open_engine(url: str) -> Engine:
    """An engine for `url`, connections set up as described above. Does not connect."""
    try:
        sa_url = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError) as exc:  # ValueError: a port that is no number
        raise DatabaseError(f"invalid database URL `{_mask_password(url)}`: {exc}") from None
    backend = sa_url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise DatabaseError(f"unsupported database URL {_shown(sa_url)}: newsletter runs on SQLite "
                            "(sqlite:///FILE) or PostgreSQL (postgresql+psycopg://USER@HOST/DATABASE)")
    sqlite = backend == "sqlite"
    busy_timeout = _busy_timeout(sa_url) if sqlite else 0.0
    connect_args: dict[str, Any] = {}
    options: dict[str, Any] = {}
    if sqlite:
        connect_args = {"check_same_thread": False, "timeout": busy_timeout}
    else:
        if "options" not in sa_url.query:  # the URL's own server options win
            connect_args["options"] = f"-c lock_timeout={round(SQLITE_BUSY_TIMEOUT_S * 1000)}"
        # serve keeps connections for hours: one the server dropped (restart, idle timeout) is
        # replaced on checkout instead of failing the next request.
        options["pool_pre_ping"] = True
    try:
        engine = sa.create_engine(sa_url, connect_args=connect_args, **options)
    except (sa.exc.NoSuchModuleError, ImportError) as exc:
        hint = POSTGRES_DRIVER_HINT if not sqlite else "the Python installation lacks sqlite3"
        raise DatabaseError(f"cannot use the database URL {_shown(sa_url)}: {exc}; {hint}") from None
    if sqlite:
        _setup_sqlite(engine, busy_timeout)
    else:
        _setup_postgresql(engine)
    return engine


def _shown(sa_url: sa.URL) -> str:
    """The URL as messages show it: the password as ***."""
    return sa_url.render_as_string(hide_password=True)


def _mask_password(url: str) -> str:
    """A URL SQLAlchemy cannot parse, with anything that looks like a password as ***."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


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
        raise DatabaseError(f"invalid database URL {_shown(sa_url)}: timeout must be "
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


# --- PostgreSQL: errors ---------------------------------------------------------------------

# Connection failures carry no SQLSTATE (libpq reports them as text): these phrases of libpq's
# and the server's messages name the cause. (phrase, what it means and what to do)
_PG_CONNECT_FAILURES: tuple[tuple[str, str, str], ...] = (
    # (phrase, what it means, what to do)
    ("connection refused", "cannot connect: nothing listens there",
     "start the PostgreSQL server, or fix the host and port in [database] url"),
    ("failed to resolve host", "cannot connect: the host name is unknown",
     "fix the host in [database] url"),
    ("could not translate host name", "cannot connect: the host name is unknown",
     "fix the host in [database] url"),
    ("no such file or directory", "cannot connect: no server socket there",
     "start the PostgreSQL server, or give the host in [database] url"),
    ("timeout expired", "cannot connect: the server does not answer",
     "check the host and port in [database] url and the network"),
    ("password authentication failed", "the server refused the login",
     "fix the user or password in [database] url (or NEWSLETTER_DATABASE__URL)"),
    ("no password supplied", "the server wants a password",
     "put it in [database] url (postgresql+psycopg://USER:PASSWORD@HOST/DATABASE) or ~/.pgpass"),
    ("no pg_hba.conf entry", "the server does not let this user connect from here",
     "ask its administrator (pg_hba.conf), or fix the user in [database] url"),
    ("too many clients", "no free connection on the server",
     "close other connections or raise max_connections, then run the command again"),
    ("remaining connection slots are reserved", "no free connection on the server",
     "close other connections or raise max_connections, then run the command again"),
    ("too many connections", "no free connection: the limit of the database or user is reached",
     "close other connections or raise the limit, then run the command again"),
    ("the database system is starting up", "the server is starting up",
     "run the command again in a moment"),
    ("the database system is shutting down", "the server is shutting down",
     "run the command again once it is back"),
    ("the database system is in recovery mode", "the server is recovering from a crash",
     "run the command again in a moment"),
)


def _postgresql_error(exc: BaseException, sa_url: sa.URL, *, at_connect: bool = False,
                      disconnect: bool = False) -> DatabaseError | None:
    """The `DatabaseError` for a failure of the server or the database, or None for anything
    else (constraint violations, SQL errors: the caller's business)."""
    sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    text = _pg_message(exc)
    lowered = text.lower()
    where = _shown(sa_url)
    if sqlstate is None and at_connect:
        missing = re.search(r'database "(.+)" does not exist', text)
        if missing:
            return DatabaseError(f"{where}: the database \"{missing[1]}\" does not exist on the "
                                 f"server; create it (createdb {missing[1]}) or fix the database "
                                 "name in [database] url")
        role = re.search(r'role "(.+)" does not exist', text)
        if role:
            return DatabaseError(f"{where}: the server has no user (role) \"{role[1]}\"; create it "
                                 f"(createuser {role[1]}) or fix the user in [database] url")
        for phrase, what, advice in _PG_CONNECT_FAILURES:
            if phrase in lowered:
                return DatabaseError(f"{where}: {what} ({text}); {advice}")
        if type(exc).__name__ == "OperationalError":
            return DatabaseError(f"{where}: cannot connect ({text}); check [database] url and "
                                 "that the server runs")
        return None
    if disconnect or (sqlstate or "").startswith("08") or sqlstate in ("57P01", "57P02", "57P03"):
        return DatabaseError(f"{where}: the connection to the server was lost ({text}); run the "
                             f"command again once the server is reachable; {_ROLLED_BACK}")
    if sqlstate is None:
        return None
    if sqlstate == "53100":
        return DatabaseError(f"{where}: the server's disk is full ({text}); free space on the "
                             f"database server and run the command again; {_ROLLED_BACK}")
    if sqlstate == "25006":
        return DatabaseError(f"{where}: the database is read-only ({text}); point [database] url "
                             "at the primary server (not a standby), or turn off "
                             "default_transaction_read_only")
    if sqlstate == "53300":
        return DatabaseError(f"{where}: the server has no free connection ({text}); close other "
                             "connections or raise max_connections, then run the command again")
    if sqlstate in ("40001", "40P01"):
        # The store locks before it reads (no lost update), so this is two commands taking the
        # same rows in another order — rare; the second one simply runs again.
        return DatabaseError(f"{where}: another command changed the same rows at the same time "
                             f"({text}); run this command again; {_ROLLED_BACK}")
    if sqlstate == "55P03":
        return DatabaseError(f"{where}: the database is locked by another process for longer than "
                             f"lock_timeout ({text}); wait until the other command (an import, a "
                             "send, a psql session) is done and run this one again")
    if sqlstate == "3D000":
        return DatabaseError(f"{where}: the database does not exist ({text}); create it "
                             f"(createdb {sa_url.database}) or fix [database] url")
    if sqlstate.startswith("28"):
        return DatabaseError(f"{where}: the server refused the login ({text}); fix the user or "
                             "password in [database] url")
    if sqlstate == "42501":
        return DatabaseError(f"{where}: the database user may not do this ({text}); connect as "
                             "the owner of the database, or GRANT the user the rights")
    if sqlstate == "57014":
        return DatabaseError(f"{where}: the server cancelled the statement ({text}); a "
                             f"statement_timeout may be too short; {_ROLLED_BACK}")
    return None


def _pg_message(exc: BaseException) -> str:
    """The server's or libpq's message on one line, without libpq's framing: for a failed
    connection, the reason of the last address tried."""
    diag = getattr(exc, "diag", None)  # psycopg: the server's own fields
    primary = getattr(diag, "message_primary", None)
    if primary:
        return str(primary)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reasons = [line for line in lines if not line.startswith(("Is the server running", "HINT:"))]
    text = reasons[-1] if reasons else str(exc).strip()
    text = re.sub(r"^(connection failed|connection is bad):\s*", "", text)
    text = re.sub(r'^connection to server (at|on) .*? failed:\s*', "", text)
    return re.sub(r"^(FATAL|ERROR):\s+", "", text)


def _setup_postgresql(engine: Engine) -> None:
    sa_url = engine.url

    @sa.event.listens_for(engine, "handle_error")
    def _on_error(context: ExceptionContext) -> None:
        if context.is_pre_ping:  # the pool replaces a dead pooled connection itself
            return
        # No Connection yet: the error happened while connecting (libpq gives no SQLSTATE then).
        error = _postgresql_error(context.original_exception, sa_url,
                                  at_connect=context.connection is None,
                                  disconnect=context.is_disconnect)
        if error is not None:
            raise error
