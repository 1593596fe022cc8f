"""SIGKILL the sending process mid-send, resume once its lease ran out: everybody has the issue,
duplicates only in flight."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import REPO, RecordingHandler, start_smtp
from test_send_support import issue_path, make_list, wait_out_the_lease

from newsletter.delivery.journal import Journal
from newsletter.delivery.plan import plan_send
from newsletter.delivery.sender import run_send
from newsletter.project import open_project

pytestmark = pytest.mark.backends


class SlowToAnswer(RecordingHandler):
    """Keeps the message, then takes a while to say 250: a kill lands while messages are in flight."""

    async def handle_DATA(self, server, session, envelope):
        reply = await super().handle_DATA(server, session, envelope)
        await asyncio.sleep(0.05)
        return reply


def start_send_process(project_dir, monkeypatch, server, *, stdout, wait_for: int):
    """A `newsletter send` subprocess to a 60-member list, once `wait_for` messages arrived."""
    env = {**os.environ, "NEWSLETTER_SMTP__HOST": server.host,
           "NEWSLETTER_SMTP__PORT": str(server.port), "NEWSLETTER_SMTP__SECURITY": "none",
           "PYTHONPATH": str(REPO), "NEWSLETTER_SEND_LEASE_SECONDS": "2"}
    for key in ("HOST", "PORT", "SECURITY"):
        monkeypatch.setenv(f"NEWSLETTER_SMTP__{key}", env[f"NEWSLETTER_SMTP__{key}"])
    project = open_project(project_dir)
    store, _list_id, addresses = make_list(project, 60)
    process = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "send", str(issue_path(project)), "--list", "news",
         "--yes", "--concurrency", "4", "--project", str(project.root)],
        env=env, cwd=REPO, stdout=stdout, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(server.messages) < wait_for and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    return project, store, addresses, process


def test_sigkill_mid_send_then_resume(project_dir, monkeypatch):
    controller, server = start_smtp(SlowToAnswer())
    try:
        project, store, addresses, process = start_send_process(
            project_dir, monkeypatch, server, stdout=subprocess.DEVNULL, wait_for=15)
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()

        journal = Journal(store)
        (info,) = journal.all()
        rows = journal.deliveries(info.id)
        in_flight = {r.email for r in rows if r.status == "sending"}
        assert 0 < len(in_flight) <= 4
        assert len(server.messages) < 60  # really killed mid-send
        assert set(info.possibly_duplicated) == in_flight  # `sending` rows count before the resume
        assert not any(r.possibly_duplicated for r in rows)  # …but are not flagged yet

        wait_out_the_lease(store, info.id)  # the killed process's lease: the resume may go on
        report = run_send(plan_send(project, issue_path(project), "news"))
    finally:
        controller.stop()

    assert report.status == "finished" and report.resumed
    assert report.sent == 60
    assert set(report.possibly_duplicated) == in_flight
    counts = Counter(m.rcpt_tos[0] for m in server.messages)
    assert set(counts) == set(addresses)  # everybody received the issue
    duplicated = {address for address, n in counts.items() if n > 1}
    assert duplicated <= in_flight
    assert all(n <= 2 for n in counts.values())
    # The journal keeps the flag (its own column); `sends show` lists exactly these.
    rows = Journal(store).deliveries(info.id)
    assert {r.email for r in rows if r.possibly_duplicated} == in_flight
    assert all(r.status == "sent" and r.smtp_reply.startswith("250") for r in rows)
    resumed = Journal(store).get(info.id)
    assert (resumed.status, resumed.reason) == ("finished", None)
    assert set(resumed.possibly_duplicated) == in_flight


def test_ctrl_c_finishes_in_flight_messages_and_resume_sends_the_rest(project_dir, monkeypatch):
    controller, server = start_smtp(SlowToAnswer())
    try:
        project, store, addresses, process = start_send_process(
            project_dir, monkeypatch, server, stdout=subprocess.PIPE, wait_for=10)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 130, (out + err).decode()
        assert b"interrupted (Ctrl-C)" in err

        journal = Journal(store)
        (info,) = journal.all()
        rows = journal.deliveries(info.id)
        assert info.status == "interrupted"
        assert info.reason == "interrupted (Ctrl-C); messages in flight were finished and recorded"
        assert not [r for r in rows if r.status == "sending"]  # in-flight ones finished and recorded
        sent_before = {r.email for r in rows if r.status == "sent"}
        assert sent_before == {m.rcpt_tos[0] for m in server.messages}
        assert 0 < len(sent_before) < 60
        # Ctrl-C released the lease: the resume goes on at once.
        assert [w.state() for w in info.workers] == ["ended"]

        report = run_send(plan_send(project, issue_path(project), "news"))
    finally:
        controller.stop()
    assert report.sent == 60 and report.possibly_duplicated == []
    assert Journal(store).get(info.id).reason is None
    assert Counter(m.rcpt_tos[0] for m in server.messages) == Counter(addresses)  # nobody twice
