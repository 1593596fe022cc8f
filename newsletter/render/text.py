"""The plain-text part: Markdown to wrapped text by walking markdown-it tokens
(never by converting the HTML), and the wrapping helpers the `*.txt.j2`
templates use.

Lines stay within 78 characters; a URL is never broken, so a URL longer than a
line stands alone on its own line. Links are kept inline as `label <URL>`
(the delimiters RFC 3986 appendix C recommends for URLs in plain text).
"""

from __future__ import annotations

import re
import textwrap

from markdown_it.token import Token

from newsletter.content.markdown import parse
from newsletter.render.memo import once

WIDTH = 78
# Whitespace TextWrapper rewrites (tabs expanded, the rest turned into spaces).
_TEXTWRAP_SPACE = re.compile(r"[\t\x0b\x0c\r]")


def markdown_tokens(source: str) -> list[Token]:
    """markdown-it's tokens of `source`; parsed once per render (HTML, text part and
    .ics files all need them). Read-only: the list is shared."""
    return once(parse, source)


def wrap(text: str, indent: str = "", subsequent: str | None = None, width: int = WIDTH) -> str:
    """Wrap `text` to `width`; hard line breaks in `text` are kept."""
    wrapper = textwrap.TextWrapper(
        width=width, initial_indent=indent,
        subsequent_indent=indent if subsequent is None else subsequent,
        break_long_words=False, break_on_hyphens=False,
    )
    lines: list[str] = []
    for i, part in enumerate(text.split("\n")):
        if i:  # after a hard break, continue at the hanging indent
            wrapper.initial_indent = wrapper.subsequent_indent
        first = wrapper.initial_indent
        if not part:
            lines.append(first.rstrip())
        elif (len(first) + len(part) <= width and not part[-1].isspace()
              and not _TEXTWRAP_SPACE.search(part)):
            # Fits on one line and has no whitespace TextWrapper would drop or rewrite: its
            # result, without its cost (most lines of an issue are this short).
            lines.append(first + part)
        else:
            lines.extend(wrapper.wrap(part) or [first.rstrip()])
    return "\n".join(lines)


def underline(text: str, char: str = "=") -> str:
    """A heading wrapped to the line width and underlined as long as its longest line."""
    wrapped = wrap(text)
    return wrapped + "\n" + char * max(len(line) for line in wrapped.splitlines())


def link_text(label: str, url: str) -> str:
    """`label <URL>`, or just the URL where the label says nothing more."""
    if label.strip() in (url, url.removeprefix("mailto:")):
        return f"<{url}>"
    return f"{label} <{url}>"


def cta(label: str, url: str, indent: str = "") -> str:
    """A call to action: `→ label` with the URL on the next line."""
    return wrap(f"→ {label}", indent, indent + "  ") + "\n" + f"{indent}  {url}"


def _inline(token: Token) -> str:
    out: list[str] = []
    href: list[str] = []
    start: list[int] = []
    for child in token.children or []:
        if child.type == "text":
            out.append(child.content)
        elif child.type == "softbreak":
            out.append(" ")
        elif child.type == "hardbreak":
            out.append("\n")
        elif child.type == "link_open":
            href.append(str(child.attrs.get("href", "")))
            start.append(len(out))
        elif child.type == "link_close" and href:
            url, first = href.pop(), start.pop()
            label = "".join(out[first:])
            del out[first:]
            out.append(link_text(label, url))
        elif child.type == "code_inline":
            out.append(child.content)
    return re.sub(r"[ \t]+", " ", "".join(out)).strip()


def markdown_to_text(source: str, indent: str = "", width: int = WIDTH) -> str:
    """Markdown of the supported subset as plain text: paragraphs separated by a
    blank line, bullets `- ` (numbers `1. `) with a hanging indent."""
    blocks: list[str] = []
    # One entry per open list: [ordered?, next number]; list item markers pending.
    lists: list[list[int | bool]] = []
    marker: str | None = None
    hidden = False  # paragraphs of a tight list are hidden: no blank line between its items
    prev_in_list = False
    for token in markdown_tokens(source):
        if token.type in ("bullet_list_open", "ordered_list_open"):
            ordered = token.type == "ordered_list_open"
            lists.append([ordered, int(token.attrs.get("start", 1) or 1)])
        elif token.type in ("bullet_list_close", "ordered_list_close"):
            lists.pop()
            prev_in_list = prev_in_list and bool(lists)  # a new list starts after a blank line
        elif token.type == "list_item_open":
            ordered, number = lists[-1]
            marker = f"{number}. " if ordered else "- "
            lists[-1][1] = int(number) + 1
        elif token.type == "inline":
            text = _inline(token)
            depth = max(len(lists) - 1, 0)
            base = indent + "  " * depth
            if lists and marker is not None:
                block = wrap(text, base + marker, base + " " * len(marker), width)
                marker = None
            elif lists:  # a second paragraph inside one list item
                block = wrap(text, base + "  ", width=width)
            else:
                block = wrap(text, indent, width=width)
            if blocks and not (lists and prev_in_list and hidden):
                blocks.append("")
            blocks.append(block)
            prev_in_list = bool(lists)
        elif token.type == "paragraph_open":
            hidden = token.hidden
    return "\n".join(blocks)


def normalise(text: str) -> str:
    """Trailing spaces off, at most one blank line in a row, one final newline."""
    # "-- " (with its space) is the signature separator mail clients recognise.
    lines = [line if line == "-- " else line.rstrip() for line in text.splitlines()]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
    return text.strip("\n") + "\n"
