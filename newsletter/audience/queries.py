"""Read-only query pieces other packages compose into their own statements, so the audience
tables stay private to the audience package (the send journal joins them into its SQL).

Each piece is a subquery with named columns; SQLite flattens them, so they cost nothing over
joining the tables directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa

from newsletter.audience.tables import lists, memberships, subscribers

if TYPE_CHECKING:
    from newsletter.audience.segments import Segment


def subscribed_members(list_id: int, segment: Segment | None = None) -> sa.Subquery:
    """(subscriber_id, email) of the members of a list whose status is "subscribed"; with a
    `segment` (`segments.load_segment`), only those in it. The segment's `list` is not checked
    here: the caller has done `segment.check_list(list_name)`."""
    query = (sa.select(subscribers.c.id.label("subscriber_id"), subscribers.c.email)
             .join(memberships, memberships.c.subscriber_id == subscribers.c.id)
             .where(memberships.c.list_id == list_id, memberships.c.status == "subscribed"))
    if segment is not None:
        query = query.where(segment.condition.clause)
    return query.subquery("subscribed_members")


def subscriber_names() -> sa.Subquery:
    """(subscriber_id, name, attributes) of every subscriber."""
    return sa.select(subscribers.c.id.label("subscriber_id"), subscribers.c.name,
                     subscribers.c.attributes).subquery("subscriber_names")


def list_names() -> sa.Subquery:
    """(list_id, name) of every list."""
    return sa.select(lists.c.id.label("list_id"), lists.c.name).subquery("list_names")


# Built once: it runs in every group commit of a send (building it costs more than the SQL).
_STATES = sa.select(memberships.c.subscriber_id, memberships.c.status, memberships.c.paused_until).where(
    memberships.c.list_id == sa.bindparam("list"),
    memberships.c.subscriber_id.in_(sa.bindparam("ids", expanding=True)))


def membership_states(conn: sa.Connection, list_id: int,
                      subscriber_ids: Sequence[int]) -> dict[int, tuple[str, datetime | None]]:
    """subscriber id → (membership status on the list, paused until), for those of
    `subscriber_ids` that have a membership; one query, inside the caller's transaction (the
    send checks, then claims)."""
    rows = conn.execute(_STATES, {"list": list_id, "ids": list(subscriber_ids)})
    return {row.subscriber_id: (row.status, row.paused_until) for row in rows}


def paused_count(conn: sa.Connection, list_id: int, now: datetime,
                 segment: Segment | None = None) -> int:
    """How many subscribed members of the list (of the segment) have paused the newsletter on
    the preference page until after `now`: a send skips them."""
    members = subscribed_members(list_id, segment)
    return int(conn.execute(sa.select(sa.func.count()).select_from(members).join(
        memberships, sa.and_(memberships.c.subscriber_id == members.c.subscriber_id,
                             memberships.c.list_id == list_id))
        .where(memberships.c.paused_until > now)).scalar_one())


def member_topics() -> sa.Subquery:
    """(subscriber_id, list_id, topics) of every membership: the topics the member chose on that
    list (a JSON list of keys; NULL: no choice, every section)."""
    return sa.select(memberships.c.subscriber_id, memberships.c.list_id,
                     memberships.c.topics).subquery("member_topics")


def attribute_names(conn: sa.Connection, list_id: int) -> set[str]:
    """The attribute names (CSV columns) that the list's subscribed members have: what personal
    fields in an issue may name (checked before a send)."""
    if conn.dialect.name == "postgresql":
        query = sa.text(
            "SELECT DISTINCT k FROM subscribers s JOIN memberships m ON m.subscriber_id = s.id, "
            "jsonb_object_keys(CASE WHEN json_typeof(s.attributes) = 'object' THEN s.attributes::jsonb "
            "ELSE '{}'::jsonb END) AS k WHERE m.list_id = :list AND m.status = 'subscribed'")
    else:
        query = sa.text(
            "SELECT DISTINCT j.key FROM subscribers s JOIN memberships m ON m.subscriber_id = s.id, "
            "json_each(CASE WHEN json_type(s.attributes) = 'object' THEN s.attributes ELSE '{}' END) AS j "
            "WHERE m.list_id = :list AND m.status = 'subscribed'")
    return {str(row[0]) for row in conn.execute(query, {"list": list_id})}
