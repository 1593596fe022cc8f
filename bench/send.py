"""Benchmark: `newsletter send` of the example issue to N recipients, against Postfix's smtp-sink.

Reference measured in the same run: Postfix's `smtp-source` (C, no journal, no personalisation)
sending the same number of messages of the same size over the same number of sessions to the
same sink. Prints both rates, the ratio ours / smtp-source (target >= 0.5) and our peak RSS
(target < 200 MB for 100,000 recipients). Absolute rates drift with the machine's load; the
ratio is what counts. With `--runs K` each run starts from a fresh project and the summary
gives the best and the median ratio.

The recipients are a generated list in a temporary project's SQLite store; our number is the
whole `plan_send` + `run_send` (render and prepare, journal set-up, membership check before
each message, group-committed journal writes, per-recipient token + substitution, SMTP).

    .venv/bin/python bench/send.py [--n 20000] [--concurrency 4] [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SINK = "/usr/sbin/smtp-sink"
SOURCE = "/usr/sbin/smtp-source"
TARGET = 0.5


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
    from newsletter.audience.store import open_store
    from newsletter.audience.tables import memberships, subscribers
    from newsletter.db.schema import utcnow

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
    from newsletter.delivery.message import Recipient
    from newsletter.delivery.plan import prepare_issue
    from newsletter.tokens import Tokens

    prepared = prepare_issue(project, project.root / "issues" / "2026-02.yaml", "bench").prepared
    raw = prepared.personalise(Recipient("user1@example.org", "Person 1", 1, 1),
                               Tokens.for_project(project).mint_unsubscribe("bench-sample", 1))
    return len(raw)


def one_run(n: int, concurrency: int) -> tuple[float, float, int]:
    """(our seconds, smtp-source's seconds, message size) of one run from a fresh project."""
    from newsletter.delivery.plan import plan_send
    from newsletter.delivery.sender import run_send
    from newsletter.project import open_project
    from newsletter.scaffold import init_project

    tmp = Path(tempfile.mkdtemp(prefix="newsletter-bench-"))
    port = free_port()
    sink = start_sink(port)
    try:
        root = tmp / "project"
        init_project(root)
        os.environ.update({"NEWSLETTER_SMTP__HOST": "127.0.0.1", "NEWSLETTER_SMTP__PORT": str(port),
                           "NEWSLETTER_SMTP__SECURITY": "none"})
        project = open_project(root)
        make_recipients(project, n)
        size = message_size(project)

        start = time.perf_counter()
        plan = plan_send(project, root / "issues" / "2026-02.yaml", "bench",
                         concurrency=concurrency, rate=0)
        report = run_send(plan)
        ours = time.perf_counter() - start
        plan.store.close()
        if report.sent != n:
            raise SystemExit(f"only {report.sent} of {n} sent: {report}")

        start = time.perf_counter()
        subprocess.run([SOURCE, "-s", str(concurrency), "-m", str(n), "-l", str(size),
                        f"127.0.0.1:{port}"], check=True, stdout=subprocess.DEVNULL)
        reference = time.perf_counter() - start
    finally:
        sink.kill()
        sink.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return ours, reference, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="number of recipients (>= 20,000)")
    parser.add_argument("--concurrency", type=int, default=4, help="SMTP sessions, both sides")
    parser.add_argument("--runs", type=int, default=1, help="repeat, each from a fresh project")
    args = parser.parse_args()
    for tool in (SINK, SOURCE):
        if not Path(tool).exists():
            raise SystemExit(f"{tool} missing: apt-get install postfix (the daemon is not needed)")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

    ratios = []
    for run in range(1, args.runs + 1):
        ours, reference, size = one_run(args.n, args.concurrency)
        our_rate, ref_rate = args.n / ours, args.n / reference
        ratios.append(our_rate / ref_rate)
        if run == 1:
            print(f"messages: {args.n} x {size:,} bytes, {args.concurrency} sessions, "
                  "smtp-sink on 127.0.0.1")
        prefix = f"run {run}: " if args.runs > 1 else ""
        print(f"{prefix}newsletter send: {ours:7.2f} s  {our_rate:8.0f} msg/s  "
              "(plan + render + journal + SMTP)")
        print(f"{prefix}smtp-source:     {reference:7.2f} s  {ref_rate:8.0f} msg/s")
        print(f"{prefix}ratio ours/smtp-source: {ratios[-1]:.2f}  (target >= {TARGET})")
    if args.runs > 1:
        print(f"ratio over {args.runs} runs: best {max(ratios):.2f}, "
              f"median {statistics.median(ratios):.2f}, worst {min(ratios):.2f}  (target >= {TARGET})")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak_mb:.0f} MB  (target < 200 MB at 100,000 recipients)")


if __name__ == "__main__":
    main()
