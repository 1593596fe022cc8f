"""The send journal (DESIGN.md section 5) over the delivery's `sends` and `deliveries` tables.

A send is (issue slug, list). Every recipient has a row:

    pending → sending → sent | failed_temporary | failed_permanent | skipped

A row becomes `sending` in a committed transaction *before* its message is handed to SMTP, so
after a crash the rows still `sending` are exactly the messages that may or may not have been
accepted (at most one per connection). A resume sends those again — nobody may miss the issue —
and flags them `possibly_duplicated` for good; everything already `sent` is never sent again.
A connection lost after the whole message was written is the same uncertainty: the row is
flagged when that result is recorded (it is sent again, by a retry or the next resume).
Why a send paused or was interrupted is kept in `sends.reason` (NULL while running and once
finished).

Writes are batched ("group commit"): one transaction records the results of the messages that
just finished, checks the subscription state of the next recipients (one query through
`audience.queries.membership_statuses`) and marks them `sending`.

The audience tables (subscribers, memberships, lists) are not touched here: the journal joins
the query pieces of `audience/queries.py`. See docs/data-model.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from newsletter.audience.queries import (
    list_names,
    membership_statuses,
    subscribed_members,
    subscriber_names,
)
from newsletter.db.schema import UtcDateTime, chunked, utcnow
from newsletter.delivery.tables import DELIVERY_STATUSES, deliveries, sends
from newsletter.errors import NewsletterError

if TYPE_CHECKING:  # only for annotations: delivery builds on audience, not the reverse
    from newsletter.audience.store import Store

OPEN = ("pending", "failed_temporary")
STOPPED = ("paused", "interrupted")
# Noted on a stopped send when a resume is refused because the issue changed.
CONTENT_CHANGED_NOTE = ("resume refused: the issue changed since this send started (re-run with "
                        "--force to send the new version to the rest)")


# The group commit's statements, built once (building them per commit costs more than the SQL).
_ROW = (deliveries.c.send_id == sa.bindparam("send")) & (
    deliveries.c.subscriber_id == sa.bindparam("sid"))
_RECORD = deliveries.update().where(_ROW).values(
    status=sa.bindparam("st"), smtp_code=sa.bindparam("code"), smtp_reply=sa.bindparam("reply"),
    updated_at=sa.bindparam("now"), attempts=deliveries.c.attempts + sa.bindparam("inc"),
    possibly_duplicated=deliveries.c.possibly_duplicated | sa.bindparam("dup", type_=sa.Boolean))
_CLAIM = deliveries.update().where(_ROW).values(
    status="sending", updated_at=sa.bindparam("now"), message_id=sa.bindparam("mid"))
_SKIP = deliveries.update().where(_ROW).values(
    status="skipped", updated_at=sa.bindparam("now"), smtp_code=None, smtp_reply=sa.bindparam("reply"))


class ContentChanged(NewsletterError):
    """The issue changed since the interrupted send started."""


@dataclass(frozen=True, slots=True)
class Job:
    """One recipient handed to a sending worker."""

    subscriber_id: int
    email: str
    name: str | None
    attempts: int = 0  # attempts in this run


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to a job: written to its row by the next `Journal.commit`."""

    job: Job
    status: str  # sent | failed_temporary | failed_permanent | pending (retry later / released)
    code: int | None = None
    reply: str | None = None
    counted: bool = True  # False: released unsent (connection failure), no attempt used
    uncertain: bool = False  # the server may have accepted it: flag the row possibly duplicated


@dataclass
class SendInfo:
    id: int
    issue_slug: str
    list_id: int
    list_name: str
    subject: str
    status: str
    transport: str
    content_hash: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    reason: str | None = None  # why it is paused / interrupted
    counts: dict[str, int] = field(default_factory=dict)
    # In flight at an interruption (flagged), or still `sending` (the next resume sends them again).
    possibly_duplicated: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "issue": self.issue_slug, "list": self.list_name, "subject": self.subject,
            "status": self.status, "reason": self.reason, "transport": self.transport,
            "created_at": self.created_at, "updated_at": self.updated_at,
            "finished_at": self.finished_at, "counts": self.counts,
            "possibly_duplicated": self.possibly_duplicated,
        }


@dataclass
class DeliveryRow:
    subscriber_id: int
    email: str
    status: str
    attempts: int
    smtp_code: int | None
    smtp_reply: str | None
    message_id: str | None
    updated_at: datetime
    possibly_duplicated: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "subscriber_id": self.subscriber_id, "email": self.email, "status": self.status,
            "attempts": self.attempts, "smtp_code": self.smtp_code, "smtp_reply": self.smtp_reply,
            "possibly_duplicated": self.possibly_duplicated, "updated_at": self.updated_at,
        }


@dataclass
class Resume:
    """The state a (new or resumed) send starts from."""

    send: SendInfo
    resumed: bool
    jobs: list[Job]  # rows still to send, in order


class Journal:
    def __init__(self, store: Store) -> None:
        self.store = store

    # --- reading ----------------------------------------------------------------------------

    def find(self, issue_slug: str, list_id: int) -> SendInfo | None:
        with self.store.read() as conn:
            row = conn.execute(sa.select(sends.c.id).where(
                sends.c.issue_slug == issue_slug, sends.c.list_id == list_id)).first()
        return self.get(row.id) if row else None

    def get(self, send_id: int) -> SendInfo | None:
        names = list_names()
        with self.store.read() as conn:
            row = conn.execute(
                sa.select(sends, names.c.name.label("list_name"))
                .join(names, names.c.list_id == sends.c.list_id).where(sends.c.id == send_id)).first()
            if row is None:
                return None
            counts = _counts(conn, [send_id]).get(send_id, {})
            duplicated = _duplicated(conn, [send_id]).get(send_id, [])
        return _info(row, counts, duplicated)

    def all(self) -> list[SendInfo]:
        names = list_names()
        with self.store.read() as conn:
            rows = conn.execute(
                sa.select(sends, names.c.name.label("list_name"))
                .join(names, names.c.list_id == sends.c.list_id).order_by(sends.c.id)).all()
            counts = _counts(conn, [r.id for r in rows])
            duplicated = _duplicated(conn, [r.id for r in rows])
        return [_info(r, counts.get(r.id, {}), duplicated.get(r.id, [])) for r in rows]

    def deliveries(self, send_id: int) -> list[DeliveryRow]:
        with self.store.read() as conn:
            rows = conn.execute(sa.select(deliveries).where(deliveries.c.send_id == send_id)
                                .order_by(deliveries.c.subscriber_id)).all()
        return [DeliveryRow(r.subscriber_id, r.email, r.status, r.attempts, r.smtp_code,
                            r.smtp_reply, r.message_id, r.updated_at, r.possibly_duplicated)
                for r in rows]

    def possibly_duplicated(self, send_id: int) -> list[str]:
        """Addresses whose message may have gone out twice: in flight at an interruption (already
        sent again by a resume), or still `sending` (the next resume sends them again)."""
        with self.store.read() as conn:
            return _duplicated(conn, [send_id]).get(send_id, [])

    # --- starting and resuming --------------------------------------------------------------

    def start(self, *, issue_slug: str, list_id: int, subject: str, content: str, transport: str,
              force: bool = False) -> Resume:
        """Create the send, or resume it: recover in-flight rows, add new members, list the work."""
        now = utcnow()
        with self.store.write() as conn:
            row = conn.execute(sa.select(sends).where(
                sends.c.issue_slug == issue_slug, sends.c.list_id == list_id)).first()
            resumed = row is not None
            if row is None:
                send_id = conn.execute(sends.insert().values(
                    issue_slug=issue_slug, list_id=list_id, content_hash=content, subject=subject,
                    status="running", transport=transport, created_at=now, updated_at=now,
                )).inserted_primary_key[0]
            else:
                send_id = row.id
                if row.content_hash != content and not force:
                    sent = conn.execute(sa.select(sa.func.count()).where(
                        deliveries.c.send_id == send_id, deliveries.c.status == "sent")).scalar_one()
                    names = list_names()
                    name = conn.execute(sa.select(names.c.name).where(
                        names.c.list_id == list_id)).scalar_one()
                    raise ContentChanged(
                        f"the issue `{issue_slug}` changed since send #{send_id} to the list "
                        f"`{name}` started ({row.created_at:%Y-%m-%d %H:%M} UTC); {sent} "
                        "recipients got the old version. Re-run with --force to send the new "
                        "version to the rest.")
                conn.execute(sends.update().where(sends.c.id == send_id).values(
                    status="running", reason=None, content_hash=content, subject=subject,
                    transport=transport, updated_at=now, finished_at=None))
            # A crash left these `sending`: maybe accepted, maybe not. Send again, flagged.
            conn.execute(deliveries.update().where(
                deliveries.c.send_id == send_id, deliveries.c.status == "sending",
            ).values(status="pending", possibly_duplicated=True, updated_at=now, smtp_code=None,
                     smtp_reply="in flight when the send stopped"))
            # Every subscribed member without a row (all of them on a new send; people who joined
            # since, on a resume) gets one — in SQL, so 100,000 members cost no Python memory.
            members = subscribed_members(list_id)
            done = sa.select(deliveries.c.subscriber_id).where(
                deliveries.c.send_id == send_id,
                deliveries.c.subscriber_id == members.c.subscriber_id)
            conn.execute(deliveries.insert().from_select(
                ["send_id", "subscriber_id", "email", "status", "attempts", "updated_at"],
                sa.select(sa.literal(send_id), members.c.subscriber_id, members.c.email,
                          sa.literal("pending"), sa.literal(0), sa.literal(now, UtcDateTime))
                .where(~sa.exists(done))
                .order_by(members.c.subscriber_id)))
            names = subscriber_names()
            rows = conn.execute(
                sa.select(deliveries.c.subscriber_id, deliveries.c.email, names.c.name)
                .outerjoin(names, names.c.subscriber_id == deliveries.c.subscriber_id)
                .where(deliveries.c.send_id == send_id, deliveries.c.status.in_(OPEN))
                .order_by(deliveries.c.subscriber_id))
            jobs = [Job(r.subscriber_id, r.email, r.name) for r in rows]
        info = self.get(send_id)
        assert info is not None
        return Resume(info, resumed, jobs)

    # --- the group commit -------------------------------------------------------------------

    def commit(self, send_id: int, list_id: int, outcomes: Iterable[Outcome],
               candidates: Sequence[Job], message_ids: dict[int, str]) -> tuple[list[Job], list[Job]]:
        """One transaction: record outcomes, check the candidates' subscription, mark them `sending`.

        Returns (jobs to send now, jobs skipped because the person is no longer subscribed).
        """
        now = utcnow()
        outcomes = list(outcomes)
        with self.store.write() as conn:
            if outcomes:
                conn.execute(_RECORD, [
                    {"send": send_id, "sid": o.job.subscriber_id, "st": o.status, "code": o.code,
                     "reply": o.reply, "inc": 1 if o.counted else 0, "now": now,
                     "dup": o.uncertain}
                    for o in outcomes])
            if not candidates:
                return [], []
            status = membership_statuses(conn, list_id, [c.subscriber_id for c in candidates])
            go = [c for c in candidates if status.get(c.subscriber_id) == "subscribed"]
            skip = [c for c in candidates if status.get(c.subscriber_id) != "subscribed"]
            if go:
                conn.execute(_CLAIM, [
                    {"send": send_id, "sid": c.subscriber_id, "mid": message_ids.get(c.subscriber_id),
                     "now": now} for c in go])
            if skip:
                conn.execute(_SKIP, [
                    {"send": send_id, "sid": c.subscriber_id, "now": now,
                     "reply": f"not sent: membership is {status.get(c.subscriber_id) or 'gone'}"}
                    for c in skip])
        return go, skip

    def finish(self, send_id: int, status: str, reason: str | None = None) -> None:
        """End a run: `finished`, or `paused` / `interrupted` with the reason (kept for `sends`)."""
        now = utcnow()
        finished = status == "finished"
        with self.store.write() as conn:
            conn.execute(sends.update().where(sends.c.id == send_id).values(
                status=status, reason=None if finished else reason, updated_at=now,
                finished_at=now if finished else None))

    def refuse_changed(self, send_id: int) -> None:
        """A resume was refused because the issue changed: note it on a paused or interrupted
        send, after the reason it stopped for (a running or finished send is left alone)."""
        with self.store.write() as conn:
            row = conn.execute(sa.select(sends.c.status, sends.c.reason)
                               .where(sends.c.id == send_id)).first()
            if row is None or row.status not in STOPPED or (row.reason or "").startswith(
                    CONTENT_CHANGED_NOTE):
                return
            reason = CONTENT_CHANGED_NOTE + (f"; it had stopped: {row.reason}" if row.reason else "")
            conn.execute(sends.update().where(sends.c.id == send_id).values(reason=reason))


def _duplicated(conn: sa.Connection, send_ids: list[int]) -> dict[int, list[str]]:
    """Per send, the addresses flagged possibly duplicated or still `sending`."""
    result: dict[int, list[str]] = {}
    for chunk in chunked(send_ids):
        rows = conn.execute(
            sa.select(deliveries.c.send_id, deliveries.c.email)
            .where(deliveries.c.send_id.in_(chunk),
                   deliveries.c.possibly_duplicated | (deliveries.c.status == "sending"))
            .order_by(deliveries.c.send_id, deliveries.c.subscriber_id)).all()
        for send_id, email in rows:
            result.setdefault(send_id, []).append(email)
    return result


def _counts(conn: sa.Connection, send_ids: list[int]) -> dict[int, dict[str, int]]:
    result: dict[int, dict[str, int]] = {}
    for chunk in chunked(send_ids):
        rows = conn.execute(
            sa.select(deliveries.c.send_id, deliveries.c.status, sa.func.count())
            .where(deliveries.c.send_id.in_(chunk))
            .group_by(deliveries.c.send_id, deliveries.c.status)).all()
        for send_id, status, count in rows:
            result.setdefault(send_id, {})[status] = count
    return result


def _info(row: Any, counts: dict[str, int], duplicated: list[str]) -> SendInfo:
    full = {s: counts.get(s, 0) for s in DELIVERY_STATUSES}
    full["total"] = sum(counts.values())
    return SendInfo(row.id, row.issue_slug, row.list_id, row.list_name, row.subject, row.status,
                    row.transport, row.content_hash, row.created_at, row.updated_at, row.finished_at,
                    row.reason, full, duplicated)
