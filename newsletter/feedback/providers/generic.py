"""Our own format for relays without one: signed JSON, documented in docs/feedback-webhooks.md."""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

from newsletter.feedback.providers.base import (
    TOLERANCE,
    Request,
    WebhookRejected,
    WebhookResult,
    any_digest_matches,
    as_object,
    json_object,
    list_field,
    make_bounce,
    make_event,
    message_id_of,
    optional_string,
    optional_time,
    status_code,
    string_field,
)

SIGNATURE_HEADER = "x-newsletter-signature"


def generic_signature(secret: str, timestamp: int, body: bytes) -> str:
    """The `X-Newsletter-Signature` header for `body`: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">."""
    return f"t={timestamp},v1={_generic_digest(secret, timestamp, body)}"


def _generic_digest(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def handle_generic(req: Request) -> WebhookResult:
    header = req.headers.get(SIGNATURE_HEADER)
    if header is None:
        raise WebhookRejected(401, "X-Newsletter-Signature header missing")
    timestamp: str | None = None
    given: list[str] = []
    for item in header.split(","):
        key, eq, value = item.strip().partition("=")
        if not eq:
            raise WebhookRejected(401, "malformed X-Newsletter-Signature header")
        if key == "t":
            timestamp = value
        elif key == "v1":
            given.append(value)  # several during a key rotation by the sender
    if timestamp is None or not re.fullmatch(r"\d{1,12}", timestamp) or not given:
        raise WebhookRejected(401, "malformed X-Newsletter-Signature header")
    expected = _generic_digest(req.settings.generic_secret or "", int(timestamp), req.body)
    if not any_digest_matches(expected.encode(), given):
        raise WebhookRejected(401, "signature does not match")
    if abs(req.now.timestamp() - int(timestamp)) > TOLERANCE:
        raise WebhookRejected(400, "signature timestamp outside the 5-minute window")
    doc = json_object(req.body)
    items = list_field(doc, "events")
    if len(items) > 1000:
        raise WebhookRejected(400, "more than 1000 events in one request")
    body_hash = hashlib.sha256(req.body).hexdigest()[:32]
    events = []
    for n, raw in enumerate(items):
        item = as_object(raw, f"events[{n}]")
        etype = string_field(item, "type")
        if etype not in ("bounce", "complaint"):
            raise WebhookRejected(400, f"events[{n}].type must be bounce or complaint")
        status = optional_string(item, "status")
        if status is not None and status_code(status) is None:
            raise WebhookRejected(400, f"events[{n}].status is not an enhanced status code like 5.1.1")
        permanent = item.get("permanent")
        if permanent is not None and not isinstance(permanent, bool):
            raise WebhookRejected(400, f"events[{n}].permanent must be true or false")
        ident = optional_string(item, "id")
        if ident is not None and not 0 < len(ident) <= 200:
            raise WebhookRejected(400, f"events[{n}].id must have 1 to 200 characters")
        fields: dict[str, Any] = dict(
            recipient=string_field(item, "recipient"), diagnostic=optional_string(item, "diagnostic"),
            message_id=message_id_of(optional_string(item, "message_id")),
            tag=optional_string(item, "tag"), occurred_at=optional_time(item, "occurred_at"),
            # Without an id, the same body is the same events (also when re-signed later).
            event_id=f"generic:{ident}" if ident else f"generic:{body_hash}:{n}")
        if etype == "complaint":
            events.append(make_event("complaint", status=None, **fields))
        else:
            # The status code decides (the one policy, reports.classify); `permanent` only
            # when there is none, and without either a bounce counts as soft.
            events.append(make_bounce(permanent=bool(permanent), status=status, **fields))
    return WebhookResult(events=events)
