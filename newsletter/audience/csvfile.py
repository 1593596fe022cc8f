"""Reading a subscriber CSV as editors really have it: the rows, their problems, duplicates.

A header row naming the e-mail column (``email``, ``E-Mail``, ``Mail`` …), an optional name
(``name`` or ``Vorname`` + ``Nachname``); every other column is kept as a free attribute. UTF-8
with or without BOM, UTF-16 with BOM, or Windows-1252 (German Excel); comma, semicolon or tab
separated. Every bad row is reported with the physical line where its record starts. Nothing
here touches the database: `audience/importer.py` applies the rows to a list.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from newsletter.audience.addresses import InvalidEmail, email_key, normalize_email
from newsletter.audience.statuses import STATUSES
from newsletter.errors import NewsletterError, Problem

# on_progress(phase, done, total): "read" counts physical lines, "write" database rows written.
ProgressCallback = Callable[[str, int, int], None]

EMAIL_HEADERS = {"email", "mail", "emailadresse", "emailaddress", "mailadresse", "mailaddress",
                 "emailadr", "mailadr"}
NAME_HEADERS = {"name", "fullname", "displayname", "vollername"}
FIRST_NAME_HEADERS = {"vorname", "firstname", "givenname"}
LAST_NAME_HEADERS = {"nachname", "lastname", "surname", "familienname", "familyname", "zuname"}
# Columns written by `audience/export.py`; here they are read (status) or ignored (dates), never attributes.
STATUS_HEADER = "status"
DATE_HEADERS = {"createdat", "updatedat"}


def _header_key(name: str) -> str:
    return re.sub(r"[\s._-]+", "", name.strip().lower())


@dataclass
class CsvRow:
    line: int
    email: str
    key: str
    name: str | None
    attributes: dict[str, str]
    status: str | None  # from a `status` column (an export), else None


@dataclass
class Duplicate:
    line: int
    first_line: int
    email: str


@dataclass
class ParsedCsv:
    file: str
    encoding: str
    delimiter: str
    rows: list[CsvRow]
    problems: list[Problem]
    duplicates: list[Duplicate]
    records: int



def decode(data: bytes, file: str) -> tuple[str, str]:
    """The text of a CSV file and the encoding found: UTF-8 (BOM or not), UTF-16 BOM, cp1252."""
    if data.startswith(codecs.BOM_UTF8):
        candidates = [("utf-8-sig", data[len(codecs.BOM_UTF8):], "utf-8")]
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        candidates = [("utf-16", data, "utf-16")]
    else:
        candidates = [("utf-8", data, "utf-8"), ("cp1252", data, "cp1252")]
    failure: tuple[bytes, UnicodeDecodeError] | None = None
    for name, payload, codec in candidates:
        try:
            return payload.decode(codec), name
        except UnicodeDecodeError as exc:
            failure = (payload, exc)
    assert failure is not None
    payload, exc = failure
    line = payload[: exc.start].count(b"\n") + 1
    tried = " nor ".join(n for n, _, _ in candidates)
    raise NewsletterError(problems=[Problem(
        file, line, None, "",
        f"cannot read the file as {tried} (byte 0x{payload[exc.start]:02x}); save it as UTF-8 CSV",
    )])


def detect_delimiter(text: str) -> str:
    """Comma, semicolon or tab: whichever the header line has most of (comma on a tie)."""
    header = text.lstrip("\r\n").split("\n", 1)[0]
    counts = {d: header.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


def read_csv(path: Path, *, on_progress: ProgressCallback | None = None) -> ParsedCsv:
    """Parse and validate a subscriber CSV. Raises NewsletterError if the file is unusable."""
    file = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NewsletterError(f"{file}: cannot read the file: {exc.strerror}") from None
    text, encoding = decode(data, file)
    delimiter = detect_delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    total_lines = text.count("\n") + 1
    rows: list[CsvRow] = []
    problems: list[Problem] = []
    duplicates: list[Duplicate] = []
    seen: dict[str, CsvRow] = {}
    header: list[str] | None = None
    roles: _Roles | None = None
    records = 0
    previous_end = 0
    try:
        for record in reader:
            line = previous_end + 1  # physical line where this record starts
            previous_end = reader.line_num
            if on_progress and records % 2000 == 0:
                on_progress("read", previous_end, total_lines)
            if not any(cell.strip() for cell in record):
                continue
            if header is None:
                header = [cell.strip() for cell in record]
                roles = _roles(header, file, line)
                continue
            assert roles is not None
            records += 1
            row = _row(record, header, roles, file, line, previous_end, delimiter, problems)
            if row is None:
                continue
            first = seen.get(row.key)
            if first is None:
                seen[row.key] = row
                rows.append(row)
            else:
                duplicates.append(Duplicate(line, first.line, row.email))
                if not first.name and row.name:
                    first.name = row.name
                for key, value in row.attributes.items():
                    first.attributes.setdefault(key, value)
    except csv.Error as exc:
        raise NewsletterError(problems=[Problem(file, previous_end + 1, None, "",
                                                f"CSV syntax error: {exc}")]) from None
    if header is None:
        raise NewsletterError(problems=[Problem(file, None, None, "",
                                                "the file is empty; expected a header row with an "
                                                "`email` column")])
    if on_progress:
        on_progress("read", total_lines, total_lines)
    return ParsedCsv(file, encoding, delimiter, rows, problems, duplicates, records)


@dataclass
class _Roles:
    email: int
    name: int | None
    first: int | None
    last: int | None
    status: int | None
    attributes: list[tuple[int, str]]  # (column index, attribute name) of the free columns


def _roles(header: list[str], file: str, line: int) -> _Roles:
    keys = [_header_key(h) for h in header]

    def find(names: set[str]) -> list[int]:
        return [i for i, k in enumerate(keys) if k in names]

    emails = find(EMAIL_HEADERS)
    if not emails:
        looks_like_data = any("@" in h for h in header)
        hint = (" — the first line looks like data; add a header line such as `email,name`"
                if looks_like_data else "")
        raise NewsletterError(problems=[Problem(
            file, line, None, "",
            f"no e-mail column in the header (found: {', '.join(header) or 'nothing'}); "
            f"name it `email`, `E-Mail` or `Mail`{hint}",
        )])
    if len(emails) > 1:
        raise NewsletterError(problems=[Problem(
            file, line, None, "",
            f"more than one e-mail column: {', '.join(header[i] for i in emails)}; keep one",
        )])
    seen: dict[str, int] = {}
    for i, name in enumerate(header):
        if not name:
            continue
        if name in seen:
            raise NewsletterError(problems=[Problem(
                file, line, None, "", f"column `{name}` appears twice in the header "
                f"(columns {seen[name] + 1} and {i + 1})")])
        seen[name] = i
    names = find(NAME_HEADERS)
    firsts, lasts = find(FIRST_NAME_HEADERS), find(LAST_NAME_HEADERS)
    statuses = find({STATUS_HEADER})
    roles = _Roles(
        email=emails[0],
        name=names[0] if names else None,
        first=firsts[0] if firsts and not names else None,
        last=lasts[0] if lasts and not names else None,
        status=statuses[0] if statuses else None,
        attributes=[],
    )
    used = {roles.email, roles.name, roles.first, roles.last, roles.status,
            *(i for i, k in enumerate(keys) if k in DATE_HEADERS)}
    roles.attributes = [(i, name or f"column {i + 1}") for i, name in enumerate(header) if i not in used]
    return roles


def _row(record: list[str], header: list[str], roles: _Roles, file: str, line: int, end: int,
         delimiter: str, problems: list[Problem]) -> CsvRow | None:
    def problem(column: str, message: str) -> None:
        problems.append(Problem(file, line, None, column, message))

    if len(record) > len(header) and any(c.strip() for c in record[len(header):]):
        problem("", f"{len(record)} fields, but the header has {len(header)} "
                f"(is a `{delimiter}` inside a value that is not quoted?)")
        return None
    if len(record) < len(header):
        record = record + [""] * (len(header) - len(record))
    if end > line:
        # A record over several lines is legal (quoted line breaks), but one that swallows what
        # looks like further rows almost always means a quote was never closed.
        for i, cell in enumerate(record):
            later = cell.splitlines()[1:]
            if any("@" in part and delimiter in part for part in later):
                problem(header[i] or f"column {i + 1}",
                        f"the value runs from line {line} to {end} and contains what look like "
                        "further rows: a quote (\") is probably not closed")
                return None
    email_column = header[roles.email]
    raw_email = record[roles.email].strip()
    if not raw_email:
        problem(email_column, "no e-mail address")
        return None
    try:
        email = normalize_email(raw_email)
    except InvalidEmail as exc:
        problem(email_column, str(exc))
        return None
    status: str | None = None
    if roles.status is not None:
        status = record[roles.status].strip().lower() or None
        if status is not None and status not in STATUSES:
            problem(header[roles.status],
                    f"unknown status `{record[roles.status].strip()}`; one of {', '.join(STATUSES)} "
                    "(or rename the column if it means something else)")
            return None
    if roles.name is not None:
        name = record[roles.name].strip()
    else:
        parts = [record[i].strip() for i in (roles.first, roles.last) if i is not None]
        name = " ".join(p for p in parts if p)
    if "\n" in name or "\r" in name:
        problem(header[roles.name] if roles.name is not None else "name", "the name contains a line break")
        return None
    attributes = {key: value for i, key in roles.attributes if (value := record[i].strip())}
    return CsvRow(line, email, email_key(email), name or None, attributes, status)
