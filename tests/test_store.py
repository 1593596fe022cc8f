"""The subscriber store against real SQLite files: model rules, consent log, migrations."""

from __future__ import annotations

import os
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email

from newsletter.audience.addresses import InvalidEmail, normalize_email, suppression_hash
from newsletter.audience.importer import import_csv
from newsletter.audience.records import StoreError
from newsletter.audience.store import Store, open_store
from newsletter.audience.tables import memberships, subscribers
from newsletter.db.migrations import MIGRATIONS, SCHEMA_VERSION
from newsletter.db.schema import metadata
from newsletter.delivery.tables import deliveries, sends
from newsletter.errors import NewsletterError
from newsletter.project import Project

pytestmark = pytest.mark.backends


@pytest.fixture
def db_url(database_url: str) -> str:
    return database_url


@pytest.fixture
def store(db_url: str) -> Store:
    opened = Store.open(db_url)
    yield opened
    opened.close()


# --- addresses --------------------------------------------------------------------------------


def test_domain_is_lower_cased_local_part_kept() -> None:
    assert normalize_email("  Anna.Schmidt@Example.ORG ") == "Anna.Schmidt@example.org"


def test_idn_domain_kept_in_unicode_and_eszett_is_not_ss() -> None:
    assert normalize_email("anna@Straße.DE") == "anna@straße.de"
    assert normalize_email("anna@xn--strae-oqa.de") == "anna@straße.de"
    assert normalize_email("anna@strasse.de") == "anna@strasse.de"
    assert suppression_hash("anna@straße.de") != suppression_hash("anna@strasse.de")


@pytest.mark.parametrize("bad", ["x@y", "no-at-sign", "a@@b.de", "a b@c.de", "a@b..de", "@b.de",
                                 "a@localhost", "a@[1.2.3.4]", "a@-b.de", "a@b.test", ""])
def test_invalid_addresses_raise_with_reason(bad: str) -> None:
    with pytest.raises(InvalidEmail, match="invalid e-mail address"):
        normalize_email(bad)


CORPUS = [
    "a@b.de", "A.B-C_D+tag@Sub.Example.COM", "x@xn--mnchen-3ya.de", "ü@münchen.de", "jörg@example.org",
    "a..b@example.org", ".a@example.org", "a.@example.org", "a@example", "a@123.456",
    "a@exa_mple.org", "a@-example.org", "a@example-.org", "a@ex--ample.org", "a@xn--zz.de",
    "very.long." + "x" * 60 + "@example.org", "x" * 64 + "@example.org", "x" * 65 + "@example.org",
    "a@" + ".".join(["abcdefghij" * 6] * 4) + ".de", "a@b.c", "a@b.invalid", "a@b.local",
    "a@b.onion", "\"quoted\"@example.org", "a@EXAMPLE.org", "a@ＥＸＡＭＰＬＥ.org", "a@例え.jp",
]


@pytest.mark.parametrize("address", CORPUS)
def test_fast_path_agrees_with_email_validator(address: str) -> None:
    """normalize_email skips the full validator for plain addresses; it must never disagree."""
    try:
        expected: str | None = validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError:
        expected = None
    try:
        got: str | None = normalize_email(address, lookup=True)
    except InvalidEmail:
        got = None
    assert got == expected
    # New addresses: the same, except that a non-ASCII local part (SMTPUTF8 only) is refused.
    try:
        new: str | None = normalize_email(address)
    except InvalidEmail:
        new = None
    assert new == (expected if address.rpartition("@")[0].isascii() else None)


# --- lists ------------------------------------------------------------------------------------


def test_lists_create_get_and_unknown_list_names_known_ones(store: Store) -> None:
    store.create_list("news", "Stadtnewsletter")
    store.create_list("events")
    assert [ml.name for ml in store.lists()] == ["events", "news"]
    assert store.get_list("news").title == "Stadtnewsletter"
    with pytest.raises(NewsletterError, match=r"no list named `nope`; known lists: events, news"):
        store.get_list("nope")
    with pytest.raises(StoreError, match="already exists"):
        store.create_list("news")
    with pytest.raises(StoreError, match="invalid list name"):
        store.create_list("a list with spaces")
    # What PostgreSQL cannot hold is refused on both, before it reaches the database.
    for title in ("T" * 301, "Stadt\x00news"):
        with pytest.raises(StoreError, match="invalid list title: at most 300 characters, no NUL"):
            store.create_list("other", title)
    assert store.create_list("other", "Ä" * 300).title == "Ä" * 300


def test_lists_and_members_sort_by_code_point_whatever_the_collation(
        backend: str, database_url: str, request: pytest.FixtureRequest) -> None:
    """Listings come out in one order on both back-ends, also in a PostgreSQL database whose
    collation sorts like German text (ICU: "a" before "B", punctuation ignored at first)."""
    url = database_url
    if backend == "postgresql":
        import psycopg

        cluster = request.getfixturevalue("pg_cluster")
        with psycopg.connect(f"host=127.0.0.1 port={cluster.port} user=postgres dbname=postgres",
                             autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE icu_{os.getpid()} TEMPLATE template0 "
                          "LOCALE_PROVIDER icu ICU_LOCALE 'de-DE' LOCALE 'C'")
        url = cluster.url(f"icu_{os.getpid()}")
    with Store.open(url) as store:
        for name in ("b-list", "B-list", "ab", "a-list"):
            store.create_list(name)
        assert [ml.name for ml in store.lists()] == ["B-list", "a-list", "ab", "b-list"]
        ab = store.get_list("ab")
        for address in ("ab@example.org", "a.z@example.org", "A-c@example.org"):
            store.add_subscriber(address, ab.id)
        assert [r["email"] for r in store.member_rows()] == [
            "A-c@example.org", "a.z@example.org", "ab@example.org"]


# --- sign-up, confirm, status changes ---------------------------------------------------------


def test_double_opt_in_flow_logs_consent_evidence(store: Store) -> None:
    news = store.create_list("news")
    first = store.request_subscription("Anna@Example.org", news.id, name="Anna", ip="192.0.2.1",
                                       consent_version="3")
    assert first.send_confirmation
    sid = first.subscriber_id
    assert sid is not None
    assert store.membership_status(sid, news.id) == "pending"
    assert store.members(news.id) == []
    # Asking again while pending: confirmation goes out again, nothing doubled.
    again = store.request_subscription("anna@example.org", news.id, source="web", ip="192.0.2.2")
    assert again.subscriber_id == sid and again.send_confirmation
    assert store.confirm(sid, news.id, ip="192.0.2.3")
    assert not store.confirm(sid, news.id)
    assert [(m.email, m.name) for m in store.members(news.id)] == [("Anna@example.org", "Anna")]
    assert not store.request_subscription("anna@example.org", news.id).send_confirmation
    history = store.history(sid)
    assert [(h.action, h.source, h.ip) for h in history] == [
        ("pending", "web", "192.0.2.1"), ("pending", "web", "192.0.2.2"),
        ("subscribed", "confirm", "192.0.2.3"),
    ]
    assert history[0].consent_version == "3"
    assert history[0].at.tzinfo is not None


def test_set_status_is_idempotent_and_logs_only_changes(store: Store) -> None:
    news = store.create_list("news")
    sid, _ = store.add_subscriber("b@example.org", news.id, confirmed=True)
    assert store.set_status(sid, news.id, "unsubscribed", "one_click", ip="198.51.100.7")
    assert not store.set_status(sid, news.id, "unsubscribed", "unsubscribe_page")
    assert store.membership_status(sid, news.id) == "unsubscribed"
    assert [(h.action, h.source) for h in store.history(sid)] == [
        ("subscribed", "cli"), ("unsubscribed", "one_click")]
    with pytest.raises(ValueError, match="unknown membership status"):
        store.set_status(sid, news.id, "gone", "cli")


def test_who_left_comes_back_only_by_confirming_a_link_asked_for_after_leaving(store: Store) -> None:
    news = store.create_list("news")
    ids = {}
    for address, status in [("u@example.org", "unsubscribed"), ("b@example.org", "bounced"),
                            ("c@example.org", "complained")]:
        sid, _ = store.add_subscriber(address, news.id, confirmed=True)
        store.set_status(sid, news.id, status, "bounce" if status == "bounced" else "complaint")
        ids[status] = sid
    left_at = max(m.updated_at for sid in ids.values() for m in store.memberships(sid))
    for status in ("unsubscribed", "bounced"):
        assert store.request_subscription(f"{status[0]}@example.org", news.id).send_confirmation
        # Anybody can type anybody's address: the sign-up alone changes no status …
        assert store.membership_status(ids[status], news.id) == status
        logged = store.history(ids[status])[-1]
        assert logged.detail == f"sign-up; confirmation sent, {status} until confirmed"
        # … a link from before they left brings nobody back; one asked for afterwards does.
        assert not store.confirm(ids[status], news.id, requested_at=left_at - timedelta(seconds=5))
        assert not store.confirm(ids[status], news.id)
        assert store.membership_status(ids[status], news.id) == status
        assert store.confirm(ids[status], news.id, requested_at=left_at + timedelta(seconds=1))
        assert store.membership_status(ids[status], news.id) == "subscribed"
    before = len(store.history(ids["complained"]))
    assert not store.request_subscription("c@example.org", news.id).send_confirmation
    assert store.membership_status(ids["complained"], news.id) == "complained"
    assert len(store.history(ids["complained"])) == before


def test_a_strangers_sign_up_gives_an_editors_import_nothing_to_re_subscribe(store: Store,
                                                                               tmp_path: Path) -> None:
    news = store.create_list("news")
    sid, _ = store.add_subscriber("left@example.org", news.id, confirmed=True)
    store.unsubscribe("left@example.org", news.id)
    assert store.request_subscription("left@example.org", news.id).send_confirmation  # a stranger
    path = tmp_path / "in.csv"
    path.write_text("email\nleft@example.org\n", encoding="utf-8")
    import_csv(store, path, news, confirmed=True)
    with pytest.raises(StoreError, match="unsubscribed on this list"):
        store.add_subscriber("left@example.org", news.id, confirmed=True)
    assert store.membership_status(sid, news.id) == "unsubscribed"


def test_editor_cannot_re_add_someone_who_unsubscribed(store: Store) -> None:
    news = store.create_list("news")
    sid, _ = store.add_subscriber("u@example.org", news.id, confirmed=True)
    store.unsubscribe("u@example.org", news.id)
    with pytest.raises(StoreError, match="unsubscribed on this list"):
        store.add_subscriber("U@example.org", news.id, confirmed=True)
    assert store.membership_status(sid, news.id) == "unsubscribed"


def test_forget_erases_everything_but_a_hash_and_blocks_the_address(store: Store, db_url: str,
                                                                     backend: str) -> None:
    news = store.create_list("news")
    sid, _ = store.add_subscriber("Erase.Me@Example.org", news.id, name="Eva", confirmed=True)
    store.add_subscriber("bleibt@example.org", news.id, confirmed=True)
    with store.write() as conn:
        send_id = conn.execute(sends.insert().values(
            issue_slug="2026-02", list_id=news.id, content_hash="x", subject="S", status="finished",
            transport="outbox")).inserted_primary_key[0]
        conn.execute(deliveries.insert().values(
            send_id=send_id, subscriber_id=sid, email="Erase.Me@example.org", status="sent",
            smtp_reply="250 ok Erase.Me@example.org"))
    assert store.forget("erase.me@example.org")
    assert store.find_subscriber("Erase.Me@example.org") is None
    assert store.history(sid) == []
    assert [m.email for m in store.members(news.id, status=None)] == ["bleibt@example.org"]
    with store.read() as conn:  # every row of every table, as text
        dump = "\n".join(str(tuple(row)) for table in metadata.sorted_tables
                         for row in conn.execute(sa.select(table)))
    assert "bleibt@example.org" in dump  # the dump sees the data of those who stay
    assert "erase.me" not in dump.lower()
    assert "Eva" not in dump
    store.close()
    if backend == "sqlite":
        with sqlite3.connect(sa.make_url(db_url).database) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # secure_delete: not even the freed pages of the file keep the address.
        assert b"erase.me" not in Path(sa.make_url(db_url).database).read_bytes().lower()
    reopened = Store.open(db_url)
    assert reopened.is_suppressed("ERASE.ME@example.org")
    assert reopened.request_subscription("erase.me@example.org", news.id).send_confirmation is False
    assert reopened.find_subscriber("erase.me@example.org") is None
    with pytest.raises(StoreError, match="suppression list"):
        reopened.add_subscriber("erase.me@example.org", news.id)
    reopened.close()


# --- database setup and migrations ------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_sqlite_runs_in_wal_mode_with_foreign_keys(store: Store, db_url: str) -> None:
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    news = store.create_list("news")
    with pytest.raises(StoreError, match="no subscriber 999"):
        store.set_status(999, news.id, "subscribed", "cli")


def test_send_journal_tables_exist_with_their_constraints(store: Store) -> None:
    inspector = sa.inspect(store.engine)
    assert {"sends", "deliveries"} <= set(inspector.get_table_names())
    news = store.create_list("news")
    row = {"issue_slug": "2026-02", "list_id": news.id, "content_hash": "h", "subject": "S",
           "status": "running", "transport": "smtp"}
    with store.write() as conn:
        conn.execute(sends.insert().values(**row))
    with pytest.raises(sa.exc.IntegrityError), store.write() as conn:
        conn.execute(sends.insert().values(**row))
    index_columns = [ix["column_names"] for ix in inspector.get_indexes("deliveries")]
    assert ["send_id", "status"] in index_columns


def test_schema_compiles_for_postgresql() -> None:
    """The same Table objects must serve a PostgreSQL URL: no SQLite-only DDL."""
    from sqlalchemy.dialects import postgresql

    ddl = "\n".join(str(sa.schema.CreateTable(table).compile(dialect=postgresql.dialect()))
                    for table in metadata.sorted_tables)
    assert "TIMESTAMP WITH TIME ZONE" in ddl
    assert "status IN ('pending', 'subscribed', 'unsubscribed', 'bounced', 'complained')" in ddl
    assert "DEFAULT now()" in ddl


def _old_subscriber(old: Store, address: str, list_id: int) -> int:
    """A subscribed member written in the version-1 shape of `subscribers` (as old code did)."""
    with old.write() as conn:
        sid = conn.execute(sa.text(
            "INSERT INTO subscribers (email, email_key, name, attributes, created_at) "
            "VALUES (:e, :e, NULL, '{}', '2026-01-01 10:00:00') RETURNING id"), {"e": address}).scalar()
        conn.execute(sa.text(
            "INSERT INTO memberships (subscriber_id, list_id, status, created_at, updated_at) "
            "VALUES (:sid, :list, 'subscribed', '2026-01-01 10:00:00', '2026-01-01 10:00:00')"),
            {"sid": sid, "list": list_id})
    return int(sid)


def test_opening_an_older_database_upgrades_it_and_keeps_the_data(db_url: str) -> None:
    old = Store.open(db_url, migrate_to=1)
    news = old.create_list("news")
    sid = _old_subscriber(old, "keep@example.org", news.id)
    assert old.schema_version() == 1
    assert "sends" not in sa.inspect(old.engine).get_table_names()
    old.close()

    upgraded = Store.open(db_url)
    assert upgraded.schema_version() == SCHEMA_VERSION == MIGRATIONS[-1][0]
    assert {"sends", "deliveries"} <= set(sa.inspect(upgraded.engine).get_table_names())
    assert upgraded.membership_status(sid, news.id) == "subscribed"
    upgraded.close()
    # Opening again is a no-op.
    assert Store.open(db_url).schema_version() == SCHEMA_VERSION


OLD_IN_FLIGHT = "[in flight at an interruption; may be duplicated] "


def test_version_2_journal_is_upgraded_prefix_moved_into_the_flag(db_url: str) -> None:
    """Versions ≤ 2 marked possibly duplicated deliveries with a prefix in smtp_reply."""
    old = Store.open(db_url, migrate_to=2)
    news = old.create_list("news")
    with old.write() as conn:  # the old shape, written as the old code did
        conn.execute(sa.text(
            "INSERT INTO sends (id, issue_slug, list_id, content_hash, subject, status, transport, "
            "created_at, updated_at) VALUES (1, '2026-02', :list, 'h', 'S', 'paused', 'smtp', "
            "'2026-02-01 10:00:00', '2026-02-01 10:00:00')"), {"list": news.id})
        conn.execute(sa.text(
            "INSERT INTO deliveries (send_id, subscriber_id, email, status, attempts, smtp_reply, "
            "updated_at) VALUES (1, :sid, :email, :status, 1, :reply, '2026-02-01 10:00:00')"), [
            {"sid": 1, "email": "twice@example.org", "status": "sent",
             "reply": OLD_IN_FLIGHT + "250 2.0.0 Ok: queued as 4711"},
            {"sid": 2, "email": "again@example.org", "status": "pending",
             "reply": OLD_IN_FLIGHT + "in flight when the send stopped"},
            {"sid": 3, "email": "bare@example.org", "status": "sent", "reply": OLD_IN_FLIGHT},
            {"sid": 4, "email": "once@example.org", "status": "sent", "reply": "250 2.0.0 Ok"},
            {"sid": 5, "email": "none@example.org", "status": "pending", "reply": None},
        ])
    old.close()

    upgraded = Store.open(db_url)
    assert upgraded.schema_version() == SCHEMA_VERSION
    with upgraded.read() as conn:
        rows = conn.execute(sa.select(
            deliveries.c.email, deliveries.c.smtp_reply,
            deliveries.c.possibly_duplicated,
        ).order_by(deliveries.c.subscriber_id)).all()
        reason = conn.execute(sa.select(sends.c.reason)).scalar_one()
    assert [tuple(r) for r in rows] == [
        ("twice@example.org", "250 2.0.0 Ok: queued as 4711", True),
        ("again@example.org", "in flight when the send stopped", True),
        ("bare@example.org", None, True),
        ("once@example.org", "250 2.0.0 Ok", False),
        ("none@example.org", None, False),
    ]
    assert reason is None  # never recorded before version 3
    upgraded.close()


def _journal_columns(url: str) -> dict[str, list[tuple[str, bool, str | None]]]:
    with Store.open(url) as opened:
        inspector = sa.inspect(opened.engine)
        return {table: sorted((c["name"], c["nullable"], c["default"])
                              for c in inspector.get_columns(table))
                for table in ("sends", "deliveries")}


def test_fresh_and_upgraded_databases_have_the_same_journal_columns(tmp_path: Path) -> None:
    Store.open(f"sqlite:///{tmp_path / 'old.db'}", migrate_to=1).close()
    upgraded = _journal_columns(f"sqlite:///{tmp_path / 'old.db'}")
    fresh = _journal_columns(f"sqlite:///{tmp_path / 'new.db'}")
    assert upgraded == fresh
    # …and they are the columns the Table objects (used by every query) declare.
    for table in (sends, deliveries):
        assert [c[0] for c in fresh[table.name]] == sorted(table.c.keys())
    assert ("possibly_duplicated", False, "0") in fresh["deliveries"]
    assert ("reason", True, None) in fresh["sends"]


def test_database_newer_than_the_program_is_refused(db_url: str) -> None:
    Store.open(db_url).close()
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO schema_version VALUES (99, '2030-01-01 00:00:00')")
    engine.dispose()
    with pytest.raises(StoreError, match="newer than this program"):
        Store.open(db_url)


@pytest.mark.parametrize(("url", "message"), [
    ("sqlite:////nonexistent-dir/x.db", "cannot open the database"),
    ("nonsense://x", "unsupported database URL nonsense://x"),
    ("mysql://u:geheim@h/x", "unsupported database URL mysql://u:\\*\\*\\*@h/x: newsletter runs on SQLite"),
    ("not a url", "invalid database URL"),
    ("postgresql://u:geheim@h:x/db", "invalid database URL `postgresql://u:\\*\\*\\*@h:x/db`"),
])
def test_unusable_database_urls_give_a_clear_error(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message) as raised:
        Store.open(url)
    assert "geheim" not in str(raised.value)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_open_store_creates_the_subscribers_directory(project: Project) -> None:
    db = project.root / "subscribers" / "newsletter.db"
    (project.root / "subscribers" / "example.csv").unlink()
    (project.root / "subscribers").rmdir()
    opened = open_store(project)
    opened.close()
    assert db.is_file()


# --- migration 4: token_id --------------------------------------------------------------------


def test_migration_4_gives_every_existing_subscriber_a_random_token_id(db_url: str) -> None:
    old = Store.open(db_url, migrate_to=3)
    news = old.create_list("news")
    ids = [_old_subscriber(old, f"old{i}@example.org", news.id) for i in range(5)]
    old.close()

    upgraded = Store.open(db_url)
    found = [upgraded.subscriber(i) for i in ids]
    token_ids = [s.token_id for s in found if s]
    assert len(set(token_ids)) == 5 and all(t and len(t) == 16 for t in token_ids)
    assert all(s and s.legacy_tokens for s in found)  # links mailed before keep working
    assert [upgraded.subscriber_by_token_id(t).id for t in token_ids] == ids  # type: ignore[union-attr]
    assert upgraded.subscriber_by_token_id(ids[0]).id == ids[0]  # type: ignore[union-attr]
    # Rows created after the migration get a token_id and are never found by id.
    new_id, _ = upgraded.add_subscriber("new@example.org", news.id, confirmed=True)
    new = upgraded.subscriber(new_id)
    assert new and new.token_id and not new.legacy_tokens
    assert upgraded.subscriber_by_token_id(new_id) is None
    assert upgraded.subscriber_by_token_id(new.token_id).id == new_id  # type: ignore[union-attr]
    with pytest.raises(sa.exc.IntegrityError), upgraded.write() as conn:  # unique
        conn.execute(subscribers.update().where(subscribers.c.id == new_id)
                     .values(token_id=token_ids[0]))
    upgraded.close()


def _subscriber_schema(url: str) -> tuple[list[tuple[str, bool]], list[tuple[str, tuple[str, ...], bool]]]:
    with Store.open(url) as opened:
        inspector = sa.inspect(opened.engine)
        columns = sorted((c["name"], c["nullable"]) for c in inspector.get_columns("subscribers"))
        indexes = sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                         for i in inspector.get_indexes("subscribers"))
    return columns, indexes


def test_fresh_and_upgraded_databases_have_the_same_subscribers_table(tmp_path: Path) -> None:
    Store.open(f"sqlite:///{tmp_path / 'old.db'}", migrate_to=3).close()
    upgraded = _subscriber_schema(f"sqlite:///{tmp_path / 'old.db'}")
    fresh = _subscriber_schema(f"sqlite:///{tmp_path / 'new.db'}")
    assert upgraded == fresh
    assert [c[0] for c in fresh[0]] == sorted(subscribers.c.keys())
    assert ("ix_subscribers_token_id", ("token_id",), True) in fresh[1]


def test_migration_4_compiles_for_postgresql() -> None:
    """Migration 4's DDL through the PostgreSQL dialect (the CI machine has no PostgreSQL driver)."""
    from sqlalchemy.dialects import postgresql

    dialect = postgresql.dialect()
    column = sa.Column("legacy_tokens", sa.Boolean, nullable=False, server_default=sa.false())
    sa.Table("subscribers", sa.MetaData(), column)
    assert str(sa.schema.CreateColumn(column).compile(dialect=dialect)) == \
        "legacy_tokens BOOLEAN DEFAULT false NOT NULL"
    ddl = str(sa.schema.CreateTable(subscribers).compile(dialect=dialect))
    assert "token_id VARCHAR(32)" in ddl
    index = next(i for i in subscribers.indexes if i.name == "ix_subscribers_token_id")
    assert str(sa.schema.CreateIndex(index).compile(dialect=dialect)) == \
        "CREATE UNIQUE INDEX ix_subscribers_token_id ON subscribers (token_id)"


@pytest.mark.parametrize("path", ["add", "request", "import"])
def test_every_new_subscriber_gets_a_distinct_token_id(store: Store, tmp_path: Path, path: str) -> None:
    from newsletter.audience.importer import import_csv

    news = store.create_list("news")
    addresses = [f"p{i}@example.org" for i in range(3)]
    if path == "add":
        for a in addresses:
            store.add_subscriber(a, news.id)
    elif path == "request":
        for a in addresses:
            assert store.request_subscription(a, news.id).token_id
    else:
        csv_file = tmp_path / "in.csv"
        csv_file.write_text("email\n" + "\n".join(addresses) + "\n", encoding="utf-8")
        import_csv(store, csv_file, news)
    members = store.members(news.id, status=None)
    assert len(members) == 3
    token_ids = {m.token_id for m in members}
    assert len(token_ids) == 3 and all(len(t) == 16 for t in token_ids)
    assert store.token_ids(news.id) == {m.subscriber_id: m.token_id for m in members}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_erasure_leaves_nothing_in_the_wal(store: Store, db_url: str) -> None:
    """GDPR erasure: the deleted rows must not survive in `newsletter.db-wal` either."""
    news = store.create_list("news")
    store.add_subscriber("wal.erase@example.org", news.id, name="Walburga", confirmed=True)
    wal = Path(sa.make_url(db_url).database + "-wal")
    assert store.forget("wal.erase@example.org")
    # The store stays open (as in `newsletter serve`): no close-time checkpoint helps here.
    on_disk = Path(sa.make_url(db_url).database).read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert b"wal.erase" not in on_disk.lower()
    assert b"Walburga" not in on_disk


# --- migration 5: memberships.requested_name --------------------------------------------------


def _membership_columns(url: str) -> list[tuple[str, bool]]:
    with Store.open(url) as opened:
        return [(c["name"], c["nullable"]) for c in sa.inspect(opened.engine).get_columns("memberships")]


def test_fresh_and_upgraded_databases_have_the_same_memberships_table(tmp_path: Path) -> None:
    Store.open(f"sqlite:///{tmp_path / 'old.db'}", migrate_to=4).close()
    upgraded = _membership_columns(f"sqlite:///{tmp_path / 'old.db'}")
    fresh = _membership_columns(f"sqlite:///{tmp_path / 'new.db'}")
    assert upgraded == fresh
    assert [c[0] for c in fresh] == list(memberships.c.keys())
    assert fresh[-3:] == [("requested_name", True), ("topics", True), ("paused_until", True)]


def test_migration_5_keeps_pending_sign_ups_confirmable(db_url: str) -> None:
    """A sign-up from before version 5 wrote its name into `subscribers` at once; after the
    upgrade it is still pending and its confirmation changes no name."""
    old = Store.open(db_url, migrate_to=4)
    news = old.create_list("news")
    with old.write() as conn:  # the version-4 shape, as the old code wrote it
        sid = conn.execute(sa.text(
            "INSERT INTO subscribers (email, email_key, name, attributes, created_at, token_id) "
            "VALUES ('p@example.org', 'p@example.org', 'Paula', '{}', '2026-01-01 10:00:00', 'tok') "
            "RETURNING id")).scalar()
        conn.execute(sa.text(
            "INSERT INTO memberships (subscriber_id, list_id, status, created_at, updated_at) "
            "VALUES (:sid, :list, 'pending', '2026-01-01 10:00:00', '2026-01-01 10:00:00')"),
            {"sid": sid, "list": news.id})
    old.close()

    upgraded = Store.open(db_url)
    assert upgraded.schema_version() == SCHEMA_VERSION
    assert upgraded.confirm(sid, news.id)
    assert upgraded.subscriber(sid).name == "Paula"  # type: ignore[union-attr]
    assert upgraded.history(sid)[-1].detail == "double opt-in confirmed"
    upgraded.close()


def test_migration_5_compiles_for_postgresql() -> None:
    """The step itself, run against a connection that only records (no PostgreSQL here)."""
    from sqlalchemy.dialects import postgresql

    from newsletter.db.migrations import MIGRATIONS

    executed: list[str] = []

    class Recording:
        dialect = postgresql.dialect()

        def execute(self, statement: sa.TextClause) -> None:
            executed.append(str(statement))

    (step,) = [s for version, _what, s in MIGRATIONS if version == 5]
    step(Recording())  # type: ignore[arg-type]
    assert executed == ["ALTER TABLE memberships ADD COLUMN requested_name VARCHAR(300)"]
