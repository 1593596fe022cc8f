"""E-mail address rules: validation and normal form, the identity used for duplicates, the
ASCII form for sending, and the hash kept where the address itself must not be.

Every package asks these functions instead of lower-casing or hashing addresses itself.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email

from newsletter.errors import NewsletterError


class InvalidEmail(NewsletterError):
    """An e-mail address that email-validator rejects."""


class NonAsciiLocalPart(InvalidEmail):
    """Valid only with SMTPUTF8 (``müller@…``): refused for new addresses, see `normalize_email`."""


# Plain ASCII dot-atom local parts: a strict subset of what email-validator accepts, so the
# fast path below never accepts anything the validator would reject (see test_store).
_SIMPLE_LOCAL = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*\Z")
_SPACE = re.compile(r"[\s@\"\\()<>\[\],;:]")


@lru_cache(maxsize=8192)
def _domain(domain: str) -> tuple[str, str] | None:
    """(Unicode, ASCII) form of a domain, or None if email-validator rejects it."""
    try:
        valid = validate_email(f"postmaster@{domain}", check_deliverability=False)
    except EmailNotValidError:
        return None
    return valid.domain, valid.ascii_domain


@lru_cache(maxsize=8192)
def _fast_domain(domain: str) -> tuple[str, int] | None:
    """(Unicode form, longest local part the fast path takes) of a domain, or None if addresses
    at it go through the full validator: the domain's checks done once, not once per row."""
    if _SPACE.search(domain):
        return None
    forms = _domain(domain)
    if forms is None:
        return None
    return forms[0], min(64, 199 - len(forms[1].encode()), 199 - len(forms[0].encode()))


NON_ASCII_LOCAL = ("non-ASCII characters before @ are not deliverable by most mail servers "
                   "(they need SMTPUTF8); ask for the address without umlauts or accents")


def normalize_email(address: str, *, lookup: bool = False) -> str:
    """Validate (no DNS) and normalise: local part as written, domain lower-case, IDN in Unicode.

    The Unicode form (email-validator's ``normalized``) keeps ``straße.de`` distinct from
    ``strasse.de`` (IDNA 2008). A non-ASCII local part (``müller@…``) is refused: it needs
    SMTPUTF8, which most servers lack and our `To:` header cannot carry; umlaut *domains* are
    fine (sent as punycode). ``lookup=True`` accepts such local parts, to find rows stored before
    this check (unsubscribe, forget). Raises `InvalidEmail` with the reason.
    """
    address = address.strip()
    # Fast path for imports of a million rows: plain local part, each domain validated once.
    # Anything unusual (or near the length limits) goes through the full validator.
    local, at, domain = address.rpartition("@")
    if at:
        fast = _fast_domain(domain)
        if fast is not None and len(local) <= fast[1] and _SIMPLE_LOCAL.match(local):
            return f"{local}@{fast[0]}"
    try:
        valid = validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidEmail(f"invalid e-mail address `{address}`: {exc}") from None
    if not lookup and not valid.local_part.isascii():
        raise NonAsciiLocalPart(f"invalid e-mail address `{address}`: {NON_ASCII_LOCAL}")
    return valid.normalized


def ascii_email(normalized: str) -> str:
    """The address as it goes into RCPT TO and the `To:` header: an IDN domain in punycode.

    Raises `InvalidEmail` for a non-ASCII local part (stored before `normalize_email` refused it).
    """
    if normalized.isascii():
        return normalized
    local, _at, domain = normalized.rpartition("@")
    if not local.isascii():
        raise NonAsciiLocalPart(f"`{normalized}`: {NON_ASCII_LOCAL}")
    forms = _domain(domain)
    if forms is None:
        raise InvalidEmail(f"`{normalized}`: the domain is not a valid internationalised domain")
    return f"{local}@{forms[1]}"


def email_key(normalized: str) -> str:
    """Identity of a normalised address for duplicates: lower() keeps ß (casefold would make it ss).
    The `subscribers.email_key` column."""
    return normalized.lower()


def lookup_key(address: str) -> str | None:
    """The identity (`email_key`) of an address as someone typed or a header wrote it — any
    case, an IDN domain in punycode or Unicode, an old non-ASCII local part — or None if it is
    not a valid address (so it names no stored subscriber)."""
    try:
        return email_key(normalize_email(address, lookup=True))
    except InvalidEmail:
        return None


def address_key(address: str) -> str:
    """`lookup_key`, falling back to the trimmed, lower-cased text for text that is not a valid
    address: an identity for anything (a To: header, an erasure request, a suppression)."""
    key = lookup_key(address)
    return key if key is not None else address.strip().lower()


def key_hash(key: str) -> str:
    """sha256 (hex) of an address identity (`email_key` / `address_key`): `suppression_hash`
    for a key already at hand (the import hashes 100,000 keys without normalising again)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def suppression_hash(address: str) -> str:
    """sha256 of `address_key(address)`: what is kept where the address itself must not be —
    the suppression list (`suppressions.email_hash`, survives a GDPR erasure) — and a key naming
    an address without keeping it (the web's per-address limit on confirmation mails)."""
    return key_hash(address_key(address))
