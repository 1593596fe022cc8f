"""Where reports come in: a bounce mailbox (`newsletter bounces fetch`) and provider webhooks
(`/hooks/<provider>` of `newsletter serve`). Both hand every finding to the `Ledger`.

A mailbox message is marked processed (`Source.done`) only after its findings are committed;
if the process dies in between, the next run reads it again and the ledger's event keys
(`mail:<sha256 of the message>:<n>`) make that a no-op. A message nobody can make sense of
(`unrecognised`) stays in the mailbox, is reported, and is read again next time (a later
version may understand it); auto-replies and delay notices are recorded as ignored and marked.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from newsletter.feedback.ledger import Event, Ledger, SoftRule, Taken
from newsletter.feedback.mailboxes import MailboxError, open_source
from newsletter.feedback.reports import Feedback, Report, read_report
from newsletter.tokens import signing_keys

if TYPE_CHECKING:
    from newsletter.audience.store import Store
    from newsletter.feedback.webhooks import ProviderEvent
    from newsletter.project import Project

IGNORED_VERDICTS = frozenset({"auto_reply", "delayed"})
_ADDRESS = re.compile(r"[^\s<>()\[\],;:\"']+@[^\s<>()\[\],;:\"']+")


def ledger_for(project: Project, store: Store) -> Ledger:
    """The project's ledger: its token keys check VERP tags; `[bounces]` sets the soft rule."""
    settings = project.settings.bounces
    return Ledger(store, signing_keys(project),
                  SoftRule(settings.soft_limit, settings.soft_sends, settings.soft_days))


def bounce_local(project: Project) -> str:
    """The local part VERP addresses start with (`bounces` of `bounces+TAG@…`)."""
    address = project.settings.bounces.address
    return address.rsplit("@", 1)[0] if address else "bounces"


@dataclass
class MessageResult:
    key: str
    report: Report
    taken: list[Taken] = field(default_factory=list)
    kept: bool = False  # left in the mailbox (unrecognised)


@dataclass
class FetchResult:
    mailbox: str
    messages: list[MessageResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # the source's own (e.g. a message it could not read)

    @property
    def outcomes(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for message in self.messages:
            if message.kept:
                counts["kept"] += 1
            for taken in message.taken:
                counts["already taken in" if taken.duplicate else taken.outcome] += 1
        return counts


def fetch_reports(project: Project, store: Store, *, mailbox: str | None = None,
                  on_message: Callable[[MessageResult], None] | None = None) -> FetchResult:
    """Read every report waiting in the mailbox (`mailbox`, else `[bounces] mailbox`)."""
    settings = project.settings.bounces
    spec = mailbox or settings.mailbox
    if not spec:
        raise MailboxError("no bounce mailbox: set [bounces] mailbox in newsletter.toml (imaps://…, "
                           "pop3s://…, or a Maildir/mbox path) or pass --mailbox")
    password = settings.password.get_secret_value() if settings.password else None
    ledger = ledger_for(project, store)
    local = bounce_local(project)
    result = FetchResult(mailbox=spec)
    with open_source(spec, password=password, ca_file=settings.ca_file) as source:
        result.mailbox = source.name
        for item in source.messages():
            report = read_report(item.raw, local)
            message = MessageResult(item.key, report)
            if report.verdict in ("bounce", "complaint"):
                message.taken = [ledger.take(_event(f"mail:{item.digest}:{n}", report, finding))
                                 for n, finding in enumerate(report.findings)]
                source.done(item.key)
            elif report.verdict in IGNORED_VERDICTS:
                # Kept without addresses: nobody's record, so no erasure would find them later.
                detail = _ADDRESS.sub("…", report.detail)
                message.taken = [ledger.take(Event(event_key=f"mail:{item.digest}", source="mailbox",
                                                   kind=report.verdict, diagnostic=detail,
                                                   reported_at=report.reported_at))]
                source.done(item.key)
            else:
                source.keep(item.key, report.detail)
                message.kept = True
            result.messages.append(message)
            if on_message:
                on_message(message)
        result.problems = list(source.problems)
    return result


def _event(key: str, report: Report, finding: Feedback) -> Event:
    return Event(event_key=key, source="mailbox", kind=finding.kind, recipient=finding.recipient,
                 status=finding.status, diagnostic=finding.diagnostic, tag=finding.tag,
                 message_id=finding.message_id, reported_at=report.reported_at)


def provider_event(provider: str, event: ProviderEvent) -> Event:
    """A webhook's event as the ledger takes it in (its provider's id is the event key)."""
    return Event(event_key=event.event_id, source=provider, kind=event.kind, recipient=event.recipient,
                 status=event.status, diagnostic=event.diagnostic, tag=event.tag,
                 message_id=event.message_id, reported_at=event.occurred_at)
