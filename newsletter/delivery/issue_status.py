"""`newsletter status FILE`: where an issue stands, draft → approved → scheduled → sending → sent.

The approval part is `approval.verdict` (the latest approval, and what changed since); the sends
are the journal's (`JournalReader.all(slug)`): those of the issue's slug, every list and segment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from newsletter.delivery.approval import Verdict, verdict
from newsletter.delivery.records import JournalReader, SendInfo

if TYPE_CHECKING:
    from newsletter.project import Project

# The state of an issue, by its sends first (the most active of them), else by its approval.
STATES = ("draft", "approved", "scheduled", "sending", "stopped", "sent")


@dataclass
class IssueStatus:
    slug: str
    subject: str
    path: Path
    approval: Verdict
    sends: list[SendInfo]  # of this issue, oldest first (cancelled ones too)

    @property
    def state(self) -> str:
        statuses = {s.status for s in self.sends}
        for status, state in (("running", "sending"), ("scheduled", "scheduled"),
                              ("paused", "stopped"), ("interrupted", "stopped"),
                              ("finished", "sent")):
            if status in statuses:
                return state
        return "approved" if self.approval.state == "approved" else "draft"

    def as_dict(self) -> dict[str, Any]:
        return {"issue": self.slug, "subject": self.subject, "file": str(self.path),
                "state": self.state, "approval": self.approval.as_dict(),
                "sends": [_send(s) for s in self.sends]}


def _send(info: SendInfo) -> dict[str, Any]:
    return {"id": info.id, "list": info.list_name, "segment": info.segment or None,
            "status": info.status, "scheduled_at": info.scheduled_at, "reason": info.reason,
            "created_at": info.created_at, "finished_at": info.finished_at, "counts": info.counts}


def issue_status(project: Project, path: str | Path) -> IssueStatus:
    """Load, validate and render the issue (to compare it with its approval) and read its sends."""
    from newsletter.audience.store import open_store

    pipeline = project.issue(path)
    rendered = pipeline.rendered
    with open_store(project) as store:
        found = verdict(store, project, pipeline.loaded, rendered)
        sends = JournalReader(store).all(rendered.slug)
    return IssueStatus(rendered.slug, rendered.subject, pipeline.path, found, sends)
