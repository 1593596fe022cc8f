"""Concurrent writers on one database: two processes and many threads lose no update — on SQLite
(one writer at a time, `BEGIN IMMEDIATE`) and on PostgreSQL (row and address locks)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path

import pytest

from newsletter.audience.store import Store

pytestmark = pytest.mark.backends

# Each worker opens the store, says "ready", waits for "go" on stdin, runs its rounds and
# prints one JSON line with what it saw change.
WORKER = textwrap.dedent("""
    import json, sys
    from newsletter.audience.store import Store

    url, name, task, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    store = Store.open(url)
    news = store.get_list("news")
    shared = store.find_subscriber("shared@example.org").id
    print("ready", flush=True)
    sys.stdin.readline()
    flips = confirmed = 0
    for i in range(rounds):
        if task == "flip":
            # Read-modify-write inside the store: both processes flip the same membership.
            target = "unsubscribed" if i % 2 == 0 else "subscribed"
            flips += store.set_status(shared, news.id, target, "cli", detail=name)
            result = store.request_subscription(f"{name}-{i}@example.org", news.id, ip="127.0.0.1")
            store.confirm(result.subscriber_id, news.id)
        else:
            # Both processes sign up, confirm and add (confirmed) the same new address: it is
            # created once and made "subscribed" once, by whichever step comes first.
            address = f"both-{i}@example.org"
            result = store.request_subscription(address, news.id, name=name)
            confirmed += store.confirm(result.subscriber_id, news.id)
            confirmed += store.add_subscriber(address, news.id, confirmed=True)[1]
    print(json.dumps({"flips": flips, "confirmed": confirmed}))
    store.close()
""")


def run_two_workers(tmp_path: Path, url: str, task: str, rounds: int) -> list[dict[str, int]]:
    """Two worker processes started together on `task`; their counts."""
    import json

    script = tmp_path / "worker.py"
    script.write_text(WORKER, encoding="utf-8")
    procs = [
        subprocess.Popen([sys.executable, str(script), url, name, task, str(rounds)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for name in ("alpha", "beta")
    ]
    for proc in procs:  # both opened the store and wait at the start line
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "ready\n", proc.communicate()[1]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "Traceback" not in err and "database is locked" not in err
    return [json.loads(out) for out, _ in outputs]


@pytest.fixture
def store(database_url: str) -> Store:
    opened = Store.open(database_url)
    news = opened.create_list("news")
    opened.add_subscriber("shared@example.org", news.id, confirmed=True)
    yield opened
    opened.close()


def test_two_processes_flipping_one_membership_lose_no_update(
        store: Store, database_url: str, tmp_path: Path) -> None:
    rounds = 150
    counts = run_two_workers(tmp_path, database_url, "flip", rounds)
    changes = sum(c["flips"] for c in counts)

    news = store.get_list("news")
    shared = store.find_subscriber("shared@example.org")
    assert shared is not None
    log = [h.action for h in store.history(shared.id)]
    # Every change either process saw is in the log exactly once, and the log alternates:
    # no process acted on a stale read of the status.
    assert len(log) == 1 + changes
    assert all(a != b for a, b in itertools.pairwise(log))
    assert store.membership_status(shared.id, news.id) == log[-1]
    members = {m.email for m in store.members(news.id)} - {"shared@example.org"}
    assert members == {f"{name}-{i}@example.org" for name in ("alpha", "beta") for i in range(rounds)}


def test_two_processes_signing_up_the_same_new_addresses_create_each_once(
        store: Store, database_url: str, tmp_path: Path) -> None:
    rounds = 60
    counts = run_two_workers(tmp_path, database_url, "same", rounds)
    # Each address became subscribed once, by one process, whichever got there first.
    assert sum(c["confirmed"] for c in counts) == rounds

    news = store.get_list("news")
    rows = [r for r in store.member_rows(news.id) if r["email"].startswith("both-")]
    assert sorted(r["email"] for r in rows) == sorted(f"both-{i}@example.org" for i in range(rounds))
    for row in rows:
        assert row["status"] == "subscribed"
        history = store.history(row["id"])
        assert Counter(h.action for h in history)["subscribed"] == 1, history
        assert history[0].action == "pending" and history[-1].action == "subscribed", history


def test_many_threads_of_one_server_never_fail_with_database_is_locked(database_url: str) -> None:
    store = Store.open(database_url)
    news = store.create_list("news")
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def sign_up(worker: int) -> None:
        try:
            start.wait()
            for i in range(20):
                result = store.request_subscription(f"t{worker}-{i}@example.org", news.id,
                                                    ip="127.0.0.1", consent_version="1")
                assert result.subscriber_id is not None
                store.confirm(result.subscriber_id, news.id)
                store.set_status(result.subscriber_id, news.id, "unsubscribed", "one_click")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=sign_up, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    everyone = store.members(news.id, status=None)
    assert len(everyone) == 16 * 20
    assert {m.email for m in store.members(news.id, status="unsubscribed")} == {m.email for m in everyone}
    store.close()
