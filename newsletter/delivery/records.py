"""The send journal's records and the queries that read them (`sends ls`, `sends show`, the plan).

`JournalReader` reads the `sends`, `deliveries` and `send_workers` tables; `journal.Journal`
adds every write to them. The dataclasses are what the journal hands the send loop (`Job`,
`Claimed`, `Resume`), takes back from it (`Outcome`) and shows the editor (`SendInfo`,
`DeliveryRow`).

The audience tables (subscribers, memberships, lists) are not touched here: the queries join the
pieces of `audience/queries.py`. See docs/data-model.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from newsletter.audience.queries import list_names, member_topics, subscribed_members, subscriber_names
from newsletter.db.schema import chunked, utcnow
from newsletter.delivery.lease import (
    SendBusy,
    WorkerInfo,
    busy_error,
    live_worker,
    with_counts,
    workers_of,
)
from newsletter.delivery.tables import DELIVERY_STATUSES, WHOLE_LIST, deliveries, sends
from newsletter.errors import NewsletterError

if TYPE_CHECKING:  # only for annotations: delivery builds on audience, not the reverse
    from newsletter.audience.segments import Segment
    from newsletter.audience.store import Store

# Noted on a stopped send when a resume is refused because the issue changed.
CONTENT_CHANGED_NOTE = ("resume refused: the issue changed since this send started (re-run with "
                        "--force to send the new version to the rest)")


def scheduled_refusal(send_id: int, issue_slug: str, audience: str, when: str) -> NewsletterError:
    """Why a send to start now is refused: the issue is scheduled for this list and segment."""
    return NewsletterError(f"send #{send_id} of `{issue_slug}` to {audience} is scheduled for "
                           f"{when}; to send it now, cancel it first: `newsletter sends cancel {send_id}`")


def resumable_by_scheduler(status: str, reason: str | None) -> bool:
    """A scheduled send that started and stopped without finishing, which the scheduler resumes
    once no run holds it: its run died (`running`), or the mail server failed (`interrupted`).
    Not `paused` (a policy streak: for the editor to look at), nor refused for a changed issue."""
    return status == "running" or (
        status == "interrupted" and not (reason or "").startswith(CONTENT_CHANGED_NOTE))


# What was reported about a delivered message afterwards (`deliveries.feedback`, filled by the
# feedback package's ledger).
FEEDBACK_KINDS = ("hard", "soft", "complaint")


@dataclass(frozen=True, slots=True)
class Job:
    """One recipient handed to a sending worker."""

    subscriber_id: int
    email: str
    name: str | None
    attempts: int = 0  # attempts in this run
    attributes: dict[str, object] | None = None  # only when the issue's personal fields need them
    # The topics the member chose on the send's list (only when the issue's sections have
    # topics); None: no choice, every section. Which mail they get: `delivery/variants.py`.
    topics: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Claimed:
    """What one group commit claimed."""

    go: list[Job] = field(default_factory=list)  # now `sending`: hand them to SMTP
    skipped: list[Job] = field(default_factory=list)  # no longer subscribed: `skipped`
    taken: list[Job] = field(default_factory=list)  # no longer open (not claimed, not touched)
    lease_lost: bool = False  # this worker's lease is gone: nothing was claimed; stop


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
    workers: list[WorkerInfo] = field(default_factory=list)  # its runs, oldest first
    # Reported after the send (bounce mails, provider events): hard / soft bounces, complaints.
    feedback: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FEEDBACK_KINDS, 0))
    segment: str = WHOLE_LIST  # the segment's name; "" for the whole list
    scheduled_at: datetime | None = None  # `send --at`: when it is (was) due, UTC
    issue_path: str | None = None  # a scheduled send's issue file, relative to the project
    segment_where: str | None = None  # the segment's condition when the send (last) started

    @property
    def audience(self) -> str:
        """`news`, or `news / jena` for a segment of the list: what the send went to."""
        return f"{self.list_name} / {self.segment}" if self.segment else self.list_name

    @property
    def open_rows(self) -> int:
        """Rows still to (re)try, in flight ones included."""
        return self.counts["pending"] + self.counts["failed_temporary"] + self.counts["sending"]

    def live_worker(self, now: datetime | None = None) -> WorkerInfo | None:
        """The oldest worker holding a live lease (as of when this was read), if any."""
        return next(iter(self.live_workers(now)), None)

    def live_workers(self, now: datetime | None = None) -> list[WorkerInfo]:
        """The workers holding a live lease (as of when this was read), oldest first."""
        now = now or utcnow()
        return [w for w in self.workers if w.state(now) == "live"]

    def as_dict(self) -> dict[str, Any]:
        now = utcnow()
        return {
            "id": self.id, "issue": self.issue_slug, "list": self.list_name,
            "segment": self.segment or None, "segment_where": self.segment_where,
            "subject": self.subject, "status": self.status,
            "scheduled_at": self.scheduled_at, "issue_path": self.issue_path,
            "reason": self.reason, "transport": self.transport,
            "created_at": self.created_at, "updated_at": self.updated_at,
            "finished_at": self.finished_at, "counts": self.counts, "feedback": self.feedback,
            "possibly_duplicated": self.possibly_duplicated,
            "workers": [w.as_dict(now) for w in self.workers],
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
    feedback: str | None = None  # hard | soft | complaint, reported after the send

    def as_dict(self) -> dict[str, Any]:
        return {
            "subscriber_id": self.subscriber_id, "email": self.email, "status": self.status,
            "attempts": self.attempts, "smtp_code": self.smtp_code, "smtp_reply": self.smtp_reply,
            "possibly_duplicated": self.possibly_duplicated, "updated_at": self.updated_at,
            "feedback": self.feedback,
        }


@dataclass
class Resume:
    """The state a (new or resumed) send starts from."""

    send: SendInfo
    resumed: bool
    jobs: list[Job]  # rows still to send, in order
    # PostgreSQL: the live workers this run joined (they share the rows out with it).
    joined: list[WorkerInfo] = field(default_factory=list)


class JournalReader:
    """The journal's read side; `journal.Journal` adds the writes."""

    def __init__(self, store: Store, *, attributes: bool = False, topics: bool = False) -> None:
        self.store = store
        # Jobs carry the subscribers' attributes (the issue has personal fields that need them).
        self.attributes = attributes
        # Jobs carry the members' topics (the issue's sections have topics).
        self.topics = topics

    @property
    def joinable(self) -> bool:
        """Several runs may send one send at once: PostgreSQL, whose row locks let claims skip
        each other's rows. SQLite locks the whole file per write: one run at a time."""
        return self.store.engine.dialect.name == "postgresql"

    def find(self, issue_slug: str, list_id: int, segment: str = WHOLE_LIST) -> SendInfo | None:
        """The send of the issue to the list (or to the segment `segment` of it)."""
        with self.store.read() as conn:
            row = conn.execute(sa.select(sends.c.id).where(
                sends.c.issue_slug == issue_slug, sends.c.list_id == list_id,
                sends.c.segment == segment)).first()
        return self.get(row.id) if row else None

    def due(self, now: datetime | None = None) -> list[SendInfo]:
        """Scheduled sends whose time has come (`scheduled_at <= now`), the longest due first."""
        with self.store.read() as conn:
            ids = conn.execute(sa.select(sends.c.id).where(
                sends.c.status == "scheduled", sends.c.scheduled_at <= (now or utcnow()))
                .order_by(sends.c.scheduled_at, sends.c.id)).scalars().all()
        return [info for info in map(self.get, ids) if info is not None]

    def next_due(self) -> datetime | None:
        """When the earliest scheduled send is due (None: nothing is scheduled)."""
        with self.store.read() as conn:
            return conn.execute(sa.select(sa.func.min(sends.c.scheduled_at))
                                .where(sends.c.status == "scheduled")).scalar()

    def orphaned_scheduled(self, now: datetime | None = None) -> list[SendInfo]:
        """Scheduled sends that were started and did not finish, with no live worker: the
        process that ran them was killed (or the machine went away), or the mail server failed
        (`resumable_by_scheduler`); the scheduler resumes them."""
        now = now or utcnow()
        with self.store.read() as conn:
            rows = conn.execute(sa.select(sends.c.id, sends.c.status, sends.c.reason).where(
                sends.c.status.in_(("running", "interrupted")), sends.c.issue_path.is_not(None))
                .order_by(sends.c.scheduled_at, sends.c.id)).all()
            orphans = [r.id for r in rows if resumable_by_scheduler(r.status, r.reason)
                       and live_worker(conn, r.id, now) is None]
        return [info for info in map(self.get, orphans) if info is not None]

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
            workers = with_counts(conn, send_id, workers_of(conn, [send_id]).get(send_id, []))
            feedback = _feedback(conn, [send_id]).get(send_id, {})
        return _info(row, counts, duplicated, workers, feedback)

    def all(self, issue_slug: str | None = None) -> list[SendInfo]:
        """Every send, oldest first; with `issue_slug`, the sends of that issue only."""
        names = list_names()
        query = (sa.select(sends, names.c.name.label("list_name"))
                 .join(names, names.c.list_id == sends.c.list_id).order_by(sends.c.id))
        if issue_slug is not None:
            query = query.where(sends.c.issue_slug == issue_slug)
        with self.store.read() as conn:
            rows = conn.execute(query).all()
            ids = [r.id for r in rows]
            counts = _counts(conn, ids)
            duplicated = _duplicated(conn, ids)
            workers = workers_of(conn, ids)
            feedback = _feedback(conn, ids)
        return [_info(r, counts.get(r.id, {}), duplicated.get(r.id, []), workers.get(r.id, []),
                      feedback.get(r.id, {})) for r in rows]

    def last_finished(self) -> SendInfo | None:
        """The project's most recently finished send, whatever its list: a mailbox provider
        judges the sender, so that send's complaints and bounces speak for the next one."""
        with self.store.read() as conn:
            send_id = conn.execute(
                sa.select(sends.c.id).where(sends.c.status == "finished")
                .order_by(sends.c.finished_at.desc(), sends.c.id.desc()).limit(1)).scalar()
        return None if send_id is None else self.get(send_id)

    def live_worker(self, send_id: int) -> WorkerInfo | None:
        """The worker holding the send's lease now, if any."""
        with self.store.read() as conn:
            return live_worker(conn, send_id, utcnow())

    def busy_error(self, send_id: int) -> SendBusy | None:
        """The refusal `start` would give now because another worker holds the lease, or None
        (always None on PostgreSQL, where the run would join)."""
        if self.joinable:
            return None
        now = utcnow()
        with self.store.read() as conn:
            holder = live_worker(conn, send_id, now)
            return None if holder is None else busy_error(conn, send_id, holder, now)

    def deliveries(self, send_id: int) -> list[DeliveryRow]:
        with self.store.read() as conn:
            rows = conn.execute(sa.select(deliveries).where(deliveries.c.send_id == send_id)
                                .order_by(deliveries.c.subscriber_id)).all()
        return [DeliveryRow(r.subscriber_id, r.email, r.status, r.attempts, r.smtp_code,
                            r.smtp_reply, r.message_id, r.updated_at, r.possibly_duplicated,
                            r.feedback)
                for r in rows]

    def possibly_duplicated(self, send_id: int) -> list[str]:
        """Addresses whose message may have gone out twice: in flight at an interruption (already
        sent again by a resume), or still `sending` (the next resume sends them again)."""
        with self.store.read() as conn:
            return _duplicated(conn, [send_id]).get(send_id, [])

    def sent_elsewhere(self, issue_slug: str, list_id: int, segment: Segment | None = None,
                       send_id: int | None = None) -> int:
        """Subscribed members (of the segment) without a row in the send `send_id` (None: a new
        send) whom another send of the issue to the list has sent it: the send skips them."""
        members, done = without_row(send_id or 0, list_id, segment)  # no send has id 0
        got_it = sent_by_another(issue_slug, list_id, send_id or 0, members.c.subscriber_id)
        with self.store.read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(members).where(
                got_it, ~sa.exists(done))).scalar_one())

    def joined_since(self, send_id: int, list_id: int, segment: Segment | None = None) -> int:
        """Subscribed members (of the segment) without a row in the send: those who joined
        after it started (a resume sends to them too)."""
        members, done = without_row(send_id, list_id, segment)
        with self.store.read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(members)
                                    .where(~sa.exists(done))).scalar_one())


def jobs_in(conn: sa.Connection, send_id: int, statuses: Sequence[str],
            order: sa.ColumnElement[Any], *, attributes: bool = False, topics: bool = False) -> list[Job]:
    """The send's rows in `statuses` as jobs, with the subscriber's name (and attributes, and
    the topics they chose on the send's list)."""
    names = subscriber_names()
    columns = [deliveries.c.subscriber_id, deliveries.c.email, names.c.name]
    if attributes:
        columns.append(names.c.attributes)
    query = sa.select(*columns).outerjoin(names, names.c.subscriber_id == deliveries.c.subscriber_id)
    if topics:
        chosen = member_topics()
        list_id = sa.select(sends.c.list_id).where(sends.c.id == send_id).scalar_subquery()
        query = query.add_columns(chosen.c.topics).outerjoin(chosen, sa.and_(
            chosen.c.subscriber_id == deliveries.c.subscriber_id, chosen.c.list_id == list_id))
    rows = conn.execute(query.where(deliveries.c.send_id == send_id,
                                    deliveries.c.status.in_(statuses)).order_by(order))
    return [Job(r.subscriber_id, r.email, r.name,
                attributes=(r.attributes or {}) if attributes else None,
                topics=_topics(r.topics) if topics else None) for r in rows]


def _topics(value: Any) -> frozenset[str] | None:
    """A stored choice as keys; NULL (and anything that is not a list of keys): no choice."""
    if not isinstance(value, list):
        return None
    return frozenset(key for key in value if isinstance(key, str))


def sent_by_another(issue_slug: str, list_id: int, send_id: int,
                    subscriber_id: sa.ColumnElement[int]) -> sa.Exists:
    """EXISTS: a send of the issue to the list other than `send_id` has sent it to the subscriber
    `subscriber_id` (a correlated column), or has it in flight. Nobody gets an issue twice from
    one list (`journal._skip_sent_elsewhere`, the count `send` shows)."""
    other, theirs = sends.alias("other"), deliveries.alias("theirs")
    return sa.exists(sa.select(theirs.c.subscriber_id).join(other, other.c.id == theirs.c.send_id)
                     .where(other.c.issue_slug == issue_slug, other.c.list_id == list_id,
                            other.c.id != send_id, theirs.c.status.in_(("sent", "sending")),
                            theirs.c.subscriber_id == subscriber_id))


def without_row(send_id: int, list_id: int,
                segment: Segment | None = None) -> tuple[sa.Subquery, sa.Select[Any]]:
    """The list's subscribed members (those of `segment`, as it is defined now), and the
    condition "has a row in this send" (negate it)."""
    members = subscribed_members(list_id, segment)
    done = sa.select(deliveries.c.subscriber_id).where(
        deliveries.c.send_id == send_id, deliveries.c.subscriber_id == members.c.subscriber_id)
    return members, done


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


def _feedback(conn: sa.Connection, send_ids: list[int]) -> dict[int, dict[str, int]]:
    """Per send, how many of its deliveries were reported as each `FEEDBACK_KINDS`."""
    result: dict[int, dict[str, int]] = {}
    for chunk in chunked(send_ids):
        rows = conn.execute(
            sa.select(deliveries.c.send_id, deliveries.c.feedback, sa.func.count())
            .where(deliveries.c.send_id.in_(chunk), deliveries.c.feedback.is_not(None))
            .group_by(deliveries.c.send_id, deliveries.c.feedback)).all()
        for send_id, kind, count in rows:
            result.setdefault(send_id, {})[kind] = count
    return result


def _info(row: Any, counts: dict[str, int], duplicated: list[str], workers: list[WorkerInfo],
          feedback: dict[str, int]) -> SendInfo:
    full = {s: counts.get(s, 0) for s in DELIVERY_STATUSES}
    full["total"] = sum(counts.values())
    return SendInfo(row.id, row.issue_slug, row.list_id, row.list_name, row.subject, row.status,
                    row.transport, row.content_hash, row.created_at, row.updated_at, row.finished_at,
                    row.reason, full, duplicated, workers,
                    {kind: feedback.get(kind, 0) for kind in FEEDBACK_KINDS},
                    row.segment, row.scheduled_at, row.issue_path, row.segment_where)


def person_deliveries(conn: sa.Connection, subscriber_id: int) -> list[dict[str, Any]]:
    """The send journal's rows of the person: which issue, when, what became of it."""
    names = list_names()
    return [dict(r._mapping) for r in conn.execute(
        sa.select(sends.c.issue_slug.label("issue"), sends.c.subject, names.c.name.label("list"),
                  deliveries.c.status, deliveries.c.updated_at.label("at"), deliveries.c.feedback,
                  deliveries.c.feedback_at)
        .join(sends, sends.c.id == deliveries.c.send_id)
        .outerjoin(names, names.c.list_id == sends.c.list_id)
        .where(deliveries.c.subscriber_id == subscriber_id)
        .order_by(deliveries.c.updated_at, deliveries.c.send_id))]
