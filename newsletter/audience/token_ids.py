"""A subscriber's `token_id`: the random, public handle that links name instead of the database
id (docs/tokens.md). Its own small module: the CSV reader's helper process makes them too, without
loading the database layer."""

from __future__ import annotations

import base64
import secrets


def new_token_id() -> str:
    """A subscriber's random, public handle for links (16 URL-safe characters, 96 bits)."""
    return secrets.token_urlsafe(12)


def new_token_ids(count: int) -> list[str]:
    """`count` times `new_token_id()` from one read of the system's randomness (an import makes
    a million): 12 random bytes are exactly 16 URL-safe base64 characters, so each token is its
    own slice of one encoding."""
    text = base64.urlsafe_b64encode(secrets.token_bytes(12 * count)).decode("ascii")
    return [text[i:i + 16] for i in range(0, 16 * count, 16)]
