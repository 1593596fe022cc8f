"""Personal fields and the greeting: what `validate` says, what the render leaves as holes in
the mail (and fills with fallbacks on the public web version and in .ics files), and what each
reader's values are — names with HTML, umlauts, or that look like placeholders or Jinja."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from newsletter.cli import app
from newsletter.content.fields import GREETING_PLACEHOLDER, FieldRef, Greeting
from newsletter.project import Project
from newsletter.render.personal import values_for

ISSUE = """\
subject: Smart zu wissen
date: 2026-02-10
greeting: "Guten Tag {{name}},"
intro: |
  Neues aus {{Kommune|Ihrer Kommune}}.

  Und für **{{Rolle|alle}}** etwas.
sections:
  - kind: events
    heading: Termine
    events:
      - title: Stammtisch
        date: 2026-03-01
        body: Treffpunkt in {{Kommune|Ihrer Kommune}}.
"""


def write(project: Project, text: str, name: str = "personal.yaml") -> Path:
    path = project.root / "issues" / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_the_mail_has_holes_and_the_public_versions_the_fallbacks(project: Project) -> None:
    rendered = project.issue(write(project, ISSUE)).rendered
    assert rendered.fields == (FieldRef("Kommune", "Ihrer Kommune"), FieldRef("Rolle", "alle"))
    assert rendered.greeting == Greeting("Guten Tag {{name}},")
    for part in (rendered.html, rendered.text):
        assert GREETING_PLACEHOLDER in part and "%%F0%%" in part and "%%F1%%" in part
        assert "{{" not in part and "Ihrer Kommune" not in part
    assert "<strong>%%F1%%</strong>" in rendered.html
    # Public: the archive page and the calendar files carry nobody's data.
    assert "Liebe Leserinnen und Leser," in rendered.web_html
    assert "Neues aus Ihrer Kommune." in rendered.web_html
    assert "%%" not in rendered.web_html and "{{" not in rendered.web_html
    ics = "".join(rendered.ics.values())
    assert "Treffpunkt in Ihrer Kommune." in ics and "%%" not in ics


@pytest.mark.parametrize(("name", "attributes", "greeting", "kommune"), [
    ("Anna Schmidt", {"Kommune": "Jena"}, "Guten Tag Anna Schmidt,", "Jena"),
    (None, {}, "Liebe Leserinnen und Leser,", "Ihrer Kommune"),
    ("   ", {"Kommune": "  "}, "Liebe Leserinnen und Leser,", "Ihrer Kommune"),
    ("<b>Jörg & Sœur</b>", {"Kommune": "Görlitz"}, "Guten Tag <b>Jörg & Sœur</b>,", "Görlitz"),
    ("{{ config.items() }}", {"Kommune": "%%F1%%"}, "Guten Tag {{ config.items() }},", "%%F1%%"),
])
def test_values_per_reader_are_plain_text_never_evaluated(name: str | None, attributes: dict[str, str],
                                                         greeting: str, kommune: str) -> None:
    fields = (FieldRef("Kommune", "Ihrer Kommune"), FieldRef("Rolle", "alle"))
    values, line = values_for(fields, Greeting("Guten Tag {{name}},"), name, attributes)
    assert line == greeting
    assert values == [kommune, "alle"]


def test_a_greeting_with_its_own_fallback_line(project: Project) -> None:
    path = write(project, ISSUE.replace('greeting: "Guten Tag {{name}},"',
                                        'greeting:\n  text: "Hallo {{name}} aus {{Kommune}},"\n'
                                        '  fallback: "Hallo zusammen,"'))
    greeting = project.issue(path).rendered.greeting
    assert greeting is not None
    assert values_for((), greeting, "Kai", {"Kommune": "Jena"})[1] == "Hallo Kai aus Jena,"
    assert values_for((), greeting, "Kai", {})[1] == "Hallo zusammen,"  # one value missing


@pytest.mark.parametrize(("change", "expected"), [
    (("{{Kommune|Ihrer Kommune}}", "{{Kommune}}"),
     "personal.yaml:5:3: intro: `{{Kommune}}` needs a text for readers without a value: "
     "{{Kommune|…}} (or {{Kommune|}} for none)"),
    (("{{Kommune|Ihrer Kommune}}", "{{|Ihrer Kommune}}"),
     "personal.yaml:5:3: intro: a personal field needs a name: {{name|Leserin, Leser}} or "
     "{{Kommune|Ihre Kommune}}"),
    (("{{Kommune|Ihrer Kommune}}.", "{{Kommune|Ihrer Kommune}."),
     "personal.yaml:5:3: intro: unmatched `{{` or `}}`: a personal field is written "
     "{{Kommune|Ihre Kommune}}"),
    (("subject: Smart zu wissen", "subject: Hallo {{name|du}}"),
     "personal.yaml:1:10: subject: personal fields ({{…}}) can be used in texts (intro, outro, "
     "bodies) and the greeting, not here"),
    (("title: Stammtisch", "title: Stammtisch in {{Kommune|x}}"),
     "personal.yaml:12:16: sections[0].events[0].title: personal fields ({{…}}) can be used in "
     "texts (intro, outro, bodies) and the greeting, not here"),
    (("Und für **{{Rolle|alle}}** etwas.", "[Mehr](https://example.org/{{Kommune|x}})"),
     "personal.yaml:7:3: intro: personal fields ({{…}}) cannot be used in link targets (use "
     "paragraphs, **bold**, *italics*, [links](https://…) and bullet lists)"),
])
def test_validate_points_at_a_bad_field(project: Project, change: tuple[str, str], expected: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(project, ISSUE.replace(*change))
    monkeypatch.chdir(path.parent)
    result = CliRunner().invoke(app, ["validate", path.name])
    assert result.exit_code == 1
    assert expected in result.stderr.splitlines(), result.stderr
    assert "Traceback" not in result.stderr
