"""The send journal's tables: `sends` (one per issue and list), `deliveries` (one per
recipient of a send) and `send_workers` (the processes that ran a send, with their leases);
and `approvals` (who approved which content of an issue: `delivery/approval.py`).
Only the delivery package reads or writes them; the logic is in `delivery/journal.py`.
Columns, statuses and history: docs/data-model.md.
"""

from __future__ import annotations

import sqlalchemy as sa

# `sends.list_id` references the audience's `lists`: the table must be in the MetaData too.
import newsletter.audience.tables  # noqa: F401
from newsletter.db.schema import NOW, UtcDateTime, erases_subscriber, metadata, one_of

# `scheduled`: waiting for its time (`send --at`), nothing claimed yet; `cancelled`: a scheduled
# send called off before it started (`sends cancel`). Both from version 11.
SEND_STATUSES = ("scheduled", "running", "paused", "finished", "interrupted", "cancelled")
_V2_SEND_STATUSES = ("running", "paused", "finished", "interrupted")
WHOLE_LIST = ""  # `sends.segment` of a send to every member of the list


def audience_text(list_name: str, segment: str = WHOLE_LIST) -> str:
    """What a send goes to, for messages: the list `news`, or the segment `jena` of the list
    `news`."""
    name = f"the list `{list_name}`"
    return f"the segment `{segment}` of {name}" if segment else name
DELIVERY_STATUSES = ("pending", "sending", "sent", "failed_temporary", "failed_permanent", "skipped")


def journal_tables(md: sa.MetaData, version: int) -> tuple[sa.Table, sa.Table]:
    """`sends` and `deliveries` as of schema `version`: 2 as first created, 3, 6, 9 and 11 with
    the columns migrations 3, 6, 9 and 11 added (at the end, where ALTER TABLE puts them); 11
    also keys a send by (issue, list, segment) and adds the statuses of scheduled sends."""
    v3 = version >= 3
    v6 = version >= 6
    v9 = version >= 9
    v11 = version >= 11
    send_table = sa.Table(
        "sends", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("issue_slug", sa.String(200), nullable=False),
        sa.Column("list_id", sa.Integer, sa.ForeignKey("lists.id"), nullable=False),
        sa.Column("content_hash", sa.String(128), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("transport", sa.String(200), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False, server_default=NOW),
        sa.Column("updated_at", UtcDateTime, nullable=False, server_default=NOW),
        sa.Column("finished_at", UtcDateTime, nullable=True),
        # Why the send is paused or interrupted (policy streak, connection failure, Ctrl-C …);
        # NULL while running and once finished.
        *([sa.Column("reason", sa.Text, nullable=True)] if v3 else []),
        *([
            # The segment (`[segments.<name>]` of newsletter.toml) the send goes to; WHOLE_LIST
            # ("") for every member. Part of the key: one issue, one list, two segments = two sends.
            sa.Column("segment", sa.String(100), nullable=False, server_default=WHOLE_LIST),
            # The segment's condition when the send started: a resume under another one is
            # refused without --force (it would change who the send is for).
            sa.Column("segment_where", sa.Text, nullable=True),
            # A scheduled send (`send --at`): when it is due (UTC), and the issue file it reads
            # then (relative to the project directory). NULL on sends started at once.
            sa.Column("scheduled_at", UtcDateTime, nullable=True),
            sa.Column("issue_path", sa.Text, nullable=True),
        ] if v11 else []),
        (sa.UniqueConstraint("issue_slug", "list_id", "segment", name="uq_sends_issue_list_segment")
         if v11 else sa.UniqueConstraint("issue_slug", "list_id", name="uq_sends_issue_list")),
        sa.CheckConstraint(one_of("status", SEND_STATUSES if v11 else _V2_SEND_STATUSES),
                           name="status"),
    )
    delivery_table = sa.Table(
        "deliveries", md,
        sa.Column("send_id", sa.Integer, sa.ForeignKey("sends.id", ondelete="CASCADE"),
                  primary_key=True),
        # No foreign key: the journal outlives a subscriber erased with `remove --forget`.
        sa.Column("subscriber_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, default=0, server_default="0"),
        sa.Column("smtp_code", sa.Integer, nullable=True),
        sa.Column("smtp_reply", sa.Text, nullable=True),
        sa.Column("message_id", sa.Text, nullable=True),
        sa.Column("updated_at", UtcDateTime, nullable=False, server_default=NOW),
        # In flight (`sending`) when a send was interrupted: the message may have been accepted
        # before the crash and was sent again by the resume. Stays set once set.
        *([sa.Column("possibly_duplicated", sa.Boolean, nullable=False, default=False,
                     server_default=sa.false())] if v3 else []),
        # The worker (`send_workers.worker_id`) that claimed the row: set with `sending`. Rows
        # left `sending` by a worker whose lease expired are handed on; a live one's never. No
        # foreign key: a tag (worker rows are deleted only with their send).
        *([sa.Column("worker_id", sa.String(32), nullable=True)] if v6 else []),
        # What was reported about the message after it was accepted (a bounce mail, a provider
        # event: `feedback` package): hard | soft | complaint, the latest one; and when.
        *([sa.Column("feedback", sa.String(16), nullable=True),
           sa.Column("feedback_at", UtcDateTime, nullable=True)] if v9 else []),
        sa.CheckConstraint(one_of("status", DELIVERY_STATUSES), name="status"),
        sa.Index("ix_deliveries_send_status", "send_id", "status"),
    )
    return send_table, delivery_table


def send_workers_table(md: sa.MetaData) -> sa.Table:
    """`send_workers` (created by migration 6): one row per run of a send, i.e. per process that
    took the send's lease. Live while `released_at` is NULL and `lease_expires_at` is in the
    future; the running process renews `heartbeat_at` / `lease_expires_at` (journal.py)."""
    return sa.Table(
        "send_workers", md,
        sa.Column("worker_id", sa.String(32), primary_key=True),  # random, per process and run
        sa.Column("send_id", sa.Integer, sa.ForeignKey("sends.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", UtcDateTime, nullable=False),
        sa.Column("heartbeat_at", UtcDateTime, nullable=False),
        sa.Column("lease_expires_at", UtcDateTime, nullable=False),
        # Set when the run ended (finished, paused, interrupted, Ctrl-C); NULL while it runs, and
        # for ever on a worker that died (its lease just expires).
        sa.Column("released_at", UtcDateTime, nullable=True),
    )


def approvals_table(md: sa.MetaData) -> sa.Table:
    """`approvals` (created by migration 12): who approved which exact content of an issue
    (`newsletter approve`), one row per approval, kept as history; the latest of an issue counts.
    The hashes and what went into them: `delivery/approval.py`, docs/approval.md."""
    return sa.Table(
        "approvals", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("issue_slug", sa.String(200), nullable=False),
        sa.Column("approved_by", sa.String(200), nullable=False),
        sa.Column("approved_at", UtcDateTime, nullable=False),
        sa.Column("issue_path", sa.Text, nullable=False),  # as approved, relative to the project
        # SHA-256 of each part; `parts` has the hash of every file and config section in them,
        # so a refusal can name what changed.
        sa.Column("issue_hash", sa.String(64), nullable=False),
        sa.Column("templates_hash", sa.String(64), nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("content_hash", sa.String(128), nullable=False),  # the rendered message
        sa.Column("parts", sa.JSON, nullable=False),
        sa.Index("ix_approvals_issue_slug", "issue_slug", "id"),
    )


sends, deliveries = journal_tables(metadata, 11)
send_workers = send_workers_table(metadata)
approvals = approvals_table(metadata)


@erases_subscriber
def erase_subscriber(conn: sa.Connection, subscriber_id: int) -> None:
    """The journal's part of a GDPR erasure (run by `Store.forget` in its transaction): the rows stay
    (the counts of past sends), the address and the server's reply (which may quote it) go."""
    conn.execute(deliveries.update().where(deliveries.c.subscriber_id == subscriber_id)
                 .values(email="(erased)", smtp_reply=None))
