"""Rendering of one issue: the email HTML, the text part, the web version, .ics files.

Uses tests/golden/full-issue.yaml, a fixture with every section kind and field."""

from __future__ import annotations

import re
from datetime import date, time
from pathlib import Path

import icalendar
import lxml.html
import pytest

from newsletter.content.validate import load_issue
from newsletter.project import Project, open_project
from newsletter.render import dates as dates
from newsletter.render.html import (
    UNSUBSCRIBE_PLACEHOLDER,
    RenderedIssue,
    RenderError,
    environment,
    mjml_problems,
    render_issue,
)
from newsletter.render.templates import PACKAGED_TEMPLATES
from newsletter.render.text import markdown_to_text, wrap

FULL = Path(__file__).parent / "golden" / "full-issue.yaml"


@pytest.fixture
def full(project: Project) -> RenderedIssue:
    return render_issue(load_issue(FULL), project)


def html_doc(html: str) -> lxml.html.HtmlElement:
    return lxml.html.document_fromstring(html)


def long_lines(text: str) -> list[str]:
    """Lines over 78 characters that are not a lone URL."""
    return [line for line in text.splitlines()
            if len(line) > 78 and not re.fullmatch(r"\s*<?https?://\S+>?[.,]?", line)]


def test_email_head_has_doctype_lang_title_and_hidden_preheader(full: RenderedIssue) -> None:
    assert full.html.startswith("<!doctype html>\n")
    doc = html_doc(full.html)
    assert doc.get("lang") == "de"
    assert doc.findtext(".//title") == "Alles drin: <Test> & „Anführungszeichen“"
    hidden = [d for d in doc.iter("div") if "display:none" in (d.get("style") or "").replace(" ", "")]
    assert hidden and "Eine Ausgabe mit jeder Art von Abschnitt" in hidden[0].text_content()


def test_text_from_yaml_cannot_inject_markup(full: RenderedIssue) -> None:
    assert "<script>" not in full.html and "<script>" not in full.web_html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in full.html
    # The plain-text part shows it as the text it is.
    assert "Zweitägige Werkstatt <script>alert(1)</script>" in full.text


def test_images_keep_alt_and_pixel_sizes_and_credits(full: RenderedIssue) -> None:
    doc = html_doc(full.html)
    images = {img.get("src"): img for img in doc.iter("img")}
    assert len(images) == 7
    for img in images.values():
        assert img.get("alt")
        assert img.get("width", "").isdigit(), img.get("width")  # never premailer's "100%"
        assert img.get("height", "").isdigit()
    full_width = images["https://example.org/bilder/meldung.png"]
    assert (full_width.get("width"), full_width.get("height")) == ("552", "276")
    text = doc.text_content()
    for credit in ("Bild: wal_172619 / pixabay", "©Stadt Musterstadt", "Foto: Max Muster", "©Stadt Jena"):
        assert credit in text
        assert credit in full.text
    linked = doc.xpath('//a[@href="https://example.org/bilder/ratssaal"]//img')
    assert linked, "an image with `link` is clickable"


def test_structure_headings_lists_buttons_and_ctas(full: RenderedIssue) -> None:
    doc = html_doc(full.html)
    h2 = [h.text_content() for h in doc.iter("h2")]
    assert h2 == ["Termine", "Smart zu wissen", "Aus dem Blog", "Kurz gemeldet",
                  "Was wir aus Kiel mitnehmen", "In eigener Sache"]
    h3 = [h.text_content() for h in doc.iter("h3")]
    assert "Bürgerabend Digitales Rathaus" in h3 and "Ein Zwischentitel" in h3
    assert [li.text_content() for li in doc.xpath("//ul/li")][:2] == [
        "Terminbuchung im Bürgerbüro", "Digitale Anträge"]
    assert [li.text_content() for li in doc.xpath("//ol/li")] == ["erstens", "zweitens"]
    button = doc.xpath('//a[@href="https://example.org/buergerabend/anmeldung"]')
    assert button and button[0].text_content().strip() == "Jetzt anmelden"
    assert doc.xpath('//a[@href="https://example.org/alle-infos"]')[0].text_content() == (
        "→ Alle Informationen und Anmeldung")
    assert "Smart City ist ein Kooperations- und Schnittstellenthema." in doc.xpath(
        "//blockquote")[0].text_content()


def test_events_show_german_dates_and_times_and_calendar_links(full: RenderedIssue) -> None:
    text = html_doc(full.html).text_content()
    assert "Di., 28. April 2026, 18:00–20:30 Uhr" in text
    assert "28.–29. April 2026" in text
    assert "Wann: Di., 28. April 2026, 18:00–20:30 Uhr" in full.text
    web = html_doc(full.web_html)
    ics_links = web.xpath('//a[text()="In den Kalender eintragen"]/@href')
    assert ics_links == sorted(full.ics)  # relative links next to index.html
    email_links = html_doc(full.html).xpath('//a[text()="In den Kalender eintragen"]/@href')
    assert email_links == [full.web_url + name for name in sorted(full.ics)]


def test_footer_imprint_unsubscribe_and_browser_link(full: RenderedIssue, project: Project) -> None:
    doc = html_doc(full.html)
    unsubscribe = doc.xpath(f'//a[@href="{UNSUBSCRIBE_PLACEHOLDER}"]')
    assert unsubscribe and unsubscribe[0].text_content() == "Newsletter abbestellen"
    assert f"Newsletter abbestellen: {UNSUBSCRIBE_PLACEHOLDER}" in full.text
    assert doc.xpath('//a[text()="Im Browser ansehen"]/@href') == [full.web_url]
    assert full.web_url == "http://127.0.0.1:8000/archive/alles-drin/"
    imprint = project.settings.imprint
    for value in (imprint.name, imprint.address, imprint.represented_by, imprint.phone):
        assert value in doc.text_content()
        assert value in full.text
    assert doc.xpath(f'//a[@href="{imprint.url}"]') and imprint.url in full.text


def test_web_version_has_no_unsubscribe_placeholder(full: RenderedIssue) -> None:
    assert UNSUBSCRIBE_PLACEHOLDER not in full.web_html
    assert "Im Browser ansehen" not in full.web_html
    assert "Newsletter „Smart zu wissen“ abonnieren" in html_doc(full.web_html).text_content()


def test_text_part_wraps_at_78_and_keeps_long_urls_whole(full: RenderedIssue) -> None:
    assert long_lines(full.text) == []
    long_url = ("https://example.org/ein/sehr/langer/pfad/der/nicht/auf/eine/zeile/passt/"
                "und/trotzdem/ganz/bleiben/muss.html")
    assert f"<{long_url}>" in full.text.splitlines()
    assert "Liebe Leserinnen und Leser, fett, kursiv und ein Link zur Einleitung" in full.text
    assert "  > „Smart City ist ein Kooperations- und Schnittstellenthema.“" in full.text
    assert "TERMINE\n=======" in full.text


def test_ics_files_use_berlin_time_and_all_day_events(full: RenderedIssue) -> None:
    timed, all_day = (icalendar.Calendar.from_ical(full.ics[name]) for name in sorted(full.ics))
    event = timed.walk("VEVENT")[0]
    assert str(event["SUMMARY"]) == "Bürgerabend Digitales Rathaus"
    assert event["DTSTART"].params["TZID"] == "Europe/Berlin"
    assert event.decoded("DTSTART").isoformat() == "2026-04-28T18:00:00+02:00"
    assert event.decoded("DTEND").isoformat() == "2026-04-28T20:30:00+02:00"
    assert timed.walk("VTIMEZONE")[0]["TZID"] == "Europe/Berlin"
    assert str(event["LOCATION"]) == "Ratssaal, Rathausplatz 1, Musterstadt"
    day = all_day.walk("VEVENT")[0]
    assert day.decoded("DTSTART") == date(2026, 4, 28)
    assert day.decoded("DTEND") == date(2026, 4, 30)  # exclusive: the day after the last day
    for body in full.ics.values():
        assert "\r\n" in body and all(len(line.encode()) <= 75 for line in body.split("\r\n"))


def test_rendering_twice_gives_identical_output(project: Project, full: RenderedIssue) -> None:
    again = render_issue(load_issue(FULL), project)
    assert again == full


def test_rendering_prints_nothing(project: Project, capfd: pytest.CaptureFixture[str]) -> None:
    render_issue(load_issue(FULL), project)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")  # no cssutils log flood on stderr


def test_theme_settings_reach_the_html(project_dir: Path) -> None:
    toml = project_dir / "newsletter.toml"
    toml.write_text(toml.read_text().replace('primary_color = "#005f87"', 'primary_color = "#aa3300"')
                    + '\n', encoding="utf-8")
    (project_dir / "newsletter.toml").write_text(
        toml.read_text().replace("[theme]", '[theme]\nlogo_url = "https://example.org/logo.png"\n'
                                 'logo_alt = "Logo der Musterstadt"\nlogo_height = 40'),
        encoding="utf-8")
    rendered = render_issue(load_issue(FULL), open_project(project_dir))
    assert "#aa3300" in rendered.html
    logo = html_doc(rendered.html).xpath('//img[@src="https://example.org/logo.png"]')[0]
    assert (logo.get("alt"), logo.get("width"), logo.get("height")) == ("Logo der Musterstadt", "160", "40")


def test_project_template_extends_the_default(project_dir: Path) -> None:
    (project_dir / "templates" / "base.mjml.j2").write_text(
        '{% extends "default:base.mjml.j2" %}\n'
        "{% block header %}<mj-section><mj-column><mj-text><h1>Eigener Kopf</h1></mj-text>"
        "</mj-column></mj-section>{% endblock %}\n", encoding="utf-8")
    (project_dir / "templates" / "sections").mkdir()
    (project_dir / "templates" / "sections" / "text.txt.j2").write_text(
        "EIGENER TEXTABSCHNITT: {{ section.heading }}\n", encoding="utf-8")
    rendered = render_issue(load_issue(FULL), open_project(project_dir))
    assert "Eigener Kopf" in rendered.html and "Eigener Kopf" in rendered.web_html
    assert "Termine" in rendered.html  # the rest of the default layout is still there
    assert "EIGENER TEXTABSCHNITT: In eigener Sache" in rendered.text


def test_misspelled_mjml_tag_in_a_template_fails_loudly(project_dir: Path) -> None:
    (project_dir / "templates" / "sections").mkdir()
    (project_dir / "templates" / "sections" / "text.mjml.j2").write_text(
        "<mj-section><mj-colum><mj-text>{{ section.heading }}</mj-text></mj-colum></mj-section>\n",
        encoding="utf-8")
    with pytest.raises(RenderError, match=r"unknown MJML tag <mj-colum>"):
        render_issue(load_issue(FULL), open_project(project_dir))


def test_template_syntax_error_names_the_file(project_dir: Path) -> None:
    (project_dir / "templates" / "sections").mkdir()
    (project_dir / "templates" / "sections" / "news.mjml.j2").write_text(
        "<mj-section>{% if %}</mj-section>\n", encoding="utf-8")
    with pytest.raises(RenderError, match=r"news\.mjml\.j2:1: template error"):
        render_issue(load_issue(FULL), open_project(project_dir))


def test_every_packaged_template_emits_only_known_mjml_tags(project: Project) -> None:
    """Walk the MJML of every packaged template (each section partial is rendered by the
    fixture issue) and of the templates' source text: no typo like <mj-colum> survives."""
    for path in PACKAGED_TEMPLATES.rglob("*.mjml.j2"):
        assert mjml_problems(path.read_text(encoding="utf-8")) == [], path
    loaded = load_issue(FULL)
    env = environment(project)
    kinds = {s.kind for s in loaded.issue.sections}
    assert kinds == {p.name.split(".")[0] for p in (PACKAGED_TEMPLATES / "sections").glob("*.mjml.j2")}
    issue = loaded.issue
    for web in (False, True):
        source = env.get_template("base.mjml.j2").render(
            issue=issue, subject=issue.subject, preheader=issue.preheader, lang="de",
            newsletter=project.settings.newsletter, imprint=project.settings.imprint,
            theme=project.settings.theme, web=web, web_url="https://x/", archive_url="https://x/",
            subscribe_url="https://x/s", unsubscribe_url=None if web else UNSUBSCRIBE_PLACEHOLDER,
            ics_url=lambda e: "a.ics")
        tags = set(re.findall(r"<(mj[a-z-]*)", source))
        assert tags >= {"mjml", "mj-section", "mj-column", "mj-text", "mj-image", "mj-button"}
        assert mjml_problems(source) == []


@pytest.mark.parametrize(("start", "end", "expected"), [
    (date(2026, 4, 28), None, "Di., 28. April 2026"),
    (date(2026, 4, 28), date(2026, 4, 29), "28.–29. April 2026"),
    (date(2026, 4, 30), date(2026, 5, 2), "30. April – 2. Mai 2026"),
    (date(2025, 12, 30), date(2026, 1, 2), "30. Dezember 2025 – 2. Januar 2026"),
])
def test_german_date_ranges(start: date, end: date | None, expected: str) -> None:
    assert dates.date_range(start, end, "de") == expected


def test_german_times() -> None:
    assert dates.time_range(time(18, 0), None, "de") == "18:00 Uhr"
    assert dates.time_range(time(9, 30), time(17, 0), "de") == "9:30–17:00 Uhr"
    assert dates.event_when(date(2026, 4, 28), None, time(18, 0), None, "de") == (
        "Di., 28. April 2026, 18:00 Uhr")


def test_markdown_to_text_lists_links_and_breaks() -> None:
    text = markdown_to_text("Eins [zwei](https://example.org/2)  \nneue Zeile\n\n- a\n- b\n\n1. x\n2. y")
    assert text == ("Eins zwei <https://example.org/2>\nneue Zeile\n\n- a\n- b\n\n1. x\n2. y")


def test_wrap_never_breaks_a_url() -> None:
    url = "https://example.org/" + "a" * 90
    assert wrap(f"Siehe {url} dort.") == f"Siehe\n{url}\ndort."
