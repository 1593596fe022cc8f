"""Issue 11, items 2 and 3: a sign-up changes nothing of an existing record before it is
confirmed, and names that can never be sent are neither accepted nor able to break a send."""

from __future__ import annotations

import email.header
import email.utils
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from test_send_support import ISSUE, header_line, parse

import newsletter
from newsletter.audience.importer import import_csv
from newsletter.audience.names import MAX_NAME, InvalidName, clean_name
from newsletter.audience.records import StoreError
from newsletter.audience.store import Store, open_store
from newsletter.audience.tables import memberships, new_token_id, subscribers
from newsletter.project import Project

pytestmark = pytest.mark.backends

# --- the rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "clean"), [
    ("Max\u2028Mustermann", "Max Mustermann"),
    ("Jörg\tMüller", "Jörg Müller"),
    ("A\x0bB\x0cC\x85D\u2029E", "A B C D E"),
    ("  Erika \t\u2028 Mustermann \n", "Erika Mustermann"),  # a line break at the end of a cell
    ("x" * MAX_NAME, "x" * MAX_NAME),
    ("", None),
    (" \t\u2028 ", None),
    (None, None),
])
def test_whitespace_like_controls_become_one_space(raw: str | None, clean: str | None) -> None:
    assert clean_name(raw) == clean


@pytest.mark.parametrize(("raw", "reason"), [
    ("Anna\r\nBcc: x@example.org", "U+000D (carriage return)"),
    ("Anna\nMüller", "U+000A (line feed)"),
    ("Anna\x00", "U+0000 (a control character)"),
    ("\x1b[31mAnna", "U+001B (a control character)"),
    ("Anna\x9b", "U+009B (a control character)"),
    ("Anna\x7f", "U+007F (a control character)"),
    ("x" * 5000, "5,000 characters long (at most 100)"),
    ("x" * (MAX_NAME + 1), "101 characters long"),
    ("Anna\udcff", "not valid Unicode text"),
])
def test_other_controls_and_overlong_names_are_refused(raw: str, reason: str) -> None:
    with pytest.raises(InvalidName, match=re.escape(reason)):
        clean_name(raw)


# --- every way in -------------------------------------------------------------------------------


@pytest.fixture
def store(database_url: str) -> Store:
    opened = Store.open(database_url)
    yield opened
    opened.close()


def test_import_cleans_names_and_reports_the_rows_it_refuses(store: Store, tmp_path: Path) -> None:
    news = store.create_list("news")
    path = tmp_path / "liste.csv"
    path.write_text(
        "email;Name\n"
        "tab@example.org;Jörg\tMüller\n"
        "ls@example.org;Max\u2028Mustermann\n"
        "nul@example.org;Anna\x00\n"
        "c1@example.org;Anna\x9bX\n"
        f"long@example.org;{'x' * 5000}\n"
        "ok@example.org;Okay\n", encoding="utf-8")
    report = import_csv(store, path, news)
    assert [p.format() for p in report.problems] == [
        f"{path}:4: Name: the name contains U+0000 (a control character)",
        f"{path}:5: Name: the name contains U+009B (a control character)",
        f"{path}:6: Name: the name is 5,000 characters long (at most 100)",
    ]
    names = {r["email"]: r["name"] for r in store.member_rows(news.id)}
    assert names == {"tab@example.org": "Jörg Müller", "ls@example.org": "Max Mustermann",
                     "ok@example.org": "Okay"}


def test_import_names_the_first_and_last_name_columns(store: Store, tmp_path: Path) -> None:
    news = store.create_list("news")
    path = tmp_path / "liste.csv"
    path.write_text("email,Vorname,Nachname\na@example.org,Anna,\"Mül\x01ler\"\n"
                    "b@example.org,  Bernd ,\tBaum\n", encoding="utf-8")
    report = import_csv(store, path, news)
    assert [p.format() for p in report.problems] == [
        f"{path}:2: Vorname + Nachname: the name contains U+0001 (a control character)"]
    assert [r["name"] for r in store.member_rows(news.id)] == ["Bernd Baum"]


def test_add_subscriber_cleans_or_refuses_the_name(store: Store) -> None:
    news = store.create_list("news")
    sid, _ = store.add_subscriber("a@example.org", news.id, name="Jörg\tMüller")
    assert store.subscriber(sid).name == "Jörg Müller"  # type: ignore[union-attr]
    for bad, reason in (("Anna\x1b", "U+001B"), ("x" * 5000, "5,000 characters long")):
        with pytest.raises(StoreError, match=f"b@example.org: the name .*{re.escape(reason)}"):
            store.add_subscriber("b@example.org", news.id, name=bad)
    assert store.find_subscriber("b@example.org") is None


def test_sign_up_cleans_the_name_and_drops_one_it_cannot_use(store: Store) -> None:
    news = store.create_list("news")
    first = store.request_subscription("a@example.org", news.id, name="Max\u2028Mustermann")
    second = store.request_subscription("b@example.org", news.id, name="Anna\x00")
    assert first.send_confirmation and second.send_confirmation  # no error for the form
    assert first.subscriber_id and second.subscriber_id
    assert store.confirm(first.subscriber_id, news.id) and store.confirm(second.subscriber_id, news.id)
    assert store.subscriber(first.subscriber_id).name == "Max Mustermann"  # type: ignore[union-attr]
    assert store.subscriber(second.subscriber_id).name is None  # type: ignore[union-attr]


# --- item 2: an unconfirmed sign-up changes nothing -------------------------------------------


def _requested_name(store: Store, subscriber_id: int, list_id: int) -> str | None:
    with store.read() as conn:
        return conn.execute(sa.select(memberships.c.requested_name).where(
            memberships.c.subscriber_id == subscriber_id,
            memberships.c.list_id == list_id)).scalar()


PHISHING = "ACHTUNG: Konto gesperrt, rufen Sie 0900-1234567 an"


def test_sign_up_for_a_subscribed_member_changes_nothing(store: Store) -> None:
    news = store.create_list("news")
    sid, _ = store.add_subscriber("victim@example.org", news.id, confirmed=True)
    before = store.history(sid)
    result = store.request_subscription("victim@example.org", news.id, name=PHISHING)
    assert not result.send_confirmation
    assert store.subscriber(sid).name is None  # type: ignore[union-attr]
    assert store.history(sid) == before
    assert _requested_name(store, sid, news.id) is None


def test_sign_up_for_another_list_names_nobody_before_the_confirmation(store: Store) -> None:
    news, events = store.create_list("news"), store.create_list("events")
    sid, _ = store.add_subscriber("victim@example.org", news.id, name="Vera", confirmed=True)
    store.request_subscription("victim@example.org", events.id, name=PHISHING)
    assert store.subscriber(sid).name == "Vera"  # type: ignore[union-attr]
    assert [m.name for m in store.members(news.id)] == ["Vera"]
    # Somebody who holds the mailbox confirms: the name they gave is theirs, and logged.
    assert store.confirm(sid, events.id, ip="192.0.2.9")
    assert store.subscriber(sid).name == PHISHING  # type: ignore[union-attr]
    entry = store.history(sid)[-1]
    assert (entry.action, entry.source, entry.list_name, entry.ip) == (
        "subscribed", "confirm", "events", "192.0.2.9")
    assert entry.detail == f"double opt-in confirmed; name set to {PHISHING!r} " \
                           "(given with the sign-up; was 'Vera')"
    assert _requested_name(store, sid, events.id) is None


def test_new_sign_up_keeps_the_name_with_the_request_until_confirmed(store: Store) -> None:
    news = store.create_list("news")
    sid = store.request_subscription("new@example.org", news.id, name="Nina").subscriber_id
    assert sid is not None
    assert store.subscriber(sid).name is None  # type: ignore[union-attr]
    assert _requested_name(store, sid, news.id) == "Nina"
    # Signing up again while pending: a name given replaces the waiting one, none keeps it.
    store.request_subscription("new@example.org", news.id, name="Nina Neu")
    store.request_subscription("new@example.org", news.id)
    assert _requested_name(store, sid, news.id) == "Nina Neu"
    assert store.confirm(sid, news.id)
    assert store.subscriber(sid).name == "Nina Neu"  # type: ignore[union-attr]
    assert store.history(sid)[-1].detail == \
        "double opt-in confirmed; name set to 'Nina Neu' (given with the sign-up)"
    assert _requested_name(store, sid, news.id) is None
    assert not store.confirm(sid, news.id)


def test_sign_up_after_unsubscribing_renames_only_on_confirmation(store: Store) -> None:
    news = store.create_list("news")
    sid, _ = store.add_subscriber("back@example.org", news.id, name="Berta", confirmed=True)
    store.unsubscribe("back@example.org", news.id)
    assert store.request_subscription("back@example.org", news.id, name="Berta B.").send_confirmation
    assert store.subscriber(sid).name == "Berta"  # type: ignore[union-attr]
    assert store.confirm(sid, news.id, requested_at=datetime.now(UTC) + timedelta(seconds=1))
    assert store.subscriber(sid).name == "Berta B."  # type: ignore[union-attr]


def test_a_request_nobody_confirmed_is_dropped_when_an_editor_decides(
        store: Store, tmp_path: Path) -> None:
    news = store.create_list("news")
    by_add = store.request_subscription("a@example.org", news.id, name=PHISHING).subscriber_id
    by_import = store.request_subscription("b@example.org", news.id, name=PHISHING).subscriber_id
    assert by_add and by_import
    store.add_subscriber("a@example.org", news.id, confirmed=True)
    path = tmp_path / "in.csv"
    path.write_text("email\nb@example.org\n", encoding="utf-8")
    import_csv(store, path, news, confirmed=True)
    for sid in (by_add, by_import):
        assert store.membership_status(sid, news.id) == "subscribed"
        assert _requested_name(store, sid, news.id) is None
        assert store.subscriber(sid).name is None  # type: ignore[union-attr]


# --- no stored name breaks a send ---------------------------------------------------------------

# name in the database → display name sent (None: the bare address)
STORED = {
    "Max\u2028Mustermann": "Max Mustermann",
    "Para\u2029graph": "Para graph",
    "Tab\tName": "Tab Name",
    "Vt\x0bFf\x0cNel\x85Name": "Vt Ff Nel Name",
    "Csi\x9b31m": None,
    "Nul\x00Name": None,
    "Esc\x1b[31mName": None,
    "Cr\rName": None,
    "Lf\nBcc: evil@example.org": None,
    "x" * 5000: None,
    "y" * 100: "y" * 100,
    "Müller, Jörg (Vorstand) <ceo@evil.example>; " * 2: "Müller, Jörg (Vorstand) <ceo@evil.example>; "
    "Müller, Jörg (Vorstand) <ceo@evil.example>;",
    '"' + "z" * 99: '"' + "z" * 99,
    "Ä" * 100: "Ä" * 100,
    "Jörg Müller " * 8: ("Jörg Müller " * 8).strip(),
    PHISHING: PHISHING,
}


def _insert_raw(project: Project, names: list[str]) -> dict[str, str]:
    """Subscribed members with `names`, written as code before the name rule could (past the
    store's checks); address → name."""
    store = open_store(project)
    news = store.create_list("news")
    addresses = {}
    then = datetime(2026, 1, 1, 10, tzinfo=UTC)
    with store.write() as conn:
        for i, name in enumerate(names):
            address = f"person{i:02d}@example.org"
            sid = conn.execute(subscribers.insert().values(
                email=address, email_key=address, name=name, attributes={}, created_at=then,
                token_id=new_token_id())).inserted_primary_key[0]
            conn.execute(memberships.insert().values(
                subscriber_id=sid, list_id=news.id, status="subscribed", created_at=then,
                updated_at=then))
            addresses[address] = name
    store.close()
    return addresses


def _storable(project: Project) -> dict[str, str | None]:
    """`STORED` without what the database cannot hold: PostgreSQL text has no NUL character, and
    PostgreSQL enforces the column's 300 characters (no such name can exist there)."""
    if project.database_url.startswith("sqlite"):
        return STORED
    return {raw: sent for raw, sent in STORED.items() if "\x00" not in raw and len(raw) <= 300}


def _display_name(raw: bytes) -> str | None:
    """The To header's display name as an RFC 2047 reader decodes it (whitespace between
    encoded words dropped, RFC 2047 6.2 — Python's header parser keeps it)."""
    value = re.sub(rb"\r\n[ \t]", b" ", header_line(raw, b"To"))[len(b"To: "):].decode("ascii")
    name, _address = email.utils.parseaddr(value)
    return str(email.header.make_header(email.header.decode_header(name))) if name else None


def test_every_stored_name_is_sent_as_a_valid_header(project: Project) -> None:
    stored = _storable(project)
    addresses = _insert_raw(project, list(stored))
    report = newsletter.open_project(project.root).send(project.root / ISSUE, "news")
    assert (report.status, report.sent, report.failed_permanent) == ("finished", len(stored), 0)
    files = list((project.outbox_dir / "new").iterdir())
    assert len(files) == len(stored)
    for path in files:
        raw = path.read_bytes()
        head = raw.split(b"\r\n\r\n", 1)[0]
        assert re.search(rb"\r(?!\n)|(?<!\r)\n", head) is None, head
        assert max(len(line) for line in raw.split(b"\r\n")) <= 998
        message = parse(raw)
        (to,) = message["To"].addresses
        assert to.addr_spec in addresses and not message["To"].defects
        assert message["Bcc"] is None
        assert _display_name(raw) == stored[addresses[to.addr_spec]], addresses[to.addr_spec]


def test_an_unconfirmed_sign_up_never_reaches_the_to_header(project: Project) -> None:
    store = open_store(project)
    news = store.create_list("news")
    store.add_subscriber("victim@example.org", news.id, confirmed=True)
    store.request_subscription("victim@example.org", news.id, name=PHISHING)
    store.close()
    report = newsletter.open_project(project.root).send(project.root / ISSUE, "news")
    assert report.sent == 1
    (path,) = (project.outbox_dir / "new").iterdir()
    assert header_line(path.read_bytes(), b"To") == b"To: victim@example.org"
