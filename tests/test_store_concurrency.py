"""Concurrent writers on one SQLite file: two processes and many threads lose no update."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from newsletter.audience.store import Store

WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from newsletter.audience.store import Store

    url, name, go, rounds = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    store = Store.open(url)
    news = store.get_list("news")
    shared = store.find_subscriber("shared@example.org").id
    while not go.exists():
        time.sleep(0.001)
    changes = 0
    for i in range(rounds):
        # Read-modify-write inside the store: both processes flip the same membership.
        target = "unsubscribed" if i % 2 == 0 else "subscribed"
        changes += store.set_status(shared, news.id, target, "cli", detail=name)
        result = store.request_subscription(f"{name}-{i}@example.org", news.id, ip="127.0.0.1")
        store.confirm(result.subscriber_id, news.id)
    print(changes)
""")


def test_two_processes_writing_at_once_lose_no_update(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'newsletter.db'}"
    store = Store.open(url)
    news = store.create_list("news")
    store.add_subscriber("shared@example.org", news.id, confirmed=True)
    script = tmp_path / "worker.py"
    script.write_text(WORKER, encoding="utf-8")
    go = tmp_path / "go"
    rounds = 150
    procs = [
        subprocess.Popen([sys.executable, str(script), url, name, str(go), str(rounds)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("alpha", "beta")
    ]
    time.sleep(0.5)  # both processes opened the store and wait at the start line
    go.touch()
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "database is locked" not in err
    changes = sum(int(out) for out, _ in outputs)

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
    store.close()


def test_many_threads_of_one_server_never_fail_with_database_is_locked(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'newsletter.db'}")
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
