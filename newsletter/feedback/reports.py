"""Read one bounce / complaint / auto-reply message and say what it reports.

`read_report(raw)` never raises on bad input; it returns a `Report` whose verdict is one of

* ``complaint``  — an ARF feedback report (RFC 5965), e.g. from a mailbox provider's feedback loop;
* ``bounce``     — a delivery failure: an RFC 3464 DSN with ``Action: failed`` or an MTA's own
  format recognised by flufl.bounce; one `Feedback` (hard or soft) per failed recipient;
* ``delayed``    — a DSN that only says delivery is delayed (``Action: delayed``): nothing counts;
* ``auto_reply`` — an automatic message that needs no action: out-of-office, challenge-response,
  a DSN that only reports delivered/relayed/expanded, an ARF ``not-spam`` report;
* ``unrecognised`` — everything else (a human reply, garbage); the reason is in `Report.detail`.

The order matters: a DSN or ARF report also carries ``Auto-Submitted``, so those are checked
before the auto-reply headers.

Why these libraries (docs/feedback.md):

* the standard library `email` package parses ``message/delivery-status`` into its header
  blocks (RFC 3464) and ``message/feedback-report`` / ``message/rfc822`` into header sets, so the
  standard formats need no parsing of our own; ``message/global-delivery-status`` (RFC 6533, which
  Postfix writes for SMTPUTF8 mail) is split into blocks and each block read by the same parser;
* flufl.bounce (Mailman's bounce detector, maintained) knows the non-standard formats of Exim,
  qmail, Exchange, Yahoo, AOL, … — far more than we could keep up with by hand.

Our own text matching is limited to what no library offers: an enhanced status code
(``\\d.\\d{1,3}.\\d{1,3}``) in a non-DSN bounce's text, the original ``Message-ID`` /
``Return-Path`` lines that such bounces quote inline, and auto-reply subjects.
"""

from __future__ import annotations

import email
import email.message
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.utils import getaddresses, parseaddr, parsedate_to_datetime
from typing import Literal

import flufl.bounce

from newsletter.delivery.verp import tag_in_local

Kind = Literal["hard", "soft", "complaint"]
Verdict = Literal["bounce", "complaint", "auto_reply", "delayed", "unrecognised"]

DIAGNOSTIC_LIMIT = 500
DETAIL_LIMIT = 300


@dataclass(frozen=True)
class Feedback:
    """One finding about one recipient."""

    kind: str  # "hard" | "soft" | "complaint"
    recipient: str | None  # the address the report names (original recipient preferred)
    status: str | None  # enhanced status code, e.g. "5.1.1"
    diagnostic: str | None  # one line, at most 500 characters
    tag: str | None  # the VERP tag found, NOT yet verified (verp.read_tag does that)
    message_id: str | None  # Message-ID of the original message, if the report carries it


@dataclass(frozen=True)
class Report:
    verdict: str  # "bounce" | "complaint" | "auto_reply" | "delayed" | "unrecognised"
    findings: tuple[Feedback, ...]
    reported_at: datetime | None  # the report's Date header, aware UTC
    detail: str  # one line for the operator


# --- the hard/soft policy ---------------------------------------------------------------------

# (?<![\d.]) / (?![\d.]) keep IP addresses and version numbers from matching.
STATUS_RE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
USER_UNKNOWN_RE = re.compile(
    r"user unknown|unknown user|no such user|unknown recipient|no such recipient|recipient not found"
    r"|does not exist|doesn't exist|unbekannt|existiert nicht",
    re.IGNORECASE,
)
MAILBOX_FULL_RE = re.compile(r"quota|mailbox (is )?full|over ?quota|postfach (ist )?voll|speicher.*voll",
                             re.IGNORECASE)


def effective_status(status: str | None, diagnostic: str | None = None) -> str | None:
    """The enhanced status code to judge by: `status`, or a more specific one from the diagnostic
    when `status` is missing or only says x.0.0."""
    found = STATUS_RE.search(status or "")
    code = ".".join(found.groups()) if found else None
    if code is None or code.endswith(".0.0"):
        better = STATUS_RE.search(diagnostic or "")
        if better and not ".".join(better.groups()).endswith(".0.0"):
            return ".".join(better.groups())
        if code is None and better:
            return ".".join(better.groups())
    return code


def classify(status: str | None, diagnostic: str | None = None, *, permanent: bool = True) -> str:
    """"hard" or "soft" for one failed recipient — the one place the policy lives.

    hard: 5.1.x except 5.1.7/5.1.8 (those are about OUR sender address), 5.2.1 (mailbox
    disabled), 5.4.4 (no such domain); 5.0.0 (or no code from a permanent failure) whose text
    says the user does not exist.
    soft: every 4.x.x, 5.1.7/5.1.8, 5.2.x other than 5.2.1 (5.2.2 mailbox full), 5.3.x, 5.4.x
    other than 5.4.4, 5.5.x–5.7.x (protocol, content, policy/spam: not the address's fault),
    5.0.0 without such text. Without any code: `permanent` decides, except that a
    mailbox-full text is soft.
    """
    code = effective_status(status, diagnostic)
    text = diagnostic or ""
    if code is None:
        if not permanent or MAILBOX_FULL_RE.search(text):
            return "soft"
        return "hard"
    klass, subject, detail = (int(x) for x in code.split("."))
    if klass != 5:
        return "soft"
    if subject == 1:
        return "soft" if detail in (7, 8) else "hard"
    if (subject, detail) in ((2, 1), (4, 4)):
        return "hard"
    if (subject, detail) == (0, 0):
        return "hard" if USER_UNKNOWN_RE.search(text) else "soft"
    return "soft"


# --- small helpers ----------------------------------------------------------------------------


def _one_line(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    line = " ".join(str(text).split())
    line = "".join(ch for ch in line if ch.isprintable())
    if len(line) > limit:
        line = line[: limit - 1] + "…"
    return line or None


def _header(msg: email.message.Message, name: str) -> str | None:
    value = msg.get(name)
    if value is None:
        return None
    try:
        return str(make_header(decode_header(str(value))))
    except Exception:  # undecodable encoded-words: keep the raw text
        return str(value)


def _headers(msg: email.message.Message, name: str) -> list[str]:
    return [str(v) for v in msg.get_all(name, [])]


def _address(field: str | None) -> str | None:
    """The address of a DSN/ARF field such as ``rfc822; <a@b.de>``."""
    if not field:
        return None
    value = field.split(";", 1)[1] if ";" in field else field
    value = " ".join(value.split()).strip().strip("<>").strip()
    return value or None


def _date(msg: email.message.Message) -> datetime | None:
    value = msg.get("Date")
    if not value:
        return None
    try:
        when = parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # RFC 5322 "-0000": zone unknown, treat as UTC
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def _text_parts(msg: email.message.Message) -> str:
    """The decoded text of all text/plain parts outside attached original messages."""
    chunks: list[str] = []

    def walk(part: email.message.Message) -> None:
        ctype = part.get_content_type()
        if part.is_multipart():
            if ctype in ("message/rfc822", "message/global"):
                return
            for sub in part.get_payload():
                if isinstance(sub, email.message.Message):
                    walk(sub)
            return
        if part.get_content_maintype() == "text" and ctype != "text/rfc822-headers":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                charset = part.get_content_charset() or "utf-8"
                try:
                    chunks.append(payload.decode(charset, errors="replace"))
                except LookupError:
                    chunks.append(payload.decode("utf-8", errors="replace"))

    walk(msg)
    return "\n".join(chunks)


def _original_headers(msg: email.message.Message) -> email.message.Message | None:
    """The header set of the original message a report encloses (whole message or headers)."""
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global", "message/global-headers"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], email.message.Message):
                return payload[0]
        if ctype == "text/rfc822-headers":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                return email.message_from_bytes(payload.lstrip(b"\r\n"))
    return None


_INLINE_MESSAGE_ID = re.compile(r"^\s*Message-ID:\s*(<[^>\s]+>)", re.IGNORECASE | re.MULTILINE)
_INLINE_RETURN_PATH = re.compile(r"^\s*Return-Path:\s*<?([^>\s]+)>?", re.IGNORECASE | re.MULTILINE)


def _message_id(original: email.message.Message | None, text: str) -> str | None:
    if original is not None:
        found = _header(original, "Message-ID")
        if found:
            return found.strip()
    # Non-MIME bounces (Exim, qmail, …) quote the original headers inline in their text.
    match = _INLINE_MESSAGE_ID.search(text)
    return match.group(1) if match else None


def _tag(msg: email.message.Message, original: email.message.Message | None, extra: list[str],
         text: str, bounce_local: str) -> str | None:
    candidates: list[str] = []
    for name in ("To", "Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To"):
        candidates += [addr for _, addr in getaddresses(_headers(msg, name))]
    if original is not None:
        candidates += [parseaddr(v)[1] for v in _headers(original, "Return-Path")]
    candidates += [a for a in (_address(x) for x in extra) if a]
    candidates += _INLINE_RETURN_PATH.findall(text)
    for address in candidates:
        local = address.rpartition("@")[0]
        if local:
            tag = tag_in_local(local, bounce_local)
            if tag:
                return tag
    return None


def _sender_host(msg: email.message.Message) -> str:
    sender = parseaddr(_header(msg, "From") or "")[1]
    return sender.rpartition("@")[2] or sender or "unknown sender"


# --- the three kinds of report ----------------------------------------------------------------


def _arf(msg: email.message.Message, bounce_local: str, text: str) -> Report | None:
    is_report = (msg.get_content_type() == "multipart/report"
                 and str(msg.get_param("report-type", "")).lower() == "feedback-report")
    fields: email.message.Message | None = None
    for part in msg.walk():
        if part.get_content_type() == "message/feedback-report":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], email.message.Message):
                fields = payload[0]
            elif isinstance(payload, str):
                fields = email.message_from_string(payload.lstrip("\r\n"))
            break
    if fields is None:
        if not is_report:
            return None
        fields = email.message.Message()
    original = _original_headers(msg)
    feedback_type = (_header(fields, "Feedback-Type") or "").strip().lower() or "unknown"
    recipient = _address(_header(fields, "Original-Rcpt-To"))
    if recipient is None and original is not None:
        to = getaddresses(_headers(original, "To"))
        recipient = to[0][1] if len(to) == 1 and to[0][1] else None
    agent = _header(fields, "User-Agent")
    host = _address(_header(fields, "Reporting-MTA")) or _sender_host(msg)
    diagnostic = _one_line(f"Feedback-Type: {feedback_type}" + (f"; User-Agent: {agent}" if agent else ""),
                           DIAGNOSTIC_LIMIT)
    tag = _tag(msg, original, [_header(fields, "Original-Mail-From") or ""], text, bounce_local)
    message_id = _message_id(original, "")
    if feedback_type == "not-spam":
        return Report("auto_reply", (), _date(msg),
                      _one_line(f"ARF not-spam report from {host}: nothing to count", DETAIL_LIMIT) or "")
    finding = Feedback("complaint", recipient, None, diagnostic, tag, message_id)
    detail = f"ARF {feedback_type} report from {host} for {recipient or 'an unnamed recipient'}"
    return Report("complaint", (finding,), _date(msg), _one_line(detail, DETAIL_LIMIT) or "")


def _status_blocks(part: email.message.Message) -> list[email.message.Message]:
    payload = part.get_payload()
    if (part.get_content_type() == "message/delivery-status" and isinstance(payload, list)
            and all(isinstance(b, email.message.Message) for b in payload)):
        return list(payload)
    # message/global-delivery-status (RFC 6533): the parser treats it as an enclosed message, so
    # turn it back into text and read each blank-line separated block as a header set.
    if isinstance(payload, list):
        text = "".join(b.as_bytes().decode("utf-8", errors="replace")
                       for b in payload if isinstance(b, email.message.Message))
    else:
        raw = part.get_payload(decode=True)
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(payload)
    blocks = re.split(r"\r?\n[ \t]*\r?\n", text.strip())
    return [email.message_from_string(block) for block in blocks if block.strip()]


def _dsn(msg: email.message.Message, bounce_local: str, text: str) -> Report | None:
    parts = [p for p in msg.walk()
             if p.get_content_type() in ("message/delivery-status", "message/global-delivery-status")]
    if not parts:
        return None
    blocks = [b for p in parts for b in _status_blocks(p)]
    recipient_blocks = [b for b in blocks if b.get("Action") or b.get("Final-Recipient")]
    if not recipient_blocks:
        return None  # malformed: let flufl.bounce have a go at the text
    per_message = [b for b in blocks if b.get("Reporting-MTA")]
    host = (_address(_header(per_message[0], "Reporting-MTA")) if per_message else None) or _sender_host(msg)
    original = _original_headers(msg)
    extra = [_header(b, "X-Postfix-Sender") or "" for b in per_message]
    tag = _tag(msg, original, extra, text, bounce_local)
    message_id = _message_id(original, text)

    findings: list[Feedback] = []
    delayed: list[str] = []
    other: list[str] = []
    for block in recipient_blocks:
        action = ((_header(block, "Action") or "").strip().lower().split() or [""])[0]
        recipient = (_address(_header(block, "Original-Recipient"))
                     or _address(_header(block, "Final-Recipient")))
        diagnostic = _one_line(_header(block, "Diagnostic-Code"), DIAGNOSTIC_LIMIT)
        status = effective_status(_header(block, "Status"), diagnostic)
        if action == "failed":
            kind = classify(status, diagnostic, permanent=not (status or "").startswith("4"))
            findings.append(Feedback(kind, recipient, status, diagnostic, tag, message_id))
        elif action == "delayed":
            delayed.append(f"{status or 'no status'} for {recipient or 'unknown recipient'}")
        else:  # relayed, delivered, expanded: nothing went wrong
            other.append(f"{action or 'no action'} for {recipient or 'unknown recipient'}")
    when = _date(msg)
    if findings:
        said = ", ".join(f"{f.status or 'no status'} ({f.kind}) for {f.recipient or 'unknown recipient'}"
                         for f in findings)
        detail = _one_line(f"DSN from {host}: {said}", DETAIL_LIMIT) or ""
        return Report("bounce", tuple(findings), when, detail)
    if delayed:
        return Report("delayed", (), when,
                      _one_line(f"DSN from {host}: delayed, {', '.join(delayed)}", DETAIL_LIMIT) or "")
    return Report("auto_reply", (), when,
                  _one_line(f"DSN from {host}: {', '.join(other)}; nothing to count", DETAIL_LIMIT) or "")


def _context(text: str, address: str) -> str:
    """The lines of a bounce's text about one address: its line and the few that follow."""
    lines = text.splitlines()
    lowered = address.lower()
    for index, line in enumerate(lines):
        if lowered in line.lower():
            chunk = [line]
            for follow in lines[index + 1: index + 5]:
                if not follow.strip() and len(chunk) > 1:
                    break
                chunk.append(follow)
            return "\n".join(chunk)
    return ""


def _flufl(msg: email.message.Message, bounce_local: str, text: str) -> tuple[Report | None, str | None]:
    try:
        temporary, permanent = flufl.bounce.all_failures(msg)
    except Exception as exc:  # a detector choking on odd input must not stop the run
        return None, f"flufl.bounce failed: {type(exc).__name__}"
    addresses = sorted({a.decode("utf-8", errors="replace") for a in (*temporary, *permanent)})
    if not addresses:
        return None, None
    original = _original_headers(msg)
    tag = _tag(msg, original, [], text, bounce_local)
    message_id = _message_id(original, text)
    findings = []
    for address in addresses:
        context = _context(text, address)
        if not context and len(addresses) == 1:
            context = text
        diagnostic = _one_line(context, DIAGNOSTIC_LIMIT)
        status = effective_status(None, context)
        is_permanent = address.encode("utf-8") in permanent
        kind = classify(status, diagnostic, permanent=is_permanent)
        findings.append(Feedback(kind, address, status, diagnostic, tag, message_id))
    said = ", ".join(f"{f.status or 'no status'} ({f.kind}) for {f.recipient}" for f in findings)
    detail = f"bounce from {_sender_host(msg)} (non-DSN format): {said}"
    return Report("bounce", tuple(findings), _date(msg), _one_line(detail, DETAIL_LIMIT) or ""), None


_OUT_OF_OFFICE = re.compile(
    r"out of (the )?office|automatic reply|auto(matic)?[ -]?repl(y|ies)|auto[ -]?response|autoresponder"
    r"|automatische antwort|abwesenheit|abwesend|nicht im b[üu]ro|im urlaub|vacation|urlaubsnotiz"
    r"|r[ée]ponse automatique|^\s*auto:",
    re.IGNORECASE,
)
_CHALLENGE = re.compile(
    r"please confirm your (e-?mail|message)|confirm your e-?mail|verify your e-?mail|sender verification"
    r"|bitte best[äa]tigen sie ihre (e-?mail|nachricht)|absender-?(verifizierung|best[äa]tigung)"
    r"|challenge[- ]response|spam ?(protection|schutz)",
    re.IGNORECASE,
)
_CHALLENGE_HEADERS = ("X-Challenge", "X-Challenge-Response", "X-Boxbe-Challenge", "X-Spamarrest-Verify")


def _auto_reply_reason(msg: email.message.Message) -> str | None:
    subject = _header(msg, "Subject") or ""
    auto_submitted = (_header(msg, "Auto-Submitted") or "").split(";")[0].strip().lower()
    if auto_submitted and auto_submitted != "no":
        return f"Auto-Submitted: {auto_submitted}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Auto-Reply"):
        if msg.get(name) is not None:
            return f"{name} header"
    if (_header(msg, "Precedence") or "").strip().lower() == "auto_reply":
        return "Precedence: auto_reply"
    if msg.get("X-Auto-Response-Suppress") is not None and _OUT_OF_OFFICE.search(subject):
        return "X-Auto-Response-Suppress with an out-of-office subject"
    if any(msg.get(name) is not None for name in _CHALLENGE_HEADERS) or _CHALLENGE.search(subject):
        return "challenge-response"
    if (_header(msg, "X-Delivery-Agent") or "").upper().startswith("TMDA"):
        return "challenge-response (TMDA)"
    if _OUT_OF_OFFICE.search(subject):
        return "out-of-office subject"
    return None


# --- the entry point --------------------------------------------------------------------------


def read_report(raw: bytes, bounce_local: str = "bounces") -> Report:
    """What the message `raw` reports. `bounce_local` is the local part of our bounce address
    (``bounces`` for ``bounces@example.org``): its ``+tag`` in the report's addresses is the
    VERP tag. Never raises on malformed input."""
    try:
        return _read(raw, bounce_local)
    except Exception as exc:  # never raise on malformed input: say why instead
        reason = _one_line(f"unreadable message: {type(exc).__name__}: {exc}", DETAIL_LIMIT)
        return Report("unrecognised", (), None, reason or "unreadable message")


def _read(raw: bytes, bounce_local: str) -> Report:
    if not isinstance(raw, bytes | bytearray):
        return Report("unrecognised", (), None, f"not bytes but {type(raw).__name__}")
    if not raw.strip():
        return Report("unrecognised", (), None, "empty message")
    msg = email.message_from_bytes(bytes(raw))
    if not msg.keys():
        return Report("unrecognised", (), None, "not a mail message: no header lines")
    text = _text_parts(msg)
    for reader in (_arf, _dsn):
        report = reader(msg, bounce_local, text)
        if report is not None:
            return report
    report, trouble = _flufl(msg, bounce_local, text)
    if report is not None:
        return report
    when = _date(msg)
    subject = _one_line(_header(msg, "Subject"), 120) or "(no subject)"
    sender = _one_line(parseaddr(_header(msg, "From") or "")[1], 120) or "unknown sender"
    reason = _auto_reply_reason(msg)
    if reason:
        return Report("auto_reply", (), when,
                      _one_line(f"auto-reply ({reason}) from {sender}: {subject}", DETAIL_LIMIT) or "")
    why = f"not a bounce, complaint or auto-reply: from {sender}: {subject}"
    if trouble:
        why += f" ({trouble})"
    return Report("unrecognised", (), when, _one_line(why, DETAIL_LIMIT) or "")
