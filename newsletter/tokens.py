"""Signed, opaque tokens for unsubscribe and confirmation links (itsdangerous).

* Unsubscribe tokens name one subscriber and one list by database id — never the
  e-mail address — and never expire (a link in a mail from 2026 must still work).
* Confirmation tokens (double opt-in) carry a timestamp and expire.
* Each purpose has its own salt, so one kind can never be used as the other.
* Key rotation: tokens are signed with the current key; tokens signed with any key
  listed in `secret.old_tokens` are still accepted.

The key comes from `NEWSLETTER_SECRET__TOKEN` (or `.env`); without one, a random
key is created once in the git-ignored file `.newsletter-secret` of the project,
so the embedded default works on a fresh machine and links stay valid.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer

from newsletter.config import Project
from newsletter.errors import NewsletterError

SECRET_FILE = ".newsletter-secret"
UNSUBSCRIBE_SALT = "newsletter.unsubscribe.v1"
CONFIRM_SALT = "newsletter.confirm.v1"


class TokenInvalid(NewsletterError):
    """The token was tampered with, is for another purpose, or is unknown."""


class TokenExpired(TokenInvalid):
    """A confirmation link older than its validity period."""


def signing_keys(project: Project) -> list[str]:
    """Current key first, then the old keys still accepted."""
    settings = project.settings.secret
    current = settings.token.get_secret_value() if settings.token else _file_key(project.root)
    return [current, *(k.get_secret_value() for k in settings.old_tokens)]


def _file_key(root: Path) -> str:
    path = root / SECRET_FILE
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    key = secrets.token_urlsafe(32)
    # O_EXCL: if two processes race, exactly one key wins and both use it.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="ascii").strip()
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key + "\n")
    return key


class Tokens:
    """Make and read the project's tokens."""

    def __init__(self, keys: list[str]) -> None:
        if not keys or not keys[0]:
            raise NewsletterError("no token key configured")
        self._unsubscribe = URLSafeSerializer(keys, salt=UNSUBSCRIBE_SALT)
        self._confirm = URLSafeTimedSerializer(keys, salt=CONFIRM_SALT)

    @classmethod
    def for_project(cls, project: Project) -> Tokens:
        return cls(signing_keys(project))

    def unsubscribe(self, subscriber_id: int, list_id: int) -> str:
        return str(self._unsubscribe.dumps([subscriber_id, list_id]))

    def read_unsubscribe(self, token: str) -> tuple[int, int]:
        """(subscriber_id, list_id) of a valid unsubscribe token, else `TokenInvalid`."""
        try:
            value = self._unsubscribe.loads(token)
        except BadSignature:
            raise TokenInvalid("invalid unsubscribe link") from None
        return _pair(value)

    def confirm(self, subscriber_id: int, list_id: int) -> str:
        return str(self._confirm.dumps([subscriber_id, list_id]))

    def read_confirm(self, token: str, max_age_seconds: int) -> tuple[int, int]:
        """(subscriber_id, list_id) of a valid, unexpired confirmation token."""
        try:
            value = self._confirm.loads(token, max_age=max_age_seconds)
        except SignatureExpired:
            raise TokenExpired("the confirmation link has expired") from None
        except BadSignature:
            raise TokenInvalid("invalid confirmation link") from None
        return _pair(value)


def _pair(value: object) -> tuple[int, int]:
    if (
        isinstance(value, list) and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return value[0], value[1]
    raise TokenInvalid("invalid link")
