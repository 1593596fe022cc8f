"""Two runs of one send on PostgreSQL: the second `newsletter send` joins the first as a further
worker and the recipients are shared out; a worker killed mid-send is handed on by the other.

Real `newsletter send` processes against a real aiosmtpd server that holds messages in DATA until
the test lets them go, so the runs provably overlap (no assumption about how fast anything runs).
On SQLite a second run is refused instead: tests/test_send_lease.py."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import sqlalchemy as sa
from conftest import REPO
from test_send_lease import ISSUE, Gate, cli, gated_server, point_at
from test_send_support import make_list

from newsletter.db.schema import utcnow
from newsletter.delivery.journal import CLAIMABLE, ContentChanged, Journal
from newsletter.delivery.lease import LEASE_ENV, Worker
from newsletter.delivery.tables import deliveries, send_workers
from newsletter.project import open_project

pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)

CONNECTIONS = 3


def send_process(project, env) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
        [sys.executable, "-m", "newsletter", "send", str(project.root / ISSUE), "--list", "news",
         "--yes", "--concurrency", str(CONNECTIONS), "--project", str(project.root)],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def collect(processes) -> queue.Queue:
    """Each process's (process, stdout, stderr) once it has ended, in the order they end."""
    ended: queue.Queue = queue.Queue()
    for process in processes:
        threading.Thread(target=lambda p=process: ended.put((p, *p.communicate())),
                         daemon=True).start()
    return ended


def started(journal: Journal, pid: int):
    (worker,) = [w for w in journal.all()[0].workers if w.pid == pid]
    return worker


def test_a_second_send_joins_and_everybody_gets_exactly_one(project_dir, monkeypatch):
    # Every connection of both processes holds its first message: both are provably sending at
    # the same time before anything is let go.
    handler = Gate(free=0, hold=2 * CONNECTIONS)
    controller, server = gated_server(handler)
    try:
        env = point_at(server, monkeypatch)
        project = open_project(project_dir)
        store, _list_id, addresses = make_list(project, 320)
        processes = [send_process(project, env) for _ in range(2)]
        ended = collect(processes)
        assert handler.held.wait(timeout=120), "the two runs never sent at the same time"
        handler.release()
        results = [ended.get(timeout=180) for _ in processes]
    finally:
        controller.stop()

    outputs = {p.pid: (out + err).decode() for p, out, err in results}
    assert all(p.returncode == 0 for p, _out, _err in results), outputs
    assert Counter(m.rcpt_tos[0] for m in server.messages) == Counter(addresses)  # one each
    # The first to end left the send to the other; the last one finished it.
    (first,) = [pid for pid, text in outputs.items()
                if "Send #1 running: this run found nothing more to claim" in text]
    (last,) = [pid for pid, text in outputs.items() if "Send #1 finished" in text]
    assert f"pid {last} on host " in outputs[first], outputs[first]
    assert "is still sending it and finishes the send" in outputs[first]
    journal = Journal(store)
    (info,) = journal.all()
    assert (info.status, info.counts["sent"], info.possibly_duplicated) == ("finished", 320, [])
    shown = json.loads(cli(project, "sends", "show", "1", "--json").stdout)
    workers = {w["pid"]: w for w in shown["workers"]}
    assert set(workers) == {p.pid for p in processes}
    assert all(w["state"] == "ended" and w["in_flight"] == 0 for w in workers.values())
    assert all(w["sent"] >= CONNECTIONS for w in workers.values())  # both really sent
    assert sum(w["sent"] for w in workers.values()) == 320
    human = cli(project, "sends", "show", "1").output
    for pid, w in workers.items():
        assert f"pid {pid} on host " in human and f", {w['sent']} sent, 0 in flight, ended " in human


def test_sigkill_one_of_two_workers_the_other_hands_its_rows_on_and_finishes(project_dir,
                                                                              monkeypatch):
    handler = Gate(free=20, hold=2 * CONNECTIONS)  # 20 go through, then every connection hangs
    controller, server = gated_server(handler)
    try:
        env = point_at(server, monkeypatch, **{LEASE_ENV: "3"})
        project = open_project(project_dir)
        store, _list_id, addresses = make_list(project, 300)
        survivor, victim = processes = [send_process(project, env) for _ in range(2)]
        ended = collect([survivor])
        assert handler.held.wait(timeout=120), "the two runs never sent at the same time"
        victim.kill()  # SIGKILL: its lease is left to expire, its rows stay `sending`
        victim.communicate()
        journal = Journal(store)
        dead = started(journal, victim.pid)
        in_flight = {r.email for r in journal.deliveries(1) if r.status == "sending"}
        with store.read() as conn:
            theirs = set(conn.execute(sa.select(deliveries.c.email).where(
                deliveries.c.worker_id == dead.worker_id,
                deliveries.c.status == "sending")).scalars())
        assert len(theirs) == CONNECTIONS and theirs < in_flight
        # One wait for the deadline the journal states (the survivor's heartbeat goes on
        # meanwhile: its messages are held, not its event loop).
        time.sleep(max((dead.lease_expires_at - utcnow()).total_seconds(), 0) + 0.01)
        handler.release()
        process, out, err = ended.get(timeout=180)
    finally:
        controller.stop()

    output = (out + err).decode()
    assert process.returncode == 0, output
    assert "Send #1 finished" in output, output
    received = Counter(m.rcpt_tos[0] for m in server.messages)
    assert set(received) == set(addresses)  # nobody missed
    duplicated = {a for a, n in received.items() if n > 1}
    assert duplicated == theirs  # duplicates only among the killed worker's in-flight rows …
    rows = Journal(store).deliveries(1)
    assert {r.email for r in rows if r.possibly_duplicated} == theirs  # … which are flagged
    assert all(r.status == "sent" for r in rows)
    info = Journal(store).get(1)
    assert (info.status, info.reason, set(info.possibly_duplicated)) == ("finished", None, theirs)
    shown = json.loads(cli(project, "sends", "show", "1", "--json").stdout)
    states = {w["pid"]: (w["state"], w["in_flight"]) for w in shown["workers"]}
    assert states == {survivor.pid: ("ended", 0), victim.pid: ("expired", 0)}
    human = cli(project, "sends", "show", "1").output
    assert f"pid {victim.pid} on host " in human and "expired (lease ran out " in human
    assert f"pid {survivor.pid} on host " in human and len(processes) == 2


def test_claims_skip_rows_another_worker_is_claiming_and_never_wait(project):
    """Two workers of one send claim at once: the rows locked by the other's uncommitted claim
    are skipped (not waited for, not taken twice); a row already `sending` is not taken."""
    store, list_id, _ = make_list(project, 6)
    journal = Journal(store)
    first, second = Worker.here(), Worker.here()
    one = journal.start(issue_slug="2026-02", list_id=list_id, subject="S", content="h",
                        transport="test", worker=first)
    two = journal.start(issue_slug="2026-02", list_id=list_id, subject="S", content="h",
                        transport="test", worker=second)
    assert [w.worker_id for w in two.joined] == [first.id]
    jobs = one.jobs
    assert [j.subscriber_id for j in two.jobs] == [j.subscriber_id for j in reversed(jobs)]
    ids = {j.subscriber_id: f"<{j.subscriber_id}@example.org>" for j in jobs}
    with store.write() as conn:  # another worker's claim, not committed yet
        locked = conn.execute(CLAIMABLE, {"send": 1, "sids": [j.subscriber_id for j in jobs[:2]]})
        assert len(locked.all()) == 2
        claimed = journal.commit(1, list_id, second, [], jobs[:4], ids)
        assert (claimed.go, claimed.taken) == (jobs[2:4], jobs[:2])
    again = journal.commit(1, list_id, first, [], jobs, ids)  # `sending` by the second: taken
    assert (again.go, again.taken) == (jobs[:2] + jobs[4:], jobs[2:4])
    with store.read() as conn:
        owners = dict(conn.execute(sa.select(deliveries.c.subscriber_id, deliveries.c.worker_id)).all())
    assert [owners[j.subscriber_id] for j in jobs] == [first.id] * 2 + [second.id] * 2 + [
        first.id] * 2


def test_the_last_worker_to_end_sets_the_status(project):
    store, list_id, _ = make_list(project, 3)
    journal = Journal(store)
    first, second = Worker.here(), Worker.here()
    for worker in (first, second):
        journal.start(issue_slug="2026-02", list_id=list_id, subject="S", content="h",
                      transport="test", worker=worker)
    assert [w.worker_id for w in journal.finish(1, first, "finished")] == [second.id]
    assert journal.get(1).status == "running"
    assert journal.finish(1, second, "finished") == []
    info = journal.get(1)
    # Nobody claimed anything here: the rows are still open, so the send is not `finished`.
    assert info.status == "interrupted" and "3 message(s) still to send" in info.reason


def test_a_worker_dead_while_another_runs_is_handed_on_by_the_next_to_notice(project):
    store, list_id, _ = make_list(project, 3)
    journal = Journal(store)
    dead, live = Worker.here(), Worker.here()
    jobs = journal.start(issue_slug="2026-02", list_id=list_id, subject="S", content="h",
                         transport="test", worker=dead).jobs
    journal.start(issue_slug="2026-02", list_id=list_id, subject="S", content="h",
                  transport="test", worker=live)
    ids = {j.subscriber_id: "<x@example.org>" for j in jobs}
    assert journal.commit(1, list_id, dead, [], jobs[:1], ids).go == jobs[:1]
    with store.write() as conn:  # its lease runs out
        conn.execute(send_workers.update().where(send_workers.c.worker_id == dead.id)
                     .values(lease_expires_at=utcnow()))
    assert journal.heartbeat(live, 1)  # the live one renews, and hands the dead one's row on
    row = next(r for r in journal.deliveries(1) if r.subscriber_id == jobs[0].subscriber_id)
    assert (row.status, row.possibly_duplicated) == ("pending", True)
    assert {j.subscriber_id for j in journal.refill(1, live)} == set(ids)


def test_joining_with_another_version_of_the_issue_is_refused(project):
    store, list_id, _ = make_list(project, 2)
    journal = Journal(store)
    holder = Worker.here()
    journal.start(issue_slug="2026-02", list_id=list_id, subject="S", content="h",
                  transport="test", worker=holder)
    with pytest.raises(ContentChanged, match=f"pid {holder.pid} on host .* is sending the other"):
        journal.start(issue_slug="2026-02", list_id=list_id, subject="S", content="new",
                      transport="test", worker=Worker.here(), force=True)
    assert len(journal.get(1).workers) == 1
