"""An import's first phase: read the CSV in chunks into the import's TEMPORARY staging tables,
sort, merge duplicates and plan every row, without taking the database's write lock
(docs/data-model.md, "CSV import"). `importer._Import` adds the writing phases."""

from __future__ import annotations

import contextlib
import marshal
import os
import pickle
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from newsletter.audience.addresses import key_hash
from newsletter.audience.csvfile import (
    CsvFile,
    CsvRow,
    Duplicate,
    ProgressCallback,
    StagedRow,
    merge_duplicate,
)
from newsletter.audience.import_report import (
    FILLABLE,
    SUPPRESSED,
    ImportReport,
    all_new,
    decide,
    fill_details,
)
from newsletter.audience.statuses import STATUSES, editor_target
from newsletter.audience.store import Store
from newsletter.audience.tables import (
    consent_log,
    import_subscribers,
    imports,
    memberships,
    subscribers,
    suppressions,
)
from newsletter.db.schema import CHUNK, chunked, utcnow
from newsletter.errors import NewsletterError

WRITE_BATCH = 5000
# At most this many transactions create the new subscribers of one import (`_write`).
CREATE_TRANSACTIONS = 20
# … but at most this many rows in one of them: what bounds another writer's wait.
MAX_BATCH = 50_000
# An unfinished import not renewed for this long is presumed dead (its process is also presumed
# dead at once when it ran on this host and its pid is gone).
IMPORT_LEASE = timedelta(minutes=15)
# Suppressions written this long before the import started are re-checked when it publishes
# (a writer takes its timestamp before it commits).
SUPPRESSION_SLACK = timedelta(minutes=5)
# Up to this many suppressions are held in memory (a set of hashes) while reading.
_SUPPRESSIONS_IN_MEMORY = 100_000
# A file of more lines is parsed and checked by a helper process while this one stages the rows
# (`read_in_helper`): two cores at work; for fewer the helper's start costs more than it saves.
PARALLEL_LINES = 50_000
# … in chunks of at least this many rows (each a message through the pipe and a transaction).
HELPER_CHUNK = 10_000
# SQLite page cache of the import's connection (KiB): the indexes of a million subscribers.
CACHE_KIB = 64 * 1024
# … and of its staging table: a batch of staged rows, read three times by its transaction.
TEMP_CACHE_KIB = 32 * 1024

# A row as read (`csvfile.StagedRow`; `file_status` only from a file with a `status` column).
_READ_COLUMNS = ("line", "email", "email_key", "name", "attributes", "token_id", "file_status")


def staging_tables(md: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """The import's TEMPORARY tables (per connection: not in the database file, gone with it),
    so reading and planning a large file locks nobody out: `import_rows_read`, the valid rows
    appended in file order (cheap, whatever the order of the file); `import_rows`, the same
    sorted by address (`seq` in that order; the rowid on SQLite), then, duplicates merged, one
    row per person with what the import does to them. New subscribers get ids in `seq` order."""
    def file_columns() -> list[sa.Column[Any]]:
        return [sa.Column("line", sa.Integer, nullable=False),
                sa.Column("email", sa.String(320), nullable=False),
                sa.Column("email_key", sa.String(320), nullable=False), sa.Column("name", sa.String(300)),
                sa.Column("attributes", sa.JSON, nullable=False),
                # A new subscriber's: the one this import creates is the subscriber with this token_id.
                sa.Column("token_id", sa.String(32)), sa.Column("file_status", sa.String(16))]

    read = sa.Table("import_rows_read", md, *file_columns(), prefixes=["TEMPORARY"])
    staged = sa.Table(
        "import_rows", md, sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        *file_columns(),
        # The plan (`import_report.decide`): add | join | change | unchanged | left | refused |
        # suppressed; the status to set; the subscriber; the membership status it was made on;
        # whether a name or attributes are to be filled in. Staged as a new subscriber to add:
        # `_plan_existing` and `_plan_suppressed` plan the others.
        sa.Column("action", sa.String(16), nullable=False, server_default="add"),
        sa.Column("target", sa.String(16)), sa.Column("subscriber_id", sa.Integer),
        sa.Column("seen_status", sa.String(16)),
        sa.Column("fill", sa.Boolean, nullable=False, server_default=sa.false()),
        prefixes=["TEMPORARY"])
    return read, staged


def read_in_helper(csv_file: CsvFile, size: int,
                   on_progress: ProgressCallback | None) -> Iterator[list[StagedRow]]:
    """`csv_file.staged_chunks`, parsed and checked by a helper process (`csvfile.read_helper`)
    while the caller stages the chunks before. They come through a pipe, which holds a few at
    most (the helper waits when it is full: memory stays flat). A helper whose reader is gone
    (this process killed) fails on its next write and ends. Each chunk is a pickled header, then
    the rows `marshal`led (a third of pickle's cost for tuples of strings and numbers)."""
    helper = subprocess.Popen(
        [sys.executable, "-c", "from newsletter.audience.csvfile import read_helper; read_helper()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert helper.stdin is not None and helper.stdout is not None
    try:
        pickle.dump((str(csv_file.path), csv_file.found, size), helper.stdin)
        helper.stdin.close()
        while True:
            try:
                kind, length, problems, records, end = pickle.load(helper.stdout)
                data = helper.stdout.read(length)
                if len(data) < length:
                    raise EOFError
            except EOFError:
                raise NewsletterError(f"{csv_file.file}: the process reading the file ended "
                                      f"unexpectedly (exit status {helper.wait()})") from None
            if kind == "error":
                raise NewsletterError(problems=problems)
            csv_file.problems.extend(problems)
            csv_file.records = records
            if kind == "end":
                break
            if on_progress:
                on_progress("read", end, csv_file.total_lines)
            yield marshal.loads(data)
    finally:
        if helper.poll() is None:
            helper.kill()
        helper.wait()
        helper.stdout.close()
    if on_progress:
        on_progress("read", csv_file.total_lines, csv_file.total_lines)


class Staging:
    """The state of one import run and its read-and-plan phase."""

    def __init__(self, store: Store, csv_file: CsvFile, list_id: int, file_name: str,
                 report: ImportReport, batch: int, on_progress: ProgressCallback | None) -> None:
        self.store, self.csv_file, self.list_id, self.file_name = store, csv_file, list_id, file_name
        self.report, self.batch, self.on_progress = report, batch, on_progress
        self.confirmed, self.dry_run = report.confirmed, report.dry_run
        self.read_rows, self.staged = staging_tables(sa.MetaData())
        self.targets = {status: editor_target(status, report.confirmed) for status in (None, *STATUSES)}
        self.import_id: int | None = None
        self.watchdog: Watchdog | None = None
        self.started = utcnow()
        self.check_suppressions = True
        self.anyone = True
        self.suppression_hashes: set[str] | None = None
        self.create_batch = batch
        self.to_write = 0
        self.tally: dict[str, int] | None = None  # `_write`'s count of the plan, while it stands
        self.conn: Connection


    def _sqlite_settings(self) -> None:
        """SQLite settings of the import's connection (it is closed afterwards).

        `synchronous` NORMAL instead of FULL until the publish: a batch of subscribers on no list
        that a power cut takes back goes together with its record in `import_subscribers` (one
        transaction), and the publish (FULL again) syncs everything before it; not waiting for
        the disk once per batch saves much of the import's time. A page cache of CACHE_KIB
        instead of SQLite's 2 MB keeps the indexes the import inserts into in memory (a fixed
        amount, whatever the size of the file)."""
        if self.conn.dialect.name == "sqlite":
            raw = self.conn.connection.driver_connection
            raw.execute("PRAGMA synchronous = NORMAL")
            raw.execute(f"PRAGMA main.cache_size = {-CACHE_KIB}")
            raw.execute(f"PRAGMA temp.cache_size = {-TEMP_CACHE_KIB}")

    def _load_suppressions(self, conn: Connection) -> None:
        """Suppressions are checked in memory when there are not many, else by query; not at
        all when there are none (those added during the import are found by the publish)."""
        count = conn.execute(sa.select(sa.func.count()).select_from(suppressions)).scalar() or 0
        self.check_suppressions = count > 0
        if 0 < count <= _SUPPRESSIONS_IN_MEMORY:
            self.suppression_hashes = set(conn.execute(sa.select(suppressions.c.email_hash)).scalars())

    @contextmanager
    def transaction(self, write: bool = False) -> Iterator[Connection]:
        """A transaction on the import's connection: `write` takes the write lock up front (as
        `Store.write`); otherwise it reads the database and writes only the staging table, which
        locks nobody out."""
        conn = self.conn
        if conn.dialect.name == "sqlite":
            conn.execution_options(sqlite_begin="IMMEDIATE" if write else "DEFERRED")
        with conn.begin():
            yield conn

    def _progress(self, done: int) -> None:
        if self.on_progress:
            self.on_progress("write", done, self.to_write)

    # 1. read: stage, sort, merge duplicates, plan -----------------------------------------------

    def _read(self) -> None:
        """Stage every valid row (appended: cheap whatever the order of the file), sort them by
        address into `import_rows` (one sort, not a million random inserts), merge duplicates
        and plan."""
        csv_file = self.csv_file
        chunks = (read_in_helper(csv_file, max(self.batch, HELPER_CHUNK), self.on_progress)
                  if csv_file.total_lines > PARALLEL_LINES
                  else csv_file.staged_chunks(self.batch, self.on_progress))
        staged = 0
        for chunk in chunks:
            if chunk:
                self._stage(chunk)
                staged += len(chunk)
        self.report.records = self.csv_file.records
        self._sort()
        self._merge_duplicates()
        planned = self._plan_existing() if self.anyone else 0
        planned += self._plan_suppressed() if self.check_suppressions else 0
        if not planned:  # everyone is new: the plan is counted without a pass over the rows
            self.tally = all_new(staged - len(self.report.duplicates))

    def _stage(self, chunk: list[StagedRow]) -> None:
        """Append a chunk's rows as read."""
        columns = _READ_COLUMNS[:len(chunk[0])]
        with self.transaction() as conn:
            if conn.dialect.name == "postgresql":  # COPY: the server's bulk path
                with conn.connection.driver_connection.cursor() as cursor, cursor.copy(
                        f"COPY {self.read_rows.name} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in chunk:
                        copy.write_row(row)
            else:
                insert = self.read_rows.insert().values({c: sa.bindparam(c) for c in columns})
                _executemany(conn, insert, columns, chunk)

    def _sort(self) -> None:
        """`import_rows` from `import_rows_read`, in the order of (address, line), each row with
        the status it gets as a new subscriber: SQLite numbers the rows in the order they come
        (`seq` is the rowid), PostgreSQL is told the numbers."""
        r, s = self.read_rows, self.staged
        target = sa.case(*((r.c.file_status == status, self.targets[status]) for status in STATUSES),
                         else_=self.targets[None])
        columns = [*(r.c[name] for name in _READ_COLUMNS), target]
        names = [*_READ_COLUMNS, "target"]
        with self.transaction() as conn:
            if conn.dialect.name == "postgresql":
                seq = sa.func.row_number().over(order_by=(r.c.email_key, r.c.line))
                conn.execute(s.insert().from_select(["seq", *names], sa.select(seq, *columns)))
                conn.exec_driver_sql(f"ANALYZE {s.name}")  # temporary tables get no autovacuum
            else:
                conn.execute(s.insert().from_select(
                    names, sa.select(*columns).order_by(r.c.email_key, r.c.line)))

    def _merge_duplicates(self) -> None:
        """One row per person: later rows of an address fill in what its first row lacks
        (`merge_duplicate`) and go; each is reported as a duplicate of the first. Sorted by
        address, a person's rows are neighbours: the first has the lowest line."""
        s, a = self.staged, self.staged.alias("before")
        with self.transaction() as conn:
            later = conn.execute(sa.select(s.c.seq).select_from(a.join(s, s.c.seq == a.c.seq + 1))
                                 .where(s.c.email_key == a.c.email_key).order_by(s.c.seq)).scalars().all()
        groups: list[list[int]] = []  # [first seq, last seq] of the rows of one address
        for seq in later:
            if groups and groups[-1][1] == seq - 1:
                groups[-1][1] = seq
            else:
                groups.append([seq - 1, seq])
        duplicates: list[Duplicate] = []
        for part in chunked(groups, CHUNK // 2):
            with self.transaction() as conn:
                rows = {row.seq: row for row in conn.execute(
                    sa.select(s.c.seq, s.c.line, s.c.email, s.c.name, s.c.attributes)
                    .where(sa.or_(*(s.c.seq.between(lo, hi) for lo, hi in part))))}
                for lo, hi in part:
                    head = rows[lo]
                    first = CsvRow(head.line, head.email, "", head.name, dict(head.attributes), None)
                    for row in (rows[seq] for seq in range(lo + 1, hi + 1)):
                        duplicates.append(Duplicate(row.line, first.line, row.email))
                        merge_duplicate(first, CsvRow(row.line, row.email, "", row.name,
                                                      dict(row.attributes), None))
                    conn.execute(s.update().where(s.c.seq == lo)
                                 .values(name=first.name, attributes=first.attributes))
                conn.execute(s.delete().where(sa.or_(*(s.c.seq.between(lo + 1, hi) for lo, hi in part))))
        self.report.duplicates.extend(sorted(duplicates, key=lambda d: d.line))

    def _pages(self, query: sa.Select[Any]) -> Iterator[list[Any]]:
        """`query` (ordered by seq; its first column is the seq) a page of `batch` rows at a
        time, each page read in a transaction of its own."""
        after = 0
        while True:
            with self.transaction() as conn:
                page = conn.execute(query.where(self.staged.c.seq > after).limit(self.batch)).all()
            if not page:
                return
            yield page
            after = page[-1][0]

    def _plan_existing(self) -> int:
        """Plan the rows of people who are subscribers already; how many."""
        s, m = self.staged, memberships
        query = (
            sa.select(s.c.seq, s.c.file_status, s.c.name, s.c.attributes, m.c.status,
                      subscribers.c.id, subscribers.c.name.label("current_name"),
                      subscribers.c.attributes.label("current_attributes"))
            .select_from(s.join(subscribers, subscribers.c.email_key == s.c.email_key)
                         .outerjoin(m, sa.and_(m.c.subscriber_id == subscribers.c.id,
                                               m.c.list_id == self.list_id)))
            .order_by(s.c.seq))
        planned = 0
        for page in self._pages(query):
            plans = []
            for row in page:
                action, target = decide(row.file_status, self.confirmed, True, row.status, False)
                fill = action in FILLABLE and fill_details(row.current_name, row.current_attributes,
                                                     row.name, row.attributes) is not None
                plans.append((action, target, row.status, fill, row.id, row.seq))
            with self.transaction() as conn:
                _executemany(conn, _PLAN.compile(dialect=conn.dialect), _PLAN_COLUMNS, plans)
            planned += len(plans)
        return planned

    def _plan_suppressed(self) -> int:
        """Mark the rows whose address is on the suppression list; how many."""
        s, marked = self.staged, 0
        for page in self._pages(sa.select(s.c.seq, s.c.email_key).order_by(s.c.seq)):
            hashes = {key_hash(key): seq for seq, key in page}
            if self.suppression_hashes is not None:
                hits = [seq for digest, seq in hashes.items() if digest in self.suppression_hashes]
            else:
                with self.transaction() as conn:
                    hits = [hashes[digest] for part in chunked(list(hashes))
                            for digest in conn.execute(_SUPPRESSED, {"hashes": part}).scalars()]
            if hits:
                with self.transaction() as conn:
                    conn.execute(s.update().where(s.c.seq.in_(hits)).values(
                        action=SUPPRESSED, target=None, fill=False, subscriber_id=None))
                marked += len(hits)
        return marked

    def _look_up(self, conn: Connection, keys: list[str]) -> tuple[dict[str, Any], dict[int, str], set[str]]:
        """The subscribers with these keys, their membership statuses on the list, and the keys
        on the suppression list (for a few rows planned again)."""
        found: dict[str, Any] = {}
        for part in chunked(keys):
            for person in conn.execute(_SUBSCRIBERS_BY_KEY, {"keys": part}):
                found[person.email_key] = person
        statuses: dict[int, str] = {}
        for part in chunked([person.id for person in found.values()]):
            statuses.update((sid, status) for sid, status in
                            conn.execute(_STATUSES, {"list": self.list_id, "ids": part}))
        hashes = {key_hash(key): key for key in keys}
        suppressed = {hashes[digest] for part in chunked(list(hashes))
                      for digest in conn.execute(_SUPPRESSED, {"hashes": part}).scalars()}
        return found, statuses, suppressed

    # 2. create the new subscribers, 3. publish --------------------------------------------------


def delete_created(store: Store, import_id: int) -> None:
    """Undo what import `import_id` did before it could finish: delete the subscribers it
    created (its `import_subscribers` ranges) that carry nothing but its own publication
    (`unpublishable`), a range per transaction; then the import's record."""
    with store.read() as conn:
        row = conn.execute(sa.select(imports.c.list_id).where(imports.c.id == import_id)).first()
        ranges = conn.execute(sa.select(import_subscribers.c.first_id, import_subscribers.c.last_id)
                              .where(import_subscribers.c.import_id == import_id)).all()
    if row is None:
        return  # finished, or undone by someone else already
    others = import_subscribers.alias("others")
    for first, last in ranges:
        with store.write() as conn:
            _lock(conn)
            conn.execute(subscribers.delete().where(
                subscribers.c.id.between(first, last), only_this_import(subscribers.c.id, row.list_id),
                ~sa.exists().where(others.c.import_id != import_id,
                                   subscribers.c.id.between(others.c.first_id, others.c.last_id))))
            conn.execute(import_subscribers.delete().where(
                import_subscribers.c.import_id == import_id, import_subscribers.c.first_id == first))
    with store.write() as conn:
        conn.execute(imports.delete().where(imports.c.id == import_id))


def only_this_import(subscriber_id: sa.ColumnElement[int], list_id: int) -> sa.ColumnElement[bool]:
    """The subscriber carries nothing but what an import created: at most one consent-log entry,
    from an import onto `list_id`, and no membership of another list. Any later change (an
    unsubscribe, a confirmation, another list) writes a second entry: such a person stays."""
    entries = sa.select(sa.func.count()).select_from(consent_log).where(
        consent_log.c.subscriber_id == subscriber_id).scalar_subquery()
    return sa.and_(
        ~sa.exists().where(memberships.c.subscriber_id == subscriber_id,
                           memberships.c.list_id != list_id),
        ~sa.exists().where(consent_log.c.subscriber_id == subscriber_id,
                           sa.or_(consent_log.c.source != "import",
                                  consent_log.c.list_id.is_distinct_from(list_id))),
        entries <= 1)


def _lock(conn: Connection) -> None:
    """PostgreSQL: what BEGIN IMMEDIATE is on SQLite, for a transaction that checks, then writes
    subscribers and memberships (other writers wait for it; readers do not)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("LOCK TABLE subscribers, memberships IN SHARE ROW EXCLUSIVE MODE"))


def is_dead(row: Any, now: Any) -> bool:
    """An `imports` row whose process is gone: not renewed for IMPORT_LEASE, or run on this host
    by a pid that no longer exists."""
    if row.heartbeat_at < now - IMPORT_LEASE:
        return True
    if row.host != socket.gethostname() or row.pid == os.getpid() or os.name != "posix":
        return False
    try:
        os.kill(row.pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _executemany(conn: Connection, statement: sa.Executable | sa.engine.Compiled,
                 columns: tuple[str, ...], rows: list[tuple[Any, ...]], suffix: str = "") -> int:
    """`statement` (bound parameters named `columns`) for every row, through the driver's
    executemany: SQLAlchemy's per-row parameter handling would cost more than the database
    does. Rows in `columns` order; the number of rows changed."""
    compiled = statement if isinstance(statement, sa.engine.Compiled) else statement.compile(
        dialect=conn.dialect)
    if compiled.positional:
        order = [columns.index(name) for name in compiled.positiontup or ()]
        params: list[Any] = rows if order == list(range(len(columns))) else [
            tuple(row[i] for i in order) for row in rows]
    else:
        params = [dict(zip(columns, row, strict=True)) for row in rows]
    return conn.exec_driver_sql(f"{compiled}{suffix}", params).rowcount


_SUBSCRIBERS_BY_KEY = sa.select(
    subscribers.c.id, subscribers.c.email_key, subscribers.c.name, subscribers.c.attributes,
    subscribers.c.token_id,
).where(subscribers.c.email_key.in_(sa.bindparam("keys", expanding=True)))
_STATUSES = sa.select(memberships.c.subscriber_id, memberships.c.status).where(
    memberships.c.list_id == sa.bindparam("list"),
    memberships.c.subscriber_id.in_(sa.bindparam("ids", expanding=True)))
_SUPPRESSED = sa.select(suppressions.c.email_hash).where(
    suppressions.c.email_hash.in_(sa.bindparam("hashes", expanding=True)))
_STAGED = staging_tables(sa.MetaData())[1]
_PLAN_COLUMNS = ("action", "target", "seen_status", "fill", "subscriber_id", "seq")
_PLAN = _STAGED.update().where(_STAGED.c.seq == sa.bindparam("seq")).values(
    action=sa.bindparam("action"), target=sa.bindparam("target"),
    seen_status=sa.bindparam("seen_status"), fill=sa.bindparam("fill"),
    subscriber_id=sa.bindparam("subscriber_id"))


class Watchdog:
    """A helper process that undoes the import (`delete_created`) if this process dies before
    it says "done" — `kill -9` included: the kernel closes the pipe the helper reads. Its own
    session, so a Ctrl-C in the terminal does not stop it; stdout and stderr are the import's."""

    def __init__(self, url: str, import_id: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from newsletter.audience.import_stage import watch; watch()"],
            stdin=subprocess.PIPE, text=True, start_new_session=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{import_id}\n{url}\n")  # not in argv: the URL may hold a password
        self.proc.stdin.flush()

    def finish(self, undo: bool) -> None:
        """The import finished or undid itself (`undo` False: nothing for the helper to do), or
        could not undo itself (True: the helper does it now, in the background)."""
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            if not undo:
                self.proc.stdin.write("done\n")
            self.proc.stdin.close()
        if not undo:
            self.proc.wait()


def watch() -> None:
    """The watchdog process: import id and URL on stdin, then "done" or end-of-file."""
    import_id, url = int(sys.stdin.readline()), sys.stdin.readline().rstrip("\n")
    if sys.stdin.readline().strip() == "done":
        return
    store = Store.open(url)
    try:
        delete_created(store, import_id)
    finally:
        store.close()
