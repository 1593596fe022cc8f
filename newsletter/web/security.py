"""What keeps `newsletter serve` safe to put on the internet, apart from the handlers' own rules.

* `Guard`, the outermost middleware: request body limit, security headers on every response,
  relative-only redirects, an error page for anything that escapes a handler, and access logs
  with tokens replaced by "…" and without query strings.
* `client_ip`: the client's address, believing X-Forwarded-For only from trusted proxies.
* `SlidingWindow`: the in-memory rate limiter (sign-ups per IP, confirmation mails per address).
* `Csrf`: the signed double-submit token of the subscribe and confirm forms.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from newsletter.errors import ConfigError, Problem
from newsletter.tokens import serializer_keys

log = logging.getLogger("newsletter.serve")
access_log = logging.getLogger("newsletter.access")

SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' https: data:; "
     b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),  # token URLs must never leak via Referer
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
_OWN_HEADERS = {k for k, _ in SECURITY_HEADERS} | {b"strict-transport-security", b"cache-control"}

CSRF_SALT = "newsletter.csrf.v1"
CSRF_COOKIE = "nl_csrf"
CSRF_MAX_AGE = 24 * 3600

_TOKEN_PATH = re.compile(r"^/(u|confirm|p)/[^/]+")  # unsubscribe, confirm, preferences
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# --------------------------------------------------------------------------- middleware


class BodyTooLarge(Exception):
    """The request body is over `serve.max_body_bytes` (raised while it is read)."""


class Guard:
    """Outermost middleware: body size limit, security headers, relative redirects,
    error pages for anything that escapes, and token-free access logs."""

    def __init__(self, app: ASGIApp, *, max_body: int, hsts: bool,
                 error_page: Callable[[int], bytes], larger_bodies: dict[str, int] | None = None) -> None:
        self.app, self.max_body, self.hsts, self.error_page = app, max_body, hsts, error_page
        # Path prefixes with their own limit (provider webhooks carry whole bounce reports).
        self.larger_bodies = larger_bodies or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = {"status": 0, "started": False}
        path = scope.get("path", "")
        cacheable = path.startswith("/archive/") or path == "/healthz"

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
                # The archive may say how long its files keep (its images: a year).
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() not in _OWN_HEADERS or (cacheable and k.lower() == b"cache-control")]
                headers = [(k, relative_location(v)) if k.lower() == b"location" else (k, v)
                           for k, v in headers]
                headers.extend(SECURITY_HEADERS)
                if self.hsts:
                    headers.append((b"strict-transport-security", b"max-age=31536000"))
                if not cacheable:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        length = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        max_body = next((limit for prefix, limit in self.larger_bodies.items() if path.startswith(prefix)),
                        self.max_body)
        try:
            if length is not None and (not length.isdigit() or int(length) > max_body):
                raise BodyTooLarge
            received = 0

            async def limited_receive() -> Message:
                nonlocal received
                message = await receive()
                received += len(message.get("body", b""))
                if received > max_body:
                    raise BodyTooLarge
                return message

            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            if not state["started"]:
                await self._error(413, guarded_send)
        except Exception:
            log.exception("error handling %s %s", scope.get("method"), log_path(path))
            if not state["started"]:
                await self._error(500, guarded_send)
        finally:
            access_log.info('%s %s %s %.1fms', scope.get("method"), log_path(path),
                            state["status"], (time.perf_counter() - started) * 1000)

    async def _error(self, status: int, send: Send) -> None:
        body = self.error_page(status)
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def relative_location(location: bytes) -> bytes:
    """Only ever redirect within this site: drop scheme and host, never `//host`."""
    value = location.decode("latin-1")
    value = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/]*", "", value)
    value = "/" + value.lstrip("/\\")
    return value.encode("latin-1")


def one_line(value: str, limit: int) -> str:
    """Untrusted text for a page or a header: control characters to spaces, trimmed, at most
    `limit` characters."""
    return _CONTROL.sub(" ", value).strip()[:limit]


def log_path(path: str) -> str:
    """Request path safe for logs: token segments replaced by an ellipsis."""
    return _TOKEN_PATH.sub(lambda m: f"/{m.group(1)}/…", path)


# --------------------------------------------------------------------------- client address


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: list[str]) -> list[Network]:
    """`serve.trusted_proxies` as networks (single addresses or CIDR ranges)."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ConfigError(problems=[Problem(
                "newsletter.toml", None, None, "serve.trusted_proxies",
                f"`{entry}` is not an IP address or network such as 10.0.0.0/8")]) from None
    return networks


def _in(address: str, networks: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_ip(scope: Scope, trusted: list[Network]) -> str:
    """The client address; X-Forwarded-For counts only when the peer is a trusted proxy.

    Walks X-Forwarded-For from the right and returns the first hop that is not
    itself a trusted proxy, so a client cannot spoof its address by sending its
    own header.
    """
    client = scope.get("client")
    peer = client[0] if client else ""
    if not trusted or not _in(peer, trusted):
        return peer
    hops: list[str] = []
    for name, value in scope.get("headers", []):
        if name == b"x-forwarded-for":
            hops.extend(h.strip() for h in value.decode("latin-1").split(","))
    for hop in reversed([h for h in hops if h]):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer
        if not _in(hop, trusted):
            return hop
    return peer


# --------------------------------------------------------------------------- rate limit


class SlidingWindow:
    """At most `limit` hits per key within `window` seconds (in memory, per process)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> bool:
        """Count one hit; False when the key is over its limit."""
        now = time.monotonic()
        with self._lock:
            if len(self._hits) > 50_000:  # bound memory under a flood of distinct keys
                self._hits = {k: q for k, q in self._hits.items() if q and q[-1] > now - self.window}
            queue = self._hits.setdefault(key, deque())
            while queue and queue[0] <= now - self.window:
                queue.popleft()
            if len(queue) >= self.limit:
                return False
            queue.append(now)
            return True


# --------------------------------------------------------------------------- CSRF


class Csrf:
    """Signed double-submit token: a random nonce in a cookie, and in the form the
    nonce plus the form's path, signed. Cross-site posts have neither."""

    def __init__(self, keys: list[str], secure: bool) -> None:
        """`keys`: `signing_keys` (current first); tokens are signed with the current one."""
        self._serializer = URLSafeTimedSerializer(serializer_keys(keys), salt=CSRF_SALT)
        self.secure = secure

    def issue(self, request: Request) -> tuple[str, str | None]:
        """(form token, nonce to set as cookie or None when the cookie is reused)."""
        nonce = request.cookies.get(CSRF_COOKIE, "")
        fresh = None
        if not _NONCE.match(nonce):
            nonce = fresh = secrets.token_urlsafe(24)
        return str(self._serializer.dumps([nonce, request.url.path])), fresh

    def valid(self, request: Request, form: FormData) -> bool:
        if request.headers.get("sec-fetch-site") == "cross-site":
            return False
        token, nonce = form.get("csrf"), request.cookies.get(CSRF_COOKIE, "")
        if not isinstance(token, str) or not _NONCE.match(nonce):
            return False
        try:
            signed_nonce, path = self._serializer.loads(token, max_age=CSRF_MAX_AGE)
        except (BadSignature, ValueError, TypeError):
            return False
        return path == request.url.path and secrets.compare_digest(str(signed_nonce), nonce)

    def set_cookie(self, response: Response, nonce: str | None) -> Response:
        if nonce:
            response.set_cookie(CSRF_COOKIE, nonce, httponly=True, samesite="lax", secure=self.secure)
        return response
