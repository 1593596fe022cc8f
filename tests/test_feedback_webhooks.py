"""Provider webhooks (newsletter.feedback.webhooks): authentication and normalisation.

The payloads are modelled on the providers' documented examples (Amazon SES notification
contents and SNS message formats, Mailgun webhook payloads, Postmark bounce and spam complaint
webhooks). The SNS messages are signed here exactly as SNS signs them, with a certificate made
for the test; the string to sign is built by this file's own code from the documented rules,
not by the module under test.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from newsletter.delivery.verp import mint_tag
from newsletter.feedback import webhooks
from newsletter.feedback.providers import sns
from newsletter.feedback.webhooks import (
    HookSettings,
    ProviderEvent,
    WebhookRejected,
    WebhookResult,
    handle,
)

NOW = datetime(2026, 3, 2, 10, 0, 0, tzinfo=UTC)
TOPIC = "arn:aws:sns:eu-central-1:123456789012:newsletter-feedback"
CERT_URL = ("https://sns.eu-central-1.amazonaws.com/"
            "SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem")
MAILGUN_KEY = "mg-signing-key-0f3c9a7d5e"
PM_USER, PM_PASSWORD = "hooks", "pm-s3cret-pass"
GENERIC_SECRET = "generic-shared-secret-41d8"
SECRETS = (MAILGUN_KEY, PM_PASSWORD, GENERIC_SECRET)

SETTINGS = HookSettings(
    mailgun_signing_key=MAILGUN_KEY, postmark_user=PM_USER, postmark_password=PM_PASSWORD,
    generic_secret=GENERIC_SECRET, sns_topic_arns=(TOPIC,),
    bounce_address="bounces@news.musterstadt.de",
)
OUR_MESSAGE_ID = "<3f1e9c0a7b2d44e6a1c5.nl@news.musterstadt.de>"
TAG = mint_tag(["project-key"], 7, 4711)  # the caller verifies it; here it only has to look right
VERP = f"bounces+{TAG}@news.musterstadt.de"


# --- a certificate like SNS's, and SNS's signing -------------------------------------------------


def _make_cert(key: rsa.RSAPrivateKey, *, days: int = 30) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=days)).not_valid_after(NOW + timedelta(days=days))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def sns_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def sns_cert(sns_key: rsa.RSAPrivateKey) -> bytes:
    return _make_cert(sns_key)


class CertFetcher:
    def __init__(self, pem: bytes) -> None:
        self.pem = pem
        self.urls: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        return self.pem


@pytest.fixture
def fetch(sns_cert: bytes) -> CertFetcher:
    return CertFetcher(sns_cert)


def _string_to_sign(msg: dict[str, Any]) -> bytes:
    # The documented rule: these keys in byte order, each "Key\nvalue\n"; Notification signs
    # Subject when present, the confirmations sign SubscribeURL and Token instead.
    if msg["Type"] == "Notification":
        keys = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        keys = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    out = ""
    for key in keys:
        if key in msg:
            out += f"{key}\n{msg[key]}\n"
    return out.encode()


def _sign_sns(msg: dict[str, Any], key: rsa.RSAPrivateKey, version: str = "1") -> dict[str, Any]:
    msg = dict(msg, SignatureVersion=version, SigningCertURL=msg.get("SigningCertURL", CERT_URL))
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    msg["Signature"] = base64.b64encode(key.sign(_string_to_sign(msg), padding.PKCS1v15(),
                                                 algorithm)).decode()
    return msg


def _notification(ses: dict[str, Any], *, timestamp: datetime = NOW - timedelta(seconds=40),
                  **extra: Any) -> dict[str, Any]:
    return {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": TOPIC,
        "Message": json.dumps(ses),
        "Timestamp": timestamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "UnsubscribeURL": "https://sns.eu-central-1.amazonaws.com/?Action=Unsubscribe"
                          "&SubscriptionArn=" + TOPIC + ":c9135db0-26c4-47ec-8998-413945fb5a96",
        **extra,
    }


def _mail_object() -> dict[str, Any]:
    return {
        "timestamp": "2026-03-02T09:58:01.000Z",
        "source": VERP,
        "sourceArn": "arn:aws:ses:eu-central-1:123456789012:identity/news.musterstadt.de",
        "sendingAccountId": "123456789012",
        "messageId": "0107018e0a9f6c1d-6f2c1f3e-2a51-4c1d-9b0e-5d1c2e7a9f00-000000",
        "destination": ["anna.beispiel@example.net"],
        "headersTruncated": False,
        "headers": [
            {"name": "Return-Path", "value": f"<{VERP}>"},
            {"name": "From", "value": "Stadt Musterstadt <newsletter@news.musterstadt.de>"},
            {"name": "To", "value": "anna.beispiel@example.net"},
            {"name": "Message-ID", "value": OUR_MESSAGE_ID},
            {"name": "Subject", "value": "Stadtnachrichten März"},
        ],
        "commonHeaders": {
            "returnPath": VERP,
            "from": ["Stadt Musterstadt <newsletter@news.musterstadt.de>"],
            "to": ["anna.beispiel@example.net"],
            "messageId": OUR_MESSAGE_ID,
            "subject": "Stadtnachrichten März",
        },
    }


def ses_bounce(bounce_type: str = "Permanent", sub_type: str = "General",
               recipients: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": sub_type,
            "bouncedRecipients": recipients or [{
                "emailAddress": "anna.beispiel@example.net", "action": "failed", "status": "5.1.1",
                "diagnosticCode": "smtp; 550 5.1.1 <anna.beispiel@example.net>: Recipient address "
                                  "rejected: User unknown in virtual mailbox table"}],
            "timestamp": "2026-03-02T09:58:03.412Z",
            "feedbackId": "0107018e0a9f7a21-b1e0c6de-5b1a-4c4e-8d6e-3f0b0d2e1c11-000000",
            "remoteMtaIp": "192.0.2.25",
            "reportingMTA": "dsn; a2-17.smtp-out.eu-central-1.amazonses.com",
        },
        "mail": _mail_object(),
    }


def ses_complaint() -> dict[str, Any]:
    return {
        "notificationType": "Complaint",
        "complaint": {
            "userAgent": "ExampleCorp Feedback Loop (V0.01)",
            "complainedRecipients": [{"emailAddress": "bernd@example.org"}],
            "complaintFeedbackType": "abuse",
            "arrivalDate": "2026-03-02T09:55:00.000Z",
            "timestamp": "2026-03-02T09:55:12.000Z",
            "feedbackId": "0107018e0a9f7a21-aaaaaaaa-5b1a-4c4e-8d6e-3f0b0d2e1c11-000000",
        },
        "mail": _mail_object(),
    }


def _ses(msg: dict[str, Any], fetch: CertFetcher, settings: HookSettings = SETTINGS,
         now: datetime = NOW, headers: dict[str, str] | None = None) -> WebhookResult:
    hdrs = {"x-amz-sns-message-type": msg.get("Type", ""), "Content-Type": "text/plain; charset=UTF-8"}
    hdrs.update(headers or {})
    return handle("ses", hdrs, json.dumps(msg).encode(), settings=settings, now=now, fetch_cert=fetch)


def _rejected(excinfo: pytest.ExceptionInfo[WebhookRejected], status: int) -> None:
    assert excinfo.value.status == status, excinfo.value.reason
    assert not any(secret in excinfo.value.reason for secret in SECRETS)


# --- Amazon SES via SNS ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
def test_ses_hard_bounce_both_signature_versions(sns_key: rsa.RSAPrivateKey, fetch: CertFetcher,
                                                 version: str) -> None:
    result = _ses(_sign_sns(_notification(ses_bounce()), sns_key, version), fetch)
    assert result.confirm_url is None
    assert result.events == [ProviderEvent(
        kind="hard", recipient="anna.beispiel@example.net", status="5.1.1",
        diagnostic="smtp; 550 5.1.1 <anna.beispiel@example.net>: Recipient address rejected: "
                   "User unknown in virtual mailbox table",
        message_id=OUR_MESSAGE_ID, tag=TAG,
        occurred_at=datetime(2026, 3, 2, 9, 58, 3, 412000, tzinfo=UTC),
        event_id="ses:22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324:0")]
    assert fetch.urls == [CERT_URL]


def test_ses_soft_bounce(sns_key: rsa.RSAPrivateKey, fetch: CertFetcher) -> None:
    bounce = ses_bounce("Transient", "MailboxFull", [{
        "emailAddress": "carla@example.com", "action": "delayed", "status": "4.2.2",
        "diagnosticCode": "smtp; 452 4.2.2 The email account that you tried to reach is over quota"}])
    [event] = _ses(_sign_sns(_notification(bounce), sns_key), fetch).events
    assert (event.kind, event.recipient, event.status) == ("soft", "carla@example.com", "4.2.2")


def test_ses_undetermined_bounce_is_soft(sns_key: rsa.RSAPrivateKey, fetch: CertFetcher) -> None:
    bounce = ses_bounce("Undetermined", "Undetermined",
                        [{"emailAddress": "dora@example.com"}])
    [event] = _ses(_sign_sns(_notification(bounce), sns_key), fetch).events
    assert event.kind == "soft"
    assert event.status is None
    assert event.diagnostic == "Undetermined Undetermined"


def test_ses_complaint(sns_key: rsa.RSAPrivateKey, fetch: CertFetcher) -> None:
    [event] = _ses(_sign_sns(_notification(ses_complaint()), sns_key, "2"), fetch).events
    assert event.kind == "complaint"
    assert event.recipient == "bernd@example.org"
    assert event.diagnostic == "feedback type: abuse"
    assert event.message_id == OUR_MESSAGE_ID
    assert event.occurred_at == datetime(2026, 3, 2, 9, 55, 12, tzinfo=UTC)


def test_ses_event_publishing_format_and_several_recipients(sns_key: rsa.RSAPrivateKey,
                                                            fetch: CertFetcher) -> None:
    note = ses_bounce(recipients=[{"emailAddress": "a@example.net", "status": "5.1.1"},
                                  {"emailAddress": "b@example.net", "status": "5.1.1"}])
    note["eventType"] = note.pop("notificationType")  # configuration-set event publishing
    events = _ses(_sign_sns(_notification(note, Subject="Amazon SES Email Event Notification"),
                            sns_key), fetch).events
    assert [e.recipient for e in events] == ["a@example.net", "b@example.net"]
    assert len({e.event_id for e in events}) == 2


def test_ses_delivery_and_test_notifications_carry_no_events(sns_key: rsa.RSAPrivateKey,
                                                             fetch: CertFetcher) -> None:
    for note in ({"notificationType": "Delivery", "mail": _mail_object(), "delivery": {}},
                 {"notificationType": "AmazonSnsSubscriptionSucceeded", "message": "ok"}):
        assert _ses(_sign_sns(_notification(note), sns_key), fetch).events == []


def test_ses_tampered_message_is_401(sns_key: rsa.RSAPrivateKey, fetch: CertFetcher) -> None:
    msg = _sign_sns(_notification(ses_bounce()), sns_key)
    msg["Message"] = msg["Message"].replace("anna.beispiel@example.net", "victim@example.net")
    with pytest.raises(WebhookRejected) as exc:
        _ses(msg, fetch)
    _rejected(exc, 401)


def test_ses_subject_is_covered_by_the_signature(sns_key: rsa.RSAPrivateKey, fetch: CertFetcher) -> None:
    msg = _sign_sns(_notification(ses_bounce(), Subject="Bounce"), sns_key)
    assert _ses(msg, fetch).events
    msg["Subject"] = "Something else"
    with pytest.raises(WebhookRejected) as exc:
        _ses(msg, fetch)
    _rejected(exc, 401)


def test_ses_signed_with_another_key_is_401(fetch: CertFetcher) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(WebhookRejected) as exc:
        _ses(_sign_sns(_notification(ses_bounce()), other, "2"), fetch)
    _rejected(exc, 401)


def test_ses_version_1_signature_presented_as_version_2_is_401(sns_key: rsa.RSAPrivateKey,
                                                               fetch: CertFetcher) -> None:
    msg = _sign_sns(_notification(ses_bounce()), sns_key, "1")
    msg["SignatureVersion"] = "2"
    with pytest.raises(WebhookRejected) as exc:
        _ses(msg, fetch)
    _rejected(exc, 401)


@pytest.mark.parametrize("version", ["3", 2, ["2"], None])
def test_ses_unknown_signature_version_is_401(sns_key: rsa.RSAPrivateKey, fetch: CertFetcher,
                                              version: Any) -> None:
    msg = _sign_sns(_notification(ses_bounce()), sns_key, "2")
    msg["SignatureVersion"] = version
    with pytest.raises(WebhookRejected) as exc:
        _ses(msg, fetch)
    _rejected(exc, 401)


def test_ses_stale_timestamp_is_400(sns_key: rsa.RSAPrivateKey, fetch: CertFetcher) -> None:
    old = _sign_sns(_notification(ses_bounce(), timestamp=NOW - timedelta(hours=1, seconds=1)), sns_key)
    with pytest.raises(WebhookRejected) as exc:
        _ses(old, fetch)
    _rejected(exc, 400)
    recent = _sign_sns(_notification(ses_bounce(), timestamp=NOW - timedelta(minutes=59)), sns_key)
    assert _ses(recent, fetch).events


@pytest.mark.parametrize("url", [
    "http://sns.eu-central-1.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://evil.com/SimpleNotificationService-abc.pem",
    "https://sns.us-east-1.amazonaws.com.evil.com/SimpleNotificationService-abc.pem",
    "https://sns.us-east-1.amazonaws.com@evil.com/cert.pem",
    "https://evil.com\\@sns.us-east-1.amazonaws.com/cert.pem",
    "https://sns.us-east-1.amazonaws.com:8443/cert.pem",
    "https://xsns.us-east-1.amazonaws.com/cert.pem",
    "https://sns.us-east-1.amazonaws.com.cn.evil.com/cert.pem",
    "file:///etc/passwd",
])
def test_ses_cert_url_off_sns_hosts_is_401_and_not_fetched(sns_key: rsa.RSAPrivateKey,
                                                           fetch: CertFetcher, url: str) -> None:
    msg = _sign_sns(dict(_notification(ses_bounce()), SigningCertURL=url), sns_key)
    with pytest.raises(WebhookRejected) as exc:
        _ses(msg, fetch)
    _rejected(exc, 401)
    assert fetch.urls == []


def test_ses_china_region_cert_host_is_allowed(sns_key: rsa.RSAPrivateKey, fetch: CertFetcher) -> None:
    url = "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem"
    msg = _sign_sns(dict(_notification(ses_bounce()), SigningCertURL=url), sns_key)
    assert _ses(msg, fetch).events
    assert fetch.urls == [url]


def test_ses_host_pattern_widens_only_explicitly(sns_key: rsa.RSAPrivateKey, fetch: CertFetcher) -> None:
    url = "https://sns.test.invalid/cert.pem"
    msg = _sign_sns(dict(_notification(ses_bounce()), SigningCertURL=url), sns_key)
    with pytest.raises(WebhookRejected):
        _ses(msg, fetch)
    wide = HookSettings(sns_topic_arns=(TOPIC,), sns_host_pattern=r"sns\.test\.invalid")
    assert _ses(msg, fetch, settings=wide).events


def test_ses_topic_not_allowed_is_401(sns_key: rsa.RSAPrivateKey, fetch: CertFetcher) -> None:
    msg = _sign_sns(dict(_notification(ses_bounce()),
                         TopicArn="arn:aws:sns:eu-central-1:999999999999:someone-else"), sns_key)
    with pytest.raises(WebhookRejected) as exc:
        _ses(msg, fetch)
    _rejected(exc, 401)
    assert fetch.urls == []


def _confirmation(subscribe_url: str | None = None, mtype: str = "SubscriptionConfirmation") -> dict:
    token = "2336412f37fb687f5d51e6e2425dacbba9ffa4e9bdf8d01e3c1c1e63" + "0a" * 20
    return {
        "Type": mtype,
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": token,
        "TopicArn": TOPIC,
        "Message": f"You have chosen to subscribe to the topic {TOPIC}.\n"
                   "To confirm the subscription, visit the SubscribeURL included in this message.",
        "SubscribeURL": subscribe_url or ("https://sns.eu-central-1.amazonaws.com/?Action="
                                          f"ConfirmSubscription&TopicArn={TOPIC}&Token={token}"),
        "Timestamp": "2026-03-02T09:59:58.512Z",
    }


@pytest.mark.parametrize("version", ["1", "2"])
def test_ses_subscription_confirmation_returns_the_url(sns_key: rsa.RSAPrivateKey, fetch: CertFetcher,
                                                       version: str) -> None:
    msg = _sign_sns(_confirmation(), sns_key, version)
    result = _ses(msg, fetch)
    assert result.events == []
    assert result.confirm_url == msg["SubscribeURL"]


def test_ses_subscription_confirmation_token_is_signed(sns_key: rsa.RSAPrivateKey,
                                                       fetch: CertFetcher) -> None:
    msg = _sign_sns(_confirmation(), sns_key)
    msg["Token"] = "0" * 64
    with pytest.raises(WebhookRejected) as exc:
        _ses(msg, fetch)
    _rejected(exc, 401)


def test_ses_subscribe_url_off_sns_hosts_is_refused(sns_key: rsa.RSAPrivateKey, fetch: CertFetcher) -> None:
    for url in ("https://sns.eu-central-1.amazonaws.com.evil.com/?Action=ConfirmSubscription",
                "http://sns.eu-central-1.amazonaws.com/?Action=ConfirmSubscription"):
        with pytest.raises(WebhookRejected) as exc:
            _ses(_sign_sns(_confirmation(url), sns_key), fetch)
        _rejected(exc, 400)


def test_ses_unsubscribe_confirmation_is_accepted_quietly(sns_key: rsa.RSAPrivateKey,
                                                          fetch: CertFetcher) -> None:
    result = _ses(_sign_sns(_confirmation(mtype="UnsubscribeConfirmation"), sns_key), fetch)
    assert result == WebhookResult(events=[], confirm_url=None)


def test_ses_certificate_unavailable_is_503(sns_key: rsa.RSAPrivateKey) -> None:
    def broken(url: str) -> bytes:
        raise httpx.ConnectError("no route")

    with pytest.raises(WebhookRejected) as exc:
        _ses(_sign_sns(_notification(ses_bounce()), sns_key), broken)  # type: ignore[arg-type]
    _rejected(exc, 503)


def test_ses_expired_certificate_is_401(sns_key: rsa.RSAPrivateKey) -> None:
    expired = CertFetcher(_make_cert(sns_key, days=1))
    msg = _sign_sns(_notification(ses_bounce()), sns_key)
    assert _ses(msg, expired).events
    with pytest.raises(WebhookRejected) as exc:
        _ses(msg, expired, now=NOW + timedelta(days=2))  # (and the message is stale too)
    assert exc.value.status in (400, 401)
    with pytest.raises(WebhookRejected) as exc:
        _ses(msg, CertFetcher(b"not a certificate"))
    _rejected(exc, 401)


@pytest.mark.parametrize(("change", "status"), [
    ({"Message": "not json"}, 400),
    ({"Message": "[1, 2]"}, 400),
    ({"Type": "Notify"}, 400),
    ({"MessageId": 17}, 400),
    ({"Timestamp": "yesterday"}, 400),
])
def test_ses_malformed_is_400(sns_key: rsa.RSAPrivateKey, fetch: CertFetcher,
                              change: dict[str, Any], status: int) -> None:
    msg = _sign_sns(dict(_notification(ses_bounce()), **change), sns_key)  # signed, yet malformed
    with pytest.raises(WebhookRejected) as exc:
        _ses(msg, fetch, headers={"x-amz-sns-message-type": msg["Type"]})
    _rejected(exc, status)


def test_ses_missing_bounce_fields_are_400(sns_key: rsa.RSAPrivateKey, fetch: CertFetcher) -> None:
    note = ses_bounce()
    del note["bounce"]["bouncedRecipients"][0]["emailAddress"]
    with pytest.raises(WebhookRejected) as exc:
        _ses(_sign_sns(_notification(note), sns_key), fetch)
    _rejected(exc, 400)


def test_ses_type_header_must_match(sns_key: rsa.RSAPrivateKey, fetch: CertFetcher) -> None:
    msg = _sign_sns(_notification(ses_bounce()), sns_key)
    with pytest.raises(WebhookRejected) as exc:
        _ses(msg, fetch, headers={"x-amz-sns-message-type": "SubscriptionConfirmation"})
    _rejected(exc, 400)


def test_ses_without_bounce_address_has_no_tag(sns_key: rsa.RSAPrivateKey, fetch: CertFetcher) -> None:
    settings = HookSettings(sns_topic_arns=(TOPIC,))
    [event] = _ses(_sign_sns(_notification(ses_bounce()), sns_key), fetch, settings=settings).events
    assert event.tag is None
    assert event.message_id == OUR_MESSAGE_ID


# --- Mailgun --------------------------------------------------------------------------------------

MG_TOKEN = "a8ce0edb2dd8301dce2d1c9c6bbb5b4f6a2e1e7d7c8b0f4e21"


def _mg_sig(key: str, timestamp: str, token: str) -> str:
    return hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()


def mailgun_body(event_data: dict[str, Any], *, key: str = MAILGUN_KEY,
                 timestamp: datetime = NOW - timedelta(seconds=5), token: str = MG_TOKEN) -> dict:
    ts = str(int(timestamp.timestamp()))
    return {"signature": {"timestamp": ts, "token": token, "signature": _mg_sig(key, ts, token)},
            "event-data": event_data}


def mailgun_failed(severity: str = "permanent", reason: str = "bounce", code: int = 550,
                   message: str = "5.1.1 The email account that you tried to reach does not exist. "
                                  "Please try double-checking the recipient's email address",
                   enhanced: str | None = "5.1.1") -> dict[str, Any]:
    status: dict[str, Any] = {"tls": True, "mx-host": "mx.example.net", "attempt-no": 1,
                              "description": "", "session-seconds": 0.42, "code": code,
                              "message": message, "certificate-verified": True}
    if enhanced:
        status["enhanced-code"] = enhanced
    return {
        "id": "G9Bn5sl1TC6nu79C8C0bwg",
        "timestamp": 1772445570.271083,
        "log-level": "error" if severity == "permanent" else "warn",
        "event": "failed",
        "severity": severity,
        "reason": reason,
        "recipient": "anna.beispiel@example.net",
        "recipient-domain": "example.net",
        "envelope": {"sender": VERP, "transport": "smtp", "targets": "anna.beispiel@example.net",
                     "sending-ip": "198.51.100.7"},
        "message": {"headers": {"to": "anna.beispiel@example.net",
                                "message-id": OUR_MESSAGE_ID.strip("<>"),
                                "from": "Stadt Musterstadt <newsletter@news.musterstadt.de>",
                                "subject": "Stadtnachrichten März"},
                    "attachments": [], "size": 18342},
        "delivery-status": status,
        "flags": {"is-routed": False, "is-authenticated": True, "is-system-test": False,
                  "is-test-mode": False},
        "tags": [], "campaigns": [], "user-variables": {},
        "storage": {"url": "https://se.api.mailgun.net/v3/domains/news.musterstadt.de/messages/x",
                    "key": "message_key"},
    }


def mailgun_complained() -> dict[str, Any]:
    return {
        "id": "-Agny091SquKnsrW2NEKUA",
        "timestamp": 1772445000.0,
        "log-level": "warn",
        "event": "complained",
        "recipient": "bernd@example.org",
        "envelope": {"sending-ip": "198.51.100.7"},
        "message": {"headers": {"to": "bernd@example.org", "message-id": "x1.nl@news.musterstadt.de",
                                "from": "newsletter@news.musterstadt.de", "subject": "Stadtnachrichten"},
                    "attachments": [], "size": 111},
        "flags": {"is-test-mode": False},
        "tags": [], "campaigns": [], "user-variables": {"newsletter-tag": "c0mpl41nt"},
    }


def _mg(doc: dict[str, Any], settings: HookSettings = SETTINGS, now: datetime = NOW) -> WebhookResult:
    return handle("mailgun", {"Content-Type": "application/json"}, json.dumps(doc).encode(),
                  settings=settings, now=now, fetch_cert=_no_fetch)


def _no_fetch(url: str) -> bytes:
    raise AssertionError("no certificate is fetched for this provider")


def test_mailgun_hard_bounce() -> None:
    [event] = _mg(mailgun_body(mailgun_failed())).events
    assert event == ProviderEvent(
        kind="hard", recipient="anna.beispiel@example.net", status="5.1.1",
        diagnostic="550 5.1.1 The email account that you tried to reach does not exist. Please try "
                   "double-checking the recipient's email address",
        message_id=OUR_MESSAGE_ID, tag=TAG,
        occurred_at=datetime.fromtimestamp(1772445570.271083, UTC),
        event_id=f"mailgun:{MG_TOKEN}")


def test_mailgun_soft_bounce() -> None:
    data = mailgun_failed("temporary", "generic", 452,
                          "4.2.2 The email account that you tried to reach is over quota", None)
    [event] = _mg(mailgun_body(data)).events
    assert (event.kind, event.status) == ("soft", "4.2.2")


@pytest.mark.parametrize(("reason", "kind"), [
    ("suppress-bounce", "hard"), ("old", "soft"), ("espblock", "soft"),
    ("suppress-complaint", "complaint"), ("suppress-unsubscribe", None),
])
def test_mailgun_permanent_failure_reasons(reason: str, kind: str | None) -> None:
    data = mailgun_failed(reason=reason, code=605, message="Not delivering: see reason", enhanced=None)
    events = _mg(mailgun_body(data)).events
    assert [e.kind for e in events] == ([kind] if kind else [])


def test_mailgun_complaint() -> None:
    [event] = _mg(mailgun_body(mailgun_complained())).events
    assert (event.kind, event.recipient) == ("complaint", "bernd@example.org")
    assert event.message_id == "<x1.nl@news.musterstadt.de>"
    assert event.tag == "c0mpl41nt"  # from X-Mailgun-Variables


def test_mailgun_other_events_are_ignored() -> None:
    data = dict(mailgun_failed(), event="delivered")
    assert _mg(mailgun_body(data)).events == []


@pytest.mark.parametrize("field", ["timestamp", "token", "signature"])
def test_mailgun_tampered_signature_block_is_401(field: str) -> None:
    doc = mailgun_body(mailgun_failed())
    value = doc["signature"][field]
    doc["signature"][field] = value[:-1] + ("0" if value[-1] != "0" else "1")
    with pytest.raises(WebhookRejected) as exc:
        _mg(doc)
    _rejected(exc, 401)


def test_mailgun_wrong_key_is_401() -> None:
    with pytest.raises(WebhookRejected) as exc:
        _mg(mailgun_body(mailgun_failed(), key="someone-elses-key"))
    _rejected(exc, 401)


def test_mailgun_parent_signature_is_accepted() -> None:
    doc = mailgun_body(mailgun_failed(), key="subaccount-key")
    sig = doc["signature"]
    sig["parent-signature"] = _mg_sig(MAILGUN_KEY, sig["timestamp"], sig["token"])
    assert _mg(doc).events


@pytest.mark.parametrize("age", [301, -301, 86400])
def test_mailgun_stale_timestamp_is_400(age: int) -> None:
    doc = mailgun_body(mailgun_failed(), timestamp=NOW - timedelta(seconds=age))
    with pytest.raises(WebhookRejected) as exc:
        _mg(doc)
    _rejected(exc, 400)


def test_mailgun_replayed_request_yields_the_same_event_id() -> None:
    doc = mailgun_body(mailgun_failed())
    first = _mg(doc).events[0].event_id
    assert _mg(doc, now=NOW + timedelta(seconds=200)).events[0].event_id == first


@pytest.mark.parametrize("body", [
    b"not json", b"[]", json.dumps({"event-data": {}}).encode(),
    json.dumps({"signature": {"timestamp": [1], "token": "t", "signature": "s"}}).encode(),
    json.dumps({"signature": {"timestamp": "yesterday", "token": "t", "signature": "s"}}).encode(),
    b"[" * 100_000 + b"]" * 100_000,
])
def test_mailgun_malformed_is_400(body: bytes) -> None:
    with pytest.raises(WebhookRejected) as exc:
        handle("mailgun", {}, body, settings=SETTINGS, now=NOW, fetch_cert=_no_fetch)
    _rejected(exc, 400)


def test_mailgun_numeric_timestamp_and_odd_event_time() -> None:
    doc = mailgun_body(dict(mailgun_failed(), timestamp=float("nan")))
    doc["signature"]["timestamp"] = int(doc["signature"]["timestamp"])
    [event] = _mg(doc).events  # json.dumps writes NaN, json.loads reads it: no crash
    assert event.occurred_at is None


def test_mailgun_missing_event_data_after_a_good_signature_is_400() -> None:
    doc = mailgun_body({})
    del doc["event-data"]
    with pytest.raises(WebhookRejected) as exc:
        _mg(doc)
    _rejected(exc, 400)


# --- Postmark -------------------------------------------------------------------------------------


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def postmark_bounce(btype: str = "HardBounce", code: int = 1, details: str =
                    "smtp;550 5.1.1 The email account that you tried to reach does not exist.") -> dict:
    return {
        "RecordType": "Bounce",
        "MessageStream": "broadcast",
        "ID": 4323372036854775807,
        "Type": btype,
        "TypeCode": code,
        "Name": "Hard bounce" if btype == "HardBounce" else btype,
        "Tag": "stadtnachrichten-2026-03",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Metadata": {"newsletter-tag": TAG},
        "ServerID": 23,
        "Description": "The server was unable to deliver your message (ex: unknown user, mailbox "
                       "not found).",
        "Details": details,
        "Email": "anna.beispiel@example.net",
        "From": "newsletter@news.musterstadt.de",
        "BouncedAt": "2026-03-02T09:58:03.2735393Z",
        "DumpAvailable": True,
        "Inactive": btype == "HardBounce",
        "CanActivate": True,
        "Subject": "Stadtnachrichten März",
        "Content": "",
    }


def postmark_complaint() -> dict[str, Any]:
    return dict(postmark_bounce(), RecordType="SpamComplaint", Type="SpamComplaint", TypeCode=512,
                ID=4323372036854775808, Email="bernd@example.org", Details="Test spam complaint details",
                Name="Spam complaint", Description="The subscriber explicitly marked this message as "
                "spam.")


def _pm(doc: dict[str, Any], headers: dict[str, str] | None = None) -> WebhookResult:
    hdrs = _basic(PM_USER, PM_PASSWORD) if headers is None else headers
    return handle("postmark", hdrs, json.dumps(doc).encode(), settings=SETTINGS, now=NOW,
                  fetch_cert=_no_fetch)


def test_postmark_hard_bounce() -> None:
    [event] = _pm(postmark_bounce()).events
    assert event == ProviderEvent(
        kind="hard", recipient="anna.beispiel@example.net", status="5.1.1",
        diagnostic="smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        message_id=None, tag=TAG,
        occurred_at=datetime(2026, 3, 2, 9, 58, 3, 273539, tzinfo=UTC),
        event_id="postmark:4323372036854775807")


def test_postmark_soft_bounce() -> None:
    [event] = _pm(postmark_bounce("SoftBounce", 4096, "smtp;452 4.2.2 Mailbox full")).events
    assert (event.kind, event.status) == ("soft", "4.2.2")


def test_postmark_spam_complaint() -> None:
    [event] = _pm(postmark_complaint()).events
    assert (event.kind, event.recipient, event.status) == ("complaint", "bernd@example.org", None)
    assert event.event_id == "postmark:4323372036854775808"


@pytest.mark.parametrize("btype", ["AutoResponder", "Unsubscribe", "ChallengeVerification",
                                   "OpenRelayTest", "ManuallyDeactivated"])
def test_postmark_non_bounces_are_ignored(btype: str) -> None:
    assert _pm(postmark_bounce(btype, 64)).events == []


def test_postmark_other_record_types_are_ignored() -> None:
    assert _pm({"RecordType": "Delivery", "MessageID": "x", "Recipient": "a@example.net"}).events == []


@pytest.mark.parametrize("headers", [
    {},
    _basic(PM_USER, "wrong-password"),
    _basic("someone", PM_PASSWORD),
    _basic(PM_USER, PM_PASSWORD + "x"),
    {"Authorization": "Bearer " + PM_PASSWORD},
    {"Authorization": "Basic !!!not-base64"},
    {"Authorization": "Basic " + base64.b64encode(PM_USER.encode()).decode()},
])
def test_postmark_wrong_credentials_are_401(headers: dict[str, str]) -> None:
    with pytest.raises(WebhookRejected) as exc:
        _pm(postmark_bounce(), headers)
    _rejected(exc, 401)
    assert exc.value.headers["WWW-Authenticate"].startswith("Basic ")


def test_postmark_tampered_or_malformed_body_is_400() -> None:
    for body in (b"{", b"[]", json.dumps(dict(postmark_bounce(), Email=None)).encode(),
                 json.dumps(dict(postmark_bounce(), ID=None)).encode(),
                 json.dumps(dict(postmark_bounce(), Email="not-an-address")).encode()):
        with pytest.raises(WebhookRejected) as exc:
            handle("postmark", _basic(PM_USER, PM_PASSWORD), body, settings=SETTINGS, now=NOW,
                   fetch_cert=_no_fetch)
        _rejected(exc, 400)


def test_postmark_authentication_comes_before_parsing() -> None:
    with pytest.raises(WebhookRejected) as exc:
        handle("postmark", {}, b"garbage", settings=SETTINGS, now=NOW, fetch_cert=_no_fetch)
    _rejected(exc, 401)


# --- generic --------------------------------------------------------------------------------------


def _generic_header(body: bytes, t: int, secret: str = GENERIC_SECRET) -> str:
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def generic_body(*events: dict[str, Any]) -> bytes:
    return json.dumps({"events": list(events)}).encode()


GENERIC_HARD = {"type": "bounce", "recipient": "anna.beispiel@example.net", "status": "5.1.1",
                "diagnostic": "550 5.1.1 <anna.beispiel@example.net>: user unknown",
                "message_id": OUR_MESSAGE_ID, "tag": TAG,
                "occurred_at": "2026-03-02T10:58:03+01:00"}


def _gen(body: bytes, *, t: int | None = None, header: str | None = None,
         now: datetime = NOW) -> WebhookResult:
    t = int(now.timestamp()) if t is None else t
    hdr = header if header is not None else _generic_header(body, t)
    return handle("generic", {"X-Newsletter-Signature": hdr, "Content-Type": "application/json"},
                  body, settings=SETTINGS, now=now, fetch_cert=_no_fetch)


def test_generic_hard_bounce() -> None:
    body = generic_body(GENERIC_HARD)
    [event] = _gen(body).events
    assert event == ProviderEvent(
        kind="hard", recipient="anna.beispiel@example.net", status="5.1.1",
        diagnostic="550 5.1.1 <anna.beispiel@example.net>: user unknown",
        message_id=OUR_MESSAGE_ID, tag=TAG,
        occurred_at=datetime(2026, 3, 2, 9, 58, 3, tzinfo=UTC),
        event_id=f"generic:{hashlib.sha256(body).hexdigest()[:32]}:0")


@pytest.mark.parametrize(("status", "permanent", "kind"), [
    ("4.2.2", None, "soft"), ("5.2.2", None, "soft"), ("5.7.1", None, "soft"), (None, None, "soft"),
    ("5.4.4", None, "hard"), ("5.2.1", None, "hard"), (None, True, "hard"), (None, False, "soft"),
    # The status code decides; `permanent` only counts without one.
    ("5.7.1", True, "soft"), ("5.1.1", False, "hard"),
])
def test_generic_bounce_classification(status: str | None, permanent: bool | None, kind: str) -> None:
    event: dict[str, Any] = {"type": "bounce", "recipient": "a@example.net"}
    if status:
        event["status"] = status
    if permanent is not None:
        event["permanent"] = permanent
    assert [e.kind for e in _gen(generic_body(event)).events] == [kind]


def test_generic_complaint_and_ids() -> None:
    body = generic_body({"type": "complaint", "recipient": "bernd@example.org", "id": "fbl-7781"},
                        dict(GENERIC_HARD, id="dsn-42"))
    events = _gen(body).events
    assert [(e.kind, e.event_id) for e in events] == [("complaint", "generic:fbl-7781"),
                                                     ("hard", "generic:dsn-42")]
    assert events[0].message_id is None and events[0].occurred_at is None


def test_generic_message_id_without_brackets_is_normalised() -> None:
    body = generic_body(dict(GENERIC_HARD, message_id=OUR_MESSAGE_ID.strip("<>")))
    assert _gen(body).events[0].message_id == OUR_MESSAGE_ID


def test_generic_tampered_body_is_401() -> None:
    body = generic_body(GENERIC_HARD)
    t = int(NOW.timestamp())
    header = _generic_header(body, t)
    tampered = body.replace(b"anna.beispiel", b"someone.else")
    with pytest.raises(WebhookRejected) as exc:
        _gen(tampered, header=header)
    _rejected(exc, 401)
    # The timestamp is signed too: moving it forward breaks the signature.
    with pytest.raises(WebhookRejected) as exc:
        _gen(body, header=header.replace(f"t={t}", f"t={t + 60}"))
    _rejected(exc, 401)


def test_generic_wrong_secret_is_401() -> None:
    body = generic_body(GENERIC_HARD)
    with pytest.raises(WebhookRejected) as exc:
        _gen(body, header=_generic_header(body, int(NOW.timestamp()), "not-the-secret"))
    _rejected(exc, 401)


@pytest.mark.parametrize("header", [
    "", "t=1772445600", "v1=" + "0" * 64, "t=abc,v1=" + "0" * 64, "garbage",
    "t=1772445600;v1=" + "0" * 64,
])
def test_generic_malformed_signature_header_is_401(header: str) -> None:
    with pytest.raises(WebhookRejected) as exc:
        _gen(generic_body(GENERIC_HARD), header=header)
    _rejected(exc, 401)


def test_generic_missing_signature_header_is_401() -> None:
    with pytest.raises(WebhookRejected) as exc:
        handle("generic", {}, generic_body(GENERIC_HARD), settings=SETTINGS, now=NOW, fetch_cert=_no_fetch)
    _rejected(exc, 401)


def test_generic_with_starlette_headers() -> None:
    from starlette.datastructures import Headers

    body = generic_body(GENERIC_HARD)
    headers = Headers(raw=[(b"x-newsletter-signature", _generic_header(body, int(NOW.timestamp())).encode()),
                           (b"content-type", b"application/json")])
    assert handle("generic", headers, body, settings=SETTINGS, now=NOW).events


def test_generic_any_of_several_v1_signatures_may_match() -> None:
    body = generic_body(GENERIC_HARD)
    t = int(NOW.timestamp())
    good = _generic_header(body, t).split(",")[1]
    assert _gen(body, header=f"t={t},v1={'ab' * 32},{good}").events


@pytest.mark.parametrize("age", [301, -301, 3600])
def test_generic_stale_timestamp_is_400(age: int) -> None:
    body = generic_body(GENERIC_HARD)
    with pytest.raises(WebhookRejected) as exc:
        _gen(body, t=int(NOW.timestamp()) - age)
    _rejected(exc, 400)
    assert _gen(body, t=int(NOW.timestamp()) - 299).events


def test_generic_replay_after_300_seconds_is_400_and_within_is_the_same_event() -> None:
    body = generic_body(GENERIC_HARD)
    t = int(NOW.timestamp())
    header = _generic_header(body, t)
    first = _gen(body, header=header).events
    # A replay inside the window authenticates; the caller drops it by event_id.
    assert _gen(body, header=header, now=NOW + timedelta(seconds=120)).events == first
    with pytest.raises(WebhookRejected) as exc:
        _gen(body, header=header, now=NOW + timedelta(seconds=301))
    _rejected(exc, 400)


@pytest.mark.parametrize("events", [
    [dict(GENERIC_HARD, type="delivery")],
    [dict(GENERIC_HARD, status="550")],
    [dict(GENERIC_HARD, status=5.11)],
    [dict(GENERIC_HARD, recipient=None)],
    [dict(GENERIC_HARD, recipient="no-at-sign")],
    [dict(GENERIC_HARD, occurred_at="2026-03-02T10:58:03")],
    [dict(GENERIC_HARD, occurred_at="last tuesday")],
    [dict(GENERIC_HARD, permanent="yes")],
    [dict(GENERIC_HARD, id=7)],
    ["not an object"],
])
def test_generic_malformed_events_are_400(events: list[Any]) -> None:
    with pytest.raises(WebhookRejected) as exc:
        _gen(json.dumps({"events": events}).encode())
    _rejected(exc, 400)


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b'{"events": {}}', b"\xff\xfe"])
def test_generic_malformed_body_is_400(body: bytes) -> None:
    with pytest.raises(WebhookRejected) as exc:
        _gen(body)
    _rejected(exc, 400)


def test_generic_diagnostic_is_one_short_line() -> None:
    body = generic_body(dict(GENERIC_HARD, diagnostic="550 5.1.1 user\r\nunknown\t" + "x" * 900))
    diagnostic = _gen(body).events[0].diagnostic
    assert diagnostic is not None
    assert diagnostic.startswith("550 5.1.1 user unknown xxx")
    assert "\n" not in diagnostic and len(diagnostic) == 500


# --- shared ---------------------------------------------------------------------------------------


def test_unknown_provider_is_404() -> None:
    with pytest.raises(WebhookRejected) as exc:
        handle("sendgrid", {}, b"{}", settings=SETTINGS, now=NOW, fetch_cert=_no_fetch)
    assert exc.value.status == 404


@pytest.mark.parametrize("provider", ["ses", "mailgun", "postmark", "generic"])
def test_unconfigured_provider_is_404(provider: str) -> None:
    with pytest.raises(WebhookRejected) as exc:
        handle(provider, {}, b"{}", settings=HookSettings(), now=NOW, fetch_cert=_no_fetch)
    assert exc.value.status == 404


def test_postmark_needs_user_and_password() -> None:
    only_user = HookSettings(postmark_user=PM_USER)
    with pytest.raises(WebhookRejected) as exc:
        handle("postmark", _basic(PM_USER, ""), b"{}", settings=only_user, now=NOW, fetch_cert=_no_fetch)
    assert exc.value.status == 404


@pytest.mark.parametrize("provider", ["ses", "mailgun", "postmark", "generic"])
def test_body_over_256_kb_is_413(provider: str) -> None:
    body = b"{" + b" " * (256 * 1024) + b"}"
    with pytest.raises(WebhookRejected) as exc:
        handle(provider, _basic(PM_USER, PM_PASSWORD), body, settings=SETTINGS, now=NOW,
               fetch_cert=_no_fetch)
    assert exc.value.status == 413


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone"):
        handle("generic", {}, b"{}", settings=SETTINGS, now=datetime(2026, 3, 2), fetch_cert=_no_fetch)


def test_settings_from_a_config_section_with_secret_strings() -> None:
    from types import SimpleNamespace

    from pydantic import SecretStr

    section = SimpleNamespace(mailgun_signing_key=SecretStr(MAILGUN_KEY), postmark_user=PM_USER,
                              postmark_password=SecretStr(PM_PASSWORD), generic_secret=None,
                              sns_topic_arns=[TOPIC])
    settings = HookSettings.from_config(section, "bounces@news.musterstadt.de")
    assert settings == HookSettings(mailgun_signing_key=MAILGUN_KEY, postmark_user=PM_USER,
                                    postmark_password=PM_PASSWORD, sns_topic_arns=(TOPIC,),
                                    bounce_address="bounces@news.musterstadt.de")


def test_settings_repr_hides_secrets() -> None:
    text = repr(SETTINGS)
    assert not any(secret in text for secret in SECRETS)
    assert TOPIC in text


def test_provider_verdicts_yield_to_the_status_code_policy(sns_key: rsa.RSAPrivateKey,
                                                           fetch: CertFetcher) -> None:
    # One policy (reports.classify) for reports and webhooks: a "permanent" spam block is
    # about the sender, not the address; a permanent failure without a code is hard.
    blocked = ses_bounce(recipients=[{"emailAddress": "a@example.net", "status": "5.7.1",
                                      "diagnosticCode": "smtp; 554 5.7.1 Message rejected as spam"}])
    assert _ses(_sign_sns(_notification(blocked), sns_key), fetch).events[0].kind == "soft"
    assert _pm(postmark_bounce(details="")).events[0].kind == "hard"
    assert _pm(postmark_bounce("Blocked", 100000, "smtp;554 5.7.1 blocked")).events[0].kind == "soft"
    [event] = _mg(mailgun_body(mailgun_failed(message="no such user", enhanced=None))).events
    assert (event.kind, event.status) == ("hard", None)
    [event] = _mg(mailgun_body(mailgun_failed("temporary", "generic", 421, "try later", None))).events
    assert event.kind == "soft"


def test_tags_outside_our_bounce_address_are_not_taken(sns_key: rsa.RSAPrivateKey,
                                                       fetch: CertFetcher) -> None:
    note = ses_bounce()
    note["mail"]["source"] = f"newsletter+{TAG}@news.musterstadt.de"
    note["mail"]["headers"][0]["value"] = f"<bounces+{TAG}@elsewhere.example>"
    assert _ses(_sign_sns(_notification(note), sns_key), fetch).events[0].tag is None
    # …but the Return-Path header is used when the envelope sender is not there.
    note["mail"]["headers"][0]["value"] = f"<{VERP}>"
    del note["mail"]["source"]
    assert _ses(_sign_sns(_notification(note), sns_key), fetch).events[0].tag == TAG


# --- the default certificate fetcher ---------------------------------------------------------------


@pytest.fixture
def empty_cert_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sns, "_CERT_CACHE", {})


def test_fetch_certificate_caches_per_url(empty_cert_cache: None, sns_cert: bytes) -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=sns_cert)

    client = httpx.Client(transport=httpx.MockTransport(answer))
    assert webhooks.fetch_certificate(CERT_URL, client=client) == sns_cert
    assert webhooks.fetch_certificate(CERT_URL, client=client) == sns_cert
    assert seen == [CERT_URL]


@pytest.mark.parametrize("response", [
    httpx.Response(404, content=b"nope"),
    httpx.Response(302, headers={"Location": "https://evil.com/cert.pem"}),
    httpx.Response(200, content=b"x" * (64 * 1024 + 1)),
])
def test_fetch_certificate_refuses_bad_answers(empty_cert_cache: None, response: httpx.Response) -> None:
    client = httpx.Client(transport=httpx.MockTransport(lambda request: copy.copy(response)))
    with pytest.raises(ValueError):
        webhooks.fetch_certificate(CERT_URL, client=client)
    assert sns._CERT_CACHE == {}


def test_fetch_certificate_refuses_non_sns_urls_without_a_request(empty_cert_cache: None) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request expected")

    client = httpx.Client(transport=httpx.MockTransport(answer))
    for url in ("https://evil.com/cert.pem", "http://sns.us-east-1.amazonaws.com/cert.pem"):
        with pytest.raises(ValueError):
            webhooks.fetch_certificate(url, client=client)
