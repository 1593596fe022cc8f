"""Transport: STARTTLS / implicit TLS with a real certificate, AUTH, single sends, Maildir outbox."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from conftest import RecordingHandler, SmtpServer, start_smtp
from ports import free_port
from test_send_support import issue_path, make_list, offer_pipelining, parse

from newsletter.config import SmtpSettings
from newsletter.delivery.plan import plan_send
from newsletter.delivery.sender import run_send
from newsletter.delivery.smtp import SmtpConnection
from newsletter.delivery.testsend import send_test
from newsletter.delivery.transport import DeliveryError, send_message_now
from newsletter.project import open_project


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
         str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True)
    return cert, key


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"newsletter", b"s3cret")
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def tls_server(certificate, monkeypatch, project_dir):
    """A server that requires STARTTLS and AUTH, like a real submission port."""
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handler = RecordingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, decode_data=False,
                            tls_context=context, require_starttls=True, auth_required=True,
                            authenticator=authenticator)
    controller.start()
    for key_name, value in {"HOST": "127.0.0.1", "PORT": str(port), "SECURITY": "starttls",
                            "USERNAME": "newsletter", "PASSWORD": "s3cret", "CA_FILE": str(cert)}.items():
        monkeypatch.setenv(f"NEWSLETTER_SMTP__{key_name}", value)
    yield SmtpServer("127.0.0.1", port, handler)
    controller.stop()


def test_send_over_starttls_with_auth(tls_server, project_dir):
    project = open_project(project_dir)
    make_list(project, 3)
    report = run_send(plan_send(project, issue_path(project), "news", concurrency=2))
    assert report.sent == 3 and len(tls_server.messages) == 3


def test_wrong_password_stops_with_a_clear_error(tls_server, project_dir, monkeypatch):
    monkeypatch.setenv("NEWSLETTER_SMTP__PASSWORD", "wrong")
    project = open_project(project_dir)
    with pytest.raises(DeliveryError, match="rejected the login of `newsletter`"):
        send_test(project, issue_path(project), ["a@example.org"])
    assert tls_server.messages == []


def test_untrusted_certificate_is_refused(tls_server, project_dir, monkeypatch):
    monkeypatch.delenv("NEWSLETTER_SMTP__CA_FILE")
    project = open_project(project_dir)
    with pytest.raises(DeliveryError, match="cannot connect"):
        send_test(project, issue_path(project), ["a@example.org"])
    assert tls_server.messages == []


def test_implicit_tls(certificate, project_dir, monkeypatch):
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handler = RecordingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, decode_data=False,
                            ssl_context=context)
    controller.start()
    try:
        for key_name, value in {"HOST": "127.0.0.1", "PORT": str(port), "SECURITY": "tls",
                                "CA_FILE": str(cert)}.items():
            monkeypatch.setenv(f"NEWSLETTER_SMTP__{key_name}", value)
        project = open_project(project_dir)
        replies = send_test(project, issue_path(project), ["a@example.org"])
    finally:
        controller.stop()
    assert [r.code for _a, r in replies] == [250] and len(handler.messages) == 1


def confirmation() -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Newsletter <newsletter@example.org>"
    message["To"] = "Anna Schmidt <anna@example.org>"
    message["Subject"] = "Bitte bestätigen Sie Ihre Anmeldung"
    message.set_content("https://example.org/confirm/abc\n")
    return message


def test_send_message_now_via_smtp(smtp_project, smtp_server):
    send_message_now(smtp_project, confirmation())
    (got,) = smtp_server.messages
    assert got.rcpt_tos == ["anna@example.org"] and got.mail_from == "newsletter@example.org"
    assert parse(got.data)["Subject"] == "Bitte bestätigen Sie Ihre Anmeldung"


async def test_send_message_now_from_inside_an_event_loop(smtp_project, smtp_server):
    send_message_now(smtp_project, confirmation())
    await asyncio.sleep(0)
    assert len(smtp_server.messages) == 1


def test_send_message_now_into_the_outbox(project):
    send_message_now(project, confirmation())
    (path,) = (project.outbox_dir / "new").iterdir()
    assert parse(path.read_bytes())["To"].addresses[0].addr_spec == "anna@example.org"


def test_many_first_uses_of_a_new_outbox_at_once_lose_no_mail(project):
    # mailbox.Maildir(create=True) races on mkdir; every one of these must still land.
    from concurrent.futures import ThreadPoolExecutor

    assert not project.outbox_dir.exists()
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda _: send_message_now(project, confirmation()), range(64)))
    assert len(list((project.outbox_dir / "new").iterdir())) == 64


def test_send_message_now_refused(project_dir, monkeypatch):
    class RefusingAll(RecordingHandler):
        def rcpt_reply(self, address):
            return "550 5.1.1 no such user"

    controller, server = start_smtp(RefusingAll())
    try:
        monkeypatch.setenv("NEWSLETTER_SMTP__HOST", server.host)
        monkeypatch.setenv("NEWSLETTER_SMTP__PORT", str(server.port))
        monkeypatch.setenv("NEWSLETTER_SMTP__SECURITY", "none")
        with pytest.raises(DeliveryError, match=r"550 5\.1\.1"):
            send_message_now(open_project(project_dir), confirmation())
    finally:
        controller.stop()


def test_lines_starting_with_a_dot_arrive_intact(smtp_project, smtp_server):
    """A message not built by `prepare` (here: the email package, 8bit) is dot-stuffed."""
    message = confirmation()
    message.set_content(".\n.. zwei Punkte\nText\n.\n", cte="8bit")
    send_message_now(smtp_project, message)
    (got,) = smtp_server.messages
    assert parse(got.data).get_content().replace("\r\n", "\n") == ".\n.. zwei Punkte\nText\n.\n"


class Refusing(RecordingHandler):
    """Refuses the sender `bad@…` at MAIL FROM and `unknown@…` at RCPT."""

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if address.startswith("bad@"):
            return "553 5.1.8 sender rejected"
        envelope.mail_from = address
        return "250 OK"

    def rcpt_reply(self, address):
        return "550 5.1.1 user unknown" if address.startswith("unknown@") else "250 OK"


@pytest.mark.parametrize("pipelining", [False, True])
def test_smtp_connection_replies_and_claims(pipelining):
    """One session, message after message: refusals come back as replies at the right stage,
    a claim that says no sends nothing, and the session goes on after each."""
    handler = Refusing()
    controller, server = start_smtp(offer_pipelining(handler) if pipelining else handler)
    raw = b"Subject: x\r\n\r\nHallo\r\n"

    async def session() -> list[object]:
        connection = SmtpConnection(SmtpSettings(host=server.host, port=server.port, security="none"))
        loop = asyncio.get_running_loop()
        no = loop.create_future()
        no.set_result(False)
        yes = loop.create_future()
        loop.call_later(0.05, yes.set_result, True)  # the claim commits while MAIL/RCPT go out
        try:
            results = [
                await connection.send("bad@example.org", "a@example.org", raw),
                await connection.send("n@example.org", "unknown@example.org", raw),
                await connection.send("n@example.org", "b@example.org", raw, no),
                await connection.send("n@example.org", "c@example.org", raw, yes, dot_safe=True),
                await connection.send("n@example.org", "d@example.org", raw),
            ]
            assert connection.session is not None and connection.session.pipelining is pipelining
            return results
        finally:
            await connection.close()

    try:
        mail, rcpt, skipped, claimed, plain = asyncio.run(session())
    finally:
        controller.stop()
    assert (mail.code, mail.stage, mail.enhanced) == (553, "mail", "5.1.8")
    assert (rcpt.code, rcpt.stage, rcpt.enhanced) == (550, "rcpt", "5.1.1")
    assert skipped is None
    assert claimed.ok and plain.ok
    assert [m.rcpt_tos for m in server.messages] == [["c@example.org"], ["d@example.org"]]
    assert all(m.data == raw for m in server.messages)
