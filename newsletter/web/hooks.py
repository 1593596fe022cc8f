"""`/hooks/<provider>`: bounce and complaint events pushed by a sending provider.

The request is authenticated and parsed by `feedback.webhooks.handle` (no database, may fetch
the SNS certificate: in a worker thread); each event is taken in by the feedback ledger through
the process's writer (`Writer.alone`: serialised with the one-click batches, never competing
with them for SQLite's lock). The provider's event id is the ledger's key, so a retried or
replayed event is answered 200 and changes nothing. Unauthenticated or malformed requests get
the status the provider expects (401/400/413; 404 for a provider that is not configured) and
change nothing. An SNS subscription confirmation is visited once, after its signature checked.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio.to_thread
import httpx
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from newsletter.feedback.intake import ledger_for, provider_event
from newsletter.feedback.webhooks import MAX_BODY, HookSettings, WebhookRejected, fetch_certificate, handle

if TYPE_CHECKING:
    from newsletter.web.site import Site

log = logging.getLogger("newsletter.serve")

# The body limit of these routes (the other routes keep `serve.max_body_bytes`).
HOOKS_PREFIX = "/hooks/"
HOOKS_MAX_BODY = MAX_BODY


class Hooks:
    def __init__(self, site: Site) -> None:
        bounces = site.project.settings.bounces
        self.site = site
        self.settings = HookSettings.from_config(bounces.hooks, bounces.address)
        self.ledger = ledger_for(site.project, site.store)

    async def hook(self, request: Request) -> Response:
        provider = request.path_params["provider"]
        body = await request.body()
        headers = dict(request.headers)
        now = datetime.now(UTC)
        try:
            result = await anyio.to_thread.run_sync(
                lambda: handle(provider, headers, body, settings=self.settings, now=now,
                               fetch_cert=fetch_certificate))
        except WebhookRejected as rejected:
            log.warning("POST /hooks/%s %d: %s", provider[:20], rejected.status, rejected.reason)
            return PlainTextResponse(rejected.reason, status_code=rejected.status,
                                     headers=dict(rejected.headers or {}))
        if result.confirm_url:
            await anyio.to_thread.run_sync(_visit, result.confirm_url)
        outcomes = [await self.site.writer.alone(self.ledger.take, provider_event(provider, event))
                    for event in result.events]
        log.info("POST /hooks/%s 200: %s", provider, ", ".join(t.outcome for t in outcomes) or "no events")
        return PlainTextResponse("ok")


def _visit(url: str) -> None:
    """Confirm an SNS subscription (the URL was checked against the SNS hosts by `handle`)."""
    try:
        httpx.get(url, timeout=10, follow_redirects=False).raise_for_status()
    except httpx.HTTPError as exc:
        log.error("confirming the SNS subscription failed: %s", type(exc).__name__)
