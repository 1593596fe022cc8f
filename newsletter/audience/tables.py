"""The audience's tables: lists, subscribers, memberships, consent log, suppressions.

Only the audience package reads or writes them; other packages use the `Store` or the query
pieces in `audience/queries.py`. Columns and history: docs/data-model.md.
"""

from __future__ import annotations

import sqlalchemy as sa

from newsletter.audience.statuses import STATUSES
from newsletter.audience.token_ids import new_token_id
from newsletter.db.schema import NOW, UtcDateTime, metadata, one_of


def subscribers_table(md: sa.MetaData, version: int) -> sa.Table:
    """`subscribers` as of schema `version`: 1 as first created, 4 with the columns migration 4
    added (at the end, where ALTER TABLE puts them)."""
    v4 = version >= 4
    return sa.Table(
        "subscribers", md,
        sa.Column("id", sa.Integer, primary_key=True),
        # As normalised by email-validator: local part as written, domain lower-cased, IDN in Unicode.
        sa.Column("email", sa.String(320), nullable=False, unique=True),
        # email.lower(): the identity used for duplicates (Anna@x.de and anna@x.de are one person).
        sa.Column("email_key", sa.String(320), nullable=False, unique=True),
        sa.Column("name", sa.String(300), nullable=True),
        sa.Column("attributes", sa.JSON, nullable=False, default=dict),
        sa.Column("created_at", UtcDateTime, nullable=False, server_default=NOW),
        *([
            # What unsubscribe and confirmation links name instead of the (reusable, sequential)
            # id. The Python default fills it on every insert through this Table, bulk ones too.
            # Nullable only because SQLite cannot add a NOT NULL column without a constant default.
            sa.Column("token_id", sa.String(32), nullable=True, default=new_token_id),
            # Existed before migration 4: links already mailed name this row by id and stay valid
            # while the row exists. Never true for a row created later, even one reusing an id.
            sa.Column("legacy_tokens", sa.Boolean, nullable=False, default=False,
                      server_default=sa.false()),
            sa.Index("ix_subscribers_token_id", "token_id", unique=True),
        ] if v4 else []),
    )


subscribers = subscribers_table(metadata, 4)

lists = sa.Table(
    "lists", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("title", sa.String(300), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False, server_default=NOW),
)


def memberships_table(md: sa.MetaData, version: int) -> sa.Table:
    """`memberships` as of schema `version`: 1 as first created, 5 with `requested_name`, 10 with
    `topics` and `paused_until`."""
    return sa.Table(
        "memberships", md,
        sa.Column("subscriber_id", sa.Integer, sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("list_id", sa.Integer, sa.ForeignKey("lists.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False, server_default=NOW),
        sa.Column("updated_at", UtcDateTime, nullable=False, server_default=NOW),
        sa.CheckConstraint(one_of("status", STATUSES), name="status"),
        sa.Index("ix_memberships_list_status", "list_id", "status"),
        *([
            # The name given with a sign-up, not yet confirmed: `Store.confirm` makes it the
            # subscriber's name. Only while the membership is pending; cleared by every status
            # change, so an unconfirmed request never changes what is stored or sent.
            sa.Column("requested_name", sa.String(300), nullable=True),
        ] if version >= 5 else []),
        *([
            # The topics the member chose (a JSON list of the list's topic keys, `[topics.<list>]`
            # in newsletter.toml); NULL: no choice made, every section (docs/topics.md).
            sa.Column("topics", sa.JSON, nullable=True),
            # Paused on the preference page: not mailed before this time, still subscribed.
            sa.Column("paused_until", UtcDateTime, nullable=True),
        ] if version >= 10 else []),
    )


memberships = memberships_table(metadata, 10)

consent_log = sa.Table(
    "consent_log", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("subscriber_id", sa.Integer, sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("list_id", sa.Integer, sa.ForeignKey("lists.id", ondelete="SET NULL"), nullable=True),
    sa.Column("at", UtcDateTime, nullable=False, server_default=NOW),
    # The membership status after the event (pending, subscribed, unsubscribed …).
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("ip", sa.String(64), nullable=True),
    sa.Column("consent_version", sa.String(64), nullable=True),
    sa.Column("detail", sa.Text, nullable=True),
)

suppressions = sa.Table(
    "suppressions", metadata,
    # `suppression_hash` of the address (sha256 of its identity): lets us refuse the address later
    # without keeping it (GDPR erasure).
    sa.Column("email_hash", sa.String(64), primary_key=True),
    sa.Column("reason", sa.String(200), nullable=False),
    sa.Column("at", UtcDateTime, nullable=False, server_default=NOW),
)


# --- CSV import (`audience/importer.py`, docs/data-model.md "CSV import") ---------------------

# A running import and the id ranges of the batches of new subscribers it has published so far
# (each batch: subscribers, memberships, consent-log entries in one transaction; the changes to
# people who were there before come in its last transaction). Live while its process runs:
# renewed with every batch; a row whose process is gone (same host, pid not running) or that has
# not been renewed for `importer.IMPORT_LEASE` belongs to an interrupted import: its watchdog
# process, or else the next import, deletes the subscribers it published that still carry
# nothing but this import's publication (`import_stage.only_this_import`).
imports = sa.Table(
    "imports", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("list_id", sa.Integer, sa.ForeignKey("lists.id", ondelete="CASCADE"), nullable=False),
    sa.Column("file", sa.String(300), nullable=False),  # the file name, for messages
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("heartbeat_at", UtcDateTime, nullable=False),
)

# The subscriber ids an unfinished import created, as ranges (one per batch: ids are given out
# consecutively inside a write transaction).
import_subscribers = sa.Table(
    "import_subscribers", metadata,
    sa.Column("import_id", sa.Integer, sa.ForeignKey("imports.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("first_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("last_id", sa.Integer, nullable=False),
)

