"""The whole feedback loop, on SQLite and PostgreSQL: a list send through a local relay (aiosmtpd
on 127.0.0.1) that accepts every message and afterwards bounces those for unknown users — a DSN
(RFC 3464) to the message's envelope sender, delivered into the bounce Maildir, as a relay's
mailer daemon does —, then `newsletter bounces fetch`; the bounced members are `bounced`, the
next send skips them and everyone else still gets it."""

from __future__ import annotations

import mailbox
import subprocess
import sys
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from conftest import start_smtp
from test_send_support import make_list

from newsletter.project import Project, open_project

pytestmark = pytest.mark.backends

BOUNCES = "bounces@newsletter.example.org"


@dataclass
class BouncingRelay:
    """Accepts everything (250), then bounces what it cannot deliver: the unknown addresses."""

    unknown: set[str]
    bounce_box: Path
    accepted: list[tuple[str, str]] = field(default_factory=list)  # (envelope sender, recipient)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        original = bytes(envelope.original_content or envelope.content)
        headers = original.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        for recipient in envelope.rcpt_tos:
            self.accepted.append((str(envelope.mail_from), recipient))
            if recipient in self.unknown:
                self._bounce(str(envelope.mail_from), recipient, headers)
        return "250 2.0.0 queued"

    def _bounce(self, sender: str, recipient: str, headers: str) -> None:
        dsn = (f"Return-Path: <>\r\nDelivered-To: {sender}\r\n"
               f"From: Mail Delivery System <MAILER-DAEMON@relay.example.net>\r\nTo: <{sender}>\r\n"
               f"Subject: Undelivered Mail Returned to Sender\r\nDate: {formatdate(localtime=False)}\r\n"
               "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
               'Content-Type: multipart/report; report-type=delivery-status; boundary="dsn"\r\n\r\n'
               f"--dsn\r\nContent-Type: text/plain\r\n\r\n<{recipient}>: host mx.example.net said: "
               "550 5.1.1 User unknown\r\n\r\n"
               "--dsn\r\nContent-Type: message/delivery-status\r\n\r\n"
               "Reporting-MTA: dns; relay.example.net\r\n\r\n"
               f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
               "Diagnostic-Code: smtp; 550 5.1.1 <" + recipient + ">: User unknown\r\n\r\n"
               f"--dsn\r\nContent-Type: text/rfc822-headers\r\n\r\n{headers}\r\n\r\n--dsn--\r\n")
        mailbox.Maildir(self.bounce_box, create=True).add(dsn.encode("utf-8"))


def _issue(project: Project, slug: str) -> Path:
    source = (project.root / "issues" / "2026-02.yaml").read_text(encoding="utf-8")
    path = project.root / "issues" / f"{slug}.yaml"
    path.write_text(source, encoding="utf-8")
    return path


def test_bounced_members_are_skipped_by_the_next_send(project_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    project = open_project(project_dir)
    _store, list_id, addresses = make_list(project, 8)
    unknown = {addresses[2], addresses[5]}
    relay = BouncingRelay(unknown, tmp_path / "bounces")
    controller, server = start_smtp(relay)  # type: ignore[arg-type]
    try:
        for key, value in {"SMTP__HOST": server.host, "SMTP__PORT": str(server.port),
                           "SMTP__SECURITY": "none", "BOUNCES__ADDRESS": BOUNCES}.items():
            monkeypatch.setenv(f"NEWSLETTER_{key}", value)
        project = open_project(project_dir)
        assert project.send(_issue(project, "2026-02"), "news").sent == 8
        assert len(relay.accepted) == 8 and all(s.startswith("bounces+") for s, _ in relay.accepted)

        done = subprocess.run([sys.executable, "-m", "newsletter", "bounces", "fetch", "--mailbox",
                               str(tmp_path / "bounces"), "--project", str(project_dir)],
                              capture_output=True, text=True, check=False, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "2 bounced" in done.stdout.splitlines()[-1]
        store = project.store
        for address in addresses:
            member = store.find_subscriber(address)
            assert member is not None
            expected = "bounced" if address in unknown else "subscribed"
            assert store.membership_status(member.id, list_id) == expected
            if address in unknown:
                entry = store.history(member.id)[-1]
                assert (entry.action, entry.source) == ("bounced", "bounce") and "5.1.1" in entry.detail

        relay.accepted.clear()
        report = project.send(_issue(project, "2026-03"), "news")
    finally:
        controller.stop()
    assert report.sent == 6
    assert sorted(recipient for _, recipient in relay.accepted) == sorted(set(addresses) - unknown)
