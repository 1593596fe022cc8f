"""A database that cannot be used — not a database, damaged, a full disk, locked by another
process; on PostgreSQL a server that is not there, a login refused, a database that does not
exist, read-only, without free connections, a lock held too long, a deadlock, no driver — is one
line naming the database and what to do, exit 1, on every command that opens the store and on
`newsletter serve` (start-up and requests). Real faults, no mocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest
import sqlalchemy as sa
from pgcluster import Cluster
from ports import free_port
from sqlalchemy.engine import Engine
from test_serve import wait_for
from typer.testing import CliRunner, Result

from newsletter.cli import app
from newsletter.db.engine import DatabaseError, open_engine
from newsletter.project import open_project
from newsletter.scaffold import init_project
from newsletter.tokens import Tokens

pytestmark = pytest.mark.backends
# The tests of a SQLite file's own faults (garbage, damage, file-size limits, file locks).
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

DB = "subscribers/newsletter.db"  # as the messages name it, seen from the project directory
ISSUE = "issues/2026-02.yaml"
MEMBERS = ["anna@example.org", "bernd@example.org", "carla@example.org"]

# Every command that opens the store (the arguments after the command; the list is `news`).
STORE_COMMANDS = {
    "lists create": ["lists", "create", "extra"],
    "lists ls": ["lists", "ls"],
    "subscribers import": ["subscribers", "import", "subscribers/example.csv", "--list", "news"],
    "subscribers export": ["subscribers", "export", "--list", "news"],
    "subscribers add": ["subscribers", "add", "neu@example.org", "--list", "news"],
    "subscribers remove": ["subscribers", "remove", "anna@example.org"],
    "subscribers remove --forget": ["subscribers", "remove", "anna@example.org", "--forget"],
    "subscribers ls": ["subscribers", "ls"],
    "subscribers show": ["subscribers", "show", "anna@example.org"],
    "send": ["send", ISSUE, "--list", "news", "--yes"],
    "sends ls": ["sends", "ls"],
    "sends show": ["sends", "show", "1"],
}


@pytest.fixture
def in_project(project_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project with the list `news` and three subscribed members; the working directory is
    the project (so messages name `subscribers/newsletter.db`). The WAL is checkpointed."""
    monkeypatch.chdir(project_dir)
    with open_project(project_dir) as project:
        store = project.store
        news = store.create_list("news")
        for address in MEMBERS:
            store.add_subscriber(address, news.id, confirmed=True)
        assert store.checkpoint()
    return project_dir


def cli(project_dir: Path, args: list[str]) -> Result:
    return CliRunner().invoke(app, [*args, "--project", str(project_dir)])


def assert_one_line(result: Result, start: str) -> str:
    """Exit 1 with exactly one line on stderr, starting with `start`; no traceback anywhere."""
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    # CliRunner turns an unhandled exception into exit code 1 too: it must have been SystemExit.
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), result.stderr
    return lines[0]


def members(project_dir: Path) -> list[str]:
    with open_project(project_dir) as project:
        store = project.store
        return sorted(m.email for m in store.members(store.get_list("news").id))


# --- a file that is not a database, a damaged database ------------------------------------------


@sqlite_only
@pytest.mark.parametrize("command", STORE_COMMANDS)
def test_not_a_database_is_one_line_on_every_command(in_project: Path, command: str) -> None:
    (in_project / DB).write_bytes(b"these are not the bytes of a SQLite database\n" * 100)
    line = assert_one_line(cli(in_project, STORE_COMMANDS[command]),
                           f"{DB}: not a SQLite database (file is not a database); ")
    assert "restore it from a backup or point [database] url at another file" in line


def _garble_schema(path: Path) -> None:
    # Page 1 after the 100-byte header holds the schema table: every statement needs it.
    data = bytearray(path.read_bytes())
    data[100:4096] = bytes(range(256)) * 15 + bytes(range(156))
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@sqlite_only
@pytest.mark.parametrize("damage", [_garble_schema, _truncate], ids=["garbled", "truncated"])
@pytest.mark.parametrize("command", STORE_COMMANDS)
def test_damaged_database_is_one_line_on_every_command(
    in_project: Path, command: str, damage: Callable[[Path], None]
) -> None:
    damage(in_project / DB)
    line = assert_one_line(cli(in_project, STORE_COMMANDS[command]),
                           f"{DB}: the database file is damaged (database disk image is malformed); ")
    assert "restore it from a backup" in line


# --- a full disk --------------------------------------------------------------------------------


def _big_csv(path: Path, rows: int) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        handle.write("E-Mail;Name\n")
        for i in range(rows):
            handle.write(f"person{i:06d}@example.org;Person Nummer {i}\n")
    return path


# `newsletter` with a file size limit: writes past it fail with EFBIG (SIGXFSZ ignored, so they
# fail instead of killing the process). Set in the child itself: a preexec_fn is unsafe in a
# process with threads (the test servers').
LIMITED = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv.pop(1)), resource.RLIM_INFINITY))
sys.argv[0] = "newsletter"
runpy.run_module("newsletter", run_name="__main__", alter_sys=True)
"""


@sqlite_only
def test_disk_full_during_import_is_one_line_and_imports_nothing(
    in_project: Path, tmp_path: Path
) -> None:
    """The file-size limit stands in for a full disk: writes fail with EFBIG, which SQLite
    reports as a disk I/O error (it says "full" only for ENOSPC)."""
    csv_file = _big_csv(tmp_path / "gross.csv", 30_000)
    limit = (in_project / DB).stat().st_size + 256 * 1024  # far less than 30,000 rows need
    done = subprocess.run(
        [sys.executable, "-c", LIMITED, str(limit), "subscribers", "import", str(csv_file),
         "--list", "news"],
        cwd=in_project, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"{DB}: writing the file failed (disk I/O error); the disk is full, the file is over a "
        "size limit or quota, or the disk is failing — free space or check the disk and run the "
        "command again; nothing was half written (the transaction was rolled back)"]
    assert members(in_project) == MEMBERS


@contextmanager
def page_limit(extra_pages: int) -> Iterator[None]:
    """Every SQLite connection opened meanwhile may grow its file by `extra_pages` pages only:
    SQLite then fails writes with SQLITE_FULL, "database or disk is full" — what it says when the
    disk is full (ENOSPC)."""

    def on_connect(dbapi_connection: object, _record: object) -> None:
        cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
        pages = cursor.execute("PRAGMA page_count").fetchone()[0]
        cursor.execute(f"PRAGMA max_page_count = {pages + extra_pages}")
        cursor.close()

    sa.event.listen(Engine, "connect", on_connect)
    try:
        yield
    finally:
        sa.event.remove(Engine, "connect", on_connect)


@sqlite_only
def test_sqlite_full_during_import_is_the_disk_is_full_line(in_project: Path, tmp_path: Path) -> None:
    csv_file = _big_csv(tmp_path / "gross.csv", 5_000)
    with page_limit(20):
        result = cli(in_project, ["subscribers", "import", str(csv_file), "--list", "news"])
    assert_one_line(result, f"{DB}: the disk is full (database or disk is full); free space and run "
                            "the command again; nothing was half written (the transaction was "
                            "rolled back)")
    assert members(in_project) == MEMBERS


# --- a lock held by another process -------------------------------------------------------------

LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # until the test closes stdin
conn.execute("ROLLBACK")
"""


@contextmanager
def locked_by_another_process(database: Path) -> Iterator[None]:
    """A second process holds the write lock (`BEGIN EXCLUSIVE`) until the block ends."""
    child = subprocess.Popen([sys.executable, "-c", LOCKER, str(database)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == "locked\n"
        yield
    finally:
        child.stdin.close()
        assert child.wait(30) == 0


@sqlite_only
@pytest.mark.parametrize("command", STORE_COMMANDS)
def test_lock_timeout_is_one_line_on_every_command(
    in_project: Path, command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The busy timeout comes from the URL (pysqlite's `timeout`); 30 s without it.
    monkeypatch.setenv("NEWSLETTER_DATABASE__URL", f"sqlite:///{DB}?timeout=0.2")
    with locked_by_another_process(in_project / DB):
        started = time.monotonic()
        result = cli(in_project, STORE_COMMANDS[command])
        assert time.monotonic() - started < 15  # the 0.2 s, not the default 30 s
    assert_one_line(result, f"{DB}: the database is locked by another process for more than 0.2 s "
                            "(database is locked); wait until the other command ")
    assert members(in_project) == MEMBERS


def test_busy_timeout_in_the_url_must_be_seconds(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="timeout must be a number of seconds"):
        open_engine(f"sqlite:///{tmp_path / 'x.db'}?timeout=lange")
    engine = open_engine(f"sqlite:///{tmp_path / 'x.db'}?timeout=2.5")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 2500
    engine.dispose()
    engine = open_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    engine.dispose()


def test_constraint_violations_are_not_translated(database_url: str) -> None:
    """Only failures of the database become DatabaseError; the callers handle their own errors."""
    engine = open_engine(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    engine.dispose()


# --- newsletter serve ---------------------------------------------------------------------------


def _serve_until_it_exits(project_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NEWSLETTER_DATABASE__URL": f"sqlite:///{DB}?timeout=0.2"}
    return subprocess.run([sys.executable, "-m", "newsletter", "serve", "--port", str(free_port())],
                          cwd=project_dir, env=env, capture_output=True, text=True, timeout=120)


@sqlite_only
def test_serve_with_a_broken_database_stops_with_one_line(in_project: Path) -> None:
    (in_project / DB).write_bytes(b"\x00garbage" * 512)
    done = _serve_until_it_exits(in_project)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Serving" not in done.stdout  # it never claimed to serve
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"{DB}: not a SQLite database (file is not a database); restore it from a backup or point "
        "[database] url at another file"]


@sqlite_only
def test_serve_with_a_locked_database_stops_with_one_line(in_project: Path) -> None:
    with locked_by_another_process(in_project / DB):
        done = _serve_until_it_exits(in_project)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Serving" not in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"{DB}: the database is locked by another process for more than 0.2 s (database is "
        "locked); wait until the other command (an import, a send, a sqlite3 shell) is done and "
        "run this one again"]


@sqlite_only
def test_serve_answers_a_request_on_a_locked_database_with_the_error_page(
    in_project: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, "NEWSLETTER_DATABASE__URL": f"sqlite:///{DB}?timeout=0.3",
           "NEWSLETTER_NEWSLETTER__BASE_URL": f"http://127.0.0.1:{port}"}
    with open_project(in_project) as project:
        store = project.store
        news = store.get_list("news")
        anna = store.find_subscriber("anna@example.org")
        assert anna is not None and anna.token_id
        token = Tokens.for_project(project).mint_unsubscribe(anna.token_id, news.id)
        # the member the server's one-click will unsubscribe, read before the server runs
        anna_id = anna.id
    log = tmp_path / "serve.log"
    with log.open("w") as log_file:
        server = subprocess.Popen([sys.executable, "-m", "newsletter", "serve", "--port", str(port)],
                                  cwd=in_project, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

            def healthy() -> bool:
                assert server.poll() is None, log.read_text()
                try:
                    return client.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(healthy, timeout=60)
            one_click = {"List-Unsubscribe": "One-Click"}
            with locked_by_another_process(in_project / DB):
                failed = client.post(f"/u/{token}", data=one_click)
            assert failed.status_code == 503
            assert "Leider ist ein Fehler aufgetreten" in failed.text
            assert client.post(f"/u/{token}", data=one_click).status_code == 200  # lock gone
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
    output = log.read_text()
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1, output
    assert errors[0].endswith(
        f"newsletter.serve ERROR POST /u/…: {DB}: the database is locked by another process for more "
        "than 0.3 s (database is locked); wait until the other command (an import, a send, a "
        "sqlite3 shell) is done and run this one again")
    with open_project(in_project) as project:
        assert project.store.membership_status(anna_id, news.id) == "unsubscribed"


# --- PostgreSQL: the server, the login, the database --------------------------------------------

SECRET = "geheim-7f3a"  # a password in the URL: never printed


def _pg_project(tmp_path: Path) -> Path:
    root = tmp_path / "pg-project"
    init_project(root)
    return root


def _newsletter(project_dir: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `newsletter` program in the project, with `url` as its database."""
    env = {**os.environ, "NEWSLETTER_DATABASE__URL": url}
    return subprocess.run([sys.executable, "-m", "newsletter", *args], cwd=project_dir, env=env,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_exit_1(done: subprocess.CompletedProcess[str], start: str) -> str:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    assert SECRET not in done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), done.stderr
    return lines[0]


def _admin(cluster: Cluster, statement: str) -> None:
    with psycopg.connect(f"host=127.0.0.1 port={cluster.port} user=postgres dbname=postgres",
                         autocommit=True) as conn:
        conn.execute(statement)


def test_no_server_on_that_port_is_one_line(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:{free_port()}/newsletter"
    line = assert_one_line_exit_1(_newsletter(_pg_project(tmp_path), url, "subscribers", "ls"),
                                  url.replace(SECRET, "***") + ": cannot connect: ")
    assert "nothing listens there (Connection refused); start the PostgreSQL server, or fix the " \
           "host and port in [database] url" in line


def test_unknown_host_is_one_line(tmp_path: Path) -> None:
    url = "postgresql+psycopg://postgres@db.invalid/newsletter"
    line = assert_one_line_exit_1(_newsletter(_pg_project(tmp_path), url, "lists", "ls"),
                                  f"{url}: cannot connect: the host name is unknown (")
    assert line.endswith("); fix the host in [database] url")


def test_database_that_does_not_exist_says_createdb(tmp_path: Path, pg_cluster: Cluster) -> None:
    url = pg_cluster.url("gibtsnicht")
    line = assert_one_line_exit_1(_newsletter(_pg_project(tmp_path), url, "subscribers", "ls"),
                                  f'{url}: the database "gibtsnicht" does not exist on the server; ')
    assert "createdb gibtsnicht" in line


def test_user_that_does_not_exist_is_one_line_without_the_password(
        tmp_path: Path, pg_cluster: Cluster) -> None:
    url = pg_cluster.url("postgres").replace("postgres@", f"niemand:{SECRET}@")
    shown = url.replace(SECRET, "***")
    line = assert_one_line_exit_1(_newsletter(_pg_project(tmp_path), url, "subscribers", "ls"),
                                  f'{shown}: the server has no user (role) "niemand"; ')
    assert "createuser niemand" in line


@pytest.mark.parametrize("command", ["subscribers ls", "subscribers add", "lists create"])
def test_no_free_connection_is_one_line(tmp_path: Path, pg_cluster: Cluster, command: str) -> None:
    # A user whose connection limit is reached (limits do not apply to superusers like postgres).
    role = f"limited_{os.getpid()}_{command.replace(' ', '_')}"
    _admin(pg_cluster, f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0")
    url = pg_cluster.url("postgres").replace("postgres@", f"{role}:{SECRET}@")
    args = {"subscribers ls": ["subscribers", "ls"], "lists create": ["lists", "create", "news"],
            "subscribers add": ["subscribers", "add", "a@example.org", "--list", "news"]}[command]
    line = assert_one_line_exit_1(_newsletter(_pg_project(tmp_path), url, *args),
                                  url.replace(SECRET, "***") + ": no free connection: ")
    assert f'(too many connections for role "{role}")' in line
    assert "close other connections or raise the limit" in line


def test_read_only_database_is_one_line_and_reads_still_work(
        tmp_path: Path, pg_cluster: Cluster) -> None:
    url = pg_cluster.create_database(f"ro_{os.getpid()}")
    root = _pg_project(tmp_path)
    assert _newsletter(root, url, "lists", "create", "news").returncode == 0
    _admin(pg_cluster, f'ALTER DATABASE "{sa.make_url(url).database}" '
                       "SET default_transaction_read_only = on")
    line = assert_one_line_exit_1(
        _newsletter(root, url, "subscribers", "add", "a@example.org", "--list", "news"),
        f"{url}: the database is read-only (cannot execute ")
    assert "point [database] url at the primary server" in line
    listed = _newsletter(root, url, "lists", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    assert '"name": "news"' in listed.stdout


def test_lock_held_too_long_is_one_line(
        tmp_path: Path, pg_cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL's counterpart of the SQLite busy timeout: `lock_timeout` (30 s unless the URL
    passes its own server options, as here)."""
    url = pg_cluster.create_database(f"lock_{os.getpid()}")
    root = _pg_project(tmp_path)
    assert _newsletter(root, url, "lists", "create", "news").returncode == 0
    with psycopg.connect(f"host=127.0.0.1 port={pg_cluster.port} user=postgres "
                         f"dbname={sa.make_url(url).database}") as holder:
        holder.execute("LOCK TABLE memberships IN ACCESS EXCLUSIVE MODE")
        done = _newsletter(root, url + "?options=-c%20lock_timeout%3D200", "subscribers", "add",
                           "a@example.org", "--list", "news")
        holder.rollback()
    line = assert_one_line_exit_1(done, f"{url}?options=")
    assert "the database is locked by another process for longer than lock_timeout " \
           "(canceling statement due to lock timeout)" in line
    assert _newsletter(root, url, "subscribers", "add", "a@example.org", "--list",
                       "news").returncode == 0


def test_deadlock_is_one_line_saying_run_it_again(pg_cluster: Cluster) -> None:
    """Two transactions taking two rows in opposite orders: the one the server picks fails with
    a line saying to run the command again; the other goes through."""
    url = pg_cluster.create_database(f"deadlock_{os.getpid()}")
    dsn = f"host=127.0.0.1 port={pg_cluster.port} user=postgres dbname={sa.make_url(url).database}"
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)")
    engine = open_engine(url)
    both_hold_one = threading.Barrier(2)
    outcomes: list[BaseException | None] = []

    def lock(first: int, second: int) -> None:
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"SELECT 1 FROM t WHERE id = {first} FOR UPDATE")
                both_hold_one.wait()
                conn.exec_driver_sql(f"SELECT 1 FROM t WHERE id = {second} FOR UPDATE")
            outcomes.append(None)
        except BaseException as exc:  # asserted below
            outcomes.append(exc)

    threads = [threading.Thread(target=lock, args=pair) for pair in ((1, 2), (2, 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.dispose()
    (failure,) = [exc for exc in outcomes if exc is not None]
    assert isinstance(failure, DatabaseError), failure
    assert str(failure) == (
        f"{url}: another command changed the same rows at the same time (deadlock detected); run "
        "this command again; nothing was half written (the transaction was rolled back)")


def test_missing_driver_says_what_to_install(tmp_path: Path) -> None:
    """Without psycopg (blocked in this interpreter) the URL cannot be used: say what to install."""
    root = _pg_project(tmp_path)
    code = ("import sys; sys.modules['psycopg'] = None; sys.argv[0] = 'newsletter'; "
            "from newsletter.cli import main; main()")
    url = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:5432/newsletter"
    done = subprocess.run([sys.executable, "-c", code, "subscribers", "ls"], cwd=root,
                          env={**os.environ, "NEWSLETTER_DATABASE__URL": url},
                          capture_output=True, text=True, timeout=120)
    line = assert_one_line_exit_1(done, f"cannot use the database URL {url.replace(SECRET, '***')}: ")
    assert "pip install 'newsletter[postgres]'" in line


def test_serve_without_the_server_stops_with_one_line(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:{free_port()}/newsletter"
    done = _newsletter(_pg_project(tmp_path), url, "serve", "--port", str(free_port()))
    assert "Serving" not in done.stdout
    assert_one_line_exit_1(done, url.replace(SECRET, "***") + ": cannot connect: ")
