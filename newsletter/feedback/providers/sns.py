"""Amazon SES bounce and complaint notifications, delivered by an SNS HTTPS subscription.

Authenticated as AWS specifies: the certificate at `SigningCertURL` (https, an SNS host only)
verifies `Signature` (SignatureVersion 1: SHA1withRSA, 2: SHA256withRSA) over the documented
string to sign; the topic must be one of ours and the message at most an hour old.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from newsletter.feedback.providers.base import (
    SNS_HOST_PATTERN,
    TOLERANCE,
    HookSettings,
    ProviderEvent,
    Request,
    WebhookRejected,
    WebhookResult,
    as_object,
    join,
    json_object,
    list_field,
    make_bounce,
    make_event,
    message_id_of,
    object_field,
    optional_string,
    optional_time,
    parse_time,
    string_field,
    verp_tag,
)

if TYPE_CHECKING:
    import httpx

SNS_MAX_AGE = 3600  # an SNS message older than this is refused (replay window)

# The fields SNS signs, in this order, per message type (each as "Key\nvalue\n"; Subject only
# when present). Anything else in the message, e.g. UnsubscribeURL, is not covered.
_SNS_SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                 "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                "TopicArn", "Type"),
}


def sns_string_to_sign(message: Mapping[str, Any]) -> bytes:
    """The bytes SNS signs for `message` (a parsed SNS JSON document)."""
    mtype = message.get("Type")
    keys = _SNS_SIGNED.get(mtype) if isinstance(mtype, str) else None
    if keys is None:
        raise WebhookRejected(400, "unknown SNS message Type")
    parts = []
    for key in keys:
        value = message.get(key)
        if value is None and key == "Subject":
            continue
        parts.append(f"{key}\n{value}\n")
    return "".join(parts).encode("utf-8")


def sns_url_allowed(url: str, host_pattern: str = SNS_HOST_PATTERN) -> bool:
    """An https URL on an SNS host: no user info, no odd port, nothing a URL parser could read
    two ways (backslashes, spaces, control characters)."""
    if not url.isascii() or re.search(r"[\s\\\x00-\x1f\x7f]", url):
        return False
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme != "https" or parts.username is not None or parts.password is not None:
        return False
    if port not in (None, 443) or not parts.hostname:
        return False
    return re.fullmatch(host_pattern, parts.hostname) is not None


def handle_ses(req: Request) -> WebhookResult:
    msg = json_object(req.body)
    mtype = string_field(msg, "Type")
    header_type = req.headers.get("x-amz-sns-message-type")
    if header_type is not None and header_type != mtype:
        raise WebhookRejected(400, "x-amz-sns-message-type does not match the message Type")
    if mtype not in _SNS_SIGNED:
        raise WebhookRejected(400, "unknown SNS message Type")
    for key in _SNS_SIGNED[mtype]:
        if key != "Subject":
            string_field(msg, key)
    if msg.get("Subject") is not None and not isinstance(msg["Subject"], str):
        raise WebhookRejected(400, "field `Subject` is not a string")
    if string_field(msg, "TopicArn") not in req.settings.sns_topic_arns:
        raise WebhookRejected(401, "SNS topic not allowed")
    _verify_sns_signature(msg, req)
    sent = parse_time(string_field(msg, "Timestamp"), "Timestamp")
    if req.now - sent > timedelta(seconds=SNS_MAX_AGE) or sent - req.now > timedelta(seconds=TOLERANCE):
        raise WebhookRejected(400, "SNS message too old (or from the future)")
    if mtype == "SubscriptionConfirmation":
        url = string_field(msg, "SubscribeURL")
        if not sns_url_allowed(url, req.settings.sns_host_pattern):
            raise WebhookRejected(400, "SubscribeURL is not an https URL on an SNS host")
        return WebhookResult(events=[], confirm_url=url)
    if mtype == "UnsubscribeConfirmation":
        return WebhookResult(events=[])
    return WebhookResult(events=_ses_events(string_field(msg, "Message"),
                                            string_field(msg, "MessageId"), req))


def _verify_sns_signature(msg: Mapping[str, Any], req: Request) -> None:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    version = msg.get("SignatureVersion")
    algorithm = {"1": hashes.SHA1, "2": hashes.SHA256}.get(version) if isinstance(version, str) else None
    if algorithm is None:
        raise WebhookRejected(401, "unsupported SNS SignatureVersion")
    url = msg.get("SigningCertURL")
    if not isinstance(url, str) or not sns_url_allowed(url, req.settings.sns_host_pattern):
        raise WebhookRejected(401, "SigningCertURL is not an https URL on an SNS host")
    try:
        signature = base64.b64decode(string_field(msg, "Signature"), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookRejected(401, "SNS Signature is not base64") from None
    try:
        pem = req.fetch_cert(url)
    except Exception:
        # Not the sender's fault as far as we know: let SNS retry later.
        raise WebhookRejected(503, "SNS signing certificate could not be fetched") from None
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise WebhookRejected(401, "SNS signing certificate is not a PEM certificate") from None
    if not cert.not_valid_before_utc <= req.now <= cert.not_valid_after_utc:
        raise WebhookRejected(401, "SNS signing certificate is not valid now")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise WebhookRejected(401, "SNS signing certificate has no RSA key")
    try:
        key.verify(signature, sns_string_to_sign(msg), padding.PKCS1v15(), algorithm())
    except InvalidSignature:
        raise WebhookRejected(401, "SNS signature does not match") from None


def _ses_events(message: str, sns_id: str, req: Request) -> list[ProviderEvent]:
    try:
        note = json.loads(message)
    except (ValueError, RecursionError):
        raise WebhookRejected(400, "SNS Message is not a JSON SES notification") from None
    if not isinstance(note, dict):
        raise WebhookRejected(400, "SNS Message is not a JSON SES notification")
    # `notificationType` for identity notifications, `eventType` for configuration-set events.
    ntype = note.get("notificationType", note.get("eventType"))
    if ntype not in ("Bounce", "Complaint"):
        return []  # Delivery, Send, Open, AmazonSnsSubscriptionSucceeded, …: nothing to do
    mail = object_field(note, "mail")
    message_id, tag = _ses_origin(mail, req.settings)
    events: list[ProviderEvent] = []
    if ntype == "Bounce":
        bounce = object_field(note, "bounce")
        bounce_type = string_field(bounce, "bounceType")
        when = optional_time(bounce, "timestamp")
        for n, rcpt in enumerate(list_field(bounce, "bouncedRecipients")):
            rcpt = as_object(rcpt, "bouncedRecipients[]")
            diagnostic = optional_string(rcpt, "diagnosticCode")
            # Undetermined: SES could not tell why; without a status code it counts as soft.
            events.append(make_bounce(
                permanent=bounce_type == "Permanent", recipient=string_field(rcpt, "emailAddress"),
                status=optional_string(rcpt, "status"),
                diagnostic=diagnostic or join(bounce_type, bounce.get("bounceSubType")),
                message_id=message_id, tag=tag, occurred_at=when, event_id=f"ses:{sns_id}:{n}"))
    else:
        complaint = object_field(note, "complaint")
        when = optional_time(complaint, "timestamp")
        feedback = optional_string(complaint, "complaintFeedbackType")
        for n, rcpt in enumerate(list_field(complaint, "complainedRecipients")):
            rcpt = as_object(rcpt, "complainedRecipients[]")
            events.append(make_event(
                "complaint", string_field(rcpt, "emailAddress"), status=None,
                diagnostic=f"feedback type: {feedback}" if feedback else None,
                message_id=message_id, tag=tag, occurred_at=when, event_id=f"ses:{sns_id}:{n}"))
    return events


def _ses_origin(mail: Mapping[str, Any], settings: HookSettings) -> tuple[str | None, str | None]:
    """Our Message-ID and VERP tag from SES's `mail` object: SES rewrites the headers it sends
    but reports the original ones (`headers`, `commonHeaders`) and the envelope sender
    (`source`)."""
    headers: dict[str, str] = {}
    raw_headers = mail.get("headers")
    if isinstance(raw_headers, list):
        for item in raw_headers:
            if isinstance(item, dict) and isinstance(item.get("name"), str) \
                    and isinstance(item.get("value"), str):
                headers.setdefault(item["name"].lower(), item["value"])
    common = mail.get("commonHeaders")
    message_id = headers.get("message-id")
    if message_id is None and isinstance(common, dict) and isinstance(common.get("messageId"), str):
        message_id = common["messageId"]
    source = mail.get("source") if isinstance(mail.get("source"), str) else None
    tag = verp_tag(source, settings) or verp_tag(headers.get("return-path"), settings)
    return message_id_of(message_id), tag


# --- SNS certificate fetching -------------------------------------------------------------------

_CERT_CACHE: dict[str, bytes] = {}
_CERT_LOCK = threading.Lock()
_CERT_MAX_BYTES = 64 * 1024


def fetch_certificate(url: str, *, client: httpx.Client | None = None) -> bytes:
    """The PEM at an SNS SigningCertURL, fetched once per URL and process (SNS rotates
    certificates by publishing new URLs). Only URLs `sns_url_allowed` accepts are fetched;
    TLS is verified, redirects are not followed, the answer may have at most 64 KB.
    `client` is for tests (a mock transport); by default a short-lived client is used."""
    import httpx

    if not sns_url_allowed(url):
        raise ValueError("not an SNS certificate URL")
    with _CERT_LOCK:
        cached = _CERT_CACHE.get(url)
    if cached is not None:
        return cached
    own = client is None
    http = httpx.Client(timeout=10.0, follow_redirects=False) if client is None else client
    try:
        with http.stream("GET", url, timeout=10.0, follow_redirects=False) as response:
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > _CERT_MAX_BYTES:
                    raise ValueError("certificate too large")
    finally:
        if own:
            http.close()
    with _CERT_LOCK:
        if len(_CERT_CACHE) >= 32:  # bounded: a handful of regions at most in practice
            _CERT_CACHE.clear()
        _CERT_CACHE[url] = bytes(data)
    return bytes(data)
