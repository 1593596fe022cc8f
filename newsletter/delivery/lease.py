"""A run of a send and its lease: the `send_workers` rows (docs/delivery.md, "Two runs of one
send"). A worker takes the lease in `Journal.start`'s write transaction, renews it from the
journal thread and releases it in `Journal.finish`; while it is live nobody else sends the send,
and when it expires the worker is presumed dead and its in-flight rows are handed on."""

from __future__ import annotations

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
from newsletter.delivery.tables import deliveries, send_workers, sends
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
    """A `send_workers` row: one run of a send."""

    worker_id: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    lease_expires_at: datetime
    released_at: datetime | None

    def state(self, now: datetime | None = None) -> str:
        """`live` (holds the lease), `expired` (stopped renewing: presumed dead) or `ended`."""
        if self.released_at is not None:
            return "ended"
        return "live" if self.lease_expires_at > (now or utcnow()) else "expired"

    def as_dict(self, now: datetime | None = None) -> dict[str, Any]:
        return {"worker_id": self.worker_id, "host": self.host, "pid": self.pid,
                "started_at": self.started_at, "heartbeat_at": self.heartbeat_at,
                "lease_expires_at": self.lease_expires_at, "released_at": self.released_at,
                "state": self.state(now)}


def is_live(now: datetime) -> sa.ColumnElement[bool]:
    return send_workers.c.released_at.is_(None) & (send_workers.c.lease_expires_at > now)


def live_worker(conn: sa.Connection, send_id: int, now: datetime) -> WorkerInfo | None:
    row = conn.execute(sa.select(send_workers).where(send_workers.c.send_id == send_id, is_live(now))
                       .order_by(send_workers.c.started_at)).first()
    return worker_info(row) if row else None


def hand_on(conn: sa.Connection, send_id: int, now: datetime) -> int:
    """Rows left `sending` by workers that are no longer live (crashed, killed: lease expired;
    or ended with a message in hand) go back to `pending`, flagged possibly duplicated: maybe
    accepted, maybe not, so they are sent again. A live worker's rows are never touched.
    Returns how many."""
    live = sa.select(send_workers.c.worker_id).where(send_workers.c.send_id == send_id,
                                                     is_live(now))
    return conn.execute(deliveries.update().where(
        deliveries.c.send_id == send_id, deliveries.c.status == "sending",
        deliveries.c.worker_id.is_(None) | deliveries.c.worker_id.not_in(live),
    ).values(status="pending", possibly_duplicated=True, worker_id=None, updated_at=now,
             smtp_code=None, smtp_reply="in flight when the send stopped")).rowcount


def _clock(at: datetime, now: datetime) -> str:
    """`10:02:11 UTC`, with the date if it is not today's."""
    return f"{at:%H:%M:%S} UTC" if at.date() == now.date() else f"{at:%Y-%m-%d %H:%M:%S} UTC"


def busy_error(conn: sa.Connection, send_id: int, holder: WorkerInfo, now: datetime) -> SendBusy:
    names = list_names()
    row = conn.execute(sa.select(sends.c.issue_slug, names.c.name)
                       .join(names, names.c.list_id == sends.c.list_id)
                       .where(sends.c.id == send_id)).one()
    # Rounded up: re-running at the second shown finds the lease expired.
    expires = holder.lease_expires_at.replace(microsecond=0) + timedelta(
        seconds=1 if holder.lease_expires_at.microsecond else 0)
    return SendBusy(
        f"the issue `{row.issue_slug}` is being sent to the list `{row.name}` (send #{send_id}) "
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
