"""The topic variants of a send (docs/topics.md): which mail a member gets for the topics they
chose, rendered once per distinct selection of sections, on first need.

The plan renders and prepares the full issue (it is what the send is identified by, and what
members without a choice get). A member's choice (`memberships.topics`, on the job) counts with
the keys the list declares; none of them, or NULL, is no choice: the full issue. The sections
it keeps (`content.topics.selection`) name the variant: members whose choices keep the same
sections share one rendered, prepared message. A selection without any section means: this
member is not sent the issue (`skipped`, `EMPTY_REASON`).

A variant is prepared with the full issue's Date header and Message-ID key, so a recipient's
Message-ID does not depend on the variant, and signed with the full message's DKIM signer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable

from newsletter.content.topics import Selection, selection, used_topics
from newsletter.delivery.message import PreparedMessage, prepare
from newsletter.delivery.plan import PreparedIssue
from newsletter.project import Project
from newsletter.render.html import render_issue

# The journal's `smtp_reply` of a member whose variant has no section left.
EMPTY_REASON = "not sent: no section for the chosen topics"


def choice(topics: Iterable[str] | None, declared: Collection[str]) -> frozenset[str] | None:
    """A member's stored topics as a choice: the keys the list declares; none of them: None (no
    choice, every section)."""
    if topics is None:
        return None
    return frozenset(key for key in topics if isinstance(key, str) and key in declared) or None


class Variants:
    """The prepared messages of one send, per selection of sections (built lazily, kept)."""

    def __init__(self, project: Project, issue: PreparedIssue, list_name: str,
                 list_title: str | None, declared: Collection[str]) -> None:
        self.project, self.issue = project, issue
        self.list_name, self.list_title = list_name, list_title
        self.declared = frozenset(declared)
        sections = issue.loaded.issue.sections
        self.full: Selection = tuple(range(len(sections)))
        # Without a tagged section every member gets the full issue: no lookup per member.
        self.active = bool(used_topics(issue.loaded.issue))
        self._selections: dict[frozenset[str] | None, Selection] = {}
        self._prepared: dict[Selection, PreparedMessage] = {self.full: issue.prepared}
        self.rendered = 0  # variants rendered (the full issue, rendered by the plan, not counted)

    def choice(self, topics: Iterable[str] | None) -> frozenset[str] | None:
        """A member's stored topics as a choice (`choice`)."""
        return choice(topics, self.declared)

    def selection(self, topics: Iterable[str] | None) -> Selection:
        """The indexes of the sections a member with these stored topics gets."""
        return self._select(self.choice(topics)) if self.active else self.full

    def _select(self, chosen: frozenset[str] | None) -> Selection:
        found = self._selections.get(chosen)
        if found is None:
            found = self._selections[chosen] = selection(self.issue.loaded.issue, chosen)
        return found

    def prepared(self, topics: Iterable[str] | None) -> PreparedMessage | None:
        """The prepared message for a member with these stored topics; None if no section is
        left for them (not sent). Renders the variant the first time it is needed."""
        if not self.active:
            return self.issue.prepared
        chosen = self.choice(topics)
        sections = self._select(chosen)
        if not sections:
            return None
        found = self._prepared.get(sections)
        if found is None:
            found = self._prepared[sections] = self._build(chosen)
        return found

    def _build(self, chosen: frozenset[str] | None) -> PreparedMessage:
        # Rendered for this choice: any other choice with the same sections gets the same mail.
        rendered = render_issue(self.issue.loaded, self.project, topics=chosen)
        self.rendered += 1
        full = self.issue.prepared
        variant = prepare(self.project, rendered, list_name=self.list_name, list_title=self.list_title,
                          date=full.date, sign=False, identity=self.issue.content_hash)
        return dataclasses.replace(variant, dkim=full.dkim)  # the key file read once, by the plan
