"""Before the first message: the issue from its file to the prepared message, and the send plan.

`prepare_issue` is the one sequence load → validate → render → prepare behind every way an
issue becomes mail: the send to a list, the test send, the dry run, the preview's headers view
and the library API. `plan_send` adds the list, its members, the journal's earlier send of the
issue and the transport: everything shown to the editor before they confirm.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from newsletter.audience.records import MailingList
from newsletter.audience.store import Store, open_store
from newsletter.content.validate import LoadedIssue, load_issue
from newsletter.delivery.journal import Journal, SendInfo
from newsletter.delivery.message import PreparedMessage, content_hash, prepare
from newsletter.delivery.transport import Transport, transport_for
from newsletter.errors import NewsletterError
from newsletter.project import Project
from newsletter.render.html import RenderedIssue, render_issue


@dataclass(frozen=True)
class PreparedIssue:
    """An issue loaded and validated, rendered once, and its message prepared once."""

    loaded: LoadedIssue
    rendered: RenderedIssue
    prepared: PreparedMessage

    @property
    def slug(self) -> str:
        return self.rendered.slug

    @property
    def content_hash(self) -> str:
        """What a resume compares: the same subject, HTML and text."""
        return content_hash(self.rendered.subject, self.rendered.html, self.rendered.text)

    @property
    def warnings(self) -> list[str]:
        """The validation warnings, formatted (`FILE:LINE:COL: field: message`)."""
        return [w.format() for w in self.loaded.warnings]


def prepare_issue(project: Project, issue: str | Path | LoadedIssue, list_name: str | None = None,
                  *, list_title: str | None = None, subject_prefix: str = "",
                  sign: bool = True, rendered: RenderedIssue | None = None) -> PreparedIssue:
    """Load and validate the issue (unless `issue` is loaded already), render it, prepare its
    message. Raises `IssueInvalid` / `NewsletterError` for the editor's mistakes.

    `list_name` / `list_title` give the `List-Id` header (none without a list: test sends);
    `subject_prefix` is "[TEST] " for test sends; `sign=False` leaves out DKIM (dry runs, the
    preview), so no key is read. The `Date` header is the time of this call. `rendered`: the
    issue rendered already (by `IssuePipeline`), so it is not rendered twice."""
    loaded = issue if isinstance(issue, LoadedIssue) else load_issue(issue)
    rendered = rendered or render_issue(loaded, project)
    prepared = prepare(project, rendered, list_name=list_name, list_title=list_title,
                       subject_prefix=subject_prefix, sign=sign)
    return PreparedIssue(loaded, rendered, prepared)


@dataclass
class SendPlan:
    """Everything decided before the first message: shown to the editor for confirmation."""

    project: Project
    store: Store
    issue: PreparedIssue
    mailing_list: MailingList
    transport: Transport
    existing: SendInfo | None  # the earlier (paused, interrupted, finished) send of this issue
    joined_since: int  # with `existing`: subscribed members it has no row for yet
    counts: dict[str, int]  # the list's members per status now
    concurrency: int
    rate: float

    @property
    def recipients(self) -> int:
        """Subscribed members now."""
        return self.counts.get("subscribed", 0)

    @property
    def nothing_to_do(self) -> bool:
        """A re-run of a send that is complete: nobody to (re)try and nobody new on the list."""
        if self.existing is None or self.existing.status != "finished":
            return False  # a paused or interrupted send is resumed: it finishes and says why
        return self.existing.open_rows == 0 and self.joined_since == 0

    def refuse_if_busy(self) -> None:
        """Raise `SendBusy` (the one line saying who sends it, since when, until when its lease
        runs) if another process holds this send's lease now. Asked before the summary and the
        confirmation; `Journal.start` decides again, atomically, when the run begins."""
        if self.existing is not None:
            busy = Journal(self.store).busy_error(self.existing.id)
            if busy is not None:
                raise busy





def plan_send(project: Project, issue_path: Path, list_name: str, *, concurrency: int | None = None,
              rate: float | None = None) -> SendPlan:
    """Prepare the issue and look up the list; no state changes. The caller closes `plan.store`."""
    loaded = load_issue(issue_path)  # the issue's own mistakes first, before the store opens
    store = open_store(project)
    try:
        mailing_list = store.get_list(list_name)
        issue = prepare_issue(project, loaded, mailing_list.name, list_title=mailing_list.title)
        counts = next((lc.counts for lc in store.list_counts() if lc.list.id == mailing_list.id), {})
        recipients = counts.get("subscribed", 0)
        journal = Journal(store)
        existing = journal.find(issue.slug, mailing_list.id)
        joined_since = journal.joined_since(existing.id, mailing_list.id) if existing else recipients
        if existing is None and recipients == 0:
            waiting = f" ({counts['pending']} pending: they have not confirmed yet)" if counts.get(
                "pending") else ""
            raise NewsletterError(f"the list `{mailing_list.name}` has no subscribed members"
                                  f"{waiting}; nothing to send")
    except BaseException:
        store.close()
        raise
    delivery = project.settings.delivery
    return SendPlan(
        project=project, store=store, issue=issue, mailing_list=mailing_list,
        transport=transport_for(project), existing=existing,
        joined_since=joined_since, counts=counts,
        concurrency=concurrency or delivery.concurrency,
        rate=delivery.rate if rate is None else rate,
    )
