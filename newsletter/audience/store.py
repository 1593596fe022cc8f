"""The subscriber store: lists, subscribers, memberships, consent log, suppressions.

SQLAlchemy Core, synchronous, over the audience tables (`audience/tables.py`); the database
layer is `newsletter/db`. Every write runs in one `Store.write()` transaction (`BEGIN IMMEDIATE`
on SQLite); on PostgreSQL it locks what it reads first (`audience/writes.py`). Which status
change an operation makes is decided in `audience/statuses.py`; the way out by a link is
`audience/leaving.py`. See docs/data-model.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from newsletter.audience import writes
from newsletter.audience.addresses import (
    email_key,
    key_hash,
    lookup_key,
    normalize_email,
    suppression_hash,
)
from newsletter.audience.leaving import Leave, leave_many, token_condition
from newsletter.audience.names import InvalidName, clean_name, name_or_none
from newsletter.audience.records import (
    ConsentEntry,
    ListCounts,
    MailingList,
    Member,
    Membership,
    SignupResult,
    StoreError,
    Subscriber,
)
from newsletter.audience.statuses import (
    LEAVABLE,
    STATUSES,
    check_source,
    check_status,
    confirm_allowed,
    editor_change,
    editor_target,
    signup_change,
)
from newsletter.audience.tables import consent_log, lists, memberships, subscribers
from newsletter.db.engine import (
    DatabaseError,
    checkpoint,
    make_sqlite_directory,
    open_engine,
    read_transaction,
    write_transaction,
)
from newsletter.db.migrations import SCHEMA_VERSION, current_version, migrate
from newsletter.db.schema import by_code_point, subscriber_erasers, utcnow
from newsletter.project import Project

LIST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
MAX_TITLE = 300  # lists.title


class Store:
    """Access to one subscriber database. Thread-safe; open once per process and share."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # opening ----------------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, *, migrate_to: int = SCHEMA_VERSION) -> Store:
        """Connect to `url` and upgrade the schema to the current version."""
        try:
            engine = open_engine(url)
        except DatabaseError as exc:
            raise StoreError(str(exc)) from None
        store = cls(engine)
        try:
            with store.write() as conn:
                migrate(conn, migrate_to)
        except DatabaseError as exc:
            engine.dispose()
            raise StoreError(str(exc)) from None
        except sa.exc.OperationalError as exc:
            engine.dispose()
            raise StoreError(f"cannot open the database {engine.url.render_as_string()}: "
                             f"{exc.orig}") from None
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

    def write(self) -> AbstractContextManager[Connection]:
        """A write transaction (`BEGIN IMMEDIATE` on SQLite): committed on success, rolled back
        on any exception."""
        return write_transaction(self.engine)

    @contextmanager
    def _change(self) -> Iterator[Connection]:
        """A write transaction that changes subscribers or memberships: on PostgreSQL it takes
        the table locks first (`writes.lock_tables`)."""
        with self.write() as conn:
            writes.lock_tables(conn)
            yield conn

    def read(self) -> AbstractContextManager[Connection]:
        """A read-only transaction (consistent snapshot)."""
        return read_transaction(self.engine)

    def schema_version(self) -> int:
        with self.read() as conn:
            return current_version(conn)

    # lists ------------------------------------------------------------------------------------

    def create_list(self, name: str, title: str | None = None) -> MailingList:
        if not LIST_NAME.match(name):
            raise StoreError(
                f"invalid list name `{name}`: use letters, digits, '.', '_' and '-' "
                "(start with a letter or digit, at most 100 characters)"
            )
        if title is not None and (len(title) > MAX_TITLE or "\x00" in title):
            # PostgreSQL enforces the column's length and has no NUL in text; SQLite would take both.
            raise StoreError(f"invalid list title: at most {MAX_TITLE} characters, no NUL character")
        with self.write() as conn:
            if conn.execute(sa.select(lists.c.id).where(lists.c.name == name)).first():
                raise StoreError(f"list `{name}` already exists")
            now = utcnow()
            try:
                list_id = conn.execute(
                    lists.insert().values(name=name, title=title, created_at=now)
                ).inserted_primary_key[0]
            except sa.exc.IntegrityError:  # PostgreSQL: created by another process meanwhile
                raise StoreError(f"list `{name}` already exists") from None
        return MailingList(list_id, name, title, now)

    def lists(self) -> list[MailingList]:
        with self.read() as conn:
            rows = conn.execute(sa.select(lists).order_by(by_code_point(lists.c.name))).all()
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
        condition = token_condition(token_id)
        if condition is None:
            return None
        with self.read() as conn:
            row = conn.execute(sa.select(subscribers).where(condition)).first()
        return _subscriber(row) if row else None

    def membership_by_token_id(self, token_id: str | int, list_id: int) -> tuple[int, str] | None:
        """(subscriber id, membership status) for a link's token_id on a list, in one query (the
        unsubscribe hot path); None if no such subscriber or membership. Ints: as above."""
        condition = token_condition(token_id)
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
        no membership. Idempotent; only LEAVABLE statuses change (logged with `source`): the
        rule of `audience.leaving`, which serve's writer applies to many links at once."""
        check_source(source)
        with self._change() as conn:
            return leave_many(conn, [Leave(token_id, list_id, source, ip)])[0]

    def find_subscriber(self, email: str) -> Subscriber | None:
        """The subscriber with this address (any case of the address), or None."""
        key = lookup_key(email)
        if key is None:
            return None
        with self.read() as conn:
            row = conn.execute(sa.select(subscribers).where(subscribers.c.email_key == key)).first()
        return _subscriber(row) if row else None

    def members(self, list_id: int, status: str | None = "subscribed") -> list[Member]:
        """Members of a list with `status` (None: every status), in subscription order."""
        query = (
            sa.select(subscribers.c.id, subscribers.c.email, subscribers.c.name, subscribers.c.token_id,
                      memberships.c.topics, memberships.c.paused_until)
            .join(memberships, memberships.c.subscriber_id == subscribers.c.id)
            .where(memberships.c.list_id == list_id).order_by(subscribers.c.id)
        )
        if status is not None:
            check_status(status)
            query = query.where(memberships.c.status == status)
        with self.read() as conn:
            return [Member(r.id, r.email, r.name, r.token_id, r.topics, r.paused_until)
                    for r in conn.execute(query)]

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
            .order_by(by_code_point(subscribers.c.email_key), by_code_point(lists.c.name))
        )
        if list_id is not None:
            query = query.where(memberships.c.list_id == list_id)
        if status is not None:
            check_status(status)
            query = query.where(memberships.c.status == status)
        with self.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def memberships(self, subscriber_id: int) -> list[Membership]:
        with self.read() as conn:
            rows = conn.execute(
                sa.select(memberships, lists.c.name)
                .join(lists, lists.c.id == memberships.c.list_id)
                .where(memberships.c.subscriber_id == subscriber_id)
                .order_by(by_code_point(lists.c.name))
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
        check_status(status)
        check_source(source)
        with self._change() as conn:
            return writes.set_status(conn, subscriber_id, list_id, status, source, ip=ip,
                                     detail=detail)

    def request_subscription(self, email: str, list_id: int, *, name: str | None = None,
                             source: str = "web", ip: str | None = None,
                             consent_version: str | None = None) -> SignupResult:
        """Someone asks to join a list (double opt-in). Says whether to send a confirmation mail.

        new → pending, confirm; pending → pending, confirm again; unsubscribed / bounced →
        the status stays, confirm (`confirm` brings them back); subscribed / complained /
        suppressed → nothing changes, no mail.

        Anyone can type anyone's address, so nothing of the subscriber is changed here: `name`
        waits with the pending membership (`requested_name`; a repeated sign-up's name replaces
        it) and becomes the subscriber's name only with the confirmation. A name `clean_name`
        refuses is dropped: the form shows no error for it.
        """
        check_source(source)
        normalized = normalize_email(email)
        key = email_key(normalized)
        requested = name_or_none(name)
        with self._change() as conn:
            writes.lock_address(conn, key_hash(key))
            if writes.is_suppressed_key(conn, key):
                return SignupResult(None, False)
            now = utcnow()
            subscriber_id, token_id = writes.find_or_create_subscriber(conn, normalized, key, None, now)
            current = writes.status_for_update(conn, subscriber_id, list_id)
            change = signup_change(current)
            if change == "refused":
                return SignupResult(subscriber_id, False, token_id)
            if change == "join":
                writes.insert_membership(conn, subscriber_id, list_id, "pending", now,
                                         requested_name=requested)
            elif requested is not None:
                writes.request_name(conn, subscriber_id, list_id, requested)
            if change == "request":  # they left: the status stays until they confirm
                action, detail = str(current), f"sign-up; confirmation sent, {current} until confirmed"
            elif change == "unchanged":
                action, detail = "pending", "sign-up repeated, confirmation sent again"
            else:
                action, detail = "pending", "sign-up"
            writes.log(conn, subscriber_id, list_id, action, source, at=now, ip=ip,
                       consent_version=consent_version, detail=detail)
            return SignupResult(subscriber_id, True, token_id)

    def confirm(self, subscriber_id: int, list_id: int, *, source: str = "confirm",
                ip: str | None = None, requested_at: datetime | None = None) -> bool:
        """Double opt-in confirmed: pending → subscribed — or unsubscribed / bounced →
        subscribed when the link was asked for (`requested_at`, the token's time) after they
        left (`statuses.confirm_allowed`) — and the name given with the sign-up (if any) becomes
        the subscriber's name; both logged in one entry. Anything else stays as it is."""
        check_source(source)
        with self._change() as conn:
            if not writes.lock_subscriber(conn, subscriber_id):
                return False
            membership = writes.membership_for_update(conn, subscriber_id, list_id)
            if membership is None or not confirm_allowed(membership.status, membership.updated_at,
                                                         requested_at):
                return False
            now = utcnow()
            writes.update_membership(conn, subscriber_id, list_id, "subscribed", now)
            detail = "double opt-in confirmed"
            if membership.requested_name is not None:
                renamed = writes.apply_requested_name(conn, subscriber_id, membership.requested_name)
                detail += f"; {renamed}" if renamed else ""
            writes.log(conn, subscriber_id, list_id, "subscribed", source, at=now, ip=ip,
                       detail=detail)
            return True

    def add_subscriber(self, email: str, list_id: int, *, name: str | None = None,
                       confirmed: bool = False, source: str = "cli",
                       detail: str | None = None) -> tuple[int, bool]:
        """Add one address to a list by hand; (subscriber_id, changed).

        Refuses suppressed addresses, people who unsubscribed, bounced or complained, and a
        name `clean_name` refuses. A name given replaces the stored one.
        """
        check_source(source)
        normalized = normalize_email(email)
        key = email_key(normalized)
        try:
            name = clean_name(name)
        except InvalidName as exc:
            raise StoreError(f"{normalized}: {exc.message}") from None
        target = editor_target(None, confirmed)
        with self._change() as conn:
            writes.lock_address(conn, key_hash(key))
            if writes.is_suppressed_key(conn, key):
                raise StoreError(f"{normalized} is on the suppression list (erased on request or "
                                 "blocked); it cannot be added again")
            now = utcnow()
            subscriber_id, _token_id = writes.find_or_create_subscriber(conn, normalized, key, name, now)
            current = writes.status_for_update(conn, subscriber_id, list_id)
            change = editor_change(current, target)
            if change == "refused":
                raise StoreError(
                    f"{normalized} is {current} on this list; an editor cannot re-activate them — "
                    "they can sign up again themselves through the subscribe form"
                )
            if change == "unchanged":
                return subscriber_id, False
            changed = writes.set_status(
                conn, subscriber_id, list_id, target, source,
                detail=detail or ("editor confirmed prior consent" if confirmed
                                  else "added by editor, not yet confirmed"))
            return subscriber_id, changed

    def unsubscribe(self, email: str, list_id: int | None = None, *, source: str = "cli",
                    detail: str | None = None) -> list[str]:
        """Unsubscribe an address from one list or from all (by address: the CLI; an unsubscribe
        link uses `leave`); the names of the lists changed. Only LEAVABLE statuses change."""
        found = self.find_subscriber(email)
        if found is None:
            raise StoreError(f"no subscriber with the address {email.strip()}")
        with self._change() as conn:
            changed = writes.set_status_on_lists(conn, found.id, "unsubscribed", source, list_id=list_id,
                                                 detail=detail, only_from=LEAVABLE)
        if changed is None:
            raise StoreError(f"{found.email} is not on that list")
        return changed

    def forget(self, email: str, *, reason: str = "erased on request (GDPR Art. 17)") -> bool:
        """Erase a person (GDPR Art. 17): subscriber, memberships, consent log, the address in the
        send journal. Keeps only a hashed suppression entry so no import or sign-up brings the
        address back. True if a subscriber was found."""
        key = lookup_key(email)
        email_hash = suppression_hash(email)
        with self._change() as conn:
            # Looked up inside the write transaction, under the address lock: a sign-up racing
            # the erasure cannot slip by.
            writes.lock_address(conn, email_hash)
            found = conn.execute(
                sa.select(subscribers.c.id).where(subscribers.c.email_key == key).with_for_update()
            ).scalar() if key else None
            if found is not None:
                conn.execute(consent_log.delete().where(consent_log.c.subscriber_id == found))
                conn.execute(memberships.delete().where(memberships.c.subscriber_id == found))
                for erase in subscriber_erasers:  # e.g. the send journal's copies of the address
                    erase(conn, found)
                conn.execute(subscribers.delete().where(subscribers.c.id == found))
            writes.suppress(conn, email_hash, reason)
        if found is not None:
            self.checkpoint()
        return found is not None

    def checkpoint(self) -> bool:
        """SQLite: copy the WAL into the database file and empty it, so erased rows do not linger
        in `-wal` (secure_delete then has zeroed them in the file). True when fully done; False if
        a reader still needed old frames (the next checkpoint finishes it). No-op elsewhere."""
        return checkpoint(self.engine)

    def suppress(self, email: str, reason: str) -> None:
        email_hash = suppression_hash(email)
        with self.write() as conn:
            writes.lock_address(conn, email_hash)
            writes.suppress(conn, email_hash, reason)

    def is_suppressed(self, email: str) -> bool:
        with self.read() as conn:
            return writes.is_suppressed_hash(conn, suppression_hash(email))


# --- row → record, link → WHERE ------------------------------------------------------------


def _subscriber(row: Any) -> Subscriber:
    return Subscriber(row.id, row.email, row.name, dict(row.attributes or {}), row.created_at,
                      row.token_id, bool(row.legacy_tokens))


def open_store(project: Project) -> Store:
    """Open the project's database (creating the directory of a SQLite file)."""
    url = project.database_url
    make_sqlite_directory(url)
    return Store.open(url)
