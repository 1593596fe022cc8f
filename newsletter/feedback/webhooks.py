"""Bounce and complaint webhooks of sending providers: authenticate, then normalise.

`handle(provider, headers, body, settings=…, now=…)` takes one HTTP request as received and
returns the `ProviderEvent`s it reports, or raises `WebhookRejected` with the HTTP status to
answer. It touches no database and no framework: the web route (`/hooks/<provider>`) passes the
raw body and headers in, decides "seen before" by `ProviderEvent.event_id` (it has the
database), applies the policy, and visits `WebhookResult.confirm_url` once when SNS asks to
confirm a subscription. Formats and configuration: docs/feedback-webhooks.md.

Providers: `ses` (Amazon SES through an SNS HTTPS subscription, signature verified with the
SNS certificate), `mailgun` (HMAC-SHA256 of timestamp + token), `postmark` (HTTP basic auth)
and `generic` (our own signed JSON for relays without a native format).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from newsletter.feedback.providers.base import (
    SNS_HOST_PATTERN,
    HookSettings,
    ProviderEvent,
    Request,
    WebhookRejected,
    WebhookResult,
)
from newsletter.feedback.providers.generic import SIGNATURE_HEADER, generic_signature, handle_generic
from newsletter.feedback.providers.mailgun import handle_mailgun, mailgun_signature
from newsletter.feedback.providers.postmark import handle_postmark
from newsletter.feedback.providers.sns import (
    fetch_certificate,
    handle_ses,
    sns_string_to_sign,
    sns_url_allowed,
)

__all__ = [
    "MAX_BODY", "PROVIDERS", "SIGNATURE_HEADER", "SNS_HOST_PATTERN", "HookSettings", "ProviderEvent",
    "WebhookRejected", "WebhookResult", "fetch_certificate", "generic_signature", "handle",
    "mailgun_signature", "sns_string_to_sign", "sns_url_allowed",
]

MAX_BODY = 256 * 1024

_HANDLERS: dict[str, Callable[[Request], WebhookResult]] = {
    "ses": handle_ses, "mailgun": handle_mailgun, "postmark": handle_postmark, "generic": handle_generic,
}
PROVIDERS = tuple(_HANDLERS)


def handle(provider: str, headers: Mapping[str, str], body: bytes, *, settings: HookSettings,
           now: datetime, fetch_cert: Callable[[str], bytes] | None = None) -> WebhookResult:
    """Authenticate one webhook request of `provider` and return the events it reports.

    `headers` may be any mapping (names are compared case-insensitively), `body` the raw bytes
    as received (signatures cover them byte for byte), `now` an aware datetime. `fetch_cert`
    returns the PEM at an SNS SigningCertURL (default: `fetch_certificate`, cached in memory).
    Raises `WebhookRejected`: 404 unknown or unconfigured provider, 413 body over 256 KB,
    401 not authentic, 400 malformed or stale, 503 SNS certificate not obtainable right now.
    """
    if now.tzinfo is None:
        raise ValueError("`now` must be timezone-aware")
    handler = _HANDLERS.get(provider)
    if handler is None or not _configured(provider, settings):
        raise WebhookRejected(404, "no such webhook")
    if len(body) > MAX_BODY:
        raise WebhookRejected(413, f"body larger than {MAX_BODY // 1024} KB")
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    return handler(Request(lowered, body, settings, now, fetch_cert or fetch_certificate))


def _configured(provider: str, s: HookSettings) -> bool:
    return {
        "ses": bool(s.sns_topic_arns),
        "mailgun": bool(s.mailgun_signing_key),
        "postmark": bool(s.postmark_user and s.postmark_password),
        "generic": bool(s.generic_secret),
    }[provider]
