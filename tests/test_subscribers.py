"""CSV import/export against real databases (a SQLite file, a PostgreSQL database), with files
as editors really have them."""

from __future__ import annotations

import csv
import io
import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from newsletter.audience.csvfile import read_csv
from newsletter.audience.export import export_csv
from newsletter.audience.importer import import_csv
from newsletter.audience.records import MailingList
from newsletter.audience.store import Store
from newsletter.errors import NewsletterError

pytestmark = pytest.mark.backends

_numbers = itertools.count(1)


@pytest.fixture
def new_database(database_url: str, backend: str, tmp_path: Path,
                 request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Another empty database on the test's back-end: a URL for each name."""
    def make(name: str) -> str:
        if backend == "postgresql":
            cluster = request.getfixturevalue("pg_cluster")
            return cluster.create_database(f"extra_{os.getpid()}_{next(_numbers)}")
        return f"sqlite:///{tmp_path / name}"
    return make


@pytest.fixture
def store(database_url: str) -> Store:
    opened = Store.open(database_url)
    yield opened
    opened.close()


@pytest.fixture
def news(store: Store) -> MailingList:
    return store.create_list("news", "Stadtnewsletter")


def write(tmp_path: Path, text: str, encoding: str = "utf-8", name: str = "list.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def everyone(store: Store, news: MailingList) -> dict[str, tuple[str | None, str]]:
    return {r["email"]: (r["name"], r["status"]) for r in store.member_rows(news.id)}


GERMAN = "E-Mail{d}Vorname{d}Nachname{d}Stadtteil\r\n" \
         "joerg@example.org{d}Jörg{d}Müller{d}Süd\r\n" \
         "claudia@example.org{d}Claudia{d}Weiß{d}Nord\r\n"


@pytest.mark.parametrize(("encoding", "delimiter", "found"), [
    ("utf-8", ",", "utf-8"),
    ("utf-8-sig", ";", "utf-8-sig"),
    ("cp1252", ";", "cp1252"),
    ("cp1252", ",", "cp1252"),
    ("utf-16", "\t", "utf-16"),
])
def test_import_reads_encodings_and_separators(tmp_path: Path, store: Store, news: MailingList,
                                               encoding: str, delimiter: str, found: str) -> None:
    path = write(tmp_path, GERMAN.format(d=delimiter), encoding)
    report = import_csv(store, path, news, confirmed=True)
    assert (report.encoding, report.delimiter, report.problems) == (found, delimiter, [])
    assert everyone(store, news) == {
        "claudia@example.org": ("Claudia Weiß", "subscribed"),
        "joerg@example.org": ("Jörg Müller", "subscribed"),
    }
    joerg = store.find_subscriber("joerg@example.org")
    assert joerg is not None and joerg.attributes == {"Stadtteil": "Süd"}


@pytest.mark.parametrize("header", ["email", "E-Mail", "Mail", "e_mail", "EMAIL", "E-Mail-Adresse"])
def test_email_column_found_under_its_usual_names(tmp_path: Path, store: Store, news: MailingList,
                                                  header: str) -> None:
    path = write(tmp_path, f"Name;{header}\nAnna;anna@example.org\n")
    report = import_csv(store, path, news)
    assert report.added == 1
    assert everyone(store, news) == {"anna@example.org": ("Anna", "pending")}


def test_bad_rows_are_reported_with_the_physical_line_where_the_record_starts(
        tmp_path: Path, store: Store, news: MailingList) -> None:
    path = write(tmp_path, (
        "email,name,Adresse\n"                                  # 1
        "ok1@example.org,Anna,\n"                                # 2
        "not-an-address,Bernd,\n"                                # 3
        ",Claudia,\n"                                            # 4
        'ok2@example.org,Dilek,"Hauptstr. 1\n12345 Musterstadt"\n'  # 5-6
        "\n"                                                     # 7 (blank)
        "erik@@example.org,Erik,\n"                              # 8
        "ok3@example.org,Fritz,x,extra\n"                        # 9
        'ok4@example.org,"Gabi ""G."" Groß",\n'                  # 10
    ))
    report = import_csv(store, path, news, confirmed=True)
    found = [(p.line, p.path, p.message.split(":")[0]) for p in report.problems]
    assert found == [
        (3, "email", "invalid e-mail address `not-an-address`"),
        (4, "email", "no e-mail address"),
        (8, "email", "invalid e-mail address `erik@@example.org`"),
        (9, "", "4 fields, but the header has 3 (is a `,` inside a value that is not quoted?)"),
    ]
    assert all(p.file == str(path) for p in report.problems)
    assert report.problems[0].format().startswith(f"{path}:3: email: invalid e-mail address")
    # The valid rows went in, including the one with a line break inside a quoted field.
    assert set(everyone(store, news)) == {"ok1@example.org", "ok2@example.org", "ok4@example.org"}
    dilek = store.find_subscriber("ok2@example.org")
    assert dilek is not None and dilek.attributes == {"Adresse": "Hauptstr. 1\n12345 Musterstadt"}
    assert everyone(store, news)["ok4@example.org"] == ('Gabi "G." Groß', "subscribed")


def test_an_unclosed_quote_is_reported_instead_of_swallowing_rows(tmp_path: Path, store: Store,
                                                                  news: MailingList) -> None:
    path = write(tmp_path, 'email,Notiz\na@example.org,"offen\nb@example.org,x\nc@example.org,y\n')
    report = import_csv(store, path, news)
    assert [(p.line, p.path) for p in report.problems] == [(2, "Notiz")]
    assert "quote" in report.problems[0].message


def test_unusable_files_are_refused_and_change_nothing(tmp_path: Path, store: Store,
                                                       news: MailingList) -> None:
    cases = {
        "no-email.csv": ("Name,Telefon\nAnna,123\n", "no e-mail column in the header"),
        "no-header.csv": ("anna@example.org,Anna\n", "looks like data"),
        "empty.csv": ("\n\n", "the file is empty"),
        "two.csv": ("email,Mail\na@example.org,b@example.org\n", "more than one e-mail column"),
    }
    for name, (text, message) in cases.items():
        with pytest.raises(NewsletterError, match=message):
            import_csv(store, write(tmp_path, text, name=name), news)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"email\na@example.org\n\x81\x8d\n")
    with pytest.raises(NewsletterError) as info:
        import_csv(store, binary, news)
    assert info.value.problems[0].line == 3
    assert "cannot read the file as utf-8 nor cp1252 (byte 0x81)" in str(info.value)
    assert store.members(news.id, status=None) == []


def test_reimport_never_reactivates_people_who_left(tmp_path: Path, store: Store,
                                                    news: MailingList) -> None:
    path = write(tmp_path, "email\nu@example.org\nb@example.org\nc@example.org\nok@example.org\n"
                           "gone@example.org\n")
    import_csv(store, path, news, confirmed=True)
    by_email = {m.email: m.subscriber_id for m in store.members(news.id)}
    store.set_status(by_email["u@example.org"], news.id, "unsubscribed", "unsubscribe_page")
    store.set_status(by_email["b@example.org"], news.id, "bounced", "bounce")
    store.set_status(by_email["c@example.org"], news.id, "complained", "complaint")
    store.forget("gone@example.org")

    report = import_csv(store, path, news, confirmed=True)
    assert [(s.email, s.reason) for s in report.skipped] == [
        ("u@example.org", "unsubscribed; imports never re-activate"),
        ("b@example.org", "bounced; imports never re-activate"),
        ("c@example.org", "complained; imports never re-activate"),
        ("gone@example.org", "on the suppression list"),
    ]
    assert [s.line for s in report.skipped] == [2, 3, 4, 6]
    assert (report.added, report.unchanged) == (0, 1)
    assert everyone(store, news) == {
        "u@example.org": (None, "unsubscribed"), "b@example.org": (None, "bounced"),
        "c@example.org": (None, "complained"), "ok@example.org": (None, "subscribed"),
    }
    assert store.find_subscriber("gone@example.org") is None


def test_duplicates_in_the_file_and_against_the_database_are_merged(tmp_path: Path, store: Store,
                                                                    news: MailingList) -> None:
    path = write(tmp_path, "email,name,Ort\nAnna@Example.org,,Kiel\nbernd@example.org,Bernd,\n"
                           "anna@example.ORG,Anna,Lübeck\n")
    first = import_csv(store, path, news)
    assert [(d.line, d.first_line, d.email) for d in first.duplicates] == [(4, 2, "anna@example.org")]
    assert first.added == 2
    anna = store.find_subscriber("ANNA@example.org")
    assert anna is not None
    # First row wins; the later one fills in what the first lacked.
    assert (anna.email, anna.name, anna.attributes) == ("Anna@example.org", "Anna", {"Ort": "Kiel"})
    history_before = len(store.history(anna.id))

    again = import_csv(store, path, news)
    assert (again.added, again.joined, again.unchanged) == (0, 0, 2)
    assert len(store.members(news.id, status=None)) == 2
    assert len(store.history(anna.id)) == history_before

    other = store.create_list("events")
    joined = import_csv(store, path, other, confirmed=True)
    assert (joined.added, joined.joined) == (0, 2)
    assert [m.status for m in store.memberships(anna.id)] == ["subscribed", "pending"]


def test_confirmed_import_records_the_editors_assertion(tmp_path: Path, store: Store,
                                                        news: MailingList) -> None:
    path = write(tmp_path, "email\npending@example.org\n", name="altkunden.csv")
    import_csv(store, path, news)
    sid = store.find_subscriber("pending@example.org").id
    assert store.membership_status(sid, news.id) == "pending"
    report = import_csv(store, path, news, confirmed=True)
    assert report.confirmed_pending == 1
    assert store.membership_status(sid, news.id) == "subscribed"
    history = store.history(sid)
    assert [(h.action, h.source) for h in history] == [("pending", "import"), ("subscribed", "import")]
    assert history[1].detail == "altkunden.csv line 2; editor confirmed prior consent"
    assert "not confirmed" in (history[0].detail or "")


def test_dry_run_reports_the_same_and_changes_nothing(tmp_path: Path, store: Store,
                                                      news: MailingList) -> None:
    path = write(tmp_path, "email\na@example.org\nb@example.org\nbad\n")
    dry = import_csv(store, path, news, confirmed=True, dry_run=True)
    assert (dry.added, len(dry.problems), dry.dry_run) == (2, 1, True)
    assert store.members(news.id, status=None) == []
    assert store.find_subscriber("a@example.org") is None
    real = import_csv(store, path, news, confirmed=True)
    assert (real.added, len(real.problems)) == (2, 1)


def test_export_then_import_round_trip_is_lossless(tmp_path: Path, store: Store, news: MailingList,
                                                   new_database: Callable[[str], str]) -> None:
    path = write(tmp_path, (
        "email;Vorname;Nachname;Firma;Notiz\n"
        "anna@straße.de;Anna;Schmidt;Muster GmbH;\"Zeile 1\nZeile 2\"\n"
        "Bernd.Mueller@Example.org;Bernd;Müller;\"Komma, und \"\"Zitat\"\"\";\n"
        "claudia@example.org;Claudia;Weiß;;\n"
        "dilek@example.org;;;;=SUMME(A1)\n"
        "erik@example.org;Erik;Jansen;;\n"
    ))
    import_csv(store, path, news, confirmed=True)
    store.unsubscribe("erik@example.org", news.id)
    store.add_subscriber("frank@example.org", news.id, name="Frank")  # pending

    first = io.StringIO()
    assert export_csv(store, news.id, first) == 6
    exported = tmp_path / "export.csv"
    exported.write_text(first.getvalue(), encoding="utf-8-sig", newline="")

    fresh = Store.open(new_database("fresh.db"))
    fresh_news = fresh.create_list("news")
    report = import_csv(fresh, exported, fresh_news, confirmed=True)
    assert report.problems == [] and report.added == 6
    second = io.StringIO()
    export_csv(fresh, fresh_news.id, second)
    fresh.close()

    def without_dates(text: str) -> list[list[str]]:
        rows = list(csv.reader(io.StringIO(text)))
        return [row[:3] + row[5:] for row in rows]

    assert without_dates(second.getvalue()) == without_dates(first.getvalue())
    rows = without_dates(first.getvalue())
    assert rows[0] == ["email", "name", "status", "Firma", "Notiz"]
    assert ["anna@straße.de", "Anna Schmidt", "subscribed", "Muster GmbH", "Zeile 1\nZeile 2"] in rows
    assert ["erik@example.org", "Erik Jansen", "unsubscribed", "", ""] in rows
    assert ["frank@example.org", "Frank", "pending", "", ""] in rows


def test_progress_callback_sees_read_and_write_phases(tmp_path: Path, store: Store,
                                                      news: MailingList) -> None:
    lines = "\n".join(f"user{i}@example.org" for i in range(12_000))
    path = write(tmp_path, "email\n" + lines + "\n")
    calls: list[tuple[str, int, int]] = []
    report = import_csv(store, path, news, on_progress=lambda *call: calls.append(call))
    assert report.added == 12_000
    assert {phase for phase, _, _ in calls} == {"read", "write"}
    last_write = [c for c in calls if c[0] == "write"][-1]
    assert last_write[1] == last_write[2]
    assert len(store.members(news.id, status="pending")) == 12_000


def test_read_csv_is_ui_free_and_reports_counts(tmp_path: Path) -> None:
    parsed = read_csv(write(tmp_path, "Mail;Name\na@example.org;A\n\nb@example.org;B\n"))
    assert (parsed.records, parsed.delimiter, [r.line for r in parsed.rows]) == (2, ";", [2, 4])


def _messy_import(tmp_path: Path, url: str, batch: int | None, *,
                  dry_run: bool = False) -> tuple[Any, ...]:
    """One database set up with members in every state, then the same messy file imported with
    `batch` rows per transaction (None: not imported): the report, the list, the consent log."""
    store = Store.open(url)
    news = store.create_list("news")
    store.add_subscriber("pending@example.org", news.id)
    store.add_subscriber("subscribed@example.org", news.id, name="Sub", confirmed=True)
    left, _ = store.add_subscriber("left@example.org", news.id, confirmed=True)
    store.set_status(left, news.id, "unsubscribed", "unsubscribe_page")
    store.add_subscriber("bounced@example.org", news.id, confirmed=True)
    bounced = store.find_subscriber("bounced@example.org").id
    store.set_status(bounced, news.id, "bounced", "bounce")
    other = store.create_list("other")
    store.add_subscriber("elsewhere@example.org", other.id)
    store.suppress("blocked@example.org", "blocked")
    path = write(tmp_path, (
        "email,name,status,Ort\n"
        "new1@example.org,,,Kiel\n"            # 2  new; line 9 fills the name
        "pending@example.org,,,\n"              # 3  pending → subscribed
        "subscribed@example.org,,,Hamburg\n"    # 4  unchanged, attribute filled
        "left@example.org,,,\n"                 # 5  skipped: never re-activated
        "bounced@example.org,,bounced,\n"       # 6  opted out and the file agrees: unchanged
        "elsewhere@example.org,Else,,\n"        # 7  joins this list, name filled
        "blocked@example.org,,,\n"              # 8  suppressed
        "NEW1@example.org,Neu,,Lübeck\n"        # 9  duplicate of line 2
        "optout@example.org,,unsubscribed,\n"   # 10 new, opted out from the file
        "bad,,,\n"                              # 11 problem
        "subscribed@example.org,Other,,\n"      # 12 duplicate of line 4 (name stays Sub)
        "new2@example.org,Zwei,pending,\n"      # 13 new, pending from the file
    ), name="messy.csv")
    result: dict[str, Any] | None = None
    if batch is not None:
        result = import_csv(store, path, news, confirmed=True, batch=batch, dry_run=dry_run).as_dict()
        result.pop("dry_run")
    rows = [(r["email"], r["name"], r["status"], r["attributes"]) for r in store.member_rows()]
    log = sorted((h.action, h.source, h.detail) for m in store.member_rows()
                 for h in store.history(m["id"]))
    store.close()
    return result, rows, log


def test_batches_and_dry_runs_do_not_change_the_result(tmp_path: Path,
                                                      new_database: Callable[[str], str]) -> None:
    """Duplicates across batches, every membership state, suppression, opt-outs from the file:
    the same report, list and consent log in batches of 2 as in one batch; a dry run in batches
    reports the same and changes nothing."""
    whole = _messy_import(tmp_path, new_database("whole.db"), 5000)
    report = whole[0]
    assert {k: report[k] for k in ("records", "added", "joined", "confirmed_pending", "opted_out",
                                   "unchanged", "updated")} == {
        "records": 12, "added": 3, "joined": 1, "confirmed_pending": 1, "opted_out": 0,
        "unchanged": 2, "updated": 2}
    assert report["skipped"] == [
        {"line": 5, "email": "left@example.org", "reason": "unsubscribed; imports never re-activate"},
        {"line": 8, "email": "blocked@example.org", "reason": "on the suppression list"}]
    assert report["duplicates"] == [{"line": 9, "first_line": 2, "email": "NEW1@example.org"},
                                    {"line": 12, "first_line": 4, "email": "subscribed@example.org"}]
    assert ("new1@example.org", "Neu", "subscribed", {"Ort": "Kiel"}) in whole[1]
    assert ("subscribed@example.org", "Sub", "subscribed", {"Ort": "Hamburg"}) in whole[1]
    assert ("optout@example.org", None, "unsubscribed", {}) in whole[1]
    assert ("new2@example.org", "Zwei", "pending", {}) in whole[1]
    assert ("subscribed", "import", "messy.csv line 3; editor confirmed prior consent") in whole[2]
    assert ("unsubscribed", "import", "messy.csv line 10; status unsubscribed carried over from "
            "the file") in whole[2]

    assert _messy_import(tmp_path, new_database("batched.db"), 2) == whole
    dry = _messy_import(tmp_path, new_database("dry.db"), 2, dry_run=True)
    before = _messy_import(tmp_path, new_database("untouched.db"), None)  # the state it started from
    assert dry[0] == report
    assert dry[1:] == before[1:] != whole[1:]


def test_a_large_file_read_by_a_helper_process_gives_the_same_result(
        tmp_path: Path, new_database: Callable[[str], str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Above PARALLEL_LINES a helper process parses and checks the rows while the import stages
    them: the same report (problems with their lines too), list and consent log as in-process;
    an error in the file's syntax is the same error."""
    from newsletter.audience import import_stage

    whole = _messy_import(tmp_path, new_database("whole.db"), 5000)
    monkeypatch.setattr(import_stage, "PARALLEL_LINES", 0)
    assert _messy_import(tmp_path, new_database("helper.db"), 2) == whole

    broken = write(tmp_path, "email,name\na@example.org,A\nb@example.org,\"" + "x" * 200_000 + "\"\n",
                   name="broken.csv")
    store = Store.open(new_database("broken.db"))
    news = store.create_list("news")
    messages = []
    for lines in (0, 10**9):
        monkeypatch.setattr(import_stage, "PARALLEL_LINES", lines)
        with pytest.raises(NewsletterError) as caught:
            import_csv(store, broken, news)
        messages.append(str(caught.value))
    store.close()
    assert messages[0] == messages[1] and "broken.csv:3: CSV syntax error" in messages[0]


def test_import_memory_stays_flat(tmp_path: Path, store: Store, news: MailingList) -> None:
    """The file is streamed and staged in the database: eight times the rows, not eight times
    the memory (Python's allocations, traced; a fixed overhead of caches and compiled
    statements comes on top, so the bound is 2x, far below what growing with the rows gives)."""
    import tracemalloc

    def peak(rows: int) -> int:
        path = write(tmp_path, "email;name;Ort\n" + "".join(
            f"p{rows}.{i}@example.org;Person {i};Ort {i}\n" for i in range(rows)), name=f"{rows}.csv")
        tracemalloc.start()
        try:
            assert import_csv(store, path, news, batch=1000).added == rows
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(5_000), peak(40_000)
    assert large < 2 * small, (small, large)


def test_bulk_helpers_write_what_the_one_at_a_time_functions_write() -> None:
    """The import makes a million tokens and attribute JSONs at once; they must be exactly what
    `new_token_id()` and SQLAlchemy's `json.dumps` would have written."""
    import json
    import re

    from newsletter.audience.csvfile import attributes_json as _json
    from newsletter.audience.token_ids import new_token_id, new_token_ids

    tokens = new_token_ids(2000)
    shape = re.compile(rf"[A-Za-z0-9_-]{{{len(new_token_id())}}}\Z")
    assert len(set(tokens)) == 2000 and all(shape.match(t) for t in tokens)
    for attributes in ({}, {"Ort": "Kiel"}, {'Firma "X"': "Müller & Söhne\n", "Notiz": "=SUMME(A1)"}):
        assert _json(attributes) == json.dumps(attributes)
