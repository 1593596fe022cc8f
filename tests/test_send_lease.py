"""Sends that coordinate: the lease on a send, the heartbeat, claims from open rows only.

Real `newsletter send` processes against a real aiosmtpd server that holds messages in DATA
until the test lets them go (no timing assumptions about how fast anything runs)."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa
from conftest import REPO, RecordingHandler, start_smtp
from test_send_support import issue_path, make_list, wait_out_the_lease
from typer.testing import CliRunner

from newsletter.cli import app
from newsletter.db.schema import utcnow
from newsletter.delivery.journal import CLAIM, CLAIMABLE, Journal
from newsletter.delivery.lease import LEASE_ENV, SendBusy, Worker, hand_on, lease_seconds
from newsletter.delivery.plan import plan_send
from newsletter.delivery.sender import run_send
from newsletter.delivery.tables import deliveries, send_workers
from newsletter.errors import NewsletterError
from newsletter.project import open_project

pytestmark = pytest.mark.backends

ISSUE = "issues/2026-02.yaml"
REFUSAL = re.compile(
    r"the issue `2026-02` is being sent to the list `news` \(send #1\) by pid (\d+) on host (\S+) "
    r"since \d\d:\d\d:\d\d UTC; wait for it to finish, or if that process is gone, re-run after "
    r"\d\d:\d\d:\d\d UTC when its lease expires")


class Gate(RecordingHandler):
    """Accepts the first `free` messages at once; keeps every later one (it counts as received)
    but holds its 250 until `release()`. `held` is set once `hold` messages are held; `overflow`
    (if given) once more than `hold` are: more connections sending than one process has."""

    def __init__(self, free: int, hold: int, overflow: queue.Queue | None = None) -> None:
        super().__init__()
        self.free, self.hold, self.overflow = free, hold, overflow
        self.held = threading.Event()
        self.holding = 0
        self.gate = asyncio.Event()
        self.controller = None

    async def handle_DATA(self, server, session, envelope):
        reply = await super().handle_DATA(server, session, envelope)
        if len(self.messages) > self.free and not self.gate.is_set():
            self.holding += 1
            if self.holding == self.hold:
                self.held.set()
            if self.holding == self.hold + 1 and self.overflow is not None:
                self.overflow.put(("overflow", b"", b""))
            await self.gate.wait()
        return reply

    def release(self) -> None:
        self.controller.loop.call_soon_threadsafe(self.gate.set)


def gated_server(handler: Gate):
    controller, server = start_smtp(handler)
    handler.controller = controller
    return controller, server


def point_at(server, monkeypatch, **extra: str) -> dict[str, str]:
    """The environment of a send process (and of this one) delivering to `server`."""
    env = {"NEWSLETTER_SMTP__HOST": server.host, "NEWSLETTER_SMTP__PORT": str(server.port),
           "NEWSLETTER_SMTP__SECURITY": "none", **extra}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, "PYTHONPATH": str(REPO), **env}


def send_process(project, env) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter", "send", str(project.root / ISSUE), "--list", "news",
         "--yes", "--concurrency", "4", "--project", str(project.root)],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def cli(project, *args):
    return CliRunner().invoke(app, [*args, "--project", str(project.root)])


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_two_concurrent_sends_one_refuses_and_everybody_gets_exactly_one(project_dir, monkeypatch):
    """On SQLite a second run is refused; on PostgreSQL it joins (tests/test_send_workers.py)."""
    events: queue.Queue = queue.Queue()
    # Holds the first message of each of the sender's 4 connections: it cannot finish before the
    # other process has decided. If both sent (no lease), a fifth would be held: `overflow`.
    handler = Gate(free=0, hold=4, overflow=events)
    controller, server = gated_server(handler)
    try:
        env = point_at(server, monkeypatch)
        project = open_project(project_dir)
        store, _list_id, addresses = make_list(project, 300)
        processes = [send_process(project, env) for _ in range(2)]
        for process in processes:
            threading.Thread(target=lambda p=process: events.put((p, *p.communicate())),
                             daemon=True).start()
        first = events.get(timeout=120)
        handler.release()
        assert first[0] != "overflow", "both processes were sending"
        loser, loser_out, loser_err = first
        (winner,) = [p for p in processes if p is not loser]
        rest = events.get(timeout=120)
        while rest[0] == "overflow":  # raced with the release: not a second sender
            rest = events.get(timeout=120)
    finally:
        controller.stop()

    assert loser.returncode == 1, (loser_out + loser_err).decode()
    refusal = loser_err.decode().strip().splitlines()[-1]
    match = REFUSAL.fullmatch(refusal)
    assert match, refusal
    assert (int(match.group(1)), match.group(2)) == (winner.pid, socket.gethostname())
    assert rest[0] is winner and winner.returncode == 0, (rest[1] + rest[2]).decode()
    assert Counter(m.rcpt_tos[0] for m in server.messages) == Counter(addresses)  # one each
    (info,) = Journal(store).all()
    assert (info.status, info.counts["sent"]) == ("finished", 300)
    # Only the winner ever held the lease; it released it at the end.
    assert [(w.pid, w.state()) for w in info.workers] == [(winner.pid, "ended")]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_sigkill_rerun_refused_while_the_lease_lives_then_finishes(project_dir, monkeypatch):
    """SQLite: the re-run is refused while the dead run's lease lives (PostgreSQL joins it:
    tests/test_send_workers.py)."""
    handler = Gate(free=10, hold=4)  # 10 messages go through, then all 4 connections hang in DATA
    controller, server = gated_server(handler)
    try:
        env = point_at(server, monkeypatch, **{LEASE_ENV: "5"})
        project = open_project(project_dir)
        store, _list_id, addresses = make_list(project, 60)
        process = send_process(project, env)
        assert handler.held.wait(timeout=120), process.communicate()[1].decode()
        process.kill()  # SIGKILL: no clean-up, the lease is left to expire
        process.communicate()
        handler.release()  # its connections are gone; from now on the server answers at once
        monkeypatch.delenv(LEASE_ENV)  # the re-runs below use the default lease

        journal = Journal(store)
        (info,) = journal.all()
        rows = journal.deliveries(info.id)
        held = {m.rcpt_tos[0] for m in server.messages[10:]}
        assert len(held) == 4
        assert {r.email for r in rows if r.status == "sending"} == held
        assert sum(r.status == "sent" for r in rows) == 10
        (dead,) = info.workers
        assert (dead.pid, dead.host, dead.state()) == (process.pid, socket.gethostname(), "live")

        # While its lease lives the send is refused: one line, exit 1, nothing sent.
        again = cli(project, "send", str(project.root / ISSUE), "--list", "news", "--yes")
        assert again.exit_code == 1
        assert REFUSAL.fullmatch(again.output.strip()), again.output
        assert f"by pid {process.pid} on host {socket.gethostname()} " in again.output
        with pytest.raises(SendBusy):  # the library call too, decided by `Journal.start`
            run_send(plan_send(project, issue_path(project), "news"))
        assert len(server.messages) == 14
        shown = cli(project, "sends", "show", str(info.id))
        assert f"pid {process.pid} on host {socket.gethostname()}: started " in shown.output
        assert "live (lease until " in shown.output

        wait_out_the_lease(store, info.id)
        shown = cli(project, "sends", "show", str(info.id))
        assert "expired (lease ran out " in shown.output
        listed = cli(project, "sends", "ls")
        assert f"#1 running: but its process (pid {process.pid} on host " in listed.output
        report = run_send(plan_send(project, issue_path(project), "news"))
    finally:
        controller.stop()

    assert (report.status, report.sent, report.resumed) == ("finished", 60, True)
    counts = Counter(m.rcpt_tos[0] for m in server.messages)
    assert set(counts) == set(addresses)  # nobody missed
    assert {a for a, n in counts.items() if n > 1} == held  # duplicates only among the flagged
    assert set(report.possibly_duplicated) == held
    rows = Journal(store).deliveries(info.id)
    assert {r.email for r in rows if r.possibly_duplicated} == held
    assert all(r.status == "sent" for r in rows)
    workers = Journal(store).get(info.id).workers
    assert [w.state() for w in workers] == ["expired", "ended"]
    shown = json.loads(cli(project, "sends", "show", str(info.id), "--json").stdout)
    assert [(w["pid"], w["state"]) for w in shown["workers"]] == [
        (process.pid, "expired"), (os.getpid(), "ended")]


def test_the_heartbeat_keeps_a_send_alive_longer_than_its_lease(project_dir, monkeypatch):
    """One connection, its first message answered only after three leases: no group commit
    happens meanwhile, so only the heartbeat can keep the lease."""

    class SlowFirst(RecordingHandler):
        async def handle_DATA(self, server, session, envelope):
            if not self.messages:
                await asyncio.sleep(3.0)
            return await super().handle_DATA(server, session, envelope)

    controller, server = start_smtp(SlowFirst())
    try:
        point_at(server, monkeypatch)
        project = open_project(project_dir)
        store, _list_id, _addresses = make_list(project, 3)
        report = run_send(plan_send(project, issue_path(project), "news", concurrency=1), lease=1.0)
    finally:
        controller.stop()
    assert (report.status, report.sent, report.reason) == ("finished", 3, None)
    (worker,) = Journal(store).get(report.send_id).workers
    assert worker.heartbeat_at - worker.started_at > timedelta(seconds=1)  # renewed past the lease
    assert worker.released_at is not None


def test_a_run_whose_lease_was_taken_over_stops_claiming(project_dir, monkeypatch):
    """A run suspended past its lease is taken over: its in-flight row is handed on (flagged),
    its result for that row is dropped, it claims nothing more and leaves the send to the new
    holder."""
    takeover: list[Worker] = []

    class TakenOverAtThe3rd(RecordingHandler):
        async def handle_DATA(self, server, session, envelope):
            if len(self.messages) == 2:  # the 3rd message is in flight: the run "falls asleep"
                with store.write() as conn:
                    conn.execute(send_workers.update().values(
                        lease_expires_at=utcnow() - timedelta(seconds=1)))
                takeover.append(Worker.here())
                Journal(store).start(
                    issue_slug=plan.issue.rendered.slug, list_id=plan.mailing_list.id,
                    subject=plan.issue.rendered.subject, content=plan.issue.content_hash,
                    transport=plan.transport.description, worker=takeover[0])
            return await super().handle_DATA(server, session, envelope)

    controller, server = start_smtp(TakenOverAtThe3rd())
    try:
        point_at(server, monkeypatch)
        project = open_project(project_dir)
        store, _list_id, addresses = make_list(project, 6)
        plan = plan_send(project, issue_path(project), "news", concurrency=1)
        report = run_send(plan)
    finally:
        controller.stop()

    assert report.status == "interrupted"
    assert "did not renew its lease on the send in time" in report.reason
    assert [m.rcpt_tos[0] for m in server.messages] == addresses[:3]  # nothing after the takeover
    rows = {r.email: r for r in Journal(store).deliveries(report.send_id)}
    assert [rows[a].status for a in addresses[:2]] == ["sent", "sent"]
    third = rows[addresses[2]]  # accepted, but the result came too late: the new holder sends it
    assert (third.status, third.possibly_duplicated) == ("pending", True)
    info = Journal(store).get(report.send_id)
    assert (info.status, info.reason) == ("running", None)  # the new holder's to finish
    assert [(w.worker_id, w.state()) for w in info.workers][1:] == [(takeover[0].id, "live")]
    assert info.workers[0].state() == "ended"


def test_a_claim_takes_only_rows_that_are_open_now(project):
    """Even if the job list is stale (a bug elsewhere, another worker), a row already `sent` or
    `sending` is not claimed again."""
    store, list_id, _ = make_list(project, 3)
    journal = Journal(store)
    worker = Worker.here()
    resume = journal.start(issue_slug="2026-02", list_id=list_id, subject="S", content="h",
                           transport="test", worker=worker)
    send_id, jobs = resume.send.id, resume.jobs
    with store.write() as conn:
        for job, status, owner in ((jobs[0], "sent", None), (jobs[1], "sending", "other")):
            conn.execute(deliveries.update().where(
                deliveries.c.send_id == send_id, deliveries.c.subscriber_id == job.subscriber_id,
            ).values(status=status, worker_id=owner))
    ids = {j.subscriber_id: f"<{j.subscriber_id}@example.org>" for j in jobs}
    claimed = journal.commit(send_id, list_id, worker, [], jobs, ids)
    assert (claimed.go, claimed.skipped, claimed.taken) == ([jobs[2]], [], jobs[:2])
    rows = {r.subscriber_id: r for r in journal.deliveries(send_id)}
    assert [(rows[j.subscriber_id].status, rows[j.subscriber_id].message_id) for j in jobs] == [
        ("sent", None), ("sending", None), ("sending", ids[jobs[2].subscriber_id])]
    with store.read() as conn:
        owners = {r.subscriber_id: r.worker_id for r in conn.execute(
            sa.select(deliveries.c.subscriber_id, deliveries.c.worker_id))}
    assert owners[jobs[1].subscriber_id] == "other" and owners[jobs[2].subscriber_id] == worker.id


def test_claims_wait_for_nobody_on_postgresql() -> None:
    """The claim compiled for PostgreSQL: the open rows are locked, rows another worker has
    locked are skipped; the UPDATE takes a row only from an open status."""
    from sqlalchemy.dialects import postgresql

    dialect = postgresql.dialect()
    select = str(CLAIMABLE.compile(dialect=dialect))
    assert select.endswith("FOR UPDATE SKIP LOCKED")
    assert "deliveries.status IN ('pending', 'failed_temporary')" in select
    update = str(CLAIM.compile(dialect=dialect))
    assert update.startswith("UPDATE deliveries SET status=%(status)s")
    assert update.endswith("AND deliveries.status IN ('pending', 'failed_temporary')")
    # SQLite has no row locks (BEGIN IMMEDIATE locks the file): the clause is left out.
    assert "FOR UPDATE" not in str(CLAIMABLE.compile(dialect=sa.create_engine("sqlite://").dialect))


def test_only_rows_of_dead_workers_are_handed_on(project):
    store, list_id, _ = make_list(project, 4)
    journal = Journal(store)
    resume = journal.start(issue_slug="2026-02", list_id=list_id, subject="S", content="h",
                           transport="test", worker=Worker.here())
    send_id, jobs = resume.send.id, resume.jobs
    now = utcnow()
    workers = {"live": now + timedelta(seconds=30), "dead": now - timedelta(seconds=1),
               "ended": now + timedelta(seconds=30)}
    with store.write() as conn:
        conn.execute(send_workers.update().values(released_at=now))  # the start above ended
        for name, expires in workers.items():
            conn.execute(send_workers.insert().values(
                worker_id=name, send_id=send_id, host="h", pid=1, started_at=now,
                heartbeat_at=now, lease_expires_at=expires,
                released_at=now if name == "ended" else None))
        for job, owner in zip(jobs, ["live", "dead", "ended", None], strict=True):
            conn.execute(deliveries.update().where(
                deliveries.c.send_id == send_id, deliveries.c.subscriber_id == job.subscriber_id,
            ).values(status="sending", worker_id=owner))
        assert hand_on(conn, send_id, now) == 3
    rows = {r.subscriber_id: r for r in journal.deliveries(send_id)}
    assert [(rows[j.subscriber_id].status, rows[j.subscriber_id].possibly_duplicated)
            for j in jobs] == [("sending", False), ("pending", True), ("pending", True),
                               ("pending", True)]


def test_a_finished_send_released_its_lease_and_show_names_the_worker(project):
    make_list(project, 2)
    result = cli(project, "send", str(project.root / ISSUE), "--list", "news", "--yes")
    assert result.exit_code == 0, result.output
    shown = cli(project, "sends", "show", "1")
    (line,) = [x for x in shown.output.splitlines() if x.startswith("  pid ")]
    assert re.fullmatch(
        rf"  pid {os.getpid()} on host {re.escape(socket.gethostname())}: started \S+ \S+ UTC, "
        r"last heartbeat \S+ \S+ UTC, 2 sent, 0 in flight, ended \S+ \S+ UTC", line), line
    (listed,) = json.loads(cli(project, "sends", "ls", "--json").stdout)
    assert [w["state"] for w in listed["workers"]] == ["ended"]
    assert "running" not in cli(project, "sends", "ls").output


def test_lease_length_from_the_environment(monkeypatch):
    assert lease_seconds() == 60.0 and Worker.here().heartbeat == 10.0
    monkeypatch.setenv(LEASE_ENV, "1.5")
    assert lease_seconds() == 1.5 and Worker.here().heartbeat == 0.25
    monkeypatch.setenv(LEASE_ENV, "soon")
    with pytest.raises(NewsletterError, match="NEWSLETTER_SEND_LEASE_SECONDS must be a number"):
        lease_seconds()


def _schema(url: str):
    from newsletter.audience.store import Store

    with Store.open(url) as opened:
        inspector = sa.inspect(opened.engine)
        return ([(c["name"], c["nullable"]) for c in inspector.get_columns("send_workers")],
                inspector.get_indexes("send_workers"), inspector.get_foreign_keys("send_workers"),
                [c["name"] for c in inspector.get_columns("deliveries")])


def test_migration_6_fresh_and_upgraded_databases_are_the_same(tmp_path):
    from newsletter.audience.store import Store

    old = Store.open(f"sqlite:///{tmp_path / 'old.db'}", migrate_to=5)
    assert "send_workers" not in sa.inspect(old.engine).get_table_names()
    old.close()
    upgraded = _schema(f"sqlite:///{tmp_path / 'old.db'}")
    assert upgraded == _schema(f"sqlite:///{tmp_path / 'new.db'}")
    assert [c[0] for c in upgraded[0]] == list(send_workers.c.keys())
    # Later migrations (9: feedback) add columns after it: the order, not the last one, is checked.
    assert "worker_id" in upgraded[3] and upgraded[3] == list(deliveries.c.keys())


def test_migration_6_compiles_for_postgresql() -> None:
    from sqlalchemy.dialects import postgresql

    ddl = str(sa.schema.CreateTable(send_workers).compile(dialect=postgresql.dialect()))
    assert "lease_expires_at TIMESTAMP WITH TIME ZONE NOT NULL" in ddl
    assert "FOREIGN KEY(send_id) REFERENCES sends (id) ON DELETE CASCADE" in ddl
