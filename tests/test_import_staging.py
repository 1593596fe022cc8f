"""The import's staging (docs/data-model.md, "CSV import"): the rows sorted by address into
`import_rows`, a person's rows merged as neighbours there, new subscribers numbered in address
order (from `seq` when a batch's rows are consecutive, else by a window function), the helper
process and the in-process reader giving the same rows. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import sqlalchemy as sa

from newsletter.audience import import_stage
from newsletter.audience.csvfile import open_csv, read_csv
from newsletter.audience.importer import import_csv
from newsletter.audience.statuses import STATUSES
from newsletter.audience.store import Store
from newsletter.audience.tables import subscribers

pytestmark = pytest.mark.backends


def _messy_file(path: Path) -> Path:
    """People in random order, some of them on up to four lines (in other cases, filling in
    a name or attributes the first line left out), a few bad lines, two attribute columns."""
    rng = random.Random(12)
    lines = []
    for i in range(120):
        for copy in range(1 + (i % 7 == 0) + 2 * (i % 11 == 0)):
            address = f"Person{i:03d}@Example.org" if copy % 2 else f"person{i:03d}@example.org"
            name = "" if copy == 0 and i % 3 == 0 else f"Name {i} {copy}"
            ort = "" if copy == 0 and i % 2 == 0 else f"Ort {copy}"
            lines.append(f"{address},{name},{ort},{'x' if copy else ''}")
    lines += ["no-address,Bad,,", "a@b@c,Bad,,", ",,,"]
    rng.shuffle(lines)
    path.write_text("email,name,Ort,Notiz\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("helper", [False, True], ids=["in-process", "helper"])
def test_duplicates_are_merged_as_the_in_memory_reader_merges_them(
        tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, helper: bool) -> None:
    path = _messy_file(tmp_path / "messy.csv")
    if helper:
        monkeypatch.setattr(import_stage, "PARALLEL_LINES", 0)
    parsed = read_csv(path)
    store = Store.open(database_url)
    try:
        news = store.create_list("news")
        report = import_csv(store, path, news, confirmed=True, batch=7)
        got = {r["email"]: (r["name"], r["attributes"]) for r in store.member_rows(news.id)}
    finally:
        store.close()
    assert got == {row.email: (row.name, row.attributes) for row in parsed.rows}
    assert report.added == len(parsed.rows)
    assert [(d.line, d.first_line, d.email) for d in report.duplicates] == \
        sorted((d.line, d.first_line, d.email) for d in parsed.duplicates)
    assert [p.format() for p in report.problems] == [p.format() for p in parsed.problems]


def test_new_subscribers_get_consecutive_ids_in_address_order(tmp_path: Path, database_url: str) -> None:
    """Batches of new people only (ids from `seq`) and batches with people who were there before
    in between (the window function): either way one run of ids, in the order of the addresses."""
    store = Store.open(database_url)
    try:
        news = store.create_list("news")
        before = [f"p{i:03d}@example.org" for i in range(0, 200, 9)]  # every ninth already there
        for address in before:
            store.add_subscriber(address, news.id)
        path = tmp_path / "people.csv"
        path.write_text("email\n" + "".join(f"p{i:03d}@example.org\n" for i in range(199, -1, -1)),
                        encoding="utf-8")
        report = import_csv(store, path, news, confirmed=True, batch=4)
        with store.read() as conn:
            new = conn.execute(sa.select(subscribers.c.id).where(subscribers.c.email.not_in(before))
                               .order_by(subscribers.c.email_key)).scalars().all()
    finally:
        store.close()
    assert report.added == len(new) == 200 - len(before)
    assert new == list(range(new[0], new[0] + len(new)))


def test_both_readers_stage_the_same_rows(tmp_path: Path) -> None:
    """`staged_chunks` (what the import stages) and `chunks` (the rows as objects) run the same
    checks: the same rows, attributes as SQLAlchemy's JSON writes them, a fresh token_id each."""
    path = _messy_file(tmp_path / "messy.csv")
    clash = tmp_path / "clash.csv"  # two columns named alike: the attributes' JSON the slow way
    clash.write_text("email,column 2,,Tag\n" + "".join(f"u{i}@example.org,a{i},,t\n" for i in range(9)),
                     encoding="utf-8")
    statuses = tmp_path / "statuses.csv"
    cells = ["", "Pending", "bounced", "x", *STATUSES]
    statuses.write_text("email,status\n" + "".join(f"s{i}@example.org,{c}\n" for i, c in enumerate(cells)),
                        encoding="utf-8")
    for file in (path, clash, statuses):
        with open_csv(file) as plain:
            rows = [row for chunk in plain.chunks(5) for row in chunk]
        with open_csv(file) as staged_file:
            staged = [row for chunk in staged_file.staged_chunks(5) for row in chunk]
        assert [p.format() for p in staged_file.problems] == [p.format() for p in plain.problems]
        assert [s[:4] for s in staged] == [(r.line, r.email, r.key, r.name) for r in rows]
        assert [s[4] for s in staged] == [json.dumps(r.attributes) for r in rows]
        # The status only from a file with a status column: one value less to stage.
        assert [s[6:] for s in staged] == [(r.status,) if file == statuses else () for r in rows]
        tokens = [s[5] for s in staged]
        assert len(set(tokens)) == len(tokens) and all(
            re.fullmatch(r"[A-Za-z0-9_-]{16}", t) for t in tokens)
