"""Abuse resistance of `newsletter serve` against a real server: security headers, CSRF,
honeypot, rate limit and proxy trust, body size, redirects, token-free access logs."""

from __future__ import annotations

import logging
import socket

import httpx
import pytest
import test_serve
from test_serve import Served, ServeFactory, csrf_of, sign_up, wait_for

from newsletter.web.security import client_ip, log_path, parse_networks

# Every test with a project runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.backends

# The real-server fixtures live in test_serve.py.
serve = test_serve.serve
served = test_serve.served

SECURITY = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def assert_secure(response: httpx.Response) -> None:
    for name, value in SECURITY.items():
        assert response.headers.get(name) == value, (response.request.url, name)
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "script-src" not in csp  # no JavaScript at all
    assert "server" not in response.headers


def test_security_headers_on_every_response(served: Served) -> None:
    served.project.dist_dir.mkdir()
    (served.project.dist_dir / "index.html").write_text("<h1>Archiv</h1>", encoding="utf-8")
    sid = served.add("anna@example.org")
    token = served.tokens.mint_unsubscribe(served.token_id(sid), served.list_id)
    with served.client() as client:
        responses = [
            client.get("/healthz"), client.get("/subscribe"), client.get(f"/u/{token}"),
            client.get("/u/garbage"), client.get("/nowhere"), client.get("/archive/"),
            client.get("/archive"), client.delete("/subscribe"),
            client.post("/subscribe", content=b"x" * 100_000,
                        headers={"content-type": "application/x-www-form-urlencoded"}),
            client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"}),
        ]
    assert [r.status_code for r in responses] == [200, 200, 200, 400, 404, 200, 308, 405, 413, 200]
    for response in responses:
        assert_secure(response)
        if response.status_code != 308:
            assert response.headers["content-type"].startswith(("text/html", "text/plain"))
    assert responses[2].headers["cache-control"] == "no-store"  # token pages are never cached


def test_error_pages_reveal_nothing(served: Served) -> None:
    with served.client() as client:
        bad = client.get("/u/eyJhIjoxfQ.abc")
        missing = client.get("/confirm/x.y.z")
    for response in (bad, missing):
        assert response.status_code == 400
        assert "Traceback" not in response.text and "itsdangerous" not in response.text
        assert "Signature" not in response.text
    assert bad.text == missing.text  # which check failed is nobody's business


def test_csrf_is_required_on_the_subscribe_form(served: Served) -> None:
    with served.client() as client:
        form = client.get("/subscribe")
        good = csrf_of(form)
        other_form = client.get("/subscribe/news")  # same list, another path: another form
        assert other_form.status_code == 200
        data = {"email": "mallory@example.org", "consent": "1", "website": ""}
        attempts = [
            client.post("/subscribe", data=data),  # no token
            client.post("/subscribe", data={**data, "csrf": good + "x"}),  # tampered
            client.post("/subscribe", data={**data, "csrf": csrf_of(other_form)}),  # other form's token
            client.post("/subscribe", data={**data, "csrf": good},
                        headers={"sec-fetch-site": "cross-site"}),
        ]
    with served.client() as cookieless:  # the token alone, without the cookie it was bound to
        attempts.append(cookieless.post("/subscribe", data={**data, "csrf": good}))
    assert [r.status_code for r in attempts] == [403] * 5
    assert "Formular abgelaufen" in attempts[0].text
    assert served.store.find_subscriber("mallory@example.org") is None


def test_unsubscribe_button_works_without_cookies(served: Served) -> None:
    """Readers who block cookies must be able to leave: the signed token is the secret."""
    sid = served.add("bernd@example.org")
    token = served.tokens.mint_unsubscribe(served.token_id(sid), served.list_id)
    with served.client() as client:
        page = client.get(f"/u/{token}")
        assert "set-cookie" not in page.headers  # no cookie offered on the unsubscribe page
    with served.client() as cookieless:
        done = cookieless.post(f"/u/{token}", data={})  # the page's form: just the button
        assert "cookie" not in done.request.headers
    assert done.status_code == 200 and "Sie wurden abgemeldet" in done.text
    assert served.status(sid) == "unsubscribed"
    assert served.store.history(sid)[-1].source == "unsubscribe_page"


def test_csrf_cookie_is_httponly_and_samesite(served: Served) -> None:
    with served.client() as client:
        cookie = client.get("/subscribe").headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
        # The cookie is reused, so two open tabs both keep working.
        assert "set-cookie" not in client.get("/subscribe").headers


def test_honeypot_answers_like_a_sign_up_but_does_nothing(served: Served) -> None:
    outbox = served.project.outbox_dir
    with served.client() as client:
        real = sign_up(client, "real@example.org")
        bot = sign_up(client, "bot@example.org", website="https://spam.example")
    assert bot.status_code == real.status_code == 200
    assert bot.text == real.text
    served.wait_for_sign_ups(1)  # the real one, after its answer
    assert served.store.find_subscriber("bot@example.org") is None
    assert served.store.find_subscriber("real@example.org") is not None
    assert served.sign_ups == ["real@example.org"]

    def delivered() -> list[bytes]:  # new/ and cur/: a message is in tmp/ only while it is written
        return [p.read_bytes() for p in outbox.glob("*/*") if p.is_file() and p.parent.name != "tmp"]

    wait_for(lambda: len(delivered()) >= 1)
    mails = delivered()
    assert len(mails) == 1 and b"real@example.org" in mails[0]


def test_rate_limit_per_client_ip(serve: ServeFactory) -> None:
    served = serve(serve__signups_per_ip="3")
    with served.client() as client:
        codes = [sign_up(client, f"r{i}@example.org").status_code for i in range(4)]
        assert codes == [200, 200, 200, 429]
        # 127.0.0.1 is a trusted proxy by default: the forwarded client counts, not the proxy.
        forwarded = _sign_up_from(client, "other@example.org", "203.0.113.7")
        assert forwarded.status_code == 200
    served.wait_for_sign_ups(4)
    assert served.store.find_subscriber("r3@example.org") is None
    assert served.store.history(served.store.find_subscriber("other@example.org").id)[0].ip == \
        "203.0.113.7"


def test_forwarded_for_is_ignored_from_untrusted_peers(serve: ServeFactory) -> None:
    served = serve(serve__signups_per_ip="2", serve__trusted_proxies='["10.9.9.9"]')
    with served.client() as client:
        codes = [_sign_up_from(client, f"s{i}@example.org", f"198.51.100.{i}").status_code
                 for i in range(3)]
    assert codes == [200, 200, 429]  # spoofed X-Forwarded-For does not escape the limit
    served.wait_for_sign_ups(2)
    found = served.store.find_subscriber("s0@example.org")
    assert served.store.history(found.id)[0].ip == "127.0.0.1"


def _sign_up_from(client: httpx.Client, address: str, ip: str) -> httpx.Response:
    form = client.get("/subscribe")
    return client.post("/subscribe", headers={"x-forwarded-for": ip},
                       data={"csrf": csrf_of(form), "email": address, "consent": "1", "website": ""})


def test_request_body_limit(served: Served) -> None:
    sid = served.add("carla@example.org")
    token = served.tokens.mint_unsubscribe(served.token_id(sid), served.list_id)
    big = "List-Unsubscribe=One-Click&pad=" + "x" * 50_000
    with served.client() as client:
        declared = client.post(f"/u/{token}", content=big.encode(),
                               headers={"content-type": "application/x-www-form-urlencoded"})

        def chunks():  # no Content-Length: the limit must hold for streamed bodies too
            yield big.encode()

        streamed = client.post(f"/u/{token}", content=chunks(),
                               headers={"content-type": "application/x-www-form-urlencoded"})
    assert declared.status_code == streamed.status_code == 413
    assert served.status(sid) == "subscribed"


def test_no_open_redirects(served: Served) -> None:
    served.project.dist_dir.mkdir()
    (served.project.dist_dir / "2026-02").mkdir()
    (served.project.dist_dir / "2026-02" / "index.html").write_text("Februar", encoding="utf-8")
    (served.project.dist_dir / "2026-02" / "issue.json").write_text("{}", encoding="utf-8")
    with served.client(headers={"host": "evil.example"}) as client:
        locations = [client.get(path).headers.get("location")
                     for path in ("/archive", "/archive/2026-02", "/subscribe/", "//evil.example/")]
    assert locations[:3] == ["/archive/", "/archive/2026-02/", "/subscribe"]
    for location in locations:
        assert location is None or (location.startswith("/") and not location.startswith("//")), location


def test_access_log_has_no_tokens_or_addresses(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="newsletter.access")
    sid = served.add("dora@example.org", confirmed=False)
    unsub = served.tokens.mint_unsubscribe(served.token_id(sid), served.list_id)
    confirm = served.tokens.mint_confirm(served.token_id(sid), served.list_id)
    with served.client() as client:
        client.get(f"/u/{unsub}")
        client.get(f"/confirm/{confirm}")
        client.get("/subscribe?email=dora@example.org")
        sign_up(client, "dora@example.org")
    wait_for(lambda: len([r for r in caplog.records if r.name == "newsletter.access"]) >= 5)
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "newsletter.access")
    assert "GET /u/… 200" in text and "GET /confirm/… 200" in text and "POST /subscribe 200" in text
    assert unsub not in text and confirm not in text and "dora" not in text


def test_one_click_needs_no_cookie_and_no_csrf_token(served: Served) -> None:
    sid = served.add("emil@example.org")
    token = served.tokens.mint_unsubscribe(served.token_id(sid), served.list_id)
    # A bare HTTP/1.1 POST like a mail provider sends it: nothing but the body.
    body = b"List-Unsubscribe=One-Click"
    request = (f"POST /u/{token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               "Content-Type: application/x-www-form-urlencoded\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    port = int(served.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head = reply.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 200")
    assert b"\r\nlocation:" not in head
    assert served.status(sid) == "unsubscribed"


# --- units ------------------------------------------------------------------------------------


def test_client_ip_walks_forwarded_for_from_the_right() -> None:
    trusted = parse_networks(["127.0.0.1", "10.0.0.0/8"])

    def scope(peer: str, xff: str | None) -> dict:
        headers = [(b"x-forwarded-for", xff.encode())] if xff else []
        return {"client": (peer, 1234), "headers": headers}

    assert client_ip(scope("127.0.0.1", "203.0.113.1"), trusted) == "203.0.113.1"
    assert client_ip(scope("127.0.0.1", "6.6.6.6, 203.0.113.1, 10.1.2.3"), trusted) == "203.0.113.1"
    assert client_ip(scope("198.51.100.2", "203.0.113.1"), trusted) == "198.51.100.2"
    assert client_ip(scope("127.0.0.1", "not-an-ip"), trusted) == "127.0.0.1"
    assert client_ip(scope("127.0.0.1", None), trusted) == "127.0.0.1"


def test_log_path_hides_tokens() -> None:
    assert log_path("/u/abc.def") == "/u/…"
    assert log_path("/confirm/abc.def.ghi") == "/confirm/…"
    assert log_path("/subscribe/news") == "/subscribe/news"


def test_bad_trusted_proxy_setting_is_a_config_error() -> None:
    from newsletter.errors import ConfigError

    with pytest.raises(ConfigError, match=r"serve\.trusted_proxies"):
        parse_networks(["127.0.0.1", "localhost"])


def test_csrf_tokens_are_signed_with_the_current_key_and_old_ones_still_read() -> None:
    """Key rotation: `Csrf` gets `signing_keys` (current first); itsdangerous signs with the
    last key of its list, so the order must be turned round (`tokens.serializer_keys`)."""
    from itsdangerous import BadSignature, URLSafeTimedSerializer
    from starlette.datastructures import FormData
    from starlette.requests import Request

    from newsletter.web.security import CSRF_SALT, Csrf

    def request(nonce: str = "") -> Request:
        headers = [(b"cookie", f"nl_csrf={nonce}".encode())] if nonce else []
        return Request({"type": "http", "method": "POST", "path": "/subscribe", "headers": headers})

    current, old = "n" * 43, "o" * 43
    rotating = Csrf([current, old], secure=False)
    token, nonce = rotating.issue(request())
    assert nonce is not None
    assert URLSafeTimedSerializer(current, salt=CSRF_SALT).loads(token) == [nonce, "/subscribe"]
    with pytest.raises(BadSignature):
        URLSafeTimedSerializer(old, salt=CSRF_SALT).loads(token)
    assert Csrf([current], secure=False).valid(request(nonce), FormData({"csrf": token}))
    from_old_key, old_nonce = Csrf([old], secure=False).issue(request())
    assert old_nonce is not None
    assert rotating.valid(request(old_nonce), FormData({"csrf": from_old_key}))
    assert not Csrf([current], secure=False).valid(request(old_nonce), FormData({"csrf": from_old_key}))
