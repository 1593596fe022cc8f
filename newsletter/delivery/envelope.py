"""The envelope sender (SMTP MAIL FROM) of each message, where bounces go (docs/delivery.md).

Without `[bounces] address` it is the From address, as it always was. With it, each message of a
list send goes out from its own VERP address `bounces+TAG@…`: the signed tag names the delivery
(send, subscriber), so a bounce names its delivery without anybody parsing the report
(docs/feedback.md). Messages without a delivery row — test sends, the confirmation mail — go
out from the plain bounce address. In the Maildir outbox the envelope sender is kept as a first
line `Return-Path: <…>`, as a local delivery agent writes it.

The tag format has one home, `newsletter.delivery.verp` (the feedback package reads tags with it).
"""

from __future__ import annotations

from collections.abc import Callable

from newsletter.delivery import verp
from newsletter.errors import NewsletterError
from newsletter.project import Project
from newsletter.tokens import signing_keys


def bounce_address(project: Project) -> str | None:
    """The configured `[bounces] address`, or None."""
    return project.settings.bounces.address


def plain_sender(project: Project, from_address: str) -> str:
    """The envelope sender of a message without a delivery row: the bounce address, else From."""
    return bounce_address(project) or from_address


def return_path(sender: str) -> bytes:
    """The line a local delivery agent puts first into a delivered message."""
    return b"Return-Path: <" + sender.encode("ascii") + b">\r\n"


def delivery_senders(project: Project) -> Callable[[int, int], str] | None:
    """(send id, subscriber id) → that delivery's VERP envelope sender; None without a bounce
    address (then every message goes out from the From address, as before). The base address is
    parsed once (`verp.addresser`); per message only the tag is minted."""
    address = bounce_address(project)
    if address is None:
        return None
    try:
        build = verp.addresser(address)
    except ValueError as exc:
        raise NewsletterError(f"[bounces] address: {exc}") from None
    keys = signing_keys(project)
    return lambda send_id, subscriber_id: build(verp.mint_tag(keys, send_id, subscriber_id))
