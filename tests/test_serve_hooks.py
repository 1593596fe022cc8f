"""`/hooks/<provider>` of a real `newsletter serve` on 127.0.0.1: authenticated provider events
change the member's status through the feedback ledger; replays, forgeries and unconfigured
providers change nothing. (Signature rules in detail: tests/test_feedback_webhooks.py.)"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
import sqlalchemy as sa
from test_serve import Served, ServeFactory, serve  # noqa: F401  (the fixture)

from newsletter.feedback.webhooks import generic_signature

pytestmark = pytest.mark.backends

SECRETS = {"bounces__hooks__generic_secret": "generic-test-secret",
           "bounces__hooks__mailgun_signing_key": "mailgun-test-key",
           "bounces__hooks__postmark_user": "pm", "bounces__hooks__postmark_password": "pm-secret"}


def _events(served: Served) -> list[tuple[str, str]]:
    query = sa.text("SELECT kind, outcome FROM feedback_events ORDER BY id")
    with served.store.read() as conn:
        return [(row.kind, row.outcome) for row in conn.execute(query)]


def _generic(events: list[dict[str, object]], t: int | None = None,
             secret: str = "generic-test-secret") -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"events": events}).encode()
    return body, {"X-Newsletter-Signature": generic_signature(secret, t or int(time.time()), body),
                  "Content-Type": "application/json"}


def test_generic_events_bounce_once_and_forgeries_change_nothing(serve: ServeFactory) -> None:  # noqa: F811
    served = serve(**SECRETS)
    sid = served.add("weg@example.org")
    event = {"id": "evt-1", "type": "bounce", "recipient": "weg@example.org", "status": "5.1.1",
             "diagnostic": "550 5.1.1 user unknown"}
    with served.client() as client:
        forged_body, headers = _generic([event], secret="wrong")
        assert client.post("/hooks/generic", content=forged_body, headers=headers).status_code == 401
        stale_body, stale = _generic([event], t=int(time.time()) - 3600)
        assert client.post("/hooks/generic", content=stale_body, headers=stale).status_code == 400
        assert served.status(sid) == "subscribed" and _events(served) == []
        body, headers = _generic([event])
        assert client.post("/hooks/generic", content=body, headers=headers).status_code == 200
        assert served.status(sid) == "bounced"
        replay_body, replay = _generic([event])  # the same event again, freshly signed
        assert client.post("/hooks/generic", content=replay_body, headers=replay).status_code == 200
    assert _events(served) == [("hard", "bounced")]
    assert served.store.history(sid)[-1].source == "bounce"


def test_mailgun_complaint_with_its_signature(serve: ServeFactory) -> None:  # noqa: F811
    served = serve(**SECRETS)
    sid = served.add("spam-klick@example.org")
    timestamp, token = str(int(time.time())), "a" * 50
    signature = hmac.new(b"mailgun-test-key", (timestamp + token).encode(), hashlib.sha256).hexdigest()
    payload = {"signature": {"timestamp": timestamp, "token": token, "signature": signature},
               "event-data": {"event": "complained", "id": "mg-1", "timestamp": time.time(),
                              "recipient": "spam-klick@example.org",
                              "message": {"headers": {"message-id": "x1@example.org"}}}}
    with served.client() as client:
        wrong = {**payload, "signature": {**payload["signature"], "signature": "0" * 64}}
        assert client.post("/hooks/mailgun", json=wrong).status_code == 401
        assert served.status(sid) == "subscribed"
        assert client.post("/hooks/mailgun", json=payload).status_code == 200
    assert served.status(sid) == "complained"
    assert served.store.is_suppressed("spam-klick@example.org")


def test_postmark_needs_its_basic_auth(serve: ServeFactory) -> None:  # noqa: F811
    served = serve(**SECRETS)
    sid = served.add("voll@example.org")
    bounce = {"RecordType": "Bounce", "ID": 4242, "Type": "SoftBounce", "Email": "voll@example.org",
              "Details": "452 4.2.2 mailbox full", "BouncedAt": "2026-11-30T07:00:00Z",
              "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483"}
    with served.client() as client:
        refused = client.post("/hooks/postmark", json=bounce, auth=("pm", "falsch"))
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
        assert client.post("/hooks/postmark", json=bounce,
                           headers={"Authorization": "Basic " + base64.b64encode(b"pm:pm-secret").decode()}
                           ).status_code == 200
    assert served.status(sid) == "subscribed"  # one soft bounce is only counted
    assert _events(served) == [("soft", "counted")]


def test_unconfigured_providers_and_large_reports(serve: ServeFactory) -> None:  # noqa: F811
    served = serve(bounces__hooks__generic_secret="generic-test-secret")
    with served.client() as client:
        assert client.post("/hooks/mailgun", json={}).status_code == 404  # no key configured
        assert client.post("/hooks/nonsense", json={}).status_code == 404
        # A report larger than the other pages' 16 KB limit is fine here …
        events = [{"id": f"e{i}", "type": "bounce", "recipient": f"n{i}@example.org", "status": "5.1.1",
                   "diagnostic": "x" * 400} for i in range(60)]
        body, headers = _generic(events)
        assert len(body) > 16384
        assert client.post("/hooks/generic", content=body, headers=headers).status_code == 200
        # … one beyond 256 KB is not.
        huge, headers = _generic([{**events[0], "diagnostic": "x" * 300_000}])
        assert client.post("/hooks/generic", content=huge, headers=headers).status_code == 413
    assert _events(served) == [("hard", "unmatched")] * 60
