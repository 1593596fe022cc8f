"""The preference centre's rules (no web): what a member may change about themselves on their
page `/p/<token>` — topics, name, a pause —, what is stored about them (GDPR Art. 15), and
their erasure (Art. 17, `Store.forget`). The pages are `newsletter/web/preferences.py`.

* Topics are declared per list in newsletter.toml (`[topics.<list>] key = "German label"`);
  `memberships.topics` holds the keys chosen, NULL for "no choice": every section. Choosing
  none or every topic of the list stores NULL (the member then also gets topics added later);
  a proper subset is stored as a list of keys in the order of the configuration. Keys the
  list does not declare (any more) are ignored, on the way in and when shown.
* A pause (1, 3 or 6 months, calendar months from now) sets `memberships.paused_until`; the
  status stays "subscribed". `resume` clears it.
* Only memberships that are pending or subscribed (`LEAVABLE`) can be changed: whoever left,
  bounced or complained has nothing to choose.
* Every change writes one consent-log entry (source "preferences", action: the status the
  membership keeps, detail: what changed) in the transaction of the change; a change to what
  already is writes nothing. A rename writes one entry per membership of the person.
* Locks (PostgreSQL), the store's order (`audience/writes.py`): the tables, the subscriber's
  row, the membership's row.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from newsletter.audience import writes
from newsletter.audience.names import clean_name
from newsletter.audience.statuses import LEAVABLE
from newsletter.audience.store import Store
from newsletter.audience.tables import consent_log, lists, memberships, subscribers
from newsletter.db.schema import by_code_point, utcnow
from newsletter.errors import NewsletterError

SOURCE = "preferences"
PAUSE_MONTHS = (1, 3, 6)
ERASE_REASON = "erased on request on the preference page (GDPR Art. 17)"

# A part of the data export that another package owns (the send journal, the feedback ledger):
# `part(conn, subscriber_id)` → rows, inside the export's read transaction. The web layer hands
# them in; the audience package never imports the packages above it.
ExportPart = tuple[str, Callable[[Connection, int], list[dict[str, Any]]]]


class PreferenceError(NewsletterError):
    """A change the page cannot make: no such membership, a status that cannot change, a list
    without topics, a pause length not offered."""


@dataclass(frozen=True)
class Topic:
    key: str
    label: str
    chosen: bool


@dataclass(frozen=True)
class ListChoices:
    """One membership as the page shows it."""

    list_id: int
    list_name: str
    list_title: str | None
    status: str
    changeable: bool  # pending or subscribed: topics and pause can be changed
    topics: tuple[Topic, ...]  # the list's topics, each with whether it is chosen
    all_topics: bool  # no choice stored (NULL): every section
    paused_until: datetime | None  # in the future only; a pause that is over is None


@dataclass(frozen=True)
class Overview:
    subscriber_id: int
    name: str | None
    lists: tuple[ListChoices, ...]


def add_months(moment: datetime, months: int) -> datetime:
    """`moment` plus calendar months (the 31 January plus one month is the 28/29 February)."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


class Preferences:
    """The preference centre's operations on one store. `topics`: `Settings.topics`."""

    def __init__(self, store: Store, topics: dict[str, dict[str, str]]) -> None:
        self.store = store
        self.topics = topics

    # ---- reading

    def overview(self, subscriber_id: int, *, now: datetime | None = None) -> Overview | None:
        """The subscriber's name and lists with their choices; None if there is no such person."""
        now = now or utcnow()
        with self.store.read() as conn:
            name = conn.execute(sa.select(subscribers.c.id, subscribers.c.name)
                                .where(subscribers.c.id == subscriber_id)).first()
            if name is None:
                return None
            rows = conn.execute(
                sa.select(memberships.c.list_id, memberships.c.status, memberships.c.topics,
                          memberships.c.paused_until, lists.c.name, lists.c.title)
                .join(lists, lists.c.id == memberships.c.list_id)
                .where(memberships.c.subscriber_id == subscriber_id)
                .order_by(by_code_point(lists.c.name))).all()
        choices = []
        for row in rows:
            declared = self.topics.get(row.name, {})
            stored = self._known(row.name, row.topics) if row.topics is not None else None
            chosen = set(declared) if not stored else set(stored)
            paused = row.paused_until if row.paused_until and row.paused_until > now else None
            choices.append(ListChoices(
                row.list_id, row.name, row.title, row.status, row.status in LEAVABLE,
                tuple(Topic(key, label, key in chosen) for key, label in declared.items()),
                not stored, paused))
        return Overview(subscriber_id, name.name, tuple(choices))

    def _known(self, list_name: str, keys: Iterable[Any]) -> list[str]:
        """`keys` that the list declares, in the order of the configuration."""
        given = {k for k in keys if isinstance(k, str)}
        return [key for key in self.topics.get(list_name, {}) if key in given]

    def _choice(self, list_name: str, keys: Iterable[Any]) -> list[str] | None:
        """What is stored for a selection: None for none or all of the list's topics."""
        chosen = self._known(list_name, keys)
        return None if not chosen or len(chosen) == len(self.topics.get(list_name, {})) else chosen

    # ---- changes (each its own write transaction)

    def choose_topics(self, subscriber_id: int, list_id: int, keys: Iterable[str], *,
                      ip: str | None = None) -> bool:
        """Store the topics chosen on one list; True if that changed anything. None or all of
        the list's topics: NULL (everything); unknown keys are ignored."""
        with _locked(self.store, subscriber_id, list_id) as (conn, row):
            declared = self.topics.get(row.list_name, {})
            if not declared:
                raise PreferenceError(f"list {row.list_name} has no topics")
            value = self._choice(row.list_name, keys)
            before = None if row.topics is None else self._choice(row.list_name, row.topics)
            if value == before:
                return False
            conn.execute(_this(subscriber_id, list_id).values(topics=value))
            detail = ("topics: all (no choice)" if value is None
                      else "topics chosen: " + ", ".join(value))
            writes.log(conn, subscriber_id, list_id, row.status, SOURCE, at=utcnow(), ip=ip,
                       detail=detail)
            return True

    def pause(self, subscriber_id: int, list_id: int, months: int, *, ip: str | None = None,
              now: datetime | None = None) -> datetime:
        """Pause one list for 1, 3 or 6 months from now; the time it ends."""
        if months not in PAUSE_MONTHS:
            raise PreferenceError(f"a pause is {', '.join(map(str, PAUSE_MONTHS))} months long")
        now = now or utcnow()
        until = add_months(now, months)
        with _locked(self.store, subscriber_id, list_id) as (conn, row):
            conn.execute(_this(subscriber_id, list_id).values(paused_until=until))
            writes.log(conn, subscriber_id, list_id, row.status, SOURCE, at=now, ip=ip,
                       detail=f"paused for {months} month{'s' if months > 1 else ''}, "
                              f"until {until:%Y-%m-%d %H:%M} UTC")
        return until

    def resume(self, subscriber_id: int, list_id: int, *, ip: str | None = None) -> bool:
        """End a pause of one list; True if it was paused."""
        with _locked(self.store, subscriber_id, list_id) as (conn, row):
            if row.paused_until is None:
                return False
            conn.execute(_this(subscriber_id, list_id).values(paused_until=None))
            writes.log(conn, subscriber_id, list_id, row.status, SOURCE, at=utcnow(), ip=ip,
                       detail=f"pause ended (was until {row.paused_until:%Y-%m-%d %H:%M} UTC)")
            return True

    def rename(self, subscriber_id: int, name: str | None, *, ip: str | None = None) -> bool:
        """Set the subscriber's name (`clean_name`: raises `InvalidName`; empty: no name); True
        if it changed. Logged once per membership, with the status it keeps."""
        cleaned = clean_name(name)
        with self.store.write() as conn:
            writes.lock_tables(conn)
            if not writes.lock_subscriber(conn, subscriber_id):
                raise PreferenceError("no such subscriber")
            old = conn.execute(sa.select(subscribers.c.name)
                               .where(subscribers.c.id == subscriber_id)).scalar()
            if old == cleaned:
                return False
            conn.execute(subscribers.update().where(subscribers.c.id == subscriber_id)
                         .values(name=cleaned))
            now = utcnow()
            detail = f"name set to {cleaned!r} (was {old!r})" if cleaned else f"name removed (was {old!r})"
            rows = conn.execute(sa.select(memberships.c.list_id, memberships.c.status)
                                .where(memberships.c.subscriber_id == subscriber_id)
                                .order_by(memberships.c.list_id).with_for_update()).all()
            for row in rows:
                writes.log(conn, subscriber_id, row.list_id, row.status, SOURCE, at=now, ip=ip,
                           detail=detail)
            return True

    def forget(self, subscriber_id: int) -> bool:
        """Erase the person (GDPR Art. 17): `Store.forget`, the erasure of `subscribers remove
        --forget` — everything goes, the consent log too; a hashed suppression entry stays so
        nothing brings the address back. False if they were gone already."""
        found = self.store.subscriber(subscriber_id)
        if found is None:
            return False
        return self.store.forget(found.email, reason=ERASE_REASON)

    # ---- GDPR Art. 15

    def export(self, subscriber_id: int, parts: Sequence[ExportPart] = ()) -> dict[str, Any] | None:
        """Everything stored about the person, JSON-ready (times as ISO 8601 strings): the
        subscriber row with its attributes, every membership with status, topics and pause, the
        whole consent log, and the `parts` of other packages (e.g. the send journal's deliveries,
        bounce and complaint reports). None if there is no such person. One read transaction."""
        with self.store.read() as conn:
            person = conn.execute(sa.select(subscribers).where(subscribers.c.id == subscriber_id)).first()
            if person is None:
                return None
            member_rows = conn.execute(
                sa.select(memberships, lists.c.name.label("list"), lists.c.title.label("list_title"))
                .join(lists, lists.c.id == memberships.c.list_id)
                .where(memberships.c.subscriber_id == subscriber_id)
                .order_by(by_code_point(lists.c.name))).all()
            log_rows = conn.execute(
                sa.select(consent_log, lists.c.name.label("list"))
                .outerjoin(lists, lists.c.id == consent_log.c.list_id)
                .where(consent_log.c.subscriber_id == subscriber_id)
                .order_by(consent_log.c.id)).all()
            extra = {name: [{k: _iso(v) for k, v in row.items()} for row in part(conn, subscriber_id)]
                     for name, part in parts}
        return {
            "exported_at": _iso(utcnow()),
            "subscriber": {"email": person.email, "name": person.name,
                           "attributes": dict(person.attributes or {}),
                           "created_at": _iso(person.created_at)},
            "memberships": [{
                "list": r.list, "list_title": r.list_title, "status": r.status,
                "topics": r.topics, "paused_until": _iso(r.paused_until),
                "requested_name": r.requested_name,
                "created_at": _iso(r.created_at), "updated_at": _iso(r.updated_at),
            } for r in member_rows],
            "consent_log": [{
                "at": _iso(r.at), "list": r.list, "action": r.action, "source": r.source,
                "ip": r.ip, "consent_version": r.consent_version, "detail": r.detail,
            } for r in log_rows],
            **extra,
        }

@dataclass(frozen=True)
class _Row:
    list_name: str
    status: str
    topics: Any
    paused_until: datetime | None


@contextmanager
def _locked(store: Store, subscriber_id: int, list_id: int) -> Iterator[tuple[Connection, _Row]]:
    """A write transaction with the subscriber's and the membership's rows locked (in the
    store's order); (conn, the membership). `PreferenceError` if it cannot change."""
    with store.write() as conn:
        writes.lock_tables(conn)
        if not writes.lock_subscriber(conn, subscriber_id):
            raise PreferenceError("no such subscriber")
        if writes.membership_for_update(conn, subscriber_id, list_id) is None:
            raise PreferenceError("not on this list")
        row = conn.execute(
            sa.select(lists.c.name, memberships.c.status, memberships.c.topics, memberships.c.paused_until)
            .join(lists, lists.c.id == memberships.c.list_id)
            .where(memberships.c.subscriber_id == subscriber_id, memberships.c.list_id == list_id)).one()
        if row.status not in LEAVABLE:
            raise PreferenceError(f"the membership is {row.status}")
        yield conn, _Row(row.name, row.status, row.topics, row.paused_until)


def _this(subscriber_id: int, list_id: int) -> sa.Update:
    return memberships.update().where(memberships.c.subscriber_id == subscriber_id,
                                      memberships.c.list_id == list_id)


__all__ = ["ERASE_REASON", "PAUSE_MONTHS", "SOURCE", "ExportPart", "ListChoices", "Overview",
           "PreferenceError", "Preferences", "Topic", "add_months"]
