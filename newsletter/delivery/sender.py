"""Send an issue: render once, prepare the message once, deliver to a list through the journal.

Error policy (DESIGN.md section 5):

* 4xx — retried with exponential backoff and jitter (`delivery.retry_delay`, doubling) up to
  `delivery.retries` times in this run, then `failed_temporary` (the next resume tries again).
  421 and dropped connections also make the connection reconnect; a connection lost after the
  whole message was written flags the row `possibly_duplicated` (the server may have it).
* 5xx at MAIL FROM, or 5.1.7 / 5.1.8 anywhere — the *sender* address is refused: the send pauses
  at once, the message goes back to `pending`, nobody is marked.
* 5.1.x at RCPT or DATA (one recipient per message) — the mailbox is unknown: `failed_permanent`,
  and the membership becomes `bounced`.
* 5.2.x (mailbox full / disabled) — `failed_permanent` for this message, subscriber untouched.
* 5.7.x and other 5xx — the sender's problem (policy, reputation, content): `failed_temporary`
  with the reply, so the next resume tries again; the subscriber is untouched. After
  `delivery.max_policy_failures` of them in a row the send pauses and says why.
* no connection / TLS / login — the send stops at once; the message in hand goes back to
  `pending`, nothing is lost.
* Ctrl-C — no new message is started; those in flight finish and are recorded.
* a message that cannot be built for one recipient (e.g. a non-ASCII local part stored
  before addresses were checked) — `failed_permanent` with the reason; the send goes on.
* an internal error (a bug) — the send stops like on Ctrl-C: the other messages in flight
  finish and are recorded; only the one in hand stays `sending` (possibly duplicated).

The subscription is checked when a message is claimed, and a message is claimed only after its
rate-limit slot has come: the check is at most one group commit old when SMTP gets the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import random
import re
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from newsletter.audience.store import MailingList, Store, ascii_email, normalize_email, open_store
from newsletter.config import Project
from newsletter.content.validate import load_issue
from newsletter.delivery.journal import ContentChanged, Job, Journal, Outcome, SendInfo
from newsletter.delivery.message import PreparedMessage, Recipient, check_address, content_hash, prepare
from newsletter.delivery.transport import (
    Connection,
    DeliveryError,
    RateLimit,
    Reply,
    Transport,
    transport_for,
)
from newsletter.errors import NewsletterError
from newsletter.render.html import RenderedIssue, render_issue
from newsletter.tokens import Tokens

__all__ = ["ContentChanged", "DeliveryError", "Progress", "SendPlan", "SendReport", "dry_run",
           "plan_send", "run_send", "send_test"]

MAX_BACKOFF = 300.0
# What a [TEST] mail's unsubscribe link ends in: `{base_url}/u/test`, a page of `newsletter serve`
# explaining that this was a test send (no subscriber, nothing to unsubscribe).
TEST_UNSUBSCRIBE_TOKEN = "test"


@dataclass
class Progress:
    total: int
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    retrying: int = 0

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.skipped


@dataclass
class SendPlan:
    """Everything decided before the first message: shown to the editor for confirmation."""

    project: Project
    store: Store
    rendered: RenderedIssue
    mailing_list: MailingList
    recipients: int  # subscribed members now
    transport: Transport
    existing: SendInfo | None
    content_hash: str
    concurrency: int
    rate: float

    warnings: list[str] = field(default_factory=list)  # the issue's validation warnings


@dataclass
class SendReport:
    send_id: int
    issue: str
    list_name: str
    subject: str
    transport: str
    status: str  # finished | paused | interrupted
    total: int
    sent: int
    failed_temporary: int
    failed_permanent: int
    bounced: int
    skipped: int
    pending: int
    resumed: bool
    possibly_duplicated: list[str] = field(default_factory=list)
    reason: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def plan_send(project: Project, issue_path: Path, list_name: str, *, concurrency: int | None = None,
              rate: float | None = None) -> SendPlan:
    """Render the issue and look up the list; no state changes."""
    loaded = load_issue(issue_path)
    rendered = render_issue(loaded, project)
    store = open_store(project)
    try:
        mailing_list = store.get_list(list_name)
        counts = next((lc.counts for lc in store.list_counts() if lc.list.id == mailing_list.id), {})
        recipients = counts.get("subscribed", 0)
        journal = Journal(store)
        existing = journal.find(rendered.slug, mailing_list.id)
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
        project=project, store=store, rendered=rendered, mailing_list=mailing_list,
        recipients=recipients, transport=transport_for(project), existing=existing,
        content_hash=content_hash(rendered.subject, rendered.html, rendered.text),
        concurrency=concurrency or delivery.concurrency,
        rate=delivery.rate if rate is None else rate,
        warnings=[w.format() for w in loaded.warnings],
    )


def run_send(plan: SendPlan, *, force: bool = False,
             progress: Callable[[Progress], None] | None = None) -> SendReport:
    """Send (or resume) the issue to the list; returns the report, raises DeliveryError on a
    connection/authentication failure after recording everything."""
    journal = Journal(plan.store)
    started = time.monotonic()
    prepared = prepare(plan.project, plan.rendered, list_name=plan.mailing_list.name,
                       list_title=plan.mailing_list.title)
    # Fail before touching the journal if the server cannot be reached at all.
    asyncio.run(plan.transport.check())
    try:
        resume = journal.start(
            issue_slug=plan.rendered.slug, list_id=plan.mailing_list.id,
            subject=plan.rendered.subject, content=plan.content_hash,
            transport=plan.transport.description, force=force)
    except ContentChanged:  # the issue changed since the send started: note it on the send
        existing = journal.find(plan.rendered.slug, plan.mailing_list.id)
        if existing is not None:
            journal.refuse_changed(existing.id)
        raise
    run = _Run(plan, journal, resume.send.id, prepared, resume.jobs, progress)
    try:
        asyncio.run(run.deliver())
    finally:
        status = "paused" if run.paused else "interrupted" if run.stopped else "finished"
        journal.finish(resume.send.id, status, run.reason)
    info = journal.get(resume.send.id)
    assert info is not None
    c = info.counts
    report = SendReport(
        send_id=info.id, issue=info.issue_slug, list_name=info.list_name, subject=info.subject,
        transport=info.transport, status=status, total=c["total"], sent=c["sent"],
        failed_temporary=c["failed_temporary"], failed_permanent=c["failed_permanent"],
        bounced=run.bounced, skipped=c["skipped"], pending=c["pending"] + c["sending"],
        resumed=resume.resumed,
        possibly_duplicated=journal.possibly_duplicated(resume.send.id),
        reason=run.reason, seconds=time.monotonic() - started,
    )
    if run.fatal is not None:
        raise DeliveryError(
            f"{run.fatal.message}\nThe send stopped; nothing is lost ({report.sent} sent, "
            f"{report.pending} still pending). Fix the problem and re-run the same command to resume.")
    return report


def _reason(exc: Exception) -> str:
    if isinstance(exc, NewsletterError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def classify(reply: Reply) -> str:
    """sent | retry | sender | bounce | policy | permanent."""
    if reply.ok:
        return "sent"
    if reply.temporary:
        return "retry"
    enhanced = reply.enhanced
    # MAIL FROM refused, or RFC 3463's "bad sender's address" (5.1.7, 5.1.8): the sender's problem.
    if reply.stage == "mail" or enhanced in ("5.1.7", "5.1.8"):
        return "sender"
    if enhanced.startswith("5.1.") or (
            not enhanced and reply.stage == "rcpt" and reply.code in (550, 551, 553)):
        return "bounce"
    if enhanced.startswith("5.2."):  # mailbox full / disabled: not the sender's fault, not a bounce
        return "permanent"
    return "policy"


class _Run:
    """One delivery run: workers (one SMTP connection each) fed by a group-committing dispatcher.

    Journal writes run on a thread so the event loop keeps talking SMTP during the fsync; while one
    commit runs, finished messages and idle workers pile up and go into the next one together.
    """

    def __init__(self, plan: SendPlan, journal: Journal, send_id: int, prepared: PreparedMessage,
                 jobs: Sequence[Job], progress: Callable[[Progress], None] | None) -> None:
        self.plan, self.journal, self.send_id, self.prepared = plan, journal, send_id, prepared
        self.list_id = plan.mailing_list.id
        self.settings = plan.project.settings.delivery
        self.tokens = Tokens.for_project(plan.project)
        self.token_ids = plan.store.token_ids(self.list_id)  # links name token_ids, not ids
        self.queue: deque[Job] = deque(jobs)
        self.retry_heap: list[tuple[float, int, Job]] = []
        self.outcomes: list[Outcome] = []
        self.bounces: list[Outcome] = []
        self.claims: list[tuple[Job, str, asyncio.Future[bool]]] = []  # job, Message-ID, claim
        self.flush_handle: asyncio.Handle | None = None
        self.committing = False
        self.progress_cb = progress
        self.progress = Progress(total=len(jobs))
        self.policy_streak = 0
        self.bounced = 0
        self.stopped = False
        self.paused = False
        self.reason: str | None = None
        self.fatal: DeliveryError | None = None
        self.error: BaseException | None = None
        self._seq = 0
        self._last_report = 0.0

    # --- workers ---------------------------------------------------------------------------

    async def deliver(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, self.interrupt)
        self.rate = RateLimit(self.plan.rate)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        connections = [self.plan.transport.connection() for _ in range(self.plan.concurrency)]
        try:
            # return_exceptions: one worker's bug must not leave the others' messages in flight
            # unrecorded (they were handed to SMTP; a resume would send them twice).
            await asyncio.gather(*(self.worker(c) for c in connections), return_exceptions=True)
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGINT)
            await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)
            while self.committing or self.flush_handle is not None:  # the last group commits
                await asyncio.sleep(0.001)
            if self.outcomes or self.bounces or self.claims:  # results of the last messages
                self._write(self.outcomes, self.bounces, [], {})
                for _job, _message_id, claim in self.claims:
                    claim.cancel()
            self.executor.shutdown()
            self._report(force=True)
        if self.error is not None:
            raise self.error

    async def worker(self, connection: Connection) -> None:
        outcome: Outcome | None = None
        sender = self.prepared.sender
        try:
            while True:
                item = await self.next(outcome)
                if item is None:
                    return
                job, message_id, claim = item
                outcome = None
                try:
                    address, raw = self.build(job, message_id)
                except Exception as exc:
                    # Bad data for this one recipient (e.g. an address stored before it was
                    # checked): nothing was handed over; fail this row, keep sending the others.
                    if await claim:
                        outcome = Outcome(job, "failed_permanent", None,
                                          f"message not built, nothing sent: {_reason(exc)}")
                    continue
                try:
                    # The claim (membership check + row `sending`) commits while MAIL/RCPT go
                    # out; the connection waits for it before DATA.
                    reply = await connection.send(sender, address, raw, claim)
                except DeliveryError as exc:
                    self.fatal = self.fatal or exc
                    self.stop(exc.message)
                    if await claim:  # back to pending: it was never handed over
                        outcome = Outcome(job, "pending", None, f"not sent: {exc.message}",
                                          counted=False)
                    continue
                if reply is not None and await claim:  # else: no longer subscribed (`skipped`)
                    outcome = self.judge(job, reply)
        except BaseException as exc:
            # A bug, or cancellation: we cannot know whether the message in hand left, so its row
            # stays `sending`. The other workers finish their messages (recorded by `deliver`).
            self.error = self.error or exc
            self.stop(f"internal error: {exc!r}")
            raise

    def build(self, job: Job, message_id: str) -> tuple[str, bytes]:
        """Envelope recipient (IDN domain in punycode) and the personalised message."""
        recipient = Recipient(job.email, job.name, job.subscriber_id, self.list_id)
        # No token_id: the subscriber was erased after the jobs were loaded; the claim
        # (membership check) then refuses the message before DATA, so "-" never goes out.
        token_id = self.token_ids.get(job.subscriber_id, "-")
        raw = self.prepared.personalise(
            recipient, self.tokens.unsubscribe(token_id, self.list_id), message_id)
        return ascii_email(job.email), raw

    def judge(self, job: Job, reply: Reply) -> Outcome:
        kind = classify(reply)
        text = str(reply)
        if kind == "sent":
            self.policy_streak = 0
            return Outcome(job, "sent", reply.code, text)
        if kind == "retry":
            attempts = job.attempts + 1
            if attempts > self.settings.retries:
                return Outcome(job, "failed_temporary", reply.code, text, uncertain=reply.uncertain)
            delay = min(self.settings.retry_delay * 2 ** (attempts - 1), MAX_BACKOFF)
            delay *= random.uniform(0.5, 1.5)  # jitter: retries of many messages spread out
            again = dataclasses.replace(job, attempts=attempts)
            self._seq += 1
            heapq.heappush(self.retry_heap, (time.monotonic() + delay, self._seq, again))
            return Outcome(job, "pending", reply.code, f"{text} (retrying)", uncertain=reply.uncertain)
        if kind == "sender":
            if not self.stopped:
                self.paused = True
                where = " at MAIL FROM" if reply.stage == "mail" else ""
                self.stop(
                    f"paused: the SMTP server refused the sender address <{self.prepared.sender}>"
                    f"{where} ({text}). No recipient is at fault and nobody was marked bounced "
                    "— check newsletter.from, the addresses the SMTP account may send as, and SPF, "
                    "then re-run the same command to resume.")
            # Never handed over: back to `pending`, no attempt used; the resume sends it.
            return Outcome(job, "pending", reply.code, text, counted=False)
        if kind == "bounce":
            self.policy_streak = 0
            self.bounced += 1
            outcome = Outcome(job, "failed_permanent", reply.code, text)
            self.bounces.append(outcome)
            return outcome
        if kind == "policy":
            self.policy_streak += 1
            if self.policy_streak >= self.settings.max_policy_failures and not self.paused:
                self.paused = True
                self.stop(
                    f"paused after {self.policy_streak} policy rejections in a row (last: {text}). "
                    "The receiving servers refuse the sender, not the recipients — check SPF/DKIM/"
                    "DMARC, the sending reputation, the content or the rate, then re-run the "
                    "same command to resume.")
            # The sender's problem, not the subscriber's: open, so the next resume tries again.
            return Outcome(job, "failed_temporary", reply.code, text)
        return Outcome(job, "failed_permanent", reply.code, text)  # 5.2.x: this mailbox, for now

    # --- dispatcher (group commit) ----------------------------------------------------------

    def interrupt(self) -> None:
        self.stop("interrupted (Ctrl-C); messages in flight were finished and recorded")
        # A second Ctrl-C aborts at once (rows in flight then stay `sending`: possibly duplicated).
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)

    def stop(self, reason: str) -> None:
        if not self.stopped:
            self.stopped = True
            self.reason = reason

    async def next(self, outcome: Outcome | None) -> tuple[Job, str, asyncio.Future[bool]] | None:
        """Record `outcome`; the next job, its Message-ID and its claim (True once committed as
        `sending`, False if the person is no longer subscribed)."""
        loop = asyncio.get_running_loop()
        if outcome is not None:
            self.outcomes.append(outcome)
            self._count(outcome)
        while True:
            self._wake()
            if self.stopped:
                return None
            now = time.monotonic()
            if self._due(now):
                job = heapq.heappop(self.retry_heap)[2]
            elif self.queue:
                job = self.queue.popleft()
            elif self.retry_heap:  # only retries left, none due yet
                await asyncio.sleep(min(max(self.retry_heap[0][0] - now, 0.001), 0.1))
                continue
            else:
                return None
            # Wait for the rate limit *before* claiming: the claim checks the subscription, and
            # that check must be fresh when SMTP gets the message, not a rate-limit slot old.
            await self.rate.wait()
            if self.stopped:  # the job is still `pending` in the journal: the resume sends it
                return None
            message_id = self.prepared.message_id(
                Recipient(job.email, job.name, job.subscriber_id, self.list_id))
            claim: asyncio.Future[bool] = loop.create_future()
            self.claims.append((job, message_id, claim))
            self._wake()
            return job, message_id, claim

    def _wake(self) -> None:
        if self.committing or self.flush_handle is not None or not (self.outcomes or self.claims):
            return  # a commit is running (its completion flushes again) or one is scheduled
        self.flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Start one group commit: outcomes so far + the claims of the jobs just handed out."""
        self.flush_handle = None
        if self.committing or not (self.outcomes or self.claims):
            return
        outcomes, self.outcomes = self.outcomes, []
        bounces, self.bounces = self.bounces, []
        claims, self.claims = self.claims, []
        jobs = [job for job, _message_id, _claim in claims]
        ids = {job.subscriber_id: message_id for job, message_id, _claim in claims}
        self.committing = True
        future = asyncio.get_running_loop().run_in_executor(
            self.executor, self._write, outcomes, bounces, jobs, ids)
        future.add_done_callback(lambda f: self._committed(f, claims))

    def _write(self, outcomes: list[Outcome], bounces: list[Outcome], candidates: list[Job],
               ids: dict[int, str]) -> tuple[list[Job], list[Job]]:
        result = self.journal.commit(self.send_id, self.list_id, outcomes, candidates, ids)
        for bounce in bounces:
            self.plan.store.set_status(bounce.job.subscriber_id, self.list_id, "bounced", "bounce",
                                       detail=f"{self.plan.rendered.slug}: {bounce.reply}"[:1000])
        return result

    def _committed(self, future: asyncio.Future[tuple[list[Job], list[Job]]],
                   claims: list[tuple[Job, str, asyncio.Future[bool]]]) -> None:
        self.committing = False
        try:
            go, skipped = future.result()
        except BaseException as exc:
            self.error = self.error or exc
            self.stopped = True
            self.reason = self.reason or f"the journal could not be written: {exc}"
            go, skipped = [], []
        cleared = {job.subscriber_id for job in go}
        for job, _message_id, claim in claims:
            if not claim.done():
                claim.set_result(job.subscriber_id in cleared)
        self.progress.skipped += len(skipped)
        self._wake()
        self._report()

    def _due(self, now: float) -> bool:
        return bool(self.retry_heap) and self.retry_heap[0][0] <= now

    def _count(self, outcome: Outcome) -> None:
        if outcome.status == "sent":
            self.progress.sent += 1
        elif outcome.status.startswith("failed"):
            self.progress.failed += 1
        self.progress.retrying = len(self.retry_heap)

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.progress_cb is not None and (force or now - self._last_report > 0.1):
            self._last_report = now
            self.progress_cb(self.progress)


# --- test sends and dry runs ------------------------------------------------------------------


def send_test(project: Project, issue_path: Path, addresses: Sequence[str]) -> list[tuple[str, Reply]]:
    """Send the issue to `addresses` with subject "[TEST] …": no journal, no list needed.

    The unsubscribe link is `{base_url}/u/test` (no subscriber behind it; `serve` says so)."""
    for address in addresses:
        check_address(address, "--to", "command line")
    addresses = [ascii_email(normalize_email(address)) for address in addresses]
    rendered = render_issue(load_issue(issue_path), project)
    prepared = prepare(project, rendered, subject_prefix="[TEST] ")
    transport = transport_for(project)

    async def deliver() -> list[tuple[str, Reply]]:
        await transport.check()
        connection = transport.connection()
        replies = []
        try:
            for address in addresses:
                raw = prepared.personalise(Recipient(address), TEST_UNSUBSCRIBE_TOKEN)
                reply = await connection.send(prepared.sender, address, raw)
                assert reply is not None  # only None when a `ready` claim says no
                replies.append((address, reply))
        finally:
            await connection.close()
        return replies

    return asyncio.run(deliver())


def dry_run(plan: SendPlan, directory: Path | None = None,
            skipped: list[str] | None = None) -> tuple[Path, int]:
    """Write the personalised message of every subscribed member as an .eml file; send nothing.

    The default directory is `outbox/dry-run/<slug>/`: git-ignored and never served (unlike
    `dist/`, which `serve` publishes) — the files hold addresses and working unsubscribe links.
    Members whose message cannot be built (the real send fails them) are left out and, with
    `skipped`, listed there with the reason."""
    directory = directory or plan.project.outbox_dir / "dry-run" / plan.rendered.slug
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NewsletterError(f"cannot create {directory}: {exc.strerror}") from None
    prepared = prepare(plan.project, plan.rendered, list_name=plan.mailing_list.name,
                       list_title=plan.mailing_list.title, sign=False)
    tokens = Tokens.for_project(plan.project)
    count = 0
    for member in plan.store.members(plan.mailing_list.id):
        recipient = Recipient(member.email, member.name, member.subscriber_id, plan.mailing_list.id)
        try:
            raw = prepared.personalise(recipient, tokens.unsubscribe(member.token_id,
                                                                     plan.mailing_list.id))
        except Exception as exc:  # like the real send: this recipient fails, the others go on
            if skipped is not None:
                skipped.append(f"{member.email}: {_reason(exc)}")
            continue
        name = re.sub(r"[^A-Za-z0-9@._+-]", "_", member.email)
        (directory / f"{member.subscriber_id:06d}-{name}.eml").write_bytes(raw)
        count += 1
    return directory, count
