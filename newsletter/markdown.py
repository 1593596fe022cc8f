"""The small Markdown subset item bodies are written in.

Paragraphs, **bold**, *italics*, [links](https://…) and bullet lists (plus numbered
lists and line breaks). Parsed by markdown-it-py with raw HTML switched off; anything
outside the subset is reported by `markdown_problems` so the editor learns about it
at `validate` time instead of seeing it mangled in the email.
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


def parse(text: str) -> list[Token]:
    return parser().parse(text)


def markdown_problems(text: str) -> list[str]:
    """Messages for everything in `text` outside the supported subset."""
    problems: list[str] = []
    seen: set[str] = set()

    def report(kind: str) -> None:
        name = _NAMES.get(kind, kind.removesuffix("_open"))
        if name not in seen:
            seen.add(name)
            problems.append(
                f"{name} are not supported here; use paragraphs, **bold**, *italics*, "
                "[links](https://…) and bullet lists"
            )

    for token in parse(text):
        if token.type.endswith("_close"):
            continue
        if token.type not in _ALLOWED_BLOCKS:
            report(token.type)
            continue
        for child in token.children or []:
            if child.type.endswith("_close"):
                continue
            if child.type not in _ALLOWED_INLINE:
                report(child.type)
            elif child.type == "link_open":
                href = str(child.attrs.get("href", ""))
                if not is_absolute_link(href):
                    problems.append(
                        f"link target `{href}` must be an absolute http(s) URL or a mailto: address"
                    )
    return problems


def is_absolute_link(href: str) -> bool:
    parts = urlsplit(href)
    if parts.scheme == "mailto":
        return "@" in parts.path
    return parts.scheme in ("http", "https") and bool(parts.netloc)
