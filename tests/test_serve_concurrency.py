"""Concurrency of `newsletter serve` against the running server, on SQLite and PostgreSQL:
500 one-click unsubscribes and 500 sign-ups at once, every one answered without error and
recorded; the same link clicked many times at once changes once; one-clicks that arrive while
another process holds the write lock wait for it inside the writer and are all answered."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import pytest
import test_serve
from test_serve import Served, ServeFactory, csrf_of, wait_for

from newsletter.audience.store import Store

pytestmark = pytest.mark.backends

serve = test_serve.serve  # the real-server fixture
served = test_serve.served
ONE_CLICK = {"List-Unsubscribe": "One-Click"}

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


async def test_the_same_link_clicked_many_times_at_once_changes_once(served: Served) -> None:
    """Mail providers retry; scanners follow links twice. 40 posts of one token at once (many of
    them in the same group commit): all 200, one change, one consent-log entry."""
    sid = served.add("oft@example.org")
    token = served.tokens.mint_unsubscribe(served.token_id(sid), served.list_id)
    async with httpx.AsyncClient(base_url=served.url, timeout=60, limits=LIMITS) as client:
        answers = await asyncio.gather(*(client.post(f"/u/{token}", data=ONE_CLICK) for _ in range(40)))
    assert [a.status_code for a in answers] == [200] * 40
    assert served.status(sid) == "unsubscribed"
    assert [e.action for e in served.store.history(sid)].count("unsubscribed") == 1
    # One answer says "you unsubscribed", every other one "you had already unsubscribed".
    assert sum("bereits abgemeldet" not in a.text for a in answers) == 1


# Holds the database's write lock until a line arrives on stdin: a long import's publish, a
# `sqlite3` shell with an open transaction. On PostgreSQL the lock the import takes.
HOLD_LOCK = """
import sys
import sqlalchemy as sa
from newsletter.audience.store import open_store
from newsletter.project import open_project
store = open_store(open_project(sys.argv[1]))
with store.write() as conn:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("LOCK TABLE subscribers, memberships IN SHARE ROW EXCLUSIVE MODE"))
    else:
        conn.execute(sa.text("UPDATE lists SET title = title"))  # BEGIN IMMEDIATE has the lock
    print("locked", flush=True)
    sys.stdin.readline()
store.close()
print("released", flush=True)
"""


async def test_one_clicks_wait_for_another_writer_and_all_succeed(served: Served) -> None:
    """Another process holds the write lock (briefly — well within the busy timeout) while
    one-clicks arrive: they queue in the writer, none fails, each is answered once the lock is
    free and is then in the database."""
    members = [served.add(f"warte{i}@example.org") for i in range(30)]
    tokens = [served.tokens.mint_unsubscribe(served.token_id(sid), served.list_id) for sid in members]
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(served.project.root)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "locked"
        async with httpx.AsyncClient(base_url=served.url, timeout=60, limits=LIMITS) as client:
            posts = [asyncio.ensure_future(client.post(f"/u/{t}", data=ONE_CLICK)) for t in tokens]
            writer = served.site.writer
            # They are all inside the server, waiting for the writer's transaction (which
            # waits for the lock inside the database, not in a loop of ours).
            while writer.waiting < len(tokens):
                await asyncio.sleep(0.02)
            assert not any(p.done() for p in posts)  # nothing was answered before its commit
            holder.stdin.write("go\n")
            holder.stdin.flush()
            answers = await asyncio.gather(*posts)
        assert holder.stdout.readline().strip() == "released"
    finally:
        holder.kill()
        holder.wait()
    assert [a.status_code for a in answers] == [200] * len(tokens)
    assert [served.status(sid) for sid in members] == ["unsubscribed"] * len(members)
