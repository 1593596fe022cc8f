"""Hand finished message bytes to SMTP (aiosmtplib) or to the local Maildir outbox.

* `SmtpTransport`: persistent connections (one per sending worker), reused for many messages,
  reconnecting when the server drops them or answers 421. `security = starttls` *requires*
  STARTTLS (a server that does not offer it is an error, never a silent plain-text fallback);
  `tls` is implicit TLS (port 465); `none` is plain SMTP. AUTH when `smtp.username` is set, with
  the password from `NEWSLETTER_SMTP__PASSWORD`.
* Messages go out as raw bytes through aiosmtplib's MAIL/RCPT/DATA (what `SMTP.sendmail` does):
  the bytes built by `newsletter.delivery.message` are sent as they are (`send_message` would re-serialise
  and re-fold them).
* `MaildirTransport`: with no `smtp.host`, messages land in `outbox/` (`mailbox.Maildir`).
* `RateLimit`: one limit (messages per second) shared by all connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import mailbox
import ssl
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import getaddresses
from pathlib import Path
from typing import Protocol

import aiosmtplib

from newsletter.config import Project, SmtpSettings
from newsletter.errors import NewsletterError


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
                   ready: Awaitable[bool] | None = None) -> Reply | None: ...

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


# --- SMTP -------------------------------------------------------------------------------------


def _tls_context(settings: SmtpSettings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if settings.ca_file:
        context.load_verify_locations(settings.ca_file)
    return context


class SmtpTransport:
    """Delivery through the configured SMTP server."""

    def __init__(self, settings: SmtpSettings) -> None:
        if not settings.host:
            raise DeliveryError("no SMTP host configured")
        self.settings = settings
        self.description = f"SMTP {settings.host}:{settings.port} ({settings.security})"

    async def check(self) -> None:
        connection = SmtpConnection(self.settings)
        await connection.connect()
        await connection.close()

    def connection(self) -> SmtpConnection:
        return SmtpConnection(self.settings)


class SmtpConnection:
    """One persistent SMTP session, (re)connected on demand."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self.smtp: aiosmtplib.SMTP | None = None

    async def connect(self) -> None:
        s = self.settings
        where = f"{s.host}:{s.port}"
        smtp = aiosmtplib.SMTP(
            hostname=s.host, port=s.port, timeout=s.timeout, use_tls=s.security == "tls",
            start_tls=False, tls_context=_tls_context(s) if s.security != "none" else None,
        )
        try:
            await smtp.connect()
            if s.security == "starttls":
                await smtp.ehlo()
                if not smtp.supports_extension("starttls"):
                    smtp.close()
                    raise DeliveryError(
                        f"the SMTP server {where} does not offer STARTTLS, but smtp.security is "
                        "`starttls`; refusing to send in plain text (set smtp.security = \"none\" "
                        "only for a trusted local relay)")
                await smtp.starttls(tls_context=_tls_context(s))
            if s.username:
                password = s.password.get_secret_value() if s.password else ""
                if not password:
                    smtp.close()
                    raise DeliveryError("smtp.username is set but NEWSLETTER_SMTP__PASSWORD is not")
                await smtp.login(s.username, password)
        except aiosmtplib.SMTPAuthenticationError as exc:
            smtp.close()
            raise DeliveryError(f"the SMTP server {where} rejected the login of `{s.username}`: "
                                f"{exc.code} {exc.message}") from None
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            smtp.close()
            raise DeliveryError(f"cannot connect to the SMTP server {where} ({s.security}): "
                                f"{_describe(exc)}") from None
        self.smtp = smtp

    async def send(self, sender: str, recipient: str, raw: bytes,
                   ready: Awaitable[bool] | None = None) -> Reply | None:
        """Send one message (CRLF line ends only); SMTP rejections come back as a `Reply`.

        `ready`, if given, is awaited before DATA (MAIL and RCPT go out meanwhile); False means
        "do not send after all" (RSET, returns None). Raises `DeliveryError` only when no
        connection can be (re)established.
        """
        if self.smtp is None or not self.smtp.is_connected:
            await self.connect()
        smtp = self.smtp
        assert smtp is not None
        # MAIL/RCPT/DATA of aiosmtplib, as `sendmail` does, minus its second pass over the bytes
        # to compute SIZE: the message is CRLF-only already, so its length is the size.
        options = [f"SIZE={len(raw)}"] if smtp.supports_extension("size") else []
        stage = "mail"
        written: list[bool] = []  # set once the body and its final "." are on the wire
        try:
            await smtp.mail(sender, options=options)
            stage = "rcpt"
            await smtp.rcpt(recipient)
            if ready is not None and not await ready:
                await smtp.rset()
                return None
            stage = "data"
            text = await _data(smtp, raw, written)
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code != 421 and smtp.is_connected:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await smtp.rset()
            return self._reply(exc.code, exc.message, stage)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            # Dropped mid-message: a temporary failure. Once the whole body was written the
            # server may have accepted it before the reply was lost: a retry may duplicate it.
            await self.close()
            return Reply(451, f"connection lost: {_describe(exc)}", stage=stage,
                         uncertain=bool(written))
        return Reply(250, text)

    def _reply(self, code: int, text: str, stage: str) -> Reply:
        if code == 421 or (self.smtp is not None and not self.smtp.is_connected):
            if self.smtp is not None:  # reconnect before the next message
                self.smtp.close()
            self.smtp = None
        return Reply(code, text, stage=stage)

    async def close(self) -> None:
        smtp, self.smtp = self.smtp, None
        if smtp is None:
            return
        try:
            if smtp.is_connected:
                await smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            pass
        finally:
            smtp.close()


async def _data(smtp: aiosmtplib.SMTP, raw: bytes, written: list[bool]) -> str:
    """DATA with the message as it is; the reply text. Raises like `SMTP.data`; appends to
    `written` once the whole message is handed to the socket.

    `SMTP.data` runs two regular expressions over every message (line-end normalisation and
    dot-stuffing: ~0.8 ms for a 100 KB newsletter, more than everything else we do per recipient).
    `raw` must be CRLF-only, as `newsletter.delivery.message` and the SMTP email policy produce it; lines
    starting with "." are rare (message.py encodes them), so dot-stuffing is a search.
    """
    payload = raw.replace(b"\r\n.", b"\r\n..") if b"\r\n." in raw else raw
    if payload.startswith(b"."):
        payload = b"." + payload
    if not payload.endswith(b"\r\n"):
        payload += b"\r\n"
    response = await smtp.execute_command(b"DATA")
    if response.code != 354:
        raise aiosmtplib.SMTPDataError(response.code, response.message)
    protocol = smtp.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    try:
        protocol.write(payload + b".\r\n")
        written.append(True)
        # read_response marks a reply as expected before the loop can deliver one.
        response = await protocol.read_response(timeout=smtp.timeout)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        smtp.close()
        raise
    if response.code != 250:
        raise aiosmtplib.SMTPDataError(response.code, response.message)
    return response.message


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.strip()


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
    """The embedded default: every message becomes a file in the project's `outbox/` Maildir."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
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
                   ready: Awaitable[bool] | None = None) -> Reply | None:
        if ready is not None and not await ready:
            return None
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
        return SmtpTransport(project.settings.smtp)
    return MaildirTransport(project.outbox_dir)


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

    async def deliver() -> None:
        transport = transport_for(project)
        connection = transport.connection()
        try:
            for recipient in recipients:
                reply = await connection.send(senders[0][1], recipient, raw)
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
