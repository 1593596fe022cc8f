"""Before the first message: the issue from its file to the prepared message, and the send plan.

`prepare_issue` is the one sequence load → validate → render → prepare behind every way an
issue becomes mail: the send to a list, the test send, the dry run, the preview's headers view
and the library API. `plan_send` adds the list, its members, the journal's earlier send of the
issue and the transport: everything shown to the editor before they confirm.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from newsletter.audience.queries import attribute_names, paused_count
from newsletter.audience.records import MailingList
from newsletter.audience.segments import Segment, count_members, load_segment
from newsletter.audience.store import Store, open_store
from newsletter.content.fields import FIELD, NAME_FIELD
from newsletter.content.topics import issue_tags, undeclared
from newsletter.content.validate import LoadedIssue, load_issue
from newsletter.db.schema import utcnow
from newsletter.delivery.approval import local_time
from newsletter.delivery.message import PreparedMessage, content_hash, prepare
from newsletter.delivery.records import JournalReader, SendInfo, scheduled_refusal
from newsletter.delivery.reputation import warning
from newsletter.delivery.tables import WHOLE_LIST, audience_text
from newsletter.delivery.transport import Transport, transport_for
from newsletter.errors import IssueInvalid, NewsletterError, Problem
from newsletter.project import Project
from newsletter.render.html import RenderedIssue, render_issue
from newsletter.render.images import write_images


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
    # The mail refers to its local images under {base_url}/archive/<slug>/: they are written
    # into dist/<slug>/ (which `serve` serves) before any mail can point at them, built or not.
    # Names are content-addressed: a file already there is not written again.
    write_images(rendered.images, project.dist_dir / rendered.slug)
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
    # The project's most recently finished send (any list): its complaints and bounces.
    last_finished: SendInfo | None = None
    # `--segment`: only the list's members in it are sent to; the send is (issue, list, segment).
    segment: Segment | None = None
    segment_members: int = 0  # with `segment`: its subscribed members now
    paused: int = 0  # of the recipients, those who paused the newsletter (skipped)
    # Of the recipients (new to this send), those another send of the issue to the list has
    # sent it (the whole list and a segment, or overlapping segments): skipped.
    sent_elsewhere: int = 0

    @property
    def recipients(self) -> int:
        """Subscribed members now (of the segment, with one)."""
        return self.segment_members if self.segment else self.counts.get("subscribed", 0)

    @property
    def segment_key(self) -> str:
        """The journal's segment column: the segment's name, "" for the whole list."""
        return self.segment.name if self.segment else WHOLE_LIST

    @property
    def audience(self) -> str:
        """What the send goes to, for messages (`audience_text`)."""
        return audience_text(self.mailing_list.name, self.segment_key)

    @property
    def nothing_to_do(self) -> bool:
        """A re-run of a send that is complete: nobody to (re)try and nobody new on the list."""
        if self.existing is None or self.existing.status != "finished":
            return False  # a paused or interrupted send is resumed: it finishes and says why
        return self.existing.open_rows == 0 and self.joined_since == 0

    def refuse_if_scheduled(self) -> None:
        """A send to start now refuses an issue scheduled for this list and segment: one line
        saying when, and how to cancel it (`Journal.start` refuses again, atomically)."""
        existing = self.existing
        if existing is not None and existing.status == "scheduled":
            assert existing.scheduled_at is not None
            when = local_time(existing.scheduled_at, self.project.settings.newsletter.timezone)
            raise scheduled_refusal(existing.id, self.issue.slug, self.audience, when)

    def refuse_if_busy(self) -> None:
        """Raise `SendBusy` (the one line saying who sends it, since when, until when its lease
        runs) if another process holds this send's lease now. Asked before the summary and the
        confirmation; `Journal.start` decides again, atomically, when the run begins."""
        if self.existing is not None:
            busy = JournalReader(self.store).busy_error(self.existing.id)
            if busy is not None:
                raise busy

    @property
    def topics(self) -> dict[str, str]:
        """The list's topics (`[topics.<list>]`: key → label): what its members may choose."""
        return self.project.settings.topics.get(self.mailing_list.name, {})

    @property
    def reputation_warning(self) -> str | None:
        """One line if the project's last finished send had too many complaints or hard bounces
        (`reputation.py`), to be shown before the editor confirms."""
        return warning(self.last_finished)


def _refuse_unknown_fields(store: Store, issue: PreparedIssue, mailing_list: MailingList) -> None:
    """A personal field must name `name` or an attribute the list's members have: a typo of a CSV
    column would otherwise send every reader the fallback. One problem per field, FILE:LINE:COL
    of its first use in the issue file."""
    prepared = issue.prepared
    refs = [*prepared.fields, *(prepared.greeting.fields() if prepared.greeting else [])]
    wanted = {ref.name for ref in refs if ref.name != NAME_FIELD}
    if not wanted:
        return
    with store.read() as conn:
        known = attribute_names(conn, mailing_list.id)
    unknown = sorted(wanted - known)
    if not unknown:
        return
    path = issue.loaded.path
    source = path.read_text(encoding="utf-8")
    known_text = ", ".join(f"`{k}`" for k in sorted(known)) or "none (the list's CSV had no extra columns)"
    problems = []
    for name in unknown:
        line = column = None
        for m in FIELD.finditer(source):
            if m.group(1).partition("|")[0].strip() == name:
                line = source.count("\n", 0, m.start()) + 1
                column = m.start() - (source.rfind("\n", 0, m.start()) + 1) + 1
                break
        problems.append(Problem(str(path), line, column, f"{{{{{name}}}}}",
                                f"no member of the list `{mailing_list.name}` has the attribute `{name}`; "
                                f"known: {known_text} (or `name`)"))
    raise IssueInvalid(problems=problems)


def _refuse_unknown_topics(project: Project, loaded: LoadedIssue, mailing_list: MailingList) -> None:
    """A section's topic must be one the list declares: nobody on the list can have chosen any
    other, so that section would only reach the members without a choice. FILE:LINE:COL of each
    use."""
    declared = project.settings.topics.get(mailing_list.name, {})
    where = f"for the list `{mailing_list.name}` (`[topics.{mailing_list.name}]` in newsletter.toml)"
    problems = undeclared(issue_tags(loaded.issue), loaded.source, declared, where, "error")
    if problems:
        raise IssueInvalid(problems=problems)


def plan_send(project: Project, issue_path: Path, list_name: str, *, segment: str | None = None,
              concurrency: int | None = None, rate: float | None = None) -> SendPlan:
    """Prepare the issue and look up the list (and the segment `segment` of it); no state
    changes. The caller closes `plan.store`."""
    loaded = load_issue(issue_path)  # the issue's own mistakes first, before the store opens
    # newsletter.toml's mistakes next; "" is a mistake too (an unset shell variable must not
    # become a send to the whole list).
    chosen = load_segment(project, segment) if segment is not None else None
    store = open_store(project)
    try:
        mailing_list = store.get_list(list_name)
        if chosen is not None:
            chosen.check_list(mailing_list.name)
        _refuse_unknown_topics(project, loaded, mailing_list)
        issue = prepare_issue(project, loaded, mailing_list.name, list_title=mailing_list.title)
        _refuse_unknown_fields(store, issue, mailing_list)
        counts = next((lc.counts for lc in store.list_counts() if lc.list.id == mailing_list.id), {})
        in_segment = count_members(store, mailing_list.id, chosen) if chosen else 0
        recipients = in_segment if chosen else counts.get("subscribed", 0)
        with store.read() as conn:
            paused = paused_count(conn, mailing_list.id, utcnow(), chosen)
        journal = JournalReader(store)
        existing = journal.find(issue.slug, mailing_list.id, chosen.name if chosen else WHOLE_LIST)
        if existing is not None and existing.status == "cancelled":  # called off, never started
            existing = None
        joined_since = (journal.joined_since(existing.id, mailing_list.id, chosen)
                        if existing else recipients)
        sent_elsewhere = journal.sent_elsewhere(issue.slug, mailing_list.id, chosen,
                                                existing.id if existing else None)
        last_finished = journal.last_finished()
        if (existing is None or existing.status == "scheduled") and recipients == 0:
            waiting = f" ({counts['pending']} pending: they have not confirmed yet)" if counts.get(
                "pending") and not chosen else ""
            where = audience_text(mailing_list.name, chosen.name if chosen else WHOLE_LIST)
            raise NewsletterError(f"{where} has no subscribed members{waiting}; nothing to send")
    except BaseException:
        store.close()
        raise
    delivery = project.settings.delivery
    return SendPlan(
        project=project, store=store, issue=issue, mailing_list=mailing_list,
        transport=transport_for(project), existing=existing,
        joined_since=joined_since, counts=counts,
        concurrency=concurrency or delivery.concurrency,
        rate=delivery.rate if rate is None else rate, last_finished=last_finished,
        segment=chosen, segment_members=in_segment, paused=paused, sent_elsewhere=sent_elsewhere,
    )
