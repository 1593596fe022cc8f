"""The send journal (docs/delivery.md) over the delivery's `sends` and `deliveries` tables.

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
`audience.queries.membership_states`: status and pause) and marks them `sending`.

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

The reads (`sends ls`, `sends show`, the plan) and the records are `records.py`'s. The
audience tables (subscribers, memberships, lists) are not touched here: the journal joins
the query pieces of `audience/queries.py`. See docs/data-model.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from newsletter.audience.queries import list_names, membership_states
from newsletter.db.schema import UtcDateTime, utcnow
from newsletter.delivery.lease import (
    LEASE_ROW,
    RENEW,
    Worker,
    WorkerInfo,
    busy_error,
    hand_on,
    live_workers,
)
from newsletter.delivery.records import (
    CONTENT_CHANGED_NOTE,
    Claimed,
    Job,
    JournalReader,
    Outcome,
    Resume,
    SendInfo,
    jobs_in,
    resumable_by_scheduler,
    scheduled_refusal,
    sent_by_another,
    without_row,
)
from newsletter.delivery.tables import WHOLE_LIST, audience_text, deliveries, send_workers, sends
from newsletter.errors import NewsletterError

if TYPE_CHECKING:
    from newsletter.audience.segments import Segment

OPEN = ("pending", "failed_temporary")  # the statuses a claim takes a row from
STOPPED = ("paused", "interrupted")

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


def _not_mailed(state: tuple[str, datetime | None] | None, now: datetime) -> str | None:
    """Why a member is not mailed now (the journal's `smtp_reply` of the skipped row), or None:
    no longer subscribed, or paused on the preference page (final for this send: the member
    gets the sends after the pause)."""
    if state is None or state[0] != "subscribed":
        return f"not sent: membership is {state[0] if state else 'gone'}"
    paused_until = state[1]
    if paused_until is not None and paused_until > now:
        return f"not sent: paused until {paused_until:%Y-%m-%d}"
    return None


# The journal's `smtp_reply` of a member who got the issue from another send to the same list
# (the whole list and a segment of it, or two segments that overlap).
SENT_ELSEWHERE = "not sent: got this issue from another send to the list"


def _skip_sent_elsewhere(conn: sa.Connection, send_id: int, issue_slug: str, list_id: int,
                         now: datetime) -> None:
    """Mark `skipped` the send's pending rows of members whom another send of the same issue to
    the same list has sent it (or has it in flight): nobody gets an issue twice from one list."""
    conn.execute(deliveries.update().where(
        deliveries.c.send_id == send_id, deliveries.c.status == "pending",
        sent_by_another(issue_slug, list_id, send_id, deliveries.c.subscriber_id),
    ).values(status="skipped", smtp_reply=SENT_ELSEWHERE, updated_at=now))


class ContentChanged(NewsletterError):
    """The issue changed since the interrupted send started."""


class SegmentChanged(NewsletterError):
    """The segment's condition changed since the send started: resuming would change who the
    send is for. `--force` resumes under the new condition."""


class AlreadyStarted(NewsletterError):
    """The scheduler's start of a send found it no longer `scheduled`: another process (serve
    worker, machine) started it, or it was cancelled. Not an error of anyone: nothing to do."""


class ClaimConflict(RuntimeError):
    """The claim's UPDATE changed fewer rows than the locked SELECT found open: a bug, never the
    editor's doing. Raised inside the group commit, so nothing of that commit is kept."""


class Journal(JournalReader):
    """The journal's write transactions; the reads are `JournalReader`'s."""

    # --- starting and resuming --------------------------------------------------------------

    def start(self, *, issue_slug: str, list_id: int, subject: str, content: str, transport: str,
              worker: Worker, force: bool = False, segment: Segment | None = None,
              scheduled: datetime | None = None) -> Resume:
        """Create the send of the issue to the list (or to `segment` of it), or resume it, as
        `worker`: take a lease, hand on the rows of dead workers, add new members, list the work.
        One write transaction, the send's row locked. While another worker's lease is live: on
        SQLite refused (`SendBusy`), on PostgreSQL this run joins it (same version of the issue
        only) and lists the open rows from the other end, so the workers meet in the middle
        instead of racing for the same rows.

        `scheduled`: the scheduler starts a send that `schedule` recorded, which it found due at
        that time. Under the row lock it goes ahead only if the send is still `scheduled` for that
        time (not cancelled and scheduled again for later meanwhile), or was started so and its
        runs died; else `AlreadyStarted`: so of several processes polling for due sends, one
        starts each.
        A plain start of a send that is scheduled is refused (cancel it first)."""
        now = utcnow()
        key = segment.name if segment is not None else WHOLE_LIST
        where = {"segment_where": segment.where} if segment is not None else {}
        with self.store.write() as conn:
            row = self._locked_send(conn, issue_slug, list_id, key)
            if scheduled is not None:
                self._check_due(conn, row, scheduled, now)
            elif row is not None and row.status == "scheduled":
                raise scheduled_refusal(row.id, issue_slug, self._audience(conn, list_id, key),
                                        f"{row.scheduled_at:%Y-%m-%d %H:%M} UTC")
            resumed = row is not None and row.status not in ("scheduled", "cancelled")
            joined: list[WorkerInfo] = []
            if row is None:
                send_id = self._create_send(conn, issue_slug, list_id, key, subject, content,
                                            transport, now, **where)
                if send_id is None:  # PostgreSQL: another run created it a moment ago
                    row = self._locked_send(conn, issue_slug, list_id, key)
                    assert row is not None
                    resumed = True
            if row is not None:
                send_id = row.id
                joined = live_workers(conn, send_id, now)
                if joined and not self.joinable:
                    raise busy_error(conn, send_id, joined[0], now)
                # A scheduled (or cancelled) send has sent nothing: the issue as it is now goes.
                if row.content_hash != content and resumed and (joined or not force):
                    raise self._changed(conn, row, issue_slug, list_id, joined, now)
                if (segment is not None and resumed and row.segment_where is not None
                        and row.segment_where != segment.where and (joined or not force)):
                    raise SegmentChanged(
                        f"the condition of the segment `{key}` changed since send #{row.id} "
                        f"started: it was `{row.segment_where}`, it is `{segment.where}`; re-run "
                        "with --force to go on with the members the new condition picks (nobody "
                        "gets the issue twice)")
                if joined:  # the send is running: its status and reason are the workers' to set
                    conn.execute(sends.update().where(sends.c.id == send_id).values(updated_at=now))
                else:
                    # Started by hand, a send is no longer the scheduler's to resume.
                    by_hand = {} if scheduled is not None else {"issue_path": None}
                    conn.execute(sends.update().where(sends.c.id == send_id).values(
                        status="running", reason=None, content_hash=content, subject=subject,
                        transport=transport, updated_at=now, finished_at=None, **by_hand, **where))
            hand_on(conn, send_id, now)
            conn.execute(send_workers.insert().values(
                worker_id=worker.id, send_id=send_id, host=worker.host, pid=worker.pid,
                started_at=now, heartbeat_at=now, lease_expires_at=worker.expires(now)))
            # Every subscribed member without a row (all of them on a new send; people who joined
            # since, on a resume) gets one — in SQL, so 100,000 members cost no Python memory.
            members, done = without_row(send_id, list_id, segment)
            conn.execute(deliveries.insert().from_select(
                ["send_id", "subscriber_id", "email", "status", "attempts", "updated_at"],
                sa.select(sa.literal(send_id), members.c.subscriber_id, members.c.email,
                          sa.literal("pending"), sa.literal(0), sa.literal(now, UtcDateTime))
                .where(~sa.exists(done))
                .order_by(members.c.subscriber_id)))
            _skip_sent_elsewhere(conn, send_id, issue_slug, list_id, now)
            order = deliveries.c.subscriber_id.desc() if joined else deliveries.c.subscriber_id
            jobs = jobs_in(conn, send_id, OPEN, order, attributes=self.attributes, topics=self.topics)
        info = self.get(send_id)
        assert info is not None
        return Resume(info, resumed, jobs, joined)

    @staticmethod
    def _locked_send(conn: sa.Connection, issue_slug: str, list_id: int, segment: str) -> Any:
        """The send's row, locked until the end of the transaction (PostgreSQL; SQLite's
        BEGIN IMMEDIATE has locked the whole file already)."""
        return conn.execute(sa.select(sends).where(
            sends.c.issue_slug == issue_slug, sends.c.list_id == list_id,
            sends.c.segment == segment).with_for_update()).first()

    @staticmethod
    def _create_send(conn: sa.Connection, issue_slug: str, list_id: int, segment: str,
                     subject: str, content: str, transport: str, now: datetime,
                     **scheduled: Any) -> int | None:
        """Insert the send (`running`, or `scheduled` with `scheduled_at` and `issue_path`);
        None if another run inserted it first (two runs started at once on PostgreSQL: the
        second INSERT waits for the first transaction, then conflicts)."""
        try:
            with conn.begin_nested():
                return int(conn.execute(sends.insert().values(
                    issue_slug=issue_slug, list_id=list_id, segment=segment, content_hash=content,
                    subject=subject, status="scheduled" if scheduled else "running",
                    transport=transport, created_at=now, updated_at=now, **scheduled,
                )).inserted_primary_key[0])
        except sa.exc.IntegrityError:
            return None

    @staticmethod
    def _audience(conn: sa.Connection, list_id: int, segment: str) -> str:
        """`audience_text` of the list with this id."""
        names = list_names()
        name = conn.execute(sa.select(names.c.name).where(names.c.list_id == list_id)).scalar_one()
        return audience_text(name, segment)

    @staticmethod
    def _check_due(conn: sa.Connection, row: Any, due: datetime, now: datetime) -> None:
        """The scheduler may start this send now (its row is locked): it is still `scheduled`,
        or it was started by a scheduler and every run of it died. Else `AlreadyStarted`."""
        if row is None:
            raise AlreadyStarted("the send is no longer scheduled")
        if row.status == "scheduled":
            if row.scheduled_at != due:  # cancelled and scheduled again for another time meanwhile
                raise AlreadyStarted(f"send #{row.id} is due at {row.scheduled_at:%Y-%m-%d %H:%M} UTC")
            return
        orphaned = (row.issue_path is not None and resumable_by_scheduler(row.status, row.reason)
                    and not live_workers(conn, row.id, now))
        if not orphaned:
            raise AlreadyStarted(f"send #{row.id} is {row.status}, not scheduled")

    # --- scheduled sends --------------------------------------------------------------------

    def schedule(self, *, issue_slug: str, list_id: int, segment: str = WHOLE_LIST, subject: str,
                 content: str, transport: str, at: datetime, issue_path: str) -> SendInfo:
        """Record a send to start at `at` (UTC): `scheduled`, no rows yet; the scheduler starts
        it (`start(scheduled=at)`). Refused while a send of the issue to that list and segment
        exists, unless it was cancelled (then it is scheduled again)."""
        now = utcnow()
        planned = {"scheduled_at": at, "issue_path": issue_path}
        with self.store.write() as conn:
            row = self._locked_send(conn, issue_slug, list_id, segment)
            if row is None:
                send_id = self._create_send(conn, issue_slug, list_id, segment, subject, content,
                                            transport, now, **planned)
                row = None if send_id is not None else self._locked_send(
                    conn, issue_slug, list_id, segment)
            if row is not None:
                if row.status != "cancelled":
                    when = (f" for {row.scheduled_at:%Y-%m-%d %H:%M} UTC"
                            if row.status == "scheduled" else "")
                    raise NewsletterError(
                        f"send #{row.id} of `{issue_slug}` to "
                        f"{self._audience(conn, list_id, segment)} is {row.status}{when}; "
                        + (f"cancel it first: `newsletter sends cancel {row.id}`"
                           if row.status == "scheduled" else
                           "an issue goes to a list (and segment) once (re-running `send` resumes it)"))
                send_id = row.id
                conn.execute(sends.update().where(sends.c.id == send_id).values(
                    status="scheduled", reason=None, content_hash=content, subject=subject,
                    transport=transport, updated_at=now, **planned))
        info = self.get(send_id)
        assert info is not None
        return info

    def call_off(self, send_id: int, due: datetime, reason: str) -> bool:
        """The scheduler could not start a send it found due at `due` (approval, issue file,
        empty list): `scheduled` → `cancelled` with `reason`, if it still is scheduled for that
        time; True if this call did it (of several schedulers, the first)."""
        with self.store.write() as conn:
            return conn.execute(sends.update().where(
                sends.c.id == send_id, sends.c.status == "scheduled", sends.c.scheduled_at == due,
            ).values(status="cancelled", updated_at=utcnow(), reason=reason)).rowcount == 1

    def cancel(self, send_id: int) -> SendInfo:
        """Call off a scheduled send that has not started. A send that started (or ended) is
        refused with its status: stopping a running one is Ctrl-C / killing its process."""
        now = utcnow()
        with self.store.write() as conn:
            row = conn.execute(sa.select(sends).where(sends.c.id == send_id).with_for_update()).first()
            if row is None:
                raise NewsletterError(f"no send with ID {send_id}; see `newsletter sends ls`")
            if row.status != "scheduled":
                raise NewsletterError(
                    f"send #{send_id} is {row.status}: only a scheduled send that has not started "
                    "can be cancelled")
            conn.execute(sends.update().where(sends.c.id == send_id).values(
                status="cancelled", updated_at=now,
                reason=f"cancelled {now:%Y-%m-%d %H:%M} UTC (was scheduled for "
                       f"{row.scheduled_at:%Y-%m-%d %H:%M} UTC)"))
        info = self.get(send_id)
        assert info is not None
        return info

    @staticmethod
    def _changed(conn: sa.Connection, row: Any, issue_slug: str, list_id: int,
                 joined: list[WorkerInfo], now: datetime) -> ContentChanged:
        audience = Journal._audience(conn, list_id, row.segment)
        if joined:  # two versions at once: never, --force or not
            first = joined[0]
            return ContentChanged(
                f"the issue `{issue_slug}` changed since send #{row.id} to {audience} "
                f"started, and pid {first.pid} on host {first.host} is sending the other version "
                "right now; wait for it to finish (then --force sends the new version to the rest)")
        sent = conn.execute(sa.select(sa.func.count()).where(
            deliveries.c.send_id == row.id, deliveries.c.status == "sent")).scalar_one()
        return ContentChanged(
            f"the issue `{issue_slug}` changed since send #{row.id} to {audience} "
            f"started ({row.created_at:%Y-%m-%d %H:%M} UTC); {sent} "
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
            return jobs_in(conn, send_id, ("pending",), deliveries.c.subscriber_id,
                           attributes=self.attributes, topics=self.topics)

    # --- the group commit -------------------------------------------------------------------

    def commit(self, send_id: int, list_id: int, worker: Worker, outcomes: Iterable[Outcome],
               candidates: Sequence[Job], message_ids: dict[int, str],
               reasons: Mapping[int, str] | None = None) -> Claimed:
        """One transaction: record outcomes, then — while `worker`'s lease is live — take the
        candidates whose rows are still open, check their subscription and pause, mark them
        `sending`. `reasons`: candidates the send decided not to mail (subscriber id → why, e.g.
        no section for their topics): `skipped` with that reason, if still subscribed."""
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
            states = membership_states(conn, list_id, [c.subscriber_id for c in mine])
            go, skip = [], []
            for c in mine:
                why = _not_mailed(states.get(c.subscriber_id), now) or (reasons or {}).get(c.subscriber_id)
                if why is None:
                    go.append(c)
                else:
                    skip.append((c, why))
            if go:
                claimed = conn.execute(CLAIM, [
                    {"send": send_id, "sid": c.subscriber_id, "mid": message_ids.get(c.subscriber_id),
                     "now": now, "worker": worker.id} for c in go]).rowcount
                if conn.dialect.supports_sane_multi_rowcount and claimed != len(go):
                    raise ClaimConflict(f"claimed {claimed} of {len(go)} open rows of send #{send_id}")
            if skip:
                conn.execute(_SKIP, [{"send": send_id, "sid": c.subscriber_id, "now": now, "reply": why}
                                     for c, why in skip])
        return Claimed(go, [c for c, _why in skip], taken)

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
            # A `running` send nobody runs (its worker died): `interrupted` now, so the scheduler
            # stops trying to resume it and `sends ls` says why.
            dead = row is not None and row.status == "running" and not live_workers(
                conn, send_id, utcnow())
            if row is None or (row.status not in STOPPED and not dead) or (
                    row.reason or "").startswith(CONTENT_CHANGED_NOTE):
                return
            reason = CONTENT_CHANGED_NOTE + (f"; it had stopped: {row.reason}" if row.reason else "")
            conn.execute(sends.update().where(sends.c.id == send_id).values(
                reason=reason, **({"status": "interrupted"} if dead else {})))
