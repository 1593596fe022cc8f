"""VERP tags: which delivery (send, subscriber) a bounce belongs to, read from its address.

Each message of a send gets its own envelope sender ``bounces+<tag>@example.org``; a bounce goes
back to exactly that address, so its tag names the delivery without anybody having to parse the
report's (often mangled) recipient address.

Tag format (docs/feedback.md): 32 characters of lowercase RFC 4648 base32 without padding,
encoding 20 bytes =

    send_id (6 bytes, big-endian) | subscriber_id (6 bytes) | HMAC-SHA256(key, PURPOSE | ids)[:8]

Why this shape:

* lowercase base32 letters and digits only: survives relays that lower-case (or upper-case) the
  local part, needs no quoting, contains neither ``+`` nor ``-`` nor ``.`` that a relay or an
  MTA's recipient delimiter could split on;
* database ids, never the e-mail address: a bounce address shows nobody's address;
* 64 bits of HMAC-SHA256 with the project key, domain-separated by `PURPOSE`: a tag minted for
  another use of the same key never verifies here, and forging one takes ~2**64 tries;
* fixed width: ``bounces+`` + 32 = 40 octets, well under the 64-octet local-part limit of
  RFC 5321 for ids up to 2**48 - 1.

Key rotation: sign with ``keys[0]``, accept every key in ``keys``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable
from email.utils import parseaddr

# The purpose string stays as first released (the module lived in feedback/ then): changing it
# would invalidate every tag in mails already sent.
PURPOSE = b"newsletter.feedback.verp.v1\x00"
ID_BYTES = 6
MAC_BYTES = 8
TAG_LENGTH = 32  # base32 of ID_BYTES * 2 + MAC_BYTES = 20 bytes, no padding
MAX_ID = 2 ** (8 * ID_BYTES) - 1
LOCAL_PART_LIMIT = 64  # RFC 5321 4.5.3.1.1

_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")


def _mac(key: str, payload: bytes) -> bytes:
    return hmac.new(key.encode("utf-8"), PURPOSE + payload, hashlib.sha256).digest()[:MAC_BYTES]


def mint_tag(keys: list[str], send_id: int, subscriber_id: int) -> str:
    """The tag for one delivery, signed with ``keys[0]``."""
    if not keys or not keys[0]:
        raise ValueError("mint_tag needs a non-empty signing key")
    for name, value in (("send_id", send_id), ("subscriber_id", subscriber_id)):
        if not 0 <= value <= MAX_ID:
            raise ValueError(f"{name} {value} outside 0..{MAX_ID}")
    payload = send_id.to_bytes(ID_BYTES, "big") + subscriber_id.to_bytes(ID_BYTES, "big")
    return base64.b32encode(payload + _mac(keys[0], payload)).decode("ascii").lower()


def read_tag(keys: list[str], tag: str) -> tuple[int, int] | None:
    """(send_id, subscriber_id) of a tag signed with any of `keys`; None when forged or garbled."""
    tag = tag.strip().lower()
    if len(tag) != TAG_LENGTH or not set(tag) <= _ALPHABET:
        return None
    try:
        data = base64.b32decode(tag.upper())
    except (binascii.Error, ValueError):
        return None
    payload, mac = data[: 2 * ID_BYTES], data[2 * ID_BYTES:]
    if not any(key and hmac.compare_digest(_mac(key, payload), mac) for key in keys):
        return None
    return int.from_bytes(payload[:ID_BYTES], "big"), int.from_bytes(payload[ID_BYTES:], "big")


def _split(address: str) -> tuple[str, str]:
    address = parseaddr(address)[1] or address.strip().strip("<>")
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"not an e-mail address: {address!r}")
    return local, domain


def bounce_address(address: str, tag: str) -> str:
    """``bounces@x.org`` + tag → ``bounces+TAG@x.org``; ValueError past the 64-octet local part."""
    if not set(tag) <= _ALPHABET or not tag:
        raise ValueError(f"not a VERP tag: {tag!r}")
    return addresser(address, len(tag))(tag)


def addresser(address: str, tag_length: int = TAG_LENGTH) -> Callable[[str], str]:
    """tag → ``bounces+TAG@x.org`` for tags of `tag_length`: the base address is parsed and the
    64-octet local-part limit checked once (a send builds one address per message)."""
    local, domain = _split(address)
    if "+" in local:
        raise ValueError(f"bounce address {address!r} already contains '+'")
    if len(local.encode("utf-8")) + 1 + tag_length > LOCAL_PART_LIMIT:
        raise ValueError(f"bounce address local part {local!r} leaves no room for a {tag_length}-character "
                         f"tag within {LOCAL_PART_LIMIT} octets")
    prefix, suffix = local + "+", "@" + domain
    return lambda tag: prefix + tag + suffix


def tag_in_local(local: str, bounce_local: str) -> str | None:
    """The tag of a local part ``<bounce_local>+<tag>`` (case-insensitive), else None."""
    prefix = bounce_local.lower() + "+"
    local = local.strip().lower()
    if not local.startswith(prefix):
        return None
    tag = local[len(prefix):]
    return tag if tag and set(tag) <= _ALPHABET else None


def tag_of(address: str, bounce_address: str) -> str | None:
    """The (unverified) tag of `address` if it is `bounce_address` with a ``+tag``, else None."""
    try:
        local, domain = _split(address)
        bounce_local, bounce_domain = _split(bounce_address)
    except ValueError:
        return None
    if domain.lower() != bounce_domain.lower():
        return None
    return tag_in_local(local, bounce_local)
