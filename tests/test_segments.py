"""Segments (`[segments.<name>]` in newsletter.toml, docs/segments.md): the condition language,
its errors at FILE:LINE:COL, injection attempts, and the members of real imported subscribers on
SQLite and PostgreSQL, through the library and the CLI."""

from __future__ import annotations

import builtins
import json
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from typer.testing import CliRunner, Result

from newsletter.audience.conditions import ConditionError, compile_condition
from newsletter.audience.queries import subscribed_members
from newsletter.audience.segments import (
    SegmentError,
    count_members,
    load_segment,
    load_segments,
    segment_members,
)
from newsletter.audience.tables import memberships
from newsletter.cli import app
from newsletter.errors import ConfigError
from newsletter.project import open_project
from newsletter.scaffold import init_project

pytestmark = pytest.mark.backends

CSV = (
    'email;Name;Kommune;Rolle;Größe;Name mit Leerzeichen;Mitarbeiter;"Ort""Nr"\n'
    "anna@jena.de;Anna;Jena;Verwaltung;12;ja;5;7\n"
    "bernd@jena.de;Bernd;Jena;Bürger;3;;viele;\n"
    "carla@weimar.de;;Weimar;Politik;;ja;120;\n"
    "dora@Example.org;Dora;jena;Politik;100;nein;;\n"
    "emil@example.org;Emil;;;;;;\n"
)
EVERYONE = {"anna", "bernd", "carla", "dora", "emil"}


def faults(where: str) -> list[tuple[int, str]]:
    with pytest.raises(ConditionError) as caught:
        compile_condition(where)
    return caught.value.faults


def sql(where: str) -> tuple[str, dict[str, object]]:
    compiled = compile_condition(where).clause.compile(dialect=sqlite.dialect())
    return str(compiled), dict(compiled.params)


# --- the language, without a database ---------------------------------------------------------


def test_a_lone_equals_is_equality_and_strings_are_untouched() -> None:
    assert sql('Kommune = "a=b"') == sql('Kommune == "a=b"')
    assert "a=b" in sql('Kommune = "a=b"')[1].values()
    assert sql('Größe >= 5') != sql('Größe > 5')  # `>=` is one token, not `>` + `=`


@pytest.mark.parametrize("where", [
    'Kommune = "Jena"', 'Kommune == "Jena"', 'Kommune != "Jena"', 'Größe < 5', 'Größe <= 5',
    'Größe > 5', 'Größe >= 5', 'Rolle in ["Verwaltung", "Politik"]', 'Rolle not in ("a", "b")',
    'not Kommune = "Jena"', 'Kommune = "Jena" and (Rolle = "x" or Größe > -1.5)',
    'attr("Name mit Leerzeichen") = "ja"', 'joined < "2026-01-01"', 'created >= "2026-01-01T12:00"',
    'joined = "2026-01-01T12:00:00+02:00"', 'email = "a@b.de"', 'domain in ["jena.de"]',
    'name != "Anna"', 'Firma', 'not Firma', '"Jena" = Kommune', '1 < Größe < 10',
    '\n  Kommune = "Jena"\n  and Rolle = "x"\n',
])
def test_every_construct_of_the_language_compiles(where: str) -> None:
    condition = compile_condition(where, "Europe/Berlin")
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        assert condition.clause.compile(dialect=dialect) is not None


def test_attribute_names_as_written_umlauts_and_attr() -> None:
    assert compile_condition('Größe = "x" and Straße = "y"').attributes == (("Größe", 0), ("Straße", 16))
    # Python's parser NFKC-normalises identifiers (ﬁ → fi); the name stays as it was written.
    assert compile_condition('ﬁrma = "x"').attributes == (("ﬁrma", 0),)
    assert compile_condition('attr("Name mit Leerzeichen") = "x"').attributes == (
        ("Name mit Leerzeichen", 5),)
    # A built-in's name in attr() is the attribute of that name.
    assert compile_condition('attr("email") = "x"').attributes == (("email", 5),)
    assert compile_condition('email = "x"').attributes == ()


@pytest.mark.parametrize(("where", "expected"), [
    ('Kommune = open("x")', [(10, 'function calls are not allowed; only attr("column name") names '
                                  "an attribute")]),
    ("Größe + 1 > 5", [(6, "arithmetic `+` is not allowed in a condition")]),
    ('Kommune-Name = "x"', [(7, 'arithmetic `-` is not allowed in a condition; a column name with '
                               '`-` or spaces is written attr("Name-mit Strich")')]),
    ('Kommune.lower = "jena"', [(7, "attribute access `.lower` is not allowed; a column name with a "
                                   'dot is written attr("a.b")')]),
    ('(lambda: 1) = 1', [(1, "a lambda is not part of the condition language (e.g. Kommune = "
                             '"Jena" and Rolle in ["Verwaltung", "Politik"])')]),
    ('Kommune[0] = "J"', [(0, "indexing `[…]` is not part of the condition language (e.g. Kommune "
                              '= "Jena" and Rolle in ["Verwaltung", "Politik"])')]),
    ('joined < "01.01.2026"', [(9, '`01.01.2026` is not an ISO date; `joined` is a date: compare it '
                                   'with an ISO date in quotes, e.g. joined < "2026-01-01" (or '
                                   '"2026-01-01T12:00")')]),
    ('joined < "2026-02-30"', [(9, "`2026-02-30` is no valid date")]),
    ("created > 2026", [(10, '`created` is a date: compare it with an ISO date in quotes, e.g. '
                             'created < "2026-01-01" (or "2026-01-01T12:00")')]),
    ("email = 5", [(8, "`email` is text: compare it with text in quotes")]),
    ('domain < "m"', [(7, "`domain` is compared only with =, !=, in, not in")]),
    ("Rolle in []", [(9, "the list is empty; it would match nobody")]),
    ('Rolle in "Politik"', [(9, '`in` needs a list: Rolle in ["Verwaltung", "Politik"]')]),
    ("Kommune = Jena", [(10, 'compare a name with a value in quotes, not with another name (did '
                             'you mean "Jena"?)')]),
    ("Kommune is None", [(8, "`is` is not a comparison here; write = or !=")]),
    ("Kommune = True", [(10, "`True` is no value here; values are text in quotes or numbers")]),
    ('Kommune = "Jena" # Kommentar', [(17, "`#` starts a comment, which is no part of a condition "
                                           "(a `#` in a value goes inside the quotes)")]),
    ("", [(0, 'the condition is empty; e.g. Kommune = "Jena" and Rolle in ["Verwaltung", "Politik"]')]),
    ('Kommune = "Jena" AND Rolle = "x"', [(17, "invalid syntax; join conditions with `and`, `or`, "
                                              '`not` (in lower case) (e.g. Kommune = "Jena" and '
                                              'Rolle in ["Verwaltung", "Politik"])')]),
    ('a = 1 && b = 2', [(7, "invalid syntax; join conditions with `and`, `or`, `not` (in lower "
                            'case) (e.g. Kommune = "Jena" and Rolle in ["Verwaltung", "Politik"])')]),
    ("a <> 1", [(2, 'invalid syntax; write `!=` for not equal (e.g. Kommune = "Jena" and Rolle in '
                    '["Verwaltung", "Politik"])')]),
    ('Kommune = "Jena" and', [(20, 'the condition ends too early (e.g. Kommune = "Jena" and Rolle '
                                   'in ["Verwaltung", "Politik"])')]),
    ("joined", [(0, '`joined` alone is no condition; compare it, e.g. joined < "2026-01-01"')]),
    ('"Jena"', [(0, 'a value alone is no condition; e.g. Kommune = "Jena" and Rolle in '
                    '["Verwaltung", "Politik"]')]),
])
def test_errors_name_the_offending_token(where: str, expected: list[tuple[int, str]]) -> None:
    assert faults(where) == expected


def test_limits() -> None:
    assert faults("not " * 60 + "a")[0] == (204, "the condition is nested more than 50 deep")
    assert faults("not " * 2400 + "a") in ([(0, "the condition is nested too deeply")],
                                            [(204, "the condition is nested more than 50 deep")])
    assert faults("(" * 300 + "a" + ")" * 300)[0][0] == 200  # Python's own limit
    assert faults("a = 1 or " * 1200 + "a = 1") == [(10000, "the condition is longer than 10000 characters")]
    assert compile_condition(" or ".join(["a = 1"] * 1000)).clause is not None


def test_every_mistake_is_reported_once() -> None:
    assert [offset for offset, _ in faults('a + 1 = 2 or b = f(1) or c in [] or d.e = 1')] == [2, 17, 30, 37]


def test_injection_attempts_stay_values_and_nothing_is_evaluated(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a condition was evaluated")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    text, params = sql("""Kommune = "x' or 1=1 --" or Rolle = 'Jena" or "1"="1'""")
    assert "1=1" not in text and "--" not in text and "or 1" not in text
    assert set(params.values()) >= {"x' or 1=1 --", 'Jena" or "1"="1'}
    # A dunder name is just an attribute name: looked up in the JSON, never in Python.
    condition = compile_condition('__class__ = "x" and attr("__import__(\'os\')") != "y"')
    assert [name for name, _ in condition.attributes] == ["__class__", "__import__('os')"]
    marker = tmp_path / "pwned"
    assert faults(f'__import__("os").system("touch {marker}") = 0')[0][1].startswith("function calls")
    assert faults("Kommune = (lambda: __import__('os'))()")[0][0] == 10
    assert not marker.exists()


# --- errors at FILE:LINE:COL of newsletter.toml -----------------------------------------------

TOML_WITH_ERRORS = '''\
[newsletter]
title = "Test"

[segments.jena]
list = "news"
where = 'Kommune = "Jena" and Rolle in []'

[segments.ruf]
where = "Kommune = \\"Jena\\" and open(\\"x\\")"

[segments.lang]
title = "mehrzeilig"
where = """
  Größe > 10 and
  Größe + 1 < 5"""

[segments.datum]
where = 'joined < "1.1.2026" or Kommune.x = 1'

[segments.syntax]
where = 'Kommune = "Jena'

[segments.gut]
where = 'Kommune = "Jena"'
'''


@pytest.fixture
def plain_project(tmp_path: Path) -> Path:
    """A project without a database in use (the language needs none)."""
    root = tmp_path / "plain"
    init_project(root)
    return root


def test_errors_point_into_newsletter_toml(plain_project: Path) -> None:
    config = plain_project / "newsletter.toml"
    config.write_text(TOML_WITH_ERRORS, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_segments(open_project(plain_project))
    assert [p.format() for p in caught.value.problems] == [
        f"{config}:6:40: segments.jena.where: the list is empty; it would match nobody",
        f"{config}:9:33: segments.ruf.where: function calls are not allowed; only "
        'attr("column name") names an attribute',
        f"{config}:15:9: segments.lang.where: arithmetic `+` is not allowed in a condition",
        f"{config}:18:19: segments.datum.where: `1.1.2026` is not an ISO date; `joined` is a date: "
        'compare it with an ISO date in quotes, e.g. joined < "2026-01-01" (or "2026-01-01T12:00")',
        f"{config}:18:40: segments.datum.where: attribute access `.x` is not allowed; a column "
        'name with a dot is written attr("a.b")',
        f"{config}:21:20: segments.syntax.where: unterminated string literal "
        '(e.g. Kommune = "Jena" and Rolle in ["Verwaltung", "Politik"])',
    ]


def test_a_where_from_the_environment_is_named_as_such(plain_project: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (plain_project / "newsletter.toml").write_text(TOML_WITH_ERRORS.split("[segments.ruf]")[0]
                                                   .replace("Rolle in []", 'Rolle = "x"'))
    assert list(load_segments(open_project(plain_project))) == ["jena"]
    monkeypatch.setenv("NEWSLETTER_SEGMENTS__JENA__WHERE", "Kommune + 1")
    with pytest.raises(ConfigError) as caught:
        load_segments(open_project(plain_project))
    assert [p.format() for p in caught.value.problems] == [
        "environment NEWSLETTER_SEGMENTS__JENA__WHERE: segments.jena.where: arithmetic `+` is not "
        "allowed in a condition (character 9 of the condition)"]


def test_segments_are_checked_only_when_used(plain_project: Path) -> None:
    (plain_project / "newsletter.toml").write_text(TOML_WITH_ERRORS, encoding="utf-8")
    project = open_project(plain_project)  # loading the settings checks no condition
    assert set(project.settings.segments) == {"jena", "ruf", "lang", "datum", "syntax", "gut"}
    with pytest.raises(ConfigError):  # using any segment checks all of them
        load_segment(project, "gut")


def test_unknown_segment_lists_the_known_ones(plain_project: Path) -> None:
    with pytest.raises(SegmentError, match="no segment named `x`; there are none; define one"):
        load_segment(open_project(plain_project), "x")
    (plain_project / "newsletter.toml").write_text(
        '[segments.b]\nwhere = "x = 1"\n[segments.a]\nwhere = "y = 2"\n', encoding="utf-8")
    with pytest.raises(SegmentError, match=r"no segment named `x`; known segments: b, a\Z"):
        load_segment(open_project(plain_project), "x")


# --- members of real imported subscribers, SQLite and PostgreSQL --------------------------------

CASES = [
    ('Kommune = "Jena"', {"anna", "bernd"}),  # exact: case matters (dora's "jena")
    ('Kommune == "Jena"', {"anna", "bernd"}),
    ('Kommune != "Jena"', {"carla", "dora", "emil"}),  # emil has no Kommune: != matches
    ('not Kommune = "Jena"', {"carla", "dora", "emil"}),
    ('not (Kommune != "Jena")', {"anna", "bernd"}),
    ('"Jena" = Kommune', {"anna", "bernd"}),
    ('Rolle in ["Verwaltung", "Politik"]', {"anna", "carla", "dora"}),
    ('Rolle not in ["Verwaltung", "Politik"]', {"bernd", "emil"}),
    ("Größe > 10", {"anna", "dora"}),  # numbers: 12 and 100, not "3" > "10"
    ("Größe < 10", {"bernd"}),
    ("Größe >= 12", {"anna", "dora"}),
    ("Größe <= 3", {"bernd"}),
    ("3 <= Größe < 100", {"anna", "bernd"}),
    ("Größe = 12.0", {"anna"}),
    ("Größe in [3, 100]", {"bernd", "dora"}),
    ('Größe > "5"', set()),  # text: "12", "3", "100" all sort before "5"
    ("Mitarbeiter > 10", {"carla"}),  # "viele" is no number: never greater, never smaller
    ("Mitarbeiter < 1000", {"anna", "carla"}),
    ("Mitarbeiter != 5", {"bernd", "carla", "dora", "emil"}),
    ('Kommune < "K"', {"anna", "bernd"}),  # by code point: "jena" > "K" > "Jena" on both
    ('Kommune in ["Jena", 5]', {"anna", "bernd"}),
    ('attr("Name mit Leerzeichen") = "ja"', {"anna", "carla"}),
    ('attr(\'Ort"Nr\') = "7"', {"anna"}),
    ("Größe", {"anna", "bernd", "dora"}),  # has a value
    ("not Größe", {"carla", "emil"}),
    ("Firma", set()),
    ("not Firma", EVERYONE),
    ('Firma = "x"', set()),
    ('Firma != "x"', EVERYONE),
    ('name = "Anna"', {"anna"}),
    ('name != "Anna"', {"bernd", "carla", "dora", "emil"}),
    ("name", {"anna", "bernd", "dora", "emil"}),
    ('email = "ANNA@jena.de"', {"anna"}),
    ('domain = "jena.de"', {"anna", "bernd"}),
    ('domain in ["weimar.de", "EXAMPLE.org"]', {"carla", "dora", "emil"}),
    ('domain != "jena.de"', {"carla", "dora", "emil"}),
    ('domain = "%.de"', set()),  # LIKE wildcards are escaped
    ('Kommune = "Jena" and (Rolle = "Bürger" or Größe > 10)', {"anna", "bernd"}),
    ('Kommune = "Jena" or Rolle = "Politik"', {"anna", "bernd", "carla", "dora"}),
    ('Kommune = "x\' or 1=1 --"', set()),
    ('Kommune = \'Jena" or "1"="1\'', set()),
    ('__class__ = "x"', set()),
    ('attr("__class__") != "x"', EVERYONE),
    # Anna joined at 2025-12-31 23:30 UTC = 2026-01-01 00:30 in Berlin (the project's timezone).
    ('joined < "2026-01-01"', set()),
    ('joined = "2026-01-01"', {"anna"}),
    ('joined <= "2026-01-01"', {"anna"}),
    ('joined >= "2026-01-02"', {"bernd", "carla", "dora", "emil"}),
    ('joined < "2026-01-01T00:31"', {"anna"}),
    ('joined < "2026-01-01T00:00:00Z"', {"anna"}),
    ('joined in ["2025-12-31", "2026-01-01"]', {"anna"}),
    ('joined != "2026-01-01"', {"bernd", "carla", "dora", "emil"}),
    ('created > "2000-01-01"', EVERYONE),
    ('created < "2000-01-01"', set()),
]


def write_segments(root: Path, segments: dict[str, str], lists: dict[str, str] | None = None) -> None:
    config = root / "newsletter.toml"
    text = config.read_text(encoding="utf-8")
    for name, where in segments.items():
        text += f"\n[segments.{name}]\nwhere = {json.dumps(where, ensure_ascii=False)}\n"
        if lists and name in lists:
            text += f'list = "{lists[name]}"\n'
    config.write_text(text, encoding="utf-8")


@pytest.fixture
def imported(project_dir: Path, tmp_path: Path) -> Path:
    """The project with the CSV imported into `news` (and Anna into `other`), Anna's `news`
    membership dated 2025-12-31 23:30 UTC, the others 2026-03-01 (UTC)."""
    csv_file = tmp_path / "kommunen.csv"
    csv_file.write_text(CSV, encoding="utf-8")
    with open_project(project_dir) as project:
        news = project.store.create_list("news")
        project.store.create_list("other")
        report = project.import_subscribers(csv_file, "news", confirmed=True)
        assert not report.problems
        anna = project.store.find_subscriber("anna@jena.de")
        assert anna is not None
        project.store.add_subscriber("anna@jena.de", project.store.get_list("other").id, confirmed=True)
        with project.store.write() as conn:
            conn.execute(memberships.update().where(memberships.c.list_id == news.id).values(
                created_at=datetime(2026, 3, 1, 12, tzinfo=UTC)))
            conn.execute(memberships.update().where(memberships.c.list_id == news.id,
                                                    memberships.c.subscriber_id == anna.id)
                         .values(created_at=datetime(2025, 12, 31, 23, 30, tzinfo=UTC)))
    return project_dir


def test_members_of_imported_subscribers(imported: Path) -> None:
    write_segments(imported, {f"s{i}": where for i, (where, _) in enumerate(CASES)})
    wrong = []
    with open_project(imported) as project:
        assert project.settings.newsletter.timezone == "Europe/Berlin"
        segments = load_segments(project)
        news = project.store.get_list("news").id
        for i, (where, expected) in enumerate(CASES):
            segment = segments[f"s{i}"]
            found = {m.email.split("@")[0] for m in segment_members(project.store, news, segment)}
            counted = count_members(project.store, news, segment)
            with project.store.read() as conn:
                piece = subscribed_members(news, segment)
                journal = set(conn.execute(sa.select(piece.c.email)).scalars())
            journal_names = {e.split("@")[0] for e in journal}
            if found != expected or counted != len(expected) or journal_names != expected:
                wrong.append((where, sorted(found), counted, sorted(journal), sorted(expected)))
    assert wrong == []


def test_status_and_list_of_a_segment(imported: Path) -> None:
    write_segments(imported, {"jena": 'Kommune = "Jena"', "alle": 'created > "2000-01-01"'},
                   lists={"jena": "news"})
    with open_project(imported) as project:
        store = project.store
        news, other = store.get_list("news"), store.get_list("other")
        jena, alle = load_segment(project, "jena"), load_segment(project, "alle")
        store.unsubscribe("bernd@jena.de", news.id)
        assert [m.email for m in segment_members(store, news.id, jena)] == ["anna@jena.de"]
        assert count_members(store, news.id, jena, status=None) == 2
        assert count_members(store, news.id, jena, status="unsubscribed") == 1
        assert count_members(store, news.id, None) == 4
        assert count_members(store, other.id, alle) == 1  # a segment without a list: any list
        jena.check_list("news")
        with pytest.raises(SegmentError, match="segment `jena` belongs to the list `news`"):
            jena.check_list("other")
        with pytest.raises(SegmentError, match="not to `other`"):
            count_members(store, other.id, jena)


# --- the CLI ------------------------------------------------------------------------------------


@pytest.fixture
def run(imported: Path):
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(app, [*args, "--project", str(imported)])

    return invoke


def test_subscribers_ls_with_a_segment(run, imported: Path) -> None:
    write_segments(imported, {"jena": 'Kommune = "Jena" and Rolle in ["Verwaltung", "Bürger"]',
                              "politik": 'Rolle = "Politik"'}, lists={"jena": "news"})
    listed = run("subscribers", "ls", "--list", "news", "--segment", "jena", "--json")
    assert listed.exit_code == 0, listed.stderr
    assert [m["email"] for m in json.loads(listed.stdout)] == ["anna@jena.de", "bernd@jena.de"]
    table = run("subscribers", "ls", "--segment", "jena")  # the segment names its list
    assert table.exit_code == 0 and "anna@jena.de" in table.stdout and "2 memberships" in table.stdout
    pending = run("subscribers", "ls", "--segment", "jena", "--status", "pending", "--json")
    assert json.loads(pending.stdout) == []
    politik = run("subscribers", "ls", "--list", "news", "--segment", "politik", "--json")
    assert sorted(m["email"] for m in json.loads(politik.stdout)) == ["carla@weimar.de", "dora@example.org"]

    unknown = run("subscribers", "ls", "--list", "news", "--segment", "nope")
    assert unknown.exit_code == 1
    assert "no segment named `nope`; known segments: jena, politik" in unknown.stderr
    wrong_list = run("subscribers", "ls", "--list", "other", "--segment", "jena")
    assert wrong_list.exit_code == 1 and "belongs to the list `news`" in wrong_list.stderr
    no_list = run("subscribers", "ls", "--segment", "politik")
    assert no_list.exit_code == 1 and "--segment politik needs --list" in no_list.stderr


def test_segments_ls_and_check(run, imported: Path) -> None:
    config = imported / "newsletter.toml"
    write_segments(imported, {"jena": 'Kommune = "Jena"', "tippfehler": 'Komune = "Jena"'},
                   lists={"jena": "news"})
    listed = json.loads(run("segments", "ls", "--json").stdout)
    assert listed == [
        {"name": "jena", "list": "news", "title": None, "where": 'Kommune = "Jena"',
         "members": {"news": 2}},
        {"name": "tippfehler", "list": None, "title": None, "where": 'Komune = "Jena"',
         "members": {"news": 0, "other": 0}},
    ]
    assert "Kommune = \"Jena\"" in run("segments", "ls").stdout

    checked = run("segments", "check")
    assert checked.exit_code == 0, checked.stderr
    assert "2 segments OK" in checked.stdout
    line = config.read_text(encoding="utf-8").splitlines().index('where = "Komune = \\"Jena\\""') + 1
    assert (f"{config}:{line}:10: warning: segments.tippfehler.where: no subscriber has the attribute "
            "`Komune` (a typo? attribute names are CSV column names)") in checked.stderr

    write_segments(imported, {"kaputt": 'Kommune = "Jena" or Größe * 2 > 5'},
                   lists={"kaputt": "nirgends"})
    broken = run("segments", "check")
    assert broken.exit_code == 1
    line = config.read_text(encoding="utf-8").splitlines().index(
        'where = "Kommune = \\"Jena\\" or Größe * 2 > 5"') + 1
    assert broken.stderr.splitlines() == [
        f"{config}:{line}:38: segments.kaputt.where: arithmetic `*` is not allowed in a condition"]
    assert run("segments", "ls").exit_code == 1

    config.write_text(config.read_text(encoding="utf-8").replace("Größe * 2", "Größe"),
                      encoding="utf-8")
    missing_list = run("segments", "check")
    assert missing_list.exit_code == 1
    assert f"{config}:{line + 1}:8: segments.kaputt.list: no list named `nirgends`" in missing_list.stderr


def test_dates_are_in_the_projects_timezone(plain_project: Path) -> None:
    (plain_project / "newsletter.toml").write_text(
        '[newsletter]\ntimezone = "America/New_York"\n[segments.s]\nwhere = \'joined < "2026-01-01"\'\n',
        encoding="utf-8")
    segment = load_segment(open_project(plain_project), "s")
    compiled = segment.condition.clause.compile(dialect=sqlite.dialect())
    assert list(compiled.params.values()) == [
        datetime(2026, 1, 1, tzinfo=ZoneInfo("America/New_York"))]
