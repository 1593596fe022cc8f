"""Deliver a planned issue (`newsletter.delivery.plan`) to a list: `run_send`, the entry point.

A run: the server is checked, `Journal.start` takes the lease and lists the work, the send loop
(`send_loop.SendRun`) delivers, `Journal.finish` releases the lease and sets the send's status,
and the run's `SendReport` comes back. The whole contract is in docs/delivery.md; the error
policy is `policy.py`. The names a caller needs are importable from here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime

from newsletter.delivery.envelope import delivery_senders
from newsletter.delivery.journal import ContentChanged, Journal
from newsletter.delivery.lease import SendBusy, Worker, WorkerInfo
from newsletter.delivery.plan import SendPlan
from newsletter.delivery.policy import classify
from newsletter.delivery.report import SendProgress, SendReport
from newsletter.delivery.send_loop import SendRun
from newsletter.delivery.transport import DeliveryError
from newsletter.delivery.variants import Variants

__all__ = ["ContentChanged", "DeliveryError", "SendBusy", "SendProgress", "SendReport", "classify",
           "run_send"]


def run_send(plan: SendPlan, *, force: bool = False,
             progress: Callable[[SendProgress], None] | None = None,
             lease: float | None = None, scheduled: datetime | None = None) -> SendReport:
    """Send (or resume) the issue to the list; returns the report, raises DeliveryError on a
    connection/authentication failure after recording everything, and `SendBusy` (sending
    nothing) while another process runs the send. `lease`: seconds (default `lease_seconds()`).
    With `[bounces] address` each message goes out from its own VERP address (delivery/envelope).
    `scheduled`: the scheduler starts a send recorded by `send --at`, found due at that time
    (`AlreadyStarted` if another process did already, or it was moved; `Journal.start`)."""
    envelope = delivery_senders(plan.project)  # before anything is written
    variants = Variants(plan.project, plan.issue, plan.mailing_list.name, plan.mailing_list.title,
                        plan.topics)
    # The jobs carry the members' topics when the issue's sections have topics (docs/topics.md).
    journal = Journal(plan.store, attributes=plan.issue.prepared.needs_attributes,
                      topics=variants.active)
    worker = Worker.here(lease)
    started = time.monotonic()
    # Fail before touching the journal if the server cannot be reached at all.
    asyncio.run(plan.transport.check())
    try:
        resume = journal.start(
            issue_slug=plan.issue.rendered.slug, list_id=plan.mailing_list.id,
            subject=plan.issue.rendered.subject, content=plan.issue.content_hash,
            transport=plan.transport.description, worker=worker, force=force,
            segment=plan.segment, scheduled=scheduled)
    except ContentChanged:  # the issue changed since the send started: note it on the send
        existing = journal.find(plan.issue.rendered.slug, plan.mailing_list.id, plan.segment_key)
        if existing is not None:
            journal.refuse_changed(existing.id)
        raise
    # From here on this process holds the lease: released however the run ends (a second
    # Ctrl-C, a bug); only a killed process leaves it to expire.
    run: SendRun | None = None
    others: list[WorkerInfo] = []
    try:
        run = SendRun(plan, journal, worker, resume.send.id, plan.issue.prepared, resume.jobs,
                      progress, envelope, variants)
        asyncio.run(run.deliver())
    finally:
        status = ("interrupted" if run is None else "paused" if run.paused
                  else "interrupted" if run.stopped else "finished")
        reason = "internal error before the first message" if run is None else run.reason
        others = journal.finish(resume.send.id, worker, status, reason)
    assert run is not None
    info = journal.get(resume.send.id)
    assert info is not None
    if not others and status == "finished" and info.status != "finished":
        status, run.reason = info.status, info.reason  # a dead run left rows: `finish` said so
    if others and status == "finished":
        status = "running"  # nothing more to claim here; the others finish the send
    c = info.counts
    report = SendReport(
        send_id=info.id, issue=info.issue_slug, list_name=info.list_name, subject=info.subject,
        transport=info.transport, status=status, total=c["total"], sent=c["sent"],
        failed_temporary=c["failed_temporary"], failed_permanent=c["failed_permanent"],
        bounced=run.bounced, skipped=c["skipped"], pending=c["pending"] + c["sending"],
        resumed=resume.resumed,
        possibly_duplicated=journal.possibly_duplicated(resume.send.id),
        reason=run.reason, seconds=time.monotonic() - started, run_sent=run.progress.sent,
        joined=resume.joined, others=others,
    )
    if run.fatal is not None:
        raise DeliveryError(
            f"{run.fatal.message}\nThe send stopped; nothing is lost ({report.sent} sent, "
            f"{report.pending} still pending). Fix the problem and re-run the same command to resume.")
    return report
