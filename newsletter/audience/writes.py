"""The steps the store's writes are made of, each inside the caller's write transaction:
a membership status change with its consent-log entry, a subscriber found or created, a
suppression. Which change to make is decided by the rules in `audience/statuses.py`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from newsletter.audience.addresses import key_hash
from newsletter.audience.records import StoreError
from newsletter.audience.tables import consent_log, memberships, new_token_id, subscribers, suppressions
from newsletter.db.schema import utcnow


def membership_for_update(conn: Connection, subscriber_id: int, list_id: int) -> sa.Row[Any] | None:
    """(status, requested_name) of the membership (None: not on the list), row locked for the
    rest of the write."""
    return conn.execute(
        sa.select(memberships.c.status, memberships.c.requested_name)
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
               ip: str | None = None, detail: str | None = None) -> bool:
    """Set (or create) a membership's status and log it; False if it already had that status."""
    current = status_for_update(conn, subscriber_id, list_id)
    if current == status:
        return False
    now = utcnow()
    if current is None:
        try:
            insert_membership(conn, subscriber_id, list_id, status, now)
        except sa.exc.IntegrityError:
            raise StoreError(f"no subscriber {subscriber_id} or no list {list_id}") from None
    else:
        update_membership(conn, subscriber_id, list_id, status, now)
    log(conn, subscriber_id, list_id, status, source, at=now, ip=ip, detail=detail)
    return True


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
    if name and name != row.name:
        conn.execute(subscribers.update().where(subscribers.c.id == row.id).values(name=name))
    return row.id, row.token_id


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
