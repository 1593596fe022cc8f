"""The VERP envelope sender: with `[bounces] address` every message of a list send goes out from
its own `bounces+TAG@…`, the tag naming (send, subscriber); without it MAIL FROM stays From."""

from __future__ import annotations

import pytest
from conftest import RecordingHandler, start_smtp
from test_send_support import issue_path, make_list, parse
from typer.testing import CliRunner

from newsletter.cli import app
from newsletter.delivery import verp
from newsletter.delivery.journal import Journal
from newsletter.delivery.message import confirmation_message
from newsletter.delivery.plan import plan_send
from newsletter.delivery.sender import run_send
from newsletter.delivery.transport import send_message_now
from newsletter.project import open_project
from newsletter.tokens import signing_keys

pytestmark = pytest.mark.backends

BOUNCES = "bounces@news.example.org"
FROM = "newsletter@example.org"  # the skeleton's `newsletter.from`
runner = CliRunner()


def with_bounces(project, monkeypatch, address: str = BOUNCES):
    monkeypatch.setenv("NEWSLETTER_BOUNCES__ADDRESS", address)
    return open_project(project.root)


def cli_send(project, *args):
    return runner.invoke(app, ["send", str(issue_path(project)), *args, "--project", str(project.root)])


def recipients_by_address(project, send_id: int) -> dict[str, int]:
    store = project.store
    return {row.email: row.subscriber_id for row in Journal(store).deliveries(send_id)}


def test_every_message_carries_its_own_tag(smtp_project, smtp_server, monkeypatch):
    project = with_bounces(smtp_project, monkeypatch)
    make_list(project, 9)
    result = cli_send(project, "--list", "news", "--yes", "--concurrency", "3")
    assert result.exit_code == 0, result.output

    (send,) = Journal(project.store).all()
    subscriber_of = recipients_by_address(project, send.id)
    keys = signing_keys(project)
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == sorted(subscriber_of)
    senders = set()
    for message in smtp_server.messages:
        (recipient,) = message.rcpt_tos
        sender = message.mail_from
        tag = verp.tag_of(sender, BOUNCES)
        assert tag is not None, sender
        assert verp.read_tag(keys, tag) == (send.id, subscriber_of[recipient])
        assert sender == verp.bounce_address(BOUNCES, verp.mint_tag(keys, send.id, subscriber_of[recipient]))
        assert len(sender.rpartition("@")[0].encode()) <= 64
        # The headers are the prepared ones: From stays the newsletter's address.
        assert parse(message.data)["From"].addresses[0].addr_spec == FROM
        senders.add(sender)
    assert len(senders) == 9  # one address per delivery


def test_a_resume_keeps_the_tag_of_each_delivery(smtp_project, smtp_server, monkeypatch):
    """A send resumed after more members joined: old and new recipients' tags all read back."""
    project = with_bounces(smtp_project, monkeypatch)
    store, list_id, _ = make_list(project, 3)
    assert run_send(plan_send(project, issue_path(project), "news")).sent == 3
    store.add_subscriber("late@example.org", list_id, confirmed=True)
    assert run_send(plan_send(project, issue_path(project), "news")).sent == 4
    (send,) = Journal(store).all()
    subscriber_of = recipients_by_address(project, send.id)
    keys = signing_keys(project)
    assert len(smtp_server.messages) == 4
    assert all(verp.read_tag(keys, verp.tag_of(m.mail_from, BOUNCES) or "")
               == (send.id, subscriber_of[m.rcpt_tos[0]]) for m in smtp_server.messages)


def test_the_longest_bounce_address_fits_the_local_part_limit(smtp_project, smtp_server, monkeypatch):
    longest = "b" * 31 + "@example.org"  # 31 + "+" + 32-character tag = 64 octets
    project = with_bounces(smtp_project, monkeypatch, longest)
    make_list(project, 2)
    assert cli_send(project, "--list", "news", "--yes").exit_code == 0
    locals_ = [m.mail_from.rpartition("@")[0] for m in smtp_server.messages]
    assert [len(local.encode()) for local in locals_] == [64, 64]


def test_a_bounce_address_too_long_for_verp_is_refused_before_sending(smtp_project, smtp_server,
                                                                      monkeypatch):
    project = with_bounces(smtp_project, monkeypatch, "b" * 32 + "@example.org")
    make_list(project, 2)
    result = cli_send(project, "--list", "news", "--yes")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "[bounces] address" in result.output and "64 octets" in result.output
    assert smtp_server.messages == [] and Journal(project.store).all() == []


def test_without_a_bounce_address_mail_from_is_the_from_address(smtp_project, smtp_server):
    make_list(smtp_project, 3)
    assert cli_send(smtp_project, "--list", "news", "--yes").exit_code == 0
    assert [m.mail_from for m in smtp_server.messages] == [FROM] * 3
    # The library call needs no VERP scheme either then.
    assert run_send(plan_send(smtp_project, issue_path(smtp_project), "news")).status == "finished"


def test_the_library_send_tags_too(smtp_project, smtp_server, monkeypatch):
    """`Project.send` (the Python API) goes out from the VERP addresses as the command does."""
    project = with_bounces(smtp_project, monkeypatch)
    make_list(project, 2)
    assert project.send(issue_path(project), "news").sent == 2
    assert all(verp.tag_of(m.mail_from, BOUNCES) for m in smtp_server.messages)


def test_test_sends_and_the_confirmation_mail_use_the_plain_bounce_address(smtp_project, smtp_server,
                                                                          monkeypatch):
    project = with_bounces(smtp_project, monkeypatch)
    result = cli_send(project, "--to", "me@example.org")
    assert result.exit_code == 0, result.output
    send_message_now(project, confirmation_message(project, "new@example.org", "Bitte bestätigen",
                                                   "Text", "<p>Text</p>"))
    assert [(m.mail_from, m.rcpt_tos) for m in smtp_server.messages] == [
        (BOUNCES, ["me@example.org"]), (BOUNCES, ["new@example.org"])]


def test_the_outbox_keeps_the_envelope_sender_as_return_path(project, monkeypatch):
    """No SMTP host: the Maildir file starts with `Return-Path:` as a local delivery agent
    writes it; the rest is the message as prepared."""
    project = with_bounces(project, monkeypatch)
    make_list(project, 3)
    assert cli_send(project, "--list", "news", "--yes").exit_code == 0
    (send,) = Journal(project.store).all()
    subscriber_of = recipients_by_address(project, send.id)
    keys = signing_keys(project)
    files = list((project.outbox_dir / "new").iterdir())
    assert len(files) == 3
    for path in files:
        raw = path.read_bytes()
        first, rest = raw.split(b"\r\n", 1)
        assert first.startswith(b"Return-Path: <bounces+") and first.endswith(b"@news.example.org>")
        assert not rest.lower().startswith(b"return-path")
        message = parse(raw)
        recipient = message["To"].addresses[0].addr_spec
        tag = verp.tag_of(message["Return-Path"], BOUNCES)
        assert verp.read_tag(keys, tag or "") == (send.id, subscriber_of[recipient])

    test = cli_send(project, "--to", "me@example.org")
    assert test.exit_code == 0, test.output
    (newest,) = set((project.outbox_dir / "new").iterdir()) - set(files)
    assert newest.read_bytes().startswith(b"Return-Path: <" + BOUNCES.encode() + b">\r\nFrom: ")


def test_the_outbox_without_a_bounce_address_has_no_return_path(project):
    make_list(project, 2)
    assert cli_send(project, "--list", "news", "--yes").exit_code == 0
    for path in (project.outbox_dir / "new").iterdir():
        assert path.read_bytes().startswith(b"From: ")


class BouncesRejected(RecordingHandler):
    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        return f"553 5.1.8 <{address}>: Sender address rejected: Domain not found"


def test_a_refused_bounce_address_pauses_the_send_and_names_the_setting(project_dir, monkeypatch):
    controller, server = start_smtp(BouncesRejected())
    try:
        for key, value in (("HOST", server.host), ("PORT", str(server.port)), ("SECURITY", "none")):
            monkeypatch.setenv(f"NEWSLETTER_SMTP__{key}", value)
        monkeypatch.setenv("NEWSLETTER_BOUNCES__ADDRESS", BOUNCES)
        project = open_project(project_dir)
        make_list(project, 3)
        report = run_send(plan_send(project, issue_path(project), "news"))
    finally:
        controller.stop()
    assert report.status == "paused" and report.sent == 0 and report.bounced == 0
    assert f"refused the envelope sender <{BOUNCES}> (with this message's VERP tag) at MAIL FROM" in (
        report.reason or "")
    assert "check [bounces] address, newsletter.from" in (report.reason or "")
