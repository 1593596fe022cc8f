"""Signed, opaque tokens for unsubscribe and confirmation links, and the URLs they go into.

The design (docs/tokens.md):

* Tokens name one subscriber by their random `token_id` (`subscribers.token_id`, see
  `newsletter.audience.store`) and one list — never the e-mail address, never the sequential database
  id, which SQLite hands out again after an erasure and which would tell how many people
  subscribed. Unsubscribe tokens never expire (a link in a mail from 2026 must still work).
* Confirmation tokens (double opt-in) carry a timestamp and expire.
* Preference-centre tokens (`/p/<token>`) name the subscriber only (no list: the page shows
  all of their lists) and never expire, like unsubscribe tokens.
* Each purpose has its own salt, so one kind can never be used as the other.
* The format is itsdangerous' (`URLSafeSerializer` / `URLSafeTimedSerializer`: base64 JSON
  payload, HMAC-SHA1 signature with a per-salt derived key). A send mints one unsubscribe token
  per recipient, so `mint_unsubscribe` builds it itself, with the keyed HMAC made once and
  without itsdangerous' zlib attempt (~50 µs a call; it never shortens a random token_id):
  the same string as `URLSafeSerializer.dumps`, read by it like any other. Every one-click
  reads one, so `read_unsubscribe` likewise checks it with keyed HMACs made once (one per
  accepted key): what `URLSafeSerializer.loads` accepts, nothing else.
* Key rotation: tokens are signed with the current key; tokens signed with any key
  listed in `secret.old_tokens` are still accepted.
* Tokens made before schema migration 4 named the subscriber id: `read_*` still returns
  that int, and `Store.subscriber_by_token_id` accepts it only for a subscriber row that
  existed before the migration (so never for someone who got an erased person's id).

The key comes from `NEWSLETTER_SECRET__TOKEN` (or `.env`); without one, a random
key is created once in the git-ignored file `.newsletter-secret` of the project,
so the embedded default works on a fresh machine and links stay valid.

The URL shapes live here too: `unsubscribe_url` (`{base_url}/u/{token}`, also the
`List-Unsubscribe` header), `confirm_url` (`{base_url}/confirm/{token}`) and
`preferences_url` (`{base_url}/p/{token}`).
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from datetime import datetime
from pathlib import Path

from itsdangerous import BadData, BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer
from itsdangerous.encoding import base64_decode, base64_encode

from newsletter.errors import NewsletterError
from newsletter.project import Project

SECRET_FILE = ".newsletter-secret"
UNSUBSCRIBE_SALT = "newsletter.unsubscribe.v1"
CONFIRM_SALT = "newsletter.confirm.v1"
PREFERENCES_SALT = "newsletter.preferences.v1"

UNSUBSCRIBE_PATH = "/u/"
CONFIRM_PATH = "/confirm/"
PREFERENCES_PATH = "/p/"
# The unsubscribe "token" of a [TEST] mail: `{base_url}/u/test` is a page of `newsletter serve`
# explaining that this was a test send (no subscriber, nothing to unsubscribe).
TEST_UNSUBSCRIBE_TOKEN = "test"


def unsubscribe_url(base_url: str, token: str) -> str:
    """The unsubscribe link (page and RFC 8058 one-click POST) for `token`."""
    return base_url.rstrip("/") + UNSUBSCRIBE_PATH + token


def confirm_url(base_url: str, token: str) -> str:
    """The double opt-in confirmation link for `token`."""
    return base_url.rstrip("/") + CONFIRM_PATH + token


def preferences_url(base_url: str, token: str) -> str:
    """The preference-centre link (`/p/{token}`) for `token` (`Tokens.mint_preferences`)."""
    return base_url.rstrip("/") + PREFERENCES_PATH + token


class TokenInvalid(NewsletterError):
    """The token was tampered with, is for another purpose, or is unknown."""


class TokenExpired(TokenInvalid):
    """A confirmation link older than its validity period."""


def signing_keys(project: Project) -> list[str]:
    """Current key first, then the old keys still accepted."""
    settings = project.settings.secret
    current = settings.token.get_secret_value() if settings.token else _file_key(project.root)
    return [current, *(k.get_secret_value() for k in settings.old_tokens)]


def serializer_keys(keys: list[str]) -> list[str]:
    """`signing_keys` in itsdangerous' order: oldest first, the one that signs last.

    itsdangerous signs with the *last* key of its list and accepts all of them; handing it
    `[current, *old]` as it is would sign new links with an old key."""
    return [*reversed(keys[1:]), keys[0]]


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
    """Mint and read the project's tokens. `keys`: the current key first, then old ones."""

    def __init__(self, keys: list[str]) -> None:
        if not keys or not keys[0]:
            raise NewsletterError("no token key configured")
        ordered = serializer_keys(keys)
        self._unsubscribe = URLSafeSerializer(ordered, salt=UNSUBSCRIBE_SALT)
        self._confirm = URLSafeTimedSerializer(ordered, salt=CONFIRM_SALT)
        # itsdangerous derives the HMAC key from salt and secret on every signature; keep the
        # keyed HMAC of the current key and copy it per token.
        signer = self._unsubscribe.make_signer()
        self._unsubscribe_mac = hmac.new(signer.derive_key(), digestmod=signer.digest_method)
        self._sep = signer.sep
        self._preferences = URLSafeSerializer(ordered, salt=PREFERENCES_SALT)
        preferences = self._preferences.make_signer()
        self._preferences_mac = hmac.new(preferences.derive_key(), digestmod=preferences.digest_method)
        # The same for reading (every one-click checks one): a keyed HMAC per accepted key,
        # current first, as `Signer.verify_signature` tries them.
        self._unsubscribe_macs = [hmac.new(signer.derive_key(key), digestmod=signer.digest_method)
                                  for key in reversed(signer.secret_keys)]

    @classmethod
    def for_project(cls, project: Project) -> Tokens:
        return cls(signing_keys(project))

    def mint_unsubscribe(self, token_id: str, list_id: int) -> str:
        """The never-expiring unsubscribe token of a subscriber (`token_id`) on one list."""
        data = _JSON([_check_token_id(token_id), list_id]).encode("utf-8")
        payload = base64_encode(data)  # uncompressed: a valid itsdangerous payload either way
        mac = self._unsubscribe_mac.copy()
        mac.update(payload)
        return (payload + self._sep + base64_encode(mac.digest())).decode("ascii")

    def _sign(self, keyed: hmac.HMAC, value: object) -> str:
        """`URLSafeSerializer.dumps(value)` of the serializer `keyed` belongs to, without the key
        derivation and the zlib attempt per call (what `mint_unsubscribe` does inline)."""
        payload = base64_encode(_JSON(value).encode("utf-8"))  # uncompressed: valid either way
        mac = keyed.copy()
        mac.update(payload)
        return (payload + self._sep + base64_encode(mac.digest())).decode("ascii")

    def mint_preferences(self, token_id: str) -> str:
        """The never-expiring preference-centre token of a subscriber (`token_id`): their page
        for every list they are on. Made per recipient by a send, so as fast as `mint_unsubscribe`."""
        return self._sign(self._preferences_mac, _check_token_id(token_id))

    def read_preferences(self, token: str) -> str:
        """The token_id of a valid preference-centre token, else `TokenInvalid` (a token of another
        purpose, a tampered one, or one signed with a key no longer listed)."""
        try:
            value = self._preferences.loads(token)
        except BadSignature:
            raise TokenInvalid("invalid preferences link") from None
        if not isinstance(value, str) or not value:
            raise TokenInvalid("invalid preferences link")
        return value

    def read_unsubscribe(self, token: str) -> tuple[str | int, int]:
        """(token_id, list_id) of a valid unsubscribe token, else `TokenInvalid`.

        An int instead of a token_id comes from a link made before migration 4 (a subscriber id);
        resolve either with `Store.subscriber_by_token_id`."""
        # `URLSafeSerializer.loads` (unsign, then load the payload) with the keyed HMACs made once.
        try:
            payload, sep, sig = token.encode("utf-8").rpartition(self._sep)
            if not sep or not self._signed(payload, base64_decode(sig)):
                raise BadSignature("signature does not match")
            if payload.startswith(b"."):  # compressed (itsdangerous' dumps of a long token_id)
                value = self._unsubscribe.load_payload(payload)
            else:  # `load_payload` without its checks and dispatch: base64, UTF-8, JSON
                value = json.loads(base64_decode(payload).decode("utf-8"))
        except (BadData, ValueError):  # a bad signature, base64, UTF-8 or JSON
            raise TokenInvalid("invalid unsubscribe link") from None
        return _pair(value)

    def _signed(self, payload: bytes, sig: bytes) -> bool:
        for keyed in self._unsubscribe_macs:
            mac = keyed.copy()
            mac.update(payload)
            if hmac.compare_digest(mac.digest(), sig):
                return True
        return False

    def mint_confirm(self, token_id: str, list_id: int) -> str:
        """A confirmation token (timestamped: `read_confirm` refuses it after `max_age_seconds`)."""
        return str(self._confirm.dumps([_check_token_id(token_id), list_id]))

    def read_confirm(self, token: str, max_age_seconds: int) -> tuple[str | int, int]:
        """(token_id, list_id) of a valid, unexpired confirmation token (int: see above)."""
        ref, list_id, _issued = self.read_confirm_issued(token, max_age_seconds)
        return ref, list_id

    def read_confirm_issued(self, token: str, max_age_seconds: int) -> tuple[str | int, int, datetime]:
        """`read_confirm` and when the token was made (whole seconds, UTC): a confirmation brings
        back somebody who had left only with a link asked for after they left."""
        try:
            value, issued = self._confirm.loads(token, max_age=max_age_seconds, return_timestamp=True)
        except SignatureExpired:
            raise TokenExpired("the confirmation link has expired") from None
        except BadSignature:
            raise TokenInvalid("invalid confirmation link") from None
        return (*_pair(value), issued)


# itsdangerous' compact JSON (`_CompactJSON.dumps`), the encoder made once.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _check_token_id(token_id: object) -> str:
    # New tokens never name a database id: a caller still passing one is a bug, not a link.
    if not isinstance(token_id, str) or not token_id:
        raise TypeError(f"tokens name a subscriber by token_id (a non-empty str), got {token_id!r}")
    return token_id


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _pair(value: object) -> tuple[str | int, int]:
    if isinstance(value, list) and len(value) == 2 and _is_int(value[1]):
        ref = value[0]
        if (isinstance(ref, str) and ref) or _is_int(ref):
            return ref, value[1]
    raise TokenInvalid("invalid link")
