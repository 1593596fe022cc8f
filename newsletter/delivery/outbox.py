"""The local Maildir `outbox/` that the embedded default delivers into: reading it (for the
preview) and erasing the copies of one person's mails from it (GDPR Art. 17)."""

from __future__ import annotations

import email
import email.parser
import email.policy
import email.utils
import mailbox
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from newsletter.audience.addresses import address_key
from newsletter.errors import NewsletterError
from newsletter.project import Project

PAGE_SIZE = 200

@dataclass(frozen=True)
class OutboxEntry:
    key: str
    subject: str
    recipient: str
    sender: str
    date: datetime | None

    @property
    def url(self) -> str:
        return "/outbox/" + quote(self.key, safe="")


def open_outbox(project_outbox: Path) -> mailbox.Maildir | None:
    if not (project_outbox / "new").is_dir() and not (project_outbox / "cur").is_dir():
        return None
    return mailbox.Maildir(project_outbox, factory=None, create=False)


def _key_time(key: str) -> float:
    # Maildir keys start with the delivery time ("1760000000.M…"): sorting needs no file reads.
    head = key.split(".", 1)[0]
    try:
        return float(head)
    except ValueError:
        return 0.0


def list_outbox(outbox_dir: Path, limit: int = PAGE_SIZE) -> tuple[list[OutboxEntry], int]:
    """The newest `limit` messages of the outbox Maildir, newest first, and the total."""
    box = open_outbox(outbox_dir)
    if box is None:
        return [], 0
    keys = sorted(box.keys(), key=lambda k: (_key_time(k), k), reverse=True)
    entries = []
    for key in keys[:limit]:
        try:
            with box.get_file(key) as handle:
                msg = email.parser.BytesHeaderParser(policy=email.policy.default).parse(handle)
        except (KeyError, FileNotFoundError):
            continue  # moved or deleted while we listed
        entries.append(OutboxEntry(key, str(msg.get("Subject", "")), str(msg.get("To", "")),
                                   str(msg.get("From", "")), _date(msg.get("Date"))))
    return entries, len(keys)


def _date(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        return parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return None


def read_outbox_message(outbox_dir: Path, key: str) -> EmailMessage | None:
    box = open_outbox(outbox_dir)
    if box is None:
        return None
    try:
        data = box.get_bytes(key)
    except KeyError:
        return None
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def text_part(msg: EmailMessage, subtype: str) -> str | None:
    body = msg.get_body(preferencelist=(subtype,))
    if body is None:
        return None
    content = body.get_content()
    return content if isinstance(content, str) else content.decode("utf-8", "replace")


# --- erasure of local copies


def forget_local_copies(project: Project, address: str) -> list[Path]:
    """Delete the project's local copies of mails to `address` (GDPR erasure, with
    `Store.forget`): messages in the `outbox/` Maildir (sends and confirmation mails without an
    SMTP host) and dry-run `.eml` files under `outbox/dry-run/` and the older `dist/*/dry-run/`.
    Matched on the To/Cc headers, case-insensitively. The files deleted."""
    wanted = address_key(address)
    outbox = project.outbox_dir
    candidates: list[Path] = []
    for sub in ("new", "cur", "tmp"):
        folder = outbox / sub
        if folder.is_dir():
            candidates += [p for p in folder.iterdir() if p.is_file()]
    for root in (outbox / "dry-run", *project.dist_dir.glob("*/dry-run")):
        if root.is_dir():
            candidates += [p for p in root.rglob("*.eml") if p.is_file()]
    removed = []
    for path in sorted(candidates):
        if wanted in _recipients(path):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise NewsletterError(f"{path}: cannot delete this copy of a mail to {address.strip()}: "
                                      f"{exc.strerror}; delete it by hand") from None
            removed.append(path)
    return removed


def _recipients(path: Path) -> set[str]:
    """Addresses (as `address_key`) in the To and Cc headers of a stored message (headers only)."""
    head = bytearray()
    try:
        with path.open("rb") as handle:
            for line in handle:
                if line in (b"\r\n", b"\n"):
                    break
                head += line
    except OSError:
        return set()
    parsed = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(bytes(head))
    found = set()
    for name in ("to", "cc"):
        for value in parsed.get_all(name, []):
            for _display, addr in email.utils.getaddresses([str(value)]):
                if addr:  # the same identity the store uses (an IDN domain may be in punycode)
                    found.add(address_key(addr))
    return found
