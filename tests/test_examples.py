"""The example issues validate and carry the seed texts faithfully."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from newsletter.cli import app
from newsletter.content.markdown import parse
from newsletter.content.model import ArticleSection, DigestSection, Image, Issue, NewsSection
from newsletter.content.validate import load_issue

REPO = Path(__file__).resolve().parent.parent
SEEDS = Path(__file__).resolve().parent / "seeds"  # the example texts of the product brief
EXAMPLE = REPO / "issues" / "2026-02.yaml"
REPORTS = REPO / "issues" / "2025-11-kongressberichte.yaml"
MONTHS = ["Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August", "September",
          "Oktober", "November", "Dezember"]

needs_seeds = pytest.mark.skipif(not SEEDS.is_dir(), reason="seed texts are not checked out here")


def seed(number: str) -> list[str]:
    """The seed's non-empty lines, whitespace collapsed (and 002's table borders `|` cut)."""
    [path] = SEEDS.glob(f"{number}_*.txt")
    lines = (norm(line).strip("|").strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def norm(text: str) -> str:
    return " ".join(text.split())


def strings(obj: Any) -> list[str]:
    """Every text value in an issue (headings, bodies, labels, alt texts, credits …)."""
    if isinstance(obj, BaseModel):
        return [s for name in type(obj).model_fields for s in strings(getattr(obj, name))]
    if isinstance(obj, dict):
        return [s for key, value in obj.items() for s in (key, *strings(value))]
    if isinstance(obj, list):
        return [s for item in obj for s in strings(item)]
    return [obj] if isinstance(obj, str) else []


def plain(markdown: str) -> str:
    """What a reader sees of a Markdown text: its words without the markup."""
    words = []
    for token in parse(markdown):
        for child in token.children or []:
            words.append(" " if child.type in ("softbreak", "hardbreak") else child.content)
        words.append(" ")
    return norm("".join(words))


def readable(issue: Issue) -> str:
    return "\n".join(norm(s) + "\n" + plain(s) for s in strings(issue))


def links_texts(issue: Issue) -> list[str]:
    """Labels of calls to action, titles of link-list entries and Markdown link texts."""
    found: list[str] = []

    def visit(obj: Any) -> None:
        if isinstance(obj, BaseModel):
            name = type(obj).__name__
            if name in ("Link", "RegisterLink"):
                found.append(norm(obj.label))  # type: ignore[attr-defined]
            elif name == "LinkItem":
                found.append(norm(obj.title))  # type: ignore[attr-defined]
            for field in type(obj).model_fields:
                visit(getattr(obj, field))
        elif isinstance(obj, list):
            for item in obj:
                visit(item)
        elif isinstance(obj, str):
            tokens = [c for t in parse(obj) for c in t.children or []]
            for i, token in enumerate(tokens):
                if token.type == "link_open":
                    found.append(tokens[i + 1].content)

    visit(issue)
    return found


def german_date(text: str) -> date:
    day, month, year = re.fullmatch(r"(\d+)\. (\w+) (\d{4})", text).groups()  # type: ignore[union-attr]
    return date(int(year), MONTHS.index(month) + 1, int(day))


# ---------------------------------------------------------------------------- validity


def test_examples_validate_without_warnings() -> None:
    for path in (EXAMPLE, REPORTS):
        loaded = load_issue(path, strict=True)
        assert loaded.warnings == []


def test_validate_command_accepts_all_examples() -> None:
    files = sorted(str(p) for p in (REPO / "issues").glob("*.yaml"))
    assert len(files) >= 2
    result = CliRunner().invoke(app, ["validate", "--strict", *files])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert len(result.stdout.splitlines()) == len(files)


def test_skeleton_example_is_identical_to_the_repository_example() -> None:
    skeleton = REPO / "newsletter" / "skeleton" / "issues" / "2026-02.yaml"
    assert skeleton.read_bytes() == EXAMPLE.read_bytes(), (
        "newsletter/skeleton/issues/2026-02.yaml must be a copy of issues/2026-02.yaml")


# ---------------------------------------------------------------------------- seed 002


def seed_002() -> tuple[list[str], list[str], list[str], list[str], list[str]]:
    """Seed 002 split into headlines, sub-entry titles, `→` link texts, dated facts
    and running text."""
    headlines, entries, arrows, facts, text = [], [], [], [], []
    for line in seed("002"):
        if line.startswith("→"):
            arrows.append(line.removeprefix("→").strip())
        elif line.startswith("Start:"):
            facts.append(line)
        elif line.startswith("- "):
            entries.append(line.removeprefix("- "))
        elif len(line) <= 100 and not line.endswith((".", ":")):
            headlines.append(line)
        else:
            text.append(line)
    return headlines, entries, arrows, facts, text


@needs_seeds
def test_seed_002_is_split_as_expected() -> None:
    headlines, entries, arrows, facts, _ = seed_002()
    assert headlines[0] == "Smart zu wissen"
    assert headlines[-1] == "Smart City Blog: Neue Perspektiven aus kommunaler Praxis und Wissenschaft"
    assert len(headlines) == 10
    assert len(entries) == 2
    assert len(arrows) == 13
    assert len(facts) == 2


@needs_seeds
def test_every_headline_of_seed_002_is_a_heading_of_the_example() -> None:
    issue = load_issue(EXAMPLE).issue
    headings = {norm(h) for s in issue.sections for h in _headings(s)}
    headlines, entries, _, _, _ = seed_002()
    missing = [h for h in headlines + entries if h not in headings]
    assert missing == []


def _headings(section: Any) -> list[str]:
    found = [section.heading]
    for item in getattr(section, "items", []):
        found += [h for h in (getattr(item, "headline", None), getattr(item, "title", None)) if h]
        found += [e.title for e in getattr(item, "entries", [])]
    found += [link.title for link in getattr(section, "links", [])]
    return found


@needs_seeds
def test_every_arrow_link_text_of_seed_002_is_a_link_in_the_example() -> None:
    issue = load_issue(EXAMPLE).issue
    texts = links_texts(issue)
    everything = readable(issue)
    _, _, arrows, _, _ = seed_002()
    for arrow in arrows:
        # The chatbot item's whole paragraph starts with its link ("→ SmartCitiesWorld.net hat …").
        assert arrow in texts or any(arrow.startswith(t + " ") for t in texts), arrow
        assert arrow in everything, arrow


@needs_seeds
def test_dated_sub_entries_of_seed_002_keep_date_and_partner() -> None:
    issue = load_issue(EXAMPLE).issue
    entries = [e for s in issue.sections if isinstance(s, DigestSection)
               for item in s.items for e in item.entries]
    _, _, _, facts, _ = seed_002()
    for line in facts:
        start, partner = re.fullmatch(r"Start: (.+) \| Partner: (.+)", line).groups()  # type: ignore[union-attr]
        assert any(e.date == german_date(start) and e.date_label == "Start"
                   and e.facts == {"Partner": partner} for e in entries), line


@needs_seeds
def test_all_running_text_of_seed_002_is_in_the_example() -> None:
    everything = readable(load_issue(EXAMPLE).issue)
    _, _, _, _, text = seed_002()
    assert [line for line in text if line not in everything] == []


# ---------------------------------------------------------------------------- seeds 000, 003


def unquote(line: str) -> str:
    return line.removeprefix("•").strip().strip("()").strip("„“\"")


@needs_seeds
def test_event_of_seed_000_is_in_the_example() -> None:
    issue = load_issue(EXAMPLE).issue
    everything = readable(issue)
    lines = seed("000")
    alt, credit = lines[0], lines[1]
    assert any(i.alt == alt and i.credit == credit for i in _images(issue))
    assert "10.02.2026" in lines and issue.date == date(2026, 2, 10)
    skipped = {alt, credit, "10.02.2026", "Main content"}  # "Main content" is web-page debris
    assert [x for x in lines if x not in skipped and unquote(x) not in everything] == []


@needs_seeds
def test_dated_news_of_seed_003_are_in_the_example() -> None:
    issue = load_issue(EXAMPLE).issue
    news = [n for s in issue.sections if isinstance(s, NewsSection) for n in s.items]
    lines = seed("003")
    dated = [(lines[i - 1], line) for i, line in enumerate(lines) if line.startswith("[")]
    assert len(dated) == 15
    assert len(news) == len(dated)
    for (title, line), item in zip(dated, news, strict=True):
        day, teaser = re.fullmatch(r"\[(\d\d\.\d\d\.\d{4})\] (.+) mehr\.\.\.", line).groups()  # type: ignore[union-attr]
        assert item.title == title
        assert item.date.strftime("%d.%m.%Y") == day
        assert norm(item.teaser or "") == teaser


@needs_seeds
def test_regional_conference_of_seed_003_is_in_the_example() -> None:
    everything = readable(load_issue(EXAMPLE).issue)
    lines = seed("003")
    first_news = next(i for i, line in enumerate(lines) if line.startswith("[")) - 1
    assert lines[0] == "Regionalkonferenz MPSCSmart sein"  # two headings run together in the seed
    assert "Regionalkonferenz MPSC – Smart sein" in everything
    assert [x for x in lines[1:first_news] if unquote(x) not in everything] == []


# ---------------------------------------------------------------------------- seeds 001, 004


def _images(issue: Issue) -> list[Image]:
    found: list[Image] = []

    def visit(obj: Any) -> None:
        if isinstance(obj, Image):
            found.append(obj)
        elif isinstance(obj, BaseModel):
            for field in type(obj).model_fields:
                visit(getattr(obj, field))
        elif isinstance(obj, list):
            for item in obj:
                visit(item)

    visit(issue)
    return found


@needs_seeds
@pytest.mark.parametrize("number", ["001", "004"])
def test_conference_report_is_in_the_second_example(number: str) -> None:
    issue = load_issue(REPORTS).issue
    everything = readable(issue)
    lines = seed(number)
    files = [x for x in lines if re.fullmatch(r"\w+\.jpg", x)]
    for name in files:  # the seed names some photos only by file name
        assert any(i.url.endswith("/" + name) for i in _images(issue)), name
    rest = [x for x in lines if x != "Bild" and x not in files]
    assert [x for x in rest if unquote(x) not in everything] == []
    assert any(s.heading == lines[0] for s in issue.sections if isinstance(s, ArticleSection))


@needs_seeds
def test_captions_and_credits_of_the_reports_stay_together() -> None:
    images = _images(load_issue(REPORTS).issue)
    lines = seed("004")
    # In seed 004 each photo is "Bild", alt text, caption, credit.
    for i, line in enumerate(lines):
        if line == "Bild":
            alt, caption, credit = lines[i + 1 : i + 4]
            assert any(norm(im.alt) == alt and norm(im.caption or "") == caption
                       and im.credit == credit for im in images), alt
    kiel = [im for im in images if im.credit == "Eventfotografie Kiel Mona Taube"]
    assert len(kiel) == 1 and kiel[0].caption
    assert sum(im.credit == "©Stadt Jena" for im in images) == 4
    assert all(im.width and im.height for im in images)
    assert all(im.url.startswith("https://example.org/") for im in images)


def test_second_example_has_two_articles_with_all_block_kinds() -> None:
    issue = load_issue(REPORTS).issue
    articles = [s for s in issue.sections if isinstance(s, ArticleSection)]
    assert len(articles) == 2
    kinds = {type(b).__name__ for a in articles for b in a.blocks}
    assert kinds == {"TextBlock", "HeadingBlock", "QuoteBlock", "ImageBlock"}
    assert all(a.gallery for a in articles)
