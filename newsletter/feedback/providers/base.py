"""What every provider module shares: the normalised event, the settings, the rejection, and
the small, strict readers of JSON fields (a wrong type is a 400, never a crash)."""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from newsletter.delivery.verp import tag_of
from newsletter.feedback.reports import classify, effective_status

TOLERANCE = 300  # seconds of clock difference accepted for Mailgun and generic timestamps
# Hosts SNS signs from and sends SubscribeURLs for: sns.<region>.amazonaws.com(.cn).
SNS_HOST_PATTERN = r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?"
DIAGNOSTIC_LIMIT = 500


@dataclass(frozen=True)
class ProviderEvent:
    """One bounce or complaint for one recipient, the same shape for every provider."""

    kind: str  # "hard" | "soft" | "complaint"
    recipient: str  # as the provider wrote it, trimmed; the caller normalises (audience.addresses)
    status: str | None  # enhanced status code (RFC 3463) when known
    diagnostic: str | None  # one line, at most 500 characters
    message_id: str | None  # our Message-ID, `<…@…>` as the journal stores it, when echoed
    tag: str | None  # our VERP tag (NOT verified: verp.read_tag does that) when the provider
    #                  echoes the envelope sender, or our metadata
    occurred_at: datetime | None  # aware UTC, when the provider says
    event_id: str  # unique per event and stable for the same event: `<provider>:<id>[:<n>]`


@dataclass(frozen=True)
class WebhookResult:
    events: list[ProviderEvent]
    confirm_url: str | None = None  # SNS SubscriptionConfirmation: GET it once to confirm


class WebhookRejected(Exception):
    """The request is refused: answer `status` with `reason` (which never contains a secret).
    `headers` are to be sent with the answer (WWW-Authenticate for Postmark's basic auth)."""

    def __init__(self, status: int, reason: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason
        self.headers: dict[str, str] = dict(headers or {})


@dataclass(frozen=True)
class HookSettings:
    """What each provider needs; a provider without its secret is switched off (404).
    Secrets are left out of repr() so they never reach a log or traceback."""

    mailgun_signing_key: str | None = field(default=None, repr=False)
    postmark_user: str | None = field(default=None, repr=False)
    postmark_password: str | None = field(default=None, repr=False)
    generic_secret: str | None = field(default=None, repr=False)
    sns_topic_arns: tuple[str, ...] = ()  # events of any other topic are refused
    bounce_address: str | None = None  # `[bounces] address`: VERP tags are read from bounces+TAG@…
    # Tests may widen this, explicitly; production keeps the AWS hosts.
    sns_host_pattern: str = SNS_HOST_PATTERN

    @classmethod
    def from_config(cls, hooks: Any, bounce_address: str | None = None) -> HookSettings:
        """From the `[bounces.hooks]` settings section (secrets may be pydantic SecretStr)."""
        def plain(value: Any) -> str | None:
            value = value.get_secret_value() if hasattr(value, "get_secret_value") else value
            return value or None

        return cls(mailgun_signing_key=plain(hooks.mailgun_signing_key),
                   postmark_user=plain(hooks.postmark_user),
                   postmark_password=plain(hooks.postmark_password),
                   generic_secret=plain(hooks.generic_secret),
                   sns_topic_arns=tuple(hooks.sns_topic_arns or ()), bounce_address=bounce_address)


@dataclass(frozen=True)
class Request:
    headers: dict[str, str]
    body: bytes
    settings: HookSettings
    now: datetime
    fetch_cert: Callable[[str], bytes]


_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


def any_digest_matches(expected: bytes, given: list[Any]) -> bool:
    matched = False
    for value in given:
        if isinstance(value, str) and value.isascii():
            matched |= hmac.compare_digest(expected, value.lower().encode())
    return matched


def json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: absurd nesting
        raise WebhookRejected(400, "body is not JSON") from None
    if not isinstance(doc, dict):
        raise WebhookRejected(400, "body is not a JSON object")
    return doc


def string_field(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise WebhookRejected(400, f"field `{key}` missing or not a string")
    return value


def optional_string(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise WebhookRejected(400, f"field `{key}` is not a string")
    return value


def object_field(doc: Mapping[str, Any], key: str) -> dict[str, Any]:
    return as_object(doc.get(key), key)


def as_object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WebhookRejected(400, f"`{name}` missing or not an object")
    return value


def list_field(doc: Mapping[str, Any], key: str) -> list[Any]:
    value = doc.get(key)
    if not isinstance(value, list):
        raise WebhookRejected(400, f"field `{key}` missing or not a list")
    return value


def parse_time(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise WebhookRejected(400, f"field `{name}` is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise WebhookRejected(400, f"field `{name}` has no time zone")
    return parsed


def unix_time(value: Any) -> datetime | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (ValueError, OverflowError, OSError):  # NaN, inf, out of range
        return None


def optional_time(doc: Mapping[str, Any], key: str) -> datetime | None:
    value = optional_string(doc, key)
    return None if value is None else parse_time(value, key)


def status_code(value: Any) -> str | None:
    return value if isinstance(value, str) and _STATUS.fullmatch(value) else None


def join(*parts: Any) -> str | None:
    line = " ".join(str(p) for p in parts if p not in (None, ""))
    return line or None


def one_line(value: str | None) -> str | None:
    if value is None:
        return None
    line = " ".join(re.sub(r"[\x00-\x1f\x7f]", " ", value).split())
    if len(line) > DIAGNOSTIC_LIMIT:
        line = line[:DIAGNOSTIC_LIMIT - 1] + "…"
    return line or None


def message_id_of(value: Any) -> str | None:
    """`<id@domain>` as our journal stores it; Mailgun reports it without the brackets."""
    if not isinstance(value, str):
        return None
    value = value.strip().removeprefix("<").removesuffix(">").strip()
    if not value or len(value) > 900 or re.search(r"[\s<>\x00-\x1f\x7f]", value):
        return None
    return f"<{value}>"


def verp_tag(address: Any, settings: HookSettings) -> str | None:
    """TAG from `bounces+TAG@domain` when the base is our `bounce_address` (verp.tag_of)."""
    if not isinstance(address, str) or not settings.bounce_address:
        return None
    return tag_of(address, settings.bounce_address)


def metadata_tag(metadata: Mapping[str, Any]) -> str | None:
    """Our tag echoed as provider metadata (X-PM-Metadata-newsletter-tag for Postmark,
    X-Mailgun-Variables {"newsletter-tag": …}) where the provider replaces the envelope sender."""
    value = metadata.get("newsletter-tag")
    return value if isinstance(value, str) and 0 < len(value) <= 200 else None


def make_bounce(*, permanent: bool, recipient: str, status: str | None, diagnostic: str | None,
                message_id: str | None, tag: str | None, occurred_at: datetime | None,
                event_id: str) -> ProviderEvent:
    """A bounce judged by the one policy (reports.classify): the status code — given, or found
    in the diagnostic — decides; the provider's permanent/temporary verdict only without one."""
    code = effective_status(status_code(status), diagnostic)
    kind = classify(code, diagnostic, permanent=permanent)
    return make_event(kind, recipient, status=code, diagnostic=diagnostic, message_id=message_id,
                      tag=tag, occurred_at=occurred_at, event_id=event_id)


def make_event(kind: str, recipient: str, *, status: str | None, diagnostic: str | None,
               message_id: str | None, tag: str | None, occurred_at: datetime | None,
               event_id: str) -> ProviderEvent:
    recipient = recipient.strip()
    if "@" not in recipient or len(recipient) > 320 or re.search(r"[\s\x00-\x1f\x7f]", recipient):
        raise WebhookRejected(400, "recipient is not an e-mail address")
    if tag is not None and (len(tag) > 200 or re.search(r"[\s\x00-\x1f\x7f]", tag)):
        tag = None
    return ProviderEvent(kind=kind, recipient=recipient, status=status,
                         diagnostic=one_line(diagnostic), message_id=message_id, tag=tag,
                         occurred_at=occurred_at.astimezone(UTC) if occurred_at else None,
                         event_id=event_id)
