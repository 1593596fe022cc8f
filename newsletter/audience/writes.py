"""The steps the store's writes are made of, each inside the caller's write transaction:
a membership status change with its consent-log entry, a subscriber found or created, a
suppression. Which change to make is decided by the rules in `audience/statuses.py`.

Locks. On SQLite the write transaction (`BEGIN IMMEDIATE`) is the only writer: nothing here
locks. On PostgreSQL several run at once, so every read a write depends on is locked first, in
one order — the tables (`lock_tables`), the address (`lock_address`), the subscriber's row
(`lock_subscriber`, `find_or_create_subscriber`), the membership's row (`membership_for_update`)
— and no update is lost: a second transaction waits, then reads what the first committed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from newsletter.audience.addresses import key_hash
from newsletter.audience.records import StoreError
from newsletter.audience.tables import (
    consent_log,
    lists,
    memberships,
    new_token_id,
    subscribers,
    suppressions,
)
from newsletter.db.schema import utcnow

# The advisory-lock class of addresses (pg_advisory_xact_lock(class, key)); the two-key form
# never meets the migrations' one-key lock.
_ADDRESS_LOCK_CLASS = 0x4E4C


def lock_tables(conn: Connection) -> None:
    """PostgreSQL: the table locks a change of subscribers and memberships needs, taken first
    and in the import's order. The import's publish holds SHARE ROW EXCLUSIVE on both tables;
    a write that first locked rows and only then asked for the table lock could wait for the
    publish while the publish waits for its rows (a deadlock)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("LOCK TABLE subscribers, memberships IN ROW EXCLUSIVE MODE"))


def lock_address(conn: Connection, email_hash: str) -> None:
    """PostgreSQL: one transaction at a time per address (its `suppression_hash`): a sign-up's
    or an add's suppression check and subscriber insert, and an erasure adding the suppression,
    never interleave — an address erased meanwhile cannot come back, nor be created twice."""
    if conn.dialect.name == "postgresql":
        key = int.from_bytes(bytes.fromhex(email_hash[:8]), "big", signed=True)
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_ADDRESS_LOCK_CLASS, key)))


def lock_subscriber(conn: Connection, subscriber_id: int) -> bool:
    """Lock the subscriber's row for the rest of the write; False if there is none. Membership
    changes of one person then run one at a time — also the creation of a membership, which no
    row lock on `memberships` can cover."""
    return conn.execute(
        sa.select(subscribers.c.id).where(subscribers.c.id == subscriber_id)
        .with_for_update(key_share=True)  # FOR NO KEY UPDATE: foreign-key checks need not wait
    ).first() is not None


def membership_for_update(conn: Connection, subscriber_id: int, list_id: int) -> sa.Row[Any] | None:
    """(status, requested_name, updated_at) of the membership (None: not on the list), row
    locked for the rest of the write."""
    return conn.execute(
        sa.select(memberships.c.status, memberships.c.requested_name, memberships.c.updated_at)
        .where(memberships.c.subscriber_id == subscriber_id, memberships.c.list_id == list_id)
        .with_for_update()
    ).first()


def status_for_update(conn: Connection, subscriber_id: int, list_id: int) -> str | None:
    """The membership's status (None: not on the list), row locked for the rest of the write."""
    row = membership_for_update(conn, subscriber_id, list_id)
    return row.status if row else None


def insert_membership(conn: Connection, subscriber_id: int, list_id: int, status: str,
                      now: datetime, *, requested_name: str | None = None) -> None:
    conn.execute(memberships.insert().values(
        subscriber_id=subscriber_id, list_id=list_id, status=status, created_at=now, updated_at=now,
        requested_name=requested_name,
    ))


def update_membership(conn: Connection, subscriber_id: int, list_id: int, status: str,
                      now: datetime, *, requested_name: str | None = None) -> None:
    """Change the status. Clears a sign-up's requested name unless one is given: it only lives
    while the sign-up waits for its confirmation."""
    conn.execute(
        memberships.update()
        .where(memberships.c.subscriber_id == subscriber_id, memberships.c.list_id == list_id)
        .values(status=status, updated_at=now, requested_name=requested_name)
    )


def request_name(conn: Connection, subscriber_id: int, list_id: int, name: str) -> None:
    """Keep the name of a repeated sign-up with the pending membership (the status stays)."""
    conn.execute(
        memberships.update()
        .where(memberships.c.subscriber_id == subscriber_id, memberships.c.list_id == list_id)
        .values(requested_name=name)
    )


def apply_requested_name(conn: Connection, subscriber_id: int, name: str) -> str | None:
    """A confirmed sign-up's name becomes the subscriber's name; the consent-log text saying so,
    None if it was the name already."""
    old = conn.execute(sa.select(subscribers.c.name).where(subscribers.c.id == subscriber_id)).scalar()
    if old == name:
        return None
    conn.execute(subscribers.update().where(subscribers.c.id == subscriber_id).values(name=name))
    return f"name set to {name!r} (given with the sign-up; was {old!r})" if old \
        else f"name set to {name!r} (given with the sign-up)"


def set_status(conn: Connection, subscriber_id: int, list_id: int, status: str, source: str, *,
               ip: str | None = None, detail: str | None = None,
               only_from: frozenset[str] | None = None) -> bool:
    """Set (or create) a membership's status and log it; False if it already had that status,
    or (`only_from`) had none of those statuses — checked on the locked row, so a change made
    since the caller looked is never overwritten."""
    if not lock_subscriber(conn, subscriber_id):
        raise StoreError(f"no subscriber {subscriber_id}")
    current = status_for_update(conn, subscriber_id, list_id)
    if current == status or (only_from is not None and current not in only_from):
        return False
    now = utcnow()
    if current is None:
        try:
            insert_membership(conn, subscriber_id, list_id, status, now)
        except sa.exc.IntegrityError:
            raise StoreError(f"no list {list_id}") from None  # the subscriber is locked: it exists
    else:
        update_membership(conn, subscriber_id, list_id, status, now)
    log(conn, subscriber_id, list_id, status, source, at=now, ip=ip, detail=detail)
    return True


def set_status_on_lists(conn: Connection, subscriber_id: int, status: str, source: str, *,
                        list_id: int | None = None, detail: str | None = None,
                        only_from: frozenset[str] | None = None) -> list[str] | None:
    """`set_status` on every list of the subscriber (or on `list_id` only); the names of the
    lists changed, in list order; None when `list_id` is given and they are not on it."""
    lock_subscriber(conn, subscriber_id)  # none: erased meanwhile, no rows below
    query = (sa.select(memberships.c.list_id, lists.c.name)
             .join(lists, lists.c.id == memberships.c.list_id)
             .where(memberships.c.subscriber_id == subscriber_id)
             .order_by(memberships.c.list_id))
    if list_id is not None:
        query = query.where(memberships.c.list_id == list_id)
    rows = conn.execute(query).all()
    if list_id is not None and not rows:
        return None
    return [row.name for row in rows if set_status(conn, subscriber_id, row.list_id, status, source,
                                                   detail=detail, only_from=only_from)]


def log(conn: Connection, subscriber_id: int, list_id: int | None, action: str, source: str, *,
        at: datetime, ip: str | None = None, consent_version: str | None = None,
        detail: str | None = None) -> None:
    """One consent-log entry: `action` is the membership status after the event."""
    conn.execute(consent_log.insert().values(
        subscriber_id=subscriber_id, list_id=list_id, at=at, action=action, source=source,
        ip=ip, consent_version=consent_version, detail=detail,
    ))


def find_or_create_subscriber(conn: Connection, normalized: str, key: str, name: str | None,
                              now: datetime) -> tuple[int, str]:
    """(id, token_id) of the subscriber with this address key, created if new (row locked).

    A `name` (already `clean_name`d) replaces the stored one: only an editor passes one. A
    sign-up passes None; its name waits for the confirmation (`Store.confirm`).
    """
    row = _subscriber_for_update(conn, key)
    if row is None:
        token_id = new_token_id()
        subscriber_id = _insert_subscriber(conn, dict(
            email=normalized, email_key=key, name=name or None, attributes={}, created_at=now,
            token_id=token_id,
        ))
        if subscriber_id is not None:
            return subscriber_id, token_id
        # PostgreSQL: an import created the address after our read; it is committed by now.
        row = _subscriber_for_update(conn, key)
        if row is None:
            raise StoreError(f"{normalized}: the address was created and removed again meanwhile; "
                             "try again")
    if name and name != row.name:
        conn.execute(subscribers.update().where(subscribers.c.id == row.id).values(name=name))
    return row.id, row.token_id


def _subscriber_for_update(conn: Connection, key: str) -> sa.Row[Any] | None:
    return conn.execute(
        sa.select(subscribers.c.id, subscribers.c.name, subscribers.c.token_id)
        .where(subscribers.c.email_key == key).with_for_update(key_share=True)
    ).first()


def _insert_subscriber(conn: Connection, values: dict[str, Any]) -> int | None:
    """The new row's id; None on PostgreSQL if the address exists after all (`ON CONFLICT DO
    NOTHING`: the insert waits for a concurrent one, e.g. an import's batch, instead of failing
    on the unique key). SQLite has no concurrent writer: a plain insert."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        return conn.execute(insert(subscribers).values(**values).on_conflict_do_nothing()
                            .returning(subscribers.c.id)).scalar()
    return int(conn.execute(subscribers.insert().values(**values)).inserted_primary_key[0])


def is_suppressed_key(conn: Connection, key: str) -> bool:
    """Whether the address with this `email_key` is on the suppression list."""
    return is_suppressed_hash(conn, key_hash(key))


def is_suppressed_hash(conn: Connection, email_hash: str) -> bool:
    return conn.execute(
        sa.select(suppressions.c.email_hash).where(suppressions.c.email_hash == email_hash)
    ).first() is not None


def suppress(conn: Connection, email_hash: str, reason: str) -> None:
    if not is_suppressed_hash(conn, email_hash):
        conn.execute(suppressions.insert().values(email_hash=email_hash, reason=reason, at=utcnow()))
