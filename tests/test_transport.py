"""Transport: STARTTLS / implicit TLS with a real certificate, AUTH, single sends, Maildir outbox."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from conftest import RecordingHandler, SmtpServer, free_port
from test_send_support import issue_path, make_list, parse

from newsletter.config import load_project
from newsletter.delivery.sender import plan_send, run_send, send_test
from newsletter.delivery.transport import DeliveryError, send_message_now


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
    project = load_project(project_dir)
    make_list(project, 3)
    report = run_send(plan_send(project, issue_path(project), "news", concurrency=2))
    assert report.sent == 3 and len(tls_server.messages) == 3


def test_wrong_password_stops_with_a_clear_error(tls_server, project_dir, monkeypatch):
    monkeypatch.setenv("NEWSLETTER_SMTP__PASSWORD", "wrong")
    project = load_project(project_dir)
    with pytest.raises(DeliveryError, match="rejected the login of `newsletter`"):
        send_test(project, issue_path(project), ["a@example.org"])
    assert tls_server.messages == []


def test_untrusted_certificate_is_refused(tls_server, project_dir, monkeypatch):
    monkeypatch.delenv("NEWSLETTER_SMTP__CA_FILE")
    project = load_project(project_dir)
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
        project = load_project(project_dir)
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
    class Refusing(RecordingHandler):
        def rcpt_reply(self, address):
            return "550 5.1.1 no such user"

    from conftest import start_smtp

    controller, server = start_smtp(Refusing())
    try:
        monkeypatch.setenv("NEWSLETTER_SMTP__HOST", server.host)
        monkeypatch.setenv("NEWSLETTER_SMTP__PORT", str(server.port))
        monkeypatch.setenv("NEWSLETTER_SMTP__SECURITY", "none")
        with pytest.raises(DeliveryError, match=r"550 5\.1\.1"):
            send_message_now(load_project(project_dir), confirmation())
    finally:
        controller.stop()
