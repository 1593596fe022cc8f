"""The preference centre of `newsletter serve`: `/p/<token>`, a member's page without account or
password (docs/web.md "Preference centre").

    GET  /p/{token}              the page: per list topics and pause, the name, links to the data
    POST /p/{token}              one change (field `change`: topics | pause | resume | name), CSRF;
                                 answered with a redirect (303) to the page saying what was saved,
                                 or the page with the field's error (400)
    GET  /p/{token}/daten        everything stored, as a page (GDPR Art. 15)
    GET  /p/{token}/export.json  the same as a JSON download
    GET  /p/{token}/loeschen     "delete all data?" with the form that does it
    POST /p/{token}/loeschen     the erasure (`Store.forget`, Art. 17), CSRF; then the done page

The token (`Tokens.mint_preferences`) names the subscriber by token_id and never expires. A bad
token answers 400, the token of an erased person (or any unknown token_id) 410. GET changes
nothing. Writes run alone in the process's writer (`Writer.alone`) like sign-up and confirm;
the rules are `newsletter.audience.preferences`.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from newsletter.audience.names import InvalidName
from newsletter.audience.preferences import PAUSE_MONTHS, ExportPart, PreferenceError, Preferences
from newsletter.delivery.records import person_deliveries
from newsletter.feedback.ledger import person_events
from newsletter.tokens import TokenInvalid
from newsletter.web.security import client_ip
from newsletter.web.site import Site, drain, read_form

# Codes of what a POST saved (`?ok=`) and of the name field's error, worded by
# templates/web/preferences_messages.html.
SAVED = ("topics", "pause", "resume", "name")
NAME_INVALID = "name_invalid"
MAX_NAME_INPUT = 1000  # characters read from the field; `clean_name` refuses over 100 anyway
EXPORT_FILE = "newsletter-daten.json"


# What the other packages store about a person, read by their own queries (GDPR Art. 15).
EXPORT_PARTS: tuple[ExportPart, ...] = (("deliveries", person_deliveries), ("feedback_events", person_events))


class PreferenceCentre:
    """The handlers of `/p/…`, sharing the `Site`'s store, writer, tokens, CSRF and pages."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.preferences = Preferences(site.store, site.settings.topics)

    def routes(self) -> list[Route]:
        return [
            # The link in test sends (`newsletter send --to`): a page that changes nothing.
            Route("/p/test", self.test_page, methods=["GET", "POST"]),
            Route("/p/{token}", self.page, methods=["GET", "POST"]),
            Route("/p/{token}/daten", self.data_page, methods=["GET"]),
            Route("/p/{token}/export.json", self.export_json, methods=["GET"]),
            Route("/p/{token}/loeschen", self.delete_page, methods=["GET", "POST"]),
        ]

    async def test_page(self, request: Request) -> Response:
        """`/p/test`: the link in test sends (`newsletter send --to`); changes nothing."""
        await drain(request)
        return self.site.pages.page("preferences_test.html")

    # ---- the person behind a link

    async def subscriber(self, request: Request) -> int | Response:
        """The subscriber id the URL's token names, or the error page to answer with (the body of
        a POST read and dropped)."""
        try:
            token_id = self.site.tokens.read_preferences(request.path_params["token"])
        except TokenInvalid:
            await drain(request)
            return self.site.pages.error(400)
        found = await self.site.db(self.site.store.subscriber_by_token_id, token_id)
        if found is None:
            await drain(request)
            return self.site.pages.page("preferences_gone.html", http_status=410)
        return found.id

    def base(self, request: Request) -> str:
        """`/p/{token}`: where the page's links and forms point (relative to this site)."""
        return f"/p/{request.path_params['token']}"

    # ---- handlers

    async def page(self, request: Request) -> Response:
        """`/p/{token}`: GET the page; POST one change, then back to the page."""
        found = await self.subscriber(request)
        if isinstance(found, Response):
            return found
        if request.method == "GET":
            saved = request.query_params.get("ok")
            return await self.show(request, found, saved=saved if saved in SAVED else None)
        form = await read_form(request)
        if form is None:
            return self.site.pages.error(400)
        if not self.site.csrf.valid(request, form):
            return self.site.pages.error(403)
        change = form.get("change")
        ip = client_ip(request.scope, self.site.trusted)
        try:
            if change == "name":
                raw = str(form.get("name") or "")[:MAX_NAME_INPUT]
                try:
                    await self.site.writer.alone(self.preferences.rename, found, raw, ip=ip)
                except InvalidName:
                    return await self.show(request, found, name_value=raw, name_error=NAME_INVALID)
            elif change == "topics":
                topics = [str(k) for k in form.getlist("topic")]
                await self.site.writer.alone(self.preferences.choose_topics, found, _list_id(form), topics,
                                             ip=ip)
            elif change == "pause":
                months = _int(form.get("months"))
                if months not in PAUSE_MONTHS:
                    raise PreferenceError("no such pause")
                await self.site.writer.alone(self.preferences.pause, found, _list_id(form), months, ip=ip)
            elif change == "resume":
                await self.site.writer.alone(self.preferences.resume, found, _list_id(form), ip=ip)
            else:
                return self.site.pages.error(400)
        except PreferenceError:
            return self.site.pages.error(400)
        return RedirectResponse(f"{self.base(request)}?ok={change}", status_code=303)

    async def show(self, request: Request, subscriber_id: int, *, saved: str | None = None,
                   name_value: str | None = None, name_error: str | None = None) -> Response:
        overview = await self.site.db(self.preferences.overview, subscriber_id)
        if overview is None:
            return self.site.pages.page("preferences_gone.html", http_status=410)
        csrf, nonce = self.site.csrf.issue(request)
        base = self.base(request)
        page = self.site.pages.page(
            "preferences.html", http_status=400 if name_error else 200, action=base,
            data_url=f"{base}/daten", export_url=f"{base}/export.json", delete_url=f"{base}/loeschen",
            csrf=csrf, lists=overview.lists,
            person_name=overview.name if name_value is None else name_value,
            name_error=name_error, saved=saved, pause_months=PAUSE_MONTHS)
        return self.site.csrf.set_cookie(page, nonce)

    async def export(self, request: Request) -> dict[str, Any] | Response:
        found = await self.subscriber(request)
        if isinstance(found, Response):
            return found
        data = await self.site.db(self.preferences.export, found, EXPORT_PARTS)
        if data is None:
            return self.site.pages.page("preferences_gone.html", http_status=410)
        return data

    async def data_page(self, request: Request) -> Response:
        """`/p/{token}/daten`: everything stored about the person, readable (GDPR Art. 15)."""
        data = await self.export(request)
        if isinstance(data, Response):
            return data
        base = self.base(request)
        return self.site.pages.page("preferences_data.html", data=data, back_url=base,
                                    export_url=f"{base}/export.json")

    async def export_json(self, request: Request) -> Response:
        """`/p/{token}/export.json`: the same as a download."""
        data = await self.export(request)
        if isinstance(data, Response):
            return data
        body = json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n"
        return Response(body, media_type="application/json; charset=utf-8",
                        headers={"content-disposition": f'attachment; filename="{EXPORT_FILE}"'})

    async def delete_page(self, request: Request) -> Response:
        """`/p/{token}/loeschen`: GET asks (a form); only its POST erases."""
        found = await self.subscriber(request)
        if isinstance(found, Response):
            return found
        if request.method == "GET":
            csrf, nonce = self.site.csrf.issue(request)
            page = self.site.pages.page("preferences_delete.html", action=request.url.path, csrf=csrf,
                                        back_url=self.base(request))
            return self.site.csrf.set_cookie(page, nonce)
        form = await read_form(request)
        if form is None:
            return self.site.pages.error(400)
        if not self.site.csrf.valid(request, form):
            return self.site.pages.error(403)
        await self.site.writer.alone(self.preferences.forget, found)
        return self.site.pages.page("preferences_deleted.html")


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _list_id(form: FormData) -> int:
    list_id = _int(form.get("list"))
    if list_id is None:
        raise PreferenceError("no list")
    return list_id


__all__ = ["EXPORT_PARTS", "NAME_INVALID", "SAVED", "PreferenceCentre"]
