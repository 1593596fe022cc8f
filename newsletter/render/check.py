"""`newsletter check`: what to look at before sending an issue.

Runs on the rendered issue: HTML size against Gmail's clipping limit, images
without alt text or size, unsubscribe link and imprint in both parts, subject
and preheader length (from validation), link texts that say nothing on their
own ("hier klicken", "mehr"), local images over 200 KB after resizing, and optionally every
link and image URL fetched concurrently to find broken ones.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import lxml.html
from pydantic import BaseModel

from newsletter.content.markdown import parse
from newsletter.content.model import Image, Link, RegisterLink
from newsletter.content.source import Loc, dotted
from newsletter.content.validate import LoadedIssue
from newsletter.errors import Problem
from newsletter.project import Project
from newsletter.render.html import UNSUBSCRIBE_PLACEHOLDER, RenderedIssue, render_issue
from newsletter.render.images import SIZE_WARN as IMAGE_SIZE_WARN
from newsletter.render.images import encoded_size

# Gmail hides everything after ~102 KB of HTML behind "[Nachricht gekürzt]".
SIZE_LIMIT = 102_000
SIZE_WARN = 90_000
# A recipient's real unsubscribe URL is longer than the placeholder.
UNSUBSCRIBE_URL_LENGTH = 120
VAGUE_LINK_TEXTS = {
    "hier", "hier klicken", "klicken sie hier", "bitte hier klicken", "mehr", "mehr lesen",
    "weiter", "weiterlesen", "link", "details", "click here", "here", "more", "read more",
}
TIMEOUT = httpx.Timeout(8.0, connect=4.0)
CONCURRENCY = 8


@dataclass
class CheckReport:
    problems: list[Problem] = field(default_factory=list)
    html_bytes: int = 0
    links_checked: int = 0
    links_skipped: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


def check_issue(loaded: LoadedIssue, project: Project, *, links: bool = False,
                rendered: RenderedIssue | None = None) -> CheckReport:
    """All pre-send checks of one issue; `links=True` also fetches every URL."""
    rendered = rendered or render_issue(loaded, project)
    file = str(loaded.path)
    report = CheckReport(problems=list(loaded.warnings))

    def add(message: str, severity: str = "error", loc: Loc = ()) -> None:
        line, col = loaded.source.locate(loc) if loc else (None, None)
        report.problems.append(Problem(file, line, col, dotted(loc) if loc else "", message,
                                       severity))  # type: ignore[arg-type]

    # Size, as the recipient's mail client will see it.
    sized = rendered.html.replace(UNSUBSCRIBE_PLACEHOLDER, "x" * UNSUBSCRIBE_URL_LENGTH)
    report.html_bytes = len(sized.encode("utf-8"))
    kb = report.html_bytes / 1000
    if report.html_bytes > SIZE_LIMIT:
        add(f"the HTML has {kb:.1f} KB; Gmail cuts off everything after {SIZE_LIMIT // 1000} KB "
            "(shorten the issue or move sections to the website)")
    elif report.html_bytes > SIZE_WARN:
        add(f"the HTML has {kb:.1f} KB, close to Gmail's clipping limit of {SIZE_LIMIT // 1000} KB",
            "warning")

    doc = lxml.html.document_fromstring(rendered.html)
    for img in doc.iter("img"):
        src = img.get("src", "")
        if not (img.get("alt") or "").strip():
            add(f"image {src} has no alt text (screen readers, blocked images)")
        if not (img.get("width") and img.get("height")):
            add(f"image {src} has no width/height attributes: the layout jumps while it loads",
                "warning")

    # Local images: as `build` writes them (the file in dist/ if built already).
    for image in rendered.images:
        if image.warning:
            add(image.warning, "warning", (*image.loc, "width"))
        size = encoded_size(image, project.dist_dir / rendered.slug)
        if size > IMAGE_SIZE_WARN:
            advice = "a photo is much smaller as JPEG" if image.format == "PNG" else (
                "crop it to what matters, or show it smaller (`width`)")
            add(f"`{image.path}` has {size / 1000:.0f} KB after resizing to {image.width}×{image.height} "
                f"px (over {IMAGE_SIZE_WARN // 1000} KB: slow on mobile data); {advice}", "warning",
                (*image.loc, "url"))

    # Unsubscribe and imprint in both parts (German law: § 7 UWG, § 5 DDG).
    hrefs = [a.get("href", "") for a in doc.iter("a")]
    if UNSUBSCRIBE_PLACEHOLDER not in hrefs:
        add("the HTML part has no unsubscribe link (a template must link to `unsubscribe_url`)")
    if UNSUBSCRIBE_PLACEHOLDER not in rendered.text:
        add("the text part has no unsubscribe link (a template must show `unsubscribe_url`)")
    html_text = _squash(doc.text_content())
    text = _squash(rendered.text)
    imprint = project.settings.imprint
    for label, value in (("imprint name", imprint.name), ("imprint address", imprint.address)):
        if _squash(value) not in html_text:
            add(f"the HTML part does not show the {label} `{value}` ([imprint] in newsletter.toml)")
        if _squash(value) not in text:
            add(f"the text part does not show the {label} `{value}` ([imprint] in newsletter.toml)")

    # Link texts that mean nothing out of context (screen readers list links alone).
    reported: set[str] = set()
    for loc, label in _link_labels(loaded.issue):
        if _vague(label):
            reported.add(_normal(label))
            add(f"link text `{label}` says nothing on its own; name where the link leads, "
                "e.g. `Programm des Kongresses`", "warning", loc)
    for a in doc.iter("a"):
        label = _squash(a.text_content())
        if _vague(label) and not (a.get("aria-label") or a.get("title")) and _normal(label) not in reported:
            reported.add(_normal(label))
            add(f"a template shows a link with the text `{label}` and no aria-label", "warning")

    if links:
        base = project.settings.newsletter.base_url
        urls = _urls(doc)
        own = [u for u in urls if u.startswith(base)]
        report.links_skipped = len(own)
        targets = [u for u in urls if not u.startswith(base)]
        report.links_checked = len(targets)
        where = _url_locations(loaded.issue)
        for url, message in asyncio.run(check_urls(targets)):
            add(f"{message}: {url}", "error", where.get(url, ()))
    return report


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _normal(label: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", label.lower())).strip()


def _vague(label: str) -> bool:
    return _normal(label) in VAGUE_LINK_TEXTS


def _walk(obj: Any, loc: Loc = ()) -> Iterator[tuple[Loc, Any]]:
    yield loc, obj
    if isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            yield from _walk(getattr(obj, name), (*loc, name))
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            yield from _walk(item, (*loc, i))


def _markdown_links(text: str) -> Iterator[tuple[str, str]]:
    """(label, href) of every link in a Markdown text."""
    for token in parse(text):
        label: list[str] | None = None
        href = ""
        for child in token.children or []:
            if child.type == "link_open":
                label, href = [], str(child.attrs.get("href", ""))
            elif child.type == "link_close" and label is not None:
                yield "".join(label), href
                label = None
            elif label is not None and child.type == "text":
                label.append(child.content)


def _link_labels(issue: BaseModel) -> Iterator[tuple[Loc, str]]:
    for loc, obj in _walk(issue):
        if isinstance(obj, Link | RegisterLink):
            yield (*loc, "label"), obj.label
        elif isinstance(obj, str) and "](" in obj:
            for label, _ in _markdown_links(obj):
                yield loc, label


def _url_locations(issue: BaseModel) -> dict[str, Loc]:
    where: dict[str, Loc] = {}
    for loc, obj in _walk(issue):
        if isinstance(obj, Image):
            where.setdefault(obj.url, (*loc, "url"))
        elif isinstance(obj, str) and loc and loc[-1] == "url":
            where.setdefault(obj, loc)
        elif isinstance(obj, str) and "](" in obj:
            for _, href in _markdown_links(obj):
                where.setdefault(href, loc)
    return where


def _urls(doc: lxml.html.HtmlElement) -> list[str]:
    urls = [a.get("href", "") for a in doc.iter("a")] + [i.get("src", "") for i in doc.iter("img")]
    return sorted({u for u in urls if u.startswith(("http://", "https://"))})


async def check_urls(urls: list[str]) -> list[tuple[str, str]]:
    """(url, what is wrong) for every URL that does not answer with success."""
    limit = asyncio.Semaphore(CONCURRENCY)
    headers = {"User-Agent": "newsletter-link-check/1.0"}
    async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=True, headers=headers) as client:

        async def probe(url: str) -> tuple[str, str] | None:
            async with limit:
                try:
                    response = await client.head(url)
                    if response.status_code in (403, 405, 501):  # servers that refuse HEAD
                        async with client.stream("GET", url) as response:
                            pass
                except httpx.TimeoutException:
                    return url, "no answer within the time limit"
                except httpx.HTTPError as exc:
                    return url, f"unreachable ({type(exc).__name__})"
                if response.status_code >= 400:
                    return url, f"broken link ({response.status_code} {response.reason_phrase})"
                return None

        results = await asyncio.gather(*(probe(url) for url in urls))
    return [r for r in results if r is not None]
