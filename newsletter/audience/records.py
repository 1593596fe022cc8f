"""What the store hands out: plain frozen records (no database objects), and its error."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from newsletter.errors import NewsletterError


class StoreError(NewsletterError):
    """A store operation a user asked for cannot be done (unknown list, duplicate name …)."""


@dataclass(frozen=True)
class MailingList:
    id: int
    name: str
    title: str | None
    created_at: datetime | None = None


@dataclass(frozen=True)
class Member:
    subscriber_id: int
    email: str
    name: str | None
    token_id: str = ""  # for the member's unsubscribe link: `Tokens.mint_unsubscribe(token_id, list_id)`
    topics: Any = None  # `memberships.topics` as stored: the keys chosen; None: no choice
    paused_until: datetime | None = None  # paused on the preference page until then


@dataclass(frozen=True)
class Subscriber:
    id: int
    email: str
    name: str | None
    attributes: dict[str, Any]
    created_at: datetime
    token_id: str | None = None
    legacy_tokens: bool = False


@dataclass(frozen=True)
class Membership:
    list_id: int
    list_name: str
    status: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ConsentEntry:
    id: int
    at: datetime
    list_id: int | None
    list_name: str | None
    action: str
    source: str
    ip: str | None
    consent_version: str | None
    detail: str | None


@dataclass(frozen=True)
class SignupResult:
    subscriber_id: int | None
    send_confirmation: bool
    token_id: str | None = None  # for the confirmation link


@dataclass
class ListCounts:
    list: MailingList
    counts: dict[str, int] = field(default_factory=dict)
