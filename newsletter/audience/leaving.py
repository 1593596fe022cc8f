"""Unsubscribe links used: the rule of leaving a list, for one link (`Store.leave`) and for a
batch of them in one transaction (`newsletter serve`'s writer) — the same code for both.

Idempotent (a link used twice changes once); only LEAVABLE statuses change (a bounce or a
complaint recorded before stays); every change is logged with its source. Statuses are read
inside the write with the rows locked in one order (subscriber, list), so two PostgreSQL
transactions leaving at once cannot deadlock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from newsletter.audience.statuses import LEAVABLE
from newsletter.audience.tables import consent_log, lists, memberships, subscribers
from newsletter.db.schema import UtcDateTime, utcnow


def token_condition(token_id: object) -> sa.ColumnElement[bool] | None:
    """The WHERE clause finding the subscriber a link names; None for a malformed reference.

    A str is a `token_id`; an int is a subscriber id from a link mailed before migration 4,
    valid only for rows that existed then (`legacy_tokens`).
    """
    if isinstance(token_id, bool) or not isinstance(token_id, (str, int)) or token_id == "":
        return None
    if isinstance(token_id, str):
        return subscribers.c.token_id == token_id
    return sa.and_(subscribers.c.id == token_id, subscribers.c.legacy_tokens == sa.true())


@dataclass(frozen=True)
class Leave:
    """An unsubscribe link used: the token's reference, its list, who, from where."""

    token_id: str | int
    list_id: int
    source: str
    ip: str | None


class Left(NamedTuple):
    """A membership a link names: its subscriber, the status before, and its list (the page
    that answers the link shows the list's title)."""

    subscriber_id: int
    status: str
    list_name: str
    list_title: str | None


def leave_many(conn: Connection, items: list[Leave]) -> list[tuple[int, str] | None]:
    """Leave for each link, inside the caller's write transaction, in order: per item
    (subscriber id, status before) or None if the link names no membership."""
    return [(left.subscriber_id, left.status) if left else None for left in leave_batch(conn, items)]


def leave_batch(conn: Connection, items: list[Leave]) -> list[Left | None]:
    """`leave_many` with each membership's list: the statements of `writes.update_membership`
    and `writes.log` in bulk form, each run once for all items — in the server every statement
    gives up the GIL and waits to get it back from the event loop, and every statement
    SQLAlchemy has to compile anew costs more than the rest of the batch."""
    found: dict[tuple[str | int, int], Left] = {}
    names = sorted({i.token_id for i in items if isinstance(i.token_id, str) and i.token_id})
    if names:
        found = {(r.token_id, r.list_id): Left(r.id, r.status, r.name, r.title)
                 for r in conn.execute(_FIND, {"names": names})}
    for item in items:  # links mailed before migration 4 name the subscriber id: rare, one by one
        condition = None if isinstance(item.token_id, str) else token_condition(item.token_id)
        if condition is not None:
            row = conn.execute(
                sa.select(subscribers.c.id, memberships.c.status, lists.c.name, lists.c.title)
                .join(memberships, memberships.c.subscriber_id == subscribers.c.id)
                .join(lists, lists.c.id == memberships.c.list_id)
                .where(memberships.c.list_id == item.list_id, condition)
                .with_for_update(of=memberships)).first()
            if row:
                found[(item.token_id, item.list_id)] = Left(row.id, row.status, row.name, row.title)
    changes: dict[int, set[int]] = {}  # list id → subscriber ids
    entries: list[tuple[int, int, str, str | None]] = []  # subscriber, list, source, ip
    results: list[Left | None] = []
    for item in items:
        key = (item.token_id, item.list_id)
        hit = found.get(key)
        results.append(hit)
        if hit is not None and hit.status in LEAVABLE:
            found[key] = hit._replace(status="unsubscribed")  # a repeat in this batch: no-op
            changes.setdefault(item.list_id, set()).add(hit.subscriber_id)
            entries.append((hit.subscriber_id, item.list_id, item.source, item.ip))
    if not entries:
        return results
    now = utcnow()
    for list_id, ids in changes.items():
        conn.execute(_UNSUBSCRIBE, {"list": list_id, "ids": sorted(ids), "now": now})
    _log(conn, now, entries)
    return results


def _log(conn: Connection, now: Any, entries: list[tuple[int, int, str, str | None]]) -> None:
    """The consent-log rows of a batch (action "unsubscribed" at `now`) in one statement that is
    compiled once: a multi-row `INSERT … VALUES` is compiled by SQLAlchemy on every execution
    (≈ 0.2 ms a row, most of the writer's time under load)."""
    if conn.dialect.name == "sqlite":
        # One statement, one step: the rows go in as one JSON parameter (SQLite's JSON functions
        # are built in since 3.38). An executemany would step once per row, and every step gives
        # up the GIL.
        conn.execute(_LOG_SQLITE, {"at": now, "rows": json.dumps(entries)})
    else:
        # psycopg sends an executemany in one pipeline: one round trip.
        conn.execute(_LOG, [{"subscriber_id": s, "list_id": lst, "at": now, "source": source, "ip": ip}
                            for s, lst, source, ip in entries])


# Built once: the hot path should not pay for building statements.
_FIND = (
    sa.select(subscribers.c.id, subscribers.c.token_id, memberships.c.list_id, memberships.c.status,
              lists.c.name, lists.c.title)
    .join(memberships, memberships.c.subscriber_id == subscribers.c.id)
    .join(lists, lists.c.id == memberships.c.list_id)
    # Not narrowed by list in SQL: with `list_id = ?` SQLite walked the list's index (every
    # member, 9 ms for 20,000) instead of the token_id index; the rows are filtered here.
    .where(subscribers.c.token_id.in_(sa.bindparam("names", expanding=True)))
    .order_by(memberships.c.subscriber_id, memberships.c.list_id)
    .with_for_update(of=memberships)
)
# writes.update_membership's statement: the status, its time, the sign-up's name cleared.
_UNSUBSCRIBE = (
    memberships.update()
    .where(memberships.c.list_id == sa.bindparam("list"),
           memberships.c.subscriber_id.in_(sa.bindparam("ids", expanding=True)))
    .values(status="unsubscribed", requested_name=None,
            updated_at=sa.bindparam("now", type_=UtcDateTime()))
)
_LOG = consent_log.insert().values(at=sa.bindparam("at", type_=UtcDateTime()), action="unsubscribed")
_LOG_SQLITE = sa.text(
    "INSERT INTO consent_log (subscriber_id, list_id, at, action, source, ip) "
    "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), :at, 'unsubscribed', "
    "json_extract(value, '$[2]'), json_extract(value, '$[3]') FROM json_each(:rows) ORDER BY key"
).bindparams(sa.bindparam("at", type_=UtcDateTime()))
