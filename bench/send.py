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

`--bounces` also measures the cost of the VERP envelope sender (`[bounces] address`: a signed
tag minted per message): each run sends the same list twice more, from fresh projects, without
and with a bounce address (in alternating order, so a machine getting busier does not favour
one), and prints the ratio with / without (target >= 0.95). As that ratio swings with the load
of a shared machine, it also times what VERP adds per message (minting the tag, alternated with
the same loop without it) and sets it against the send time per message of the same run.

`--greeting` does the same for personal fields (issue 14): the issue gets a greeting
("Guten Tag {{name}},") and a field from the members' attributes ({{Kommune|Ihrer Kommune}}),
sent from a fresh project in the same run; prints the ratio with / without (target >= 0.9) and
the per-message cost of filling the holes (personalise with and without the fields).

`--topics K` does the same for topic variants (issue 14): the issue's sections after the first
get K topics (round robin), the members every combination of them (2^K, none = no choice: the
full issue), sent from a fresh project in the same run; prints the ratio with / without (the
send renders one variant per distinct selection of sections: 2^K - 2 for K <= 4 here, all the
rest get the full issue) and what rendering those variants took.

    .venv/bin/python bench/send.py [--n 20000] [--concurrency 4] [--runs 1] [--bounces] [--greeting]
                                   [--topics 3]
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
VERP_TARGET = 0.95
GREETING_TARGET = 0.9
BOUNCES = "bounces@example.org"
ISSUE = "issues/2026-02.yaml"


def add_greeting(root: Path) -> None:
    """The example issue with a greeting and one attribute field (issue 14's personal fields)."""
    path = root / ISSUE
    source = path.read_text(encoding="utf-8")
    path.write_text(source.replace("\nintro: |\n", "\ngreeting: \"Guten Tag {{name}},\"\nintro: |\n"
                                   "  Neues aus {{Kommune|Ihrer Kommune}}.\n\n", 1), encoding="utf-8")


def topic_keys(k: int) -> list[str]:
    return [f"thema{i + 1}" for i in range(k)]


def add_topics(root: Path, k: int) -> None:
    """The example issue's sections after the first tagged with one of k topics each (round
    robin), and the topics declared for the list `bench`."""
    keys = topic_keys(k)
    path = root / ISSUE
    lines, tagged = [], -1
    for line in path.read_text(encoding="utf-8").splitlines():
        lines.append(line)
        if line.startswith("  - kind:"):
            tagged += 1
            if tagged:
                lines.append(f"    topics: [{keys[(tagged - 1) % k]}]")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = root / "newsletter.toml"
    config.write_text(config.read_text(encoding="utf-8") + "\n[topics.bench]\n"
                      + "".join(f'{key} = "Thema {key[-1]}"\n' for key in keys), encoding="utf-8")


VARIANT_RENDERS: list[float] = []  # seconds of each topic variant rendered since last cleared


def time_variant_renders() -> None:
    """Record how long each variant render of a send takes (the full issue's is the plan's)."""
    import newsletter.delivery.variants as variants

    real = variants.render_issue

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            VARIANT_RENDERS.append(time.perf_counter() - start)

    variants.render_issue = timed


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


def make_recipients(project, n: int, topics: int = 0) -> None:
    """A list `bench` with n subscribed members (bulk insert: this is set-up, not measured);
    with `topics`, member i chose the combination i mod 2^topics of them (0: no choice)."""
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
                 "name": f"Person {i}", "attributes": {"Kommune": f"Ort {i % 97}"},
                 "created_at": now} for i in rows])
            conn.execute(memberships.insert(), [
                {"subscriber_id": i + 1, "list_id": mailing_list.id, "status": "subscribed",
                 "created_at": now, "updated_at": now, "topics": choice(i, topics)} for i in rows])
    store.close()


def choice(i: int, topics: int) -> list[str] | None:
    """Member i's topics: the bits of i mod 2^topics; none chosen: NULL (no choice)."""
    mask = i % (1 << topics) if topics else 0
    return [key for bit, key in enumerate(topic_keys(topics)) if mask >> bit & 1] or None


def message_size(project) -> int:
    from newsletter.delivery.message import Recipient
    from newsletter.delivery.plan import prepare_issue
    from newsletter.tokens import Tokens

    prepared = prepare_issue(project, project.root / "issues" / "2026-02.yaml", "bench").prepared
    raw = prepared.personalise(Recipient("user1@example.org", "Person 1", 1, 1),
                               Tokens.for_project(project).mint_unsubscribe("bench-sample", 1))
    return len(raw)


def per_message(n: int) -> tuple[float, float]:
    """Seconds for the per-message work of the send loop (token, substitution) for n recipients,
    without and with the VERP envelope sender; best of 5 alternated rounds each, so the load of
    a shared machine weighs on both alike."""
    from newsletter.delivery.envelope import delivery_senders
    from newsletter.delivery.message import Recipient
    from newsletter.delivery.plan import prepare_issue
    from newsletter.project import open_project
    from newsletter.scaffold import init_project
    from newsletter.tokens import Tokens

    tmp = Path(tempfile.mkdtemp(prefix="newsletter-bench-"))
    try:
        init_project(tmp / "project")
        os.environ["NEWSLETTER_BOUNCES__ADDRESS"] = BOUNCES
        project = open_project(tmp / "project")
        os.environ.pop("NEWSLETTER_BOUNCES__ADDRESS")
        prepared = prepare_issue(project, project.root / "issues" / "2026-02.yaml", "bench").prepared
        tokens = Tokens.for_project(project)
        sender = delivery_senders(project)
        assert sender is not None
        recipients = [Recipient(f"user{i}@example.org", f"Person {i}", i + 1, 1) for i in range(n)]

        def work(with_verp: bool) -> float:
            start = time.perf_counter()
            for r in recipients:
                prepared.personalise(r, tokens.mint_unsubscribe(f"t{r.subscriber_id}", 1))
                envelope = sender(1, r.subscriber_id) if with_verp else prepared.sender
            assert envelope
            return time.perf_counter() - start

        without, with_ = [], []
        for _ in range(5):
            without.append(work(False))
            with_.append(work(True))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return min(without), min(with_)


def send_once(n: int, concurrency: int, port: int, bounces: str | None,
              greeting: bool = False, topics: int = 0) -> tuple[float, int]:
    """(our seconds, message size) of one send from a fresh project; `bounces`: the
    `[bounces] address` (each message then goes out from its own VERP address); `greeting`: the
    issue with personal fields; `topics`: the issue's sections tagged with that many topics and
    the members' choices spread over their combinations."""
    from newsletter.delivery.plan import plan_send
    from newsletter.delivery.sender import run_send
    from newsletter.project import open_project
    from newsletter.scaffold import init_project

    tmp = Path(tempfile.mkdtemp(prefix="newsletter-bench-"))
    try:
        root = tmp / "project"
        init_project(root)
        os.environ.update({"NEWSLETTER_SMTP__HOST": "127.0.0.1", "NEWSLETTER_SMTP__PORT": str(port),
                           "NEWSLETTER_SMTP__SECURITY": "none"})
        os.environ.pop("NEWSLETTER_BOUNCES__ADDRESS", None)
        if bounces:
            os.environ["NEWSLETTER_BOUNCES__ADDRESS"] = bounces
        if topics:
            add_topics(root, topics)
        project = open_project(root)
        if greeting:
            add_greeting(root)
        make_recipients(project, n, topics)
        size = message_size(project)

        start = time.perf_counter()
        plan = plan_send(project, root / "issues" / "2026-02.yaml", "bench",
                         concurrency=concurrency, rate=0)
        report = run_send(plan)
        ours = time.perf_counter() - start
        plan.store.close()
        if report.sent != n:
            raise SystemExit(f"only {report.sent} of {n} sent: {report}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ours, size


def one_run(n: int, concurrency: int, bounces: bool = False, variant_first: bool = False,
            greeting: bool = False, topics: int = 0
            ) -> tuple[float, float, int, float | None, float | None, float | None]:
    """(our seconds, smtp-source's seconds, message size, our seconds with a bounce address or
    None, our seconds with personal fields or None, our seconds with topic variants or None) of
    one run, each send from a fresh project, all against one sink; the variants before or after
    the plain send, alternating by run."""
    port = free_port()
    sink = start_sink(port)
    try:
        with_verp = with_greeting = with_topics = None

        def variants() -> tuple[float | None, float | None, float | None]:
            return (send_once(n, concurrency, port, BOUNCES)[0] if bounces else None,
                    send_once(n, concurrency, port, None, True)[0] if greeting else None,
                    send_once(n, concurrency, port, None, topics=topics)[0] if topics else None)

        if variant_first:
            with_verp, with_greeting, with_topics = variants()
        ours, size = send_once(n, concurrency, port, None)
        if not variant_first:
            with_verp, with_greeting, with_topics = variants()

        start = time.perf_counter()
        subprocess.run([SOURCE, "-s", str(concurrency), "-m", str(n), "-l", str(size),
                        f"127.0.0.1:{port}"], check=True, stdout=subprocess.DEVNULL)
        reference = time.perf_counter() - start
    finally:
        sink.kill()
        sink.wait()
    return ours, reference, size, with_verp, with_greeting, with_topics


def personalise_cost(n: int) -> tuple[float, float]:
    """Seconds to personalise n messages of the plain issue and of the issue with personal
    fields (token + substitution), best of 5 alternated rounds."""
    from newsletter.delivery.message import Recipient
    from newsletter.delivery.plan import prepare_issue
    from newsletter.project import open_project
    from newsletter.scaffold import init_project
    from newsletter.tokens import Tokens

    tmp = Path(tempfile.mkdtemp(prefix="newsletter-bench-"))
    try:
        init_project(tmp / "plain")
        init_project(tmp / "greeting")
        add_greeting(tmp / "greeting")
        prepared = {name: prepare_issue(open_project(tmp / name), tmp / name / ISSUE, "bench").prepared
                    for name in ("plain", "greeting")}
        tokens = Tokens.for_project(open_project(tmp / "plain"))
        recipients = [Recipient(f"user{i}@example.org", f"Person {i}", i + 1, 1, {"Kommune": f"Ort {i}"})
                      for i in range(n)]

        def work(name: str) -> float:
            start = time.perf_counter()
            for r in recipients:
                prepared[name].personalise(r, tokens.mint_unsubscribe(f"t{r.subscriber_id}", 1))
            return time.perf_counter() - start

        plain, personal = [], []
        for _ in range(5):
            plain.append(work("plain"))
            personal.append(work("greeting"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return min(plain), min(personal)


def expected(sends: list[float], n: int, without: float, with_: float, target: float) -> str:
    """The ratio a feature's own cost per message (`with_ - without` seconds for `n` messages)
    allows against this run's send time per message (median of the sends without it): what the
    end-to-end ratio would be on a quiet machine."""
    extra = max(with_ - without, 0.0) / n
    send_each = statistics.median(sends) / n
    return (f"the send took {send_each * 1e6:.0f} µs per message (median of this run's sends "
            f"without): expected ratio with/without {send_each / (send_each + extra):.3f}  "
            f"(target >= {target})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="number of recipients (>= 20,000)")
    parser.add_argument("--concurrency", type=int, default=4, help="SMTP sessions, both sides")
    parser.add_argument("--runs", type=int, default=1, help="repeat, each from a fresh project")
    parser.add_argument("--bounces", action="store_true",
                        help=f"also send with [bounces] address = {BOUNCES} (VERP) and compare")
    parser.add_argument("--greeting", action="store_true",
                        help="also send the issue with a greeting and a personal field and compare")
    parser.add_argument("--topics", type=int, default=0, metavar="K",
                        help="also send the issue with sections tagged with K topics (1-4) to members "
                             "with every combination of them, and compare")
    args = parser.parse_args()
    if not 0 <= args.topics <= 4:
        parser.error("--topics: 1 to 4 (the example issue has 5 sections, the first untagged)")
    if args.topics:
        time_variant_renders()
    for tool in (SINK, SOURCE):
        if not Path(tool).exists():
            raise SystemExit(f"{tool} missing: apt-get install postfix (the daemon is not needed)")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

    ratios, verp_ratios, greeting_ratios, topic_ratios, sends = [], [], [], [], []
    for run in range(1, args.runs + 1):
        VARIANT_RENDERS.clear()
        ours, reference, size, with_verp, with_greeting, with_topics = one_run(
            args.n, args.concurrency, args.bounces, variant_first=run % 2 == 0, greeting=args.greeting,
            topics=args.topics)
        our_rate, ref_rate = args.n / ours, args.n / reference
        ratios.append(our_rate / ref_rate)
        sends.append(ours)
        if run == 1:
            print(f"messages: {args.n} x {size:,} bytes, {args.concurrency} sessions, "
                  "smtp-sink on 127.0.0.1")
        prefix = f"run {run}: " if args.runs > 1 else ""
        print(f"{prefix}newsletter send: {ours:7.2f} s  {our_rate:8.0f} msg/s  "
              "(plan + render + journal + SMTP)")
        print(f"{prefix}smtp-source:     {reference:7.2f} s  {ref_rate:8.0f} msg/s")
        print(f"{prefix}ratio ours/smtp-source: {ratios[-1]:.2f}  (target >= {TARGET})")
        if with_verp is not None:
            verp_ratios.append(ours / with_verp)  # rate with / rate without
            print(f"{prefix}with VERP:       {with_verp:7.2f} s  {args.n / with_verp:8.0f} msg/s  "
                  f"(ratio to smtp-source {args.n / with_verp / ref_rate:.2f})")
            print(f"{prefix}ratio with/without bounce address: {verp_ratios[-1]:.2f}  "
                  f"(target >= {VERP_TARGET})")
        if with_greeting is not None:
            greeting_ratios.append(ours / with_greeting)
            print(f"{prefix}with greeting:   {with_greeting:7.2f} s  {args.n / with_greeting:8.0f} msg/s")
            print(f"{prefix}ratio with/without personal fields: {greeting_ratios[-1]:.2f}  "
                  f"(target >= {GREETING_TARGET})")
        if with_topics is not None:
            topic_ratios.append(ours / with_topics)
            rendering = sum(VARIANT_RENDERS)
            print(f"{prefix}with {args.topics} topics:  {with_topics:7.2f} s  "
                  f"{args.n / with_topics:8.0f} msg/s  "
                  f"({1 << args.topics} combinations among the members; {len(VARIANT_RENDERS)} variants "
                  f"rendered in {rendering:.2f} s)")
            print(f"{prefix}ratio with/without topics: {topic_ratios[-1]:.2f}  (rendering the variants "
                  f"alone allows {ours / (ours + rendering):.3f})")
    if args.runs > 1 and topic_ratios:
        print(f"with/without topics over {args.runs} runs: median {statistics.median(topic_ratios):.2f}")
    if args.runs > 1:
        print(f"ratio over {args.runs} runs: best {max(ratios):.2f}, "
              f"median {statistics.median(ratios):.2f}, worst {min(ratios):.2f}  (target >= {TARGET})")
        if verp_ratios:
            print(f"with/without bounce address over {args.runs} runs: best {max(verp_ratios):.2f}, "
                  f"median {statistics.median(verp_ratios):.2f}, worst {min(verp_ratios):.2f}  "
                  f"(target >= {VERP_TARGET})")
    if args.bounces:
        # The end-to-end ratio above swings with the load of a shared machine; this isolates
        # what VERP adds (minting the tag) and sets it against this run's own send time.
        without, with_ = per_message(args.n)
        print(f"per message: token + substitution {without / args.n * 1e6:.1f} µs, the VERP sender "
              f"adds {max(with_ - without, 0.0) / args.n * 1e6:.1f} µs; "
              + expected(sends, args.n, without, with_, VERP_TARGET))
    if args.greeting:
        if args.runs > 1:
            print(f"with/without personal fields over {args.runs} runs: median "
                  f"{statistics.median(greeting_ratios):.2f}  (target >= {GREETING_TARGET})")
        plain, personal = personalise_cost(args.n)
        print(f"per message: personalise {plain / args.n * 1e6:.1f} µs plain, "
              f"{personal / args.n * 1e6:.1f} µs with greeting + field; "
              + expected(sends, args.n, plain, personal, GREETING_TARGET))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak_mb:.0f} MB  (target < 200 MB at 100,000 recipients)")


if __name__ == "__main__":
    main()
