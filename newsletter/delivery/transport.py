"""Hand finished message bytes to SMTP or to the local Maildir outbox.

* `Transport` / `Connection`: what the send loop talks to; one connection per sending worker.
* `SmtpTransport` (`newsletter.delivery.smtp`): persistent, pipelined SMTP sessions, TLS rules.
* `MaildirTransport`: with no `smtp.host`, messages land in `outbox/` (`mailbox.Maildir`); with
  a bounce address, each one starts with the `Return-Path:` line of its envelope sender.
* `RateLimit`: one limit (messages per second) shared by all connections.
* `send_message_now`: one message (the double opt-in mail) outside a send.
"""

from __future__ import annotations

import asyncio
import mailbox
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import getaddresses
from pathlib import Path
from typing import Protocol

from newsletter.delivery.envelope import plain_sender, return_path
from newsletter.errors import NewsletterError
from newsletter.project import Project


class DeliveryError(NewsletterError):
    """The transport cannot deliver at all (connection, TLS or authentication): stop the send."""


@dataclass(frozen=True)
class Reply:
    """The server's answer to one message (code 250 = accepted)."""

    code: int
    text: str
    stage: str = "data"  # where it was refused: mail | rcpt | data
    # The connection was lost after the whole message was written: the server may have accepted
    # it, so sending it again may duplicate it.
    uncertain: bool = False

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def enhanced(self) -> str:
        """The RFC 3463 enhanced status code (`5.1.1`), or ''."""
        first = self.text.split(None, 1)[0] if self.text.strip() else ""
        parts = first.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and parts[0] in "245":
            return first
        return ""

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


class Connection(Protocol):
    async def send(self, sender: str, recipient: str, raw: bytes,
                   ready: Awaitable[bool] | None = None, *, dot_safe: bool = False) -> Reply | None:
        """Deliver `raw` (CRLF line ends) to `recipient`; `ready` is awaited before the message
        is handed over (False: do not send, None is returned). `dot_safe`: no line of `raw`
        starts with "." (`PreparedMessage.personalise` guarantees it), so SMTP need not search
        100 KB for lines to dot-stuff."""

    async def close(self) -> None: ...


class Transport(Protocol):
    description: str

    async def check(self) -> None:
        """Fail early (DeliveryError) if delivery cannot work at all."""

    def connection(self) -> Connection: ...


class RateLimit:
    """At most `rate` messages per second across every connection (0 = unlimited)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


# --- Maildir ----------------------------------------------------------------------------------


def open_maildir(directory: Path) -> mailbox.Maildir:
    """The Maildir at `directory`, created if needed.

    `mailbox.Maildir(create=True)` checks and then creates, so two threads or processes
    using a new outbox at once race on mkdir ("File exists") and one of them fails;
    `exist_ok` makes the creation idempotent.
    """
    for sub in ("tmp", "new", "cur"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    return mailbox.Maildir(directory, create=False)


class MaildirTransport:
    """The embedded default: every message becomes a file in the project's `outbox/` Maildir.

    `return_path`: write the envelope sender as a first `Return-Path:` line, as a local delivery
    agent does (set with `[bounces] address`, so the outbox shows where bounces would go; without
    it the files stay exactly the prepared bytes)."""

    def __init__(self, directory: Path, return_path: bool = False) -> None:
        self.directory = directory
        self.return_path = return_path
        self.description = f"Maildir {directory} (no SMTP host configured)"
        self._box: mailbox.Maildir | None = None

    async def check(self) -> None:
        self.box()

    def box(self) -> mailbox.Maildir:
        if self._box is None:
            try:
                self._box = open_maildir(self.directory)
            except OSError as exc:
                raise DeliveryError(f"cannot create the outbox {self.directory}: {exc.strerror}") from None
        return self._box

    def connection(self) -> MaildirConnection:
        return MaildirConnection(self)


class MaildirConnection:
    def __init__(self, transport: MaildirTransport) -> None:
        self.transport = transport

    async def send(self, sender: str, recipient: str, raw: bytes,
                   ready: Awaitable[bool] | None = None, *, dot_safe: bool = False) -> Reply | None:
        if ready is not None and not await ready:
            return None
        if self.transport.return_path:
            raw = return_path(sender) + raw
        try:
            key = self.transport.box().add(raw)
        except OSError as exc:
            raise DeliveryError(f"cannot write to the outbox {self.transport.directory}: "
                                f"{exc.strerror}") from None
        return Reply(250, f"stored in {self.transport.directory.name}/new as {key}")

    async def close(self) -> None:
        return None


def transport_for(project: Project) -> Transport:
    """SMTP when `smtp.host` is configured, else the Maildir outbox."""
    if project.settings.smtp.host:
        from newsletter.delivery.smtp import SmtpTransport

        return SmtpTransport(project.settings.smtp)
    return MaildirTransport(project.outbox_dir, return_path=project.settings.bounces.address is not None)


# --- single messages --------------------------------------------------------------------------


def send_message_now(project: Project, message: EmailMessage) -> None:
    """Send one message (e.g. a double-opt-in confirmation) synchronously; raise DeliveryError."""
    raw = message.as_bytes(policy=SMTP_POLICY)
    senders = getaddresses([str(message.get("Sender") or message.get("From") or "")])
    recipients = [addr for _name, addr in getaddresses(
        [str(v) for h in ("To", "Cc", "Bcc") for v in message.get_all(h, [])]) if addr]
    if not senders or not senders[0][1] or not recipients:
        raise DeliveryError("the message needs a From and at least one recipient")
    if "Bcc" in message:
        del message["Bcc"]
        raw = message.as_bytes(policy=SMTP_POLICY)
    sender = plain_sender(project, senders[0][1])  # no delivery row: the plain bounce address

    async def deliver() -> None:
        transport = transport_for(project)
        connection = transport.connection()
        try:
            for recipient in recipients:
                reply = await connection.send(sender, recipient, raw)
                if reply is None or not reply.ok:
                    raise DeliveryError(f"the SMTP server refused the message to {recipient}: {reply}")
        finally:
            await connection.close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(deliver())
        return
    # Called from inside an event loop (the web app): run on a thread with its own loop.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, deliver()).result()
