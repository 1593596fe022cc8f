"""Benchmark: import a generated 100,000-row CSV into a fresh SQLite store.

Prints the import time, rows per second, and the ratio against a reference measured in the
same run: a raw sqlite3 `executemany` of the same rows into a bare table (no validation, no
indexes, no consent log). Target: the import finishes in under 5 s.

    .venv/bin/python bench/import.py [--rows N]
"""

from __future__ import annotations

import argparse
import csv
import sqlite3
import tempfile
import time
from pathlib import Path

from newsletter.audience.importer import import_csv
from newsletter.audience.store import Store

FIRST = ["Anna", "Bernd", "Claudia", "Dilek", "Erik", "Jörg", "Mónica", "Özlem", "Sara", "Lukas"]
LAST = ["Schmidt", "Müller", "Weiß", "Yılmaz", "Jansen", "Groß", "Nguyen", "Kowalski"]
# Local parts as people really have them: plain ASCII, with 1 % unusual ones (an apostrophe: not
# the fast path, the full validator). Non-ASCII local parts are refused, so none here.
LOCAL = ["schmidt", "mueller", "weiss", "yilmaz", "jansen", "gross", "nguyen", "kowalski"]
UNUSUAL = "o'neil"
DOMAINS = ["example.org", "example.com", "Beispiel.DE", "mail.example.net", "straße.example"]


def generate(path: Path, rows: int) -> list[tuple[str, str, str]]:
    data = [
        (f"{UNUSUAL if i % 100 == 0 else 'user'}{i}.{LOCAL[i % len(LOCAL)]}@{DOMAINS[i % len(DOMAINS)]}",
         f"{FIRST[i % len(FIRST)]} {LAST[i % len(LAST)]}", f"Stadtteil {i % 37}")
        for i in range(rows)
    ]
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(["E-Mail", "Name", "Stadtteil"])
        writer.writerows(data)
    return data


def reference(db: Path, data: list[tuple[str, str, str]]) -> float:
    start = time.perf_counter()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (email TEXT, name TEXT, city TEXT)")
    with conn:
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)", data)
    conn.close()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        csv_path = root / "subscribers.csv"
        data = generate(csv_path, args.rows)
        ref = reference(root / "reference.db", data)

        store = Store.open(f"sqlite:///{root / 'bench.db'}")
        mailing_list = store.create_list("bench")
        start = time.perf_counter()
        report = import_csv(store, csv_path, mailing_list, confirmed=True)
        elapsed = time.perf_counter() - start
        members = len(store.members(mailing_list.id))
        store.close()

    assert report.added == args.rows == members, (report.added, members)
    print(f"rows:                 {args.rows:,}")
    print(f"import_csv:           {elapsed:.2f} s  ({args.rows / elapsed:,.0f} rows/s)"
          f"  [target < 5 s: {'ok' if elapsed < 5 else 'MISSED'}]")
    print(f"reference executemany: {ref:.2f} s  ({args.rows / ref:,.0f} rows/s)")
    print(f"ratio import/reference: {elapsed / ref:.1f}x")


if __name__ == "__main__":
    main()
