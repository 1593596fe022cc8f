"""What a subscriber's name may be: one rule for every way a name comes in (CSV import,
`subscribers add`, the sign-up form) and for every name that goes out in a `To:` header.

Per class of character:

* TAB, VT, FF, NEL, U+2028, U+2029 → a space. Spreadsheets and word processors put them where
  a space was meant (a name pasted from a table cell or a PDF); nothing of the name is lost.
* Whitespace around the name (a line break at the end of a spreadsheet cell too) is trimmed,
  runs of whitespace inside become one space: invisible differences, no meaning in a name.
* Any other C0 / C1 control, DEL, and CR or LF inside the name → refused. They mean a broken
  file or a wrong encoding (a quote never closed, binary data), not a name; an editor must look
  at it. A line break would also let a value add headers of its own (`headers.py`).
* Lone surrogates → refused: not text; no database or mail can hold them.
* Longer than MAX_NAME characters → refused, not cut: a cut name is a wrong name, and nobody's
  name is that long (the sign-up form cuts at the same length).

Entry points react to a refusal by what they can do: the import reports the row and the
command line says why (`clean_name` raises); text from strangers (the form) and names stored
before this rule are never an error (`name_or_none`: no name, the bare address).
"""

from __future__ import annotations

from newsletter.errors import NewsletterError
from newsletter.headers import describe, first_unsafe

MAX_NAME = 100  # characters, after cleaning; the sign-up form's field has the same limit
_AS_SPACE = str.maketrans(dict.fromkeys("\t\x0b\x0c\x85\u2028\u2029", " "))


class InvalidName(NewsletterError):
    """A name that cannot be stored or sent; the message says why."""


def clean_name(raw: str | None) -> str | None:
    """`raw` as it is stored and sent (None: no name), or InvalidName saying why not."""
    if raw is None:
        return None
    if raw.isprintable():  # the usual name: no control, separator but space, surrogate (what
        text = " ".join(raw.split())  # `first_unsafe` looks for), so only the spaces to tidy
        if len(text) <= MAX_NAME:
            return text or None
    text = raw.strip()
    if first_unsafe(text) is not None:
        text = text.translate(_AS_SPACE)
        bad = first_unsafe(text)
        if bad is not None:
            raise InvalidName(f"the name contains {describe(bad)}")
    text = " ".join(text.split())
    if len(text) > MAX_NAME:
        raise InvalidName(f"the name is {len(text):,} characters long (at most {MAX_NAME})")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName("the name is not valid Unicode text (a lone surrogate)") from None
    return text or None


def name_or_none(raw: str | None) -> str | None:
    """`clean_name`, but a name it refuses is dropped instead of reported: for text typed into
    the sign-up form and for names stored before the rule existed (sent to the bare address)."""
    try:
        return clean_name(raw)
    except InvalidName:
        return None
