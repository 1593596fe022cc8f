"""`newsletter new --from-feed … --from-ics …`: drafts from RSS, Atom and iCalendar feeds.

The feeds (tests/feeds/, our own example content) are served by a real HTTP server on
127.0.0.1; nothing else is reached.
"""

from __future__ import annotations

import re
import shutil
import socket
import threading
from collections.abc import Iterator
from datetime import date, time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from newsletter.cli import app
from newsletter.content.markdown import located_markdown_problems
from newsletter.content.model import EventsSection, LinksSection, NewsSection
from newsletter.content.validate import load_issue
from newsletter.editorial import draft_from_feeds, latest_issue_date
from newsletter.editorial.markup import html_to_markdown, text_to_markdown
from newsletter.project import open_project

FEEDS = Path(__file__).resolve().parent / "feeds"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of an HTTP server on 127.0.0.1 serving a copy of tests/feeds/."""
    root = tmp_path_factory.mktemp("feeds")
    for path in FEEDS.iterdir():
        shutil.copyfile(path, root / path.name)
    (root / "gross.rss").write_bytes(b"<rss>" + b" " * 300_000 + b"</rss>")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A new project (its example issue is dated 2026-02-10), the current directory."""
    assert CliRunner().invoke(app, ["init", str(tmp_path)]).exit_code == 0
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _new(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["new", "--date", "2026-03-10", *args])
    return result.exit_code, result.stdout, result.stderr


def _sections(path: Path) -> dict[str, object]:
    return {section.heading: section for section in load_issue(path, strict=True).issue.sections}


def test_a_draft_from_rss_atom_and_ics_validates(server: str, project: Path) -> None:
    code, out, err = _new("--from-feed", f"{server}/rathaus.rss", "--from-feed", f"{server}/blog.atom",
                          "--from-ics", f"{server}/termine.ics")
    assert code == 0, err
    assert err == ""
    assert out.strip() == f"created {Path('issues') / '2026-03.yaml'}"
    path = project / "issues" / "2026-03.yaml"
    result = CliRunner().invoke(app, ["validate", "--strict", str(path)])
    assert result.exit_code == 0, result.stderr

    text = path.read_text(encoding="utf-8")
    assert text.startswith("# yaml-language-server: $schema=../issue.schema.json\n")
    for name in ("rathaus.rss", "blog.atom", "termine.ics"):  # where each section came from
        assert re.search(rf"\n  # aus {re.escape(server)}/{name}, \d{{4}}-\d{{2}}-\d{{2}}\n", text), name
    # The editor's placeholders, as `new` writes them.
    issue = load_issue(path).issue
    assert issue.subject == "Newsletter März 2026"
    assert issue.intro == "Liebe Leserinnen und Leser,"
    assert issue.date == date(2026, 3, 10)

    sections = _sections(path)
    rathaus = sections["Pressemitteilungen der Stadt Musterstadt"]
    assert isinstance(rathaus, NewsSection)
    assert [(i.date, i.title) for i in rathaus.items] == [
        (date(2026, 3, 3), "Neue Öffnungszeiten im Bürgerbüro"),
        (date(2026, 2, 20), "Haushalt 2026: Stadtrat beschließt Investitionen in Schulen"),
        (date(2026, 2, 10), "Winterdienst: Bilanz der Saison"),  # the day of the last issue counts
    ]
    haushalt = rathaus.items[1]
    assert haushalt.url == f"{server}/presse/haushalt-2026"  # relative link resolved
    assert haushalt.teaser == (
        "Der Stadtrat hat den Haushalt beschlossen. Schwerpunkte:\n\n"
        "- Sanierung der Grundschule Am Wall\n- Neue Turnhalle in Nordstadt\n\n"
        f"Alle Zahlen im [Haushaltsplan]({server}/presse/haushalt-2026/zahlen)."
    )
    blog = sections["Stadtblog Musterstadt"]
    assert isinstance(blog, NewsSection)
    assert [(i.date, i.title, i.teaser) for i in blog.items] == [
        (date(2026, 3, 5), "Radwege & Fußwege: Was sich 2026 ändert",
         "Die Stadt baut *zwölf Kilometer* neue Radwege."),
        # 2026-02-27 23:30 UTC is already the 28th in Berlin.
        (date(2026, 2, 28), "Ein Jahr Mängelmelder",
         "Über 2.000 Meldungen in zwölf Monaten – **danke** fürs Mitmachen!"),
    ]
    assert blog.items[0].url == "https://blog.musterstadt.example/2026/radwege"


def test_events_from_ics_all_day_multi_day_and_a_converted_time_zone(server: str, project: Path) -> None:
    code, _, err = _new("--from-ics", f"{server}/termine.ics")
    assert code == 0, err
    events = _sections(project / "issues" / "2026-03.yaml")["Veranstaltungen in Musterstadt"]
    assert isinstance(events, EventsSection)
    by_title = {e.title: e for e in events.events}
    # Past (the 14.02.) and cancelled events are left out; the rest in order of date.
    assert list(by_title) == ["Frühjahrsputz im Stadtpark", "Videokonferenz mit der Partnerstadt",
                              "Bürgersprechstunde der Oberbürgermeisterin", "Stadtfest 2026"]
    putz = by_title["Frühjahrsputz im Stadtpark"]  # all-day, one day
    assert (putz.date, putz.end, putz.time, putz.end_time) == (date(2026, 3, 21), None, None, None)
    assert putz.venue == "Stadtpark Musterstadt"
    assert putz.body == "Handschuhe und Säcke stellt die Stadt.\\\nTreffpunkt am Musikpavillon."
    fest = by_title["Stadtfest 2026"]  # all-day over three days: DTEND is the day after
    assert (fest.date, fest.end, fest.time) == (date(2026, 4, 17), date(2026, 4, 19), None)
    assert (fest.venue, fest.address) == ("Marktplatz", "Am Markt 1, 12345 Musterstadt")
    assert fest.body == "Drei Tage Musik, Essen und Vereine.\n\nDas Programm folgt."
    assert fest.link is not None and fest.link.url == "https://www.musterstadt.example/stadtfest"
    # 20:00–21:30 in New York (EDT) on 26 March is 01:00–02:30 in Berlin (CET) on the 27th.
    video = by_title["Videokonferenz mit der Partnerstadt"]
    assert (video.date, video.end, video.time, video.end_time) == (
        date(2026, 3, 27), None, time(1, 0), time(2, 30))
    assert (video.venue, video.address) == ("Ratssaal", "Rathaus Musterstadt")
    # UTC 16:00 on 15 April is 18:00 in Berlin (summer time).
    talk = by_title["Bürgersprechstunde der Oberbürgermeisterin"]
    assert (talk.date, talk.time, talk.end_time) == (date(2026, 4, 15), time(18, 0), time(20, 0))


def test_the_project_time_zone_is_used(server: str, project: Path) -> None:
    config = project / "newsletter.toml"
    text = config.read_text(encoding="utf-8")
    assert "[newsletter]" in text
    config.write_text(text.replace("[newsletter]", '[newsletter]\ntimezone = "America/New_York"', 1),
                      encoding="utf-8")
    assert open_project(project).settings.newsletter.timezone == "America/New_York"
    code, _, err = _new("--from-ics", f"{server}/termine.ics")
    assert code == 0, err
    events = _sections(project / "issues" / "2026-03.yaml")["Veranstaltungen in Musterstadt"]
    assert isinstance(events, EventsSection)
    video = next(e for e in events.events if e.title.startswith("Videokonferenz"))
    assert (video.date, video.time, video.end_time) == (date(2026, 3, 26), time(20, 0), time(21, 30))


def test_html_and_umlauts_in_summaries_become_safe_markdown(server: str, project: Path) -> None:
    code, _, err = _new("--from-feed", f"{server}/quartier.rss")
    assert code == 0, err
    path = project / "issues" / "2026-03.yaml"
    assert CliRunner().invoke(app, ["validate", "--strict", str(path)]).exit_code == 0
    sections = load_issue(path, strict=True).issue.sections  # both headed by the feed's title
    news = next(s for s in sections if isinstance(s, NewsSection))
    fest, sprechstunde = news.items
    assert fest.title == "Straßenfest & Bürgerversammlung in der Südstadt"
    assert fest.teaser == "Bürger&innen **treffen** sich"  # no tags, no script content
    assert sprechstunde.title == "Sprechstunde: „Fragen Sie Ihre Ortsvorsteherin“"
    teaser = sprechstunde.teaser or ""
    # What the feed wrote as text stays text: escaped, never Markdown, HTML or a personal field.
    assert teaser == (
        "**# Jeden Mittwoch**\n\n"
        "Im Café \\*Eckstein\\* \\[Raum 2\\] \\<b>ab 17 Uhr\\</b> \\&amp; mit Kaffee \\{\\{name\\}\\}.\n\n"
        "1\\. Stock, barrierefrei\\\nEingang über den Hof"
    )
    assert "color" not in teaser and "Foto" not in teaser
    # The entry without a date is a link (news needs a date).
    links = next(s for s in sections if isinstance(s, LinksSection))
    assert [link.title for link in links.links] == ["Grünflächen-Patenschaften gesucht"]
    assert "Einträge ohne Datum" in path.read_text(encoding="utf-8")


@pytest.mark.parametrize(("markup", "expected"), [
    ("<p>Bürger&amp;innen <b>treffen</b> sich</p><script>x</script>", "Bürger&innen **treffen** sich"),
    ("<p>Hallo <script>alert(1)</script>Welt<style>b{}</style></p>", "Hallo Welt"),
    ("<h1>Titel</h1><p>Text</p>", "**Titel**\n\nText"),
    ("<p>Mehr: <a href='javascript:alert(1)'>hier</a>, <a href='/relativ'>dort</a></p>",
     "Mehr: hier, dort"),
    ("<p>Zum <a href='https://x.example/a b(c)'>Plan</a>!</p>",
     "Zum [Plan](https://x.example/a%20b%28c%29)!"),
    ("<p>Wow!<a href='https://x.example/'>Bild</a></p>", "Wow\\![Bild](https://x.example/)"),
    ("<ol><li>eins</li><li>zwei<ul><li>drei</li></ul></li></ol>", "1. eins\n2. zwei\n\n- drei"),
    ("<p># kein Titel</p><p>- kein Punkt</p><p>2026. Jahr</p><p>=====</p>",
     "\\# kein Titel\n\n\\- kein Punkt\n\n2026\\. Jahr\n\n\\====="),
    ("<p><b> fett </b>und<i></i> nicht</p>", "**fett** und nicht"),
    ("<p>&lt;img src=x onerror=alert(1)&gt; `code` ![b](https://x.example/b.png)</p>",
     "\\<img src=x onerror=alert(1)> \\`code\\` !\\[b\\](https://x.example/b.png)"),
    ("<div><p>a</p><table><tr><td>x</td><td>y</td></tr></table></div>", "a\n\nx y"),
    ("Nur Text &amp; &#x1F600;", "Nur Text & 😀"),
    ("<p>unclosed <b>bold <a href='https://x.example/'>link", "unclosed **bold** [**link**](https://x.example/)"),
])
def test_html_to_markdown(markup: str, expected: str) -> None:
    text, shortened = html_to_markdown(markup)
    assert text == expected
    assert not shortened
    assert located_markdown_problems(text) == []


def test_long_summaries_are_cut_at_paragraphs_or_words() -> None:
    paragraphs = "".join(f"<p>Absatz {n} " + "Wort " * 30 + "</p>" for n in range(10))
    text, shortened = html_to_markdown(paragraphs, limit=400)
    assert shortened and text.count("\n\n") == 1 and text.startswith("Absatz 0")
    text, shortened = html_to_markdown("<p>" + "Langes Wort " * 100 + "</p>", limit=100)
    assert shortened and text.endswith(" …") and len(text) <= 102
    assert text_to_markdown("Zeile 1\nZeile 2\n\n* Stern") == ("Zeile 1\\\nZeile 2\n\n\\* Stern", False)


def test_a_broken_and_an_unreachable_feed_one_line_each_the_rest_used(
    server: str, project: Path, closed_port: int
) -> None:
    broken, gone = f"{server}/kaputt.rss", f"http://127.0.0.1:{closed_port}/aktuelles.rss"
    missing = f"{server}/gibt-es-nicht.ics"
    code, _, err = _new("--from-feed", broken, "--from-feed", gone, "--from-feed", f"{server}/rathaus.rss",
                        "--from-ics", missing, "--from-ics", f"{server}/kaputt.ics")
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 4, err
    assert lines[0].startswith(f"{broken}: malformed feed (line 8: mismatched tag)")
    assert lines[1].startswith(f"{gone}: not reachable (")
    assert lines[2] == f"{missing}: HTTP 404 File not found"
    assert lines[3] == (f"{server}/kaputt.ics: malformed iCalendar file "
                        "(no complete BEGIN:VCALENDAR … END:VCALENDAR)")
    path = project / "issues" / "2026-03.yaml"
    assert CliRunner().invoke(app, ["validate", str(path)]).exit_code == 0
    sections = _sections(path)
    assert "Pressemitteilungen der Stadt Musterstadt" in sections
    assert not any(isinstance(s, EventsSection) for s in sections.values())
    text = path.read_text(encoding="utf-8")
    assert f"# nicht gelesen: {gone}: not reachable" in text
    assert f"# nicht gelesen: {missing}: HTTP 404" in text


def test_nothing_readable_exits_1_and_writes_nothing(server: str, project: Path, closed_port: int) -> None:
    before = sorted((project / "issues").iterdir())
    code, out, err = _new("--from-feed", f"http://127.0.0.1:{closed_port}/a.rss",
                          "--from-feed", f"{server}/termine.ics",  # not a feed
                          "--from-ics", f"{server}/rathaus.rss")  # not a calendar
    assert code == 1
    assert out == ""
    assert err.strip().splitlines() == [
        f"http://127.0.0.1:{closed_port}/a.rss: not reachable ([Errno 111] Connection refused)",
        f"{server}/termine.ics: not an RSS or Atom feed (not XML)",
        f"{server}/rathaus.rss: not an iCalendar file (it does not start with BEGIN:VCALENDAR)",
        "no feed could be read; no file written",
    ]
    assert sorted((project / "issues").iterdir()) == before


def test_since_leaves_out_older_entries(server: str, project: Path) -> None:
    code, _, err = _new("--from-feed", f"{server}/rathaus.rss", "--from-feed", f"{server}/blog.atom",
                        "--since", "01.03.2026")
    assert code == 0, err
    path = project / "issues" / "2026-03.yaml"
    titles = [i.title for s in _sections(path).values() if isinstance(s, NewsSection) for i in s.items]
    assert titles == ["Neue Öffnungszeiten im Bürgerbüro", "Radwege & Fußwege: Was sich 2026 ändert"]
    assert "# 3 Einträge vor dem 01.03.2026 ausgelassen (--since)" in path.read_text(encoding="utf-8")


def test_since_defaults_to_the_latest_issue_date_or_everything(server: str, project: Path) -> None:
    issues = project / "issues"
    assert latest_issue_date(issues) == date(2026, 2, 10)
    (issues / "kaputt.yaml").write_text("subject: [\n", encoding="utf-8")  # passed over
    (issues / "2026-03-01.yaml").write_text("date: 01.03.2026\n", encoding="utf-8")
    assert latest_issue_date(issues) == date(2026, 3, 1)
    for path in issues.glob("*.yaml"):
        path.unlink()
    assert latest_issue_date(issues) is None
    code, _, err = _new("--from-feed", f"{server}/rathaus.rss")
    assert code == 0, err
    text = (issues / "2026-03.yaml").read_text(encoding="utf-8")
    assert "alle Einträge (kein --since)" in text
    assert "Neujahrsempfang im Rathaus" in text  # from January: nothing left out


def test_a_draft_never_overwrites_a_file(server: str, project: Path) -> None:
    mine = project / "issues" / "2026-03.yaml"
    mine.write_text("# meins\n", encoding="utf-8")
    code, out, err = _new("--from-feed", f"{server}/rathaus.rss")
    assert code == 0, err
    assert mine.read_text(encoding="utf-8") == "# meins\n"
    assert out.strip() == f"created {Path('issues') / '2026-03-2.yaml'}"
    assert load_issue(project / "issues" / "2026-03-2.yaml").issue.date == date(2026, 3, 10)


def test_since_needs_a_feed_and_a_valid_date(project: Path) -> None:
    code, _, err = _new("--since", "2026-03-01")
    assert (code, err.strip()) == (1, "--since: only with --from-feed or --from-ics")
    code, _, err = _new("--from-feed", "http://127.0.0.1:9/x.rss", "--since", "2026-02-30")
    assert (code, err.strip()) == (1, "--since: `2026-02-30` is not a valid date (no such day)")


def test_the_library_api(server: str, project: Path) -> None:
    proj = open_project(project)
    text, problems = draft_from_feeds(proj, [f"{server}/blog.atom", f"{server}/gross.rss"],
                                      [f"{server}/termine.ics"], date(2026, 3, 1), on=date(2026, 3, 22),
                                      max_bytes=100_000)
    assert [p.format() for p in problems] == [f"{server}/gross.rss: larger than 97 KB (292 KB)"]
    assert text is not None and "\ndate: 2026-03-22\n" in text
    assert "Radwege" in text and "Mängelmelder" not in text  # published before 1 March
    # Events are those still ahead when the issue goes out (22 March): not the 21st.
    assert "Frühjahrsputz" not in text and "Videokonferenz" in text
    assert "# 2 Termine vor dem 22.03.2026 ausgelassen" in text
    nothing, problems = draft_from_feeds(None, [f"{server}/gibt-es-nicht.rss"], [], None)
    assert nothing is None and [p.message for p in problems] == ["HTTP 404 File not found"]
