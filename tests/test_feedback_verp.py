"""VERP tags: round trip, key rotation, forgery, case, and the 64-octet local-part limit."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from newsletter.delivery.verp import bounce_address, mint_tag, read_tag, tag_in_local, tag_of

KEYS = ["current-project-key"]


def test_round_trip() -> None:
    tag = mint_tag(KEYS, 42, 1001)
    assert read_tag(KEYS, tag) == (42, 1001)
    assert tag == tag.lower() and tag.isalnum() and len(tag) == 32


def test_survives_a_relay_changing_case() -> None:
    tag = mint_tag(KEYS, 7, 8)
    assert read_tag(KEYS, tag.upper()) == (7, 8)
    assert tag_of(bounce_address("Bounces@Example.ORG", tag).upper(), "bounces@example.org") == tag


def test_key_rotation_signs_with_first_and_accepts_all() -> None:
    old = mint_tag(["old-key"], 1, 2)
    assert read_tag(["new-key", "old-key"], old) == (1, 2)
    assert read_tag(["new-key"], old) is None
    assert mint_tag(["new-key", "old-key"], 1, 2) == mint_tag(["new-key"], 1, 2)


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-1] + ("a" if t[-1] != "a" else "b"),  # MAC changed
    lambda t: t[:8] + ("a" if t[8] != "a" else "b") + t[9:],  # ids changed, MAC kept
    lambda t: t[:-1],  # truncated
    lambda t: t + "a",  # too long
    lambda t: t[:-1] + "1",  # not base32
    lambda t: "",
    lambda t: "not a tag at all",
])
def test_forged_or_garbled_tags_are_refused(mangle) -> None:
    assert read_tag(KEYS, mangle(mint_tag(KEYS, 42, 1001))) is None


def test_a_forger_without_the_key_cannot_name_a_delivery() -> None:
    # The same layout signed with another key, and a MAC without the purpose string.
    assert read_tag(KEYS, mint_tag(["guessed-key"], 42, 1001)) is None
    payload = (42).to_bytes(6, "big") + (1001).to_bytes(6, "big")
    bare = hmac.new(KEYS[0].encode(), payload, hashlib.sha256).digest()[:8]
    assert read_tag(KEYS, base64.b32encode(payload + bare).decode().lower()) is None


def test_no_email_address_in_the_tag() -> None:
    tag = mint_tag(KEYS, 3, 4)
    assert "@" not in tag and "+" not in tag and "." not in tag and "-" not in tag


@pytest.mark.parametrize("local", ["bounces", "bounce-reports", "b"])
def test_local_part_limit_for_ids_up_to_2_40(local: str) -> None:
    for send_id, subscriber_id in ((0, 0), (2**40, 2**40), (2**40 - 1, 1), (1, 2**40)):
        tag = mint_tag(KEYS, send_id, subscriber_id)
        address = bounce_address(f"{local}@newsletter.example.org", tag)
        assert len(address.rpartition("@")[0].encode()) <= 64
        found = tag_of(address, f"{local}@newsletter.example.org") or ""
        assert read_tag(KEYS, found) == (send_id, subscriber_id)


def test_limits_are_enforced() -> None:
    with pytest.raises(ValueError):
        mint_tag(KEYS, -1, 1)
    with pytest.raises(ValueError):
        mint_tag(KEYS, 2**48, 1)
    with pytest.raises(ValueError):
        mint_tag([], 1, 1)
    with pytest.raises(ValueError, match="64 octets"):
        bounce_address("a-very-long-bounce-mailbox-name-xx@example.org", mint_tag(KEYS, 1, 1))
    with pytest.raises(ValueError):
        bounce_address("no-at-sign", mint_tag(KEYS, 1, 1))
    with pytest.raises(ValueError):
        bounce_address("bounces@example.org", "Not/A+Tag")


def test_bounce_address_shape() -> None:
    assert bounce_address("bounces@x.org", "abc234") == "bounces+abc234@x.org"
    assert bounce_address("Newsletter <bounces@x.org>", "abc234") == "bounces+abc234@x.org"


def test_tag_of() -> None:
    tag = mint_tag(KEYS, 5, 6)
    assert tag_of(f"<bounces+{tag}@x.org>", "bounces@x.org") == tag
    assert tag_of(f"bounces+{tag}@other.org", "bounces@x.org") is None
    assert tag_of(f"other+{tag}@x.org", "bounces@x.org") is None
    assert tag_of("bounces@x.org", "bounces@x.org") is None
    assert tag_of("garbage", "bounces@x.org") is None
    assert tag_in_local(f"BOUNCES+{tag.upper()}", "bounces") == tag
