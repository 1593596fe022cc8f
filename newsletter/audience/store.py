"""The subscriber store: lists, subscribers, memberships, consent log, suppressions, send journal.

SQLAlchemy Core, synchronous. SQLite by default (WAL, foreign keys, busy timeout);
the same code runs on a PostgreSQL URL — the only dialect-specific code is the
connection setup and the way a write transaction begins.

Concurrency: every write runs in `Store.write()`. On SQLite that is `BEGIN IMMEDIATE`,
which takes the write lock up front, so two writers (processes or threads) queue on the
busy timeout instead of both reading, then one failing with "database is locked" when
upgrading its read lock — and a read-modify-write inside one transaction never loses an
update. On PostgreSQL the reads that precede a write use ``SELECT … FOR UPDATE``.

Never re-activating someone who left is enforced here: `request_subscription` and the
CSV import only move addresses forward from "new", "pending" or (for the web form,
where the person asks again themselves) "unsubscribed"; bounced, complained and
suppressed addresses are left alone.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from sqlalchemy.engine import Connection, Engine

from newsletter.config import Project
from newsletter.errors import NewsletterError

Status = Literal["pending", "subscribed", "unsubscribed", "bounced", "complained"]
STATUSES: tuple[str, ...] = ("pending", "subscribed", "unsubscribed", "bounced", "complained")
# Statuses that mean "this person left or must not be mailed": never re-activated by import.
OPTED_OUT: frozenset[str] = frozenset({"unsubscribed", "bounced", "complained"})
# The statuses an unsubscribe changes (to "unsubscribed"); bounced and complained stay as they are.
LEAVABLE: frozenset[str] = frozenset({"pending", "subscribed"})
SOURCES: frozenset[str] = frozenset(
    {"import", "web", "cli", "unsubscribe_page", "one_click", "bounce", "complaint", "confirm"}
)
SEND_STATUSES = ("running", "paused", "finished", "interrupted")
DELIVERY_STATUSES = ("pending", "sending", "sent", "failed_temporary", "failed_permanent", "skipped")

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Portable upper bound for bound parameters in one IN (…) query.
CHUNK = 900


class StoreError(NewsletterError):
    """A store operation a user asked for cannot be done (unknown list, duplicate name …)."""


class InvalidEmail(NewsletterError):
    """An e-mail address that email-validator rejects."""


class NonAsciiLocalPart(InvalidEmail):
    """Valid only with SMTPUTF8 (``müller@…``): refused for new addresses, see `normalize_email`."""


# --- time -------------------------------------------------------------------------------------


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


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- schema -----------------------------------------------------------------------------------

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _in(column: str, values: Iterable[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


schema_version = sa.Table(
    "schema_version", metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", UtcDateTime, nullable=False),
)

def new_token_id() -> str:
    """A subscriber's random, public handle for links (16 URL-safe characters, 96 bits)."""
    return secrets.token_urlsafe(12)


def _subscribers_table(md: sa.MetaData, version: int) -> sa.Table:
    """`subscribers` as of schema `version`: 1 as first created, 4 with the columns migration 4
    added (at the end, where ALTER TABLE puts them)."""
    v4 = version >= 4
    return sa.Table(
        "subscribers", md,
        sa.Column("id", sa.Integer, primary_key=True),
        # As normalised by email-validator: local part as written, domain lower-cased, IDN in Unicode.
        sa.Column("email", sa.String(320), nullable=False, unique=True),
        # email.lower(): the identity used for duplicates (Anna@x.de and anna@x.de are one person).
        sa.Column("email_key", sa.String(320), nullable=False, unique=True),
        sa.Column("name", sa.String(300), nullable=True),
        sa.Column("attributes", sa.JSON, nullable=False, default=dict),
        sa.Column("created_at", UtcDateTime, nullable=False, server_default=NOW),
        *([
            # What unsubscribe and confirmation links name instead of the (reusable, sequential)
            # id. The Python default fills it on every insert through this Table, bulk ones too.
            # Nullable only because SQLite cannot add a NOT NULL column without a constant default.
            sa.Column("token_id", sa.String(32), nullable=True, default=new_token_id),
            # Existed before migration 4: links already mailed name this row by id and stay valid
            # while the row exists. Never true for a row created later, even one reusing an id.
            sa.Column("legacy_tokens", sa.Boolean, nullable=False, default=False,
                      server_default=sa.false()),
            sa.Index("ix_subscribers_token_id", "token_id", unique=True),
        ] if v4 else []),
    )


subscribers = _subscribers_table(metadata, 4)

lists = sa.Table(
    "lists", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("title", sa.String(300), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False, server_default=NOW),
)

memberships = sa.Table(
    "memberships", metadata,
    sa.Column("subscriber_id", sa.Integer, sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("list_id", sa.Integer, sa.ForeignKey("lists.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False, server_default=NOW),
    sa.Column("updated_at", UtcDateTime, nullable=False, server_default=NOW),
    sa.CheckConstraint(_in("status", STATUSES), name="status"),
    sa.Index("ix_memberships_list_status", "list_id", "status"),
)

consent_log = sa.Table(
    "consent_log", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("subscriber_id", sa.Integer, sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("list_id", sa.Integer, sa.ForeignKey("lists.id", ondelete="SET NULL"), nullable=True),
    sa.Column("at", UtcDateTime, nullable=False, server_default=NOW),
    # The membership status after the event (pending, subscribed, unsubscribed …).
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("ip", sa.String(64), nullable=True),
    sa.Column("consent_version", sa.String(64), nullable=True),
    sa.Column("detail", sa.Text, nullable=True),
)

suppressions = sa.Table(
    "suppressions", metadata,
    # sha256 of the lower-cased normalised address: lets us refuse the address later
    # without keeping it (GDPR erasure).
    sa.Column("email_hash", sa.String(64), primary_key=True),
    sa.Column("reason", sa.String(200), nullable=False),
    sa.Column("at", UtcDateTime, nullable=False, server_default=NOW),
)

# Send journal: the delivery code owns the logic, the store owns the schema.
def _journal_tables(md: sa.MetaData, version: int) -> tuple[sa.Table, sa.Table]:
    """`sends` and `deliveries` as of schema `version`: 2 as first created, 3 with the columns
    migration 3 added (at the end, where ALTER TABLE puts them)."""
    v3 = version >= 3
    send_table = sa.Table(
        "sends", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("issue_slug", sa.String(200), nullable=False),
        sa.Column("list_id", sa.Integer, sa.ForeignKey("lists.id"), nullable=False),
        sa.Column("content_hash", sa.String(128), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("transport", sa.String(200), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False, server_default=NOW),
        sa.Column("updated_at", UtcDateTime, nullable=False, server_default=NOW),
        sa.Column("finished_at", UtcDateTime, nullable=True),
        # Why the send is paused or interrupted (policy streak, connection failure, Ctrl-C …);
        # NULL while running and once finished.
        *([sa.Column("reason", sa.Text, nullable=True)] if v3 else []),
        sa.UniqueConstraint("issue_slug", "list_id", name="uq_sends_issue_list"),
        sa.CheckConstraint(_in("status", SEND_STATUSES), name="status"),
    )
    delivery_table = sa.Table(
        "deliveries", md,
        sa.Column("send_id", sa.Integer, sa.ForeignKey("sends.id", ondelete="CASCADE"),
                  primary_key=True),
        # No foreign key: the journal outlives a subscriber erased with `remove --forget`.
        sa.Column("subscriber_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, default=0, server_default="0"),
        sa.Column("smtp_code", sa.Integer, nullable=True),
        sa.Column("smtp_reply", sa.Text, nullable=True),
        sa.Column("message_id", sa.Text, nullable=True),
        sa.Column("updated_at", UtcDateTime, nullable=False, server_default=NOW),
        # In flight (`sending`) when a send was interrupted: the message may have been accepted
        # before the crash and was sent again by the resume. Stays set once set.
        *([sa.Column("possibly_duplicated", sa.Boolean, nullable=False, default=False,
                     server_default=sa.false())] if v3 else []),
        sa.CheckConstraint(_in("status", DELIVERY_STATUSES), name="status"),
        sa.Index("ix_deliveries_send_status", "send_id", "status"),
    )
    return send_table, delivery_table


sends, deliveries = _journal_tables(metadata, 3)


# --- migrations -------------------------------------------------------------------------------
# Append only; never change what a released step does. A step that changes an existing table
# must spell out its DDL (op on the old shape) instead of using the current Table objects above,
# and a step creating a table that a later step alters must create it in its own version's shape
# (as `_v2_send_journal` does), so a fresh database and an upgraded one end up identical.


def _v1_core(conn: Connection) -> None:
    # `subscribers` as version 1 created it (migration 4 alters it), with the other tables in the
    # same scratch MetaData so their foreign keys find it.
    md = sa.MetaData(naming_convention=metadata.naming_convention)
    tables = [_subscribers_table(md, 1)]
    tables += [t.to_metadata(md) for t in (lists, memberships, consent_log, suppressions)]
    for table in tables:
        table.create(conn)


def _v2_send_journal(conn: Connection) -> None:
    # The tables as version 2 created them (later steps ALTER them), in a scratch MetaData that
    # also knows `lists` for the foreign key.
    md = sa.MetaData(naming_convention=metadata.naming_convention)
    lists.to_metadata(md)
    for table in _journal_tables(md, 2):
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


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "subscribers, lists, memberships, consent log, suppressions", _v1_core),
    (2, "send journal: sends, deliveries", _v2_send_journal),
    (3, "send journal: sends.reason, deliveries.possibly_duplicated", _v3_journal_columns),
    (4, "subscribers.token_id (opaque link handle), subscribers.legacy_tokens", _v4_token_ids),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def migrate(conn: Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the schema up to `target` inside the caller's write transaction; the new version."""
    if conn.dialect.name == "postgresql":
        # Two processes opening a fresh database must not both create the tables.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(7460232)"))
    schema_version.create(conn, checkfirst=True)
    current = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"the database has schema version {current}, newer than this program knows "
            f"({SCHEMA_VERSION}); upgrade newsletter"
        )
    for version, _description, step in MIGRATIONS:
        if current < version <= target:
            step(conn)
            conn.execute(schema_version.insert().values(version=version, applied_at=utcnow()))
            current = version
    return current


# --- e-mail addresses -------------------------------------------------------------------------

# Plain ASCII dot-atom local parts: a strict subset of what email-validator accepts, so the
# fast path below never accepts anything the validator would reject (see test_store).
_SIMPLE_LOCAL = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*\Z")
_SPACE = re.compile(r"[\s@\"\\()<>\[\],;:]")


@lru_cache(maxsize=8192)
def _domain(domain: str) -> tuple[str, str] | None:
    """(Unicode, ASCII) form of a domain, or None if email-validator rejects it."""
    try:
        valid = validate_email(f"postmaster@{domain}", check_deliverability=False)
    except EmailNotValidError:
        return None
    return valid.domain, valid.ascii_domain


NON_ASCII_LOCAL = ("non-ASCII characters before @ are not deliverable by most mail servers "
                   "(they need SMTPUTF8); ask for the address without umlauts or accents")


def normalize_email(address: str, *, lookup: bool = False) -> str:
    """Validate (no DNS) and normalise: local part as written, domain lower-case, IDN in Unicode.

    The Unicode form (email-validator's ``normalized``) keeps ``straße.de`` distinct from
    ``strasse.de`` (IDNA 2008). A non-ASCII local part (``müller@…``) is refused: it needs
    SMTPUTF8, which most servers lack and our `To:` header cannot carry; umlaut *domains* are
    fine (sent as punycode). ``lookup=True`` accepts such local parts, to find rows stored before
    this check (unsubscribe, forget). Raises `InvalidEmail` with the reason.
    """
    address = address.strip()
    # Fast path for imports of 100,000 rows: plain local part, each domain validated once.
    # Anything unusual (or near the length limits) goes through the full validator.
    local, at, domain = address.rpartition("@")
    if at and len(local) <= 64 and _SIMPLE_LOCAL.match(local) and not _SPACE.search(domain):
        forms = _domain(domain)
        if forms is not None and len(local) + len(forms[1].encode()) < 200 \
                and len(local) + len(forms[0].encode()) < 200:
            return f"{local}@{forms[0]}"
    try:
        valid = validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidEmail(f"invalid e-mail address `{address}`: {exc}") from None
    if not lookup and not valid.local_part.isascii():
        raise NonAsciiLocalPart(f"invalid e-mail address `{address}`: {NON_ASCII_LOCAL}")
    return valid.normalized


def ascii_email(normalized: str) -> str:
    """The address as it goes into RCPT TO and the `To:` header: an IDN domain in punycode.

    Raises `InvalidEmail` for a non-ASCII local part (stored before `normalize_email` refused it).
    """
    if normalized.isascii():
        return normalized
    local, _at, domain = normalized.rpartition("@")
    if not local.isascii():
        raise NonAsciiLocalPart(f"`{normalized}`: {NON_ASCII_LOCAL}")
    forms = _domain(domain)
    if forms is None:
        raise InvalidEmail(f"`{normalized}`: the domain is not a valid internationalised domain")
    return f"{local}@{forms[1]}"


def email_key(normalized: str) -> str:
    """Identity of an address for duplicates: lower() keeps ß (casefold would make it ss)."""
    return normalized.lower()


def suppression_hash(address: str) -> str:
    """sha256 of the normalised, lower-cased address (falls back to the raw text if invalid)."""
    try:
        key = email_key(normalize_email(address, lookup=True))
    except InvalidEmail:
        key = address.strip().lower()
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MailingList:
    id: int
    name: str
    title: str | None
    created_at: datetime | None = None


@dataclass(frozen=True)
class Member:
    subscriber_id: int
    email: str
    name: str | None
    token_id: str = ""  # for the member's unsubscribe link: `Tokens.unsubscribe(token_id, list_id)`


@dataclass(frozen=True)
class Subscriber:
    id: int
    email: str
    name: str | None
    attributes: dict[str, Any]
    created_at: datetime
    token_id: str | None = None
    legacy_tokens: bool = False


@dataclass(frozen=True)
class Membership:
    list_id: int
    list_name: str
    status: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ConsentEntry:
    id: int
    at: datetime
    list_id: int | None
    list_name: str | None
    action: str
    source: str
    ip: str | None
    consent_version: str | None
    detail: str | None


@dataclass(frozen=True)
class SignupResult:
    subscriber_id: int | None
    send_confirmation: bool
    token_id: str | None = None  # for the confirmation link


@dataclass
class ListCounts:
    list: MailingList
    counts: dict[str, int] = field(default_factory=dict)


LIST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown membership status {status!r}; one of {', '.join(STATUSES)}")


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"unknown consent source {source!r}; one of {', '.join(sorted(SOURCES))}")


# --- the store --------------------------------------------------------------------------------


class Store:
    """Access to one subscriber database. Thread-safe; open once per process and share."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # opening ----------------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, *, migrate_to: int = SCHEMA_VERSION) -> Store:
        """Connect to `url` and upgrade the schema to the current version."""
        try:
            sa_url = sa.make_url(url)
        except sa.exc.ArgumentError as exc:
            raise StoreError(f"invalid database URL `{url}`: {exc}") from None
        sqlite = sa_url.get_backend_name() == "sqlite"
        connect_args: dict[str, Any] = (
            {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000} if sqlite else {}
        )
        try:
            engine = sa.create_engine(sa_url, connect_args=connect_args)
        except (sa.exc.NoSuchModuleError, ImportError) as exc:
            raise StoreError(
                f"cannot use the database URL {sa_url.render_as_string()}: {exc} (for PostgreSQL "
                "install a driver: pip install 'psycopg[binary]', URL postgresql+psycopg://…)"
            ) from None
        if sqlite:
            _setup_sqlite(engine)
        store = cls(engine)
        try:
            with store.write() as conn:
                migrate(conn, migrate_to)
        except sa.exc.OperationalError as exc:
            engine.dispose()
            raise StoreError(f"cannot open the database {sa_url.render_as_string()}: {exc.orig}") from None
        except BaseException:
            engine.dispose()
            raise
        return store

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction: committed on success, rolled back on any exception."""
        with self.engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (consistent snapshot)."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def schema_version(self) -> int:
        with self.read() as conn:
            return int(conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0)

    # lists ------------------------------------------------------------------------------------

    def create_list(self, name: str, title: str | None = None) -> MailingList:
        if not LIST_NAME.match(name):
            raise StoreError(
                f"invalid list name `{name}`: use letters, digits, '.', '_' and '-' "
                "(start with a letter or digit, at most 100 characters)"
            )
        with self.write() as conn:
            if conn.execute(sa.select(lists.c.id).where(lists.c.name == name)).first():
                raise StoreError(f"list `{name}` already exists")
            now = utcnow()
            list_id = conn.execute(
                lists.insert().values(name=name, title=title, created_at=now)
            ).inserted_primary_key[0]
        return MailingList(list_id, name, title, now)

    def lists(self) -> list[MailingList]:
        with self.read() as conn:
            rows = conn.execute(sa.select(lists).order_by(lists.c.name)).all()
        return [MailingList(r.id, r.name, r.title, r.created_at) for r in rows]

    def list_counts(self) -> list[ListCounts]:
        """Every list with the number of members per status."""
        result = {ml.id: ListCounts(ml, dict.fromkeys(STATUSES, 0)) for ml in self.lists()}
        with self.read() as conn:
            rows = conn.execute(
                sa.select(memberships.c.list_id, memberships.c.status, sa.func.count())
                .group_by(memberships.c.list_id, memberships.c.status)
            ).all()
        for list_id, status, count in rows:
            if list_id in result:
                result[list_id].counts[status] = count
        return list(result.values())

    def get_list(self, name: str) -> MailingList:
        with self.read() as conn:
            row = conn.execute(sa.select(lists).where(lists.c.name == name)).first()
        if row is None:
            known = [ml.name for ml in self.lists()]
            hint = (f"known lists: {', '.join(known)}" if known
                    else "there are no lists yet; create one with `newsletter lists create NAME`")
            raise StoreError(f"no list named `{name}`; {hint}")
        return MailingList(row.id, row.name, row.title, row.created_at)

    def get_list_by_id(self, list_id: int) -> MailingList | None:
        with self.read() as conn:
            row = conn.execute(sa.select(lists).where(lists.c.id == list_id)).first()
        return MailingList(row.id, row.name, row.title, row.created_at) if row else None

    # subscribers ------------------------------------------------------------------------------

    def subscriber(self, subscriber_id: int) -> Subscriber | None:
        with self.read() as conn:
            row = conn.execute(sa.select(subscribers).where(subscribers.c.id == subscriber_id)).first()
        return _subscriber(row) if row else None

    def subscriber_by_token_id(self, token_id: str | int) -> Subscriber | None:
        """The subscriber a link names, or None.

        A str is a `token_id`. An int is a subscriber id from a link mailed before migration 4
        (tokens then named the id): it counts only while that very row exists — a subscriber
        created later, even one that got the id of an erased person, is never found by it.
        """
        condition = _token_condition(token_id)
        if condition is None:
            return None
        with self.read() as conn:
            row = conn.execute(sa.select(subscribers).where(condition)).first()
        return _subscriber(row) if row else None

    def membership_by_token_id(self, token_id: str | int, list_id: int) -> tuple[int, str] | None:
        """(subscriber id, membership status) for a link's token_id on a list, in one query (the
        unsubscribe hot path); None if no such subscriber or membership. Ints: as above."""
        condition = _token_condition(token_id)
        if condition is None:
            return None
        query = (sa.select(subscribers.c.id, memberships.c.status)
                 .join(memberships, memberships.c.subscriber_id == subscribers.c.id)
                 .where(memberships.c.list_id == list_id, condition))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return (row.id, row.status) if row else None

    def leave(self, token_id: str | int, list_id: int, *, source: str,
              ip: str | None = None) -> tuple[int, str] | None:
        """An unsubscribe link was used: (subscriber id, status before), None if the link names
        no membership. Idempotent; only LEAVABLE statuses change (logged with `source`)."""
        found = self.membership_by_token_id(token_id, list_id)
        if found is not None and found[1] in LEAVABLE:
            self.set_status(found[0], list_id, "unsubscribed", source, ip=ip)
        return found

    def find_subscriber(self, email: str) -> Subscriber | None:
        """The subscriber with this address (any case of the address), or None."""
        try:
            key = email_key(normalize_email(email, lookup=True))
        except InvalidEmail:
            return None
        with self.read() as conn:
            row = conn.execute(sa.select(subscribers).where(subscribers.c.email_key == key)).first()
        return _subscriber(row) if row else None

    def members(self, list_id: int, status: str | None = "subscribed") -> list[Member]:
        """Members of a list with `status` (None: every status), in subscription order."""
        query = (
            sa.select(subscribers.c.id, subscribers.c.email, subscribers.c.name, subscribers.c.token_id)
            .join(memberships, memberships.c.subscriber_id == subscribers.c.id)
            .where(memberships.c.list_id == list_id)
            .order_by(subscribers.c.id)
        )
        if status is not None:
            _check_status(status)
            query = query.where(memberships.c.status == status)
        with self.read() as conn:
            return [Member(r.id, r.email, r.name, r.token_id) for r in conn.execute(query)]

    def token_ids(self, list_id: int) -> dict[int, str]:
        """subscriber id → token_id of every member of a list (any status): the links of a send."""
        query = (sa.select(subscribers.c.id, subscribers.c.token_id)
                 .join(memberships, memberships.c.subscriber_id == subscribers.c.id)
                 .where(memberships.c.list_id == list_id))
        with self.read() as conn:
            return {r.id: r.token_id for r in conn.execute(query)}

    def member_rows(self, list_id: int | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Subscribers joined with memberships (for listing and export), ordered by email."""
        query = (
            sa.select(
                subscribers.c.id, subscribers.c.email, subscribers.c.name, subscribers.c.attributes,
                lists.c.name.label("list"), memberships.c.status, memberships.c.created_at,
                memberships.c.updated_at,
            )
            .join(memberships, memberships.c.subscriber_id == subscribers.c.id)
            .join(lists, lists.c.id == memberships.c.list_id)
            .order_by(subscribers.c.email_key, lists.c.name)
        )
        if list_id is not None:
            query = query.where(memberships.c.list_id == list_id)
        if status is not None:
            _check_status(status)
            query = query.where(memberships.c.status == status)
        with self.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def memberships(self, subscriber_id: int) -> list[Membership]:
        with self.read() as conn:
            rows = conn.execute(
                sa.select(memberships, lists.c.name)
                .join(lists, lists.c.id == memberships.c.list_id)
                .where(memberships.c.subscriber_id == subscriber_id)
                .order_by(lists.c.name)
            ).all()
        return [Membership(r.list_id, r.name, r.status, r.created_at, r.updated_at) for r in rows]

    def membership_status(self, subscriber_id: int, list_id: int) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(memberships.c.status).where(
                    memberships.c.subscriber_id == subscriber_id, memberships.c.list_id == list_id
                )
            ).scalar()

    def history(self, subscriber_id: int) -> list[ConsentEntry]:
        """The consent log of one subscriber, oldest first."""
        with self.read() as conn:
            rows = conn.execute(
                sa.select(consent_log, lists.c.name.label("list_name"))
                .outerjoin(lists, lists.c.id == consent_log.c.list_id)
                .where(consent_log.c.subscriber_id == subscriber_id)
                .order_by(consent_log.c.id)
            ).all()
        return [
            ConsentEntry(r.id, r.at, r.list_id, r.list_name, r.action, r.source, r.ip,
                         r.consent_version, r.detail)
            for r in rows
        ]

    # state changes ----------------------------------------------------------------------------

    def set_status(self, subscriber_id: int, list_id: int, status: str, source: str, *,
                   ip: str | None = None, detail: str | None = None) -> bool:
        """Set a membership's status (creating the membership if needed); True if it changed.

        Logs the change in the consent log; setting the current status again does nothing.
        """
        _check_status(status)
        _check_source(source)
        with self.write() as conn:
            return _set_status(conn, subscriber_id, list_id, status, source, ip=ip, detail=detail)

    def request_subscription(self, email: str, list_id: int, *, name: str | None = None,
                             source: str = "web", ip: str | None = None,
                             consent_version: str | None = None) -> SignupResult:
        """Someone asks to join a list (double opt-in). Says whether to send a confirmation mail.

        new / unsubscribed → pending, confirm; pending → pending, confirm again;
        subscribed → nothing; bounced / complained / suppressed → nothing changes, no mail.
        """
        _check_source(source)
        normalized = normalize_email(email)
        key = email_key(normalized)
        with self.write() as conn:
            if _is_suppressed(conn, key):
                return SignupResult(None, False)
            now = utcnow()
            # Only fill a missing name: a form must not rename somebody else's entry.
            subscriber_id, token_id = _find_or_create_subscriber(
                conn, normalized, key, name, now, replace_name=False)
            current = _status_for_update(conn, subscriber_id, list_id)
            if current in ("subscribed", "bounced", "complained"):
                return SignupResult(subscriber_id, False, token_id)
            detail = "sign-up repeated, confirmation sent again" if current == "pending" else "sign-up"
            if current is None:
                conn.execute(memberships.insert().values(
                    subscriber_id=subscriber_id, list_id=list_id, status="pending",
                    created_at=now, updated_at=now,
                ))
            elif current == "unsubscribed":
                _update_membership(conn, subscriber_id, list_id, "pending", now)
            _log(conn, subscriber_id, list_id, "pending", source, at=now, ip=ip,
                 consent_version=consent_version, detail=detail)
            return SignupResult(subscriber_id, True, token_id)

    def confirm(self, subscriber_id: int, list_id: int, *, source: str = "confirm",
                ip: str | None = None) -> bool:
        """Double opt-in confirmed: pending → subscribed (logged). Anything else stays as it is."""
        _check_source(source)
        with self.write() as conn:
            if _status_for_update(conn, subscriber_id, list_id) != "pending":
                return False
            now = utcnow()
            _update_membership(conn, subscriber_id, list_id, "subscribed", now)
            _log(conn, subscriber_id, list_id, "subscribed", source, at=now, ip=ip,
                 detail="double opt-in confirmed")
            return True

    def add_subscriber(self, email: str, list_id: int, *, name: str | None = None,
                       confirmed: bool = False, source: str = "cli",
                       detail: str | None = None) -> tuple[int, bool]:
        """Add one address to a list by hand; (subscriber_id, changed).

        Refuses suppressed addresses and people who unsubscribed, bounced or complained.
        """
        _check_source(source)
        normalized = normalize_email(email)
        key = email_key(normalized)
        status = "subscribed" if confirmed else "pending"
        with self.write() as conn:
            if _is_suppressed(conn, key):
                raise StoreError(f"{normalized} is on the suppression list (erased on request or "
                                 "blocked); it cannot be added again")
            now = utcnow()
            subscriber_id, _token_id = _find_or_create_subscriber(
                conn, normalized, key, name, now, replace_name=True)
            current = _status_for_update(conn, subscriber_id, list_id)
            if current in OPTED_OUT:
                raise StoreError(
                    f"{normalized} is {current} on this list; an editor cannot re-activate them — "
                    "they can sign up again themselves through the subscribe form"
                )
            if current == "subscribed" or (current == "pending" and not confirmed):
                return subscriber_id, False
            changed = _set_status(conn, subscriber_id, list_id, status, source,
                                  detail=detail or ("editor confirmed prior consent" if confirmed
                                                    else "added by editor, not yet confirmed"))
            return subscriber_id, changed

    def unsubscribe(self, email: str, list_id: int | None = None, *, source: str = "cli",
                    detail: str | None = None) -> list[str]:
        """Unsubscribe an address from one list or from all; the names of the lists changed."""
        found = self.find_subscriber(email)
        if found is None:
            raise StoreError(f"no subscriber with the address {email.strip()}")
        changed: list[str] = []
        with self.write() as conn:
            query = (sa.select(memberships.c.list_id, lists.c.name)
                     .join(lists, lists.c.id == memberships.c.list_id)
                     .where(memberships.c.subscriber_id == found.id))
            if list_id is not None:
                query = query.where(memberships.c.list_id == list_id)
            rows = conn.execute(query).all()
            if list_id is not None and not rows:
                raise StoreError(f"{found.email} is not on that list")
            for row in rows:
                current = _status_for_update(conn, found.id, row.list_id)
                if current in LEAVABLE and _set_status(
                    conn, found.id, row.list_id, "unsubscribed", source, detail=detail
                ):
                    changed.append(row.name)
        return changed

    def forget(self, email: str, *, reason: str = "erased on request (GDPR Art. 17)") -> bool:
        """Erase a person (GDPR Art. 17): subscriber, memberships, consent log, the address in the
        send journal. Keeps only a hashed suppression entry so no import or sign-up brings the
        address back. True if a subscriber was found."""
        try:
            key: str | None = email_key(normalize_email(email, lookup=True))
        except InvalidEmail:
            key = None
        with self.write() as conn:
            # Looked up inside the write transaction: a sign-up racing the erasure cannot slip by.
            found = conn.execute(
                sa.select(subscribers.c.id).where(subscribers.c.email_key == key)
            ).scalar() if key else None
            if found is not None:
                conn.execute(consent_log.delete().where(consent_log.c.subscriber_id == found))
                conn.execute(memberships.delete().where(memberships.c.subscriber_id == found))
                conn.execute(deliveries.update().where(deliveries.c.subscriber_id == found)
                             .values(email="(erased)", smtp_reply=None))
                conn.execute(subscribers.delete().where(subscribers.c.id == found))
            _suppress(conn, suppression_hash(email), reason)
        if found is not None:
            self.checkpoint()
        return found is not None

    def checkpoint(self) -> bool:
        """SQLite: copy the WAL into the database file and empty it, so erased rows do not linger
        in `-wal` (secure_delete then has zeroed them in the file). True when fully done; False if
        a reader still needed old frames (the next checkpoint finishes it). No-op elsewhere."""
        if self.engine.dialect.name != "sqlite":
            return True
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            # Outside any transaction (isolation_level None): a checkpoint cannot run inside one.
            busy, _log_frames, _done = cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            cursor.close()
        finally:
            raw.close()
        return not busy

    def suppress(self, email: str, reason: str) -> None:
        with self.write() as conn:
            _suppress(conn, suppression_hash(email), reason)

    def is_suppressed(self, email: str) -> bool:
        with self.read() as conn:
            return _is_suppressed_hash(conn, suppression_hash(email))


# --- helpers working inside a transaction -----------------------------------------------------


def _subscriber(row: Any) -> Subscriber:
    return Subscriber(row.id, row.email, row.name, dict(row.attributes or {}), row.created_at,
                      row.token_id, bool(row.legacy_tokens))


def _status_for_update(conn: Connection, subscriber_id: int, list_id: int) -> str | None:
    return conn.execute(
        sa.select(memberships.c.status)
        .where(memberships.c.subscriber_id == subscriber_id, memberships.c.list_id == list_id)
        .with_for_update()
    ).scalar()


def _update_membership(conn: Connection, subscriber_id: int, list_id: int, status: str,
                       now: datetime) -> None:
    conn.execute(
        memberships.update()
        .where(memberships.c.subscriber_id == subscriber_id, memberships.c.list_id == list_id)
        .values(status=status, updated_at=now)
    )


def _set_status(conn: Connection, subscriber_id: int, list_id: int, status: str, source: str, *,
                ip: str | None = None, detail: str | None = None) -> bool:
    current = _status_for_update(conn, subscriber_id, list_id)
    if current == status:
        return False
    now = utcnow()
    if current is None:
        try:
            conn.execute(memberships.insert().values(
                subscriber_id=subscriber_id, list_id=list_id, status=status,
                created_at=now, updated_at=now,
            ))
        except sa.exc.IntegrityError:
            raise StoreError(f"no subscriber {subscriber_id} or no list {list_id}") from None
    else:
        _update_membership(conn, subscriber_id, list_id, status, now)
    _log(conn, subscriber_id, list_id, status, source, at=now, ip=ip, detail=detail)
    return True


def _log(conn: Connection, subscriber_id: int, list_id: int | None, action: str, source: str, *,
         at: datetime, ip: str | None = None, consent_version: str | None = None,
         detail: str | None = None) -> None:
    conn.execute(consent_log.insert().values(
        subscriber_id=subscriber_id, list_id=list_id, at=at, action=action, source=source,
        ip=ip, consent_version=consent_version, detail=detail,
    ))


def _is_suppressed(conn: Connection, key: str) -> bool:
    return _is_suppressed_hash(conn, hashlib.sha256(key.encode("utf-8")).hexdigest())


def _is_suppressed_hash(conn: Connection, email_hash: str) -> bool:
    return conn.execute(
        sa.select(suppressions.c.email_hash).where(suppressions.c.email_hash == email_hash)
    ).first() is not None


def _suppress(conn: Connection, email_hash: str, reason: str) -> None:
    if not _is_suppressed_hash(conn, email_hash):
        conn.execute(suppressions.insert().values(email_hash=email_hash, reason=reason, at=utcnow()))


def chunked(items: list[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --- SQLite connection setup (the only SQLite-specific SQL) -----------------------------------


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


def open_store(project: Project) -> Store:
    """Open the project's database (creating the directory of a SQLite file)."""
    url = project.database_url
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() == "sqlite" and sa_url.database and sa_url.database != ":memory:":
        Path(sa_url.database).parent.mkdir(parents=True, exist_ok=True)
    return Store.open(url)


def _token_condition(token_id: object) -> sa.ColumnElement[bool] | None:
    """The WHERE clause finding the subscriber a link names; None for a malformed reference.

    A str is a `token_id`; an int is a subscriber id from a link mailed before migration 4,
    valid only for rows that existed then (`legacy_tokens`).
    """
    if isinstance(token_id, bool) or not isinstance(token_id, (str, int)) or token_id == "":
        return None
    if isinstance(token_id, str):
        return subscribers.c.token_id == token_id
    return sa.and_(subscribers.c.id == token_id, subscribers.c.legacy_tokens == sa.true())


def _find_or_create_subscriber(conn: Connection, normalized: str, key: str, name: str | None,
                               now: datetime, *, replace_name: bool) -> tuple[int, str]:
    """(id, token_id) of the subscriber with this address key, created if new (row locked).

    `replace_name`: an editor's name replaces the stored one; otherwise (web forms) a name
    only fills a missing one.
    """
    row = conn.execute(
        sa.select(subscribers.c.id, subscribers.c.name, subscribers.c.token_id)
        .where(subscribers.c.email_key == key).with_for_update()
    ).first()
    if row is None:
        token_id = new_token_id()
        subscriber_id = conn.execute(subscribers.insert().values(
            email=normalized, email_key=key, name=name or None, attributes={}, created_at=now,
            token_id=token_id,
        )).inserted_primary_key[0]
        return subscriber_id, token_id
    if name and name != row.name and (replace_name or not row.name):
        conn.execute(subscribers.update().where(subscribers.c.id == row.id).values(name=name))
    return row.id, row.token_id
