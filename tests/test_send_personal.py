"""Personal fields in real sends (into the Maildir outbox, on SQLite and PostgreSQL): each
reader's greeting and attributes in both parts, escaped for HTML, never evaluated; fallbacks for
readers without a value; a field nobody on the list has stops the send before anything goes out."""

from __future__ import annotations

import mailbox
import re
from pathlib import Path

import pytest
from test_send_support import outbox_parts

from newsletter.errors import IssueInvalid
from newsletter.project import Project, open_project

pytestmark = pytest.mark.backends

CSV = """email,name,Kommune
anna@example.org,Anna Schmidt,Jena
ohne.name@example.org,,
html@example.org,<b>Jörg & Sœur</b>,Görlitz
jinja@example.org,{{ config.items() }},%%F0%% {% raw %}
"""


def _issue(project: Project, fields: str = "{{Kommune|Ihrer Kommune}}") -> Path:
    source = (project.root / "issues" / "2026-02.yaml").read_text(encoding="utf-8")
    source = source.replace("\nintro: |\n", "\ngreeting: \"Guten Tag {{name}},\"\nintro: |\n  Neues aus "
                            f"{fields}.\n\n", 1)
    path = project.root / "issues" / "personal.yaml"
    path.write_text(source, encoding="utf-8")
    return path


@pytest.fixture
def members(project_dir: Path) -> Project:
    (project_dir / "subscribers" / "people.csv").write_text(CSV, encoding="utf-8")
    project = open_project(project_dir)
    project.import_subscribers(project_dir / "subscribers" / "people.csv", "news", confirmed=True,
                               create_list=True)
    return project


def test_each_reader_gets_their_greeting_and_attributes_as_text(members: Project) -> None:
    report = members.send(_issue(members), "news")
    assert report.sent == 4
    got = outbox_parts(members)
    text, html = got["anna@example.org"]
    assert "Guten Tag Anna Schmidt," in text and "Neues aus Jena." in text
    assert "Guten Tag Anna Schmidt," in html and "Neues aus Jena." in html
    text, html = got["ohne.name@example.org"]
    assert "Liebe Leserinnen und Leser," in text and "Neues aus Ihrer Kommune." in text
    assert "Guten Tag" not in text + html and "Neues aus Ihrer Kommune." in html
    text, html = got["html@example.org"]
    assert "Guten Tag <b>Jörg & Sœur</b>," in text
    assert "Guten Tag &lt;b&gt;Jörg &amp; Sœur&lt;/b&gt;," in html and "<b>Jörg" not in html
    text, html = got["jinja@example.org"]  # data, never code: printed as it is
    assert "Guten Tag {{ config.items() }}," in text and "Neues aus %%F0%% {% raw %}." in text
    assert "Guten Tag {{ config.items() }}," in html
    for text, html in got.values():
        assert "%%GREETING%%" not in text + html and "{{name" not in text + html


def test_a_field_nobody_on_the_list_has_stops_the_send(members: Project) -> None:
    path = _issue(members, "{{Komune|Ihrer Kommune}}")
    with pytest.raises(IssueInvalid) as raised:
        members.send(path, "news")
    line = next(n for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                if "{{Komune" in text)
    assert raised.value.lines() == [
        f"{path}:{line}:13: {{{{Komune}}}}: no member of the list `news` has the attribute `Komune`; "
        "known: `Kommune` (or `name`)"]
    assert not members.outbox_dir.exists() or not list(mailbox.Maildir(members.outbox_dir, create=False))


def test_the_preview_shows_a_chosen_readers_copy(members: Project) -> None:
    from newsletter.errors import NewsletterError
    from newsletter.web.preview_snapshot import run_pipeline

    path = _issue(members)
    made_up = run_pipeline(members.root, path)
    assert "Guten Tag Erika Mustermann," in made_up.text and "Neues aus Ihrer Kommune." in made_up.text
    chosen = run_pipeline(members.root, path, "html@example.org")
    assert "Guten Tag <b>Jörg & Sœur</b>," in chosen.text and "Neues aus Görlitz." in chosen.text
    assert "Guten Tag &lt;b&gt;Jörg &amp; Sœur&lt;/b&gt;," in chosen.html
    assert not re.search(r"%%[A-Z0-9_]+%%", chosen.html + chosen.text)  # no hole left, links included
    with pytest.raises(NewsletterError, match=re.escape("--as nobody@example.org: no subscriber")):
        run_pipeline(members.root, path, "nobody@example.org")


def test_every_mail_links_to_the_readers_own_preference_page(members: Project) -> None:
    from newsletter.tokens import Tokens

    members.send(_issue(members), "news")
    tokens = Tokens.for_project(members)
    base = members.settings.newsletter.base_url
    for address, (text, html) in outbox_parts(members).items():
        links = re.findall(re.escape(base) + r"/p/([A-Za-z0-9_.\-]+)", text)
        assert len(links) == 1 and f'href="{base}/p/{links[0]}"' in html
        subscriber = members.store.find_subscriber(address)
        assert subscriber is not None and tokens.read_preferences(links[0]) == subscriber.token_id
