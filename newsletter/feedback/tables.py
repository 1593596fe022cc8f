"""The feedback package's table: every bounce, complaint and ignored report it has taken in.

`feedback_events` is the ledger that makes taking in a report idempotent (`event_key` is unique:
a mailbox message's hash and recipient, or the provider's event id — a re-run or a replayed
webhook finds its key and changes nothing) and the record the soft-bounce rule counts in.
Columns and rules: docs/feedback.md, docs/data-model.md.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from newsletter.db.schema import NOW, UtcDateTime, erases_subscriber, metadata, one_of

KINDS = ("hard", "soft", "complaint", "auto_reply", "delayed", "unrecognised")
# What taking an event in did:
#   bounced / complained — the member's status changed (and the consent log says so)
#   counted   — a soft bounce, below the limit
#   unchanged — matched, but the status was already final (bounced, complained, unsubscribed …)
#   unmatched — no delivery or subscriber of ours could be found for it
#   ignored   — not a bounce (auto-reply, delayed, unrecognised)
OUTCOMES = ("bounced", "complained", "counted", "unchanged", "unmatched", "ignored")
SOURCES = ("mailbox", "ses", "mailgun", "postmark", "generic")

feedback_events = sa.Table(
    "feedback_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("event_key", sa.String(200), nullable=False, unique=True),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    # No foreign keys: an erased subscriber's rows lose the link (erase hook below), a deleted
    # send's rows keep their counts' history.
    sa.Column("send_id", sa.Integer, nullable=True),
    sa.Column("subscriber_id", sa.Integer, nullable=True),
    sa.Column("recipient", sa.String(320), nullable=True),
    sa.Column("status", sa.String(16), nullable=True),
    sa.Column("diagnostic", sa.Text, nullable=True),
    sa.Column("reported_at", UtcDateTime, nullable=True),
    sa.Column("received_at", UtcDateTime, nullable=False, server_default=NOW),
    sa.CheckConstraint(one_of("kind", KINDS), name="kind"),
    sa.CheckConstraint(one_of("outcome", OUTCOMES), name="outcome"),
    sa.Index("ix_feedback_events_subscriber", "subscriber_id", "kind", "received_at"),
    sa.Index("ix_feedback_events_send", "send_id", "kind"),
)


@erases_subscriber
def erase_subscriber(conn: Connection, subscriber_id: int) -> None:
    """GDPR erasure: the events keep their counts for the send, not the person."""
    conn.execute(feedback_events.update().where(feedback_events.c.subscriber_id == subscriber_id)
                 .values(subscriber_id=None, recipient=None, diagnostic=None))
