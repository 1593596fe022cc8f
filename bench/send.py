"""Benchmark: `newsletter send` of the example issue to N recipients, against Postfix's smtp-sink.

Reference measured in the same run: Postfix's `smtp-source` (C, no journal, no personalisation)
sending the same number of messages of the same size over the same number of sessions to the
same sink. Prints both rates, the ratio ours / smtp-source (target >= 0.3) and our peak RSS
(target < 200 MB for 100,000 recipients).

The recipients are a generated list in a temporary project's SQLite store; our number is the
whole `run_send` (journal set-up, membership check before each message, group-committed
journal writes, per-recipient token + substitution, SMTP).

    .venv/bin/python bench/send.py [--n 20000] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SINK = "/usr/sbin/smtp-sink"
SOURCE = "/usr/sbin/smtp-source"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_sink(port: int) -> subprocess.Popen[bytes]:
    command = [SINK]
    if os.geteuid() == 0:
        command += ["-u", "nobody"]  # smtp-sink refuses to run as root without -u
    command += [f"127.0.0.1:{port}", "1000"]
    sink = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return sink
        except OSError:
            time.sleep(0.05)
    sink.kill()
    raise SystemExit(f"smtp-sink did not start: {sink.stderr.read().decode() if sink.stderr else ''}")


def make_recipients(project, n: int) -> None:
    """A list `bench` with n subscribed members (bulk insert: this is set-up, not measured)."""
    from newsletter.audience.store import memberships, open_store, subscribers, utcnow

    store = open_store(project)
    mailing_list = store.create_list("bench", title="Benchmark")
    now = utcnow()
    with store.write() as conn:
        for start in range(0, n, 10_000):
            rows = range(start, min(start + 10_000, n))
            conn.execute(subscribers.insert(), [
                {"id": i + 1, "email": f"user{i}@example.org", "email_key": f"user{i}@example.org",
                 "name": f"Person {i}", "attributes": {}, "created_at": now} for i in rows])
            conn.execute(memberships.insert(), [
                {"subscriber_id": i + 1, "list_id": mailing_list.id, "status": "subscribed",
                 "created_at": now, "updated_at": now} for i in rows])
    store.close()


def message_size(project) -> int:
    from newsletter.content.validate import load_issue
    from newsletter.delivery.message import Recipient, prepare
    from newsletter.render.html import render_issue
    from newsletter.tokens import Tokens

    rendered = render_issue(load_issue(project.root / "issues" / "2026-02.yaml"), project)
    prepared = prepare(project, rendered, list_name="bench")
    raw = prepared.personalise(Recipient("user1@example.org", "Person 1", 1, 1),
                               Tokens.for_project(project).unsubscribe("bench-sample", 1))
    return len(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="number of recipients (>= 20,000)")
    parser.add_argument("--concurrency", type=int, default=4, help="SMTP sessions, both sides")
    args = parser.parse_args()
    for tool in (SINK, SOURCE):
        if not Path(tool).exists():
            raise SystemExit(f"{tool} missing: apt-get install postfix (the daemon is not needed)")

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from newsletter.config import load_project
    from newsletter.delivery.sender import plan_send, run_send
    from newsletter.scaffold import init_project

    tmp = Path(tempfile.mkdtemp(prefix="newsletter-bench-"))
    port = free_port()
    sink = start_sink(port)
    try:
        root = tmp / "project"
        init_project(root)
        os.environ.update({"NEWSLETTER_SMTP__HOST": "127.0.0.1", "NEWSLETTER_SMTP__PORT": str(port),
                           "NEWSLETTER_SMTP__SECURITY": "none"})
        project = load_project(root)
        make_recipients(project, args.n)
        size = message_size(project)

        start = time.perf_counter()
        plan = plan_send(project, root / "issues" / "2026-02.yaml", "bench",
                         concurrency=args.concurrency, rate=0)
        report = run_send(plan)
        ours = time.perf_counter() - start
        plan.store.close()
        if report.sent != args.n:
            raise SystemExit(f"only {report.sent} of {args.n} sent: {report}")
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        start = time.perf_counter()
        subprocess.run([SOURCE, "-s", str(args.concurrency), "-m", str(args.n), "-l", str(size),
                        f"127.0.0.1:{port}"], check=True, stdout=subprocess.DEVNULL)
        reference = time.perf_counter() - start
    finally:
        sink.kill()
        sink.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    our_rate, ref_rate = args.n / ours, args.n / reference
    print(f"messages: {args.n} x {size:,} bytes, {args.concurrency} sessions, smtp-sink on 127.0.0.1")
    print(f"newsletter send: {ours:7.2f} s  {our_rate:8.0f} msg/s  (render + journal + SMTP)")
    print(f"smtp-source:     {reference:7.2f} s  {ref_rate:8.0f} msg/s")
    print(f"ratio ours/smtp-source: {our_rate / ref_rate:.2f}  (target >= 0.3)")
    print(f"peak RSS: {peak_mb:.0f} MB  (target < 200 MB at 100,000 recipients)")


if __name__ == "__main__":
    main()
