"""The preference centre in real headless Chromium against the real server: a reader ticks a
topic and saves it, without JavaScript; every page of the centre passes axe-core (the engine
bundled by the `axe-playwright-python` package) with 0 violations.

axe-playwright-python is in the test extra of pyproject.toml; it is imported, not skipped when
missing: an accessibility check that silently does not run is no check."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import playwright.sync_api as playwright_api
import pytest
import sqlalchemy as sa
import test_serve
from axe_playwright_python import sync_playwright as axe_playwright
from test_serve import Served, ServeFactory

from newsletter.audience.tables import memberships

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT_MS = 20_000  # generous: a slow machine must not fail these, only a broken page
pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian chromium not installed")

serve = test_serve.serve
TOPICS = ('\n[topics.news]\nverkehr = "Verkehr und Mobilität"\nbildung = "Bildung & Schule"\n'
          'kultur = "Kultur"\n')


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _local_only(route: Any) -> None:
    if urlsplit(route.request.url).hostname == "127.0.0.1":
        route.continue_()
    else:
        route.abort()


def _page(browser: Any, *, javascript: bool) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1000, "height": 900}, java_script_enabled=javascript)
    context.route("**/*", _local_only)
    context.set_default_timeout(WAIT_MS)
    yield context.new_page()
    context.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A browser with JavaScript off: the pages must work without it."""
    yield from _page(browser, javascript=False)


@pytest.fixture
def axe_page(browser: Any) -> Iterator[Any]:
    """JavaScript on, for axe-core, injected through the DevTools protocol (the page's CSP, which
    allows no script of the page, does not apply to it; with JavaScript off its promise never
    settles)."""
    yield from _page(browser, javascript=True)


@pytest.fixture
def served(project_dir: Path, serve: ServeFactory) -> Served:
    with (project_dir / "newsletter.toml").open("a", encoding="utf-8") as toml:
        toml.write(TOPICS)
    return serve()


def preference_url(served: Served, address: str, name: str | None = None) -> tuple[int, str]:
    sid, _ = served.store.add_subscriber(address, served.list_id, confirmed=True, name=name)
    return sid, f"{served.url}/p/{served.tokens.mint_preferences(served.token_id(sid))}"


def topics(served: Served, sid: int) -> Any:
    with served.store.read() as conn:
        return conn.execute(sa.select(memberships.c.topics)
                            .where(memberships.c.subscriber_id == sid)).scalar()


def test_ticking_a_topic_and_saving_it(page: Any, served: Served) -> None:
    expect = playwright_api.expect
    sid, url = preference_url(served, "anna@example.org")
    page.goto(url)
    expect(page.get_by_role("heading", level=1)).to_have_text("Ihre Newsletter-Einstellungen")
    # No choice yet: every topic is ticked. The reader wants culture only.
    for label in ("Verkehr und Mobilität", "Bildung & Schule", "Kultur"):
        expect(page.get_by_label(label)).to_be_checked()
    page.get_by_label("Verkehr und Mobilität").uncheck()
    page.get_by_label("Bildung & Schule").uncheck()
    page.get_by_role("button", name="Themen speichern").click()
    expect(page.get_by_role("status")).to_have_text("Ihre Themenauswahl ist gespeichert.")
    expect(page.get_by_label("Kultur")).to_be_checked()
    expect(page.get_by_label("Verkehr und Mobilität")).not_to_be_checked()
    assert topics(served, sid) == ["kultur"]
    # and ticks one more
    page.get_by_label("Bildung & Schule").check()
    page.get_by_role("button", name="Themen speichern").click()
    expect(page.get_by_role("status")).to_have_text("Ihre Themenauswahl ist gespeichert.")
    assert topics(served, sid) == ["bildung", "kultur"]
    assert served.store.history(sid)[-1].source == "preferences"


def violations(page: Any) -> list[str]:
    """axe-core's violations on the open page, one line each (rule, impact, the elements)."""
    results = axe_playwright.Axe().run(page)
    return [f"{v['id']} ({v['impact']}): {v['help']} — {[n['target'] for n in v['nodes']]}"
            for v in results.response["violations"]]


def test_every_page_of_the_centre_passes_axe(axe_page: Any, served: Served) -> None:
    page = axe_page
    expect = playwright_api.expect
    sid, url = preference_url(served, "bernd@example.org", name="Bernd <Müller>")
    found: dict[str, list[str]] = {}

    page.goto(url)
    found["Einstellungen"] = violations(page)
    page.get_by_label("3 Monate").check()
    page.get_by_role("button", name="Pausieren").click()
    expect(page.get_by_role("status")).to_have_text("Der Newsletter ist pausiert.")
    found["Einstellungen, pausiert, mit Meldung"] = violations(page)
    page.get_by_label("Name (freiwillig, für die Anrede)").fill("x" * 101)
    page.get_by_role("button", name="Namen speichern").click()
    expect(page.locator("#name-error")).to_contain_text("höchstens 100 Zeichen")
    found["Einstellungen, Fehler im Namen"] = violations(page)

    page.get_by_role("link", name="Ihre Daten ansehen").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Ihre gespeicherten Daten")
    found["Daten"] = violations(page)

    page.goto(url)
    page.get_by_role("link", name="Alle Daten löschen …").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Alle Daten löschen?")
    found["Löschen bestätigen"] = violations(page)
    page.get_by_role("button", name="Ja, alle Daten endgültig löschen").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Ihre Daten sind gelöscht")
    found["Gelöscht"] = violations(page)
    assert served.store.subscriber(sid) is None

    page.goto(url)  # the link of an erased person
    expect(page.get_by_role("heading", level=1)).to_have_text("Keine Daten mehr vorhanden")
    found["Link ohne Daten (410)"] = violations(page)

    print({name: len(items) for name, items in found.items()})  # the per-page count, for the report
    assert {name: items for name, items in found.items() if items} == {}
    assert len(found) == 7
