"""What a valid issue turns into, YAML 1.1 traps, warnings and `--strict`."""

from __future__ import annotations

from datetime import date, time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from newsletter.cli import app
from newsletter.content.model import ArticleSection, EventsSection, LinksSection, TextSection
from newsletter.content.validate import load_issue
from newsletter.errors import IssueInvalid

EVENT = """\
subject: Termine
preheader: Was ansteht
date: 10.02.2026
sections:
  - kind: events
    heading: Termine
    events:
      - title: no
        date: 2026-04-28
        end: 29.04.2026
        time: 18:00
        end_time: 20.30 Uhr
        venue: yes
        note: on
        register:
          url: https://example.org/anmeldung
"""


def write(tmp_path: Path, text: str, name: str = "2026-02.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_11_traps_keep_what_the_editor_wrote(tmp_path: Path) -> None:
    loaded = load_issue(write(tmp_path, EVENT))
    section = loaded.issue.sections[0]
    assert isinstance(section, EventsSection)
    event = section.events[0]
    assert event.title == "no"  # not False
    assert event.venue == "yes"
    assert event.note == "on"
    assert event.time == time(18, 0)  # not 1080 (sexagesimal)
    assert event.end_time == time(20, 30)
    assert event.date == date(2026, 4, 28)
    assert event.end == date(2026, 4, 29)
    assert loaded.issue.date == date(2026, 2, 10)
    assert event.registration is not None
    assert event.registration.label == "Jetzt anmelden"  # the default label


def test_slug_defaults_to_the_file_name(tmp_path: Path) -> None:
    loaded = load_issue(write(tmp_path, EVENT, "2026-02-Sonderausgabe.yaml"))
    assert loaded.issue.slug == "2026-02-sonderausgabe"
    text = EVENT.replace("sections:", "slug: kongress-2026\nsections:")
    assert load_issue(write(tmp_path, text)).issue.slug == "kongress-2026"


def test_quoted_and_numeric_looking_text_stays_text(tmp_path: Path) -> None:
    text = """\
subject: "2026"
preheader: 1.5
date: 2026-02-10
sections:
  - kind: links
    heading: 18:00
    links:
      - title: 0x1F
        url: https://example.org/a
"""
    issue = load_issue(write(tmp_path, text)).issue
    assert issue.subject == "2026"
    assert issue.preheader == "1.5"
    section = issue.sections[0]
    assert isinstance(section, LinksSection)
    assert section.heading == "18:00"
    assert section.links[0].title == "0x1F"


def test_article_blocks_keep_their_order_and_kind(tmp_path: Path) -> None:
    text = """\
subject: Bericht
preheader: Vom Kongress
date: 2025-11-27
sections:
  - kind: article
    heading: Jena in Kiel
    blocks:
      - heading: Auftakt
      - text: Erster **Absatz**.
      - quote: Richten Sie Ihren Blick auf die Zeit danach.
        by: Renate Mitterhuber
      - image:
          url: https://example.org/a.jpg
          alt: Renate Mitterhuber steht am Rednerpult.
          credit: ©Stadt Jena
          width: 1200
          height: 800
"""
    section = load_issue(write(tmp_path, text)).issue.sections[0]
    assert isinstance(section, ArticleSection)
    assert [type(b).__name__ for b in section.blocks] == [
        "HeadingBlock", "TextBlock", "QuoteBlock", "ImageBlock"]
    assert section.blocks[3].image.credit == "©Stadt Jena"  # type: ignore[union-attr]
    assert section.blocks[3].image.width == 1200  # type: ignore[union-attr]


def test_markdown_problem_in_a_folded_text_points_at_the_value(tmp_path: Path) -> None:
    # `>` folds lines, so no line inside it is exact: the value itself is named.
    text = """\
subject: Test
preheader: Vorschau
date: 2026-02-10
sections:
  - kind: text
    heading: Hallo
    body: >
      Erster Satz
      mit <i>HTML</i>.
"""
    with pytest.raises(IssueInvalid) as caught:
        load_issue(write(tmp_path, text))
    [problem] = caught.value.problems
    assert (problem.line, problem.column, problem.path) == (7, 11, "sections[0].body")


LONG_SUBJECT = "Smart zu wissen: Neue Wahlmodule, Peer-Learnings, Regionalkonferenz und Kongress 2026"


def long_subject_issue() -> str:
    return f"""\
subject: "{LONG_SUBJECT}"
preheader: Vorschau
date: 2026-02-10
sections:
  - kind: text
    heading: Hallo
    body: Text
"""


def test_long_subject_is_a_warning_and_strict_makes_it_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, long_subject_issue())
    assert len(LONG_SUBJECT) > 78
    runner = CliRunner()
    message = (f"subject: the subject has {len(LONG_SUBJECT)} characters; mail clients cut it "
               "off after about 78")

    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0
    assert result.stderr.splitlines() == [f"{path}:1:10: warning: {message}"]
    assert result.stdout.startswith(f"{path}: ok")

    result = runner.invoke(app, ["validate", "--strict", str(path)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"{path}:1:10: {message}"]
    assert "ok" not in result.stdout


def test_missing_preheader_and_image_size_are_warnings(tmp_path: Path) -> None:
    text = """\
subject: Test
date: 2026-02-10
sections:
  - kind: article
    heading: Bericht
    image:
      url: https://example.org/a.jpg
      alt: Ein Foto vom Kongress
"""
    loaded = load_issue(write(tmp_path, text))
    assert [(w.line, w.column, w.path, w.severity) for w in loaded.warnings] == [
        (1, 10, "subject", "warning"),
        (7, 12, "sections[0].image.url", "warning"),
    ]
    assert "preheader" in loaded.warnings[0].message


def test_several_files_one_good_one_bad(tmp_path: Path) -> None:
    good = write(tmp_path, EVENT, "good.yaml")
    bad = write(tmp_path, EVENT.replace("date: 2026-04-28", "date: 2026-04-31"), "bad.yaml")
    result = CliRunner().invoke(app, ["validate", str(bad), str(good)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"{bad}:9:15: sections[0].events[0].date: `2026-04-31` is not a valid date (no such day)"
    ]
    assert result.stdout.splitlines()[0].startswith(f"{good}: ok — “Termine”, 10.02.2026")


def test_two_bad_files_are_both_reported(tmp_path: Path) -> None:
    first = write(tmp_path, "", "first.yaml")
    second = write(tmp_path, EVENT.replace("title: no", "titel: no"), "second.yaml")
    result = CliRunner().invoke(app, ["validate", str(first), str(second)])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{first}:1:1: the file is empty")
    assert lines[1] == (f"{second}:8:9: sections[0].events[0].titel: unknown key `titel`, "
                        "did you mean `title`?")
    assert len(lines) == 2


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"{tmp_path / 'nope.yaml'}: cannot read file: No such file or directory"


def test_text_section_body_keeps_markdown_source(tmp_path: Path) -> None:
    text = """\
subject: Test
preheader: Vorschau
date: 2026-02-10
sections:
  - kind: text
    heading: Hallo
    body: |
      Ein Absatz mit **fett**, *kursiv* und [Link](https://example.org/).

      - Punkt eins
      - Punkt zwei
"""
    section = load_issue(write(tmp_path, text)).issue.sections[0]
    assert isinstance(section, TextSection)
    assert section.body.startswith("Ein Absatz mit **fett**")
    assert section.body.endswith("- Punkt zwei")
