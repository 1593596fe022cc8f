"""The small Markdown subset item bodies are written in.

Paragraphs, **bold**, *italics*, [links](https://…) and bullet lists (plus numbered
lists and line breaks). Parsed by markdown-it-py with raw HTML switched off; anything
outside the subset (headings, raw HTML, code, images, relative links …) is reported
by `markdown_problems` so the editor learns about it at `validate` time instead of
seeing it mangled in the email.
"""

from __future__ import annotations

from functools import cache
from urllib.parse import urlsplit

from markdown_it import MarkdownIt
from markdown_it.token import Token

_ALLOWED_BLOCKS = {
    "paragraph_open", "paragraph_close", "bullet_list_open", "bullet_list_close",
    "ordered_list_open", "ordered_list_close", "list_item_open", "list_item_close", "inline",
}
_ALLOWED_INLINE = {
    "text", "softbreak", "hardbreak", "strong_open", "strong_close", "em_open", "em_close",
    "link_open", "link_close",
}
_NAMES = {
    "heading_open": "headings (#)", "blockquote_open": "block quotes (>)",
    "code_block": "indented code blocks", "fence": "code blocks (```)", "hr": "horizontal rules",
    "html_block": "raw HTML", "html_inline": "raw HTML", "image": "images (use an `image:` field)",
    "code_inline": "inline code (`…`)", "table_open": "tables", "s_open": "strikethrough",
}


@cache
def parser() -> MarkdownIt:
    """The one configured parser (CommonMark, no raw HTML, no auto-typography)."""
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})


@cache
def _checker() -> MarkdownIt:
    # Same grammar but with HTML recognised, so `<b>` is reported instead of being
    # shown to readers as literal text.
    return MarkdownIt("commonmark", {"html": True, "linkify": False, "typographer": False})


def parse(text: str) -> list[Token]:
    return parser().parse(text)


SUBSET = "paragraphs, **bold**, *italics*, [links](https://…) and bullet lists"


def markdown_problems(text: str) -> list[str]:
    """One message for everything in `text` outside the supported subset (or none)."""
    problems = located_markdown_problems(text)
    return [summarize(problems)] if problems else []


def summarize(problems: list[tuple[int, str]]) -> str:
    """All problems of one text as one message, with the hint on what is allowed."""
    message = "; ".join(message for _, message in problems)
    if any("cannot be used" in m for _, m in problems):
        message += f" (use {SUBSET})"
    return message


def located_markdown_problems(text: str) -> list[tuple[int, str]]:
    """Like `markdown_problems`, each with the 0-based line of `text` it is on."""
    problems: list[tuple[int, str]] = []
    seen: set[str] = set()

    def report(kind: str, line: int) -> None:
        name = _NAMES.get(kind, kind.removesuffix("_open"))
        if name not in seen:
            seen.add(name)
            problems.append((line, f"{name} cannot be used here"))

    for token in _checker().parse(text):
        if token.type.endswith("_close"):
            continue
        first = token.map[0] if token.map else 0
        if token.type not in _ALLOWED_BLOCKS:
            report(token.type, first)
            continue
        line = first
        for child in token.children or []:
            if child.type in ("softbreak", "hardbreak"):
                line += 1
            if child.type.endswith("_close"):
                continue
            if child.type not in _ALLOWED_INLINE:
                report(child.type, line)
            elif child.type == "link_open":
                href = str(child.attrs.get("href", ""))
                if "%7B%7B" in href.upper():  # markdown-it percent-encodes the braces
                    problems.append((line, "personal fields ({{…}}) cannot be used in link targets"))
                elif not is_absolute_link(href):
                    problems.append(
                        (line, f"link target `{href}` must be an absolute http(s) URL "
                         "(https://…) or a mailto: address")
                    )
    return problems


def is_absolute_link(href: str) -> bool:
    parts = urlsplit(href)
    if parts.scheme == "mailto":
        return "@" in parts.path
    return parts.scheme in ("http", "https") and bool(parts.netloc)
