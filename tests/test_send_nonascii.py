"""A recipient whose message cannot be built fails alone; an internal error loses no record;
umlaut domains go out in their ASCII (punycode) form."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from conftest import RecordingHandler, start_smtp
from test_send_support import header_line, issue_path, make_list, parse

from newsletter.audience.tables import memberships, new_token_id, subscribers
from newsletter.db.schema import utcnow
from newsletter.delivery import send_loop as send_module
from newsletter.delivery.dryrun import dry_run
from newsletter.delivery.journal import Journal
from newsletter.delivery.plan import plan_send
from newsletter.delivery.sender import run_send
from newsletter.project import open_project

pytestmark = pytest.mark.backends


def insert_raw(store, list_id: int, address: str) -> int:
    """A subscriber as an import before the address check could have stored it."""
    now = utcnow()
    with store.write() as conn:
        subscriber_id = conn.execute(subscribers.insert().values(
            email=address, email_key=address.lower(), name=None, attributes={}, created_at=now,
            token_id=new_token_id())).inserted_primary_key[0]
        conn.execute(memberships.insert().values(subscriber_id=subscriber_id, list_id=list_id,
                                                 status="subscribed", created_at=now, updated_at=now))
    return subscriber_id


def test_old_row_with_non_ascii_local_part_fails_alone(smtp_project, smtp_server):
    project = smtp_project
    store, list_id, addresses = make_list(project, 6)
    insert_raw(store, list_id, "müller@example.org")
    report = run_send(plan_send(project, issue_path(project), "news", concurrency=3))
    assert (report.status, report.sent, report.failed_permanent, report.pending) == ("finished", 6, 1, 0)
    assert report.possibly_duplicated == []
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == sorted(addresses)
    journal = Journal(store)
    (info,) = journal.all()
    (bad,) = [r for r in journal.deliveries(info.id) if r.email == "müller@example.org"]
    assert bad.status == "failed_permanent" and not bad.possibly_duplicated
    assert "non-ASCII characters before @" in (bad.smtp_reply or "")
    # The membership is not touched (not a bounce), and a re-run sends nobody anything again.
    assert store.membership_status(bad.subscriber_id, list_id) == "subscribed"
    again = run_send(plan_send(project, issue_path(project), "news"))
    assert again.status == "finished" and again.possibly_duplicated == []
    assert len(smtp_server.messages) == 6


def test_dry_run_skips_a_row_it_cannot_build(smtp_project):
    store, list_id, _addresses = make_list(smtp_project, 2)
    insert_raw(store, list_id, "greta.groß@example.org")
    directory, count = dry_run(plan_send(smtp_project, issue_path(smtp_project), "news"))
    assert count == 2 and len(list(directory.glob("*.eml"))) == 2


def test_umlaut_domain_goes_out_as_punycode(smtp_project, smtp_server):
    store, list_id, _addresses = make_list(smtp_project, 1)
    store.add_subscriber("info@müller.de", list_id, name="Jörg Müller", confirmed=True)
    report = run_send(plan_send(smtp_project, issue_path(smtp_project), "news"))
    assert (report.sent, report.failed_permanent) == (2, 0)
    (got,) = [m for m in smtp_server.messages if m.rcpt_tos[0].endswith(".de")]
    assert got.rcpt_tos == ["info@xn--mller-kva.de"]
    to = header_line(got.data, b"To")
    assert b"info@xn--mller-kva.de>" in to and b"@=?" not in to
    message = parse(got.data)
    assert message["To"].addresses[0].addr_spec == "info@xn--mller-kva.de"
    assert message["To"].addresses[0].display_name == "Jörg Müller"
    assert not message["To"].defects


def test_umlaut_domain_into_the_maildir_outbox(project):
    store, list_id, _addresses = make_list(project, 0)
    store.add_subscriber("info@müller.de", list_id, confirmed=True)
    report = run_send(plan_send(project, issue_path(project), "news"))
    assert report.sent == 1
    (path,) = list((project.outbox_dir / "new").iterdir())
    assert parse(path.read_bytes())["To"].addresses[0].addr_spec == "info@xn--mller-kva.de"


class SlowToAnswer(RecordingHandler):
    """Keeps the message, then takes a while to say 250: other messages are in flight."""

    async def handle_DATA(self, server, session, envelope):
        reply = await super().handle_DATA(server, session, envelope)
        await asyncio.sleep(0.05)
        return reply


def test_internal_error_records_the_messages_already_handed_over(project_dir, monkeypatch):
    """A bug while judging one reply stops the send; the others in flight are recorded as sent,
    so the resume gives nobody else a second copy."""
    controller, server = start_smtp(SlowToAnswer())
    for key, value in (("HOST", server.host), ("PORT", str(server.port)), ("SECURITY", "none")):
        monkeypatch.setenv(f"NEWSLETTER_SMTP__{key}", value)
    try:
        project = open_project(project_dir)
        store, _list_id, addresses = make_list(project, 20)
        real = send_module.classify
        calls = []

        def buggy(reply):
            calls.append(reply)
            if len(calls) == 6:
                raise RuntimeError("simulated bug")
            return real(reply)

        monkeypatch.setattr(send_module, "classify", buggy)
        with pytest.raises(RuntimeError, match="simulated bug"):
            run_send(plan_send(project, issue_path(project), "news", concurrency=4))
        journal = Journal(store)
        (info,) = journal.all()
        rows = journal.deliveries(info.id)
        received = Counter(m.rcpt_tos[0] for m in server.messages)
        sent = {r.email for r in rows if r.status == "sent"}
        # Every message the server has is recorded, except the one whose reply hit the bug.
        assert len(received) - len(sent) == 1
        assert len(received) >= 6
        (unknown,) = [r.email for r in rows if r.status == "sending"]
        assert info.status == "interrupted" and "internal error" in (info.reason or "")

        monkeypatch.setattr(send_module, "classify", real)
        again = run_send(plan_send(project, issue_path(project), "news"))
        assert again.status == "finished" and again.possibly_duplicated == [unknown]
        received = Counter(m.rcpt_tos[0] for m in server.messages)
        assert set(received) == set(addresses)
        assert {a for a, n in received.items() if n > 1} == {unknown}
    finally:
        controller.stop()
