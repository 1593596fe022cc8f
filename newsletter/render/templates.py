"""The one Jinja environment: the email (MJML, text part, inlined CSS), the archive
page and feed, the pages of `newsletter serve` and the confirmation mail.

A template has the same name whether packaged or overridden: `base.mjml.j2`,
`sections/<kind>.mjml.j2`, `web/subscribe.html`, `confirm/mail.txt`. The file in
the project's `templates/` wins; `default:<name>` always reaches the packaged
file, so an override can extend it (`{% extends "default:base.mjml.j2" %}`).

Escaping goes by file name: text parts and CSS (`.txt.j2`, `.css.j2`, `.txt`) are
raw, everything else (HTML, MJML, XML) is escaped, so text from an issue file
or a form can never inject markup. Undefined variables are errors
(StrictUndefined): a typo in a template fails the build instead of silently
leaving a gap in a mail; optional values are passed as None.

The web server imports this module, so it imports nothing but Jinja: Babel,
markdown-it and the content model load when an environment is first built or
a filter first runs — never mjml, premailer or lxml.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PrefixLoader, StrictUndefined, TemplateError
from markupsafe import Markup

from newsletter.errors import NewsletterError
from newsletter.render.memo import once
from newsletter.render.personal import fill

if TYPE_CHECKING:
    from newsletter.content.model import Entry, Image
    from newsletter.project import Project

PACKAGED_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
RAW_SUFFIXES = (".txt.j2", ".css.j2", ".txt")
# Left in both parts of a rendered issue; each recipient's URL is substituted at send time.
UNSUBSCRIBE_PLACEHOLDER = "%%UNSUBSCRIBE_URL%%"
# The reader's preference-centre link (`/p/<token>`), filled in per recipient like the above.
PREFERENCES_PLACEHOLDER = "%%PREFERENCES_URL%%"
EMAIL_WIDTH = 600
GUTTER = 24  # left/right padding of the email's content column, in px
# The width (px) an image is shown at, by where it stands: the content column; an event's image
# in its 45 % column (12 px to the facts); a gallery image in its half (6 px between the two).
# The templates size images by these (`image_box.full`, …); local images are resized to twice
# them (render/images.py, docs/images.md).
IMAGE_BOX = {
    "full": EMAIL_WIDTH - 2 * GUTTER,
    "event": EMAIL_WIDTH * 45 // 100 - GUTTER - 12,
    "gallery": EMAIL_WIDTH // 2 - GUTTER - 6,
}

_CACHE_SIZE = 8
_cache: OrderedDict[tuple[Any, ...], Environment] = OrderedDict()
_lock = threading.Lock()


class RenderError(NewsletterError):
    """A template is broken (syntax error, unknown MJML tag, missing variable)."""


def autoescape(name: str | None) -> bool:
    """True for every template but text parts and CSS (they are not markup)."""
    return not (name or "").endswith(RAW_SUFFIXES)


def environment(project: Project) -> Environment:
    """The environment for `project`: its `templates/` first, then the packaged defaults.

    Cached, because compiling the templates costs far more than rendering them.
    The key includes every file under the project's `templates/` with its mtime
    and size, so adding, changing or deleting an override (while the preview
    runs) gives a fresh environment."""
    directory = project.templates_dir
    locale = project.settings.newsletter.language
    key = (str(directory), locale, _fingerprint(directory))
    with _lock:
        env = _cache.get(key)
        if env is not None:
            _cache.move_to_end(key)
            return env
    env = _build(directory if key[2] is not None else None, locale)
    with _lock:
        env = _cache.setdefault(key, env)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return env


def _fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...] | None:
    """(path, mtime, size) of every file under `directory`; None if there is no such directory."""
    if not directory.is_dir():
        return None
    files = []
    for folder, subfolders, names in os.walk(directory):
        subfolders.sort()
        for name in sorted(names):
            path = os.path.join(folder, name)
            try:
                stat = os.stat(path)
            except OSError:  # deleted while we looked
                continue
            files.append((path, stat.st_mtime_ns, stat.st_size))
    return tuple(files)


def _build(directory: Path | None, locale: str) -> Environment:
    # Imported here, not at the top: Babel and markdown-it are only needed once templates render.
    from newsletter.render import dates
    from newsletter.render import text as plaintext

    packaged = FileSystemLoader(str(PACKAGED_TEMPLATES))
    loaders: list[Any] = [PrefixLoader({"default": packaged}, delimiter=":"), packaged]
    if directory is not None:
        loaders.insert(0, FileSystemLoader(str(directory)))
    env = Environment(
        loader=ChoiceLoader(loaders),
        autoescape=autoescape,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        md=markdown_html,
        md_text=lambda source, *args, **kwargs: plaintext.markdown_to_text(fill(source), *args, **kwargs),
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
        image_box=IMAGE_BOX,
    )
    return env


def base_context(project: Project) -> dict[str, Any]:
    """What every template may use: language, the newsletter's settings, imprint and
    theme, and the public URLs. Each caller adds its own values (and may override
    these, e.g. relative URLs on the web pages)."""
    settings = project.settings
    base_url = settings.newsletter.base_url
    return {
        "lang": settings.newsletter.language,
        "newsletter": settings.newsletter,
        "newsletter_title": settings.newsletter.title,
        "imprint": settings.imprint,
        "privacy_url": settings.imprint.privacy_url,
        "theme": settings.theme,
        "base_url": base_url,
        "archive_url": f"{base_url}/archive/",
        "subscribe_url": f"{base_url}/subscribe",
    }


def render(env: Environment, name: str, context: dict[str, Any]) -> str:
    """Render `name`; a broken template raises RenderError naming file and line."""
    try:
        return env.get_template(name).render(context)
    except TemplateError as exc:
        where = getattr(exc, "filename", None) or getattr(exc, "name", None) or name
        line = getattr(exc, "lineno", None)
        location = f"{where}:{line}" if line else str(where)
        raise RenderError(f"{location}: template error: {exc.message or exc}") from None


def render_template(project: Project, name: str, context: dict[str, Any]) -> str:
    """Render any packaged/overridable template with the project's base context."""
    return render(environment(project), name, {**base_context(project), **context})


# --------------------------------------------------------------------------- filters and globals


def markdown_html(source: str | None) -> Markup:
    """Markdown to HTML (markdown-it escapes everything; raw HTML is off). Personal fields
    become holes or fallbacks first (`render.personal.fill`)."""
    return Markup(once(_markdown_html, fill(source or "")))


def _markdown_html(source: str) -> str:
    from newsletter.content.markdown import parser
    from newsletter.render.text import markdown_tokens

    md = parser()
    # = md.render(source), with the tokens the text part and the .ics files also use
    return md.renderer.render(markdown_tokens(source), md.options, {}).strip()


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
    from newsletter.content.model import HeadingBlock, ImageBlock, QuoteBlock, TextBlock

    kinds = {TextBlock: "text", HeadingBlock: "heading", QuoteBlock: "quote", ImageBlock: "image"}
    return kinds[type(block)]


def entry_facts(entry: Entry, locale: str = "de") -> list[str]:
    """`Start: 10. Februar 2026`, `Partner: MPSC Süderbrarup`."""
    from newsletter.render import dates

    facts = []
    if entry.date:
        facts.append(f"{entry.date_label}: {dates.long_date(entry.date, locale, weekday=False)}")
    return facts + [f"{label}: {value}" for label, value in entry.facts.items()]
