"""The request handlers of `newsletter serve`: unsubscribe, subscribe, confirm, health.

Each handler is named after the page it serves. The rules of membership (who may leave, who
gets a confirmation mail, what a confirmation changes) belong to `Store`; the handlers read
the request, check tokens, CSRF and limits, call the store, and pick the page.

* GET never changes state (link scanners and prefetchers open every link).
* Unsubscribe: RFC 8058 one-click and the page's button, without CSRF token or cookie (the
  signed token in the URL is the secret); one-click is answered 200 without redirect.
* `/u/test` (the link in test sends) shows a page and changes nothing.
* Sign-up: the same page whether the address is new, pending, subscribed or suppressed, and the
  same work before it: the store call and the confirmation mail run in a background task after
  the page went out, so the response time does not tell either.
* Health: `/healthz` commits a write (`newsletter.db.health.probe`) through the writer, the
  path unsubscribes take; a database that cannot write (full disk) makes it answer 503.

Writes go through the process's one `Writer` (`web/writer.py`, group commit): unsubscribes,
rate-limit hits and the health probe inside its batch transaction; `Store.request_subscription`
and `Store.confirm` alone in its thread. Reads run in worker threads (at most `READ_THREADS`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote

import anyio
import anyio.to_thread
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from starlette.background import BackgroundTask
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from newsletter.audience.addresses import (
    InvalidEmail,
    NonAsciiLocalPart,
    normalize_email,
    suppression_hash,
)
from newsletter.audience.leaving import Leave, leave_batch
from newsletter.audience.records import MailingList
from newsletter.audience.store import open_store
from newsletter.db.engine import DatabaseError
from newsletter.db.health import probe
from newsletter.project import Project
from newsletter.tokens import TokenExpired, TokenInvalid, Tokens, signing_keys
from newsletter.web.confirmation import send_confirmation
from newsletter.web.limits import SWEEP_EVERY, Limit, sweep
from newsletter.web.pages import (
    CONSENT_MISSING,
    EMAIL_INVALID,
    EMAIL_UMLAUT,
    LINK_CONFIRM_FORM,
    LINK_SUBSCRIBE,
    LINK_SUBSCRIBE_FORM,
    Pages,
)
from newsletter.web.security import BodyTooLarge, Csrf, client_ip, one_line, parse_networks
from newsletter.web.writer import Writer

log = logging.getLogger("newsletter.serve")

MAILS_PER_ADDRESS = 3  # confirmation mails per address and day: no mail-bombing a stranger
ONE_CLICK = "One-Click"
URLENCODED = "application/x-www-form-urlencoded"

SOURCE_ONE_CLICK = "one_click"
SOURCE_PAGE = "unsubscribe_page"
SOURCE_FORM = "web"
SOURCE_CONFIRM = "confirm"

# Worker threads for reads at once: below the engine's pool (5 kept, 15 at most), with room for
# the writer's connection and a `Store` write of its own, so no thread ever waits for a
# connection from the pool; further requests wait on the event loop instead.
READ_THREADS = 8

T = TypeVar("T")

_EMAIL = re.compile(r"[^\s<>]+@[^\s<>]+")


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
        # Shared by every worker process (and machine) through the database: web/limits.py.
        self.signups = Limit("signup", settings.serve.signups_per_ip, settings.serve.signup_window)
        self.mails = Limit("mail", MAILS_PER_ADDRESS, 24 * 3600)
        self.writer = Writer(self.store.engine)
        self.csrf = Csrf(signing_keys(project), secure=self.base_url.startswith("https://"))
        self.pages = Pages(project)
        self._health: asyncio.Future[bool] | None = None
        self._reads = anyio.CapacityLimiter(READ_THREADS)
        self._swept = 0.0
        self._sweep_lock = threading.Lock()

    def close(self) -> None:
        """Finish the queued writes, then close the database."""
        self.writer.close()
        self.store.close()

    # ---- store access (sync SQLAlchemy, so off the event loop)

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A read in a worker thread. A locked SQLite database is waited for by SQLite itself
        (busy_timeout); what is still locked after that is an error for the page, never retried
        here (docs/data-model.md)."""
        return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=self._reads)

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

    def membership(self, ref: str | int, list_id: int) -> tuple[int, str, ListInfo] | None:
        """(subscriber id, status, list) a token names (see `Store.membership_by_token_id`)."""
        found = self.store.membership_by_token_id(ref, list_id)
        info = self.list_info(list_id) if found else None
        return (*found, info) if found and info else None

    def leave(self, conn: Connection, items: list[Leave]) -> list[tuple[ListInfo, str] | None]:
        """A bulk writer job: `leave_batch` (which reads the lists' titles with the memberships);
        per item (list, status before) or None when the link names no membership."""
        results: list[tuple[ListInfo, str] | None] = []
        infos: dict[tuple[int, str, str | None], ListInfo] = {}
        for item, left in zip(items, leave_batch(conn, items), strict=True):
            if left is None:
                results.append(None)
                continue
            key = (item.list_id, left.list_name, left.list_title)
            info = infos.get(key)
            if info is None:
                info = infos[key] = self._info(MailingList(item.list_id, left.list_name, left.list_title))
            results.append((info, left.status))
        return results

    def count_hit(self, conn: Connection, limit: Limit, key: str) -> bool:
        """A writer job: one hit of a rate limit; False when over it. Sweeps expired counters
        now and then (in this batch's transaction: no write of its own)."""
        now = time.time()
        with self._sweep_lock:
            due = now - self._swept >= SWEEP_EVERY
            if due:
                self._swept = now
        if due:
            sweep(conn, now)
        return limit.hit(conn, key, now)

    # ---- handlers

    async def healthz(self, request: Request) -> Response:
        """`/healthz`: "ok" while the database commits a write; 503 when it cannot (a full disk
        makes every unsubscribe fail, so the service is not healthy)."""
        # Requests arriving while a probe runs share its answer: a flood of /healthz cannot queue
        # up writes and fsyncs.
        if self._health is None or self._health.done():
            self._health = asyncio.ensure_future(self.database_writable())
        if await asyncio.shield(self._health):
            return PlainTextResponse("ok")
        return PlainTextResponse("database not writable", status_code=503)

    async def database_writable(self) -> bool:
        """`probe` committed by the writer; a failure is logged (it names no one)."""
        try:
            await self.writer.write(_probe)
        except (DatabaseError, sa.exc.SQLAlchemyError) as exc:
            log.error("health check failed: %s", getattr(exc, "orig", None) or exc)
            return False
        return True

    async def unsubscribe_page(self, request: Request) -> Response:
        """`/u/{token}`: GET shows the page with its button; POST unsubscribes (the button, or
        RFC 8058 one-click with `List-Unsubscribe=One-Click`)."""
        token = request.path_params["token"]
        try:
            ref, list_id = self.tokens.read_unsubscribe(token)
        except TokenInvalid:
            await drain(request)
            return self.pages.error(400)
        if request.method == "GET":
            found = await self.db(self.membership, ref, list_id)
            if found is None:
                return self.pages.error(404)
            _subscriber_id, status, info = found
            return self.pages.page("unsubscribe.html", list_title=info.title, status=status,
                                   action=request.url.path)
        form = await read_form(request)
        if form is None:
            return self.pages.error(400)
        # No CSRF check, for the human form either: the signed token in the URL is the secret
        # (whoever has it could post the one-click form anyway), and readers who block cookies
        # must still be able to leave.
        one_click = form.get("List-Unsubscribe") == ONE_CLICK
        ip = client_ip(request.scope, self.trusted)
        # Answered only after the writer's commit: a 200 means it is on disk.
        left = await self.writer.write_many(
            self.leave, Leave(ref, list_id, SOURCE_ONE_CLICK if one_click else SOURCE_PAGE, ip))
        if left is None:
            return self.pages.error(404)
        info, before = left
        subscribe_url = None if one_click else await self.db(self.subscribe_url, info)
        return self.pages.cached_page("unsubscribed.html", list_title=info.title, status=before,
                                      subscribe_url=subscribe_url)

    async def unsubscribe_test_page(self, request: Request) -> Response:
        """`/u/test`: the link in test sends (`newsletter send --to`); changes nothing."""
        await drain(request)
        return self.pages.page("unsubscribe_test.html")

    async def subscribe_page(self, request: Request) -> Response:
        """`/subscribe` and `/subscribe/{list}`: the form (GET), a sign-up (POST), or with several
        lists and no name the choice of list."""
        name = request.path_params.get("list")
        lists = await self.db(self.all_lists)
        if name is None:
            if len(lists) > 1:
                if request.method == "POST":
                    await drain(request)
                    return self.pages.error(404)
                titles = Counter(i.title for i in lists)  # untitled lists: tell them apart
                choices = [{"url": f"/subscribe/{quote(i.name, safe='')}",
                            "title": i.title if titles[i.title] == 1 else f"{i.title} ({i.name})"}
                           for i in lists]
                return self.pages.page("subscribe_lists.html", lists=choices)
            info = lists[0] if lists else None
        else:
            info = next((i for i in lists if i.name == name), None)
        if info is None:
            await drain(request)
            return self.pages.error(404)
        if request.method == "GET":
            return self.subscribe_form(request, info, {"email": "", "name": ""}, [], set())
        return await self.sign_up(request, info)

    async def sign_up(self, request: Request, info: ListInfo) -> Response:
        """A posted subscribe form: limits, CSRF, honeypot and syntax checks, then the "check your
        inbox" page at once; `register_sign_up` does the rest after the page went out."""
        ip = client_ip(request.scope, self.trusted)
        if not await self.writer.write(self.count_hit, self.signups, ip):
            await drain(request)
            return Response(self.pages.error_html(429), status_code=429, media_type="text/html",
                            headers={"retry-after": str(self.settings.serve.signup_window)})
        form = await read_form(request)
        if form is None:
            return self.pages.error(400)
        if not self.csrf.valid(request, form):
            return self.pages.error(403, link=LINK_SUBSCRIBE_FORM, link_url=request.url.path)
        values = {"email": one_line(str(form.get("email") or ""), 254),
                  "name": one_line(str(form.get("name") or ""), 100)}
        if form.get("website"):
            # A bot filled the honeypot: answer exactly like a real sign-up, do nothing.
            return self.signup_done()
        errors, invalid = [], set()
        email = ""
        try:  # a syntax check only, the same answer whether the address is known or not
            email = normalize_email(values["email"])
        except NonAsciiLocalPart:
            errors.append(EMAIL_UMLAUT)
            invalid.add("email")
        except InvalidEmail:
            errors.append(EMAIL_INVALID)
            invalid.add("email")
        if form.get("consent") is None:
            errors.append(CONSENT_MISSING)
            invalid.add("consent")
        if errors:
            return self.subscribe_form(request, info, values, errors, invalid, status=400)
        # Nothing that depends on the address's state happens before the answer: the store work
        # took longer for a new address than for a subscribed one, which told them apart.
        return self.signup_done(BackgroundTask(self.register_sign_up, email, info, values["name"], ip))

    def register_sign_up(self, email: str, info: ListInfo, name: str, ip: str) -> None:
        """After the sign-up page went out (a background task, in a worker thread):
        `Store.request_subscription` and, when the store says so, the confirmation mail (at most
        MAILS_PER_ADDRESS a day). Never raises: a failure is logged without the address, the name
        or the client's IP (the reader already has their page and can sign up again)."""
        try:
            # Looked up now, not bound at start-up: tests watch the store's method.
            result = self.writer.alone_sync(
                self.store.request_subscription, email, info.id, name=name or None,
                source=SOURCE_FORM, ip=ip, consent_version=self.settings.serve.consent_version)
            # The mail limit counts per address, kept as its hash (the one of the suppression list).
            if result.send_confirmation and result.subscriber_id is not None:
                if not self.writer.write_sync(self.count_hit, self.mails, suppression_hash(email)):
                    log.info("confirmation mail not sent: daily limit of %d for the address reached",
                             MAILS_PER_ADDRESS)
                    return
                assert result.token_id is not None
                token = self.tokens.mint_confirm(result.token_id, info.id)
                send_confirmation(self.project, self.pages, email, info.title, token)
        except DatabaseError as exc:  # one line: the file, SQLite's reason, the remedy; nobody named
            log.error("sign-up to list %s not recorded: %s", info.name, exc)
        except Exception as exc:
            log.error("sign-up to list %s not recorded: %s\n%s", info.name,
                      anonymous_error(exc, email, name, ip),
                      "".join(traceback.format_tb(exc.__traceback__)).rstrip())

    def subscribe_form(self, request: Request, info: ListInfo, values: dict[str, str], errors: list[str],
                       invalid: set[str], status: int = 200) -> Response:
        """The form, with `errors` (codes, worded by templates/web/messages.html) and the names of
        the `invalid` fields."""
        csrf, nonce = self.csrf.issue(request)
        s = self.settings.serve
        page = self.pages.page("subscribe.html", http_status=status, list_title=info.title,
                               action=request.url.path, csrf=csrf, values=values, errors=errors,
                               invalid=invalid, consent_text=s.consent_text,
                               consent_version=s.consent_version)
        return self.csrf.set_cookie(page, nonce)

    def signup_done(self, task: BackgroundTask | None = None) -> Response:
        page = self.pages.page("subscribe_sent.html", confirm_days=self.settings.serve.confirm_days)
        page.background = task
        return page

    async def confirm_page(self, request: Request) -> Response:
        """`/confirm/{token}`: GET shows the button (or "confirmed"); the POST confirms."""
        try:
            ref, list_id, requested_at = self.tokens.read_confirm_issued(
                request.path_params["token"], self.confirm_max_age)
        except TokenExpired:
            await drain(request)
            return self.pages.error(410, link=LINK_SUBSCRIBE, link_url="/subscribe")
        except TokenInvalid:
            await drain(request)
            return self.pages.error(400)
        found = await self.db(self.membership, ref, list_id)
        if found is None:
            await drain(request)
            return self.pages.error(404)
        subscriber_id, status, info = found
        subscribe_url = await self.db(self.subscribe_url, info)
        if request.method == "GET":
            if status == "subscribed":
                return self.pages.page("confirmed.html", list_title=info.title, status=status,
                                       archive_url="/archive/", subscribe_url=subscribe_url)
            csrf, nonce = self.csrf.issue(request)
            page = self.pages.page("confirm.html", list_title=info.title, action=request.url.path, csrf=csrf)
            return self.csrf.set_cookie(page, nonce)
        form = await read_form(request)
        if form is None:
            return self.pages.error(400)
        if not self.csrf.valid(request, form):
            return self.pages.error(403, link=LINK_CONFIRM_FORM, link_url=request.url.path)
        ip = client_ip(request.scope, self.trusted)
        await self.writer.alone(self.store.confirm, subscriber_id, list_id, source=SOURCE_CONFIRM, ip=ip,
                                requested_at=requested_at)
        status = await self.db(self.store.membership_status, subscriber_id, list_id)
        return self.pages.page("confirmed.html", list_title=info.title, status=status,
                               archive_url="/archive/", subscribe_url=subscribe_url)


def _probe(conn: Connection) -> None:
    probe(conn)  # looked up at call time (tests replace it)


def anonymous_error(exc: BaseException, *private: str) -> str:
    """`Type: message` of `exc` for the log, without the `private` values or any address.

    For database errors the driver's message: SQLAlchemy's own repeats the bound parameters."""
    text = str(getattr(exc, "orig", None) or exc)
    for value in private:
        if value:
            text = text.replace(value, "…")
    return f"{type(exc).__name__}: {_EMAIL.sub('…', text)}"[:500]


async def read_form(request: Request) -> FormData | None:
    """The posted form (url-encoded or multipart, no files), or None if unparseable."""
    try:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() == URLENCODED:
            # What one-click POSTs send: parsed directly, a fraction of the multipart machinery.
            body = (await request.body()).decode("utf-8")
            return FormData(parse_qsl(body, keep_blank_values=True, max_num_fields=20))
        return await request.form(max_files=0, max_fields=20, max_part_size=8192)
    except BodyTooLarge:
        raise
    except Exception:
        return None


async def drain(request: Request) -> None:
    """Read (and bound) an unused body so the connection stays reusable."""
    if request.method == "POST":
        async for _ in request.stream():
            pass
