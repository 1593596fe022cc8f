"""Scheduled sends: `newsletter send FILE --list X --at "2026-03-10 08:00"` and the scheduler that
starts them (in every `newsletter serve` process, or a `newsletter worker`).

`schedule_send` records the send as `scheduled` (`Journal.schedule`: the time in UTC, the issue
file relative to the project directory). `Scheduler.run_due` starts every send whose time has
come: it reads the issue file again, plans the send, checks the approval again (with
`[delivery] require_approval`) and runs it with `run_send(plan, scheduled=<its time>)`. Any number of
schedulers may poll one database (serve workers, machines): `Journal.start` decides under the
send's row lock whether the send is still `scheduled`, and every other process gets
`AlreadyStarted` and does nothing — exactly once, without any retry on lock errors. A send
that was due while no scheduler ran starts at the next start (and the log says it is late);
a scheduled send whose process died mid-send (its lease expired) is resumed the same way.

A send the scheduler cannot start for a reason that waiting will not fix (the approval, an
invalid issue file, a list without members) is called off — `cancelled`, with the reason in
`sends.reason` — instead of being retried forever; `send --at` can schedule it again. A
connection failure (the SMTP server down at 08:00) is retried at the next checks, backing off.
Everything goes to the log (`newsletter.schedule`), one line per event, never a traceback.
See docs/approval.md.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time as clock
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from newsletter.content.model import _time, parse_day
from newsletter.db.engine import DatabaseError
from newsletter.db.schema import utcnow
from newsletter.delivery.approval import local_time, require
from newsletter.delivery.journal import AlreadyStarted, Journal
from newsletter.delivery.lease import SendBusy
from newsletter.delivery.records import JournalReader, SendInfo
from newsletter.delivery.transport import DeliveryError
from newsletter.errors import NewsletterError

if TYPE_CHECKING:
    from newsletter.audience.store import Store
    from newsletter.delivery.plan import SendPlan
    from newsletter.project import Project

log = logging.getLogger("newsletter.schedule")

INTERVAL_ENV = "NEWSLETTER_SCHEDULER_INTERVAL"  # seconds between checks (tests: a fraction)
INTERVAL = 30.0
LATE = timedelta(seconds=60)  # a start later than this after its time is logged as late
MAX_BACKOFF = 900.0  # a send whose start failed (SMTP down) is tried again at most this late


# --- scheduling -------------------------------------------------------------------------------


def parse_at(text: str, timezone: str, now: datetime | None = None) -> datetime:
    """`2026-03-10 08:00` (or `10.03.2026 08:00`, `2026-03-10T08:00`) in the project's time zone
    as UTC. Refuses a time that does not exist there (the hour skipped in spring) and a time in
    the past. Of the two 02:30 of an autumn night the first is taken."""
    parts = re.split(r"[\sT]+", text.strip(), maxsplit=1)
    if len(parts) != 2:
        raise NewsletterError(f"--at `{text}`: give a date and a time, e.g. --at \"2026-03-10 08:00\" "
                              f"({timezone})")
    try:
        day, at = parse_day(parts[0]), _time(parts[1])
    except ValueError as exc:
        raise NewsletterError(f"--at: {exc}") from None
    zone = ZoneInfo(timezone)
    local = datetime.combine(day, at, tzinfo=zone)
    try:
        due = local.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 in a zone that pushes it past the calendar
        raise NewsletterError(f"--at `{text}`: give a date in the coming years") from None
    if due.astimezone(zone).replace(tzinfo=None) != local.replace(tzinfo=None):
        raise NewsletterError(f"--at `{text}`: that time does not exist in {timezone} (the clocks "
                              "skip it when summer time begins); give another")
    now = now or utcnow()
    if due <= now:
        raise NewsletterError(
            f"--at `{text}` ({timezone}) is in the past (now {local_time(now, timezone)}); "
            "give a later time, or send at once without --at")
    return due


def refuse_existing(plan: SendPlan) -> None:
    """Before the editor is asked: the issue goes to this list (and segment) in a send that is
    scheduled or started already (`Journal.schedule` refuses again, atomically)."""
    existing = plan.existing
    if existing is None:  # none, or a cancelled one: that is scheduled again
        return
    what = f"send #{existing.id} of `{existing.issue_slug}` to {plan.audience}"
    if existing.status == "scheduled" and existing.scheduled_at is not None:
        when = local_time(existing.scheduled_at, plan.project.settings.newsletter.timezone)
        raise NewsletterError(f"{what} is scheduled for {when} already; to change the time, "
                              f"cancel it (`newsletter sends cancel {existing.id}`) and schedule "
                              "it again")
    raise NewsletterError(f"{what} is {existing.status}: an issue goes to a list (and segment) "
                          "once; `send` without --at resumes it")


def schedule_send(plan: SendPlan, at: datetime) -> SendInfo:
    """Record the planned send to start at `at` (UTC). The approval is checked now too (with
    `require_approval`): the editor learns at once, not at 08:00. The issue file must be inside
    the project directory (the scheduler reads it there, on whichever machine)."""
    issue = plan.issue
    require(plan.store, plan.project, issue.loaded, issue.rendered)
    if at <= utcnow():  # the editor took a while to confirm
        zone = plan.project.settings.newsletter.timezone
        raise NewsletterError(f"{local_time(at, zone)} has passed meanwhile; give a later time, "
                              "or send at once without --at")
    try:
        path = issue.loaded.path.resolve().relative_to(plan.project.root.resolve()).as_posix()
    except ValueError:
        raise NewsletterError(
            f"{issue.loaded.path}: a scheduled issue must be inside the project directory "
            f"{plan.project.root} (the scheduler reads it from there when the time comes)") from None
    return Journal(plan.store).schedule(
        issue_slug=issue.slug, list_id=plan.mailing_list.id, segment=plan.segment_key,
        subject=issue.rendered.subject, content=issue.content_hash,
        transport=plan.transport.description, at=at, issue_path=path)


def cancel_send(store: Store, send_id: int) -> SendInfo:
    """`sends cancel ID`: call off a scheduled send that has not started."""
    return Journal(store).cancel(send_id)


# --- the scheduler ----------------------------------------------------------------------------


def interval_seconds() -> float:
    """Seconds between the scheduler's checks: INTERVAL_ENV, else 30."""
    value = os.environ.get(INTERVAL_ENV, "").strip()
    try:
        seconds = float(value) if value else INTERVAL
    except ValueError:
        seconds = INTERVAL
    return seconds if seconds > 0 else INTERVAL


@dataclass
class Scheduler:
    """Starts the scheduled sends of one project when they are due."""

    project: Project
    interval: float = field(default_factory=interval_seconds)
    # A send whose start failed for a passing reason (SMTP down): not before this monotonic time.
    _retry: dict[int, tuple[float, int]] = field(default_factory=dict)
    _store: Store | None = None
    current: SendInfo | None = None  # the send this scheduler is running right now
    stopping: threading.Event | None = None  # set: start nothing more (`run`'s stop)

    @property
    def store(self) -> Store:
        if self._store is None:
            from newsletter.audience.store import open_store

            self._store = open_store(self.project)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def run_due(self, now: datetime | None = None) -> list[int]:
        """Start (or resume) every send that is due now, one after the other; the ids of those
        this process ran. Those another process started first are left to it."""
        reader = JournalReader(self.store)
        now = now or utcnow()
        ran = []
        for info, orphan in [*((i, False) for i in reader.due(now)),
                             *((i, True) for i in reader.orphaned_scheduled(now))]:
            if self.stopping is not None and self.stopping.is_set():
                break
            waiting = self._retry.get(info.id)
            if waiting is not None and clock.monotonic() < waiting[0]:
                continue
            if self._start(info, orphan):
                ran.append(info.id)
        return ran

    def next_due(self) -> datetime | None:
        """When the earliest scheduled send is due (None: nothing scheduled)."""
        return JournalReader(self.store).next_due()

    def seconds_to_wait(self) -> float:
        """Until the next check: the next due time, at most `interval` from now (a send may be
        scheduled meanwhile, a dead run's lease may expire)."""
        due = self.next_due()
        left = None if due is None else (due - utcnow()).total_seconds()
        if left is None or left <= 0:  # those due were just tried; any left wait for a retry
            return self.interval
        return min(self.interval, left + 0.01)

    def run(self, stop: threading.Event) -> None:
        """Check, start what is due, wait; until `stop` is set. Never raises."""
        self.stopping = stop
        zone = self.project.settings.newsletter.timezone
        try:
            upcoming = self.next_due()
            nxt = f"; next send due at {local_time(upcoming, zone, seconds=True)}" if upcoming else ""
            log.info("scheduler: checking for due sends every %g s%s", self.interval, nxt)
        except NewsletterError as exc:
            log.error("scheduler: %s", exc)
        while not stop.is_set():
            wait = self.interval
            try:
                self.run_due()
                wait = self.seconds_to_wait()
            except NewsletterError as exc:  # the database: one line, tried again
                log.error("scheduler: %s; trying again in %g s", exc, wait)
            except Exception as exc:  # a bug: one line, and the next check goes on
                log.error("scheduler: internal error: %r; trying again in %g s", exc, wait)
            stop.wait(wait)
        self.close()

    # --- one send ------------------------------------------------------------------------

    def _start(self, info: SendInfo, orphan: bool) -> bool:
        zone = self.project.settings.newsletter.timezone
        what = f"send #{info.id} ({info.issue_slug} to {info.audience})"
        assert info.issue_path is not None
        plan = None
        # newsletter.toml (and .env) as they are now, not as when this process started: the
        # approval rule, the imprint, the templates of the mail are those of the moment it goes.
        from newsletter.project import open_project

        project = open_project(self.project.root, exact=True)
        try:
            plan = project.plan_send(project.root / info.issue_path, info.list_name,
                                     segment=info.segment or None)
            if not orphan:  # a resumed run was checked when it started; the journal checks the content
                require(plan.store, project, plan.issue.loaded, plan.issue.rendered)
            return self._run(plan, info, what, orphan)
        except DatabaseError as exc:
            self._failed(info, what, exc.message)
        except NewsletterError as exc:  # the issue file, the list, the approval: waiting won't help
            if orphan:
                self._failed(info, what, exc.message)
            elif self._call_off(info, exc.message):
                log.error("%s, due at %s, was not started and is called off: %s",
                          what, local_time(info.scheduled_at or utcnow(), zone, seconds=True),
                          exc.message)
        finally:
            if plan is not None:
                plan.store.close()
            project.close()
        return False

    def _run(self, plan: SendPlan, info: SendInfo, what: str, orphan: bool) -> bool:
        from newsletter.delivery.sender import run_send

        zone = self.project.settings.newsletter.timezone
        started = utcnow()
        due = info.scheduled_at or started
        if orphan:
            last = info.workers[-1] if info.workers else None
            by = f" (pid {last.pid} on host {last.host})" if last else ""
            note = f"resuming {what}: its run{by} stopped without ending it"
        elif started - due > LATE:
            note = (f"starting {what} late: was due at {local_time(due, zone, seconds=True)}, "
                    f"started {local_time(started, zone, seconds=True)} (no scheduler was "
                    "running then)")
        else:
            note = f"starting {what}, due at {local_time(due, zone, seconds=True)}"
        said: list[bool] = []

        def announce(_progress: object) -> None:
            # The first progress comes once `Journal.start` took the send: of several
            # schedulers, only the one that runs it says so.
            if not said:
                said.append(True)
                (log.warning if "late" in note else log.info)("%s", note)

        self.current = info
        try:
            assert info.scheduled_at is not None
            report = run_send(plan, scheduled=info.scheduled_at, progress=announce)
        except (AlreadyStarted, SendBusy):  # another process was first: it is its send
            return False
        except DeliveryError as exc:
            if said:  # it started and stopped, `interrupted`: resumed here later, backing off
                self._failed(info, what, exc.message.split("\n", 1)[0])
                return True
            self._failed(info, what, exc.message)
            return False
        except DatabaseError:
            raise
        except NewsletterError as exc:  # e.g. the issue changed during a resumed send
            log.error("%s: %s", what, exc.message)
            self._retry[info.id] = (float("inf"), 0)  # not again in this process
            return False
        finally:
            self.current = None
        announce(None)
        self._retry.pop(info.id, None)
        counts = (f"{report.sent} sent, {report.failed_permanent} failed permanently, "
                  f"{report.failed_temporary} failed temporarily, {report.skipped} skipped, "
                  f"{report.pending} pending")
        if report.status == "finished":
            log.info("send #%s finished: %s", report.send_id, counts)
        else:
            log.warning("send #%s %s: %s%s", report.send_id, report.status, counts,
                        f"; {report.reason}" if report.reason else "")
        return True

    def _failed(self, info: SendInfo, what: str, reason: str) -> None:
        """A start that failed for a reason that may pass: tried again later, backing off."""
        _until, failures = self._retry.get(info.id, (0.0, 0))
        delay = min(self.interval * 2 ** failures, MAX_BACKOFF)
        self._retry[info.id] = (clock.monotonic() + delay, failures + 1)
        log.error("%s could not start: %s; trying again in %g s", what, reason, delay)

    def _call_off(self, info: SendInfo, reason: str) -> bool:
        """`scheduled` → `cancelled` with the reason, if it is still scheduled (of several
        schedulers, one does it). True if this one did."""
        due = local_time(info.scheduled_at or utcnow(), self.project.settings.newsletter.timezone)
        assert info.scheduled_at is not None
        return Journal(self.store).call_off(info.id, info.scheduled_at, f"not started at {due}: {reason}")


@dataclass
class Background:
    """A scheduler on a thread of its own (serve's worker processes, `newsletter worker`)."""

    scheduler: Scheduler
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Background:
        self.thread = threading.Thread(target=self.scheduler.run, args=(self.stop_event,),
                                       name="scheduler", daemon=True)
        self.thread.start()
        return self

    def stop(self, wait: float | None = 0) -> None:
        """Start nothing more; wait up to `wait` seconds (None: as long as it takes) for a send
        in progress to end. One that does not ends with the process: its lease expires and the
        next scheduler resumes it (docs/approval.md)."""
        self.stop_event.set()
        if self.thread is None:
            return
        self.thread.join(wait)
        current = self.scheduler.current
        if self.thread.is_alive() and current is not None:
            log.warning("scheduler: send #%s is still running in this process and stops with it; "
                        "the next serve or worker start resumes it once its lease has expired",
                        current.id)


def start_scheduler(project: Project) -> Background:
    """Run the project's scheduler in the background of this process (`newsletter serve`)."""
    return Background(Scheduler(project)).start()
