"""Personal fields while rendering, and their values per reader — one rule for the mail
(delivery/message.py fills the holes as bytes) and the preview (strings).

While an issue renders, the Markdown filters pass every text through `fill`: inside
`personal("holes")` (the e-mail's HTML and text part, one table for both, so the indexes agree)
each distinct field becomes the placeholder `%%F<n>%%`; inside `personal("fallback")` (the web
version, the .ics files: public, nobody's data) it becomes its fallback text. The greeting is
`GREETING_PLACEHOLDER` in the mail and its fallback line on the web.

`values_for` decides what a reader sees: the field's value (the subscriber's name for `name`,
else their attribute of that name), or the fallback when it is missing or blank; the greeting's
line when every field in it has a value, else the greeting's fallback line. Values are plain
text: escaping for HTML happens where they are inserted, and nothing is ever evaluated.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

from newsletter.content.fields import FIELD, NAME_FIELD, FieldRef, Greeting, parse, placeholder

Mode = Literal["holes", "fallback"]


@dataclass
class Holes:
    mode: Mode
    fields: list[FieldRef] = field(default_factory=list)
    _index: dict[FieldRef, int] = field(default_factory=dict)

    def substitute(self, text: str) -> str:
        def replace(m: object) -> str:
            found = parse(m.group(1))  # type: ignore[attr-defined]
            if not isinstance(found, FieldRef):
                return m.group(0)  # type: ignore[attr-defined]  # validate reported it
            if self.mode == "fallback":
                return found.fallback or ""
            if found not in self._index:
                self._index[found] = len(self.fields)
                self.fields.append(found)
            return placeholder(self._index[found])

        return FIELD.sub(replace, text)


_holes: ContextVar[Holes | None] = ContextVar("newsletter_personal_holes", default=None)


@contextmanager
def personal(mode: Mode, holes: Holes | None = None) -> Iterator[Holes]:
    """Fields in texts rendered inside the block become holes (or fallbacks)."""
    current = holes or Holes(mode)
    token = _holes.set(current)
    try:
        yield current
    finally:
        _holes.reset(token)


def fill(text: str) -> str:
    """`text` with its fields replaced as the enclosing `personal()` block says (outside one: as
    it is)."""
    holes = _holes.get()
    if holes is None or "{{" not in text:
        return text
    return holes.substitute(text)


def value_of(ref: FieldRef, name: str | None, attributes: Mapping[str, object]) -> str | None:
    """The reader's own value of a field, None when they have none."""
    raw = name if ref.name == NAME_FIELD else attributes.get(ref.name)
    text = "" if raw is None else str(raw).strip()
    return text or None


def values_for(fields: tuple[FieldRef, ...] | list[FieldRef], greeting: Greeting | None,
               name: str | None, attributes: Mapping[str, object]) -> tuple[list[str], str]:
    """Per field index the text this reader sees, and their greeting line ("" without one)."""
    values = [value_of(ref, name, attributes) or (ref.fallback or "") for ref in fields]
    line = ""
    if greeting is not None:
        own = [value_of(ref, name, attributes) for ref in greeting.fields()]
        if all(v is not None for v in own):
            in_order = iter(own)  # the greeting was validated: every match is one of its fields
            line = FIELD.sub(lambda _match: str(next(in_order)), greeting.text)
        else:
            line = greeting.fallback
    return values, line
