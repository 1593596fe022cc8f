"""Rate limits shared by every `newsletter serve` process through the database (`rate_limits`,
migration 8): sign-ups per client address, confirmation mails per address and day.

In process memory they held per process only: `serve --workers 4` (or two machines behind a
load balancer) let four times as many through. Now a hit is a row update inside the writer's
transaction (`web/writer.py`), so it is as shared and as durable as the database.

A window of `window` seconds is kept as `SLOTS` counters of `window / SLOTS` seconds each, keyed
by (bucket, slot start): a hit counts from its slot's start for one window plus one slot, so
any `window` seconds never hold more than `limit` hits (a hit may be counted up to one slot
longer than `window`; never shorter). Rows outlive their window by a slot and are deleted by
`sweep`, which the server runs at most once a minute per process.

Counting and adding must not interleave between processes: on SQLite the write transaction
(`BEGIN IMMEDIATE`) already serialises every writer; on PostgreSQL a transaction-scoped
advisory lock per bucket does (two workers checking the same address at once queue on it).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

# Not in the shared MetaData: counters, not data (`db copy` leaves them behind). The DDL is
# migration 8's (`db/migrations.py`); this is the shape the queries need.
rate_limits = sa.table(
    "rate_limits",
    sa.column("bucket", sa.String),
    sa.column("slot", sa.Integer),
    sa.column("hits", sa.Integer),
    sa.column("expires", sa.Integer),
)

SLOTS = 60
SWEEP_EVERY = 60.0  # seconds between two sweeps of expired counters (per process)


@dataclass(frozen=True)
class Limit:
    """At most `limit` hits per key within `window` seconds; `name` tells the buckets apart."""

    name: str
    limit: int
    window: int

    @property
    def slot_seconds(self) -> int:
        return max(1, math.ceil(self.window / SLOTS))

    def bucket(self, key: str) -> str:
        return f"{self.name}:{key}"

    def hit(self, conn: Connection, key: str, now: float | None = None) -> bool:
        """Count one hit for `key` inside the caller's write transaction; False (and nothing
        counted) when the key has used up its limit."""
        bucket = self.bucket(key)
        now = time.time() if now is None else now
        step = self.slot_seconds
        slot = int(now) // step * step
        if conn.dialect.name == "postgresql":
            # Serialises the count-then-add of this bucket across processes until the commit.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(bucket)})
        used = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(rate_limits.c.hits), 0))
            .where(rate_limits.c.bucket == bucket,
                   rate_limits.c.slot > slot - self.window - step)
        ).scalar_one()
        if used >= self.limit:
            return False
        counted = conn.execute(
            rate_limits.update().where(rate_limits.c.bucket == bucket, rate_limits.c.slot == slot)
            .values(hits=rate_limits.c.hits + 1)
        ).rowcount
        if not counted:
            conn.execute(rate_limits.insert().values(bucket=bucket, slot=slot, hits=1,
                                                     expires=slot + self.window + step))
        return True


def sweep(conn: Connection, now: float | None = None) -> int:
    """Delete counters whose window has passed; how many."""
    now = time.time() if now is None else now
    return int(conn.execute(rate_limits.delete().where(rate_limits.c.expires <= int(now))).rowcount)


def _lock_key(bucket: str) -> int:
    """A signed 64-bit advisory-lock key for a bucket (stable across processes, unlike hash())."""
    return int.from_bytes(hashlib.blake2b(bucket.encode(), digest_size=8).digest(), "big", signed=True)


__all__ = ["SLOTS", "SWEEP_EVERY", "Limit", "rate_limits", "sweep"]
