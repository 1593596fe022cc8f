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

A run of a send holds a *lease*: a `send_workers` row (random worker id, host, pid) taken in
`start`'s write transaction, renewed every `Worker.heartbeat` seconds (`heartbeat`, from the send
loop's journal thread) and released when the run ends (`finish`). On SQLite, while a worker's
lease is live, `start` refuses (`SendBusy`). On PostgreSQL a further run *joins*: it takes a
lease of its own and the workers share the rows out through the claim (`FOR UPDATE SKIP
LOCKED`, from an open status only); the last worker to end sets the send's status. A worker
whose lease expired (killed, machine gone) is presumed dead: its rows still `sending` are handed
on, flagged, exactly as after a crash, by whichever worker notices (`start`, `heartbeat`,
`refill`, `finish`); a live worker's rows never are. A claim takes a row only
from `pending` / `failed_temporary` (the row's status now, not the job list's), and only while
the claiming worker's lease is live; results are recorded only onto rows the worker still has
`sending`. So even a bug elsewhere, or a worker that was suspended past its lease and taken
over, cannot send a row twice except the rows flagged possibly duplicated.

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
from newsletter.delivery.lease import (
    LEASE_ROW,
    RENEW,
    SendBusy,
    Worker,
    WorkerInfo,
    busy_error,
    hand_on,
    live_worker,
    live_workers,
    with_counts,
    workers_of,
)
from newsletter.delivery.tables import DELIVERY_STATUSES, deliveries, send_workers, sends
from newsletter.errors import NewsletterError

if TYPE_CHECKING:  # only for annotations: delivery builds on audience, not the reverse
    from newsletter.audience.store import Store

OPEN = ("pending", "failed_temporary")  # the statuses a claim takes a row from
STOPPED = ("paused", "interrupted")
# Noted on a stopped send when a resume is refused because the issue changed.
CONTENT_CHANGED_NOTE = ("resume refused: the issue changed since this send started (re-run with "
                        "--force to send the new version to the rest)")

# The lease (docs/delivery.md): a worker that has not renewed it for LEASE_SECONDS is presumed
# dead; a running send renews it every HEARTBEAT_SECONDS (at most a sixth of the lease, so five
# renewals in a row can be late before it runs out). LEASE_ENV overrides the lease length of the
# runs of this process (tests; a slow shared disk); the heartbeat follows it.

_ROW = (deliveries.c.send_id == sa.bindparam("send")) & (
    deliveries.c.subscriber_id == sa.bindparam("sid"))
# Only onto a row this worker still has `sending`: if its lease ran out and the row was handed on,
# the result is dropped (the row is flagged possibly duplicated and sent by the new owner).
_RECORD = deliveries.update().where(
    _ROW, deliveries.c.status == "sending", deliveries.c.worker_id == sa.bindparam("worker"),
).values(
    status=sa.bindparam("st"), smtp_code=sa.bindparam("code"), smtp_reply=sa.bindparam("reply"),
    updated_at=sa.bindparam("now"), attempts=deliveries.c.attempts + sa.bindparam("inc"),
    possibly_duplicated=deliveries.c.possibly_duplicated | sa.bindparam("dup", type_=sa.Boolean))
# `status IN ('pending', 'failed_temporary')` spelled out: executemany takes no expanding IN.
_IS_OPEN = deliveries.c.status.in_([sa.literal_column(f"'{status}'") for status in OPEN])
# The claim: which candidates are still open *now* (locked; on PostgreSQL rows another worker has
# locked are skipped, not waited for), then the UPDATE, again only from an open status.
CLAIMABLE = sa.select(deliveries.c.subscriber_id).where(
    deliveries.c.send_id == sa.bindparam("send"),
    deliveries.c.subscriber_id.in_(sa.bindparam("sids", expanding=True)),
    _IS_OPEN,
).order_by(deliveries.c.subscriber_id).with_for_update(skip_locked=True)
CLAIM = deliveries.update().where(_ROW, _IS_OPEN).values(
    status="sending", updated_at=sa.bindparam("now"), message_id=sa.bindparam("mid"),
    worker_id=sa.bindparam("worker"))
_SKIP = deliveries.update().where(_ROW, _IS_OPEN).values(
    status="skipped", updated_at=sa.bindparam("now"), smtp_code=None, smtp_reply=sa.bindparam("reply"))


class ContentChanged(NewsletterError):
    """The issue changed since the interrupted send started."""


class ClaimConflict(RuntimeError):
    """The claim's UPDATE changed fewer rows than the locked SELECT found open: a bug, never the
    editor's doing. Raised inside the group commit, so nothing of that commit is kept."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """What one group commit claimed."""

    go: list[Job] = field(default_factory=list)  # now `sending`: hand them to SMTP
    skipped: list[Job] = field(default_factory=list)  # no longer subscribed: `skipped`
    taken: list[Job] = field(default_factory=list)  # no longer open (not claimed, not touched)
    lease_lost: bool = False  # this worker's lease is gone: nothing was claimed; stop


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
    workers: list[WorkerInfo] = field(default_factory=list)  # its runs, oldest first

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
            "id": self.id, "issue": self.issue_slug, "list": self.list_name, "subject": self.subject,
            "status": self.status, "reason": self.reason, "transport": self.transport,
            "created_at": self.created_at, "updated_at": self.updated_at,
            "finished_at": self.finished_at, "counts": self.counts,
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
    # PostgreSQL: the live workers this run joined (they share the rows out with it).
    joined: list[WorkerInfo] = field(default_factory=list)


class Journal:
    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def joinable(self) -> bool:
        """Several runs may send one send at once: PostgreSQL, whose row locks let claims skip
        each other's rows. SQLite locks the whole file per write: one run at a time."""
        return self.store.engine.dialect.name == "postgresql"

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
            workers = with_counts(conn, send_id, workers_of(conn, [send_id]).get(send_id, []))
        return _info(row, counts, duplicated, workers)

    def all(self) -> list[SendInfo]:
        names = list_names()
        with self.store.read() as conn:
            rows = conn.execute(
                sa.select(sends, names.c.name.label("list_name"))
                .join(names, names.c.list_id == sends.c.list_id).order_by(sends.c.id)).all()
            counts = _counts(conn, [r.id for r in rows])
            duplicated = _duplicated(conn, [r.id for r in rows])
            workers = workers_of(conn, [r.id for r in rows])
        return [_info(r, counts.get(r.id, {}), duplicated.get(r.id, []), workers.get(r.id, []))
                for r in rows]

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
                            r.smtp_reply, r.message_id, r.updated_at, r.possibly_duplicated)
                for r in rows]

    def possibly_duplicated(self, send_id: int) -> list[str]:
        """Addresses whose message may have gone out twice: in flight at an interruption (already
        sent again by a resume), or still `sending` (the next resume sends them again)."""
        with self.store.read() as conn:
            return _duplicated(conn, [send_id]).get(send_id, [])

    # --- starting and resuming --------------------------------------------------------------

    def joined_since(self, send_id: int, list_id: int) -> int:
        """Subscribed members without a row in the send: those who joined after it started
        (a resume sends to them too)."""
        members, done = _without_row(send_id, list_id)
        with self.store.read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(members)
                                    .where(~sa.exists(done))).scalar_one())

    def start(self, *, issue_slug: str, list_id: int, subject: str, content: str, transport: str,
              worker: Worker, force: bool = False) -> Resume:
        """Create the send, or resume it, as `worker`: take a lease, hand on the rows of dead
        workers, add new members, list the work. One write transaction, the send's row locked.
        While another worker's lease is live: on SQLite refused (`SendBusy`), on PostgreSQL this
        run joins it (same version of the issue only) and lists the open rows from the other end,
        so the workers meet in the middle instead of racing for the same rows."""
        now = utcnow()
        with self.store.write() as conn:
            row = self._locked_send(conn, issue_slug, list_id)
            resumed = row is not None
            joined: list[WorkerInfo] = []
            if row is None:
                send_id = self._create_send(conn, issue_slug, list_id, subject, content, transport, now)
                if send_id is None:  # PostgreSQL: another run created it a moment ago
                    row = self._locked_send(conn, issue_slug, list_id)
                    assert row is not None
                    resumed = True
            if row is not None:
                send_id = row.id
                joined = live_workers(conn, send_id, now)
                if joined and not self.joinable:
                    raise busy_error(conn, send_id, joined[0], now)
                if row.content_hash != content and (joined or not force):
                    raise self._changed(conn, row, issue_slug, list_id, joined, now)
                if joined:  # the send is running: its status and reason are the workers' to set
                    conn.execute(sends.update().where(sends.c.id == send_id).values(updated_at=now))
                else:
                    conn.execute(sends.update().where(sends.c.id == send_id).values(
                        status="running", reason=None, content_hash=content, subject=subject,
                        transport=transport, updated_at=now, finished_at=None))
            hand_on(conn, send_id, now)
            conn.execute(send_workers.insert().values(
                worker_id=worker.id, send_id=send_id, host=worker.host, pid=worker.pid,
                started_at=now, heartbeat_at=now, lease_expires_at=worker.expires(now)))
            # Every subscribed member without a row (all of them on a new send; people who joined
            # since, on a resume) gets one — in SQL, so 100,000 members cost no Python memory.
            members, done = _without_row(send_id, list_id)
            conn.execute(deliveries.insert().from_select(
                ["send_id", "subscriber_id", "email", "status", "attempts", "updated_at"],
                sa.select(sa.literal(send_id), members.c.subscriber_id, members.c.email,
                          sa.literal("pending"), sa.literal(0), sa.literal(now, UtcDateTime))
                .where(~sa.exists(done))
                .order_by(members.c.subscriber_id)))
            order = deliveries.c.subscriber_id.desc() if joined else deliveries.c.subscriber_id
            jobs = _jobs(conn, send_id, OPEN, order)
        info = self.get(send_id)
        assert info is not None
        return Resume(info, resumed, jobs, joined)

    @staticmethod
    def _locked_send(conn: sa.Connection, issue_slug: str, list_id: int) -> Any:
        """The send's row, locked until the end of the transaction (PostgreSQL; SQLite's
        BEGIN IMMEDIATE has locked the whole file already)."""
        return conn.execute(sa.select(sends).where(
            sends.c.issue_slug == issue_slug, sends.c.list_id == list_id).with_for_update()).first()

    @staticmethod
    def _create_send(conn: sa.Connection, issue_slug: str, list_id: int, subject: str,
                     content: str, transport: str, now: datetime) -> int | None:
        """Insert the send; None if another run inserted it first (two runs started at once on
        PostgreSQL: the second INSERT waits for the first transaction, then conflicts)."""
        try:
            with conn.begin_nested():
                return int(conn.execute(sends.insert().values(
                    issue_slug=issue_slug, list_id=list_id, content_hash=content, subject=subject,
                    status="running", transport=transport, created_at=now, updated_at=now,
                )).inserted_primary_key[0])
        except sa.exc.IntegrityError:
            return None

    @staticmethod
    def _changed(conn: sa.Connection, row: Any, issue_slug: str, list_id: int,
                 joined: list[WorkerInfo], now: datetime) -> ContentChanged:
        names = list_names()
        name = conn.execute(sa.select(names.c.name).where(names.c.list_id == list_id)).scalar_one()
        if joined:  # two versions at once: never, --force or not
            first = joined[0]
            return ContentChanged(
                f"the issue `{issue_slug}` changed since send #{row.id} to the list `{name}` "
                f"started, and pid {first.pid} on host {first.host} is sending the other version "
                "right now; wait for it to finish (then --force sends the new version to the rest)")
        sent = conn.execute(sa.select(sa.func.count()).where(
            deliveries.c.send_id == row.id, deliveries.c.status == "sent")).scalar_one()
        return ContentChanged(
            f"the issue `{issue_slug}` changed since send #{row.id} to the list "
            f"`{name}` started ({row.created_at:%Y-%m-%d %H:%M} UTC); {sent} "
            "recipients got the old version. Re-run with --force to send the new "
            "version to the rest.")

    def refill(self, send_id: int, worker: Worker) -> list[Job]:
        """More work for a worker whose own list ran out: hand on the rows of dead workers, then
        every `pending` row (handed on, released by another worker, waiting for another worker's
        retry). Not `failed_temporary`: those this send already tried in this round. Empty once
        the worker's lease is gone. The send's row is locked first, so a hand-on in progress
        elsewhere is waited for, not missed."""
        now = utcnow()
        with self.store.write() as conn:
            conn.execute(sa.select(sends.c.id).where(sends.c.id == send_id).with_for_update())
            lease = conn.execute(LEASE_ROW, {"worker": worker.id}).first()
            if lease is None or lease.released_at is not None or lease.lease_expires_at <= now:
                return []
            hand_on(conn, send_id, now)
            return _jobs(conn, send_id, ("pending",), deliveries.c.subscriber_id)

    # --- the group commit -------------------------------------------------------------------

    def commit(self, send_id: int, list_id: int, worker: Worker, outcomes: Iterable[Outcome],
               candidates: Sequence[Job], message_ids: dict[int, str]) -> Claimed:
        """One transaction: record outcomes, then — while `worker`'s lease is live — take the
        candidates whose rows are still open, check their subscription, mark them `sending`."""
        now = utcnow()
        # Rows are locked in subscriber order everywhere (the claim, `hand_on`): no deadlocks.
        outcomes = sorted(outcomes, key=lambda o: o.job.subscriber_id)
        with self.store.write() as conn:
            if outcomes:
                conn.execute(_RECORD, [
                    {"send": send_id, "sid": o.job.subscriber_id, "st": o.status, "code": o.code,
                     "reply": o.reply, "inc": 1 if o.counted else 0, "now": now,
                     "dup": o.uncertain, "worker": worker.id}
                    for o in outcomes])
            if not candidates:
                return Claimed()
            lease = conn.execute(LEASE_ROW, {"worker": worker.id}).first()
            if lease is None or lease.released_at is not None or lease.lease_expires_at <= now:
                return Claimed(lease_lost=True)
            open_now = set(conn.execute(CLAIMABLE, {
                "send": send_id, "sids": [c.subscriber_id for c in candidates]}).scalars())
            mine = [c for c in candidates if c.subscriber_id in open_now]
            taken = [c for c in candidates if c.subscriber_id not in open_now]
            status = membership_statuses(conn, list_id, [c.subscriber_id for c in mine])
            go = [c for c in mine if status.get(c.subscriber_id) == "subscribed"]
            skip = [c for c in mine if status.get(c.subscriber_id) != "subscribed"]
            if go:
                claimed = conn.execute(CLAIM, [
                    {"send": send_id, "sid": c.subscriber_id, "mid": message_ids.get(c.subscriber_id),
                     "now": now, "worker": worker.id} for c in go]).rowcount
                if conn.dialect.supports_sane_multi_rowcount and claimed != len(go):
                    raise ClaimConflict(f"claimed {claimed} of {len(go)} open rows of send #{send_id}")
            if skip:
                conn.execute(_SKIP, [
                    {"send": send_id, "sid": c.subscriber_id, "now": now,
                     "reply": f"not sent: membership is {status.get(c.subscriber_id) or 'gone'}"}
                    for c in skip])
        return Claimed(go, skip, taken)

    def heartbeat(self, worker: Worker, send_id: int | None = None) -> bool:
        """Renew `worker`'s lease; False if it is no longer live (expired or released): the
        worker must stop claiming (its rows may have been handed on). With `send_id`, also hand
        on the rows of the send's dead workers — unless another worker is doing so right now
        (the send's row is locked: `SKIP LOCKED`, a renewal never waits for it)."""
        now = utcnow()
        with self.store.write() as conn:
            held = conn.execute(RENEW, {"worker": worker.id, "now": now,
                                        "until": worker.expires(now)}).rowcount == 1
            if held and send_id is not None and conn.execute(
                    sa.select(sends.c.id).where(sends.c.id == send_id)
                    .with_for_update(skip_locked=True)).first() is not None:
                hand_on(conn, send_id, now)
            return held

    def finish(self, send_id: int, worker: Worker, status: str,
               reason: str | None = None) -> list[WorkerInfo]:
        """End a run: release `worker`'s lease. If other workers are live (PostgreSQL: runs that
        joined; or one that took the send over after this one's lease ran out), the send's status
        is theirs to set: returns them. Else this was the last worker: dead workers' rows are
        handed on and the send is set `finished` — or `interrupted` if rows are still to send
        (a worker died after this one's last look) — or `paused` / `interrupted` with the reason
        (kept for `sends`); returns []. The send's row is locked first: of two workers ending at
        once, the second sees the first's release, so exactly one of them is the last."""
        now = utcnow()
        with self.store.write() as conn:
            conn.execute(sa.select(sends.c.id).where(sends.c.id == send_id).with_for_update())
            conn.execute(send_workers.update().where(
                send_workers.c.worker_id == worker.id, send_workers.c.released_at.is_(None),
            ).values(released_at=now))
            others = live_workers(conn, send_id, now)
            if others:
                return others
            if status == "finished":
                hand_on(conn, send_id, now)
                left = conn.execute(sa.select(sa.func.count()).where(
                    deliveries.c.send_id == send_id,
                    deliveries.c.status.in_(("pending", "sending")))).scalar_one()
                if left:
                    status, reason = "interrupted", (
                        f"{left} message(s) still to send: another run of this send stopped "
                        "before it finished them (those it had in flight are sent again, flagged "
                        "possibly duplicated); re-run the same command to send them")
            finished = status == "finished"
            conn.execute(sends.update().where(sends.c.id == send_id).values(
                status=status, reason=None if finished else reason, updated_at=now,
                finished_at=now if finished else None))
        return []

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


def _jobs(conn: sa.Connection, send_id: int, statuses: Sequence[str],
          order: sa.ColumnElement[Any]) -> list[Job]:
    """The send's rows in `statuses` as jobs, with the subscriber's name."""
    names = subscriber_names()
    rows = conn.execute(
        sa.select(deliveries.c.subscriber_id, deliveries.c.email, names.c.name)
        .outerjoin(names, names.c.subscriber_id == deliveries.c.subscriber_id)
        .where(deliveries.c.send_id == send_id, deliveries.c.status.in_(statuses))
        .order_by(order))
    return [Job(r.subscriber_id, r.email, r.name) for r in rows]


def _without_row(send_id: int, list_id: int) -> tuple[sa.Subquery, sa.Select[Any]]:
    """The list's subscribed members, and the condition "has a row in this send" (negate it)."""
    members = subscribed_members(list_id)
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


def _info(row: Any, counts: dict[str, int], duplicated: list[str],
          workers: list[WorkerInfo]) -> SendInfo:
    full = {s: counts.get(s, 0) for s in DELIVERY_STATUSES}
    full["total"] = sum(counts.values())
    return SendInfo(row.id, row.issue_slug, row.list_id, row.list_name, row.subject, row.status,
                    row.transport, row.content_hash, row.created_at, row.updated_at, row.finished_at,
                    row.reason, full, duplicated, workers)
