"""A process killed (SIGKILL) in the middle of a large import, on SQLite and PostgreSQL: nothing
of the import is in the list once its watchdog has undone the batches it published, and running
it again gives exactly what one run gives."""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from test_import_concurrency import Importer, write_csv

from newsletter.audience.importer import import_csv
from newsletter.audience.store import Store

pytestmark = pytest.mark.backends

ROWS, BATCH = 20_000, 2_000
TABLES = ("subscribers", "memberships", "consent_log", "imports", "import_subscribers")
_numbers = itertools.count(1)


def counts(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
            return {table: conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar()
                    for table in TABLES}
    finally:
        engine.dispose()


def prepare(url: str) -> str:
    """A database with a list: one member not in the file, one pending member the file has."""
    store = Store.open(url)
    news = store.create_list("news")
    store.add_subscriber("before@example.org", news.id, confirmed=True)
    store.add_subscriber("user000003@example.org", news.id)
    store.close()
    return url


def another_database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "postgresql":
        return request.getfixturevalue("pg_cluster").create_database(
            f"once_{os.getpid()}_{next(_numbers)}")
    return f"sqlite:///{tmp_path / 'once.db'}"


def list_state(url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    store = Store.open(url)
    news = store.get_list("news")
    members = [(r["email"], r["name"], r["status"], tuple(sorted(r["attributes"].items())))
               for r in store.member_rows(news.id)]
    history = sorted((h.action, h.source, h.detail) for m in store.members(news.id, status=None)
                     for h in store.history(m.subscriber_id))
    store.close()
    return members, history


@pytest.mark.parametrize("killed", ["between batches", "inside the final transaction"])
def test_sigkill_mid_import_shows_nothing_and_a_rerun_gives_one_runs_result(
        tmp_path: Path, database_url: str, backend: str, request: pytest.FixtureRequest,
        killed: str) -> None:
    url = prepare(database_url)
    before = counts(url)
    state_before = list_state(url)
    big = write_csv(tmp_path / "big.csv", ROWS, extra=["USER000007@example.org", "not-an-address"])

    importer = Importer.start(tmp_path, url, big,
                              pause="batches" if killed == "between batches" else "publish",
                              batch=BATCH)
    try:
        if killed == "between batches":
            assert importer.next_event()["event"] == "batch"
            importer.go()
            assert importer.next_event()["event"] == "batch"  # two batches published
            published = counts(url)
            assert published["memberships"] == before["memberships"] + 2 * BATCH
            assert published["imports"] == 1
        else:
            while importer.next_event()["event"] != "publish":
                pass  # now inside the final transaction, the batches before it committed
    finally:
        importer.kill()  # … and waits for its watchdog
    assert importer.proc.returncode == -signal.SIGKILL

    # The watchdog undid the batches: the list, its consent log, every table as before.
    assert counts(url) == before
    assert list_state(url) == state_before

    # Run it again: the result is that of a single run.
    store = Store.open(url)
    again = import_csv(store, big, store.get_list("news"), confirmed=True, batch=BATCH)
    store.close()
    once_url = prepare(another_database(backend, tmp_path, request))
    store = Store.open(once_url)
    once = import_csv(store, big, store.get_list("news"), confirmed=True, batch=BATCH)
    store.close()

    assert again.as_dict() == once.as_dict()
    assert (again.added, again.confirmed_pending, len(again.duplicates), len(again.problems)) == (
        ROWS - 1, 1, 1, 1)
    assert list_state(url) == list_state(once_url)
    assert counts(url) == counts(once_url)
    assert counts(url)["imports"] == 0
