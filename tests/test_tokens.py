"""Unsubscribe and confirmation tokens: opaque (no ids, no address), purpose-bound, and how
tokens from before migration 4 are read."""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path

import pytest
from itsdangerous import URLSafeSerializer

from newsletter.audience.store import Store
from newsletter.tokens import UNSUBSCRIBE_SALT, TokenInvalid, Tokens, confirm_url, unsubscribe_url

KEYS = ["k" * 43]


def payload(token: str) -> object:
    """What anyone can read from a token without the key."""
    part = token.split(".", 1)[0]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    opened = Store.open(f"sqlite:///{tmp_path / 'newsletter.db'}")
    yield opened
    opened.close()


def test_tokens_reveal_neither_subscriber_ids_nor_addresses(store: Store) -> None:
    news = store.create_list("news")
    for n in range(3):
        store.add_subscriber(f"person{n}@example.org", news.id, confirmed=True)
    tokens = Tokens(KEYS)
    for member in store.members(news.id):
        for token in (tokens.mint_unsubscribe(member.token_id, news.id),
                      tokens.mint_confirm(member.token_id, news.id)):
            # The random token_id and the list: nothing about the person, nothing sequential.
            assert payload(token) == [member.token_id, news.id]
            assert "person" not in token
        assert tokens.read_unsubscribe(tokens.mint_unsubscribe(member.token_id, news.id)) == (
            member.token_id, news.id)


def test_new_tokens_cannot_be_made_from_a_database_id() -> None:
    with pytest.raises(TypeError, match="token_id"):
        Tokens(KEYS).mint_unsubscribe(1, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="token_id"):
        Tokens(KEYS).mint_confirm("", 1)


def test_old_format_tokens_are_read_as_ids_for_the_store_to_judge() -> None:
    old = URLSafeSerializer(KEYS, salt=UNSUBSCRIBE_SALT).dumps([7, 2])
    assert Tokens(KEYS).read_unsubscribe(old) == (7, 2)


@pytest.mark.parametrize("value", [[True, 1], ["x", "1"], ["", 1], [1.5, 1], {"a": 1}, [1], "x"])
def test_malformed_payloads_are_invalid(value: object) -> None:
    forged = URLSafeSerializer(KEYS, salt=UNSUBSCRIBE_SALT).dumps(value)
    with pytest.raises(TokenInvalid):
        Tokens(KEYS).read_unsubscribe(forged)


def test_legacy_ids_only_find_rows_that_existed_before_migration_4(store: Store) -> None:
    news = store.create_list("news")
    sid, _ = store.add_subscriber("new@example.org", news.id)
    assert store.subscriber_by_token_id(sid) is None  # created after migration 4
    assert store.subscriber_by_token_id("") is None
    assert store.subscriber_by_token_id(True) is None  # type: ignore[arg-type]
    token_id = store.subscriber(sid).token_id  # type: ignore[union-attr]
    assert store.membership_by_token_id(token_id, news.id) == (sid, "pending")
    assert store.membership_by_token_id(sid, news.id) is None
    assert store.membership_by_token_id(token_id, news.id + 1) is None


def test_new_tokens_are_signed_with_the_current_key_and_old_keys_still_read() -> None:
    """Rotation (README "Key rotation"): new links carry the new key — they must keep working
    once the old key is removed — and links signed with an old key are still accepted."""
    current, old = "n" * 43, "o" * 43
    rotated = Tokens([current, old])
    assert URLSafeSerializer(current, salt=UNSUBSCRIBE_SALT).loads(
        rotated.mint_unsubscribe("tid-1", 1)) == ["tid-1", 1]
    only_current = Tokens([current])
    assert only_current.read_unsubscribe(rotated.mint_unsubscribe("tid-1", 1)) == ("tid-1", 1)
    assert only_current.read_confirm(rotated.mint_confirm("tid-1", 1), 60) == ("tid-1", 1)
    from_old_key = Tokens([old])
    assert rotated.read_unsubscribe(from_old_key.mint_unsubscribe("tid-2", 3)) == ("tid-2", 3)
    assert rotated.read_confirm(from_old_key.mint_confirm("tid-2", 3), 60) == ("tid-2", 3)
    with pytest.raises(TokenInvalid):
        only_current.read_unsubscribe(from_old_key.mint_unsubscribe("tid-2", 3))


def test_minted_unsubscribe_tokens_are_itsdangerous_tokens() -> None:
    """`mint_unsubscribe` builds the token itself (speed); it is the string itsdangerous makes."""
    reference = URLSafeSerializer(KEYS, salt=UNSUBSCRIBE_SALT)
    tokens = Tokens(KEYS)
    for n in range(200):
        token_id = secrets.token_urlsafe(12)
        assert tokens.mint_unsubscribe(token_id, n) == reference.dumps([token_id, n])
    # A token_id zlib could shorten: itsdangerous would compress it; ours is longer but valid.
    assert reference.loads(tokens.mint_unsubscribe("a" * 60, 1)) == ["a" * 60, 1]


def test_link_urls() -> None:
    assert unsubscribe_url("https://example.org/news/", "T.k") == "https://example.org/news/u/T.k"
    assert confirm_url("https://example.org", "T.k") == "https://example.org/confirm/T.k"
