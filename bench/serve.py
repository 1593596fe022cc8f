"""Benchmark `newsletter serve` with wrk: RFC 8058 one-click unsubscribes against /healthz.

For each configuration — SQLite with one process, PostgreSQL with 1 and with 2 worker
processes — creates a throw-away project with N subscribed members, starts `newsletter serve`
as its own process on 127.0.0.1, and runs wrk (32 connections by default, one thread) twice:

* GET /healthz, the reference measured in the same run (it also commits a write: the probe);
* POST /u/<token> with `List-Unsubscribe=One-Click`, a different valid token per request (a wrk
  Lua script reads the tokens from a file).

Prints requests per second, p99 latency and errors (socket errors, time-outs, any answer but
200 without a redirect) and the ratio one-click / healthz. Afterwards, with the server stopped,
it checks the database: every token requested is unsubscribed except at most the requests wrk
left unanswered when it stopped, nothing else changed, one consent-log entry each — so every
one-click answered 200 is recorded (the exact one-to-one check, per request, is
tests/test_serve_concurrency.py). Target on SQLite: ratio >= 0.5, p99 < 50 ms, 0 errors.

    .venv/bin/python bench/serve.py [--members 20000] [--duration 10] [--connections 32]
                                    [--no-postgres | --postgres-url URL]

PostgreSQL: a throw-away cluster (tests/pgcluster.py, Debian's `postgresql` package), or
--postgres-url pointing at a server where the user may CREATE DATABASE. wrk: `apt-get install
wrk` (Debian/Ubuntu), `brew install wrk` (macOS).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import sqlalchemy as sa

# Run from a checkout: the package next to bench/, whatever the current directory.
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # pgcluster

from newsletter.audience.store import consent_log, memberships, open_store, subscribers, utcnow  # noqa: E402
from newsletter.project import open_project  # noqa: E402
from newsletter.scaffold import init_project  # noqa: E402
from newsletter.tokens import Tokens  # noqa: E402

# Shared by both scripts: count answers (200 without Location is the only right one) and print
# one JSON line with wrk's latency percentiles and errors.
LUA_COMMON = r"""
local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
function response(status, headers, body)
  if status == 200 and headers["location"] == nil and headers["Location"] == nil then
    ok = ok + 1
  else
    bad = bad + 1
  end
end
function done(summary, latency, requests)
  local sent, okc, badc = {}, 0, 0
  for _, t in ipairs(threads) do
    table.insert(sent, t:get("sent"))
    okc = okc + t:get("ok")
    badc = badc + t:get("bad")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"duration_us": %d, "responses": %d, "ok": %d, "bad": %d, "sent": [%s], ' ..
    '"connect": %d, "read": %d, "write": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.duration, summary.requests, okc, badc, table.concat(sent, ","),
    e.connect, e.read, e.write, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""

LUA_HEALTHZ = LUA_COMMON + r"""
function init(args) sent = 0; ok = 0; bad = 0 end
function request()
  sent = sent + 1
  return wrk.format("GET", "/healthz")
end
"""

# Thread k of n posts tokens k, k+n, k+2n, ... (1-based in Lua): never one token twice while
# there are enough of them.
LUA_ONE_CLICK = LUA_COMMON + r"""
function init(args)
  tokens = {}
  for line in io.lines(args[1]) do tokens[#tokens + 1] = line end
  step = tonumber(args[2]); nxt = id; sent = 0; ok = 0; bad = 0
end
function request()
  local token = tokens[(nxt % #tokens) + 1]
  nxt = nxt + step
  sent = sent + 1
  return wrk.format("POST", "/u/" .. token,
    {["Content-Type"] = "application/x-www-form-urlencoded"}, "List-Unsubscribe=One-Click")
end
"""


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    ok: int
    sent: list[int]
    cpu_ms: float = 0.0  # the server's CPU time (all its processes) per answered request


@dataclass
class Config:
    name: str
    database_url: str | None  # None: the project's SQLite file
    workers: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def seed(root: Path, count: int) -> tuple[list[str], list[str], int]:
    """N subscribed members in one transaction: (tokens, token_ids in the same order, list id)."""
    store = open_store(open_project(root))
    lst = store.create_list("news", "Bench")
    now = utcnow()
    with store.write() as conn:
        conn.execute(subscribers.insert(), [
            {"id": i, "email": f"r{i}@example.org", "email_key": f"r{i}@example.org", "name": None,
             "attributes": {}, "created_at": now} for i in range(1, count + 1)])
        conn.execute(memberships.insert(), [
            {"subscriber_id": i, "list_id": lst.id, "status": "subscribed", "created_at": now,
             "updated_at": now} for i in range(1, count + 1)])
        if conn.dialect.name == "postgresql":  # ids given explicitly: move the sequence on
            conn.execute(sa.text("SELECT setval('subscribers_id_seq', :n)"), {"n": count})
    by_id = store.token_ids(lst.id)
    store.close()
    tokens = Tokens.for_project(open_project(root))
    token_ids = [by_id[i] for i in range(1, count + 1)]
    return [tokens.mint_unsubscribe(t, lst.id) for t in token_ids], token_ids, lst.id


def wrk(url: str, script: Path, args: list[str], connections: int, threads: int,
        duration: int) -> Run:
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "5s",
               "-s", str(script), url, "--", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
    if done.returncode or line is None:
        raise SystemExit(f"wrk failed: {done.stdout}\n{done.stderr}")
    data = json.loads(line.removeprefix("BENCH "))
    errors = data["bad"] + data["connect"] + data["read"] + data["write"] + data["timeout"]
    return Run(data["responses"] / (data["duration_us"] / 1e6), data["p50_us"] / 1000,
               data["p99_us"] / 1000, errors, data["ok"], data["sent"])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children still running (Linux /proc):
    a figure that other load on the machine does not change, unlike req/s."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    tree, total = {pid}, 0.0
    for _ in range(3):  # the supervisor, its workers (and their spawn helpers)
        tree |= {p for p, (ppid, _cpu) in stats.items() if ppid in tree}
    for p in tree:
        total += stats.get(p, (0, 0.0))[1]
    return total


def measured(server: subprocess.Popen[bytes], url: str, script: Path, args: list[str],
             connections: int, threads: int, duration: int) -> Run:
    before = cpu_seconds(server.pid)
    run = wrk(url, script, args, connections, threads, duration)
    answered = max(1, run.ok)
    run.cpu_ms = (cpu_seconds(server.pid) - before) * 1000 / answered
    return run


def start_server(root: Path, port: int, env: dict[str, str], workers: int,
                 log: Path) -> subprocess.Popen[bytes]:
    out = log.open("w+b")
    server = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "serve", "--project", str(root), "--host", "127.0.0.1",
         "--port", str(port), "--workers", str(workers)],
        env=env, cwd=REPO, stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            stop_server(server)
            raise SystemExit(f"server did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)


def stop_server(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGTERM)  # graceful: in-flight requests finish, the writer commits
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def check(root: Path, env_url: str | None, token_ids: list[str], list_id: int, sent: list[int],
          answered_ok: int) -> tuple[bool, str]:
    """Every requested token unsubscribed but at most the ones wrk left unanswered; no other."""
    step = len(sent)
    requested_idx = [k + j * step for k, n in enumerate(sent) for j in range(n)]
    requested = {token_ids[i % len(token_ids)] for i in requested_idx}
    if env_url:
        os.environ["NEWSLETTER_DATABASE__URL"] = env_url
    store = open_store(open_project(root))
    try:
        with store.read() as conn:
            left = set(conn.execute(
                sa.select(subscribers.c.token_id)
                .join(memberships, memberships.c.subscriber_id == subscribers.c.id)
                .where(memberships.c.list_id == list_id, memberships.c.status == "unsubscribed")
            ).scalars())
            logged = conn.execute(sa.select(sa.func.count()).select_from(consent_log).where(
                consent_log.c.source == "one_click")).scalar_one()
    finally:
        store.close()
        os.environ.pop("NEWSLETTER_DATABASE__URL", None)
    missing = len(requested - left)
    unanswered = len(requested_idx) - answered_ok  # requests wrk sent without a 200 back
    # With more requests than members, tokens come round again (a repeat answers 200, changes
    # nothing): at most the answers to distinct tokens can be changes.
    repeats = len(requested_idx) - len(requested)
    good = not (left - requested) and missing <= unanswered and logged == len(left) \
        and answered_ok - repeats <= len(left)
    text = (f"{len(requested):,} tokens requested, {answered_ok:,} answered 200, {len(left):,} "
            f"unsubscribed in the database ({logged:,} consent-log entries), {missing} requested "
            f"but not recorded (allowed: the {unanswered} not answered 200)")
    return good, text


def measure(config: Config, members: int, duration: int, connections: int, threads: int,
            tmp: Path) -> tuple[Run, Run, bool, str]:
    root = tmp / f"project-{config.name.replace(' ', '-').replace(',', '')}"
    init_project(root)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("NEWSLETTER_")}
    env["NEWSLETTER_NEWSLETTER__BASE_URL"] = f"http://127.0.0.1:{port}"
    os.environ["NEWSLETTER_NEWSLETTER__BASE_URL"] = env["NEWSLETTER_NEWSLETTER__BASE_URL"]
    if config.database_url:
        env["NEWSLETTER_DATABASE__URL"] = os.environ["NEWSLETTER_DATABASE__URL"] = config.database_url
    try:
        tokens, token_ids, list_id = seed(root, members)
    finally:
        os.environ.pop("NEWSLETTER_DATABASE__URL", None)
    token_file = tmp / "tokens.txt"
    token_file.write_text("\n".join(tokens) + "\n")
    healthz_lua, one_click_lua = tmp / "healthz.lua", tmp / "one-click.lua"
    healthz_lua.write_text(LUA_HEALTHZ)
    one_click_lua.write_text(LUA_ONE_CLICK)
    url = f"http://127.0.0.1:{port}"
    server = start_server(root, port, env, config.workers, tmp / "serve.log")
    try:
        wrk(url, healthz_lua, [], connections, threads, 2)  # warm-up
        healthz = measured(server, url, healthz_lua, [], connections, threads, duration)
        one_click = measured(server, url, one_click_lua, [str(token_file), str(threads)],
                             connections, threads, duration)
    finally:
        stop_server(server)
    good, text = check(root, config.database_url, token_ids, list_id, one_click.sent, one_click.ok)
    if sum(one_click.sent) > members:
        text += f"; WARNING: {sum(one_click.sent):,} requests for {members:,} members, tokens repeated"
    return healthz, one_click, good, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--postgres-url", help="a PostgreSQL server (instead of a throw-away "
                        "cluster), e.g. postgresql+psycopg://user@host/postgres")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: `apt-get install wrk` (Debian/Ubuntu) or "
                         "`brew install wrk` (macOS), see https://github.com/wg/wrk")

    cluster = None
    configs = [Config("SQLite, 1 process", None, 1)]
    if not args.no_postgres:
        if args.postgres_url:
            admin = args.postgres_url
        else:
            from pgcluster import start_cluster

            cluster = start_cluster()
            admin = cluster.url("postgres")
        configs += [Config("PostgreSQL, 1 process", admin, 1),
                    Config("PostgreSQL, 2 workers", admin, 2)]

    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp_dir:
            for number, config in enumerate(configs):
                if config.database_url:
                    name = f"bench_serve_{os.getpid()}_{number}"
                    config.database_url = create_database(config.database_url, name)
                tmp = Path(tmp_dir) / str(number)
                tmp.mkdir()
                results.append((config, *measure(config, args.members, args.duration,
                                                 args.connections, args.threads, tmp)))
    finally:
        if cluster is not None:
            cluster.stop()

    print(f"newsletter serve, wrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
          f"{args.members:,} members, server in its own process(es) on 127.0.0.1, "
          f"{os.cpu_count()} CPUs shared with wrk")
    print(f"{'':24} {'':14} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
          f"{'CPU ms/req':>10}  ratio")
    failed = False
    for config, healthz, one_click, good, text in results:
        ratio = one_click.rps / healthz.rps
        for name, run in (("GET /healthz", healthz), ("POST one-click", one_click)):
            extra = f"  {ratio:.2f}" if run is one_click else ""
            print(f"{config.name:24} {name:14} {run.rps:8.0f} {run.p50_ms:8.1f} {run.p99_ms:8.1f} "
                  f"{run.errors:7d} {run.cpu_ms:10.2f}{extra}")
        print(f"{'':24} check: {'ok' if good else 'FAILED'}: {text}")
        failed |= not good or bool(healthz.errors or one_click.errors)
    sqlite = results[0]
    target = sqlite[2].rps / sqlite[1].rps >= 0.5 and sqlite[2].p99_ms < 50 and not sqlite[2].errors
    print(f"SQLite target (ratio >= 0.5, p99 < 50 ms, 0 errors): {'met' if target else 'NOT met'}")
    if failed:
        raise SystemExit(1)


def create_database(admin_url: str, name: str) -> str:
    """A new database on the server of `admin_url`; its URL."""
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        engine.dispose()
    return sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


if __name__ == "__main__":
    main()
