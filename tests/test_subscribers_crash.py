"""A process killed (SIGKILL) in the middle of a large import: nothing of the import is in the
list, and running it again gives exactly what one run gives."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from test_import_concurrency import Importer, write_csv

from newsletter.audience.importer import import_csv
from newsletter.audience.store import Store

ROWS, BATCH = 20_000, 2_000


def counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("subscribers", "memberships", "consent_log", "imports")}


def prepare(tmp_path: Path, name: str) -> str:
    """A database with a list: one member not in the file, one pending member the file has."""
    url = f"sqlite:///{tmp_path / name}"
    store = Store.open(url)
    news = store.create_list("news")
    store.add_subscriber("before@example.org", news.id, confirmed=True)
    store.add_subscriber("user000003@example.org", news.id)
    store.close()
    return url


def list_state(url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    store = Store.open(url)
    news = store.get_list("news")
    members = [(r["email"], r["name"], r["status"], tuple(sorted(r["attributes"].items())))
               for r in store.member_rows(news.id)]
    history = sorted((h.action, h.source, h.detail) for m in store.members(news.id, status=None)
                     for h in store.history(m.subscriber_id))
    store.close()
    return members, history


@pytest.mark.parametrize("killed", ["between batches", "inside the publish"])
def test_sigkill_mid_import_shows_nothing_and_a_rerun_gives_one_runs_result(tmp_path: Path,
                                                                             killed: str) -> None:
    url = prepare(tmp_path, "newsletter.db")
    db = tmp_path / "newsletter.db"
    before = counts(db)
    members_before, _ = list_state(url)
    big = write_csv(tmp_path / "big.csv", ROWS, extra=["USER000007@example.org", "not-an-address"])

    importer = Importer.start(tmp_path, url, big,
                              pause="batches" if killed == "between batches" else "publish",
                              batch=BATCH)
    try:
        if killed == "between batches":
            assert importer.next_event()["event"] == "batch"
            importer.go()
            assert importer.next_event()["event"] == "batch"  # two batches of subscribers written
        else:
            while importer.next_event()["event"] != "publish":
                pass  # now inside the one transaction that changes the list
    finally:
        importer.kill()
    assert importer.proc.returncode == -signal.SIGKILL

    after = counts(db)
    assert (after["memberships"], after["consent_log"]) == (before["memberships"], before["consent_log"])
    assert list_state(url)[0] == members_before  # nothing of the import is in the list
    assert after["subscribers"] >= before["subscribers"] + 2 * BATCH  # created, on no list yet
    assert after["imports"] == 1  # … and recorded with the import that created them

    # Run it again: the leftovers are cleaned up and the result is that of a single run.
    store = Store.open(url)
    again = import_csv(store, big, store.get_list("news"), confirmed=True, batch=BATCH)
    store.close()
    once_url = prepare(tmp_path, "once.db")
    store = Store.open(once_url)
    once = import_csv(store, big, store.get_list("news"), confirmed=True, batch=BATCH)
    store.close()

    assert again.as_dict() == once.as_dict()
    assert (again.added, again.confirmed_pending, len(again.duplicates), len(again.problems)) == (
        ROWS - 1, 1, 1, 1)
    assert list_state(url) == list_state(once_url)
    assert counts(db) == counts(tmp_path / "once.db")
    assert counts(db)["imports"] == 0
