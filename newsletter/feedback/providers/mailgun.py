"""Mailgun webhooks: JSON with a signature block, HMAC-SHA256 of timestamp + token."""

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
    join,
    json_object,
    make_bounce,
    make_event,
    message_id_of,
    metadata_tag,
    object_field,
    optional_string,
    string_field,
    unix_time,
    verp_tag,
)


def mailgun_signature(signing_key: str, timestamp: str, token: str) -> str:
    """Mailgun's signature: hex HMAC-SHA256 of timestamp + token with the webhook signing key."""
    return hmac.new(signing_key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()


def handle_mailgun(req: Request) -> WebhookResult:
    doc = json_object(req.body)
    sig = object_field(doc, "signature")
    # The documented examples send the timestamp as a string, the field table says int: take both.
    raw_ts = sig.get("timestamp")
    timestamp = str(raw_ts) if isinstance(raw_ts, int) and not isinstance(raw_ts, bool) \
        else string_field(sig, "timestamp")
    token, given = string_field(sig, "token"), string_field(sig, "signature")
    if not re.fullmatch(r"\d{1,12}", timestamp) or not 0 < len(token) <= 256:
        raise WebhookRejected(400, "malformed Mailgun signature block")
    expected = mailgun_signature(req.settings.mailgun_signing_key or "", timestamp, token).encode()
    # Subaccount events carry the primary account's signature as parent-signature.
    parent = sig.get("parent-signature")
    candidates = [given] + ([parent] if isinstance(parent, str) else [])
    if not any_digest_matches(expected, candidates):
        raise WebhookRejected(401, "Mailgun signature does not match")
    if abs(req.now.timestamp() - int(timestamp)) > TOLERANCE:
        raise WebhookRejected(400, "Mailgun timestamp outside the 5-minute window")
    data = object_field(doc, "event-data")
    kind_of_event = string_field(data, "event")
    if kind_of_event not in ("failed", "complained"):
        return WebhookResult(events=[])
    verdict = "complaint" if kind_of_event == "complained" else _mailgun_verdict(
        optional_string(data, "severity"), optional_string(data, "reason"))
    if verdict is None:
        return WebhookResult(events=[])
    status_block = data.get("delivery-status")
    status_block = status_block if isinstance(status_block, dict) else {}
    diagnostic = join(status_block.get("code"),
                      status_block.get("message") or status_block.get("description"))
    enhanced = status_block.get("enhanced-code")
    message = data.get("message") if isinstance(data.get("message"), dict) else {}
    mheaders = message.get("headers") if isinstance(message.get("headers"), dict) else {}
    envelope = data.get("envelope") if isinstance(data.get("envelope"), dict) else {}
    variables = data.get("user-variables") if isinstance(data.get("user-variables"), dict) else {}
    tag = verp_tag(envelope.get("sender"), req.settings) or metadata_tag(variables)
    # The token, not event-data.id: Mailgun signs only timestamp + token, so the token is the one
    # unique value a replayer cannot change (event-data is not covered by the signature).
    event_id = f"mailgun:{token}"
    fields: dict[str, Any] = dict(
        recipient=string_field(data, "recipient"), diagnostic=diagnostic,
        message_id=message_id_of(mheaders.get("message-id")), tag=tag,
        occurred_at=unix_time(data.get("timestamp")), event_id=event_id)
    if verdict == "complaint":
        return WebhookResult(events=[make_event("complaint", status=None, **fields)])
    return WebhookResult(events=[make_bounce(
        permanent=verdict == "permanent", status=enhanced if isinstance(enhanced, str) else None,
        **fields)])


def _mailgun_verdict(severity: str | None, reason: str | None) -> str | None:
    """permanent, temporary, complaint, or None (not about the address)."""
    if severity != "permanent":
        return "temporary"  # Mailgun retries; the policy counts soft bounces per send
    if reason == "suppress-complaint":
        return "complaint"
    if reason == "suppress-unsubscribe":
        return None  # Mailgun's own unsubscribe list, not a delivery failure
    if reason in ("old", "espblock"):
        return "temporary"  # retries exhausted / blocked by Mailgun: says nothing about the address
    return "permanent"
