"""Schema versions of the one database file, and the steps between them.

Append only; never change what a released step does. A step that changes an existing table
must spell out its DDL (op on the old shape) instead of using the current Table objects, and a
step creating a table that a later step alters must create it in its own version's shape (the
packages' `subscribers_table(md, version)` / `journal_tables(md, version)`), so a fresh
database and an upgraded one end up identical. A fresh database runs every step.

This is the one module that sees every package's tables: the schema history is a single
sequence of versions across packages. The list with what each step does: docs/data-model.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from newsletter.audience.tables import (
    consent_log,
    lists,
    memberships_table,
    new_token_id,
    subscribers_table,
    suppressions,
)
from newsletter.db.engine import DatabaseError
from newsletter.db.schema import UtcDateTime, chunked, metadata, utcnow
from newsletter.delivery.tables import journal_tables
from newsletter.feedback.tables import feedback_events

schema_version = sa.Table(
    "schema_version", metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", UtcDateTime, nullable=False),
)


def _v1_core(conn: Connection) -> None:
    # `subscribers` and `memberships` as version 1 created them (migrations 4 and 5 alter them),
    # with the other tables in the same scratch MetaData so their foreign keys find them.
    md = sa.MetaData(naming_convention=metadata.naming_convention)
    tables = [subscribers_table(md, 1), lists.to_metadata(md), memberships_table(md, 1)]
    tables += [t.to_metadata(md) for t in (consent_log, suppressions)]
    for table in tables:
        table.create(conn)


def _v2_send_journal(conn: Connection) -> None:
    # The tables as version 2 created them (later steps ALTER them), in a scratch MetaData that
    # also knows `lists` for the foreign key.
    md = sa.MetaData(naming_convention=metadata.naming_convention)
    lists.to_metadata(md)
    for table in journal_tables(md, 2):
        table.create(conn)


# What versions ≤ 2 wrote in front of `deliveries.smtp_reply` instead of a flag.
_V2_IN_FLIGHT_PREFIX = "[in flight at an interruption; may be duplicated] "


def _add_column(conn: Connection, table: str, column: sa.Column[Any]) -> None:
    """ALTER TABLE … ADD COLUMN, the column spelled by the connection's dialect."""
    sa.Table(table, sa.MetaData(), column)
    spec = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
    conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {spec}"))


def _v3_journal_columns(conn: Connection) -> None:
    _add_column(conn, "deliveries", sa.Column("possibly_duplicated", sa.Boolean, nullable=False,
                                              server_default=sa.false()))
    _add_column(conn, "sends", sa.Column("reason", sa.Text, nullable=True))
    # Move the old prefix into the flag; a reply that was only the prefix becomes NULL.
    old = sa.table("deliveries", sa.column("smtp_reply", sa.Text),
                   sa.column("possibly_duplicated", sa.Boolean))
    conn.execute(old.update().where(
        old.c.smtp_reply.startswith(_V2_IN_FLIGHT_PREFIX, autoescape=True)
    ).values(
        possibly_duplicated=True,
        smtp_reply=sa.func.nullif(
            sa.func.substr(old.c.smtp_reply, len(_V2_IN_FLIGHT_PREFIX) + 1), ""),
    ))


def _v4_token_ids(conn: Connection) -> None:
    _add_column(conn, "subscribers", sa.Column("token_id", sa.String(32), nullable=True))
    _add_column(conn, "subscribers", sa.Column("legacy_tokens", sa.Boolean, nullable=False,
                                               server_default=sa.false()))
    old = sa.table("subscribers", sa.column("id", sa.Integer), sa.column("token_id", sa.String),
                   sa.column("legacy_tokens", sa.Boolean))
    ids = conn.execute(sa.select(old.c.id)).scalars().all()
    for batch in chunked(list(ids), 5000):
        conn.execute(
            old.update().where(old.c.id == sa.bindparam("_id"))
            .values(token_id=sa.bindparam("_token"), legacy_tokens=sa.true()),
            [{"_id": i, "_token": new_token_id()} for i in batch],
        )
    index_table = sa.Table("subscribers", sa.MetaData(), sa.Column("token_id", sa.String(32)))
    sa.Index("ix_subscribers_token_id", index_table.c.token_id, unique=True).create(conn)


def _v5_requested_name(conn: Connection) -> None:
    # Nothing to fill in: before this version a sign-up wrote its name into `subscribers` at once.
    _add_column(conn, "memberships", sa.Column("requested_name", sa.String(300), nullable=True))


def _v6_send_workers(conn: Connection) -> None:
    # The lease of a send (docs/delivery.md): who runs it, renewed by a heartbeat; and which
    # worker claimed each row. Rows claimed before this version have no worker (NULL).
    from newsletter.delivery.tables import send_workers_table

    md = sa.MetaData(naming_convention=metadata.naming_convention)
    lists.to_metadata(md)
    journal_tables(md, 5)  # `sends`, for the foreign key
    send_workers_table(md).create(conn)
    _add_column(conn, "deliveries", sa.Column("worker_id", sa.String(32), nullable=True))


def _v7_imports(conn: Connection) -> None:
    # A running CSV import and the subscribers it created before its last transaction put them
    # on the list (docs/data-model.md, "CSV import"); empty whenever no import runs.
    from newsletter.audience.tables import import_subscribers, imports

    md = sa.MetaData(naming_convention=metadata.naming_convention)
    lists.to_metadata(md)
    for table in (imports, import_subscribers):
        table.to_metadata(md).create(conn)


def _v8_rate_limits(conn: Connection) -> None:
    # The counters of serve's rate limits, shared by its worker processes (docs/web.md,
    # `web/limits.py`): hits per bucket ("signup:<ip>", "mail:<address hash>") and time slot.
    # Spelled out here, not in the shared MetaData: counters, not data.
    md = sa.MetaData(naming_convention=metadata.naming_convention)
    table = sa.Table(
        "rate_limits", md,
        sa.Column("bucket", sa.String(200), primary_key=True),
        sa.Column("slot", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("hits", sa.Integer, nullable=False),
        sa.Column("expires", sa.BigInteger, nullable=False),
    )
    sa.Index("ix_rate_limits_expires", table.c.expires)
    table.create(conn)


def _v9_feedback(conn: Connection) -> None:
    # Bounces and complaints reported after the send (docs/feedback.md): the ledger of events
    # taken in, and the latest report on each delivery's journal row.
    md = sa.MetaData(naming_convention=metadata.naming_convention)
    feedback_events.to_metadata(md).create(conn)
    _add_column(conn, "deliveries", sa.Column("feedback", sa.String(16), nullable=True))
    _add_column(conn, "deliveries", sa.Column("feedback_at", UtcDateTime, nullable=True))


def _v10_member_choices(conn: Connection) -> None:
    # What members choose on the preference page (docs/topics.md): topics, a pause. NULL on
    # existing rows: no choice made (every section), not paused.
    _add_column(conn, "memberships", sa.Column("topics", sa.JSON, nullable=True))
    _add_column(conn, "memberships", sa.Column("paused_until", UtcDateTime, nullable=True))


def _v11_send_segments(conn: Connection) -> None:
    # A send is (issue, list, segment) and may be scheduled (docs/data-model.md, `sends`): three
    # columns, a wider unique key and two more statuses. PostgreSQL alters the constraints in
    # place; SQLite cannot drop one, so its three journal tables are rebuilt.
    from newsletter.delivery.tables import send_workers_table

    md = sa.MetaData(naming_convention=metadata.naming_convention)
    lists.to_metadata(md)
    new_sends, new_deliveries = journal_tables(md, 11)
    if conn.dialect.name == "postgresql":
        for column in ("segment", "segment_where", "scheduled_at", "issue_path"):
            _add_column(conn, "sends", new_sends.c[column]._copy())
        conn.execute(sa.text("ALTER TABLE sends DROP CONSTRAINT uq_sends_issue_list"))
        conn.execute(sa.text("ALTER TABLE sends DROP CONSTRAINT ck_sends_status"))
        for constraint in new_sends.constraints:
            if isinstance(constraint, sa.UniqueConstraint | sa.CheckConstraint):
                conn.execute(sa.schema.AddConstraint(constraint))
        return
    # SQLite. With foreign keys on (always, in our connections, and not switchable inside the
    # transaction) renaming `sends` would rewrite the children's REFERENCES and dropping it would
    # cascade into `deliveries`: so the rows go to plain copies first, the children are dropped
    # before their parent, and all three are created anew and filled from the copies.
    new_workers = send_workers_table(md)
    tables = (new_sends, new_deliveries, new_workers)
    old_columns = {t.name: [c["name"] for c in sa.inspect(conn).get_columns(t.name)] for t in tables}
    for table in tables:
        conn.exec_driver_sql(f"CREATE TABLE {table.name}_v10 AS SELECT * FROM {table.name}")
    for table in reversed(tables):
        conn.exec_driver_sql(f"DROP TABLE {table.name}")
    for table in tables:
        table.create(conn)
        columns = ", ".join(old_columns[table.name])
        conn.exec_driver_sql(
            f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM {table.name}_v10")
        conn.exec_driver_sql(f"DROP TABLE {table.name}_v10")


def _v12_approvals(conn: Connection) -> None:
    # Who approved which exact content of an issue (`newsletter approve`, docs/approval.md).
    from newsletter.delivery.tables import approvals_table

    md = sa.MetaData(naming_convention=metadata.naming_convention)
    approvals_table(md).create(conn)


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "subscribers, lists, memberships, consent log, suppressions", _v1_core),
    (2, "send journal: sends, deliveries", _v2_send_journal),
    (3, "send journal: sends.reason, deliveries.possibly_duplicated", _v3_journal_columns),
    (4, "subscribers.token_id (opaque link handle), subscribers.legacy_tokens", _v4_token_ids),
    (5, "memberships.requested_name (a sign-up's name, applied at confirmation)", _v5_requested_name),
    (6, "send_workers (a send's lease: host, pid, heartbeat), deliveries.worker_id", _v6_send_workers),
    (7, "imports, import_subscribers (a running CSV import and what it created)", _v7_imports),
    (8, "rate_limits (serve's rate-limit counters, shared by its workers)", _v8_rate_limits),
    (9, "feedback_events (bounces and complaints taken in), deliveries.feedback/feedback_at", _v9_feedback),
    (10, "memberships.topics, memberships.paused_until (the member's choices)", _v10_member_choices),
    (11, "sends.segment/segment_where (a send is issue, list, segment), sends.scheduled_at/issue_path, "
         "statuses scheduled and cancelled", _v11_send_segments),
    (12, "approvals (who approved which content of an issue)", _v12_approvals),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def current_version(conn: Connection) -> int:
    """The version the database is at (0: empty)."""
    return int(conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0)


def migrate(conn: Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the schema up to `target` inside the caller's write transaction; the new version."""
    if conn.dialect.name == "postgresql":
        # Two processes opening a fresh database must not both create the tables.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(7460232)"))
    schema_version.create(conn, checkfirst=True)
    current = current_version(conn)
    if current > SCHEMA_VERSION:
        raise DatabaseError(
            f"the database has schema version {current}, newer than this program knows "
            f"({SCHEMA_VERSION}); upgrade newsletter"
        )
    for version, _description, step in MIGRATIONS:
        if current < version <= target:
            step(conn)
            conn.execute(schema_version.insert().values(version=version, applied_at=utcnow()))
            current = version
    return current
