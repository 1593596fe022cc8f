"""Helpers shared by the delivery tests (not a test module)."""

from __future__ import annotations

import email
import email.policy
import mailbox
import re
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import pytest

from newsletter.audience.store import Store, open_store
from newsletter.db.schema import utcnow
from newsletter.delivery.journal import Journal
from newsletter.project import Project

pytestmark = pytest.mark.backends

H = TypeVar("H")

ISSUE = "issues/2026-02.yaml"
LONG_BASE_URL = "https://newsletter.musterstadt-smart-city.example.org/stabsstelle-digitalisierung/newsletter"


def make_list(project: Project, count: int, name: str = "news") -> tuple[Store, int, list[str]]:
    """A list with `count` subscribed members; (store, list id, addresses)."""
    store = open_store(project)
    mailing_list = store.create_list(name, title="Smart zu wissen")
    addresses = [f"person{i:04d}@example.org" for i in range(count)]
    for i, address in enumerate(addresses):
        store.add_subscriber(address, mailing_list.id, name=f"Person Nummer {i}", confirmed=True)
    return store, mailing_list.id, addresses


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def header_line(raw: bytes, name: bytes) -> bytes:
    """The raw header line(s) of `name`, as on the wire (folding kept)."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    match = re.search(rb"(?im)^" + re.escape(name) + rb":[^\r\n]*(?:\r\n[ \t][^\r\n]*)*", head)
    assert match, f"no {name!r} header"
    return match.group(0)


def issue_path(project: Project) -> Path:
    return project.root / ISSUE


def offer_pipelining(handler: H) -> H:
    """Make an aiosmtpd handler advertise PIPELINING (RFC 2920). aiosmtpd reads pipelined
    commands one by one and answers in order, but does not say so in its EHLO reply; with it
    the client sends MAIL + RCPT (+ DATA) without waiting for each reply."""

    async def handle_EHLO(server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    handler.handle_EHLO = handle_EHLO  # type: ignore[attr-defined]
    return handler


def wait_out_the_lease(store: Store, send_id: int) -> None:
    """Wait until the lease of the send's last worker (a killed process) has run out: one wait
    for a deadline the journal states, not a retry loop. The killed process ran with a short
    lease (`NEWSLETTER_SEND_LEASE_SECONDS`)."""
    info = Journal(store).get(send_id)
    assert info is not None and info.workers
    left = (info.workers[-1].lease_expires_at - utcnow()).total_seconds()
    time.sleep(max(left, 0.0) + 0.01)


def outbox_parts(project: Project) -> dict[str, tuple[str, str]]:
    """recipient → (text part, HTML part), decoded, of every mail in the project's outbox so far
    (none when nothing was sent there)."""
    found: dict[str, tuple[str, str]] = {}
    if not project.outbox_dir.exists():
        return found
    for raw in mailbox.Maildir(project.outbox_dir, create=False):
        message = parse(bytes(raw))
        assert not message.defects
        text = message.get_body(("plain",)).get_content()
        html = message.get_body(("html",)).get_content()
        found[message["To"].addresses[0].addr_spec] = (text, html)
    return found
