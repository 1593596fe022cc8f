"""A run of a send and its lease: the `send_workers` rows (docs/delivery.md, "Two runs of one
send"). A worker takes its lease in `Journal.start`'s write transaction, renews it from the
journal thread and releases it in `Journal.finish`. On SQLite a live lease keeps every other run
out (`SendBusy`); on PostgreSQL further runs join as workers of their own and share the rows out
through the claim. When a lease expires its worker is presumed dead and its in-flight rows are
handed on (`hand_on`), by whichever worker notices first."""

from __future__ import annotations

import dataclasses
import math
import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from newsletter.audience.queries import list_names
from newsletter.db.schema import chunked, utcnow
from newsletter.delivery.tables import audience_text, deliveries, send_workers, sends
from newsletter.errors import NewsletterError

LEASE_SECONDS = 60.0
HEARTBEAT_SECONDS = 10.0
LEASE_ENV = "NEWSLETTER_SEND_LEASE_SECONDS"


# The group commit's statements, built once (building them per commit costs more than the SQL).

LEASE_ROW = sa.select(send_workers.c.lease_expires_at, send_workers.c.released_at).where(
    send_workers.c.worker_id == sa.bindparam("worker"))
# A lease is renewed only while it is live: once expired it may have been taken over.
RENEW = send_workers.update().where(
    send_workers.c.worker_id == sa.bindparam("worker"), send_workers.c.released_at.is_(None),
    send_workers.c.lease_expires_at > sa.bindparam("now"),
).values(heartbeat_at=sa.bindparam("now"), lease_expires_at=sa.bindparam("until"))


class SendBusy(NewsletterError):
    """Another process holds the send's lease (it is sending it now, or died less than a lease
    ago)."""

    def __init__(self, message: str, holder: WorkerInfo) -> None:
        super().__init__(message)
        self.holder = holder


def lease_seconds() -> float:
    """The lease length for this process's runs: LEASE_ENV, else LEASE_SECONDS."""
    value = os.environ.get(LEASE_ENV)
    if value is None or not value.strip():
        return LEASE_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise NewsletterError(f"{LEASE_ENV} must be a number of seconds above 0, not `{value}`")
    return seconds


@dataclass(frozen=True, slots=True)
class Worker:
    """This process's identity as the runner of a send, and its lease length."""

    id: str
    host: str
    pid: int
    lease: float = LEASE_SECONDS  # seconds

    @classmethod
    def here(cls, lease: float | None = None) -> Worker:
        """A new worker id for this process (one per run)."""
        return cls(secrets.token_hex(16), socket.gethostname(), os.getpid(),
                   lease_seconds() if lease is None else lease)

    @property
    def heartbeat(self) -> float:
        """Seconds between renewals of the lease."""
        return min(HEARTBEAT_SECONDS, self.lease / 6)

    def expires(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.lease)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A `send_workers` row: one run of a send; with `Journal.get`, also what it holds."""

    worker_id: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    lease_expires_at: datetime
    released_at: datetime | None
    sent: int = 0  # rows it claimed that are `sent` now
    in_flight: int = 0  # rows it still has `sending`

    def state(self, now: datetime | None = None) -> str:
        """`live` (holds the lease), `expired` (stopped renewing: presumed dead) or `ended`."""
        if self.released_at is not None:
            return "ended"
        return "live" if self.lease_expires_at > (now or utcnow()) else "expired"

    def as_dict(self, now: datetime | None = None) -> dict[str, Any]:
        return {"worker_id": self.worker_id, "host": self.host, "pid": self.pid,
                "started_at": self.started_at, "heartbeat_at": self.heartbeat_at,
                "lease_expires_at": self.lease_expires_at, "released_at": self.released_at,
                "state": self.state(now), "sent": self.sent, "in_flight": self.in_flight}


def is_live(now: datetime) -> sa.ColumnElement[bool]:
    return send_workers.c.released_at.is_(None) & (send_workers.c.lease_expires_at > now)


def live_workers(conn: sa.Connection, send_id: int, now: datetime) -> list[WorkerInfo]:
    """The send's workers holding a live lease, oldest first."""
    rows = conn.execute(sa.select(send_workers).where(send_workers.c.send_id == send_id, is_live(now))
                        .order_by(send_workers.c.started_at)).all()
    return [worker_info(row) for row in rows]


def live_worker(conn: sa.Connection, send_id: int, now: datetime) -> WorkerInfo | None:
    live = live_workers(conn, send_id, now)
    return live[0] if live else None


def hand_on(conn: sa.Connection, send_id: int, now: datetime) -> int:
    """Rows left `sending` by workers that are no longer live (crashed, killed: lease expired;
    or ended with a message in hand) go back to `pending`, flagged possibly duplicated: maybe
    accepted, maybe not, so they are sent again. A live worker's rows are never touched.
    Returns how many.

    The dead are named first, then their rows are updated by that list of ids (not by "not live"
    evaluated inside the UPDATE): on PostgreSQL an UPDATE that waited for a row re-checks only the
    row's new version against its WHERE, so a row another worker handed on meanwhile (now
    `pending`) or claimed since (a live worker's id) no longer matches: two workers noticing the
    same death at once cannot hand a row on twice, nor take a live worker's row. Rows are locked
    in subscriber order, like the group commit's, so the two never deadlock."""
    holders = set(conn.execute(sa.select(deliveries.c.worker_id).distinct().where(
        deliveries.c.send_id == send_id, deliveries.c.status == "sending")).scalars())
    if not holders:
        return 0
    named = [w for w in holders if w is not None]
    live = set(conn.execute(sa.select(send_workers.c.worker_id).where(
        send_workers.c.worker_id.in_(named), is_live(now))).scalars()) if named else set()
    dead = [w for w in named if w not in live]
    if not dead and None not in holders:
        return 0
    owner = deliveries.c.worker_id.in_(dead) if dead else sa.false()
    if None in holders:  # rows from before version 6 name no worker
        owner = owner | deliveries.c.worker_id.is_(None)
    gone = (deliveries.c.send_id == send_id) & (deliveries.c.status == "sending") & owner
    ids = conn.execute(sa.select(deliveries.c.subscriber_id).where(gone)
                       .order_by(deliveries.c.subscriber_id).with_for_update()).scalars().all()
    if not ids:
        return 0
    handed = 0
    for chunk in chunked(list(ids)):
        handed += conn.execute(deliveries.update().where(
            gone, deliveries.c.subscriber_id.in_(chunk),
        ).values(status="pending", possibly_duplicated=True, worker_id=None, updated_at=now,
                 smtp_code=None, smtp_reply="in flight when the send stopped")).rowcount
    return handed


def _clock(at: datetime, now: datetime) -> str:
    """`10:02:11 UTC`, with the date if it is not today's."""
    return f"{at:%H:%M:%S} UTC" if at.date() == now.date() else f"{at:%Y-%m-%d %H:%M:%S} UTC"


def busy_error(conn: sa.Connection, send_id: int, holder: WorkerInfo, now: datetime) -> SendBusy:
    names = list_names()
    row = conn.execute(sa.select(sends.c.issue_slug, sends.c.segment, names.c.name)
                       .join(names, names.c.list_id == sends.c.list_id)
                       .where(sends.c.id == send_id)).one()
    audience = audience_text(row.name, row.segment)
    # Rounded up: re-running at the second shown finds the lease expired.
    expires = holder.lease_expires_at.replace(microsecond=0) + timedelta(
        seconds=1 if holder.lease_expires_at.microsecond else 0)
    return SendBusy(
        f"the issue `{row.issue_slug}` is being sent to {audience} (send #{send_id}) "
        f"by pid {holder.pid} on host {holder.host} since {_clock(holder.started_at, now)}; wait "
        "for it to finish, or if that process is gone, re-run after "
        f"{_clock(expires, now)} when its lease expires", holder)


def worker_info(row: Any) -> WorkerInfo:
    return WorkerInfo(row.worker_id, row.host, row.pid, row.started_at, row.heartbeat_at,
                      row.lease_expires_at, row.released_at)


def workers_of(conn: sa.Connection, send_ids: list[int]) -> dict[int, list[WorkerInfo]]:
    result: dict[int, list[WorkerInfo]] = {}
    for chunk in chunked(send_ids):
        rows = conn.execute(sa.select(send_workers).where(send_workers.c.send_id.in_(chunk))
                            .order_by(send_workers.c.send_id, send_workers.c.started_at)).all()
        for row in rows:
            result.setdefault(row.send_id, []).append(worker_info(row))
    return result


def with_counts(conn: sa.Connection, send_id: int, workers: list[WorkerInfo]) -> list[WorkerInfo]:
    """`workers` with how many of the send's rows each has sent and still has in flight (one
    pass over the send's rows: for `sends show`, not for the listing of every send)."""
    counts: dict[tuple[str, str], int] = {}
    for worker_id, status, count in conn.execute(
            sa.select(deliveries.c.worker_id, deliveries.c.status, sa.func.count())
            .where(deliveries.c.send_id == send_id, deliveries.c.worker_id.is_not(None),
                   deliveries.c.status.in_(("sent", "sending")))
            .group_by(deliveries.c.worker_id, deliveries.c.status)):
        counts[(worker_id, status)] = count
    return [dataclasses.replace(w, sent=counts.get((w.worker_id, "sent"), 0),
                                in_flight=counts.get((w.worker_id, "sending"), 0)) for w in workers]
