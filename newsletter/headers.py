"""What may go into a mail header: one rule for every way a value gets there (the issue file,
newsletter.toml, the sign-up form, a CSV import, the command line).

A header line ends at CR or LF, so those would let a value add headers of its own (`Bcc:`);
the other C0 and C1 controls, NEL and the Unicode line/paragraph separators break or are
rewritten by mail software in ways that turn a valid message into a rejected one.
"""

from __future__ import annotations

import re

UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def first_unsafe(value: str) -> str | None:
    """The first character of `value` that must not be in a header, or None."""
    found = UNSAFE.search(value)
    return found.group() if found else None


def describe(char: str) -> str:
    """`U+000A (line feed)`-style name for an error message."""
    names = {"\n": "line feed", "\r": "carriage return", "\t": "tab", "\x85": "next line (NEL)",
             "\u2028": "line separator", "\u2029": "paragraph separator"}
    return f"U+{ord(char):04X}" + (f" ({names[char]})" if char in names else " (a control character)")
