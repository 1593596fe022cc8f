"""Render one issue: Jinja → MJML → mjml-python → premailer → the email HTML;
Jinja → the plain-text part; the web version; one .ics file per event.

Templates come from the project's `templates/` first, then the packaged
defaults; `{% extends "default:base.mjml.j2" %}` reaches the packaged file even
when the project overrides it. Rendering happens once per issue: the recipient's
unsubscribe URL is left as `UNSUBSCRIBE_PLACEHOLDER` in both parts and filled in
by substitution at send time.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PrefixLoader,
    StrictUndefined,
    TemplateError,
)
from markupsafe import Markup
from mjml import mjml2html
from premailer import Premailer

from newsletter.config import Project
from newsletter.content.markdown import parser
from newsletter.content.model import Entry, Event, HeadingBlock, Image, ImageBlock, QuoteBlock, TextBlock
from newsletter.content.validate import LoadedIssue
from newsletter.errors import NewsletterError
from newsletter.render import dates
from newsletter.render import text as plaintext
from newsletter.render.ics import event_calendars

UNSUBSCRIBE_PLACEHOLDER = "%%UNSUBSCRIBE_URL%%"
DEFAULT_TEMPLATES = Path(__file__).parent.parent / "templates" / "email"
EMAIL_WIDTH = 600
GUTTER = 24  # left/right padding of the content column, in px

# Every tag MJML 4 knows; anything else starting with `mj` is a typo that
# mjml-python would silently pass through into the HTML.
MJML_TAGS = frozenset({
    "mjml", "mj-head", "mj-body", "mj-attributes", "mj-all", "mj-class", "mj-breakpoint", "mj-font",
    "mj-html-attributes", "mj-html-attribute", "mj-selector", "mj-preview", "mj-style", "mj-title",
    "mj-raw", "mj-include", "mj-section", "mj-column", "mj-group", "mj-wrapper", "mj-hero", "mj-text",
    "mj-image", "mj-button", "mj-divider", "mj-spacer", "mj-table", "mj-social", "mj-social-element",
    "mj-navbar", "mj-navbar-link", "mj-accordion", "mj-accordion-element", "mj-accordion-title",
    "mj-accordion-text", "mj-carousel", "mj-carousel-image",
})
_MJ_TAG = re.compile(r"<\s*/?\s*(mj[a-z0-9_-]*)", re.IGNORECASE)


class RenderError(NewsletterError):
    """A template is broken (syntax error, unknown MJML tag, missing variable)."""


@dataclass(frozen=True)
class RenderedIssue:
    """One issue, rendered once; personalised later by substituting the placeholder."""

    slug: str
    subject: str
    preheader: str | None
    date: date
    html: str
    text: str
    web_html: str
    ics: dict[str, str] = field(default_factory=dict)
    web_url: str = ""
    archive_url: str = ""


# --------------------------------------------------------------------------- Jinja


def environment(project: Project) -> Environment:
    """The Jinja environment: project templates first, then the packaged defaults."""
    default = FileSystemLoader(str(DEFAULT_TEMPLATES))
    loaders = [PrefixLoader({"default": default}, delimiter=":"), default]
    if project.templates_dir.is_dir():
        loaders.insert(0, FileSystemLoader(str(project.templates_dir)))
    env = Environment(
        loader=ChoiceLoader(loaders),
        # Text from YAML can never inject markup; only the plain-text templates are raw.
        autoescape=lambda name: not (name or "").endswith((".txt.j2", ".css.j2")),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    locale = project.settings.newsletter.language
    env.filters.update(
        md=markdown_html,
        md_text=plaintext.markdown_to_text,
        wrap=plaintext.wrap,
        underline=plaintext.underline,
        link_text=plaintext.link_text,
        cta=plaintext.cta,
        long_date=partial(dates.long_date, locale=locale),
        short_date=partial(dates.short_date, locale=locale),
        credit=credit_line,
    )
    env.globals.update(
        when=lambda e: dates.event_when(e.date, e.end, e.time, e.end_time, locale),
        fit=fit_image,
        block_kind=block_kind,
        entry_facts=partial(entry_facts, locale=locale),
        gutter=GUTTER,
        email_width=EMAIL_WIDTH,
    )
    return env


def markdown_html(source: str | None) -> Markup:
    """Markdown to HTML (markdown-it escapes everything; raw HTML is off)."""
    return Markup(parser().render(source or "").strip())


def fit_image(image: Image, box: int) -> tuple[int, int | None]:
    """Display width and height of `image` in a box `box` px wide (never upscaled)."""
    width = min(box, image.width) if image.width else box
    if image.width and image.height:
        return width, round(width * image.height / image.width)
    return width, None


def credit_line(credit: str) -> str:
    """`Bild: wal_172619 / pixabay`; credits that already say what they are stay as written."""
    if credit.startswith(("©", "(c)", "Foto", "Bild")) or ":" in credit:
        return credit
    return f"Bild: {credit}"


def block_kind(block: object) -> str:
    """`text`, `heading`, `quote` or `image`: which kind of article block this is."""
    return _BLOCK_KINDS[type(block)]


_BLOCK_KINDS = {TextBlock: "text", HeadingBlock: "heading", QuoteBlock: "quote", ImageBlock: "image"}


def entry_facts(entry: Entry, locale: str = "de") -> list[str]:
    """`Start: 10. Februar 2026`, `Partner: MPSC Süderbrarup`."""
    facts = []
    if entry.date:
        facts.append(f"{entry.date_label}: {dates.long_date(entry.date, locale, weekday=False)}")
    return facts + [f"{label}: {value}" for label, value in entry.facts.items()]


# --------------------------------------------------------------------------- pipeline


def mjml_problems(source: str) -> list[str]:
    """Unknown `mj-*` tags in an MJML document (mjml-python passes them through)."""
    unknown = sorted({m.group(1).lower() for m in _MJ_TAG.finditer(source)} - MJML_TAGS)
    return [f"unknown MJML tag <{tag}>" for tag in unknown]


def mjml_to_html(source: str, css: str = "") -> str:
    """MJML → HTML → `css` inlined, avoiding premailer's known defects.

    Only `css` is inlined: MJML's own <style> blocks (resets, media queries for
    stacking) stay as they are, which keeps the HTML small (Gmail clips at 102 KB)."""
    problems = mjml_problems(source)
    if problems:
        raise RenderError("template error: " + "; ".join(problems))
    html = mjml2html(source).replace("<style", '<style data-premailer="ignore"')
    inlined = Premailer(
        html,
        css_text=css,
        base_url=None,
        allow_network=False,  # never fetch <link rel=stylesheet> from the web
        allow_loading_external_files=False,
        strip_important=False,  # MJML's media queries need their !important
        remove_classes=False,
        disable_validation=True,
        disable_link_rewrites=True,
        # premailer would turn `width:100%` into width="100%" on <img>, losing the pixel size.
        disable_basic_attributes=["width", "height"],
        cssutils_logging_level=logging.CRITICAL,
        method="html",
    ).transform()
    # premailer drops a lower-case doctype; clients need it for standards mode.
    inlined = re.sub(r"^\s*<!doctype[^>]*>\s*", "", inlined, flags=re.IGNORECASE)
    return "<!doctype html>\n" + inlined.strip() + "\n"


def _render(env: Environment, name: str, context: dict[str, Any]) -> str:
    try:
        return env.get_template(name).render(context)
    except TemplateError as exc:
        where = getattr(exc, "filename", None) or getattr(exc, "name", None) or name
        line = getattr(exc, "lineno", None)
        location = f"{where}:{line}" if line else str(where)
        raise RenderError(f"{location}: template error: {exc.message or exc}") from None


def render_issue(loaded: LoadedIssue, project: Project) -> RenderedIssue:
    """Render the email (HTML + text), the web version and the events' .ics files."""
    issue = loaded.issue
    settings = project.settings
    slug = issue.slug or loaded.path.stem
    base_url = settings.newsletter.base_url
    archive_url = f"{base_url}/archive/"
    web_url = f"{archive_url}{slug}/"
    calendars = event_calendars(issue, slug, settings.newsletter.timezone, base_url)
    ics_names = {id(event): name for name, (event, _) in calendars.items()}
    env = environment(project)

    def context(web: bool) -> dict[str, Any]:
        def ics_url(event: Event) -> str | None:
            name = ics_names.get(id(event))
            if name is None:
                return None
            return name if web else web_url + name

        return {
            "issue": issue,
            "subject": issue.subject,
            "preheader": issue.preheader,
            "lang": settings.newsletter.language,
            "newsletter": settings.newsletter,
            "imprint": settings.imprint,
            "theme": settings.theme,
            "web": web,
            "web_url": web_url,
            "archive_url": archive_url,
            "subscribe_url": f"{base_url}/subscribe",
            "unsubscribe_url": None if web else UNSUBSCRIBE_PLACEHOLDER,
            "ics_url": ics_url,
        }

    css = _render(env, "inline.css.j2", context(web=False))
    html = mjml_to_html(_render(env, "base.mjml.j2", context(web=False)), css)
    web_html = mjml_to_html(_render(env, "base.mjml.j2", context(web=True)), css)
    text = plaintext.normalise(_render(env, "email.txt.j2", context(web=False)))
    return RenderedIssue(
        slug=slug, subject=issue.subject, preheader=issue.preheader, date=issue.date,
        html=html, text=text, web_html=web_html,
        ics={name: body for name, (_, body) in calendars.items()},
        web_url=web_url, archive_url=archive_url,
    )


def render_template(project: Project, name: str, context: dict[str, Any]) -> str:
    """Render any packaged/overridable template (used for the archive page and feed)."""
    return _render(environment(project), name, context)

