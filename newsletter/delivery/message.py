"""Build the MIME message of an issue once, then personalise it per recipient by byte substitution.

Why not an `EmailMessage` per recipient: re-encoding the whole message per recipient is ~100x
slower than substituting a few values into prepared bytes (docs/delivery.md), and Python's
email policies fold a long `List-Unsubscribe` into `=?utf-8?q?…?=` encoded words that receivers
cannot parse. So the headers with URLs are written as raw bytes here, the rest (From, Reply-To,
Subject, Date) is encoded by `email.headerregistry`, and the bodies are quoted-printable encoded
once, with every unsubscribe placeholder on an encoded line of its own (soft line breaks around
it): substituting a URL of any length then still yields valid quoted-printable, and a soft line
break can never split the placeholder.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr, make_msgid
from typing import Protocol
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from newsletter.audience.addresses import ascii_email
from newsletter.audience.names import name_or_none
from newsletter.content.fields import GREETING_PLACEHOLDER, NAME_FIELD, FieldRef, Greeting
from newsletter.errors import HeaderInjection, NewsletterError, Problem
from newsletter.headers import first_unsafe
from newsletter.project import Project
from newsletter.render.personal import values_for
from newsletter.render.templates import PREFERENCES_PLACEHOLDER, UNSUBSCRIBE_PLACEHOLDER
from newsletter.tokens import preferences_url, signing_keys, unsubscribe_url

MAX_LINE = 998
DKIM_HEADERS = (
    b"from", b"to", b"subject", b"date", b"message-id", b"list-unsubscribe",
    b"list-unsubscribe-post", b"list-id", b"reply-to", b"mime-version", b"content-type",
)


class RenderedLike(Protocol):
    """What message building needs of `render.RenderedIssue`."""

    slug: str
    subject: str
    html: str
    text: str


@dataclass(frozen=True)
class Recipient:
    """One addressee of a personalised message."""

    email: str
    name: str | None = None
    subscriber_id: int = 0
    list_id: int = 0
    attributes: Mapping[str, object] | None = None  # for personal fields (`{{Kommune|…}}`)


def content_hash(subject: str, html: str, text: str) -> str:
    """What identifies an issue's content: a send resumes only with the same hash."""
    digest = hashlib.sha256()
    for part in (subject, html, text):
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def failure_reason(exc: Exception) -> str:
    """Why a message could not be built for one recipient, for the journal or the dry run."""
    if isinstance(exc, NewsletterError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def check_header_value(value: str, what: str, source: str = "") -> str:
    """Reject CR, LF and other control characters in a value destined for a header."""
    bad = first_unsafe(value)
    if bad is not None:
        raise HeaderInjection(problems=[Problem(
            source or "message", None, None, what,
            f"contains a line break or control character ({bad!r}); refusing to put it into a mail header",
        )])
    return value


def check_address(email: str, what: str, source: str = "") -> str:
    check_header_value(email, what, source)
    if not email or any(c in email for c in ' <>",;()[]\\') or email.count("@") != 1:
        raise HeaderInjection(problems=[Problem(source or "message", None, None, what,
                                                f"`{email}` is not a plain e-mail address")])
    return email


def format_address(email: str, name: str | None) -> bytes:
    """`Name <addr>` for a To header (the value after "To: "): RFC 2047 encoded name, quoted
    where needed, fast.

    Whatever the database holds, the name goes through the one name rule
    (`audience.names.name_or_none`): a name stored before the rule that it refuses is left out,
    so a name never fails a recipient — the bare address always goes."""
    if first_unsafe(email) is not None:
        check_address(email, "email", "subscriber data")
    # An IDN domain goes in as punycode (an encoded word is not allowed inside an address);
    # a non-ASCII local part cannot go in at all without SMTPUTF8: `InvalidEmail`.
    email = ascii_email(email)
    name = name_or_none(name)
    if not name:
        return email.encode("ascii", "strict")
    value = formataddr((name, email), "utf-8").encode("ascii")
    # Fits on the "To: " line (so its encoded word is within RFC 2047's 75): as is; else folded.
    return value if len(value) <= 78 - len(b"To: ") else _fold_address(email, name)


def _fold_address(email: str, name: str) -> bytes:
    """A long name as encoded words of ≤ 75 characters, one a line, then the address.

    Not the email package's folder: it drops the quotes of a long quoted name (`"a, b"` went out
    as `a, b`: two addresses) and may start the value with a bare line feed. Encoded words need
    no quoting. The folding whitespace between two of them is not part of the name (RFC 2047
    6.2), so a piece ends after a space of the name, which it keeps inside."""
    pieces, piece = [], ""
    for word in re.findall(r"[^ ]+ ?", name):
        if piece and len((piece + word).encode("utf-8")) > 45:  # 60 base64 + 12 = 72 characters
            pieces.append(piece)
            piece = ""
        for char in word:  # a word longer than a piece is cut (the cut adds nothing)
            if len((piece + char).encode("utf-8")) > 45:
                pieces.append(piece)
                piece = ""
            piece += char
    pieces.append(piece)
    encoded = [b"=?utf-8?b?" + base64.b64encode(p.encode("utf-8")) + b"?=" for p in pieces]
    return b"\r\n ".join(encoded) + b"\r\n <" + email.encode("ascii") + b">"


def _qp(data: bytes) -> bytes:
    """Quoted-printable with CRLF line ends (binascii keeps LF when the input has no CRLF).

    A "." starting an encoded line becomes "=2E": no line needs SMTP dot-stuffing, and no
    line can be a lone "." ending the DATA early, whatever the substituted values are.
    """
    out = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    out = out.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if out.startswith(b"."):
        out = b"=2E" + out[1:]
    return out.replace(b"\r\n.", b"\r\n=2E")


def _crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")


# Every per-recipient value in a body: the unsubscribe URL, a personal field, the greeting.
_HOLE = re.compile("|".join([re.escape(UNSUBSCRIBE_PLACEHOLDER), re.escape(PREFERENCES_PLACEHOLDER),
                              r"%%F\d+%%", re.escape(GREETING_PLACEHOLDER)]))


def _encode_body(text: str) -> tuple[list[bytes], list[str]]:
    """QP-encode `text` around its holes: ([piece, piece, …], [hole, …]), a hole between each two
    pieces (the placeholder's text).

    Each piece ends in a line break (hard, or a soft one added here) and the following piece starts
    on a new line, so each per-recipient value (also QP-encoded, then ended by a soft break) sits on
    encoded lines of its own.
    """
    text = _crlf(text)
    holes = [m.group(0) for m in _HOLE.finditer(text)]
    pieces = _HOLE.split(text)
    encoded = []
    for i, piece in enumerate(pieces):
        chunk = _qp(piece.encode("utf-8"))
        last = i == len(pieces) - 1
        if chunk and not chunk.endswith(b"\r\n"):
            chunk += b"\r\n" if last else b"=\r\n"
        encoded.append(chunk)
    return encoded, holes


# What a test send (no subscriber) links to: `/p/test` shows a page and changes nothing.
TEST_PREFERENCES_TOKEN = "test"

# Slots of the prepared byte template; personal field n has FIELDS + 2n (text) and + 2n + 1 (HTML).
(TO, MESSAGE_ID, HEADER_URL, TEXT_URL, HTML_URL, GREETING_TEXT, GREETING_HTML,
 PREFS_TEXT, PREFS_HTML) = range(9)
FIELDS = 9


def _slot(hole: str, in_html: bool) -> int:
    if hole == UNSUBSCRIBE_PLACEHOLDER:
        return HTML_URL if in_html else TEXT_URL
    if hole == GREETING_PLACEHOLDER:
        return GREETING_HTML if in_html else GREETING_TEXT
    if hole == PREFERENCES_PLACEHOLDER:
        return PREFS_HTML if in_html else PREFS_TEXT
    return FIELDS + 2 * int(hole[3:-2]) + in_html  # %%F<n>%%


def _body_value(text: str, in_html: bool) -> bytes:
    """A reader's value for a body hole: escaped for HTML there, QP-encoded, ended by a soft
    line break (so the next piece goes on as if the value had always been there)."""
    raw = html.escape(text, quote=True) if in_html else text
    return _qp(raw.encode("utf-8")) + b"=\r\n"


@dataclass(frozen=True)
class PreparedMessage:
    """An issue's message as bytes with holes for per-recipient values."""

    parts: tuple[bytes | int, ...]
    sender: str  # envelope sender (MAIL FROM)
    domain: str  # sender's domain: Message-ID and DKIM d=
    base_url: str  # `newsletter.base_url`: the unsubscribe links are `unsubscribe_url(base_url, …)`
    message_id_key: bytes
    dkim: DkimSigner | None = None
    fields: tuple[FieldRef, ...] = ()  # the personal fields behind the slots FIELDS + 2n (+1)
    greeting: Greeting | None = None
    date: datetime | None = None  # the `Date` header's time (topic variants reuse it)

    @property
    def needs_attributes(self) -> bool:
        """Whether a personal field reads a subscriber attribute (not only the name)."""
        refs = [*self.fields, *(self.greeting.fields() if self.greeting else [])]
        return any(ref.name != NAME_FIELD for ref in refs)

    def personalise(self, recipient: Recipient, token: str, message_id: str | None = None,
                    preferences: str = TEST_PREFERENCES_TOKEN) -> bytes:
        """The complete message for one recipient, ready for `SMTP.sendmail` or a Maildir.
        `token`: their unsubscribe token; `preferences`: their preference-centre token (a test
        send's `/p/test` shows a page that changes nothing)."""
        url = unsubscribe_url(self.base_url, token)
        values: list[bytes] = [b""] * (FIELDS + 2 * len(self.fields))
        prefs = preferences_url(self.base_url, preferences)
        values[PREFS_TEXT], values[PREFS_HTML] = _body_value(prefs, False), _body_value(prefs, True)
        if self.fields or self.greeting is not None:
            texts, line = values_for(self.fields, self.greeting, recipient.name, recipient.attributes or {})
            values[GREETING_TEXT], values[GREETING_HTML] = _body_value(line, False), _body_value(line, True)
            for n, text in enumerate(texts):
                values[FIELDS + 2 * n] = _body_value(text, False)
                values[FIELDS + 2 * n + 1] = _body_value(text, True)
        values[TO] = format_address(recipient.email, recipient.name)
        values[MESSAGE_ID] = (message_id or self.message_id(recipient)).encode("ascii")
        values[HEADER_URL] = url.encode("ascii")
        values[TEXT_URL] = _qp(values[HEADER_URL]) + b"=\r\n"
        escaped = html.escape(url, quote=True)
        values[HTML_URL] = values[TEXT_URL] if escaped == url else _qp(escaped.encode("ascii")) + b"=\r\n"
        raw = b"".join(p if isinstance(p, bytes) else values[p] for p in self.parts)
        if self.dkim is not None:
            raw = self.dkim.sign(raw)
        return raw

    def message_id(self, recipient: Recipient) -> str:
        """Unique per recipient; the same on a resumed send of the same content (so clients can
        drop a duplicate), new when the content changed (`--force`), so the new version is not
        dropped as a duplicate of the old one."""
        if not recipient.subscriber_id:
            return f"<{uuid.uuid4().hex}@{self.domain}>"
        digest = hashlib.blake2b(f"{recipient.subscriber_id}/{recipient.list_id}".encode(),
                                 key=self.message_id_key, digest_size=12).hexdigest()
        return f"<{digest}.nl@{self.domain}>"


class DkimSigner:
    """DKIM-signs the exact bytes that will be sent (dkimpy), covering the list headers too."""

    def __init__(self, key: bytes, selector: str, domain: str) -> None:
        import dkim

        self._dkim = dkim
        self.key, self.selector, self.domain = key, selector.encode(), domain.encode()

    def sign(self, raw: bytes) -> bytes:
        signature = self._dkim.sign(
            raw, self.selector, self.domain, self.key, include_headers=list(DKIM_HEADERS),
            canonicalize=(b"relaxed", b"relaxed"), linesep=b"\r\n",
        )
        return signature + raw


def dkim_signer(project: Project, domain: str) -> DkimSigner | None:
    """The project's DKIM signer, if `secret.dkim_key_file` and `secret.dkim_selector` are set."""
    settings = project.settings.secret
    if not settings.dkim_key_file and not settings.dkim_selector:
        return None
    if not (settings.dkim_key_file and settings.dkim_selector):
        raise NewsletterError("DKIM needs both NEWSLETTER_SECRET__DKIM_KEY_FILE and "
                              "NEWSLETTER_SECRET__DKIM_SELECTOR")
    path = project.root / settings.dkim_key_file
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise NewsletterError(f"cannot read the DKIM key {path}: {exc.strerror}") from None
    check_header_value(settings.dkim_selector, "secret.dkim_selector", "environment")
    return DkimSigner(key, settings.dkim_selector, domain)


def list_id_value(project: Project, list_name: str, list_title: str | None) -> bytes:
    """`List-Id` (RFC 2919): `"Title" <name.host>`, or the configured `newsletter.list_id`."""
    settings = project.settings.newsletter
    if settings.list_id:
        ident = settings.list_id.strip("<>")
    else:
        host = urlsplit(settings.base_url).hostname or "localhost"
        label = "".join(c if c.isalnum() or c == "-" else "-" for c in list_name.lower()).strip("-")
        ident = f"{label or 'list'}.{host}"
    check_header_value(ident, "newsletter.list_id", "newsletter.toml")
    phrase = list_title or settings.title
    if phrase:
        check_header_value(phrase, "list title", "newsletter.toml")
        phrase_bytes = formataddr((phrase, "x@x"), "utf-8").rsplit(" <", 1)[0].encode("ascii")
        return phrase_bytes + b" <" + ident.encode("ascii") + b">"
    return b"<" + ident.encode("ascii") + b">"


def prepare(
    project: Project,
    rendered: RenderedLike,
    *,
    list_name: str | None = None,
    list_title: str | None = None,
    subject_prefix: str = "",
    date: datetime | None = None,
    sign: bool = True,
    identity: str | None = None,
) -> PreparedMessage:
    """Encode the issue's message once; `personalise` fills in each recipient. `identity`: the
    content hash the Message-IDs derive from (default: this message's own); a topic variant
    passes the full issue's, so a recipient's Message-ID is the send's, whichever variant."""
    settings = project.settings.newsletter
    subject = subject_prefix + rendered.subject
    check_header_value(subject, "subject", f"issue {rendered.slug}")
    check_header_value(settings.base_url, "newsletter.base_url", "newsletter.toml")
    date = date or datetime.now(_zone(settings.timezone))
    head, sender, domain = _head(project, subject, date)
    from_block, rest_block = _split_headers(head.as_bytes(policy=SMTP))

    base = settings.base_url.rstrip("/")
    list_headers = b""
    if list_name is not None:
        list_headers += b"List-Id: " + list_id_value(project, list_name, list_title) + b"\r\n"
    list_headers += b"List-Archive: <" + f"{base}/archive/".encode("ascii") + b">\r\n"

    boundary = b"=_nl_" + secrets.token_hex(12).encode()
    text_pieces = _encode_body(rendered.text)
    html_pieces = _encode_body(rendered.html)

    parts: list[bytes | int] = [from_block + b"To: ", TO, b"\r\n" + rest_block + b"Message-ID: ",
                                MESSAGE_ID, b"\r\nMIME-Version: 1.0\r\n" + list_headers
                                + b"List-Unsubscribe: <", HEADER_URL,
                                b">\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
                                b'Content-Type: multipart/alternative; boundary="' + boundary + b'"\r\n'
                                b"\r\n"
                                b"This is a multi-part message in MIME format.\r\n"
                                b"\r\n--" + boundary + b"\r\n"
                                b'Content-Type: text/plain; charset="utf-8"\r\n'
                                b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"]
    _append_pieces(parts, text_pieces, in_html=False)
    parts.append(b"\r\n--" + boundary + b"\r\n"
                 b'Content-Type: text/html; charset="utf-8"\r\n'
                 b"Content-Transfer-Encoding: quoted-printable\r\n\r\n")
    _append_pieces(parts, html_pieces, in_html=True)
    parts.append(b"\r\n--" + boundary + b"--\r\n")
    merged = _merge(parts)
    for part in merged:
        if isinstance(part, bytes):
            _check_lines(part)
    # Keyed with the project's secret: nobody outside can predict or forge the IDs.
    secret = signing_keys(project)[0].encode("utf-8")
    content = identity or content_hash(rendered.subject, rendered.html, rendered.text)
    key = hashlib.blake2b(f"{rendered.slug}/{list_name}/{content}".encode(),
                          key=hashlib.sha256(secret).digest(), digest_size=16).digest()
    return PreparedMessage(
        parts=tuple(merged), sender=sender, domain=domain, base_url=base,
        message_id_key=key, dkim=dkim_signer(project, domain) if sign else None,
        fields=tuple(getattr(rendered, "fields", ())), greeting=getattr(rendered, "greeting", None),
        date=date,
    )


def _head(project: Project, subject: str, date: datetime | None) -> tuple[EmailMessage, str, str]:
    """From, Reply-To, Subject and Date, checked; (headers, envelope sender, sender's domain)."""
    settings = project.settings.newsletter
    check_header_value(subject, "subject")
    check_header_value(settings.from_, "newsletter.from", "newsletter.toml")
    if settings.reply_to:
        check_header_value(settings.reply_to, "newsletter.reply_to", "newsletter.toml")
    head = EmailMessage(policy=SMTP)
    head["From"] = settings.from_
    from_header = head["From"]
    if len(from_header.addresses) != 1 or not from_header.addresses[0].domain or from_header.defects:
        raise NewsletterError(problems=[Problem("newsletter.toml", None, None, "newsletter.from",
                                                f"`{settings.from_}` is not one valid address")])
    if settings.reply_to:
        head["Reply-To"] = settings.reply_to
        if head["Reply-To"].defects or not head["Reply-To"].addresses:
            raise NewsletterError(problems=[Problem("newsletter.toml", None, None, "newsletter.reply_to",
                                                    f"`{settings.reply_to}` is not a valid address")])
    head["Subject"] = subject
    head["Date"] = format_datetime(date or datetime.now(_zone(settings.timezone)))
    return head, from_header.addresses[0].addr_spec, from_header.addresses[0].domain


def confirmation_message(project: Project, to_email: str, subject: str, text: str,
                         html: str) -> EmailMessage:
    """The double opt-in mail to `to_email` (normalised address) from its rendered parts, for
    `transport.send_message_now`.

    From, Reply-To and Date as on the issues; a Message-ID on the sender's domain;
    `Auto-Submitted: auto-generated` (RFC 3834: no auto-replies to it). Every header value is
    checked for line breaks (`HeaderInjection`). The address alone goes into `To:` — a name
    typed into a form never goes into a header — with an IDN domain as punycode (the email
    package would put an encoded word into the domain)."""
    check_address(to_email, "email", "sign-up form")
    head, _sender, domain = _head(project, subject, None)
    message = EmailMessage()
    for name in ("From", "Reply-To", "Subject", "Date"):
        if name in head:
            message[name] = head[name]
    message["To"] = ascii_email(to_email)
    message["Message-ID"] = make_msgid(domain=domain)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text, cte="quoted-printable")
    message.add_alternative(html, subtype="html", cte="quoted-printable")
    return message


def _zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def _split_headers(block: bytes) -> tuple[bytes, bytes]:
    """(From header lines, the other header lines) of a header-only serialisation."""
    # Python folds some long headers as "Subject:\r\n Text…", which parses back with a leading
    # space; keep the value on the header's own line (still far below 998 octets).
    block = re.sub(rb"(?m)^([A-Za-z-]+):\r\n[ \t]+", rb"\1: ", block)
    block = block.rstrip(b"\r\n") + b"\r\n"
    lines = block.split(b"\r\n")
    out_from, out_rest, current = [], [], None
    for line in lines[:-1]:
        if line[:1] in (b" ", b"\t") and current is not None:
            current.append(line)
            continue
        current = out_from if line.lower().startswith(b"from:") else out_rest
        current.append(line)
    return b"".join(x + b"\r\n" for x in out_from), b"".join(x + b"\r\n" for x in out_rest)


def _append_pieces(parts: list[bytes | int], encoded: tuple[list[bytes], list[str]], *,
                   in_html: bool) -> None:
    pieces, holes = encoded
    for i, piece in enumerate(pieces):
        if i:
            parts.append(_slot(holes[i - 1], in_html))
        parts.append(piece)
    if parts and isinstance(parts[-1], bytes) and parts[-1].endswith(b"\r\n"):
        parts[-1] = parts[-1][:-2]  # the boundary delimiter brings its own CRLF


def _merge(parts: list[bytes | int]) -> list[bytes | int]:
    merged: list[bytes | int] = []
    for part in parts:
        if isinstance(part, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += part
        else:
            merged.append(part)
    return merged


def _check_lines(data: bytes) -> None:
    for line in data.split(b"\r\n"):
        if len(line) > MAX_LINE:
            raise NewsletterError(f"a message line would be {len(line)} octets long (limit {MAX_LINE})")


def mime_message(raw: bytes) -> EmailMessage:
    """Parse bytes produced here back into an `EmailMessage` (for single sends and tests)."""
    from email import message_from_bytes
    from email.policy import default

    message = message_from_bytes(raw, policy=default)
    assert isinstance(message, EmailMessage)
    return message
