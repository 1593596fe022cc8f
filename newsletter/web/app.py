"""`newsletter serve`: the public endpoint — subscribe, confirm, unsubscribe, archive.

Everything here faces the internet, so every request is treated as hostile:

* GET never changes state (link scanners and prefetchers open every link);
  state changes are POSTs.
* Unsubscribe and confirmation tokens are signed with purpose-specific salts
  (`newsletter.tokens`); a bad token gets a plain page that reveals nothing.
* RFC 8058 one-click (`List-Unsubscribe=One-Click`) and the unsubscribe page's
  button are accepted without CSRF token or cookie (the signed token in the URL
  is the secret; readers who block cookies can still leave); one-click is
  answered 200 without redirect. The subscribe and confirm forms carry a signed
  double-submit CSRF token bound to the form's path.
* `/u/test` (the link in test sends) shows a page and changes nothing.
* `/archive/` serves an allow-list from `dist/`: the archive page, the feed, each
  built issue's web version and .ics files — never the e-mail files with the
  unsubscribe placeholder or anything else dropped there.
* A sign-up answers the same page whether the address is new, pending,
  subscribed or suppressed; the confirmation mail goes out in a background task
  so the response time does not tell either.
* Honeypot field, per-IP sign-up limit, per-address mail limit, body size
  limit, security headers on every response, relative-only redirects, and
  access logs with tokens replaced by "…" and no query strings.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import secrets
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from itsdangerous import BadSignature, URLSafeTimedSerializer
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PackageLoader, PrefixLoader, select_autoescape
from sqlalchemy.exc import OperationalError
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from newsletter.audience.store import (
    InvalidEmail,
    MailingList,
    NonAsciiLocalPart,
    ascii_email,
    normalize_email,
    open_store,
)
from newsletter.config import Project
from newsletter.errors import ConfigError, NewsletterError, Problem
from newsletter.tokens import TokenExpired, TokenInvalid, Tokens, signing_keys

log = logging.getLogger("newsletter.serve")
access_log = logging.getLogger("newsletter.access")

CSRF_SALT = "newsletter.csrf.v1"
CSRF_COOKIE = "nl_csrf"
CSRF_MAX_AGE = 24 * 3600
MAILS_PER_ADDRESS = 3  # confirmation mails per address and day: no mail-bombing a stranger
ONE_CLICK = "One-Click"
BAD_EMAIL = "Bitte geben Sie eine gültige E-Mail-Adresse an, z. B. name@example.org."
# Umlauts before the @ need SMTPUTF8, which most mail servers lack (umlaut domains are fine).
UMLAUT_EMAIL = "Bitte verwenden Sie eine Adresse ohne Umlaute vor dem @."

SOURCE_ONE_CLICK = "one_click"
SOURCE_PAGE = "unsubscribe_page"
SOURCE_FORM = "web"
SOURCE_CONFIRM = "confirm"

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

ERRORS: dict[int, tuple[str, str]] = {
    400: ("Ungültiger Link", "Dieser Link ist ungültig. Bitte verwenden Sie den vollständigen Link aus "
          "der E-Mail."),
    403: ("Formular abgelaufen", "Das Formular ist abgelaufen oder wurde nicht von dieser Seite gesendet. "
          "Bitte laden Sie die Seite neu und versuchen Sie es noch einmal. Für das Formular muss ein "
          "technisch notwendiges Cookie erlaubt sein."),
    404: ("Nicht gefunden", "Diese Seite gibt es nicht."),
    405: ("Nicht erlaubt", "Diese Anfrage ist hier nicht möglich."),
    410: ("Link abgelaufen", "Dieser Bestätigungslink ist abgelaufen. Es wurde nichts geändert. "
          "Bitte melden Sie sich erneut an; Sie erhalten dann einen neuen Link."),
    413: ("Anfrage zu groß", "Die gesendeten Daten sind zu groß."),
    429: ("Zu viele Anfragen", "Von Ihrem Anschluss kamen zu viele Anmeldungen. Bitte versuchen Sie es "
          "später noch einmal."),
    500: ("Fehler", "Leider ist ein Fehler aufgetreten. Bitte versuchen Sie es später noch einmal."),
}

META_NAME = "issue.json"  # = newsletter.render.archive.META_NAME; not imported: it loads the renderer
_SLUG = r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}"
_ARCHIVE_ISSUE = re.compile(rf"({_SLUG})/(index\.html)?")
_ARCHIVE_ICS = re.compile(rf"({_SLUG})/({_SLUG}\.ics)")
_ARCHIVE_TOP = {"": "index.html", "index.html": "index.html", "feed.xml": "feed.xml"}
_MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".xml": "application/atom+xml; charset=utf-8",
                ".ics": "text/calendar; charset=utf-8"}
_TOKEN_PATH = re.compile(r"^/(u|confirm)/[^/]+")
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_EMAIL = re.compile(r"[^\s<>]+@[^\s<>]+")

T = TypeVar("T")


# --------------------------------------------------------------------------- helpers


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
    if not _in(peer, trusted):
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


def archive_file(dist: Path, path: str) -> tuple[Path, str] | str | None:
    """What `/archive/<path>` serves from `dist`: (file, media type), a redirect target
    (an issue without its trailing slash), or None (404)."""
    if path in _ARCHIVE_TOP:
        file = dist / _ARCHIVE_TOP[path]
    elif re.fullmatch(_SLUG, path) and ".." not in path and (dist / path / META_NAME).is_file():
        return f"/archive/{path}/"
    elif (match := _ARCHIVE_ISSUE.fullmatch(path) or _ARCHIVE_ICS.fullmatch(path)) \
            and ".." not in path:
        slug, name = match.group(1), match.group(2) or "index.html"
        # Only directories `newsletter build` wrote (it leaves issue.json there).
        if not (dist / slug / META_NAME).is_file():
            return None
        file = dist / slug / name
    else:
        return None
    if not file.is_file():
        return None
    return file, _MEDIA_TYPES[file.suffix]


def log_path(path: str) -> str:
    """Request path safe for logs: token segments replaced by an ellipsis."""
    return _TOKEN_PATH.sub(lambda m: f"/{m.group(1)}/…", path)


def _clean(value: str, limit: int) -> str:
    return _CONTROL.sub(" ", value).strip()[:limit]


# --------------------------------------------------------------------------- middleware


class _BodyTooLarge(Exception):
    pass


class Guard:
    """Outermost middleware: body size limit, security headers, relative redirects,
    error pages for anything that escapes, and token-free access logs."""

    def __init__(self, app: ASGIApp, *, max_body: int, hsts: bool,
                 error_page: Callable[[int], bytes]) -> None:
        self.app, self.max_body, self.hsts, self.error_page = app, max_body, hsts, error_page

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
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() not in _OWN_HEADERS]
                headers = [(k, _relative(v)) if k.lower() == b"location" else (k, v) for k, v in headers]
                headers.extend(SECURITY_HEADERS)
                if self.hsts:
                    headers.append((b"strict-transport-security", b"max-age=31536000"))
                if not cacheable:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        length = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        try:
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                raise _BodyTooLarge
            received = 0

            async def limited_receive() -> Message:
                nonlocal received
                message = await receive()
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _BodyTooLarge
                return message

            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
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


_OWN_HEADERS = {k for k, _ in SECURITY_HEADERS} | {b"strict-transport-security", b"cache-control"}


def _relative(location: bytes) -> bytes:
    """Only ever redirect within this site: drop scheme and host, never `//host`."""
    value = location.decode("latin-1")
    value = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/]*", "", value)
    value = "/" + value.lstrip("/\\")
    return value.encode("latin-1")


# --------------------------------------------------------------------------- CSRF


class Csrf:
    """Signed double-submit token: a random nonce in a cookie, and in the form the
    nonce plus the form's path, signed. Cross-site posts have neither."""

    def __init__(self, keys: list[str], secure: bool) -> None:
        self._serializer = URLSafeTimedSerializer(keys, salt=CSRF_SALT)
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


# --------------------------------------------------------------------------- the app


@dataclass
class ListInfo:
    id: int
    name: str
    title: str


class Site:
    """The request handlers and everything they share."""

    def __init__(self, project: Project, *, proxy_headers: bool = True) -> None:
        settings = project.settings
        self.project = project
        self.settings = settings
        self.tokens = Tokens.for_project(project)
        self.store = open_store(project)
        self.base_url = settings.newsletter.base_url
        self.confirm_max_age = settings.serve.confirm_days * 86400
        trusted = parse_networks(settings.serve.trusted_proxies)
        self.trusted = trusted if proxy_headers else []
        self.signups = SlidingWindow(settings.serve.signups_per_ip, settings.serve.signup_window)
        self.mails = SlidingWindow(MAILS_PER_ADDRESS, 24 * 3600)
        self.csrf = Csrf(signing_keys(project), secure=self.base_url.startswith("https://"))
        self.env = template_environment(project)

    # ---- rendering

    def context(self, **values: Any) -> dict[str, Any]:
        s = self.settings
        return {
            "lang": s.newsletter.language, "newsletter_title": s.newsletter.title, "theme": s.theme,
            "imprint": s.imprint, "privacy_url": s.imprint.privacy_url, **values,
        }

    def page(self, name: str, http_status: int = 200, **values: Any) -> HTMLResponse:
        html = self.env.get_template(f"web/{name}").render(self.context(**values))
        return HTMLResponse(html, status_code=http_status)

    def error_html(self, status: int, **values: Any) -> bytes:
        heading, message = ERRORS.get(status, ERRORS[500])
        values = {"heading": heading, "message": message, **values}
        return self.env.get_template("web/error.html").render(self.context(**values)).encode()

    def error(self, status: int, **values: Any) -> HTMLResponse:
        return HTMLResponse(self.error_html(status, **values), status_code=status)

    # ---- store access (sync SQLAlchemy, so off the event loop)

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await run_in_threadpool(_retry_locked, fn, *args, **kwargs)

    def list_info(self, list_id: int) -> ListInfo | None:
        item = self.store.get_list_by_id(list_id)
        return self._info(item) if item else None

    def all_lists(self) -> list[ListInfo]:
        return [self._info(i) for i in self.store.lists()]

    def _info(self, item: MailingList) -> ListInfo:
        # A list's name is internal ("big"); readers see its title, else the newsletter's.
        return ListInfo(item.id, item.name, item.title or self.settings.newsletter.title)

    def subscribe_url(self, info: ListInfo) -> str:
        return "/subscribe" if len(self.all_lists()) <= 1 else f"/subscribe/{quote(info.name, safe='')}"

    # ---- handlers

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    async def archive_redirect(self, request: Request) -> Response:
        return RedirectResponse("/archive/", status_code=308)

    async def archive(self, request: Request) -> Response:
        """The public part of `dist/` only (an allow-list): the archive page, the feed, each issue's
        web version and calendar files. Never `email.html`/`email.txt` (they carry the
        unsubscribe placeholder), `issue.json`, dry-run mails or anything else put there."""
        found = archive_file(self.project.dist_dir, request.path_params["path"])
        if found is None:
            return self.error(404)
        if isinstance(found, str):
            return RedirectResponse(found, status_code=308)
        path, media_type = found
        return FileResponse(path, media_type=media_type)

    async def unsubscribe(self, request: Request) -> Response:
        token = request.path_params["token"]
        try:
            ref, list_id = self.tokens.read_unsubscribe(token)
        except TokenInvalid:
            await _drain(request)
            return self.error(400)
        if request.method == "GET":
            found = await self.db(self.membership, ref, list_id)
            if found is None:
                return self.error(404)
            _subscriber_id, status, info = found
            return self.page("unsubscribe.html", list_title=info.title, status=status,
                             action=request.url.path)
        form = await _form(request)
        if form is None:
            return self.error(400)
        # No CSRF check, for the human form either: the signed token in the URL is the secret
        # (whoever has it could post the one-click form anyway), and readers who block cookies
        # must still be able to leave.
        one_click = form.get("List-Unsubscribe") == ONE_CLICK
        ip = client_ip(request.scope, self.trusted)
        left = await self.db(self.leave, ref, list_id, one_click, ip)
        if left is None:
            return self.error(404)
        info, before, subscribe_url = left
        return self.page("unsubscribed.html", list_title=info.title, status=before,
                         subscribe_url=subscribe_url)

    async def unsubscribe_test(self, request: Request) -> Response:
        """`/u/test`: the link in test sends (`newsletter send --to`); changes nothing."""
        await _drain(request)
        return self.page("unsubscribe_test.html")

    def membership(self, ref: str | int, list_id: int) -> tuple[int, str, ListInfo] | None:
        """(subscriber id, status, list) a token names (see `Store.subscriber_by_token_id`)."""
        found = self.store.membership_by_token_id(ref, list_id)
        info = self.list_info(list_id) if found else None
        return (*found, info) if found and info else None

    def leave(self, ref: str | int, list_id: int, one_click: bool,
              ip: str) -> tuple[ListInfo, str, str | None] | None:
        """Unsubscribe (idempotent; bounced/complained stay as they are); None if unknown.
        (list, status before, subscribe URL for the page).

        One database round trip per step, all on one worker thread: one-click is the hot path."""
        found = self.store.leave(ref, list_id, source=SOURCE_ONE_CLICK if one_click else SOURCE_PAGE, ip=ip)
        if found is None:
            return None
        status = found[1]
        info = self.list_info(list_id)
        if info is None:
            return None
        return info, status, None if one_click else self.subscribe_url(info)

    async def subscribe(self, request: Request) -> Response:
        name = request.path_params.get("list")
        lists = await self.db(self.all_lists)
        if name is None:
            if len(lists) > 1:
                if request.method == "POST":
                    await _drain(request)
                    return self.error(404)
                titles = Counter(i.title for i in lists)  # untitled lists: tell them apart
                choices = [{"url": f"/subscribe/{quote(i.name, safe='')}",
                            "title": i.title if titles[i.title] == 1 else f"{i.title} ({i.name})"}
                           for i in lists]
                return self.page("subscribe_lists.html", lists=choices)
            info = lists[0] if lists else None
        else:
            info = next((i for i in lists if i.name == name), None)
        if info is None:
            await _drain(request)
            return self.error(404)
        if request.method == "GET":
            return self.subscribe_form(request, info, {"email": "", "name": ""}, [], set())

        ip = client_ip(request.scope, self.trusted)
        if not self.signups.hit(ip):
            await _drain(request)
            return Response(self.error_html(429), status_code=429, media_type="text/html",
                            headers={"retry-after": str(self.settings.serve.signup_window)})
        form = await _form(request)
        if form is None:
            return self.error(400)
        if not self.csrf.valid(request, form):
            return self.error(403, link_url=request.url.path, link_text="Zum Anmeldeformular")
        values = {"email": _clean(str(form.get("email") or ""), 254),
                  "name": _clean(str(form.get("name") or ""), 100)}
        if form.get("website"):
            # A bot filled the honeypot: answer exactly like a real sign-up, do nothing.
            return self.signup_done()
        errors, invalid = [], set()
        email = ""
        try:  # a syntax check only, the same answer whether the address is known or not
            email = normalize_email(values["email"])
        except NonAsciiLocalPart:
            errors.append(UMLAUT_EMAIL)
            invalid.add("email")
        except InvalidEmail:
            errors.append(BAD_EMAIL)
            invalid.add("email")
        if form.get("consent") is None:
            errors.append("Bitte bestätigen Sie die Einwilligung, um den Newsletter zu erhalten.")
            invalid.add("consent")
        if errors:
            return self.subscribe_form(request, info, values, errors, invalid, status=400)

        try:
            result = await self.db(
                self.store.request_subscription, email, info.id, name=values["name"] or None,
                source=SOURCE_FORM, ip=ip, consent_version=self.settings.serve.consent_version)
        except InvalidEmail:
            return self.subscribe_form(request, info, values, [BAD_EMAIL], {"email"}, status=400)
        task = None
        mail_key = hashlib.sha256(email.lower().encode()).hexdigest()
        if result.send_confirmation and result.subscriber_id is not None and self.mails.hit(mail_key):
            assert result.token_id is not None
            token = self.tokens.confirm(result.token_id, info.id)
            task = BackgroundTask(self.send_confirmation, email, info, token)
        return self.signup_done(task)

    def subscribe_form(self, request: Request, info: ListInfo, values: dict[str, str], errors: list[str],
                       invalid: set[str], status: int = 200) -> Response:
        csrf, nonce = self.csrf.issue(request)
        s = self.settings.serve
        page = self.page("subscribe.html", http_status=status, list_title=info.title, action=request.url.path,
                         csrf=csrf, values=values, errors=errors, invalid=invalid,
                         consent_text=s.consent_text, consent_version=s.consent_version)
        return self.csrf.set_cookie(page, nonce)

    def signup_done(self, task: BackgroundTask | None = None) -> Response:
        page = self.page("subscribe_sent.html", confirm_days=self.settings.serve.confirm_days)
        page.background = task
        return page

    def send_confirmation(self, email: str, info: ListInfo, token: str) -> None:
        from newsletter.delivery.transport import send_message_now

        try:
            send_message_now(self.project, self.confirmation_message(email, info, token))
        except Exception as exc:  # the reader already has their page; the log must not name them
            log.warning("confirmation mail not sent: %s: %s", type(exc).__name__,
                        _EMAIL.sub("…", str(exc)))

    def confirmation_message(self, email: str, info: ListInfo, token: str) -> EmailMessage:
        s = self.settings
        # The name typed into the form stays out of the mail: confirmation mails must not carry
        # a stranger's text (a known way to send spam through sign-up forms).
        values = self.context(list_title=info.title, confirm_days=s.serve.confirm_days,
                              confirm_url=f"{self.base_url}/confirm/{token}")
        message = EmailMessage()
        message["Subject"] = _clean(self.env.get_template("confirm/subject.txt").render(values), 200)
        message["From"] = s.newsletter.from_
        # The address alone: a name typed into a form never goes into a header. An IDN domain
        # goes in as punycode (the email package would put an encoded word into the domain).
        message["To"] = ascii_email(email)
        if s.newsletter.reply_to:
            message["Reply-To"] = s.newsletter.reply_to
        message["Date"] = format_datetime(datetime.now(UTC))
        domain = parseaddr(s.newsletter.from_)[1].rpartition("@")[2] or None
        message["Message-ID"] = make_msgid(domain=domain)
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(self.env.get_template("confirm/mail.txt").render(values),
                            cte="quoted-printable")
        message.add_alternative(self.env.get_template("confirm/mail.html").render(values),
                                subtype="html", cte="quoted-printable")
        return message

    async def confirm(self, request: Request) -> Response:
        try:
            ref, list_id = self.tokens.read_confirm(request.path_params["token"],
                                                    self.confirm_max_age)
        except TokenExpired:
            await _drain(request)
            return self.error(410, link_url="/subscribe", link_text="Zur Anmeldung")
        except TokenInvalid:
            await _drain(request)
            return self.error(400)
        found = await self.db(self.membership, ref, list_id)
        if found is None:
            await _drain(request)
            return self.error(404)
        subscriber_id, status, info = found
        subscribe_url = await self.db(self.subscribe_url, info)
        if request.method == "GET":
            if status == "subscribed":
                return self.page("confirmed.html", list_title=info.title, status=status,
                                 archive_url="/archive/", subscribe_url=subscribe_url)
            csrf, nonce = self.csrf.issue(request)
            page = self.page("confirm.html", list_title=info.title, action=request.url.path, csrf=csrf)
            return self.csrf.set_cookie(page, nonce)
        form = await _form(request)
        if form is None:
            return self.error(400)
        if not self.csrf.valid(request, form):
            return self.error(403, link_url=request.url.path, link_text="Zurück zur Bestätigung")
        ip = client_ip(request.scope, self.trusted)
        await self.db(self.store.confirm, subscriber_id, list_id, source=SOURCE_CONFIRM, ip=ip)
        status = await self.db(self.store.membership_status, subscriber_id, list_id)
        return self.page("confirmed.html", list_title=info.title, status=status,
                         archive_url="/archive/", subscribe_url=subscribe_url)


def _retry_locked(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """SQLite may answer "database is locked" under write bursts; retry briefly."""
    for attempt in range(8):
        try:
            return fn(*args, **kwargs)
        except OperationalError as exc:
            if not isinstance(exc.orig, sqlite3.OperationalError) or "locked" not in str(exc.orig) \
                    or attempt == 7:
                raise
            log.warning("database is locked; retrying")
            time.sleep(0.02 * 2 ** attempt)
    raise AssertionError("unreachable")


async def _form(request: Request) -> FormData | None:
    """The posted form (url-encoded or multipart, no files), or None if unparseable."""
    try:
        return await request.form(max_files=0, max_fields=20, max_part_size=8192)
    except _BodyTooLarge:
        raise
    except Exception:
        return None


async def _drain(request: Request) -> None:
    """Read (and bound) an unused body so the connection stays reusable."""
    if request.method == "POST":
        async for _ in request.stream():
            pass


def template_environment(project: Project) -> Environment:
    """Project `templates/` first (e.g. templates/web/unsubscribe.html), then the packaged
    defaults, which an override can extend as "default:web/base.html"."""
    default = PackageLoader("newsletter", "templates")
    loaders: list[Any] = [default, PrefixLoader({"default": default}, delimiter=":")]
    if project.templates_dir.is_dir():
        loaders.insert(0, FileSystemLoader(str(project.templates_dir)))
    return Environment(loader=ChoiceLoader(loaders),
                       autoescape=select_autoescape(["html"], default_for_string=False),
                       keep_trailing_newline=True)


def create_app(project: Project, *, proxy_headers: bool = True) -> Starlette:
    """The ASGI app of `newsletter serve` for one project.

    With `proxy_headers`, X-Forwarded-For is believed from peers in `serve.trusted_proxies`.
    """
    site = Site(project, proxy_headers=proxy_headers)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return site.error(status if status in ERRORS else 404)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        close = getattr(site.store, "close", None)
        if close:
            close()

    routes = [
        Route("/healthz", site.healthz, methods=["GET"]),
        Route("/u/test", site.unsubscribe_test, methods=["GET", "POST"]),
        Route("/u/{token}", site.unsubscribe, methods=["GET", "POST"]),
        Route("/subscribe", site.subscribe, methods=["GET", "POST"]),
        Route("/subscribe/{list}", site.subscribe, methods=["GET", "POST"]),
        Route("/confirm/{token}", site.confirm, methods=["GET", "POST"]),
        Route("/archive", site.archive_redirect, methods=["GET"]),
        Route("/archive/{path:path}", site.archive, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: not_found, 405: not_found, 400: not_found})
    app.add_middleware(Guard, max_body=project.settings.serve.max_body_bytes,
                       hsts=site.base_url.startswith("https://"), error_page=site.error_html)
    app.state.site = site
    return app


def run(project: Project, host: str, port: int, *, proxy_headers: bool = True) -> None:
    """Serve until interrupted (the body of `newsletter serve`)."""
    server = make_server(project, host, port, proxy_headers=proxy_headers)
    server.run()


def make_server(project: Project, host: str, port: int, *, proxy_headers: bool = True,
                log_level: str = "info") -> Any:
    """A uvicorn server for the project. Uvicorn's own access log is off: it would log tokens."""
    import uvicorn

    trusted = project.settings.serve.trusted_proxies
    config = uvicorn.Config(
        create_app(project, proxy_headers=proxy_headers), host=host, port=port, access_log=False,
        log_level=log_level, proxy_headers=proxy_headers and bool(trusted),
        forwarded_allow_ips=",".join(trusted) or None, server_header=False,
        limit_concurrency=1000, timeout_keep_alive=5, h11_max_incomplete_event_size=16384,
    )
    return uvicorn.Server(config)


__all__ = ["NewsletterError", "create_app", "make_server", "run"]
