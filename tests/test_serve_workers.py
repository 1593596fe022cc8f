"""`newsletter serve` as real processes, on SQLite and PostgreSQL: `--workers 2` shares its rate
limits and the daily confirmation-mail cap through the database, and a one-click answered 200
is in the database even when the server is killed (SIGKILL) right after answering."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ports import free_port
from test_serve import csrf_of, wait_for

from newsletter.audience.store import open_store
from newsletter.project import open_project
from newsletter.tokens import Tokens

pytestmark = pytest.mark.backends

ONE_CLICK = {"List-Unsubscribe": "One-Click"}


class Server:
    """`newsletter serve` in its own process group, its output in a file."""

    def __init__(self, project_dir: Path, tmp_path: Path, *, workers: int = 1, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"serve-{self.port}.log"
        environment = {**os.environ, "NEWSLETTER_NEWSLETTER__BASE_URL": self.url,
                       **{f"NEWSLETTER_{k.upper()}": v for k, v in env.items()}}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "newsletter", "serve", "--project", str(project_dir),
             "--port", str(self.port), "--workers", str(workers)],
            env=environment, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True)

        def up() -> bool:
            try:
                return httpx.get(f"{self.url}/healthz").status_code == 200
            except httpx.TransportError:
                assert self.process.poll() is None, self.output()
                return False

        wait_for(up, timeout=60)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture
def servers(project_dir: Path, tmp_path: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def _news(project_dir: Path) -> int:
    with open_store(open_project(project_dir)) as store:
        return store.create_list("news", "Nachrichten").id


def _form(url: str) -> tuple[str, str]:
    with httpx.Client(base_url=url) as client:
        page = client.get("/subscribe")
        return csrf_of(page), client.cookies["nl_csrf"]


async def _sign_ups(targets: list[tuple[str, tuple[str, str]]], sign_ups: list[tuple[str, str]]) -> list[int]:
    """Posted at once, each on a connection of its own, the i-th to the i-th target in turn
    ((url, its form's csrf and cookie) each: the servers are separate processes); (address,
    client address behind the trusted proxy 127.0.0.1) each."""
    limits = httpx.Limits(max_keepalive_connections=0)

    async def post(i: int, address: str, ip: str) -> int:
        url, (csrf, nonce) = targets[i % len(targets)]
        async with httpx.AsyncClient(base_url=url, cookies={"nl_csrf": nonce}, limits=limits,
                                     timeout=60) as client:
            answer = await client.post("/subscribe", headers={"x-forwarded-for": ip},
                                       data={"csrf": csrf, "email": address, "consent": "1", "website": ""})
            return answer.status_code

    return list(await asyncio.gather(*(post(i, address, ip) for i, (address, ip) in enumerate(sign_ups))))


def _two_servers(project_dir: Path, tmp_path: Path, servers: list[Server], **env: str) -> list[Server]:
    """Two `newsletter serve` processes on one database, as on two machines (or two workers
    whose share of the connections the kernel decides: here each is sent half, for sure)."""
    pair = [Server(project_dir, tmp_path, **env) for _ in range(2)]
    servers.extend(pair)
    return pair


def test_the_sign_up_limit_holds_across_two_servers(project_dir: Path, tmp_path: Path,
                                                    servers: list[Server]) -> None:
    """In memory each process counted for itself (two: twice the limit). 12 sign-ups from one
    client address at once, six to each of two serve processes: exactly 3 get through."""
    _news(project_dir)
    pair = _two_servers(project_dir, tmp_path, servers, serve__signups_per_ip="3")
    targets = [(server.url, _form(server.url)) for server in pair]
    codes = asyncio.run(_sign_ups(targets, [(f"r{i}@example.org", "198.51.100.1") for i in range(12)]))
    assert sorted(codes) == [200] * 3 + [429] * 9
    assert all("POST /subscribe" in server.output() for server in pair)  # both answered some


def test_serve_with_two_workers_runs_two_processes_sharing_the_limit(project_dir: Path, tmp_path: Path,
                                                                    servers: list[Server]) -> None:
    """`--workers 2`: two worker processes behind one port; whichever answers, the shared
    counter holds (12 sign-ups from one client address, limit 3)."""
    _news(project_dir)
    server = Server(project_dir, tmp_path, workers=2, serve__signups_per_ip="3")
    servers.append(server)
    wait_for(lambda: len(set(re.findall(r"Started server process \[(\d+)\]", server.output()))) == 2,
             timeout=60)
    codes = asyncio.run(_sign_ups([(server.url, _form(server.url))],
                                  [(f"w{i}@example.org", "198.51.100.9") for i in range(12)]))
    assert sorted(codes) == [200] * 3 + [429] * 9


def test_the_daily_mail_cap_holds_across_two_servers(project_dir: Path, tmp_path: Path,
                                                     servers: list[Server]) -> None:
    """Six sign-ups of one address (from six client addresses, so the per-client limit does not
    count) at once, three to each of two serve processes: three confirmation mails, not six."""
    news = _news(project_dir)
    pair = _two_servers(project_dir, tmp_path, servers)
    outbox = open_project(project_dir).outbox_dir
    address = "viel@example.org"

    def mails_to(address: str) -> int:
        return sum(f"To: {address}".encode() in p.read_bytes() for p in outbox.glob("*/*")
                   if p.is_file() and p.parent.name != "tmp")

    def refused() -> int:
        return sum(server.output().count("daily limit of 3 for the address reached") for server in pair)

    targets = [(server.url, _form(server.url)) for server in pair]
    codes = asyncio.run(_sign_ups(targets, [(address, f"203.0.113.{i}") for i in range(1, 7)]))
    assert codes == [200] * 6
    store = open_store(open_project(project_dir))
    try:
        def decided() -> bool:
            # The store work and the mails run after the answers.
            found = store.find_subscriber(address)
            return (found is not None and len(store.history(found.id)) == 6
                    and refused() + mails_to(address) >= 6)
        wait_for(decided, timeout=60)
        # Each of the six decided: three mails, three refused by the shared cap.
        assert mails_to(address) == 3 and refused() == 3
        found = store.find_subscriber(address)
        assert found is not None and store.membership_status(found.id, news) == "pending"
    finally:
        store.close()
    assert all("POST /subscribe 200" in server.output() for server in pair)
    assert all(address not in server.output() for server in pair)

def test_a_one_click_answered_200_survives_sigkill(project_dir: Path, tmp_path: Path,
                                                   servers: list[Server]) -> None:
    """Many one-clicks at once; the moment the first ones are answered 200, the server is
    killed (SIGKILL: no shutdown, no flush). Every one answered 200 is in the database."""
    news = _news(project_dir)
    project = open_project(project_dir)
    with open_store(project) as store:
        ids = [store.add_subscriber(f"weg{i}@example.org", news, confirmed=True)[0] for i in range(200)]
        token_ids = {sid: store.subscriber(sid).token_id for sid in ids}  # type: ignore[union-attr]
    server = Server(project_dir, tmp_path)
    servers.append(server)
    tokens = Tokens.for_project(open_project(project_dir))
    answered: list[int] = []

    async def main() -> None:
        limits = httpx.Limits(max_connections=50, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as client:
            async def one(sid: int) -> None:
                token = tokens.mint_unsubscribe(token_ids[sid], news)
                try:
                    response = await client.post(f"/u/{token}", data=ONE_CLICK)
                except httpx.TransportError:
                    return  # killed before it answered: may or may not be recorded
                if response.status_code == 200:
                    answered.append(sid)
                    if len(answered) == 20:
                        os.killpg(server.process.pid, signal.SIGKILL)

            await asyncio.gather(*(one(sid) for sid in ids))

    asyncio.run(main())
    server.process.wait(10)
    assert server.process.returncode == -signal.SIGKILL
    assert len(answered) >= 20
    with open_store(open_project(project_dir)) as store:
        statuses = {sid: store.membership_status(sid, news) for sid in answered}
    assert statuses == dict.fromkeys(answered, "unsubscribed")
