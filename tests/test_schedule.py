"""Scheduled sends: `send --at` records one, `sends cancel` calls it off, and the scheduler of
`newsletter serve` starts it at its time and not before — once, with two serve processes on one
database — and after a restart (due while nothing ran; or killed mid-send). The approval is
checked again when the send starts. Real `newsletter serve` processes, on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import mailbox
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ports import free_port
from test_send_lease import Gate, gated_server, point_at
from test_send_support import make_list, parse
from test_serve import wait_for
from test_serve_workers import Server
from typer.testing import CliRunner

from newsletter.cli import app
from newsletter.db.schema import utcnow
from newsletter.delivery.journal import Journal
from newsletter.delivery.lease import LEASE_ENV
from newsletter.delivery.records import SendInfo
from newsletter.delivery.schedule import INTERVAL_ENV, Scheduler, parse_at, schedule_send
from newsletter.delivery.tables import sends
from newsletter.errors import NewsletterError
from newsletter.project import Project, open_project

pytestmark = pytest.mark.backends

ISSUE = "issues/2026-02.yaml"
# Server(**FAST): checks 5× a second; every serve with one public URL, as machines behind one
# name have (the URL is in the mail: a resume by a serve with another one would be other content).
FAST = {INTERVAL_ENV.removeprefix("NEWSLETTER_").lower(): "0.2",
        "newsletter__base_url": "https://news.example.org"}
runner = CliRunner()


def run(project: Project, *args: str):
    return runner.invoke(app, [*args, "--project", str(project.root)])


def schedule(project: Project, at: datetime) -> SendInfo:
    """`send --at` through the library, to the second (the command takes minutes)."""
    plan = open_project(project.root).plan_send(project.root / ISSUE, "news")
    try:
        return schedule_send(plan, at)
    finally:
        plan.store.close()


@pytest.fixture
def serves() -> Iterator[list[Server]]:
    """The `newsletter serve` processes a test started; stopped after it."""
    started: list[Server] = []
    yield started
    for serve in started:
        serve.stop()


def delivered(project: Project) -> Counter[str]:
    """Recipient → messages in the project's outbox."""
    if not (project.outbox_dir / "new").is_dir():
        return Counter()
    return Counter(parse(bytes(m))["To"].addresses[0].addr_spec
                   for m in mailbox.Maildir(project.outbox_dir, create=False))


def send_of(project: Project, send_id: int) -> SendInfo:
    with open_project(project.root) as fresh:
        info = Journal(fresh.store).get(send_id)
    assert info is not None
    return info


def finished(project: Project, send_id: int) -> bool:
    return send_of(project, send_id).status == "finished"


# --- the time ---------------------------------------------------------------------------------


def test_times_are_read_in_the_project_time_zone() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    berlin = "Europe/Berlin"
    assert parse_at("2026-03-10 08:00", berlin, now) == datetime(2026, 3, 10, 7, 0, tzinfo=UTC)
    assert parse_at("10.03.2026 8:00", berlin, now) == datetime(2026, 3, 10, 7, 0, tzinfo=UTC)
    assert parse_at("2026-07-10T08:00", berlin, now) == datetime(2026, 7, 10, 6, 0, tzinfo=UTC)
    assert parse_at("2026-03-10 08:00", "America/New_York", now) == datetime(2026, 3, 10, 12, 0,
                                                                             tzinfo=UTC)
    # The autumn night's 02:30 exists twice: the first.
    assert parse_at("2026-10-25 02:30", berlin, now) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    for text, message in [
        ("2026-03-29 02:30", "that time does not exist in Europe/Berlin"),
        ("2026-03-01 12:59", "is in the past (now 2026-03-01 13:00 Europe/Berlin)"),
        ("2026-02-30 08:00", "`2026-02-30` is not a valid date"),
        ("2026-03-10 8 Uhr", "`8 Uhr` is not a time"),
        ("2026-03-10", "give a date and a time"),
    ]:
        with pytest.raises(NewsletterError) as refused:
            parse_at(text, berlin, now)
        assert message in refused.value.message, refused.value.message


# --- the commands -----------------------------------------------------------------------------


def test_send_at_records_lists_refuses_twice_and_cancels(project: Project) -> None:
    make_list(project, 3)[0].close()
    issue = str(project.root / ISSUE)
    next_year = utcnow().year + 1
    at = f"{next_year}-03-10 08:00"
    scheduled = run(project, "send", issue, "--list", "news", "--at", at, "--yes")
    assert scheduled.exit_code == 0, scheduled.output
    assert f"At:         {at} Europe/Berlin ({next_year}-03-10 07:00 UTC)" in scheduled.output
    assert (f"Scheduled send #1 of 2026-02 to news for {at} Europe/Berlin. A running `newsletter "
            "serve` or `newsletter worker` starts it then; `newsletter sends cancel 1` calls it "
            "off.") in scheduled.output
    (info,) = Journal(project.store).all()
    assert (info.status, info.issue_path, info.scheduled_at) == (
        "scheduled", ISSUE, datetime(next_year, 3, 10, 7, 0, tzinfo=UTC))
    listed = run(project, "sends", "ls")
    assert f"#1 scheduled for {at} Europe/Berlin ({next_year}-03-10 07:00 UTC)" in listed.output
    state = run(project, "status", issue)
    assert f"Send #1 to news: scheduled for {at} Europe/Berlin" in state.output
    assert state.output.rstrip().endswith("State:     scheduled")

    again = run(project, "send", issue, "--list", "news", "--at", f"{next_year}-03-11 08:00", "--yes")
    assert again.exit_code == 1
    assert "is scheduled for " in again.output and "cancel it (`newsletter sends cancel 1`)" in again.output
    now = run(project, "send", issue, "--list", "news", "--yes")
    assert now.exit_code == 1 and "cancel it first: `newsletter sends cancel 1`" in now.output
    assert run(project, "send", issue, "--to", "a@example.org", "--at", at).exit_code == 2

    cancelled = run(project, "sends", "cancel", "1")
    assert cancelled.exit_code == 0, cancelled.output
    assert cancelled.output.strip() == (f"Cancelled send #1 of 2026-02 to news (was scheduled for "
                                        f"{at} Europe/Berlin); nothing was sent.")
    assert run(project, "sends", "cancel", "1").output.strip() == (
        "send #1 is cancelled: only a scheduled send that has not started can be cancelled")
    # Its time comes: nothing happens.
    assert Scheduler(open_project(project.root)).run_due(
        datetime(next_year, 3, 10, 8, 0, tzinfo=UTC)) == []
    assert delivered(project) == Counter()
    assert send_of(project, 1).status == "cancelled"
    # Scheduled again (a cancelled send may be), then sent at once instead.
    assert run(project, "send", issue, "--list", "news", "--at", at, "--yes").exit_code == 0
    assert run(project, "sends", "cancel", "1").exit_code == 0
    sent = run(project, "send", issue, "--list", "news", "--yes")
    assert sent.exit_code == 0, sent.output
    refused = run(project, "sends", "cancel", "1")
    assert refused.exit_code == 1 and refused.output.strip() == (
        "send #1 is finished: only a scheduled send that has not started can be cancelled")
    assert run(project, "sends", "cancel", "9").output.strip() == (
        "no send with ID 9; see `newsletter sends ls`")
    assert len(delivered(project)) == 3


def test_approval_is_checked_when_scheduling_and_again_when_the_send_starts(
        project: Project, caplog: pytest.LogCaptureFixture) -> None:
    config = project.root / "newsletter.toml"
    config.write_text(config.read_text().replace("[delivery]\n", "[delivery]\nrequire_approval = true\n"))
    make_list(project, 3)[0].close()
    issue = project.root / ISSUE
    at = f"{utcnow().year + 1}-03-10 08:00"
    refused = run(project, "send", str(issue), "--list", "news", "--at", at, "--yes")
    assert refused.exit_code == 1 and "has not been approved" in refused.output
    assert Journal(project.store).all() == []

    assert run(project, "approve", str(issue), "--by", "Anna").exit_code == 0
    due = utcnow() + timedelta(hours=1)
    info = schedule(project, due)
    text = issue.read_text(encoding="utf-8")
    issue.write_text(text.replace("Smart zu wissen", "Smart zu wisen", 1), encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="newsletter.schedule"):
        assert Scheduler(open_project(project.root)).run_due(due + timedelta(seconds=1)) == []
    after = send_of(project, info.id)
    assert after.status == "cancelled"
    assert after.reason is not None and after.reason.startswith("not started at ")
    assert ": the issue `2026-02` changed since Anna approved it (" in after.reason
    assert "Europe/Berlin): the issue file; ask for approval again" in after.reason
    assert "(2026-02 to news), due at " in caplog.text and "was not started and is called off" in caplog.text
    assert delivered(project) == Counter()
    assert "Send #1 to news: cancelled (not started at " in run(project, "status", str(issue)).output
    # Approved again, scheduled again: it goes.
    assert run(project, "approve", str(issue), "--by", "Bert").exit_code == 0
    schedule(project, due)
    assert Scheduler(open_project(project.root)).run_due(due + timedelta(seconds=1)) == [info.id]
    assert len(delivered(project)) == 3


def test_status_goes_through_scheduled_and_sending_to_sent(project_dir: Path, monkeypatch) -> None:
    handler = Gate(free=0, hold=4)  # every connection holds its first message until released
    controller, server = gated_server(handler)
    try:
        point_at(server, monkeypatch)
        project = open_project(project_dir)
        make_list(project, 12)[0].close()
        issue = str(project.root / ISSUE)

        def state() -> str:
            return run(project, "status", issue).output.rstrip().splitlines()[-1]

        assert state() == "State:     draft"
        run(project, "approve", issue, "--by", "Anna")
        assert state() == "State:     approved"
        due = utcnow() + timedelta(hours=1)
        schedule(project, due)
        assert state() == "State:     scheduled"
        scheduler = Scheduler(open_project(project.root))
        thread = threading.Thread(target=scheduler.run_due, args=(due + timedelta(seconds=1),))
        thread.start()
        assert handler.held.wait(timeout=60)
        shown = run(project, "status", issue).output
        assert "Send #1 to news: sending since " in shown and "of 12 sent" in shown, shown
        assert state() == "State:     sending"
        handler.release()
        thread.join(timeout=60)
    finally:
        controller.stop()
    assert state() == "State:     sent"
    assert Counter(m.rcpt_tos[0] for m in server.messages) == Counter(
        f"person{i:04d}@example.org" for i in range(12))


# --- serve's scheduler --------------------------------------------------------------------------


def scheduled(project_dir: Path, members: int, due: datetime) -> tuple[Project, list[str], SendInfo]:
    """The project, a list of `members` (their addresses) and the send of the issue to it
    scheduled for `due` (in the past: as if that time passed while no scheduler ran)."""
    project = open_project(project_dir)
    addresses = make_list(project, members)[2]
    if due > utcnow():
        return project, addresses, schedule(project, due)
    # A time in the past: scheduled for later, and then that time passed while nothing ran.
    info = schedule(project, utcnow() + timedelta(hours=1))
    with project.store.write() as conn:
        conn.execute(sends.update().where(sends.c.id == info.id).values(scheduled_at=due))
    return project, addresses, send_of(project, info.id)


def serve_processes(count: int, project_dir: Path, tmp_path: Path, serves: list[Server],
                    **env: str) -> list[Server]:
    started = [Server(project_dir, tmp_path, **FAST, **env) for _ in range(count)]
    serves.extend(started)
    return started


def test_serve_starts_a_scheduled_send_at_its_time_and_not_before(project_dir: Path, tmp_path: Path,
                                                                  serves: list[Server]) -> None:
    due = utcnow() + timedelta(seconds=8)
    project, addresses, info = scheduled(project_dir, 5, due)
    (serve,) = serve_processes(1, project_dir, tmp_path, serves)
    wait_for(lambda: "scheduler: checking for due sends every 0.2 s; next send due at " in serve.output(),
             timeout=30)
    seen = delivered(project)
    if utcnow() < due:  # read before its time (a slow start may have missed that moment)
        assert seen == Counter() and send_of(project, info.id).status == "scheduled"
    wait_for(lambda: finished(project, info.id), timeout=60)
    assert delivered(project) == Counter(addresses)
    done = send_of(project, info.id)
    (worker,) = done.workers
    assert worker.started_at >= due  # not before its time
    assert all(row.updated_at >= due for row in Journal(project.store).deliveries(info.id))
    output = serve.output()
    assert "starting send #1 (2026-02 to news), due at " in output and " late" not in output
    assert "send #1 finished: 5 sent, 0 failed permanently" in output
    assert "Traceback" not in output


def test_two_serve_processes_start_it_once(project_dir: Path, tmp_path: Path,
                                          serves: list[Server]) -> None:
    project, addresses, info = scheduled(project_dir, 40, utcnow() + timedelta(seconds=6))
    pair = serve_processes(2, project_dir, tmp_path, serves)
    wait_for(lambda: finished(project, info.id), timeout=90)
    assert delivered(project) == Counter(addresses)  # every recipient exactly once
    assert len(send_of(project, info.id).workers) == 1  # one start, one run
    starters = [s for s in pair if "starting send #1 (2026-02 to news)" in s.output()]
    assert len(starters) == 1, [s.output() for s in pair]
    assert all("Traceback" not in s.output() for s in pair)


def test_a_send_due_while_nothing_ran_starts_at_the_next_start_and_says_so(
        project_dir: Path, tmp_path: Path, serves: list[Server]) -> None:
    # Its time came while no serve ran.
    project, addresses, info = scheduled(project_dir, 5, utcnow() - timedelta(hours=2))
    (serve,) = serve_processes(1, project_dir, tmp_path, serves)
    wait_for(lambda: finished(project, info.id), timeout=60)
    assert delivered(project) == Counter(addresses)
    output = serve.output()
    assert "starting send #1 (2026-02 to news) late: was due at " in output
    assert "(no scheduler was running then)" in output


def test_a_scheduled_send_killed_mid_send_is_resumed_by_the_next_start(
        project_dir: Path, tmp_path: Path, serves: list[Server], monkeypatch) -> None:
    handler = Gate(free=6, hold=4)  # six go through, then all four connections hang in DATA
    controller, smtp = gated_server(handler)
    try:
        point_at(smtp, monkeypatch)
        project, addresses, info = scheduled(project_dir, 30, utcnow() + timedelta(seconds=1))
        lease = {LEASE_ENV.removeprefix("NEWSLETTER_").lower(): "3"}
        (first,) = serve_processes(1, project_dir, tmp_path, serves, **lease)
        assert handler.held.wait(timeout=60), first.output()
        os.killpg(first.process.pid, signal.SIGKILL)  # no clean-up: the lease is left to expire
        first.process.wait()
        handler.release()
        assert send_of(project, info.id).status == "running"
        (second,) = serve_processes(1, project_dir, tmp_path, serves)
        wait_for(lambda: finished(project, info.id), timeout=90)
    finally:
        controller.stop()
    counts = Counter(m.rcpt_tos[0] for m in smtp.messages)
    assert set(counts) == set(addresses)  # nobody missed
    done = send_of(project, info.id)
    assert {a for a, n in counts.items() if n > 1} <= set(done.possibly_duplicated)
    assert "resuming send #1 (2026-02 to news): its run (pid " in second.output()
    assert [w.state() for w in done.workers] == ["expired", "ended"]


def test_newsletter_worker_starts_due_sends_and_stops_on_sigterm(project_dir: Path, tmp_path: Path) -> None:
    project, addresses, info = scheduled(project_dir, 5, utcnow() - timedelta(minutes=5))
    log = tmp_path / "worker.log"
    env = {**os.environ, INTERVAL_ENV: "0.2"}
    with log.open("wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "newsletter", "worker", "--project",
                                   str(project_dir)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: finished(project, info.id), timeout=60)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    assert delivered(project) == Counter(addresses)
    output = log.read_text()
    assert "starting send #1 (2026-02 to news) late: was due at " in output
    assert "send #1 finished: 5 sent" in output
    assert "worker: stopping (SIGTERM)" in output and "Traceback" not in output


def test_a_send_that_cannot_connect_stays_scheduled_and_is_tried_again_later(
        project_dir: Path, monkeypatch, caplog: pytest.LogCaptureFixture) -> None:
    for key, value in {"HOST": "127.0.0.1", "PORT": str(free_port()), "SECURITY": "none"}.items():
        monkeypatch.setenv(f"NEWSLETTER_SMTP__{key}", value)  # nobody listens there
    due = utcnow() - timedelta(seconds=1)
    project, _addresses, info = scheduled(project_dir, 3, due)
    scheduler = Scheduler(open_project(project_dir), interval=30)
    with caplog.at_level(logging.INFO, logger="newsletter.schedule"):
        assert scheduler.run_due() == []
        assert scheduler.run_due() == []  # not again at once: it waits
    assert send_of(project, info.id).status == "scheduled"
    failures = [r.getMessage() for r in caplog.records if "could not start" in r.getMessage()]
    assert len(failures) == 1 and failures[0].endswith("; trying again in 30 s"), failures
    assert scheduler.seconds_to_wait() == 30  # no busy loop over a send that waits for its retry


def test_the_scheduler_reads_newsletter_toml_as_it_is_when_the_send_starts(project: Project) -> None:
    make_list(project, 3)[0].close()
    scheduler = Scheduler(open_project(project.root))  # a serve started before the change
    assert scheduler.project.settings.delivery.require_approval is False
    due = utcnow() + timedelta(hours=1)
    info = schedule(project, due)
    config = project.root / "newsletter.toml"
    config.write_text(config.read_text().replace("[delivery]\n", "[delivery]\nrequire_approval = true\n"))
    assert scheduler.run_due(due + timedelta(seconds=1)) == []
    after = send_of(project, info.id)
    assert after.status == "cancelled" and "has not been approved" in (after.reason or "")
    assert delivered(project) == Counter()
