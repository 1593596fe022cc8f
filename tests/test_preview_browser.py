"""`newsletter preview` end to end: the real server on 127.0.0.1, real headless Chromium.

The tests edit the issue, a template and newsletter.toml on disk the way an editor
would, and wait (generously, no timing assertions) for the open page to follow.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, FrameLocator, Locator, Page, Route, expect, sync_playwright

from newsletter.content.validate import load_issue
from newsletter.delivery.message import Recipient, mime_message, prepare
from newsletter.delivery.transport import MaildirTransport, send_message_now, transport_for
from newsletter.errors import NewsletterError
from newsletter.project import Project, open_project
from newsletter.render.check import check_issue
from newsletter.render.html import PREFERENCES_PLACEHOLDER, UNSUBSCRIBE_PLACEHOLDER, render_issue
from newsletter.tokens import Tokens, preferences_url
from newsletter.web.preview import create_preview_app, serve_in_background

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT_MS = 20_000  # generous: a slow CI machine must not fail these, only a broken preview
HEADLINE = "Jetzt anmelden zum 8. MPSC-Kongress in Berlin"  # first item of the example issue

expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _local_only(route: Route) -> None:
    # Images of the example issue live on example.org: never wait for the internet.
    url = route.request.url
    if urlsplit(url).hostname == "127.0.0.1" or url.startswith(("data:", "about:")):
        route.continue_()
    else:
        route.abort()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.route("**/*", _local_only)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    yield page
    context.close()


@dataclass
class Preview:
    url: str
    project: Project
    issue: Path


@pytest.fixture
def preview(project_dir: Path) -> Iterator[Preview]:
    project = open_project(project_dir)
    issue = project_dir / "issues" / "2026-02.yaml"
    assert f"title: {HEADLINE}" in issue.read_text(encoding="utf-8"), "the example issue changed"
    with serve_in_background(create_preview_app(project, issue)) as url:
        yield Preview(url, project, issue)


def email(page: Page) -> FrameLocator:
    return page.frame_locator("#email")


def headline(page: Page, text: str = HEADLINE) -> Locator:
    return email(page).get_by_role("heading", name=text)


def frame_width(page: Page) -> float:
    return float(page.locator("#email").evaluate("el => el.getBoundingClientRect().width"))


def sample_unsubscribe_url(project: Project) -> str:
    token = Tokens.for_project(project).mint_unsubscribe("preview-sample", 1)  # preview._sample_token
    return f"{project.settings.newsletter.base_url}/u/{token}"


def test_page_shows_the_headline_and_switches_to_phone_width(page: Page, preview: Preview) -> None:
    page.goto(preview.url)
    expect(headline(page)).to_be_visible()
    desktop = frame_width(page)
    assert 780 <= desktop <= 820

    page.get_by_role("tab", name="Phone").click()
    page.wait_for_function("document.getElementById('email').getBoundingClientRect().width === 375")
    expect(headline(page)).to_be_visible()
    assert frame_width(page) == 375


def test_saving_the_yaml_updates_the_open_page_keeping_view_and_scroll(page: Page, preview: Preview) -> None:
    page.goto(preview.url)
    expect(headline(page)).to_be_visible()
    page.get_by_role("tab", name="Phone").click()
    page.evaluate("window.notReloaded = true")
    page.locator("#email").evaluate("f => f.contentWindow.scrollTo(0, 600)")
    scrolled = page.locator("#email").evaluate("f => f.contentWindow.scrollY")
    assert scrolled > 0

    source = preview.issue.read_text(encoding="utf-8")
    preview.issue.write_text(source.replace(HEADLINE, "Kongress verschoben auf den Mai"), encoding="utf-8")

    expect(headline(page, "Kongress verschoben auf den Mai")).to_be_visible()
    expect(headline(page)).to_have_count(0)
    assert page.evaluate("window.notReloaded") is True  # content swapped in place, no page reload
    expect(page.get_by_role("tab", name="Phone")).to_have_attribute("aria-selected", "true")
    assert frame_width(page) == 375
    assert page.locator("#email").evaluate("f => f.contentWindow.scrollY") == scrolled


def test_broken_yaml_shows_validate_messages_then_recovers_where_it_was(page: Page, preview: Preview) -> None:
    page.goto(preview.url)
    expect(headline(page)).to_be_visible()
    page.locator("#email").evaluate("f => f.contentWindow.scrollTo(0, 900)")
    scrolled = page.locator("#email").evaluate("f => f.contentWindow.scrollY")
    assert scrolled > 0
    good = preview.issue.read_text(encoding="utf-8")

    broken = re.sub(r"^date: .*$", "date: 2026-02-31\nsubjekt: typo", good, count=1, flags=re.M)
    assert broken != good
    preview.issue.write_text(broken, encoding="utf-8")
    with pytest.raises(NewsletterError) as invalid:
        load_issue(preview.issue)
    expected = invalid.value.lines()  # exactly what `newsletter validate` prints

    errors = page.locator("#error-lines")
    expect(errors).to_be_visible()
    expect(errors).to_have_text("\n".join(expected))
    expect(errors).to_contain_text(re.compile(rf"{re.escape(str(preview.issue))}:\d+:\d+: "))
    expect(page.locator("#email")).to_be_hidden()

    # Fixed the way many editors save: write a temporary file, rename it over the original.
    temporary = preview.issue.with_name(".2026-02.yaml.swp")
    temporary.write_text(good, encoding="utf-8")
    os.replace(temporary, preview.issue)
    expect(page.locator("#errors")).to_be_hidden()
    expect(headline(page)).to_be_visible()
    assert page.locator("#email").evaluate("f => f.contentWindow.scrollY") == scrolled


def test_plain_text_view_shows_exactly_the_text_part(page: Page, preview: Preview) -> None:
    rendered = render_issue(load_issue(preview.issue), preview.project)
    base = preview.project.settings.newsletter.base_url
    # The text part of the sample reader's message: its last line break belongs to the MIME
    # boundary that follows it.
    expected = rendered.text.replace(UNSUBSCRIBE_PLACEHOLDER, sample_unsubscribe_url(preview.project)) \
        .replace(PREFERENCES_PLACEHOLDER, preferences_url(base, "test")).removesuffix("\n")

    page.goto(preview.url)
    page.get_by_role("tab", name="Plain text").click()
    text = page.locator("#text")
    expect(text).to_be_visible()
    expect(text).to_contain_text(HEADLINE)
    expect(page.locator("#email")).to_be_hidden()
    assert text.text_content() == expected
    assert "monospace" in text.evaluate("el => getComputedStyle(el).fontFamily").lower() or \
        "mono" in text.evaluate("el => getComputedStyle(el).fontFamily").lower()


def test_headers_view_shows_subject_sender_and_one_click_unsubscribe(page: Page, preview: Preview) -> None:
    settings = preview.project.settings.newsletter
    page.goto(preview.url + "#headers")
    rows = page.locator("#header-rows")
    expect(rows).to_be_visible()
    subject = load_issue(preview.issue).issue.subject
    expect(rows.locator("tr", has_text="Subject")).to_contain_text(subject)
    expect(rows.locator("tr", has_text="From")).to_contain_text(settings.from_.split("<")[1].rstrip(">"))
    unsubscribe = rows.locator("tr").filter(has=page.locator("th", has_text=re.compile("^List-Unsubscribe$")))
    expect(unsubscribe).to_contain_text(f"<{sample_unsubscribe_url(preview.project)}>")
    expect(rows).to_contain_text("List-Unsubscribe=One-Click")
    expect(page.locator("#preheader")).to_have_text(load_issue(preview.issue).issue.preheader or "")


def test_template_and_config_errors_show_in_place_and_recover(page: Page, preview: Preview) -> None:
    page.goto(preview.url)
    expect(headline(page)).to_be_visible()

    toml = preview.project.root / "newsletter.toml"
    good_toml = toml.read_text(encoding="utf-8")
    toml.write_text(re.sub(r"^title = ", "titel = ", good_toml, count=1, flags=re.M), encoding="utf-8")
    expect(page.locator("#error-lines")).to_contain_text(re.compile(
        r"newsletter\.toml:\d+:\d+: newsletter\.titel: unknown key `titel`, did you mean `title`\?"))
    toml.write_text(good_toml, encoding="utf-8")
    expect(page.locator("#errors")).to_be_hidden()
    expect(headline(page)).to_be_visible()

    broken = preview.project.templates_dir / "base.mjml.j2"
    broken.write_text('{% extends "default:base.mjml.j2" %}\n{% block nonsense %}\n{{ oops( }}\n',
                      encoding="utf-8")
    expect(page.locator("#error-lines")).to_contain_text(re.compile(r"base\.mjml\.j2:\d+"))
    broken.unlink()
    expect(page.locator("#errors")).to_be_hidden()
    expect(headline(page)).to_be_visible()


def test_check_findings_appear_in_the_side_panel(page: Page, preview: Preview) -> None:
    page.goto(preview.url)
    expect(headline(page)).to_be_visible()
    good = preview.issue.read_text(encoding="utf-8")
    long_subject = "Smart zu wissen: " + "sehr " * 20 + "lange Betreffzeile"
    changed = re.sub(r"^subject: .*$", f'subject: "{long_subject}"', good, count=1, flags=re.M)
    changed = re.sub(r"^(\s*- label:) .*$", r"\1 hier klicken", changed, count=1, flags=re.M)
    preview.issue.write_text(changed, encoding="utf-8")

    loaded = load_issue(preview.issue)
    findings = [p.format() for p in check_issue(loaded, preview.project).warnings]
    assert any("Betreff" in f or "subject" in f for f in findings), findings
    assert any("`hier klicken`" in f for f in findings), findings
    for finding in findings:  # exactly what `newsletter check` reports, with FILE:LINE:COL
        expect(page.locator("#checks li.warning", has_text=finding)).to_have_count(1)
    expect(page.locator("#checks")).to_contain_text(re.compile(rf"{re.escape(str(preview.issue))}:\d+:\d+: "))
    expect(headline(page)).to_be_visible()  # findings do not block the email


def deliver_to_outbox(project: Project, to: str) -> None:
    """A real test send of the issue through the project's transport: with no SMTP host
    configured that is the Maildir outbox, exactly where `newsletter send` puts it."""
    assert isinstance(transport_for(project), MaildirTransport)
    rendered = render_issue(load_issue(project.issues_dir / "2026-02.yaml"), project)
    prepared = prepare(project, rendered, subject_prefix="[TEST] ", sign=False)
    send_message_now(project, mime_message(prepared.personalise(Recipient(to), "sample-token")))


def test_outbox_lists_messages_and_shows_both_parts(page: Page, preview: Preview) -> None:
    page.goto(preview.url + "outbox")
    expect(page.get_by_text("The outbox is empty")).to_be_visible()

    deliver_to_outbox(preview.project, "leser@example.org")
    # The open outbox page follows new mail by itself.
    row = page.locator("table.messages tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("leser@example.org")
    expect(row).to_contain_text("[TEST] " + load_issue(preview.issue).issue.subject)

    row.get_by_role("link").click()
    expect(page.locator(".message-headers")).to_contain_text("leser@example.org")
    expect(page.frame_locator("iframe.part-html").get_by_role("heading", name=HEADLINE)).to_be_visible()
    expect(page.locator("pre.part-text")).to_contain_text(HEADLINE)
    expect(page.locator("pre.part-text")).to_contain_text("/u/sample-token")
