"""500 one-click unsubscribes and 500 sign-ups at once against the running server:
every one answered without error and recorded, none lost."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import test_serve
from test_serve import ServeFactory, csrf_of, wait_for

from newsletter.audience.store import Store

serve = test_serve.serve  # the real-server fixture

N = 500
CONCURRENCY = 50
# One connection per request, as 1,000 different readers and mail servers would open, and never
# an idle one reused: with httpx's defaults a connection idle for about 5 s was reused just as
# the server's keep-alive timer (web.app.KEEP_ALIVE_SECONDS, also 5 s) closed it, and the POST died with
# httpx.ReadError (once in three loaded runs). No client can avoid that race except by giving up
# idle connections before the server does; not reusing them at all rules it out.
LIMITS = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=0)


async def test_500_unsubscribes_and_500_sign_ups_at_once(
    serve: ServeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    served = serve()
    store: Store = served.store
    members = [served.add(f"leser{i}@example.org") for i in range(N)]
    tokens = [served.tokens.mint_unsubscribe(served.token_id(sid), served.list_id) for sid in members]
    gate = asyncio.Semaphore(CONCURRENCY)

    async with httpx.AsyncClient(base_url=served.url, timeout=60, limits=LIMITS) as client, \
            httpx.AsyncClient(base_url=served.url, timeout=60, limits=LIMITS) as mail_provider:
        form = await client.get("/subscribe")
        csrf = csrf_of(form)

        async def unsubscribe(token: str) -> httpx.Response:
            async with gate:  # like a mail provider: no cookies, nothing but the body
                return await mail_provider.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})

        async def sign_up(i: int) -> httpx.Response:
            async with gate:
                # Each reader behind the trusted proxy 127.0.0.1 with their own address.
                return await client.post(
                    "/subscribe", headers={"x-forwarded-for": f"198.18.{i // 250}.{i % 250 + 1}"},
                    data={"csrf": csrf, "email": f"neu{i}@example.org", "consent": "1", "website": ""})

        jobs = [unsubscribe(t) for t in tokens] + [sign_up(i) for i in range(N)]
        responses = await asyncio.gather(*jobs)

    assert [r.status_code for r in responses] == [200] * (2 * N)
    assert "locked" not in caplog.text  # no write waited out SQLite's busy timeout
    assert all("location" not in r.headers for r in responses)
    assert [served.status(sid) for sid in members] == ["unsubscribed"] * N
    # The sign-ups' store work runs after their answers (no timing signal): wait until it is done.
    served.wait_for_sign_ups(N)
    assert len(store.members(served.list_id, status="pending")) == N
    for sid in members[::50]:
        assert [e.source for e in store.history(sid)][-1] == "one_click"
    # Every confirmation mail went out (the local Maildir outbox: no SMTP host configured).
    outbox = served.project.outbox_dir
    wait_for(lambda: len([p for p in outbox.glob("*/*") if p.is_file()]) == N, timeout=60)


async def test_the_clients_above_never_reuse_a_connection(serve: ServeFactory) -> None:
    """What rules out the keep-alive race: every request of the clients above has a connection
    of its own."""
    served = serve()
    ports = set()
    async with httpx.AsyncClient(base_url=served.url, timeout=30, limits=LIMITS) as client:
        for _ in range(3):
            async with client.stream("GET", "/healthz") as response:
                ports.add(response.extensions["network_stream"].get_extra_info("client_addr")[1])
                await response.aread()
    assert len(ports) == 3
