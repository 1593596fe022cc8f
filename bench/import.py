"""Benchmark: import a generated CSV (100,000 rows; `--rows 1000000` for a million) into a fresh
SQLite store and a fresh PostgreSQL database, while another writer keeps writing.

Prints, per back-end, the import time, rows per second and peak RSS of the importing process,
and the same for a reference measured in the same run: the bare load of the same rows into a
table without indexes (SQLite: a raw sqlite3 `executemany`; PostgreSQL: psycopg `COPY`; no
validation, no consent log). Each runs in a child process of its own, so the peak RSS is theirs
alone. PostgreSQL is a throw-away cluster (tests/pgcluster.py) unless `--url` names an empty
database on a server; `--no-postgres` skips it. Meanwhile a writer thread in the benchmark process changes a
member's status in a loop (`Store.set_status`, a write transaction each, as serve's one-click
unsubscribes do): its longest wait shows how long the import held the write lock at a time.
Targets: 100,000 rows in under 5 s, 1,000,000 in under 20 s, memory flat. The writer's longest
wait is the import's last transaction (docs/data-model.md, "CSV import").

    .venv/bin/python bench/import.py [--rows N] [--batch N] [--no-writer] [--url URL | --no-postgres]
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FIRST = ["Anna", "Bernd", "Claudia", "Dilek", "Erik", "Jörg", "Mónica", "Özlem", "Sara", "Lukas"]
LAST = ["Schmidt", "Müller", "Weiß", "Yılmaz", "Jansen", "Groß", "Nguyen", "Kowalski"]
# Local parts as people really have them: plain ASCII, with 1 % unusual ones (an apostrophe: not
# the fast path, the full validator). Non-ASCII local parts are refused, so none here.
LOCAL = ["schmidt", "mueller", "weiss", "yilmaz", "jansen", "gross", "nguyen", "kowalski"]
UNUSUAL = "o'neil"
DOMAINS = ["example.org", "example.com", "Beispiel.DE", "mail.example.net", "straße.example"]


def rows(count: int) -> Iterator[tuple[str, str, str]]:
    for i in range(count):
        local = f"{UNUSUAL if i % 100 == 0 else 'user'}{i}.{LOCAL[i % len(LOCAL)]}"
        yield (f"{local}@{DOMAINS[i % len(DOMAINS)]}", f"{FIRST[i % len(FIRST)]} {LAST[i % len(LAST)]}",
               f"Stadtteil {i % 37}")


def generate(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(["E-Mail", "Name", "Stadtteil"])
        writer.writerows(rows(count))


# --- the child processes ------------------------------------------------------------------------


def child_reference(db: str, csv_path: str) -> dict[str, float]:
    import sqlite3

    with open(csv_path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter=";")
        next(reader)
        data = [tuple(row) for row in reader]  # in memory, as a plain executemany has them
    start = time.perf_counter()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (email TEXT, name TEXT, city TEXT)")
    with conn:
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)", data)
    conn.close()
    return {"seconds": time.perf_counter() - start}


def child_reference_pg(url: str, csv_path: str) -> dict[str, float]:
    import psycopg
    import sqlalchemy as sa

    with open(csv_path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter=";")
        next(reader)
        data = [tuple(row) for row in reader]
    start = time.perf_counter()
    dsn = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as conn, conn.cursor() as cursor:
        cursor.execute("CREATE TABLE reference_rows (email text, name text, city text)")
        with cursor.copy("COPY reference_rows FROM STDIN") as copy:
            for row in data:
                copy.write_row(row)
        conn.commit()
        cursor.execute("DROP TABLE reference_rows")
        conn.commit()
    return {"seconds": time.perf_counter() - start}


def child_import(url: str, csv_path: str, batch: int) -> dict[str, float]:
    from newsletter.audience.importer import import_csv
    from newsletter.audience.store import Store

    store = Store.open(url)
    start = time.perf_counter()
    report = import_csv(store, Path(csv_path), store.get_list("bench"), confirmed=True, batch=batch)
    elapsed = time.perf_counter() - start
    store.close()
    return {"seconds": elapsed, "added": report.added, "problems": len(report.problems)}


def run_child(*args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# --- the writer next to the import ----------------------------------------------------------


class Writer(threading.Thread):
    """Toggles one member between subscribed and unsubscribed, one write transaction each,
    until stopped; records how long each write took."""

    def __init__(self, url: str, list_id: int, subscriber_id: int) -> None:
        super().__init__(daemon=True)
        from newsletter.audience.store import Store

        self.store = Store.open(url)
        self.list_id, self.subscriber_id = list_id, subscriber_id
        self.waits: list[float] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        statuses = ("unsubscribed", "subscribed")
        i = 0
        while not self.stop.is_set():
            start = time.perf_counter()
            try:
                self.store.set_status(self.subscriber_id, self.list_id, statuses[i % 2], "cli")
            except Exception as exc:  # reported, not raised: the benchmark goes on
                self.errors.append(str(exc))
            self.waits.append(time.perf_counter() - start)
            i += 1
            self.stop.wait(0.005)  # one write every ~5 ms, like a busy one-click endpoint
        self.store.close()


def measure(url: str, csv_path: Path, rows_count: int, batch: int, writer_on: bool) -> dict[str, Any]:
    """The import into `url` (an empty database), with the writer thread next to it."""
    from newsletter.audience.store import Store

    store = Store.open(url)
    mailing_list = store.create_list("bench")
    someone, _ = store.add_subscriber("writer@example.net", mailing_list.id, confirmed=True)
    writer = Writer(url, mailing_list.id, someone) if writer_on else None
    if writer:
        writer.start()
    result: dict[str, Any] = run_child("import", url, str(csv_path), str(batch))
    if writer:
        writer.stop.set()
        writer.join()
    members = sum(next(c for c in store.list_counts() if c.list.id == mailing_list.id).counts.values())
    store.close()
    assert result["added"] == rows_count and members == rows_count + 1, (result, members)
    result["writer"] = writer
    return result


def report(name: str, rows_count: int, result: dict[str, Any], ref: dict[str, float], ref_name: str,
           target: float | None) -> None:
    seconds = result["seconds"]
    verdict = f"  [target < {target:g} s: {'ok' if seconds < target else 'MISSED'}]" if target else ""
    print(f"{name}:")
    print(f"  import_csv:             {seconds:.2f} s  ({rows_count / seconds:,.0f} rows/s)"
          f"  peak RSS {result['peak_rss_mb']:.0f} MB, process CPU {result['cpu']:.1f} s"
          f" (+ {result['cpu_children']:.1f} s in its helpers){verdict}")
    label = f"reference {ref_name}:"
    print(f"  {label:<24}{ref['seconds']:.2f} s  ({rows_count / ref['seconds']:,.0f} rows/s)"
          f"  peak RSS {ref['peak_rss_mb']:.0f} MB (the rows in a list)")
    print(f"  ratio import/reference: {seconds / ref['seconds']:.1f}x")
    writer = result["writer"]
    if writer:
        waits = sorted(writer.waits)
        print(f"  concurrent writer:      {len(waits)} writes, {len(writer.errors)} failed; wait "
              f"median {waits[len(waits) // 2] * 1000:.0f} ms, "
              f"p99 {waits[int(len(waits) * 0.99)] * 1000:.0f} ms, max {waits[-1] * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=None, help="rows per write transaction")
    parser.add_argument("--no-writer", action="store_true", help="no concurrent writer")
    parser.add_argument("--url", help="an empty PostgreSQL database (default: a throw-away cluster)")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        result = (child_reference(*rest) if kind == "reference"
                  else child_reference_pg(*rest) if kind == "reference-pg"
                  else child_import(rest[0], rest[1], int(rest[2])))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        result["peak_rss_mb"] = usage.ru_maxrss / 1024
        result["cpu"] = usage.ru_utime + usage.ru_stime
        # The import's helper processes (the CSV reader, the watchdog): CPU moved, not saved.
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        result["cpu_children"] = children.ru_utime + children.ru_stime
        print(json.dumps(result))
        return

    from newsletter.audience.importer import WRITE_BATCH

    batch = args.batch or WRITE_BATCH
    target = {100_000: 5.0, 1_000_000: 20.0}.get(args.rows)
    print(f"rows: {args.rows:,} (batch {batch:,})")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        csv_path = root / "subscribers.csv"
        generate(csv_path, args.rows)
        parse = time.perf_counter()
        with csv_path.open(encoding="utf-8", newline="") as handle:
            parsed = sum(1 for _ in csv.reader(handle, delimiter=";")) - 1
        parse = time.perf_counter() - parse
        print(f"bare csv.reader pass:     {parse:.2f} s ({parsed:,} rows; the floor of any import)")

        ref = run_child("reference", str(root / "reference.db"), str(csv_path))
        result = measure(f"sqlite:///{root / 'bench.db'}", csv_path, args.rows, batch, not args.no_writer)
        report("SQLite", args.rows, result, ref, "executemany", target)

        if not args.no_postgres:
            cluster = None
            url = args.url
            if url is None:
                sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
                from pgcluster import start_cluster

                cluster = start_cluster()
                url = cluster.create_database("bench")
            try:
                ref_pg = run_child("reference-pg", url, str(csv_path))
                result_pg = measure(url, csv_path, args.rows, batch, not args.no_writer)
            finally:
                if cluster is not None:
                    cluster.stop()
            report("PostgreSQL" + (" (throw-away cluster, fsync off)" if cluster else ""),
                   args.rows, result_pg, ref_pg, "COPY", None)


if __name__ == "__main__":
    main()
