"""The email HTML in real headless Chromium: nothing overflows a 375 px phone screen,
the image-beside-text event block stacks there, and sits side by side at 600 px."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from newsletter.content.validate import load_issue
from newsletter.project import Project
from newsletter.render.html import render_issue

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian chromium not installed")
REPO = Path(__file__).resolve().parent.parent
ISSUES = [REPO / "issues" / "2026-02.yaml", REPO / "tests" / "golden" / "full-issue.yaml"]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield browser
        browser.close()


def open_page(browser, html_file: Path, width: int):  # type: ignore[no-untyped-def]
    page = browser.new_page(viewport={"width": width, "height": 800})
    # Image URLs point at example.org: nothing may leave the machine.
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
               else route.abort())
    page.goto(html_file.as_uri())
    return page


BOXES = """() => [...document.querySelectorAll('.event-facts')].map(el => {
    const facts = el.getBoundingClientRect();
    const image = el.previousElementSibling.getBoundingClientRect();
    return {imageLeft: image.left, imageBottom: image.bottom, factsLeft: facts.left,
            factsTop: facts.top, factsWidth: facts.width};
})"""


@pytest.mark.parametrize("issue_file", ISSUES, ids=lambda p: p.stem)
def test_phone_width_has_no_overflow_and_columns_stack(
        browser, issue_file: Path, project: Project, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    html_file = tmp_path / "email.html"
    html_file.write_text(render_issue(load_issue(issue_file), project).html, encoding="utf-8")

    phone = open_page(browser, html_file, 375)
    assert phone.evaluate("document.documentElement.scrollWidth") <= 375
    boxes = phone.evaluate(BOXES)
    assert boxes, "the issue has an event with an image beside its facts"
    for box in boxes:  # stacked: the facts start below the image, at the left edge
        assert box["factsTop"] >= box["imageBottom"] - 1
        assert box["factsLeft"] == pytest.approx(box["imageLeft"], abs=1)
        assert box["factsWidth"] == pytest.approx(375, abs=1)
    images = phone.evaluate("""() => [...document.images].map(i => [
        +i.getAttribute('width'), +i.getAttribute('height'),
        i.getBoundingClientRect().width, i.getBoundingClientRect().height])""")
    for width, height, shown_width, shown_height in images:  # shrunk, but not distorted
        assert shown_width <= 375 - 2 * 12
        assert shown_height / shown_width == pytest.approx(height / width, rel=0.02)
    container = phone.evaluate("document.querySelector('div[style*=\"max-width:600px\"]')"
                               ".getBoundingClientRect().width")
    assert container == pytest.approx(375, abs=1)
    phone.close()

    desktop = open_page(browser, html_file, 600)
    assert desktop.evaluate("document.documentElement.scrollWidth") <= 600
    for box in desktop.evaluate(BOXES):  # side by side: facts right of the image, same top row
        assert box["factsLeft"] > box["imageLeft"] + 200
        assert box["factsTop"] < box["imageBottom"]
    desktop.close()
