"""Delivery against misbehaving SMTP servers: retries, bounces, drops, slowness, policy streaks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import Counter

import pytest
from conftest import RecordingHandler, start_smtp
from ports import free_port
from test_send_support import issue_path, make_list, offer_pipelining
from typer.testing import CliRunner

from newsletter.cli import app
from newsletter.delivery.journal import ContentChanged, Journal
from newsletter.delivery.plan import plan_send
from newsletter.delivery.records import CONTENT_CHANGED_NOTE
from newsletter.delivery.sender import classify, run_send
from newsletter.delivery.transport import DeliveryError, Reply
from newsletter.project import open_project

pytestmark = pytest.mark.backends


@pytest.fixture(params=["one-by-one", "pipelining"])
def serve(request, project_dir, monkeypatch):
    """Start a server with the given handler and return (project pointed at it, server).

    Every fault test runs twice: against a server answering one command at a time and against
    one offering PIPELINING (MAIL, RCPT and DATA then go out without waiting for each reply)."""
    controllers = []

    def start(handler, **env):
        if request.param == "pipelining":
            offer_pipelining(handler)
        controller, server = start_smtp(handler)
        controllers.append(controller)
        monkeypatch.setenv("NEWSLETTER_SMTP__HOST", server.host)
        monkeypatch.setenv("NEWSLETTER_SMTP__PORT", str(server.port))
        monkeypatch.setenv("NEWSLETTER_SMTP__SECURITY", env.pop("security", "none"))
        monkeypatch.setenv("NEWSLETTER_DELIVERY__RETRY_DELAY", "0.01")
        for key, value in env.items():
            monkeypatch.setenv(f"NEWSLETTER_DELIVERY__{key.upper()}", str(value))
        return open_project(project_dir), server, controller

    yield start
    for controller in controllers:
        with contextlib.suppress(AssertionError):  # already stopped by the test
            controller.stop()


def delivered(server) -> Counter[str]:
    return Counter(m.rcpt_tos[0] for m in server.messages)


def sends_json(project, *args):
    result = CliRunner().invoke(app, ["sends", *args, "--json", "--project", str(project.root)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_random_451s_are_retried_until_everybody_has_it(serve):
    class Flaky(RecordingHandler):
        rng = random.Random(5)

        def rcpt_reply(self, address):
            return "451 4.3.0 try again later" if self.rng.random() < 0.3 else "250 OK"

        def data_reply(self, envelope):
            return "451 4.3.0 queue full" if self.rng.random() < 0.3 else "250 OK"

    project, server, _ = serve(Flaky(), retries=12)
    _store, _list_id, addresses = make_list(project, 20)
    report = run_send(plan_send(project, issue_path(project), "news", concurrency=4))
    assert report.status == "finished"
    assert report.sent == 20
    assert delivered(server) == Counter(addresses)  # each exactly once


def test_451_beyond_the_retry_limit_is_failed_temporary_and_resumed_later(serve, monkeypatch):
    class Closed(RecordingHandler):
        refuse = True

        def rcpt_reply(self, address):
            return "452 4.2.2 over quota, try later" if self.refuse else "250 OK"

    handler = Closed()
    project, server, _ = serve(handler, retries=2)
    store, _list_id, addresses = make_list(project, 3)
    report = run_send(plan_send(project, issue_path(project), "news"))
    assert (report.sent, report.failed_temporary) == (0, 3)
    rows = Journal(store).deliveries(report.send_id)
    assert {r.attempts for r in rows} == {3} and all(r.smtp_code == 452 for r in rows)
    handler.refuse = False
    again = run_send(plan_send(project, issue_path(project), "news"))
    assert again.sent == 3 and delivered(server) == Counter(addresses)


def test_550_511_marks_the_member_bounced_and_delivers_the_rest(serve):
    class SomeUnknown(RecordingHandler):
        def rcpt_reply(self, address):
            if address.endswith(("3@example.org", "7@example.org")):
                return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
            return "250 OK"

    project, server, _ = serve(SomeUnknown())
    store, list_id, addresses = make_list(project, 10)
    report = run_send(plan_send(project, issue_path(project), "news", concurrency=3))
    gone = [a for a in addresses if a.endswith(("3@example.org", "7@example.org"))]
    assert (report.sent, report.failed_permanent, report.bounced) == (8, 2, 2)
    assert set(delivered(server)) == set(addresses) - set(gone)
    for address in gone:
        subscriber = store.find_subscriber(address)
        assert store.membership_status(subscriber.id, list_id) == "bounced"
        assert store.history(subscriber.id)[-1].source == "bounce"
    kept = store.find_subscriber(addresses[0])
    assert store.membership_status(kept.id, list_id) == "subscribed"


def test_dropped_connections_and_421_reconnect(serve):
    class Dropping(RecordingHandler):
        def __init__(self):
            super().__init__()
            self.seen: Counter[str] = Counter()

        async def handle_DATA(self, server, session, envelope):
            rcpt = envelope.rcpt_tos[0]
            self.seen[rcpt] += 1
            if self.seen[rcpt] == 1 and int(rcpt[6:10]) % 3 == 0:
                server.transport.close()  # hang up mid-transaction
                return "451 gone"
            return await super().handle_DATA(server, session, envelope)

        def rcpt_reply(self, address):
            if self.seen[address] == 0 and int(address[6:10]) % 3 == 1:
                self.seen[address] += 1
                return "421 4.7.0 too many messages on this connection, closing"
            return "250 OK"

    project, server, _ = serve(Dropping())
    _store, _list_id, addresses = make_list(project, 12)
    report = run_send(plan_send(project, issue_path(project), "news", concurrency=2))
    assert report.sent == 12
    assert delivered(server) == Counter(addresses)


def test_connection_lost_after_the_body_flags_the_retry_possibly_duplicated(serve):
    class LosesReplies(RecordingHandler):
        """Keeps the first message to person0001 but hangs up before saying 250 (the reply is
        lost); hangs up on person0002 at RCPT (nothing sent yet)."""

        def __init__(self):
            super().__init__()
            self.seen: Counter[str] = Counter()

        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            self.seen[address] += 1
            if address == "person0002@example.org" and self.seen[address] == 1:
                server.transport.close()
                return "451 gone"
            return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

        async def handle_DATA(self, server, session, envelope):
            reply = await super().handle_DATA(server, session, envelope)
            if envelope.rcpt_tos == ["person0001@example.org"] and len(self.messages) == 2:
                server.transport.close()  # accepted, but the client never hears so
            return reply

    project, server, _ = serve(LosesReplies())
    store, _list_id, addresses = make_list(project, 4)
    report = run_send(plan_send(project, issue_path(project), "news", concurrency=1))
    assert report.status == "finished" and report.sent == 4
    assert delivered(server)["person0001@example.org"] == 2  # really duplicated
    assert report.possibly_duplicated == ["person0001@example.org"]
    rows = {r.email: r for r in Journal(store).deliveries(report.send_id)}
    assert rows["person0001@example.org"].possibly_duplicated
    assert rows["person0001@example.org"].smtp_reply.startswith("250")
    assert not any(rows[a].possibly_duplicated for a in addresses if a != "person0001@example.org")


def test_slow_server(serve):
    class Slow(RecordingHandler):
        async def handle_DATA(self, server, session, envelope):
            await asyncio.sleep(0.3)
            return await super().handle_DATA(server, session, envelope)

    project, server, _ = serve(Slow())
    _store, _list_id, addresses = make_list(project, 8)
    report = run_send(plan_send(project, issue_path(project), "news", concurrency=4))
    assert report.sent == 8 and delivered(server) == Counter(addresses)


def test_policy_rejections_in_a_row_pause_the_send_and_leave_subscribers_alone(serve):
    class Blocked(RecordingHandler):
        blocked = True

        def data_reply(self, envelope):
            if self.blocked:
                return "550 5.7.1 Message rejected: sender domain has no valid SPF record"
            return "250 OK"

    handler = Blocked()
    project, server, _ = serve(handler, max_policy_failures=3)
    store, list_id, addresses = make_list(project, 10)
    report = run_send(plan_send(project, issue_path(project), "news", concurrency=1))
    assert report.status == "paused"
    assert "3 policy rejections in a row" in report.reason and "5.7.1" in report.reason
    # The sender's problem, not the subscribers': open for the next resume, reply kept.
    assert (report.failed_temporary, report.failed_permanent, report.sent, report.pending) == (
        3, 0, 0, 7)
    rows = [r for r in Journal(store).deliveries(report.send_id) if r.status == "failed_temporary"]
    assert [r.email for r in rows] == addresses[:3]
    assert all(r.smtp_code == 550 and "5.7.1" in r.smtp_reply for r in rows)
    assert all(store.membership_status(m.subscriber_id, list_id) == "subscribed"
               for m in store.members(list_id, status=None))
    # The reason is stored with the send: `sends show` / `sends ls` tell it later.
    shown = sends_json(project, "show", str(report.send_id))
    assert shown["status"] == "paused" and shown["reason"] == report.reason
    assert [s["reason"] for s in sends_json(project, "ls")] == [report.reason]
    for command in ("show", "1"), ("ls",):
        human = CliRunner().invoke(app, ["sends", *command, "--project", str(project.root)])
        assert human.exit_code == 0
        assert any(line.endswith(report.reason) for line in human.output.splitlines()), human.output
    handler.blocked = False
    again = run_send(plan_send(project, issue_path(project), "news"))
    # "Re-run to resume" retries the rejected ones too: everybody gets the issue, once.
    assert again.status == "finished" and again.sent == 10 and again.failed_temporary == 0
    assert delivered(server) == Counter(addresses)
    shown = sends_json(project, "show", str(report.send_id))
    assert (shown["status"], shown["reason"]) == ("finished", None)


def test_policy_rejections_below_the_limit_are_retried_by_the_next_run(serve):
    class OneBlocked(RecordingHandler):
        blocked = True

        def data_reply(self, envelope):
            if self.blocked and envelope.rcpt_tos == ["person0001@example.org"]:
                return "554 5.7.1 Service unavailable; client host blocked"
            return "250 OK"

    handler = OneBlocked()
    project, server, _ = serve(handler, max_policy_failures=5)
    store, list_id, addresses = make_list(project, 3)
    report = run_send(plan_send(project, issue_path(project), "news", concurrency=1))
    assert (report.status, report.sent, report.failed_temporary, report.failed_permanent) == (
        "finished", 2, 1, 0)
    subscriber = store.find_subscriber(addresses[1])
    assert store.membership_status(subscriber.id, list_id) == "subscribed"
    handler.blocked = False
    again = run_send(plan_send(project, issue_path(project), "news"))
    assert (again.sent, again.failed_temporary) == (3, 0)
    assert delivered(server) == Counter(addresses)


class SenderRejected(RecordingHandler):
    """Refuses the envelope sender (MAIL FROM) while `refuse` is set."""

    refuse = True

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.refuse:
            return "553 5.1.8 <newsletter@example.org>: Sender address rejected: Domain not found"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"


def test_sender_rejected_at_mail_from_pauses_and_bounces_nobody(serve):
    handler = SenderRejected()
    project, server, _ = serve(handler)
    store, list_id, addresses = make_list(project, 6)
    report = run_send(plan_send(project, issue_path(project), "news", concurrency=2))
    assert report.status == "paused"
    assert "sender" in report.reason and "553 5.1.8" in report.reason
    assert (report.bounced, report.failed_permanent, report.failed_temporary, report.sent) == (
        0, 0, 0, 0)
    assert report.pending == 6
    assert all(store.membership_status(m.subscriber_id, list_id) == "subscribed"
               for m in store.members(list_id, status=None))
    assert all(r.status == "pending" for r in Journal(store).deliveries(report.send_id))
    shown = sends_json(project, "show", str(report.send_id))
    assert (shown["status"], shown["reason"]) == ("paused", report.reason)
    handler.refuse = False
    again = run_send(plan_send(project, issue_path(project), "news"))
    assert again.status == "finished" and again.sent == 6
    assert delivered(server) == Counter(addresses)


def test_sender_rejected_on_the_command_line_exits_1_with_the_reason(serve):
    project, server, _ = serve(SenderRejected())
    make_list(project, 2)
    result = CliRunner().invoke(app, ["send", str(issue_path(project)), "--list", "news", "--yes",
                                      "--project", str(project.root)])
    assert result.exit_code == 1
    assert "553 5.1.8" in result.output and "(0 bounced)" in result.output
    assert server.messages == []


@pytest.mark.parametrize("reply, expected", [
    (Reply(553, "5.1.8 Sender address rejected", stage="mail"), "sender"),
    (Reply(550, "5.1.7 Invalid sender address syntax", stage="mail"), "sender"),
    (Reply(550, "Sender refused", stage="mail"), "sender"),
    (Reply(553, "5.1.8 Bad sender's system address", stage="rcpt"), "sender"),  # RFC 3463
    (Reply(550, "5.1.7 Bad sender's mailbox address syntax", stage="data"), "sender"),
    (Reply(550, "5.1.1 User unknown", stage="rcpt"), "bounce"),
    (Reply(550, "User unknown", stage="rcpt"), "bounce"),
    (Reply(550, "5.1.1 User unknown", stage="data"), "bounce"),  # one recipient per message
    (Reply(550, "5.7.1 blocked", stage="rcpt"), "policy"),
    (Reply(552, "5.2.2 Mailbox full", stage="rcpt"), "permanent"),
    (Reply(451, "4.3.0 later", stage="mail"), "retry"),
])
def test_classify_blames_the_sender_for_mail_from(reply, expected):
    assert classify(reply) == expected


def test_starttls_required_but_not_offered_sends_nothing(serve):
    project, server, _ = serve(RecordingHandler(), security="starttls")
    store, _list_id, _ = make_list(project, 3)
    with pytest.raises(DeliveryError, match="does not offer STARTTLS"):
        run_send(plan_send(project, issue_path(project), "news"))
    assert server.messages == []
    assert Journal(store).all() == []


def test_unreachable_server_stops_at_once_and_changes_nothing(project_dir, monkeypatch):
    monkeypatch.setenv("NEWSLETTER_SMTP__HOST", "127.0.0.1")
    monkeypatch.setenv("NEWSLETTER_SMTP__PORT", str(free_port()))
    monkeypatch.setenv("NEWSLETTER_SMTP__SECURITY", "none")
    project = open_project(project_dir)
    store, _list_id, _ = make_list(project, 3)
    with pytest.raises(DeliveryError, match="cannot connect"):
        run_send(plan_send(project, issue_path(project), "news"))
    assert Journal(store).all() == []


def test_server_going_away_mid_send_loses_nothing(serve):
    class Dying(RecordingHandler):
        def data_reply(self, envelope):
            if len(self.messages) == 3:
                controller.loop.call_soon_threadsafe(_stop_listening)
                server_transport_close()
                return "421 4.3.2 shutting down"
            return super().data_reply(envelope)

    def _stop_listening():
        controller.server.close()

    def server_transport_close():
        for task in asyncio.all_tasks(controller.loop):
            task.cancel()

    handler = Dying()
    project, server, controller = serve(handler)
    store, _list_id, addresses = make_list(project, 8)
    with pytest.raises(DeliveryError, match="nothing is lost") as stopped:
        run_send(plan_send(project, issue_path(project), "news", concurrency=1))
    (info,) = Journal(store).all()
    # Why it stopped is kept for `sends show`: the same words the raised error began with.
    assert info.status == "interrupted"
    assert info.reason.startswith("cannot connect to the SMTP server")
    assert stopped.value.message.splitlines()[0] == info.reason
    rows = Journal(store).deliveries(info.id)
    sent = {r.email for r in rows if r.status == "sent"}
    assert sent == set(delivered(server))
    assert {r.status for r in rows} <= {"sent", "pending"}  # nothing stuck `sending`, nothing lost
    assert info.possibly_duplicated == []
    # A new server on another port: the resume delivers the rest, nobody twice.
    project2, server2, _ = serve(RecordingHandler())
    report = run_send(plan_send(project2, issue_path(project2), "news"))
    assert report.status == "finished"
    assert delivered(server) + delivered(server2) == Counter(addresses)


def test_changed_issue_stops_the_resume_unless_forced(serve):
    class Blocked(RecordingHandler):
        def data_reply(self, envelope):
            return "550 5.7.1 blocked" if len(self.messages) >= 2 else "250 OK"

    project, server, _ = serve(Blocked(), max_policy_failures=1)
    make_list(project, 5)
    first = run_send(plan_send(project, issue_path(project), "news", concurrency=1))
    assert first.status == "paused" and first.sent == 2
    path = issue_path(project)
    path.write_text(path.read_text(encoding="utf-8").replace("Liebe Leserinnen", "Liebe Leser"),
                    encoding="utf-8")
    with pytest.raises(ContentChanged, match="--force"):
        run_send(plan_send(project, path, "news"))
    # The refusal is noted on the paused send, after the reason it paused for.
    (shown,) = sends_json(project, "ls")
    assert shown["status"] == "paused"
    assert shown["reason"] == f"{CONTENT_CHANGED_NOTE}; it had stopped: {first.reason}"
    with pytest.raises(ContentChanged):  # refusing again does not repeat the note
        run_send(plan_send(project, path, "news"))
    assert sends_json(project, "ls")[0]["reason"] == shown["reason"]
    server.handler.data_reply = lambda envelope: "250 OK"
    report = run_send(plan_send(project, path, "news"), force=True)
    # The two pending ones and the one refused by policy get the new version.
    assert report.status == "finished" and report.sent == 5
    assert sends_json(project, "ls")[0]["reason"] is None
