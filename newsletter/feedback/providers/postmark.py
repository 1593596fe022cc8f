"""Postmark webhooks: authenticated by HTTP basic auth (Postmark signs nothing)."""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any

from newsletter.feedback.providers.base import (
    Request,
    WebhookRejected,
    WebhookResult,
    json_object,
    make_bounce,
    make_event,
    metadata_tag,
    optional_string,
    optional_time,
    string_field,
)

_POSTMARK_HARD = {"HardBounce", "BadEmailAddress"}
_POSTMARK_SOFT = {"SoftBounce", "Transient", "DnsError", "Unknown", "SpamNotification", "Blocked",
                  "DMARCPolicy"}
# AutoResponder, Subscribe/Unsubscribe, ChallengeVerification, OpenRelayTest, VirusNotification,
# ManuallyDeactivated, SMTPApiError, …: not a verdict on the address, ignored.


def handle_postmark(req: Request) -> WebhookResult:
    _check_basic_auth(req)
    doc = json_object(req.body)
    record = optional_string(doc, "RecordType")
    if record == "SpamComplaint":
        btype = "SpamComplaint"
    elif record == "Bounce":
        btype = string_field(doc, "Type")
    else:
        return WebhookResult(events=[])  # Delivery, Open, Click, SubscriptionChange
    if btype not in _POSTMARK_HARD | _POSTMARK_SOFT | {"SpamComplaint"}:
        return WebhookResult(events=[])
    ident = doc.get("ID")
    if isinstance(ident, bool) or not isinstance(ident, int | str) or str(ident) == "":
        raise WebhookRejected(400, "field `ID` missing or not a number")
    details = optional_string(doc, "Details") or optional_string(doc, "Description")
    metadata = doc.get("Metadata") if isinstance(doc.get("Metadata"), dict) else {}
    # Postmark's MessageID is its own, not our Message-ID; our tag can ride in the metadata.
    fields: dict[str, Any] = dict(
        recipient=string_field(doc, "Email"), diagnostic=details, message_id=None,
        tag=metadata_tag(metadata), occurred_at=optional_time(doc, "BouncedAt"),
        event_id=f"postmark:{ident}")
    if btype == "SpamComplaint":
        return WebhookResult(events=[make_event("complaint", status=None, **fields)])
    return WebhookResult(events=[make_bounce(permanent=btype in _POSTMARK_HARD, status=None, **fields)])


def _check_basic_auth(req: Request) -> None:
    challenge = {"WWW-Authenticate": 'Basic realm="newsletter hooks"'}
    scheme, _, value = req.headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() != "basic":
        raise WebhookRejected(401, "basic authentication required", challenge)
    try:
        user, colon, password = base64.b64decode(value.strip(), validate=True).partition(b":")
    except (binascii.Error, ValueError):
        raise WebhookRejected(401, "malformed basic authentication", challenge) from None
    want_user = (req.settings.postmark_user or "").encode()
    want_password = (req.settings.postmark_password or "").encode()
    # Both compared in full, in constant time, so timing tells nothing about either.
    ok = hmac.compare_digest(user, want_user) & hmac.compare_digest(password, want_password)
    if not (ok and colon):
        raise WebhookRejected(401, "wrong user or password", challenge)
