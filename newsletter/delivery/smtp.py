"""SMTP delivery: persistent sessions, one per sending worker, pipelined where the server allows.

* Connecting — greeting, EHLO, STARTTLS, AUTH — is aiosmtplib's. `security = starttls` *requires*
  STARTTLS (a server that does not offer it is an error, never a silent plain-text fallback);
  `tls` is implicit TLS (port 465); `none` is plain SMTP. AUTH when `smtp.username` is set,
  with the password from `NEWSLETTER_SMTP__PASSWORD`.
* Then `_Session` takes the connection over for the messages: MAIL, RCPT, DATA, RSET, QUIT over
  the same (TLS) transport. The message goes out as the exact bytes `newsletter.delivery.message`
  built (CRLF only; dot-stuffed here only if a line starts with "."), so DKIM signs what is sent.
  aiosmtplib's per-command path (address re-parsing, a lock, `wait_for`, line-end normalisation
  and dot-stuffing regexes over every 100 KB body) cost more than everything else per recipient:
  with its `mail`/`rcpt`/`data` the benchmark stays far below its goal (docs/delivery.md, SMTP).
* With PIPELINING (RFC 2920) MAIL and RCPT go out in one packet while the journal commits the
  claim; DATA follows as soon as the claim is committed, without waiting for the MAIL/RCPT
  replies; the body only after `354`. Without PIPELINING one command at a time.
* The connection reconnects on demand after the server drops it or answers 421.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Awaitable

import aiosmtplib

from newsletter.config import SmtpSettings
from newsletter.delivery.transport import DeliveryError, Reply

MAX_REPLY = 64 * 1024  # a server reply longer than this is garbage: drop the connection


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


def _tls_context(settings: SmtpSettings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if settings.ca_file:
        context.load_verify_locations(settings.ca_file)
    return context


class _Lost(Exception):
    """The connection is gone (dropped, timed out, or a reply that is not SMTP)."""


class _Session(asyncio.Protocol):
    """The message phase of an SMTP session: writes commands, hands out the replies in order."""

    def __init__(self, transport: asyncio.Transport, timeout: float | None,
                 extensions: dict[str, str]) -> None:
        self.transport = transport
        self.timeout = timeout
        self.pipelining = "pipelining" in extensions
        self.size = "size" in extensions
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._lines: list[bytes] = []  # lines of a multi-line reply read so far
        self._replies: deque[tuple[int, str]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._lost: str | None = None
        transport.set_protocol(self)

    # --- asyncio.Protocol ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        start = 0
        while (end := self._buffer.find(b"\n", start)) != -1:
            line = bytes(self._buffer[start:end]).rstrip(b"\r")
            start = end + 1
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
                self._lose(f"not an SMTP reply: {line[:80]!r}")
                return
            self._lines.append(line)
            if line[3:4] != b"-":
                text = "\n".join(x[4:].strip(b" \t").decode("utf-8", "surrogateescape")
                                 for x in self._lines)
                self._replies.append((int(line[:3]), text))
                self._lines = []
        del self._buffer[:start]
        if len(self._buffer) > MAX_REPLY or len(self._lines) > 1000:
            self._lose("reply too long")
        elif self._replies:
            self._wake()

    def eof_received(self) -> bool:
        self._lose("the server closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(str(exc) if exc else "the server closed the connection")

    # --- commands --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._lost is not None

    def write(self, data: bytes) -> None:
        if self._lost is not None:
            raise _Lost(self._lost)
        self.transport.write(data)

    async def reply(self) -> tuple[int, str]:
        """The next reply, in the order the commands went out."""
        if not self._replies:
            if self._lost is not None:
                raise _Lost(self._lost)
            waiter = self._waiter = self._loop.create_future()
            timer = None if self.timeout is None else self._loop.call_later(
                self.timeout, self._timed_out, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if not self._replies:
                raise _Lost(self._lost or "no reply")
        return self._replies.popleft()

    def close(self) -> None:
        self._lose("closed")
        self.transport.close()

    def _lose(self, why: str) -> None:
        if self._lost is None:
            self._lost = why
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _timed_out(self, waiter: asyncio.Future[None]) -> None:
        if waiter is self._waiter:
            self._lose("timed out waiting for the server's reply")
            self.transport.abort()


class SmtpConnection:
    """One persistent SMTP session, (re)connected on demand."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self.session: _Session | None = None

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
            if smtp.is_ehlo_or_helo_needed:
                try:
                    await smtp.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await smtp.helo()
        except aiosmtplib.SMTPAuthenticationError as exc:
            smtp.close()
            raise DeliveryError(f"the SMTP server {where} rejected the login of `{s.username}`: "
                                f"{exc.code} {exc.message}") from None
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            smtp.close()
            raise DeliveryError(f"cannot connect to the SMTP server {where} ({s.security}): "
                                f"{_describe(exc)}") from None
        transport = smtp.transport
        if not isinstance(transport, asyncio.Transport) or transport.is_closing():
            smtp.close()
            raise DeliveryError(f"cannot connect to the SMTP server {where} ({s.security}): "
                                "the connection closed after the greeting")
        self.session = _Session(transport, s.timeout, dict(smtp.esmtp_extensions))

    async def send(self, sender: str, recipient: str, raw: bytes,
                   ready: Awaitable[bool] | None = None, *, dot_safe: bool = False) -> Reply | None:
        """Send one message (CRLF line ends only); SMTP rejections come back as a `Reply`.

        `ready`, if given, is awaited before DATA (MAIL and RCPT go out meanwhile); False means
        "do not send after all" (RSET, returns None). `dot_safe`: no line starts with "." (no
        search for lines to dot-stuff). Raises `DeliveryError` only when no connection can be
        (re)established.
        """
        sender_bytes, to = _address(sender), _address(recipient)  # ValueError: a caller's bug
        if self.session is not None and self.session.closed:
            self.drop()  # dropped by the server, or a reply that was not SMTP: close our side too
        if self.session is None:
            await self.connect()
        session = self.session
        assert session is not None
        mail = b"MAIL FROM:<" + sender_bytes + b">"
        if session.size:
            mail += b" SIZE=%d" % len(raw)
        rcpt = b"RCPT TO:<" + to + b">\r\n"
        stage = "mail"
        written = False  # the body and its final "." are on the wire
        try:
            if session.pipelining:
                session.write(mail + b"\r\n" + rcpt)
                go = ready is None or await ready
                if go:  # RFC 2920: DATA may end a pipelined group
                    session.write(b"DATA\r\n")
                refused = await self._envelope(session, go)
                if refused is not None:
                    return refused
                if not go:
                    await self._reset(session)
                    return None
                stage = "data"
            else:
                session.write(mail + b"\r\n")
                code, text = await session.reply()
                if code != 250:
                    return await self._refused(session, code, text, "mail")
                stage = "rcpt"
                session.write(rcpt)
                code, text = await session.reply()
                if code not in (250, 251):
                    return await self._refused(session, code, text, "rcpt")
                if ready is not None and not await ready:
                    await self._reset(session)
                    return None
                stage = "data"
                session.write(b"DATA\r\n")
                code, text = await session.reply()
                if code != 354:
                    return await self._refused(session, code, text, "data")
            session.write(raw + b".\r\n" if dot_safe and raw.endswith(b"\r\n") else _dot_stuffed(raw))
            written = True
            code, text = await session.reply()
            if code != 250:
                return await self._refused(session, code, text, "data")
            return Reply(250, text)
        except _Lost as exc:
            # Dropped mid-message: a temporary failure. Once the whole body was written the
            # server may have accepted it before the reply was lost: a retry may duplicate it.
            self.drop()
            return Reply(451, f"connection lost: {exc}", stage=stage, uncertain=written)
        except BaseException:  # cancelled mid-message: replies still due would pair up wrongly
            self.drop()
            raise

    async def _envelope(self, session: _Session, data_sent: bool) -> Reply | None:
        """Read the replies to a pipelined MAIL, RCPT (and DATA): the first refusal, or None."""
        stages = ("mail", "rcpt", "data") if data_sent else ("mail", "rcpt")
        refused: Reply | None = None
        for stage in stages:
            code, text = await session.reply()
            ok = code == 250 if stage == "mail" else code in (250, 251) if stage == "rcpt" else code == 354
            if code == 421:
                self.drop()
                return refused or Reply(code, text, stage=stage)
            if refused is None and not ok:
                refused = Reply(code, text, stage=stage)
            elif refused is not None and ok and stage == "data":
                # 354 after a refused MAIL/RCPT (a broken server): leaving DATA would need a
                # body, so hang up instead — the server must discard an unfinished message.
                self.drop()
                return refused
        if refused is not None:
            await self._reset(session)
        return refused

    async def _refused(self, session: _Session, code: int, text: str, stage: str) -> Reply:
        if code == 421:
            self.drop()  # the server is closing the connection: reconnect for the next message
        else:
            await self._reset(session)
        return Reply(code, text, stage=stage)

    async def _reset(self, session: _Session) -> None:
        try:
            session.write(b"RSET\r\n")
            code, _text = await session.reply()
        except _Lost:
            self.drop()
            return
        if code == 421:
            self.drop()

    def drop(self) -> None:
        """Forget the connection (closing it); the next `send` reconnects."""
        session, self.session = self.session, None
        if session is not None:
            session.close()

    async def close(self) -> None:
        session, self.session = self.session, None
        if session is None:
            return
        with contextlib.suppress(_Lost):
            session.write(b"QUIT\r\n")
            await session.reply()
        session.close()


def _address(address: str) -> bytes:
    """An envelope address for MAIL / RCPT: plain ASCII (IDN domains in punycode, see
    `ascii_email`), nothing that could end the command line or the angle brackets."""
    if not address.isascii() or any(c in address for c in "\r\n<> "):
        raise ValueError(f"not a plain ASCII envelope address: {address!r}")
    return address.encode("ascii")


def _dot_stuffed(raw: bytes) -> bytes:
    """The DATA payload: `raw` (CRLF-only) with lines starting "." doubled, and the final "."."""
    payload = raw.replace(b"\r\n.", b"\r\n..") if b"\r\n." in raw else raw
    if payload.startswith(b"."):
        payload = b"." + payload
    if not payload.endswith(b"\r\n"):
        payload += b"\r\n"
    return payload + b".\r\n"


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.strip()
