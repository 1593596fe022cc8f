"""`newsletter db status` / `db upgrade` through the real program, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from pgcluster import Cluster

from newsletter.audience.store import Store
from newsletter.db.migrations import MIGRATIONS, SCHEMA_VERSION
from newsletter.project import open_project

pytestmark = pytest.mark.backends


def newsletter(project_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "newsletter", *args, "--project", str(project_dir)],
                          capture_output=True, text=True, check=False, timeout=60)


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_status_of_a_new_database_lists_every_migration_and_changes_nothing(
        project_dir: Path, backend: str) -> None:
    url = open_project(project_dir).database_url
    done = newsletter(project_dir, "db", "status", "--check")
    assert done.returncode == 3, done.stderr
    assert f"schema version 0 of {SCHEMA_VERSION}; pending:" in done.stdout
    for version, description, _ in MIGRATIONS:
        assert f"  {version}: {description}" in done.stdout
    assert "Traceback" not in done.stderr
    if backend == "sqlite":
        assert "not created yet" in done.stdout
        assert not (project_dir / "subscribers" / "newsletter.db").exists()
    else:
        assert _tables(url) == set()


def test_upgrade_applies_every_step_once_then_status_is_up_to_date(project_dir: Path) -> None:
    done = newsletter(project_dir, "db", "upgrade")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"applied {v}: {d}" for v, d, _ in MIGRATIONS]
    again = newsletter(project_dir, "db", "upgrade")
    assert again.stdout.strip() == "schema already up to date; nothing applied"
    status = newsletter(project_dir, "db", "status", "--json", "--check")
    assert status.returncode == 0
    data = json.loads(status.stdout)
    assert (data["version"], data["up_to_date"], data["pending"]) == (SCHEMA_VERSION, True, [])
    assert {"subscribers", "memberships", "deliveries", "schema_version"} <= _tables(
        open_project(project_dir).database_url)


def test_an_old_database_gets_only_the_missing_steps(project_dir: Path) -> None:
    url = open_project(project_dir).database_url
    Path(project_dir / "subscribers").mkdir(exist_ok=True)
    old = Store.open(url, migrate_to=3)
    old.create_list("news")  # `lists` is as version 1 made it
    old.close()
    status = newsletter(project_dir, "db", "status")
    assert f"schema version 3 of {SCHEMA_VERSION}; pending:" in status.stdout
    assert "  3:" not in status.stdout and "  4:" in status.stdout
    done = newsletter(project_dir, "db", "upgrade")
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == [
        f"applied {v}" for v, _, _ in MIGRATIONS if v > 3]
    with Store.open(url) as upgraded:
        assert upgraded.get_list("news") is not None


def test_a_database_newer_than_the_program_is_named_and_refused(project_dir: Path) -> None:
    assert newsletter(project_dir, "db", "upgrade").returncode == 0
    engine = sa.create_engine(open_project(project_dir).database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO schema_version VALUES (99, '2030-01-01 00:00:00')")
    engine.dispose()
    for args in (("db", "status"), ("db", "upgrade")):
        done = newsletter(project_dir, *args)
        assert done.returncode == 1, args
        assert "99" in done.stdout + done.stderr and "newer" in done.stdout + done.stderr
        assert "Traceback" not in done.stderr


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_an_unreachable_server_is_one_line_without_the_password(
        project_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_DATABASE__URL", "postgresql+psycopg://editor:s3cret@127.0.0.1:1/news")
    for args in (("db", "status"), ("db", "upgrade")):
        done = newsletter(project_dir, *args)
        assert done.returncode == 1
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "127.0.0.1" in done.stderr and "s3cret" not in done.stderr


# --- db copy: SQLite → PostgreSQL keeps every row as it is -------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_copy_to_postgresql_keeps_ids_tokens_and_history(project_dir: Path, pg_cluster: Cluster) -> None:
    source_url = open_project(project_dir).database_url
    (project_dir / "subscribers").mkdir(exist_ok=True)
    with Store.open(source_url) as source:
        news = source.create_list("news")
        for i in range(12):
            source.add_subscriber(f"leser{i}@example.org", news.id, name=f"Leser Ä{i}", confirmed=True)
        source.forget("leser3@example.org")  # a gap in the ids and a suppression
        people = [source.find_subscriber(f"leser{i}@example.org") for i in range(12) if i != 3]
        before = {p.id: (p.email, p.token_id) for p in people if p}
        history = source.history(max(before))
    target_url = pg_cluster.create_database("copy_target")

    done = newsletter(project_dir, "db", "copy", target_url)
    assert done.returncode == 0, done.stderr
    assert "subscribers: 11 rows" in done.stdout and "copy_target" in done.stdout

    with Store.open(target_url) as target:
        for subscriber_id, (email, token_id) in before.items():
            found = target.subscriber_by_token_id(token_id)  # links mailed before still work
            assert found is not None and (found.id, found.email) == (subscriber_id, email)
        assert target.history(max(before)) == history
        assert target.is_suppressed("leser3@example.org")
        # The sequences continue after the copied ids: a new subscriber gets a new id.
        newcomer_id, _ = target.add_subscriber("neu@example.org", target.get_list("news").id)
        assert newcomer_id > max(before)

    again = newsletter(project_dir, "db", "copy", target_url)
    assert again.returncode == 1 and "already holds a newsletter database" in again.stderr


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_failed_copy_leaves_the_target_empty(project_dir: Path, pg_cluster: Cluster) -> None:
    source_url = open_project(project_dir).database_url
    (project_dir / "subscribers").mkdir(exist_ok=True)
    with Store.open(source_url) as source:
        news = source.create_list("news")
        source.add_subscriber("a@example.org", news.id, confirmed=True)
    target_url = pg_cluster.create_database("copy_clash")
    engine = sa.create_engine(target_url)
    with engine.begin() as conn:  # a table of ours already there, e.g. from an earlier attempt
        conn.exec_driver_sql("CREATE TABLE send_workers (x int)")
    engine.dispose()
    done = newsletter(project_dir, "db", "copy", target_url)
    assert done.returncode == 1 and "send_workers" in done.stderr and "Traceback" not in done.stderr
    assert _tables(target_url) == {"send_workers"}
