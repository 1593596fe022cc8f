"""Personal fields in an issue's texts: `{{Kommune|Ihre Kommune}}`, `{{name|Leserin, Leser}}`.

Syntax (docs/personalisation.md): two braces, the field's name — `name` (the subscriber's name)
or an attribute of the subscriber list (a CSV column such as `Kommune`) —, a `|` and the text
for readers without a value (may be empty: `{{Kommune|}}`), two braces. Allowed in Markdown
texts (intro, outro, bodies) and in the greeting; anywhere else (titles, subject, link
targets) it is an error, as is a field without `|` outside the greeting.

Why braces and not Jinja: a field is a hole in the message prepared once, filled per recipient
as bytes (delivery/message.py) — nothing is ever evaluated, so a subscriber named
`{{ config }}` or `%%F0%%` is printed as it is. Two braces because single ones occur in
ordinary text and the double form is what editors know from other mailing tools.

Rendering replaces each distinct field by a placeholder `%%F<n>%%` (ASCII without `=`, `<`, `&`,
so HTML escaping, CSS inlining, MJML and quoted-printable leave it whole) and keeps the table
`FieldRef`s in order; the greeting becomes `%%GREETING%%`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Two braces, then anything on one line up to the next two closing ones — never across another
# opening pair, so an unclosed field is reported where it is instead of swallowing the next one.
FIELD = re.compile(r"\{\{((?:(?!\{\{|\}\})[^\n])*)\}\}")
NAME_FIELD = "name"
GREETING_PLACEHOLDER = "%%GREETING%%"
DEFAULT_GREETING_FALLBACK = "Liebe Leserinnen und Leser,"
_PLACEHOLDER = re.compile(r"%%F(\d+)%%")


@dataclass(frozen=True)
class FieldRef:
    name: str
    fallback: str | None  # None: no `|` (only in the greeting, whose fallback is the whole line)

    def source(self) -> str:
        return "{{" + self.name + ("" if self.fallback is None else "|" + self.fallback) + "}}"


def placeholder(index: int) -> str:
    return f"%%F{index}%%"


def placeholder_index(text: str) -> list[int]:
    """The field indexes of the placeholders in `text`, in order."""
    return [int(m.group(1)) for m in _PLACEHOLDER.finditer(text)]


def parse(inner: str) -> FieldRef | str:
    """The field written between the braces, or the message saying what is wrong with it."""
    name, bar, fallback = inner.partition("|")
    name = name.strip()
    if not name:
        return "a personal field needs a name: {{name|Leserin, Leser}} or {{Kommune|Ihre Kommune}}"
    if "{" in name or "}" in name or "\n" in name or "{" in fallback or "}" in fallback:
        return f"`{{{{{inner}}}}}` is not a personal field: write {{{{Kommune|Ihre Kommune}}}}"
    return FieldRef(name, fallback.strip() if bar else None)


def fields_in(text: str) -> list[FieldRef]:
    """The well-formed fields of `text`, in order (errors: `field_problems`)."""
    return [found for m in FIELD.finditer(text) if isinstance(found := parse(m.group(1)), FieldRef)]


def field_problems(text: str, *, greeting: bool = False) -> list[tuple[int, str]]:
    """(0-based line, message) for every malformed field of `text`; outside the greeting every
    field needs its fallback."""
    problems = []
    for m in FIELD.finditer(text):
        line = text.count("\n", 0, m.start())
        found = parse(m.group(1))
        if isinstance(found, str):
            problems.append((line, found))
        elif found.fallback is None and not greeting:
            problems.append((line, f"`{found.source()}` needs a text for readers without a value: "
                                   f"{{{{{found.name}|…}}}} (or {{{{{found.name}|}}}} for none)"))
    rest = FIELD.sub("", text)
    if "{{" in rest or "}}" in rest:
        problems.append((text.count("\n", 0, text.find("{{") if "{{" in rest else text.find("}}")),
                         "unmatched `{{` or `}}`: a personal field is written {{Kommune|Ihre Kommune}}"))
    return problems


def has_field(text: str) -> bool:
    return "{{" in text or "}}" in text


@dataclass(frozen=True)
class Greeting:
    text: str  # e.g. "Guten Tag {{name}},"
    fallback: str = DEFAULT_GREETING_FALLBACK  # when a field of `text` has no value

    def fields(self) -> list[FieldRef]:
        return fields_in(self.text)
