"""`newsletter send` against a real aiosmtpd server: every recipient exactly one correct message."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from conftest import RecordingHandler, start_smtp
from test_send_support import (
    LONG_BASE_URL,
    header_line,
    issue_path,
    make_list,
    offer_pipelining,
    parse,
)

from newsletter.delivery.dryrun import dry_run
from newsletter.delivery.journal import Journal
from newsletter.delivery.plan import plan_send
from newsletter.delivery.sender import run_send
from newsletter.delivery.testsend import send_test
from newsletter.project import open_project
from newsletter.tokens import Tokens

pytestmark = pytest.mark.backends

URL = re.compile(r"https://[^\s\"<>]+/u/([A-Za-z0-9_.-]+)")


@pytest.fixture
def long_url_project(smtp_project, monkeypatch):
    monkeypatch.setenv("NEWSLETTER_NEWSLETTER__BASE_URL", LONG_BASE_URL)
    monkeypatch.setenv("NEWSLETTER_DELIVERY__RETRY_DELAY", "0.01")
    return open_project(smtp_project.root)


def test_every_subscriber_gets_exactly_one_correct_message(long_url_project, smtp_server):
    project = long_url_project
    store, list_id, addresses = make_list(project, 12)
    plan = plan_send(project, issue_path(project), "news", concurrency=3)
    assert plan.recipients == 12
    report = run_send(plan)
    assert (report.status, report.sent, report.pending) == ("finished", 12, 0)

    received = sorted(m.rcpt_tos[0] for m in smtp_server.messages)
    assert received == sorted(addresses)
    tokens = Tokens.for_project(project)
    handles = {m.email: m.token_id for m in store.members(list_id)}  # links name the token_id
    message_ids = set()
    for got in smtp_server.messages:
        raw = got.data
        message = parse(raw)
        assert not message.defects
        assert all(not part.defects for part in message.walk())
        assert max(len(line) for line in raw.split(b"\r\n")) <= 998
        assert b"8bit" not in raw.lower().split(b"\r\n\r\n", 1)[0]
        # Byte-exact list headers, unfolded and never RFC 2047 encoded.
        (token,) = set(URL.findall(header_line(raw, b"List-Unsubscribe").decode()))
        assert header_line(raw, b"List-Unsubscribe") == (
            f"List-Unsubscribe: <{LONG_BASE_URL}/u/{token}>".encode())
        assert header_line(raw, b"List-Unsubscribe-Post") == (
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click")
        host = urlsplit(LONG_BASE_URL).hostname
        assert header_line(raw, b"List-Id") == f"List-Id: Smart zu wissen <news.{host}>".encode()
        assert header_line(raw, b"List-Archive") == f"List-Archive: <{LONG_BASE_URL}/archive/>".encode()
        assert b"=?" not in header_line(raw, b"List-Unsubscribe")
        # The subject has umlauts? Then it is encoded; either way it decodes to the issue's subject.
        assert message["Subject"] == plan.issue.rendered.subject
        assert message["To"].addresses[0].addr_spec == got.rcpt_tos[0]
        assert message.get_content_type() == "multipart/alternative"
        kinds = [p.get_content_type() for p in message.iter_parts()]
        assert kinds == ["text/plain", "text/html"]
        for part in message.iter_parts():
            assert part["Content-Transfer-Encoding"] in ("quoted-printable", "base64")
            body = part.get_content()
            assert "%%UNSUBSCRIBE_URL%%" not in body
            assert f"{LONG_BASE_URL}/u/{token}" in body
        assert tokens.read_unsubscribe(token) == (handles[got.rcpt_tos[0]], list_id)
        domain = message["From"].addresses[0].domain
        assert message["Message-ID"].endswith(f"@{domain}>")
        message_ids.add(message["Message-ID"])
        assert message["Date"] and message["MIME-Version"] == "1.0"
    assert len(message_ids) == 12

    # Re-running the same command resumes: nobody gets it twice.
    again = run_send(plan_send(project, issue_path(project), "news"))
    assert again.resumed and again.sent == 12
    assert len(smtp_server.messages) == 12
    assert [s.counts["sent"] for s in Journal(store).all()] == [12]


def test_subject_with_umlauts_is_rfc2047_encoded(smtp_project, smtp_server):
    path = issue_path(smtp_project)
    text = path.read_text(encoding="utf-8")
    text = re.sub(r'(?m)^subject: .*$', 'subject: "Grüße: Übersicht über die Änderungen"', text, count=1)
    path.write_text(text, encoding="utf-8")
    replies = send_test(smtp_project, path, ["tester@example.org"])
    assert [r.ok for _a, r in replies] == [True]
    raw = smtp_server.messages[0].data
    subject = header_line(raw, b"Subject")
    assert subject.isascii() and b"=?utf-8?" in subject
    assert parse(raw)["Subject"] == "[TEST] Grüße: Übersicht über die Änderungen"


def test_test_send_needs_no_list_and_no_journal(smtp_project, smtp_server):
    replies = send_test(smtp_project, issue_path(smtp_project), ["a@example.org", "b@example.org"])
    assert all(r.ok for _a, r in replies)
    assert [m.rcpt_tos for m in smtp_server.messages] == [["a@example.org"], ["b@example.org"]]
    assert parse(smtp_server.messages[0].data)["Subject"].startswith("[TEST] ")
    store, _list_id, _ = make_list(smtp_project, 0)
    assert Journal(store).all() == []


@pytest.mark.parametrize("pipelining", [False, True])
def test_unsubscribe_during_the_send_is_honoured(project_dir, monkeypatch, pipelining):
    """Someone unsubscribes while the send runs: no message once the store says so (with
    PIPELINING too, where MAIL and RCPT go out before the membership check has committed)."""

    class Unsubscribing(RecordingHandler):
        def data_reply(self, envelope):
            if not self.messages:  # while the first message arrives, the last person leaves
                store.unsubscribe(addresses[-1], list_id, source="one_click")
            return super().data_reply(envelope)

    handler = Unsubscribing()
    controller, server = start_smtp(offer_pipelining(handler) if pipelining else handler)
    try:
        monkeypatch.setenv("NEWSLETTER_SMTP__HOST", server.host)
        monkeypatch.setenv("NEWSLETTER_SMTP__PORT", str(server.port))
        monkeypatch.setenv("NEWSLETTER_SMTP__SECURITY", "none")
        project = open_project(project_dir)
        store, list_id, addresses = make_list(project, 5)
        report = run_send(plan_send(project, issue_path(project), "news", concurrency=1))
    finally:
        controller.stop()
    assert (report.sent, report.skipped) == (4, 1)
    assert addresses[-1] not in [m.rcpt_tos[0] for m in server.messages]
    (row,) = [r for r in Journal(store).deliveries(report.send_id) if r.status == "skipped"]
    assert row.email == addresses[-1] and "unsubscribed" in (row.smtp_reply or "")


@pytest.mark.parametrize("pipelining", [False, True])
def test_unsubscribe_while_waiting_for_the_rate_limit_is_honoured(project_dir, monkeypatch,
                                                                   pipelining):
    """With a rate limit, workers wait for their slot; the subscription is checked after the wait,
    not before it (at 2 messages/s the third slot comes a second after the first message)."""

    class Unsubscribing(RecordingHandler):
        def data_reply(self, envelope):
            if not self.messages:  # the first message arrives: the last person leaves
                store.unsubscribe(addresses[-1], list_id, source="one_click")
            return super().data_reply(envelope)

    handler = Unsubscribing()
    controller, server = start_smtp(offer_pipelining(handler) if pipelining else handler)
    try:
        monkeypatch.setenv("NEWSLETTER_SMTP__HOST", server.host)
        monkeypatch.setenv("NEWSLETTER_SMTP__PORT", str(server.port))
        monkeypatch.setenv("NEWSLETTER_SMTP__SECURITY", "none")
        project = open_project(project_dir)
        store, list_id, addresses = make_list(project, 3)
        report = run_send(plan_send(project, issue_path(project), "news", concurrency=4, rate=2))
    finally:
        controller.stop()
    assert (report.sent, report.skipped) == (2, 1)
    assert [m.rcpt_tos[0] for m in server.messages] == addresses[:2]
    (row,) = [r for r in Journal(store).deliveries(report.send_id) if r.status == "skipped"]
    assert row.email == addresses[-1]


def test_test_send_links_to_the_marked_test_unsubscribe_page(smtp_project, smtp_server):
    """A [TEST] mail has no subscriber: its link is `{base_url}/u/test`, which `serve` explains."""
    send_test(smtp_project, issue_path(smtp_project), ["tester@example.org"])
    raw = smtp_server.messages[0].data
    url = smtp_project.settings.newsletter.base_url.rstrip("/") + "/u/test"
    assert header_line(raw, b"List-Unsubscribe") == f"List-Unsubscribe: <{url}>".encode()
    assert header_line(raw, b"List-Unsubscribe-Post") == (
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click")
    message = parse(raw)
    assert not message.defects
    for part in message.iter_parts():
        assert url in part.get_content()
        assert URL.findall(part.get_content()) == ["test"] * len(URL.findall(part.get_content()))


def test_dry_run_writes_messages_and_sends_nothing(smtp_project, smtp_server, tmp_path):
    make_list(smtp_project, 3)
    plan = plan_send(smtp_project, issue_path(smtp_project), "news")
    directory, count = dry_run(plan, tmp_path / "out")
    assert count == 3
    files = sorted(directory.glob("*.eml"))
    assert len(files) == 3
    assert all(not parse(f.read_bytes()).defects for f in files)
    assert smtp_server.messages == []


def test_maildir_outbox_without_smtp_host(project):
    make_list(project, 3)
    report = run_send(plan_send(project, issue_path(project), "news"))
    assert report.sent == 3 and "Maildir" in report.transport
    files = list((project.outbox_dir / "new").iterdir())
    assert len(files) == 3
    assert all(not parse(f.read_bytes()).defects for f in files)
