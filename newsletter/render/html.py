"""Render one issue: Jinja → MJML → mjml-python → premailer → the email HTML;
Jinja → the plain-text part; the web version; one .ics file per event.

Templates come from `newsletter.render.templates` (the project's `templates/`
first, then the packaged defaults). Rendering happens once per issue: the
recipient's unsubscribe URL is left as `UNSUBSCRIBE_PLACEHOLDER` in both parts
and filled in by substitution at send time.

Speed: the Jinja environment is cached per project (compiling the templates
is the most expensive step), premailer parses the stylesheet once per CSS text
instead of once per document, and the Markdown texts that the email, web
version, text part and .ics files share are converted once per render.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Any

import cssutils
from lxml import etree
from mjml import mjml2html
from premailer import Premailer

from newsletter.content.fields import GREETING_PLACEHOLDER, FieldRef, Greeting
from newsletter.content.model import Event
from newsletter.content.topics import selected, selection
from newsletter.content.validate import LoadedIssue
from newsletter.project import Project
from newsletter.render import text as plaintext
from newsletter.render.ics import event_calendars
from newsletter.render.images import LocalImage, localised, plan_images
from newsletter.render.memo import shared_work
from newsletter.render.personal import personal
from newsletter.render.templates import (
    EMAIL_WIDTH,
    GUTTER,
    PACKAGED_TEMPLATES,
    PREFERENCES_PLACEHOLDER,
    UNSUBSCRIBE_PLACEHOLDER,
    RenderError,
    base_context,
    environment,
    render,
    render_template,
)

__all__ = [
    "EMAIL_WIDTH", "GUTTER", "PACKAGED_TEMPLATES", "UNSUBSCRIBE_PLACEHOLDER", "RenderError",
    "RenderedIssue", "environment", "mjml_problems", "mjml_to_html", "render_issue", "render_template",
]

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


@dataclass(frozen=True)
class RenderedIssue:
    """One issue, rendered once; personalised later by substituting the placeholder."""

    slug: str
    subject: str
    preheader: str | None
    date: date
    html: str
    text: str
    web_html: str  # "" in a topic variant: the web version is the full issue's
    ics: dict[str, str] = field(default_factory=dict)
    web_url: str = ""
    archive_url: str = ""
    # Personal fields: the holes `%%F<n>%%` in `html`/`text` (index = position here) and the
    # greeting (`GREETING_PLACEHOLDER`); filled per reader by `render.personal.values_for`.
    fields: tuple[FieldRef, ...] = ()
    greeting: Greeting | None = None
    # The issue's local images (the HTML refers to them in the archive folder): `build` writes them.
    images: tuple[LocalImage, ...] = ()


# --------------------------------------------------------------------------- pipeline


def mjml_problems(source: str) -> list[str]:
    """Unknown `mj-*` tags in an MJML document (mjml-python passes them through)."""
    unknown = sorted({m.group(1).lower() for m in _MJ_TAG.finditer(source)} - MJML_TAGS)
    return [f"unknown MJML tag <{tag}>" for tag in unknown]


_PREVIEW_STYLE = '<div style="display:none;font-size:1px;'


def mjml_to_html(source: str, css: str = "") -> str:
    """MJML → HTML → `css` inlined, avoiding premailer's known defects.

    Only `css` is inlined: MJML's own <style> blocks (resets, media queries for
    stacking) stay as they are, which keeps the HTML small (Gmail clips at 102 KB)."""
    problems = mjml_problems(source)
    if problems:
        raise RenderError("template error: " + "; ".join(problems))
    try:
        html = mjml2html(source)
    except ValueError as exc:  # a template override that is no MJML document
        raise RenderError(f"template error: base.mjml.j2 does not make an MJML document: {exc} "
                          "(it must render `<mjml><mj-body>…</mj-body></mjml>`)") from None
    html = html.replace("<style", '<style data-premailer="ignore"').strip()
    # mj-preview hides the preheader with display:none, max-height:0 and opacity:0 — and also
    # colours it like the background, which SpamAssassin scores (HTML_FONT_LOW_CONTRAST).
    # The colour hides nothing the other three do not: drop it.
    html = html.replace(_PREVIEW_STYLE + "color:#ffffff;", _PREVIEW_STYLE, 1)
    # Parsed and serialised here exactly as premailer.transform(str) would, so that the
    # float check below can run on the tree premailer worked on.
    tree = etree.fromstring(html, etree.HTMLParser()).getroottree()
    root = tree if html.startswith(tree.docinfo.doctype) else tree.getroot()
    _inliner(css).transform(tree.getroot())
    _align_floating_images(tree)
    inlined = etree.tostring(root, method="html", pretty_print=True, encoding="utf-8").decode("utf-8")
    # premailer drops a lower-case doctype; clients need it for standards mode.
    inlined = re.sub(r"^\s*<!doctype[^>]*>\s*", "", inlined, flags=re.IGNORECASE)
    return "<!doctype html>\n" + inlined.strip() + "\n"


class _Inliner(Premailer):
    """premailer with the stylesheet's rules parsed once, not once per document.

    premailer caches cssutils' parse of a stylesheet but still turns every
    property back into text for each document; for our small stylesheet that
    was a third of the inlining time."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._rules: dict[tuple[str, int], tuple[list[Any], list[Any]]] = {}

    def _parse_style_rules(self, css_body: str, ruleset_index: int) -> tuple[list[Any], list[Any]]:
        key = (css_body, ruleset_index)
        if key not in self._rules:
            self._rules[key] = super()._parse_style_rules(css_body, ruleset_index)
        rules, leftover = self._rules[key]
        return list(rules), list(leftover)  # premailer extends and sorts what it gets


@lru_cache(maxsize=16)
def _inliner(css: str) -> _Inliner:
    """One premailer per stylesheet (= per template set and [theme]), shared by every render."""
    return _Inliner(
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
        # Done by _align_floating_images, which skips premailer's slow cssutils parse of
        # every image's style when there is no float in it (MJML never writes one).
        align_floating_images=False,
        cssutils_logging_level=logging.CRITICAL,
        method="html",
    )


def _align_floating_images(tree: etree._ElementTree) -> None:
    """premailer's align_floating_images: align="left|right" for Outlook, which ignores float."""
    for img in tree.xpath("//img[@style]"):
        style = img.attrib["style"]
        if "float" not in style.lower():
            continue
        floated = cssutils.parseStyle(style).float
        if floated in ("left", "right"):
            img.attrib["align"] = floated


def render_issue(loaded: LoadedIssue, project: Project,
                 topics: Collection[str] | None = None) -> RenderedIssue:
    """Render the email (HTML + text), the web version and the events' .ics files.

    `topics`: the variant for members who chose these topics (docs/topics.md): only the
    sections without topics and those with one of them go into the email; the web version and
    the .ics files stay the full issue's (they are public, and the same for everybody), so a
    variant renders no web version (`web_html` is "")."""
    with shared_work():  # Markdown converted once for HTML, web version, text part and .ics
        return _render_issue(loaded, project, topics)


def _render_issue(loaded: LoadedIssue, project: Project, topics: Collection[str] | None) -> RenderedIssue:
    settings = project.settings
    slug = loaded.issue.slug or loaded.path.stem
    base = base_context(project)
    web_url = f"{base['archive_url']}{slug}/"
    # Local images point into the issue's archive folder, sized as shown (docs/images.md).
    images = plan_images(loaded, project.root)
    full = localised(loaded.issue, images, web_url)
    # Filtered before the templates run; the .ics files below come from the full issue.
    issue = full if topics is None else selected(full, selection(full, topics))
    with personal("fallback"):  # the .ics files are public: nobody's data in them
        calendars = event_calendars(full, slug, settings.newsletter.timezone, base["base_url"])
    greeting = _greeting(issue.greeting)
    ics_names = {id(event): name for name, (event, _) in calendars.items()}
    env = environment(project)

    def context(web: bool) -> dict[str, Any]:
        def ics_url(event: Event) -> str | None:
            name = ics_names.get(id(event))
            if name is None:
                return None
            return name if web else web_url + name

        return {
            **base,
            "issue": issue,
            "subject": issue.subject,
            "preheader": issue.preheader,
            "web": web,
            "web_url": web_url,
            "unsubscribe_url": None if web else UNSUBSCRIBE_PLACEHOLDER,
            "preferences_url": None if web else PREFERENCES_PLACEHOLDER,
            "ics_url": ics_url,
            # The web version is public: the greeting's line for readers without a name.
            "greeting": (greeting.fallback if web else GREETING_PLACEHOLDER) if greeting else None,
        }

    email, web = context(web=False), context(web=True)
    css = render(env, "inline.css.j2", email)
    with personal("holes") as holes:  # one table for the HTML and the text part
        html = mjml_to_html(render(env, "base.mjml.j2", email), css)
        text = plaintext.normalise(render(env, "email.txt.j2", email))
    web_html = ""
    if topics is None:
        with personal("fallback"):
            web_html = mjml_to_html(render(env, "base.mjml.j2", web), css)
    return RenderedIssue(
        slug=slug, subject=issue.subject, preheader=issue.preheader, date=issue.date,
        html=html, text=text, web_html=web_html,
        ics={name: body for name, (_, body) in calendars.items()},
        web_url=web_url, archive_url=base["archive_url"],
        fields=tuple(holes.fields), greeting=greeting, images=images,
    )


def _greeting(spec: object) -> Greeting | None:
    """The issue's `greeting:` (a line, or text + fallback) as one type."""
    if spec is None:
        return None
    if isinstance(spec, str):
        return Greeting(spec)
    return Greeting(spec.text, spec.fallback)  # type: ignore[attr-defined]
