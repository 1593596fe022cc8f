"""A large import next to other writers, against a real database (a SQLite file, a PostgreSQL
database), the import in a real process.

The importing process stops after each of its write batches until the test says "go": what the
test writes in such a gap shows, from the data alone, that the import did not hold the write
lock between its batches. A writer thread keeps writing all the while, as serve's one-click
unsubscribes would. No timing assumptions: the busy timeout only turns a hang into a failure.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from newsletter.audience.importer import import_csv
from newsletter.audience.records import MailingList
from newsletter.audience.store import Store
from newsletter.audience.tables import (
    consent_log,
    import_subscribers,
    imports,
    memberships,
    subscribers,
)
from newsletter.db.schema import utcnow

# The importing process: reports every write batch on stdout as a JSON line; with PAUSE set,
# waits for a line on stdin after each batch ("batches") or inside the publish ("publish").
IMPORTER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from newsletter.audience.importer import import_csv
    from newsletter.audience.store import Store

    url, csv_path, pause, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    store = Store.open(url)

    def progress(phase, done, total):
        if phase != "write":
            return
        final = done == total
        print(json.dumps({"event": "publish" if final else "batch", "done": done}), flush=True)
        if pause == ("publish" if final else "batches") and sys.stdin.readline().strip() != "go":
            raise SystemExit("told to stop")

    report = import_csv(store, Path(csv_path), store.get_list("news"), confirmed=True,
                        on_progress=progress, batch=batch)
    print(json.dumps({"event": "done", "report": report.as_dict()}), flush=True)
""")

ROWS = 50_000
BATCH = 5_000


def write_csv(path: Path, rows: int, extra: list[str] = ()) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        handle.write("email;name\n")
        handle.writelines(f"user{i:06d}@example.org;User {i}\n" for i in range(rows))
        handle.writelines(f"{address};\n" for address in extra)
    return path


@dataclass
class Importer:
    """The importing process, driven line by line."""

    proc: subprocess.Popen[str]
    events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def start(cls, tmp_path: Path, url: str, csv_path: Path, pause: str, batch: int = BATCH) -> Importer:
        script = tmp_path / "importer.py"
        script.write_text(IMPORTER, encoding="utf-8")
        proc = subprocess.Popen([sys.executable, str(script), url, str(csv_path), pause, str(batch)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        return cls(proc)

    def next_event(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=60)
            error = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"the import ended early: {error}")
        event = json.loads(line)
        self.events.append(event)
        return event

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self) -> dict[str, Any]:
        while (event := self.next_event())["event"] != "done":
            pass
        assert self.proc.wait(timeout=120) == 0
        return event["report"]

    def kill(self) -> None:
        """SIGKILL, then wait until the import's watchdog is done too: it inherited the
        process's stdout, so the pipe ends when both have exited."""
        self.proc.kill()
        self.proc.wait(timeout=60)
        assert self.proc.stdout is not None
        self.proc.stdout.read()


class Writer(threading.Thread):
    """Toggles one member's status in a loop (a write transaction each) until stopped."""

    def __init__(self, url: str, subscriber_id: int, list_id: int) -> None:
        super().__init__(daemon=True)
        self.store = Store.open(url)
        self.subscriber_id, self.list_id = subscriber_id, list_id
        self.done = 0
        self.errors: list[BaseException] = []
        self.stop = threading.Event()

    def run(self) -> None:
        statuses = ("unsubscribed", "subscribed")
        try:
            while not self.stop.is_set():
                self.store.set_status(self.subscriber_id, self.list_id, statuses[self.done % 2], "cli")
                self.done += 1
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)
        finally:
            self.store.close()


pytestmark = pytest.mark.backends


@pytest.fixture
def db(database_url: str) -> tuple[str, Store, MailingList]:
    # A busy timeout far below the old import's lock (the whole file): a write the import kept
    # waiting would fail instead of hanging.
    url = f"{database_url}?timeout=10" if database_url.startswith("sqlite") else database_url
    store = Store.open(url)
    yield url, store, store.create_list("news")
    store.close()


def ids_of(store: Store, emails: list[str]) -> list[int]:
    with store.read() as conn:
        return sorted(conn.execute(sa.select(subscribers.c.id)
                                   .where(subscribers.c.email.in_(emails))).scalars())


def test_other_writers_get_the_lock_between_import_batches(tmp_path: Path, db) -> None:
    url, store, news = db
    # On the list before the import: a member the writer thread toggles (not in the file), and
    # pending members who are in the file (the import confirms them) — the test unsubscribes
    # some of them while the import runs.
    toggled, _ = store.add_subscriber("toggled@example.net", news.id, confirmed=True)
    pending = [f"pending{i}@example.net" for i in range(12)]
    for address in pending:
        store.add_subscriber(address, news.id)
    csv_path = write_csv(tmp_path / "big.csv", ROWS, extra=pending)

    writer = Writer(url, toggled, news.id)
    writer.start()
    importer = Importer.start(tmp_path, url, csv_path, pause="batches")
    gap_subscribers: list[str] = []
    left: list[str] = []
    try:
        while (event := importer.next_event())["event"] == "batch":
            # The import stopped between two write batches: these writes must go through now.
            address = f"gap{len(gap_subscribers)}@example.net"
            store.add_subscriber(address, news.id, confirmed=True)
            gap_subscribers.append(address)
            leaving = pending[len(left)]
            token = store.find_subscriber(leaving).token_id
            assert store.leave(token, news.id, source="one_click") is not None
            left.append(leaving)
            importer.go()
        assert event["event"] == "publish"
        report = importer.finish()
    finally:
        if importer.proc.poll() is None:
            importer.kill()
        writer.stop.set()
        writer.join()

    batches = ROWS // BATCH - 1  # the last batch of new subscribers goes in with the publish
    assert len(gap_subscribers) == batches
    assert writer.errors == [] and writer.done > 0

    # Each write made in gap k got a subscriber id after the k-th batch of imported subscribers
    # and before the next one: the import released the lock between its batches.
    imported = ids_of(store, [f"user{i:06d}@example.org" for i in range(ROWS)])
    for k, address in enumerate(gap_subscribers, start=1):
        [gap_id] = ids_of(store, [address])
        assert sum(1 for i in imported if i < gap_id) == k * BATCH

    # Those who left during the import were not re-activated by it, and the report says so.
    statuses = {r["email"]: r["status"] for r in store.member_rows(news.id)}
    assert all(statuses[address] == "unsubscribed" for address in left)
    assert all(statuses[address] == "subscribed" for address in pending if address not in left)
    assert [s["email"] for s in report["skipped"]] == left
    assert {s["reason"] for s in report["skipped"]} == {"unsubscribed; imports never re-activate"}
    assert (report["added"], report["confirmed_pending"]) == (ROWS, len(pending) - len(left))
    assert sum(1 for status in statuses.values() if status == "subscribed") >= ROWS + len(gap_subscribers)
    history = store.history(store.find_subscriber(left[0]).id)
    assert [(h.action, h.source) for h in history] == [("pending", "cli"), ("unsubscribed", "one_click")]
    with store.read() as conn:  # the import's record is gone with its publish
        assert conn.execute(sa.select(sa.func.count()).select_from(imports)).scalar() == 0


def test_an_address_erased_suppressed_or_signed_up_during_the_import(tmp_path: Path, db) -> None:
    url, store, news = db
    csv_path = write_csv(tmp_path / "big.csv", 3 * 100)
    importer = Importer.start(tmp_path, url, csv_path, pause="batches", batch=100)
    try:
        assert importer.next_event()["event"] == "batch"  # user000000..099 are on the list
        erased = store.find_subscriber("user000005@example.org")
        assert [m.status for m in store.memberships(erased.id)] == ["subscribed"]
        assert store.forget("user000005@example.org")
        # Addresses of the last batches, not created yet: one suppressed, one signs up itself.
        store.suppress("user000270@example.org", "blocked")
        assert store.request_subscription("user000250@example.org", news.id).send_confirmation
        importer.go()
        assert importer.next_event()["event"] == "batch"
        importer.go()
        report = importer.finish()
    finally:
        if importer.proc.poll() is None:
            importer.kill()

    assert report["skipped"] == [{"line": 272, "email": "user000270@example.org",
                                  "reason": "on the suppression list"}]
    assert store.find_subscriber("user000005@example.org") is None  # not brought back
    assert store.find_subscriber("user000270@example.org") is None
    # The sign-up made the subscriber; the (confirmed) import confirmed the pending membership.
    assert (report["added"], report["confirmed_pending"]) == (298, 1)
    signed_up = store.find_subscriber("user000250@example.org")
    assert [(h.action, h.source) for h in store.history(signed_up.id)] == [
        ("pending", "web"), ("subscribed", "import")]
    assert len(store.members(news.id)) == 298  # 297 added and still there, and the sign-up


def test_a_dead_imports_leftovers_are_deleted_a_live_ones_kept(tmp_path: Path, db) -> None:
    """What an import that died left (the watchdog did not run: a power cut, a killed process
    group) is undone by the next import: the subscribers it created that carry nothing but its
    own publication. Anyone who did something since (here: unsubscribed) stays."""
    _url, store, news = db
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout.strip()
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        now = utcnow()
        created: dict[str, int] = {}
        with store.write() as conn:
            for who, pid, beat in (("dead", int(dead_pid), now), ("live", live.pid, now),
                                   ("stale", os.getpid(), now - timedelta(hours=1))):
                import_id = conn.execute(imports.insert().values(
                    list_id=news.id, file="x.csv", host=socket.gethostname(), pid=pid,
                    started_at=beat, heartbeat_at=beat)).inserted_primary_key[0]
                names = [who] + (["published", "acted"] if who == "dead" else [])
                ids = [conn.execute(subscribers.insert().values(
                    email=f"{name}@example.org", email_key=f"{name}@example.org", attributes={})
                ).inserted_primary_key[0] for name in names]
                conn.execute(import_subscribers.insert().values(import_id=import_id, first_id=ids[0],
                                                                last_id=ids[-1]))
                created.update(zip(names, ids, strict=True))
            for name in ("published", "acted"):  # what the dead import's batches published
                conn.execute(memberships.insert().values(subscriber_id=created[name], list_id=news.id,
                                                         status="subscribed"))
                conn.execute(consent_log.insert().values(
                    subscriber_id=created[name], list_id=news.id, action="subscribed",
                    source="import", detail="x.csv line 2; editor confirmed prior consent"))
        store.set_status(created["acted"], news.id, "unsubscribed", "one_click")
        # One the dead import created has since been put on a list by someone else: it stays.
        kept, _ = store.add_subscriber("kept@example.org", news.id)
        with store.write() as conn:
            conn.execute(import_subscribers.update().where(
                import_subscribers.c.first_id == created["dead"]).values(last_id=kept))
        small = write_csv(tmp_path / "small.csv", 2)
        assert import_csv(store, small, news).added == 2
        for gone in ("dead", "stale", "published"):
            assert store.find_subscriber(f"{gone}@example.org") is None
        assert store.find_subscriber("live@example.org") is not None
        assert store.find_subscriber("kept@example.org") is not None
        acted = store.find_subscriber("acted@example.org")
        assert [(h.action, h.source) for h in store.history(acted.id)] == [
            ("subscribed", "import"), ("unsubscribed", "one_click")]
        with store.read() as conn:
            assert conn.execute(sa.select(imports.c.pid)).scalars().all() == [live.pid]
    finally:
        live.communicate(b"")


def test_a_send_runs_while_a_large_import_runs(tmp_path: Path, db, monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole send of another list happens in the middle of a 50,000-row import (stopped after
    its first write batch, so the two surely overlap): no error in either, every member of the
    other list gets the issue once, and the import then completes."""
    from newsletter.project import open_project
    from newsletter.scaffold import init_project

    url, store, _news = db
    other = store.create_list("other")
    for i in range(300):
        store.add_subscriber(f"reader{i:03d}@example.net", other.id, confirmed=True)
    root = tmp_path / "project"
    init_project(root)
    monkeypatch.setenv("NEWSLETTER_DATABASE__URL", url)
    project = open_project(root)

    importer = Importer.start(tmp_path, url, write_csv(tmp_path / "big.csv", ROWS), pause="batches")
    try:
        assert importer.next_event()["event"] == "batch"  # one batch published, more to come
        report = project.send(root / "issues" / "2026-02.yaml", "other")
        assert importer.proc.poll() is None  # the import is still under way
        while importer.events[-1]["event"] == "batch":
            importer.go()
            importer.next_event()
        import_report = importer.finish()
    finally:
        if importer.proc.poll() is None:
            importer.kill()
    assert (report.sent, report.failed_permanent, report.pending) == (300, 0, 0)
    assert import_report["added"] == ROWS
    assert len(list(project.outbox_dir.glob("new/*"))) == 300
