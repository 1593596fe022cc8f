"""Feed text → the issue format's Markdown subset (content/markdown.py) and plain one-line text.

HTML is read with the standard library's `html.parser`: a tolerant tokenizer (broken markup
is never an exception), entities and character references decoded (`convert_charrefs`), no
dependency to add, and we decide tag by tag what survives. A conversion library (html2text,
markdownify) would produce full Markdown — headings, images, code, raw HTML passed through —
which the subset refuses, so its output would need the same tag-by-tag filtering anyway.

What survives: paragraphs (p, div, headings, …), line breaks, **bold**, *italics*, links with
absolute http(s)/mailto targets, and lists (flattened to one level). Everything else becomes
text; script/style/… contents are dropped. The text itself is escaped, so nothing a feed writes
(`*`, `[`, `<b>` as text, `# ` at a line start, `{{…}}`) can turn into Markdown, raw HTML or a
personal field. The result is checked with the subset's own checker; should anything still be
outside it, the text falls back to plain text with every punctuation character escaped.
"""

from __future__ import annotations

import html
import re
import string
import unicodedata
from dataclasses import dataclass, field
from html.parser import HTMLParser

from newsletter.content.fields import field_problems
from newsletter.content.markdown import is_absolute_link, located_markdown_problems

_DROP = {"script", "style", "template", "noscript", "iframe", "object", "svg", "math", "head",
         "title", "select", "textarea", "canvas", "audio", "video"}
_BLOCK = {"p", "div", "section", "article", "aside", "header", "footer", "main", "nav", "blockquote",
          "pre", "table", "thead", "tbody", "tr", "figure", "figcaption", "dl", "dt", "dd", "address",
          "hr", "h1", "h2", "h3", "h4", "h5", "h6", "details", "summary", "form", "fieldset"}
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_CELLS = {"td", "th"}
_BOLD = {"b", "strong"}
_ITALIC = {"i", "em", "cite"}
_LINE_BREAKS = str.maketrans({"\u2028": "\n", "\u2029": "\n", "\x85": "\n", "\r": "\n", "\t": " "})


def clean(text: str) -> str:
    """`text` without what YAML or an e-mail cannot carry: control characters (newlines stay),
    byte-order marks, lone surrogates; Unicode line separators become newlines."""
    text = text.replace("\r\n", "\n").translate(_LINE_BREAKS)
    return "".join(
        ch for ch in text
        if ch == "\n" or (unicodedata.category(ch) not in ("Cc", "Cs", "Co", "Cn")
                          and ch not in "\ufeff\ufffe\uffff")
    )


def one_line(text: str) -> str:
    """Plain text on one line (titles, places), braces of personal fields defused."""
    text = " ".join(clean(text).split())
    return text.replace("{{", "{ {").replace("}}", "} }")


@dataclass
class _Segment:
    text: str
    bold: bool = False
    italic: bool = False
    href: str | None = None
    hard_break: bool = False


@dataclass
class _Block:
    kind: str  # "p", "ul" (an item of a bullet list) or "ol" (of a numbered one)
    segments: list[_Segment] = field(default_factory=list)


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[_Block] = []
        self.current = _Block("p")
        self.bold = self.italic = self.drop = 0
        self.href: str | None = None
        self.lists: list[str] = []

    def flush(self, kind: str = "p") -> None:
        if any(s.text.strip() for s in self.current.segments):
            self.blocks.append(self.current)
        self.current = _Block(kind)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _DROP:
            self.drop += 1
        elif tag in _BLOCK:
            self.flush()
            if tag in _HEADINGS:
                self.bold += 1
        elif tag in ("ul", "ol"):
            self.flush()
            self.lists.append(tag)
        elif tag == "li":
            self.flush(self.lists[-1] if self.lists else "ul")
        elif tag == "br":
            self.current.segments.append(_Segment("", hard_break=True))
        elif tag in _CELLS:
            self.current.segments.append(_Segment(" "))
        elif tag in _BOLD:
            self.bold += 1
        elif tag in _ITALIC:
            self.italic += 1
        elif tag == "a":
            self.href = _link_target(dict(attrs).get("href"))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _DROP:  # `<br/>`, `<hr/>`, `<img/>`; a self-closed `<script/>` has no content
            self.handle_starttag(tag, attrs)
            if tag not in ("br", "hr", "img"):
                self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _DROP:
            self.drop = max(0, self.drop - 1)
        elif tag in _BLOCK:
            self.flush()
            if tag in _HEADINGS:
                self.bold = max(0, self.bold - 1)
        elif tag in ("ul", "ol"):
            self.flush()
            if self.lists:
                self.lists.pop()
        elif tag == "li":
            self.flush()
        elif tag in _BOLD:
            self.bold = max(0, self.bold - 1)
        elif tag in _ITALIC:
            self.italic = max(0, self.italic - 1)
        elif tag == "a":
            self.href = None

    def handle_data(self, data: str) -> None:
        if not self.drop:
            self.current.segments.append(
                _Segment(clean(data), bool(self.bold), bool(self.italic), self.href))


def _link_target(href: str | None) -> str | None:
    """A link target the subset allows (absolute http(s) or mailto), made Markdown-safe."""
    if not href:
        return None
    href = clean(href).strip()
    for char, code in ((" ", "%20"), ("\n", ""), ("(", "%28"), (")", "%29"), ("<", "%3C"),
                       (">", "%3E"), ("\\", "%5C"), ("`", "%60")):
        href = href.replace(char, code)
    if "{{" in href or "%7B%7B" in href.upper() or not is_absolute_link(href):
        return None
    return href


def _read(markup: str) -> list[_Block]:
    reader = _Reader()
    reader.feed(markup)
    reader.close()
    reader.flush()
    return reader.blocks


# --------------------------------------------------------------------------- escaping

_ENTITY = re.compile(r"&(#?[0-9A-Za-z]+;)")
_INLINE = str.maketrans({c: "\\" + c for c in "\\`*_[]<"})
_LIST_START = re.compile(r"^(\d{1,9})([.)])(?=\s|$)")


def _escape_inline(text: str) -> str:
    text = _ENTITY.sub(r"\\&\1", text.translate(_INLINE))
    return text.replace("{{", "\\{\\{").replace("}}", "\\}\\}")


def _escape_line_start(line: str) -> str:
    if line[:1] in ("#", ">", "=", "~", "|") or (line[:1] in "-+" and line[1:2] in ("", " ")):
        return "\\" + line
    return _LIST_START.sub(r"\1\\\2", line)


def _escape_all(text: str) -> str:
    """Every ASCII punctuation character escaped: nothing left that Markdown could interpret."""
    return "".join("\\" + c if c in string.punctuation else c for c in text)


# --------------------------------------------------------------------------- writing


def _words(segments: list[_Segment]) -> list[_Segment]:
    """Whitespace collapsed across segments; none at the start, end or around line breaks."""
    out: list[_Segment] = []
    for seg in segments:
        if seg.hard_break:
            if out and not out[-1].hard_break:
                out[-1].text = out[-1].text.rstrip()
                out.append(seg)
            continue
        text = re.sub(r"\s+", " ", seg.text)
        if not out or out[-1].hard_break or out[-1].text.endswith(" "):
            text = text.lstrip()
        if text:
            out.append(_Segment(text, seg.bold, seg.italic, seg.href))
    while out and out[-1].hard_break:
        out.pop()
    if out:
        out[-1].text = out[-1].text.rstrip()
    return [s for s in out if s.hard_break or s.text]


def _styled(text: str, bold: bool, italic: bool) -> str:
    core = text.strip()
    if not core:
        return text
    lead, trail = text[: len(text) - len(text.lstrip())], text[len(text.rstrip()):]
    marker = "*" * (2 * bold + italic)
    return f"{lead}{marker}{_escape_inline(core)}{marker}{trail}"


def _write_block(block: _Block, *, list_item: bool) -> str:
    segments = _words(block.segments)
    if list_item:  # a break inside a list item would need indentation: a space does
        segments = _words([_Segment(" ") if s.hard_break else s for s in segments])
    out = ""
    i = 0
    while i < len(segments):
        seg = segments[i]
        if seg.hard_break:
            out += "\\\n"
            i += 1
            continue
        j = i
        while j < len(segments) and not segments[j].hard_break and segments[j].href == seg.href:
            j += 1
        inner = "".join(_styled(s.text, s.bold, s.italic) for s in segments[i:j])
        if seg.href and inner.strip():
            lead, trail = inner[: len(inner) - len(inner.lstrip())], inner[len(inner.rstrip()):]
            if not lead and out.endswith("!"):  # `![` would make it an image
                out = out[:-1] + "\\!"
            out += f"{lead}[{inner.strip()}]({seg.href}){trail}"
        else:
            out += inner
        i = j
    return "\n".join(_escape_line_start(line) for line in out.split("\n"))


def _plain_block(block: _Block) -> str:
    return " ".join("".join(" " if s.hard_break else s.text for s in block.segments).split())


def _join(blocks: list[tuple[str, str]]) -> str:
    """Blocks (kind, text) as Markdown: paragraphs apart, items of one list together."""
    out: list[str] = []
    numbers = 0
    previous = ""
    for kind, text in blocks:
        if kind == "ol":
            numbers = numbers + 1 if previous == "ol" else 1
            item = f"{numbers}. {text}"
        elif kind == "ul":
            item = f"- {text}"
        else:
            item = text
        if out:
            out.append("\n" if kind != "p" and kind == previous else "\n\n")
        out.append(item)
        previous = kind
    return "".join(out)


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:-–")
    return f"{cut} …"


def _safe(markdown: str) -> bool:
    return not located_markdown_problems(markdown) and not field_problems(markdown)


def html_to_markdown(markup: str, limit: int = 600) -> tuple[str, bool]:
    """HTML (a feed summary) as Markdown of the subset, at most about `limit` characters of
    whole paragraphs (or the first one cut at a word): (text, whether it was shortened)."""
    blocks = _read(markup)
    kept: list[tuple[str, str]] = []
    length = 0
    shortened = False
    for block in blocks:
        text = _write_block(block, list_item=block.kind != "p")
        if kept and length + len(text) > limit:
            shortened = True
            break
        if not kept and len(text) > limit:  # one long paragraph: cut it as plain text
            plain = _plain_block(block)
            text = _escape_line_start(_escape_inline(_cut(plain, limit)))
            kept.append(("p", text))
            shortened = len(plain) > limit or len(blocks) > 1
            break
        kept.append((block.kind, text))
        length += len(text)
    markdown = _join(kept)
    if markdown and not _safe(markdown):
        plain = " ".join(_plain_block(b) for b in blocks)
        markdown = _escape_all(_cut(plain, limit))
    return markdown, shortened


def text_to_markdown(text: str, limit: int = 600) -> tuple[str, bool]:
    """Plain text (an iCalendar DESCRIPTION, a text/plain feed summary) as Markdown of the
    subset: blank lines separate paragraphs, single line breaks stay line breaks."""
    paragraphs = re.split(r"\n\s*\n", clean(text).strip())
    markup = "".join("<p>" + html.escape(p).replace("\n", "<br>") + "</p>" for p in paragraphs)
    return html_to_markdown(markup, limit)


def html_to_text(markup: str) -> str:
    """HTML (a title of type html) as plain text on one line."""
    return one_line(" ".join(_plain_block(b) for b in _read(markup)))


def looks_like_html(text: str) -> bool:
    return bool(re.search(r"<(?:p|br|a|b|i|em|strong|div|ul|ol|li|span|h[1-6])\b[^>]*>", text, re.I))
