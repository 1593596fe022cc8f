"""A process killed (SIGKILL) in the middle of a large import leaves the database unchanged."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from newsletter.audience.importer import import_csv
from newsletter.audience.store import Store

IMPORTER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from newsletter.audience.store import Store
    from newsletter.audience.importer import import_csv

    store = Store.open(sys.argv[1])
    news = store.get_list("news")

    def progress(phase, done, total):
        if phase == "write":
            print(phase, done, total, flush=True)
            time.sleep(0.05)  # keep the transaction open long enough to be killed inside it

    import_csv(store, Path(sys.argv[2]), news, confirmed=True, on_progress=progress)
    print("committed", flush=True)
""")


def counts(db: Path) -> tuple[int, ...]:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return tuple(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                     for table in ("subscribers", "memberships", "consent_log"))


def test_sigkill_during_a_200k_row_import_leaves_the_database_unchanged(tmp_path: Path) -> None:
    db = tmp_path / "newsletter.db"
    url = f"sqlite:///{db}"
    store = Store.open(url)
    news = store.create_list("news")
    store.add_subscriber("before@example.org", news.id, confirmed=True)
    store.close()
    before = counts(db)

    big = tmp_path / "big.csv"
    with big.open("w", encoding="utf-8") as handle:
        handle.write("email;name\n")
        handle.writelines(f"user{i}@example.org;User {i}\n" for i in range(200_000))
    script = tmp_path / "importer.py"
    script.write_text(IMPORTER, encoding="utf-8")

    proc = subprocess.Popen([sys.executable, str(script), url, str(big)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        _phase, done, _total = line.split()
        if int(done) >= 50_000:  # well into writing, long before the commit
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (seen, proc.stderr.read() if proc.stderr else "")
    assert not any(line.startswith("committed") for line in seen)

    assert counts(db) == before
    # The database is usable straight away: no stale lock, and the import can simply be re-run.
    store = Store.open(url)
    assert [m.email for m in store.members(news.id)] == ["before@example.org"]
    small = tmp_path / "small.csv"
    small.write_text("email\nuser1@example.org\n", encoding="utf-8")
    assert import_csv(store, small, store.get_list("news")).added == 1
    store.close()
