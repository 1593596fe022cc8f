"""Benchmark `newsletter serve`: RFC 8058 one-click unsubscribes against a running server.

Creates a throw-away project with N subscribers, starts `newsletter serve` as its own process
on 127.0.0.1, then sends N one-click POSTs (bounded concurrency) and, as the reference measured
in the same run with the same client, N GET /healthz. Prints requests per second, p50/p99
latency and the ratio one-click / healthz; checks that every unsubscribe was recorded.

    .venv/bin/python bench/serve.py [--requests 2000] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

# Run from a checkout: the package next to bench/, whatever the current directory.
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from newsletter.audience.store import memberships, open_store, subscribers, utcnow  # noqa: E402
from newsletter.project import open_project  # noqa: E402
from newsletter.scaffold import init_project  # noqa: E402
from newsletter.tokens import Tokens  # noqa: E402

MAX_REQUESTS = 20_000
TIME_LIMIT = 120.0  # seconds per phase, whatever --requests says


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def seed(root: Path, count: int) -> tuple[list[str], int]:
    """N subscribed members in one transaction; their unsubscribe tokens and the list id."""
    project = open_project(root)
    store = open_store(project)
    lst = store.create_list("news", "Bench")
    now = utcnow()
    with store.write() as conn:
        conn.execute(subscribers.insert(), [
            {"id": i, "email": f"r{i}@example.org", "email_key": f"r{i}@example.org", "name": None,
             "attributes": {}, "created_at": now} for i in range(1, count + 1)])
        conn.execute(memberships.insert(), [
            {"subscriber_id": i, "list_id": lst.id, "status": "subscribed", "created_at": now,
             "updated_at": now} for i in range(1, count + 1)])
    token_ids = store.token_ids(lst.id)
    store.close()
    tokens = Tokens.for_project(project)
    return [tokens.mint_unsubscribe(token_ids[i], lst.id) for i in range(1, count + 1)], lst.id


async def phase(client: httpx.AsyncClient, requests: list[tuple[str, str, dict | None]],
                concurrency: int) -> tuple[float, list[float], int]:
    """(elapsed seconds, latencies, non-200 count) for the given (method, path, form) list."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + TIME_LIMIT

    async def one(method: str, path: str, data: dict | None) -> None:
        nonlocal errors
        async with gate:
            if time.perf_counter() > deadline:
                return
            started = time.perf_counter()
            response = await client.request(method, path, data=data)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200 or "location" in response.headers:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(one(*r) for r in requests))
    return time.perf_counter() - started, latencies, errors


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


Result = tuple[float, float, float, int]  # req/s, p50 ms, p99 ms, errors


async def measure(url: str, tokens: list[str], concurrency: int) -> dict[str, Result]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    results = {}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        await phase(client, [("GET", "/healthz", None)] * 100, concurrency)  # warm-up
        plan = {
            "GET /healthz (reference)": [("GET", "/healthz", None)] * len(tokens),
            "POST /u/… one-click": [("POST", f"/u/{t}", {"List-Unsubscribe": "One-Click"}) for t in tokens],
        }
        for name, requests in plan.items():
            elapsed, latencies, errors = await phase(client, requests, concurrency)
            results[name] = (len(latencies) / elapsed, percentile(latencies, 0.5) * 1000,
                             percentile(latencies, 0.99) * 1000, errors)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    count = max(10, min(args.requests, MAX_REQUESTS))

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "project"
        init_project(root)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("NEWSLETTER_")}
        env["NEWSLETTER_NEWSLETTER__BASE_URL"] = f"http://127.0.0.1:{port}"
        os.environ.update({"NEWSLETTER_NEWSLETTER__BASE_URL": env["NEWSLETTER_NEWSLETTER__BASE_URL"]})
        tokens, list_id = seed(root, count)
        server_log = (Path(tmp) / "serve.log").open("w+b")
        server = subprocess.Popen(
            [sys.executable, "-m", "newsletter", "serve", "--project", str(root),
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=REPO, stdout=server_log, stderr=server_log)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    server_log.seek(0)
                    raise SystemExit(f"server did not start: {server_log.read().decode()[-2000:]}")
                time.sleep(0.05)
            results = asyncio.run(measure(f"http://127.0.0.1:{port}", tokens, args.concurrency))
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
            server_log.close()

        store = open_store(open_project(root))
        with store.read() as conn:
            left = conn.execute(sa.select(sa.func.count()).select_from(memberships).where(
                memberships.c.list_id == list_id, memberships.c.status == "unsubscribed")).scalar()
        store.close()

    print(f"newsletter serve, {count} requests per phase, concurrency {args.concurrency}, "
          "server in its own process, client httpx on 127.0.0.1")
    print(f"{'':28} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, (rps, p50, p99, errors) in results.items():
        print(f"{name:28} {rps:9.0f} {p50:8.1f} {p99:8.1f} {errors:7d}")
    one_click = results["POST /u/… one-click"][0]
    reference = results["GET /healthz (reference)"][0]
    print(f"ratio one-click / healthz: {one_click / reference:.2f}")
    print(f"unsubscribes recorded: {left} of {count}")
    if left != count or any(r[3] for r in results.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
