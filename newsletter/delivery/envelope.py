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

# A VERP tag is fixed width (verp.TAG_LENGTH), so one made-up tag gives the address's shape.
_PROBE_TAG = "a" * 32


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
    address (then every message goes out from the From address, as before).

    Per message only the tag is minted: the base address is parsed and its length checked once,
    by `verp.bounce_address` on a tag of the same width, and the tag is put where that one was."""
    address = bounce_address(project)
    if address is None:
        return None
    try:
        probe = verp.bounce_address(address, _PROBE_TAG)
    except ValueError as exc:
        raise NewsletterError(f"[bounces] address: {exc}") from None
    keys = signing_keys(project)
    mint, full = verp.mint_tag, verp.bounce_address
    prefix, _tag, suffix = probe.partition(_PROBE_TAG)
    sample = mint(keys, 0, 0)
    if prefix + sample + suffix != full(address, sample):  # another shape: the full call each time
        return lambda send_id, subscriber_id: full(address, mint(keys, send_id, subscriber_id))

    def sender(send_id: int, subscriber_id: int) -> str:
        return prefix + mint(keys, send_id, subscriber_id) + suffix

    return sender
