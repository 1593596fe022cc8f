"""The one template environment (newsletter.render.templates) and the shortcuts that make
rendering fast: cached environment, shared Markdown, premailer's parsed stylesheet, the
one-line path of `wrap`. Each shortcut must give exactly what the slow way gives."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import lxml.html

from newsletter.content.validate import load_issue
from newsletter.project import Project, open_project
from newsletter.render.html import render_issue
from newsletter.render.templates import PACKAGED_TEMPLATES, autoescape, base_context, environment, render
from newsletter.render.text import wrap

FULL = Path(__file__).parent / "golden" / "full-issue.yaml"


def test_packaged_names_are_the_override_names() -> None:
    for name in ("base.mjml.j2", "email.txt.j2", "inline.css.j2", "macros.mjml.j2", "archive.html.j2",
                 "feed.xml.j2", "sections/digest.mjml.j2", "sections/digest.txt.j2", "web/base.html",
                 "web/subscribe.html", "confirm/mail.txt", "confirm/mail.html", "confirm/subject.txt"):
        assert (PACKAGED_TEMPLATES / name).is_file(), name
    assert not (PACKAGED_TEMPLATES / "email").exists()


def test_autoescape_by_file_name() -> None:
    for raw in ("email.txt.j2", "sections/news.txt.j2", "inline.css.j2", "confirm/mail.txt",
                "confirm/subject.txt"):
        assert not autoescape(raw), raw
    for escaped in ("base.mjml.j2", "archive.html.j2", "feed.xml.j2", "web/subscribe.html",
                    "confirm/mail.html", None):
        assert autoescape(escaped), escaped


def test_confirmation_mail_text_is_raw_and_html_escaped(project: Project) -> None:
    env = environment(project)
    values = {**base_context(project), "list_title": "Kunst & <Kultur>", "confirm_days": 7,
              "confirm_url": "https://example.org/confirm/abc?x=1&y=2"}
    text = render(env, "confirm/mail.txt", values)
    assert "„Kunst & <Kultur>“" in text and "https://example.org/confirm/abc?x=1&y=2" in text
    html = render(env, "confirm/mail.html", values)
    assert "Kunst &amp; &lt;Kultur&gt;" in html and "<Kultur>" not in html
    assert render(env, "confirm/subject.txt", values).strip().endswith("Kunst & <Kultur>")


def test_base_context_has_what_every_template_shares(project: Project) -> None:
    settings = project.settings
    context = base_context(project)
    assert context["lang"] == settings.newsletter.language
    assert context["newsletter"] is settings.newsletter
    assert context["newsletter_title"] == settings.newsletter.title
    assert context["imprint"] is settings.imprint and context["theme"] is settings.theme
    assert context["privacy_url"] == settings.imprint.privacy_url
    assert context["archive_url"] == settings.newsletter.base_url + "/archive/"
    assert context["subscribe_url"] == settings.newsletter.base_url + "/subscribe"


def test_web_page_override_extends_the_packaged_page(project_dir: Path) -> None:
    (project_dir / "templates" / "web").mkdir(parents=True)
    (project_dir / "templates" / "web" / "unsubscribe_test.html").write_text(
        '{% extends "default:web/unsubscribe_test.html" %}{% block content %}<p>Eigener Text</p>'
        "{% endblock %}", encoding="utf-8")
    project = open_project(project_dir)
    page = render(environment(project), "web/unsubscribe_test.html", base_context(project))
    assert "<p>Eigener Text</p>" in page and f'<html lang="{project.settings.newsletter.language}">' in page


def test_environment_is_cached_until_an_override_changes(project_dir: Path) -> None:
    project = open_project(project_dir)
    env = environment(project)
    assert environment(open_project(project_dir)) is env  # compiled templates are reused
    before = render_issue(load_issue(FULL), project)
    (project_dir / "templates" / "sections").mkdir()
    override = project_dir / "templates" / "sections" / "text.txt.j2"
    override.write_text("NEU: {{ section.heading }}\n", encoding="utf-8")
    assert environment(project) is not env  # a new override is seen without a restart
    assert "NEU: In eigener Sache" in render_issue(load_issue(FULL), project).text
    override.write_text("GEÄNDERT: {{ section.heading }}\n", encoding="utf-8")
    os.utime(override, ns=(1, 1))  # a different mtime even on a coarse clock
    assert "GEÄNDERT: In eigener Sache" in render_issue(load_issue(FULL), project).text
    override.unlink()
    assert render_issue(load_issue(FULL), project) == before


def test_rendering_twice_gives_the_same_issue(project: Project) -> None:
    loaded = load_issue(FULL)
    assert render_issue(loaded, project) == render_issue(loaded, project)


def test_floating_image_gets_an_align_attribute_for_outlook(project_dir: Path) -> None:
    (project_dir / "templates" / "base.mjml.j2").write_text(
        '{% extends "default:base.mjml.j2" %}{% block header %}<mj-raw><img src="https://example.org/f.png"'
        ' alt="Logo" width="40" height="40" style="float: right; margin: 0"></mj-raw>{% endblock %}',
        encoding="utf-8")
    html = render_issue(load_issue(FULL), open_project(project_dir)).html
    img = lxml.html.document_fromstring(html).xpath('//img[@src="https://example.org/f.png"]')[0]
    assert img.get("align") == "right"


def test_a_base_template_that_is_no_mjml_is_one_line_not_a_traceback(project_dir: Path) -> None:
    from typer.testing import CliRunner

    from newsletter.cli import app

    (project_dir / "templates" / "base.mjml.j2").write_text("x\n", encoding="utf-8")
    issue = next((project_dir / "issues").glob("*.yaml"))
    result = CliRunner().invoke(app, ["build", str(issue), "--project", str(project_dir)])
    assert result.exit_code == 1
    assert "template error: base.mjml.j2 does not make an MJML document" in result.output
    assert isinstance(result.exception, SystemExit)  # a user error, not an exception


def _textwrap(text: str, indent: str = "", subsequent: str | None = None, width: int = 78) -> str:
    wrapper = textwrap.TextWrapper(width=width, initial_indent=indent, break_long_words=False,
                                   subsequent_indent=indent if subsequent is None else subsequent,
                                   break_on_hyphens=False)
    lines: list[str] = []
    for i, part in enumerate(text.split("\n")):
        if i:
            wrapper.initial_indent = wrapper.subsequent_indent
        lines.extend(wrapper.wrap(part) or [wrapper.initial_indent.rstrip()])
    return "\n".join(lines)


def test_wrap_gives_what_textwrap_gives() -> None:
    pieces = ["Wort", "ä", " ", "  ", "\t", "\n", "\r", "\x0b", "\xa0", "\u2028", "-", "x" * 12,
              "https://example.org/ein/sehr/langer/pfad"]
    rng = random.Random(7)
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 24)))
        indent, subsequent = rng.choice(["", "  ", "- "]), rng.choice([None, "", "    "])
        width = rng.choice([12, 30, 78])
        assert wrap(text, indent, subsequent, width) == _textwrap(text, indent, subsequent, width), \
            (text, indent, subsequent, width)


def test_the_template_module_stays_light_to_import() -> None:
    """The web server imports it: no renderer, database or web framework comes with it."""
    code = ("import sys, newsletter.render.templates; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'mjml', 'premailer', 'lxml', 'cssutils', 'sqlalchemy', 'starlette', 'babel', 'markdown_it'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
