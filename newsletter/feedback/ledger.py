"""Taking in one bounce or complaint: find whose delivery it is, apply the policy, record it.

One write transaction per event, so an event is either fully taken in (the event row, the
member's status, the consent-log entry, the delivery's journal row) or not at all. The event
row is inserted FIRST: its `event_key` is unique, so a second process taking in the same report
(two `bounces fetch` runs, a webhook retried while the first is still running) waits on the
insert and then finds the key taken — nothing is counted twice, without any retry loop.

Matching, most to least certain (docs/feedback.md):
1. the VERP tag, verified with the project key → (send, subscriber);
2. the original Message-ID, which names one delivery (each message has its own);
3. the failed recipient's address → the subscriber, and their latest delivery if any.

Policy (one place, `_apply`):
* hard bounce → `bounced` on the send's list (on every list they are subscribed to or pending on
  when no send is known: the address does not exist);
* soft bounce → counted; `soft_limit` soft bounces across at least `soft_sends` distinct sends
  within `soft_days` days make the member `bounced` on that list;
* complaint → `complained` on every list of the address, and the address suppressed.
Only `pending`/`subscribed` memberships change: somebody who unsubscribed stays unsubscribed.
Coming back after a bounce works through the double opt-in of the sign-up form only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from newsletter.audience import writes
from newsletter.audience.addresses import lookup_key, suppression_hash
from newsletter.audience.statuses import LEAVABLE
from newsletter.audience.store import Store
from newsletter.audience.tables import lists, subscribers
from newsletter.db.schema import utcnow
from newsletter.delivery.tables import deliveries, sends
from newsletter.delivery.verp import read_tag
from newsletter.feedback.tables import feedback_events

COUNTED_KINDS = frozenset({"hard", "soft", "complaint"})


@dataclass(frozen=True)
class Event:
    """One finding about one recipient, from a report mail or a provider webhook."""

    event_key: str  # unique per finding: a re-run or replay with the same key changes nothing
    source: str  # mailbox | ses | mailgun | postmark | generic
    kind: str  # hard | soft | complaint | auto_reply | delayed | unrecognised
    recipient: str | None = None
    status: str | None = None
    diagnostic: str | None = None
    tag: str | None = None
    message_id: str | None = None
    reported_at: datetime | None = None


@dataclass(frozen=True)
class Taken:
    """What taking an event in did."""

    outcome: str  # feedback.tables.OUTCOMES
    duplicate: bool = False  # the event had been taken in before: nothing changed now
    send_id: int | None = None
    subscriber_id: int | None = None
    lists: tuple[str, ...] = field(default=())  # lists whose membership changed


@dataclass(frozen=True)
class SoftRule:
    limit: int = 3
    sends: int = 2
    days: int = 30


class Ledger:
    def __init__(self, store: Store, keys: list[str], soft: SoftRule | None = None) -> None:
        self.store = store
        self.keys = keys
        self.soft = soft or SoftRule()

    def take(self, event: Event) -> Taken:
        with self.store.write() as conn:
            # A savepoint around the insert: on PostgreSQL a failed statement would otherwise
            # spoil the whole transaction.
            try:
                with conn.begin_nested():
                    event_id = conn.execute(feedback_events.insert().values(
                        event_key=event.event_key[:200], source=event.source, kind=event.kind,
                        outcome="ignored", recipient=event.recipient, status=event.status,
                        diagnostic=_clip(event.diagnostic), reported_at=event.reported_at,
                        received_at=utcnow(),
                    ).returning(feedback_events.c.id)).scalar_one()
            except sa.exc.IntegrityError:
                outcome = conn.execute(sa.select(feedback_events.c.outcome).where(
                    feedback_events.c.event_key == event.event_key[:200])).scalar()
                return Taken(outcome=outcome or "ignored", duplicate=True)
            if event.kind not in COUNTED_KINDS:
                return Taken(outcome="ignored")
            send_id, subscriber_id = _match(conn, event, self.keys)
            row = feedback_events.update().where(feedback_events.c.id == event_id)
            # Linked before the policy runs, so the soft-bounce count includes this event.
            conn.execute(row.values(send_id=send_id, subscriber_id=subscriber_id))
            if subscriber_id is None:
                taken = Taken(outcome="unmatched", send_id=send_id)
            else:
                writes.lock_tables(conn)
                taken = self._apply(conn, event, send_id, subscriber_id)
            conn.execute(row.values(outcome=taken.outcome))
            if taken.send_id is not None and taken.subscriber_id is not None:
                conn.execute(deliveries.update().where(
                    deliveries.c.send_id == taken.send_id,
                    deliveries.c.subscriber_id == taken.subscriber_id,
                ).values(feedback=event.kind, feedback_at=utcnow()))
            return taken

    def _apply(self, conn: Connection, event: Event, send_id: int | None, subscriber_id: int) -> Taken:
        detail = _detail(event)
        if event.kind == "complaint":
            changed = tuple(writes.set_status_on_lists(conn, subscriber_id, "complained", "complaint",
                                                       detail=detail) or ())
            email = conn.execute(sa.select(subscribers.c.email)
                                 .where(subscribers.c.id == subscriber_id)).scalar()
            if email:
                writes.suppress(conn, suppression_hash(email), "complaint")
            return Taken("complained" if changed else "unchanged", send_id=send_id,
                         subscriber_id=subscriber_id, lists=changed)
        if event.kind == "soft" and not self._soft_limit_reached(conn, subscriber_id):
            return Taken("counted", send_id=send_id, subscriber_id=subscriber_id)
        if send_id is None:
            changed = tuple(writes.set_status_on_lists(conn, subscriber_id, "bounced", "bounce",
                                                       detail=detail, only_from=LEAVABLE) or ())
        else:
            list_id = conn.execute(sa.select(sends.c.list_id).where(sends.c.id == send_id)).scalar()
            changed = ()
            if list_id is not None and writes.set_status(
                    conn, subscriber_id, list_id, "bounced", "bounce", detail=detail, only_from=LEAVABLE):
                changed = (_list_name(conn, list_id),)
        return Taken("bounced" if changed else "unchanged", send_id=send_id,
                     subscriber_id=subscriber_id, lists=changed)

    def _soft_limit_reached(self, conn: Connection, subscriber_id: int) -> bool:
        since = utcnow() - timedelta(days=self.soft.days)
        events = feedback_events.c
        count, distinct_sends = conn.execute(
            sa.select(sa.func.count(), sa.func.count(sa.distinct(events.send_id))).where(
                events.subscriber_id == subscriber_id, events.kind == "soft", events.received_at >= since,
            )).one()
        return int(count) >= self.soft.limit and int(distinct_sends) >= self.soft.sends


@dataclass(frozen=True)
class EventRow:
    """One event as `newsletter bounces ls` shows it."""

    id: int
    received_at: datetime
    reported_at: datetime | None
    source: str
    kind: str
    outcome: str
    send_id: int | None
    recipient: str | None
    status: str | None
    diagnostic: str | None

    def as_dict(self) -> dict[str, object]:
        return {**self.__dict__, "received_at": self.received_at.isoformat(),
                "reported_at": self.reported_at.isoformat() if self.reported_at else None}


def recent_events(store: Store, *, send_id: int | None = None, kind: str | None = None,
                  limit: int = 200) -> list[EventRow]:
    """The events taken in, newest first."""
    events = feedback_events.c
    query = sa.select(events.id, events.received_at, events.reported_at, events.source, events.kind,
                      events.outcome, events.send_id, events.recipient, events.status,
                      events.diagnostic).order_by(events.id.desc()).limit(limit)
    if send_id is not None:
        query = query.where(events.send_id == send_id)
    if kind is not None:
        query = query.where(events.kind == kind)
    with store.read() as conn:
        return [EventRow(*row) for row in conn.execute(query)]


def _match(conn: Connection, event: Event, keys: list[str]) -> tuple[int | None, int | None]:
    if event.tag:
        pair = read_tag(keys, event.tag)
        if pair is not None and _delivery_exists(conn, *pair):
            return pair
    if event.message_id:
        row = conn.execute(sa.select(deliveries.c.send_id, deliveries.c.subscriber_id).where(
            deliveries.c.message_id == event.message_id).limit(1)).first()
        if row is not None:
            return int(row.send_id), int(row.subscriber_id)
    key = lookup_key(event.recipient) if event.recipient else None
    if key is None:
        return None, None
    subscriber_id = conn.execute(sa.select(subscribers.c.id)
                                 .where(subscribers.c.email_key == key)).scalar()
    if subscriber_id is None:
        return None, None
    send_id = conn.execute(sa.select(sa.func.max(deliveries.c.send_id)).where(
        deliveries.c.subscriber_id == subscriber_id, deliveries.c.status == "sent")).scalar()
    return (int(send_id) if send_id is not None else None), int(subscriber_id)


def _delivery_exists(conn: Connection, send_id: int, subscriber_id: int) -> bool:
    return conn.execute(sa.select(deliveries.c.send_id).where(
        deliveries.c.send_id == send_id, deliveries.c.subscriber_id == subscriber_id)).first() is not None


def _list_name(conn: Connection, list_id: int) -> str:
    return str(conn.execute(sa.select(lists.c.name).where(lists.c.id == list_id)).scalar())


def _detail(event: Event) -> str:
    when = event.reported_at.strftime("%Y-%m-%d %H:%M UTC") if event.reported_at else "unknown date"
    what = " ".join(x for x in (event.status, _clip(event.diagnostic, 300)) if x) or event.kind
    return f"{event.kind} bounce ({event.source}, reported {when}): {what}" if event.kind != "complaint" \
        else f"complaint ({event.source}, reported {when})" + (f": {what}" if what != "complaint" else "")


def _clip(text: str | None, limit: int = 500) -> str | None:
    if text is None:
        return None
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"


def person_events(conn: Connection, subscriber_id: int) -> list[dict[str, Any]]:
    """Bounce and complaint reports taken in for the person."""
    e = feedback_events  # GDPR Art. 15: the preference page's data export
    return [dict(r._mapping) for r in conn.execute(
        sa.select(e.c.received_at, e.c.reported_at, e.c.kind, e.c.outcome, e.c.source, e.c.status,
                  e.c.diagnostic)
        .where(e.c.subscriber_id == subscriber_id).order_by(e.c.id))]
