"""Rendering the pages of `newsletter serve` with the one Jinja environment
(`newsletter.render.templates.environment`) and its shared context.

The words readers see live in templates, not in Python; Python passes codes and values:

* `templates/web/*.html`: the pages (unsubscribe, subscribe, confirm, …);
* `templates/web/error.html`: the error pages, worded by HTTP status (`http_status`), with an
  optional way back (`link`, a code, to `link_url`);
* `templates/web/messages.html`: the sign-up form's error messages, by code (`FORM_ERRORS`);
* `templates/confirm/*`: the confirmation mail (see `newsletter.web.confirmation`).

A project's `templates/` directory overrides any of them (and can extend the packaged one as
"default:web/base.html").
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from starlette.responses import HTMLResponse

from newsletter.project import Project
from newsletter.render.templates import base_context, environment, render

# The statuses templates/web/error.html words; any other gets the text of 500.
ERROR_PAGES = frozenset({400, 403, 404, 405, 410, 413, 429, 500})
# Codes of the sign-up form's errors (worded in templates/web/messages.html).
EMAIL_INVALID = "email_invalid"
EMAIL_UMLAUT = "email_umlaut"  # umlauts before the @ need SMTPUTF8, which most mail servers lack
CONSENT_MISSING = "consent_missing"
FORM_ERRORS = (EMAIL_INVALID, EMAIL_UMLAUT, CONSENT_MISSING)
# Codes of the links back that an error page may offer (worded in templates/web/error.html).
LINK_SUBSCRIBE_FORM = "subscribe_form"  # "Zum Anmeldeformular"
LINK_SUBSCRIBE = "subscribe"  # "Zur Anmeldung"
LINK_CONFIRM_FORM = "confirm_form"  # "Zurück zur Bestätigung"

CACHED_PAGES = 256  # rendered pages kept (list titles × statuses, error pages)


class Pages:
    """Renders `templates/web/*` (and the confirmation mail's templates) with the values every
    template shares (`base_context`: language, titles, theme, imprint, public URLs).

    The environment is the one of `newsletter.render.templates`, taken once at start-up (as the
    server always did: a changed override takes effect on restart). It has StrictUndefined, so
    every optional value a page uses is passed, as None if need be."""

    def __init__(self, project: Project) -> None:
        self.env = environment(project)
        self.base = base_context(project)
        # Pages that depend on a few values only (the one-click answer: list title and status)
        # are rendered once: the hot path of one-click unsubscribes should not run Jinja.
        self._rendered = lru_cache(maxsize=CACHED_PAGES)(self._render_items)

    def _render_items(self, name: str, items: tuple[tuple[str, Any], ...]) -> bytes:
        return self.render(name, **dict(items)).encode()

    def context(self, **values: Any) -> dict[str, Any]:
        return {**self.base, **values}

    def render(self, name: str, **values: Any) -> str:
        """Any template by its full name, e.g. "confirm/mail.txt"."""
        return render(self.env, name, self.context(**values))

    def page(self, name: str, http_status: int = 200, **values: Any) -> HTMLResponse:
        """`templates/web/<name>` as a response."""
        return HTMLResponse(self.render(f"web/{name}", **values), status_code=http_status)

    def cached_page(self, name: str, http_status: int = 200, **values: str | None) -> HTMLResponse:
        """`page` for a page whose values are a few strings (no token, no CSRF): rendered once per
        set of values, as the templates are read once at start-up anyway."""
        return HTMLResponse(self._rendered(f"web/{name}", tuple(sorted(values.items()))),
                            status_code=http_status)

    def error_html(self, status: int, *, link: str | None = None, link_url: str | None = None) -> bytes:
        """The error page for an HTTP status, optionally with a link back (`LINK_*`)."""
        return self._rendered("web/error.html", (("http_status", status), ("link", link),
                                                 ("link_url", link_url)))

    def error(self, status: int, *, link: str | None = None, link_url: str | None = None) -> HTMLResponse:
        return HTMLResponse(self.error_html(status, link=link, link_url=link_url), status_code=status)
