"""Golden files of the example issues, plus structural checks that do not need them.

Regenerate the golden files after an intended change of the templates:

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_render_golden.py

then review `git diff tests/golden/` before committing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import lxml.etree
import lxml.html
import pytest
from pydantic import BaseModel

from newsletter.content.markdown import parser
from newsletter.content.model import Image, Link, LinkItem, NewsItem, RegisterLink
from newsletter.content.validate import load_issue
from newsletter.project import Project
from newsletter.render.html import UNSUBSCRIBE_PLACEHOLDER, RenderedIssue, render_issue

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden"
UPDATE = bool(os.environ.get("UPDATE_GOLDEN"))
EXAMPLES = sorted((REPO / "issues").glob("*.yaml"))


def rendered(path: Path, project: Project) -> RenderedIssue:
    return render_issue(load_issue(path), project)


@pytest.mark.parametrize("issue_file", [REPO / "issues" / "2026-02.yaml"], ids=lambda p: p.stem)
@pytest.mark.parametrize("part", ["email.html", "email.txt", "index.html"])
def test_matches_golden_file(issue_file: Path, part: str, project: Project) -> None:
    result = rendered(issue_file, project)
    actual = {"email.html": result.html, "email.txt": result.text, "index.html": result.web_html}[part]
    golden = GOLDEN / f"{issue_file.stem}.{part}"
    if UPDATE:
        golden.write_text(actual, encoding="utf-8")
    assert golden.is_file(), f"no golden file {golden}; run with UPDATE_GOLDEN=1"
    assert actual == golden.read_text(encoding="utf-8"), (
        f"{part} differs from {golden.relative_to(REPO)}; if the change is intended, regenerate: "
        "UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_render_golden.py")


# ------------------------------------------------------------------ structure, no golden needed


def _walk(obj: object):
    yield obj
    if isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            yield from _walk(getattr(obj, name))
    elif isinstance(obj, list | tuple):
        for item in obj:
            yield from _walk(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _walk(item)


def _headlines(issue: BaseModel) -> set[str]:
    names = {"heading", "headline", "title", "label", "kicker", "quote", "motto", "note", "credit",
             "by", "author", "venue"}
    found = set()
    for obj in _walk(issue):
        if isinstance(obj, BaseModel):
            for name in type(obj).model_fields:
                value = getattr(obj, name)
                if name in names and isinstance(value, str):
                    found.add(value)
    return found


_MARKDOWN_FIELDS = {"body", "intro", "outro", "teaser", "lead", "caption", "text"}


def _sentences(issue: BaseModel) -> set[str]:
    """Every sentence of every Markdown text, as plain text (via the HTML of markdown-it)."""
    found = set()
    for obj in _walk(issue):
        if not isinstance(obj, BaseModel):
            continue
        for name in type(obj).model_fields:
            value = getattr(obj, name)
            if name in _MARKDOWN_FIELDS and isinstance(value, str):
                html = parser().render(value)
                root = lxml.html.fragment_fromstring(html, create_parent="div")
                for block in root.xpath(".//p|.//li"):
                    text = _squash(block.text_content())
                    found.update(s for s in re.split(r"(?<=[.?!:])\s+", text) if len(s) > 3)
    return found


def _urls(issue: BaseModel) -> set[str]:
    urls = set()
    for obj in _walk(issue):
        if isinstance(obj, Link | RegisterLink | LinkItem | NewsItem):
            urls.add(obj.url)
        elif isinstance(obj, Image) and obj.link:
            urls.add(obj.link)
        elif isinstance(obj, str):
            urls.update(re.findall(r"\]\((https?://[^)\s]+)\)", obj))
    return urls


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _text_without_link_targets(text: str) -> str:
    """The text part without `<URL>` link targets and `> ` quote markers."""
    text = re.sub(r"(?m)^\s*> ", "", text)
    return _squash(re.sub(r"\s*<(?:https?|mailto):[^>]+>", "", text))


ALL_ISSUES = [*EXAMPLES, GOLDEN / "full-issue.yaml"]


@pytest.mark.parametrize("issue_file", ALL_ISSUES, ids=lambda p: p.stem)
def test_every_headline_sentence_and_link_is_in_both_parts(issue_file: Path, project: Project) -> None:
    loaded = load_issue(issue_file)
    result = render_issue(loaded, project)
    doc = lxml.html.document_fromstring(result.html)
    html_text = _squash(doc.text_content())
    plain = _text_without_link_targets(result.text)
    plain_upper = plain.upper()
    for headline in _headlines(loaded.issue):
        assert _squash(headline) in html_text, headline
        # Section headings are upper-cased in the text part.
        assert _squash(headline) in plain or _squash(headline).upper() in plain_upper, headline
    sentences = _sentences(loaded.issue)
    assert sentences
    for sentence in sentences:
        assert sentence in html_text, sentence
        # A link whose label is its URL appears in the text part as just `<URL>`.
        assert sentence in plain or f"<{sentence}>" in result.text, sentence
    hrefs = set(doc.xpath("//a/@href"))
    for url in _urls(loaded.issue):
        assert url in hrefs, url
        assert url in result.text, url
    images = [obj for obj in _walk(loaded.issue) if isinstance(obj, Image)]
    assert {i.url for i in images} <= set(doc.xpath("//img/@src"))
    assert {i.alt for i in images} <= set(doc.xpath("//img/@alt"))
    for image in images:  # the text part describes each image
        assert _squash(f"[Bild: {image.alt}]") in plain


@pytest.mark.parametrize("issue_file", ALL_ISSUES, ids=lambda p: p.stem)
def test_html_parses_and_text_lines_fit(issue_file: Path, project: Project) -> None:
    result = rendered(issue_file, project)
    for html in (result.html, result.web_html):
        parser_ = lxml.etree.HTMLParser(recover=False)
        lxml.etree.fromstring(html.encode(), parser_)  # raises on broken markup
        assert html.startswith("<!doctype html>")
    for line in result.text.splitlines():
        if len(line) > 78:
            assert re.fullmatch(r"\s*<?(https?://|mailto:)\S+>?[.,]?", line), line
    assert UNSUBSCRIBE_PLACEHOLDER in result.text and UNSUBSCRIBE_PLACEHOLDER in result.html


def test_example_issue_stays_well_under_gmail_clipping(project: Project) -> None:
    result = rendered(REPO / "issues" / "2026-02.yaml", project)
    size = len(result.html.encode("utf-8"))
    assert size < 80_000, f"{size} bytes: Gmail clips at about 102 KB"
