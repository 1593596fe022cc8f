"""The send loop: workers (one connection each) fed by a group-committing dispatcher.

`sender.run_send` sets a run up (journal start, the lease) and ends it; `SendRun` delivers. The
contract is docs/delivery.md; what a reply means is `policy.py`.

The subscription is checked when a message is claimed, and a message is claimed only after its
rate-limit slot has come: the check is at most one group commit old when SMTP gets the message.
The claim commits while MAIL and RCPT go out; DATA waits for it.

* Ctrl-C — no new message is started; those in flight finish and are recorded.
* an internal error (a bug) — the send stops like on Ctrl-C: the other messages in flight
  finish and are recorded; only the one in hand stays `sending` (possibly duplicated).

A run holds a lease (journal.py): taken by `Journal.start` (another live run: on SQLite
`SendBusy`, nothing sent; on PostgreSQL this run joins it), renewed every `Worker.heartbeat`
seconds by a timer on the event loop that queues the renewal on the journal thread (behind at
most the group commit in hand; the renewal also hands on dead workers' rows), released by
`Journal.finish` however the run ends. A run that finds its lease gone (the process was
suspended past it) claims nothing more and stops like on Ctrl-C.

Several runs of one send (PostgreSQL): each claims from its own list, the joiner's from the other
end. A claim that finds its row taken by another worker means the two met: the rest of the list
is dropped. When its list runs out a run asks the journal for the `pending` rows left
(`Journal.refill`: handed on from dead workers, released by others) until there are none; then it
ends, and the last worker to end sets the send's status (`SendReport.others`: the live ones left).

With `[bounces] address` each message's envelope sender is its delivery's VERP address
(`envelope.delivery_senders`), minted while the message is built.

Each job gets the mail for the topics its member chose (`variants.Variants`: rendered on first
need, once per selection of sections). A member left without a section is not claimed but
recorded `skipped` in the next group commit, with the reason (docs/topics.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from newsletter.audience.addresses import ascii_email
from newsletter.delivery.envelope import bounce_address
from newsletter.delivery.journal import Journal
from newsletter.delivery.lease import Worker
from newsletter.delivery.message import TEST_PREFERENCES_TOKEN, PreparedMessage, Recipient, failure_reason
from newsletter.delivery.plan import SendPlan
from newsletter.delivery.policy import classify, retry_delay
from newsletter.delivery.records import Claimed, Job, Outcome
from newsletter.delivery.report import SendProgress
from newsletter.delivery.transport import Connection, DeliveryError, RateLimit, Reply
from newsletter.delivery.variants import EMPTY_REASON, Variants
from newsletter.tokens import Tokens


class SendRun:
    """One delivery run: workers (one SMTP connection each) fed by a group-committing dispatcher.

    Journal writes run on a thread so the event loop keeps talking SMTP during the fsync; while one
    commit runs, finished messages and idle workers pile up and go into the next one together.
    """

    def __init__(self, plan: SendPlan, journal: Journal, worker: Worker, send_id: int,
                 prepared: PreparedMessage, jobs: Sequence[Job],
                 progress: Callable[[SendProgress], None] | None,
                 envelope: Callable[[int, int], str] | None = None,
                 variants: Variants | None = None) -> None:
        self.plan, self.journal, self.send_id, self.prepared = plan, journal, send_id, prepared
        # The mail per topic choice (docs/topics.md); `prepared` is the full issue's.
        self.variants = variants or Variants(plan.project, plan.issue, plan.mailing_list.name,
                                             plan.mailing_list.title, plan.topics)
        self.reasons: dict[int, str] = {}  # candidates not to mail (no section left) → why
        # Every job this run decided not to mail: a refill racing its commit must not list it again.
        self.not_mailed: set[int] = set()
        self.worker = worker
        # (send id, subscriber id) → the VERP envelope sender; None: the From address for all.
        self.envelope = envelope
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
        self.refilling: asyncio.Future[bool] | None = None  # one `Journal.refill` at a time
        # Handed to a connection, outcome not yet known: its row may still read `pending` (the
        # claim not committed yet), so a refill must not list it again.
        self.in_hand: set[int] = set()
        self.progress_cb = progress
        self.progress = SendProgress(total=len(jobs))
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
        beat = asyncio.create_task(self.heartbeat())
        connections = [self.plan.transport.connection() for _ in range(self.plan.concurrency)]
        try:
            # return_exceptions: one worker's bug must not leave the others' messages in flight
            # unrecorded (they were handed to SMTP; a resume would send them twice).
            await asyncio.gather(*(self.deliver_on(c) for c in connections), return_exceptions=True)
        finally:
            beat.cancel()
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

    async def deliver_on(self, connection: Connection) -> None:
        outcome: Outcome | None = None
        try:
            while True:
                item = await self.next(outcome)
                if item is None:
                    return
                job, message_id, claim, prepared = item
                outcome = None
                try:
                    sender, address, raw = self.build(job, message_id, prepared)
                except Exception as exc:
                    # Bad data for this one recipient (e.g. an address stored before it was
                    # checked): nothing was handed over; fail this row, keep sending the others.
                    if await claim:
                        outcome = Outcome(job, "failed_permanent", None,
                                          f"message not built, nothing sent: {failure_reason(exc)}")
                    continue
                try:
                    # The claim (membership check + row `sending`) commits while MAIL/RCPT go
                    # out; the connection waits for it before DATA.
                    reply = await connection.send(sender, address, raw, claim, dot_safe=True)
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

    def build(self, job: Job, message_id: str, prepared: PreparedMessage) -> tuple[str, str, bytes]:
        """Envelope sender, envelope recipient (IDN domain in punycode) and the personalised
        message (of `prepared`: the job's topic variant)."""
        recipient = Recipient(job.email, job.name, job.subscriber_id, self.list_id, job.attributes)
        # No token_id: the subscriber was erased after the jobs were loaded; the claim
        # (membership check) then refuses the message before DATA, so "-" never goes out.
        token_id = self.token_ids.get(job.subscriber_id, "-")
        raw = prepared.personalise(
            recipient, self.tokens.mint_unsubscribe(token_id, self.list_id), message_id,
            self.tokens.mint_preferences(token_id) if token_id != "-" else TEST_PREFERENCES_TOKEN)
        sender = self.prepared.sender if self.envelope is None else self.envelope(
            self.send_id, job.subscriber_id)
        return sender, ascii_email(job.email), raw

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
            delay = retry_delay(self.settings.retry_delay, attempts)  # with jitter
            again = dataclasses.replace(job, attempts=attempts)
            self._seq += 1
            heapq.heappush(self.retry_heap, (time.monotonic() + delay, self._seq, again))
            return Outcome(job, "pending", reply.code, f"{text} (retrying)", uncertain=reply.uncertain)
        if kind == "sender":
            if not self.stopped:
                self.paused = True
                where = " at MAIL FROM" if reply.stage == "mail" else ""
                base = bounce_address(self.plan.project)
                # With VERP the envelope sender is the bounce address + tag, not From.
                refused = (f"the sender address <{self.prepared.sender}>" if self.envelope is None
                           else f"the envelope sender <{base}> (with this message's VERP tag)")
                check = "newsletter.from" if self.envelope is None else (
                    "[bounces] address, newsletter.from")
                self.stop(
                    f"paused: the SMTP server refused {refused}"
                    f"{where} ({text}). No recipient is at fault and nobody was marked bounced "
                    f"— check {check}, the addresses the SMTP account may send as, and SPF, "
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

    # --- the lease ---------------------------------------------------------------------------

    async def heartbeat(self) -> None:
        """Every `worker.heartbeat` seconds queue a renewal of the lease on the journal thread.
        The timer is on the event loop, which never blocks; the renewal waits at most for the
        group commit in hand (the lease is six heartbeats long)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.worker.heartbeat)
            self.executor.submit(self._renew, loop)

    def _renew(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the journal thread."""
        try:
            held = self.journal.heartbeat(self.worker, self.send_id)
        except Exception:  # e.g. locked past the busy timeout. Harmless: every group commit
            return  # checks the lease before it claims, so a missed renewal never sends twice
        if not held:
            with contextlib.suppress(RuntimeError):  # the loop is gone
                loop.call_soon_threadsafe(self.lease_lost)

    def lease_lost(self) -> None:
        self.stop(
            f"stopped: this process (pid {self.worker.pid}) did not renew its lease on the send in "
            f"time (lease {self.worker.lease:g} s; was it suspended?), so another `newsletter send` "
            "may have taken the send over; messages in flight were finished and recorded where "
            "this process still held them")

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

    async def next(self, outcome: Outcome | None
                   ) -> tuple[Job, str, asyncio.Future[bool], PreparedMessage] | None:
        """Record `outcome`; the next job, its Message-ID, its claim (True once committed as
        `sending`, False if the person is no longer subscribed or paused) and its message."""
        loop = asyncio.get_running_loop()
        if outcome is not None:
            self.outcomes.append(outcome)
            self.in_hand.discard(outcome.job.subscriber_id)
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
            elif not await self.refill():
                return None
            else:
                continue
            prepared = self.variant(job)
            if prepared is None:  # no section for their topics (or the variant failed: stopped)
                if not self.stopped:
                    self.skip(job, EMPTY_REASON)
                continue
            # Wait for the rate limit *before* claiming: the claim checks the subscription, and
            # that check must be fresh when SMTP gets the message, not a rate-limit slot old.
            await self.rate.wait()
            if self.stopped:  # the job is still `pending` in the journal: the resume sends it
                return None
            message_id = self.prepared.message_id(
                Recipient(job.email, job.name, job.subscriber_id, self.list_id, job.attributes))
            claim: asyncio.Future[bool] = loop.create_future()
            self.claims.append((job, message_id, claim))
            self.in_hand.add(job.subscriber_id)
            self._wake()
            return job, message_id, claim, prepared

    def variant(self, job: Job) -> PreparedMessage | None:
        """The job's message for the topics the member chose (rendered on first need); None if
        no section is left for them — or if the variant cannot be rendered: then the run stops
        (the job stays `pending`) and says why."""
        try:
            return self.variants.prepared(job.topics)
        except Exception as exc:
            reason = (f"the issue's version for the topics {', '.join(sorted(job.topics or ()))} "
                      f"could not be made: {failure_reason(exc)}")
            self.fatal = self.fatal or DeliveryError(reason)
            self.stop(reason)
            return None

    def skip(self, job: Job, reason: str) -> None:
        """Not to be mailed: the next group commit records the row `skipped` with `reason` (if it
        is still open; one no longer subscribed or paused is skipped for that)."""
        self.reasons[job.subscriber_id] = reason
        self.not_mailed.add(job.subscriber_id)
        self.claims.append((job, "", asyncio.get_running_loop().create_future()))  # awaited by none
        self._wake()

    async def refill(self) -> bool:
        """The list ran out: ask the journal for rows left `pending` (dead workers' rows handed
        on, rows other workers released). True if there are more. Connections that run out
        together share one query; it runs on the journal thread, after the commits queued."""
        if self.refilling is None:
            self.refilling = asyncio.ensure_future(self._refill())
        refilling = self.refilling
        try:
            return await asyncio.shield(refilling)
        finally:
            if self.refilling is refilling and refilling.done():
                self.refilling = None

    async def _refill(self) -> bool:
        loop = asyncio.get_running_loop()
        jobs = await loop.run_in_executor(self.executor, self.journal.refill, self.send_id,
                                          self.worker)
        if self.stopped:
            return False
        busy = self.in_hand | self.not_mailed | {job.subscriber_id for _due, _seq, job in self.retry_heap}
        jobs = [j for j in jobs if j.subscriber_id not in busy]
        self.queue.extend(jobs)
        self.progress.total += len(jobs)
        return bool(jobs)

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
        reasons = {job.subscriber_id: self.reasons.pop(job.subscriber_id)
                   for job in jobs if job.subscriber_id in self.reasons}
        self.committing = True
        self.executor.submit(self._commit, asyncio.get_running_loop(), outcomes, bounces, jobs, ids,
                             claims, reasons)

    def _commit(self, loop: asyncio.AbstractEventLoop, outcomes: list[Outcome],
                bounces: list[Outcome], jobs: list[Job], ids: dict[int, str],
                claims: list[tuple[Job, str, asyncio.Future[bool]]], reasons: dict[int, str]) -> None:
        """On the journal thread: one group commit; its result goes straight to the loop (one
        hop, not run_in_executor's two: the claims wait for this)."""
        try:
            result: Claimed | BaseException = self._write(outcomes, bounces, jobs, ids, reasons)
        except BaseException as exc:
            result = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: aborted by a second Ctrl-C
            loop.call_soon_threadsafe(self._committed, result, claims)

    def _write(self, outcomes: list[Outcome], bounces: list[Outcome], candidates: list[Job],
               ids: dict[int, str], reasons: dict[int, str] | None = None) -> Claimed:
        result = self.journal.commit(self.send_id, self.list_id, self.worker, outcomes, candidates,
                                     ids, reasons)
        for bounce in bounces:
            self.plan.store.set_status(bounce.job.subscriber_id, self.list_id, "bounced", "bounce",
                                       detail=f"{self.plan.issue.rendered.slug}: {bounce.reply}"[:1000])
        return result

    def _committed(self, result: Claimed | BaseException,
                   claims: list[tuple[Job, str, asyncio.Future[bool]]]) -> None:
        self.committing = False
        if isinstance(result, BaseException):
            self.error = self.error or result
            self.stopped = True
            self.reason = self.reason or f"the journal could not be written: {result}"
            go, skipped = [], []
        else:
            if result.lease_lost:
                self.lease_lost()
            # `result.taken`: rows no longer open (another worker has them): not sent, not counted.
            # The other worker came from the other end of the list: from here on the rest is
            # its, so the rest is dropped (what it leaves `pending` comes back with `refill`).
            # (A retry taken by another worker says nothing about where the list meets.)
            self.progress.total -= len(result.taken)
            if any(job.attempts == 0 for job in result.taken):
                self.progress.total -= len(self.queue)
                self.queue.clear()
            go, skipped = result.go, result.skipped
        cleared = {job.subscriber_id for job in go}
        for job, _message_id, claim in claims:
            if job.subscriber_id not in cleared:  # skipped or taken: no outcome will follow
                self.in_hand.discard(job.subscriber_id)
            if not claim.done():
                claim.set_result(job.subscriber_id in cleared)
        self.progress.skipped += len(skipped)
        self._flush()  # what piled up meanwhile goes at once, not an iteration later
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
