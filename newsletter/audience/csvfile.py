"""Reading a subscriber CSV as editors really have it: the rows, their problems, duplicates.

A header row naming the e-mail column (``email``, ``E-Mail``, ``Mail`` …), an optional name
(``name`` or ``Vorname`` + ``Nachname``); every other column is kept as a free attribute. UTF-8
with or without BOM, UTF-16 with BOM, or Windows-1252 (German Excel); comma, semicolon or tab
separated. Every bad row is reported with the physical line where its record starts. Nothing
here touches the database: `audience/importer.py` applies the rows to a list.

The file is streamed: `open_csv` finds the encoding (one pass over the bytes, 1 MiB at a time)
and the header, `CsvFile.chunks` then yields the checked rows a chunk at a time, so a file of a
million rows never sits in memory. `read_csv` is the all-in-memory form for small files.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import os
import pickle
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from newsletter.audience.addresses import InvalidEmail, normalize_email
from newsletter.audience.names import InvalidName, clean_name
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

_BLOCK = 1 << 20  # bytes per read while finding the encoding
# (line, email, email_key, name, attributes as JSON, status): a row as the importer stages it.
StagedRow = tuple[int, str, str, str | None, str, str | None]
_quote = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def attributes_json(attributes: dict[str, str]) -> str:
    """`json.dumps(attributes)` (what SQLAlchemy's JSON type writes) for the str → str dicts of
    a CSV row, at half the cost: the import writes a million of them."""
    if not attributes:
        return "{}"
    return "{" + ", ".join(f"{_quote(k)}: {_quote(v)}" for k, v in attributes.items()) + "}"


def _header_key(name: str) -> str:
    return re.sub(r"[\s._-]+", "", name.strip().lower())


@dataclass(slots=True)
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


def merge_duplicate(first: CsvRow, later: CsvRow) -> None:
    """A later row of the same person: the first row wins, the later one fills in what the
    first lacks (the name, attribute columns the first left empty). Its status is ignored."""
    if not first.name and later.name:
        first.name = later.name
    for key, value in later.attributes.items():
        first.attributes.setdefault(key, value)


@dataclass
class ParsedCsv:
    file: str
    encoding: str
    delimiter: str
    rows: list[CsvRow]
    problems: list[Problem]
    duplicates: list[Duplicate]
    records: int


def _undecodable(file: str, tried: list[str], byte: int, line: int) -> NewsletterError:
    return NewsletterError(problems=[Problem(
        file, line, None, "",
        f"cannot read the file as {' nor '.join(tried)} (byte 0x{byte:02x}); save it as UTF-8 CSV",
    )])


def detect_delimiter(text: str) -> str:
    """Comma, semicolon or tab: whichever the header line has most of (comma on a tie)."""
    header = text.lstrip("\r\n").split("\n", 1)[0]
    counts = {d: header.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


def _find_encoding(handle: BinaryIO, file: str) -> tuple[str, str, int, int]:
    """(encoding name, codec, bytes to skip, number of lines) of an open file: the first
    candidate that decodes the whole file, checked a block at a time."""
    start = handle.read(4)
    if start.startswith(codecs.BOM_UTF8):
        candidates, skip = [("utf-8-sig", "utf-8")], len(codecs.BOM_UTF8)
    elif start.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        candidates, skip = [("utf-16", "utf-16")], 0
    else:
        candidates, skip = [("utf-8", "utf-8"), ("cp1252", "cp1252")], 0
    failure = (0, 0)  # (offset in the payload, byte) where the last candidate failed
    for name, codec in candidates:
        handle.seek(skip)
        newlines = _decoded_newlines(handle, codec)
        if isinstance(newlines, int):
            return name, codec, skip, newlines + 1
        failure = newlines
    at, byte = failure
    handle.seek(skip)
    raise _undecodable(file, [n for n, _ in candidates], byte, handle.read(at).count(b"\n") + 1)


def _decoded_newlines(handle: BinaryIO, codec: str) -> int | tuple[int, int]:
    """The number of line feeds in the rest of the file decoded with `codec`, or (offset, byte)
    of the first byte it cannot decode."""
    decoder = codecs.getincrementaldecoder(codec)()
    offset = 0  # where the block read next starts
    newlines = 0
    block = b""
    while True:
        block = handle.read(_BLOCK)
        pending = len(getattr(decoder, "buffer", b""))  # bytes of a character split by a block
        try:
            newlines += decoder.decode(block, final=not block).count("\n")
        except UnicodeDecodeError as exc:
            return offset - pending + exc.start, exc.object[exc.start]
        if not block:
            return newlines
        offset += len(block)


class CsvFile:
    """An open subscriber CSV: encoding, delimiter and header found; `chunks` reads the rows.

    `records` (non-blank data records) and `problems` (rows refused, FILE:LINE) grow as the
    rows are read. Use as a context manager, or `close()`.
    """

    def __init__(self, path: Path, found: tuple[str, str, int, int] | None = None) -> None:
        self.path = path
        self.file = str(path)
        try:
            self._handle: BinaryIO = path.open("rb")
        except OSError as exc:
            raise NewsletterError(f"{self.file}: cannot read the file: {exc.strerror}") from None
        try:
            # `found`: what `_find_encoding` said in the process that hands the file to a helper.
            self.found = found or _find_encoding(self._handle, self.file)
            self.encoding, codec, skip, self.total_lines = self.found
            self._handle.seek(skip)
            self._text = io.TextIOWrapper(self._handle, encoding=codec, newline="")
            lines = self._lines_to_header()
            self.delimiter = detect_delimiter("".join(lines))
            self._reader = csv.reader(itertools.chain(lines, self._text), delimiter=self.delimiter)
            self.records = 0
            self.problems: list[Problem] = []
            self._previous_end = 0
            self._header, self._roles = self._read_header()
        except BaseException:
            self._handle.close()
            raise

    @property
    def last_line(self) -> int:
        """The physical line where the last record read ends."""
        return self._previous_end

    def __enter__(self) -> CsvFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._handle.close()

    def _lines_to_header(self) -> list[str]:
        """The physical lines up to and including the first one that is not empty (the header
        line the delimiter is taken from); read again by the CSV reader."""
        lines: list[str] = []
        for line in self._text:
            lines.append(line)
            if line.strip("\r\n"):
                break
        return lines

    def _read_header(self) -> tuple[list[str], _Roles]:
        for record, line in self._records():
            if not any(cell.strip() for cell in record):
                continue
            header = [cell.strip() for cell in record]
            return header, _roles(header, self.file, line)
        raise NewsletterError(problems=[Problem(self.file, None, None, "",
                                                "the file is empty; expected a header row with an "
                                                "`email` column")])

    def _records(self) -> Iterator[tuple[list[str], int]]:
        """(record, physical line where it starts)."""
        reader = self._reader
        try:
            for record in reader:
                line = self._previous_end + 1
                self._previous_end = reader.line_num
                yield record, line
        except csv.Error as exc:
            raise NewsletterError(problems=[Problem(self.file, self._previous_end + 1, None, "",
                                                    f"CSV syntax error: {exc}")]) from None

    def chunks(self, size: int, on_progress: ProgressCallback | None = None) -> Iterator[list[CsvRow]]:
        """The valid rows, `size` records at a time (a chunk may be shorter, or empty when all
        its records were refused), in file order; duplicates are left to the caller
        (`merge_duplicate`). Refused rows go to `problems`."""
        return self._chunks(size, on_progress, _row, lambda row: row)

    def staged_chunks(self, size: int,
                      on_progress: ProgressCallback | None = None) -> Iterator[list[StagedRow]]:
        """`chunks` as the tuples the importer stages (the importer has a large file read by
        `read_helper` in a process of its own)."""
        return self._chunks(size, on_progress, _staged_row, _as_staged)

    def _chunks(self, size: int, on_progress: ProgressCallback | None,
                fast: Callable[[list[str], _Roles, int], Any], convert: Callable[[CsvRow], Any],
                ) -> Iterator[list[Any]]:
        reader, roles, width, strip = self._reader, self._roles, len(self._header), str.strip
        chunk: list[Any] = []
        read = 0
        try:
            for record in reader:
                line = self._previous_end + 1  # the physical line where the record starts
                self._previous_end = end = reader.line_num
                if on_progress and read % 2000 == 0:
                    on_progress("read", end, self.total_lines)
                if not any(map(strip, record)):
                    continue
                read += 1
                row = fast(record, roles, line) if len(record) == width and end == line else None
                if row is None:  # anything unusual: the careful path, which says what is wrong
                    checked = self._checked_row(record, line)
                    row = None if checked is None else convert(checked)
                if row is not None:
                    chunk.append(row)
                if read % size == 0:
                    self.records = read
                    yield chunk
                    chunk = []
        except csv.Error as exc:
            raise NewsletterError(problems=[Problem(self.file, self._previous_end + 1, None, "",
                                                    f"CSV syntax error: {exc}")]) from None
        self.records = read
        if chunk:
            yield chunk
        if on_progress:
            on_progress("read", self.total_lines, self.total_lines)

    def _checked_row(self, record: list[str], line: int) -> CsvRow | None:
        """The row of a record, or None with the reason added to `problems`."""
        header, roles, end, delimiter = self._header, self._roles, self._previous_end, self.delimiter

        def problem(column: str, message: str) -> None:
            self.problems.append(Problem(self.file, line, None, column, message))

        if len(record) > len(header) and any(c.strip() for c in record[len(header):]):
            problem("", f"{len(record)} fields, but the header has {len(header)} "
                    f"(is a `{delimiter}` inside a value that is not quoted?)")
            return None
        if len(record) != len(header):
            record = (record + [""] * len(header))[:len(header)]
        if end > line:
            # A record over several lines is legal (quoted line breaks), but one that swallows
            # what looks like further rows almost always means a quote was never closed.
            for i, cell in enumerate(record):
                later = cell.splitlines()[1:]
                if any("@" in part and delimiter in part for part in later):
                    problem(header[i] or f"column {i + 1}",
                            f"the value runs from line {line} to {end} and contains what look "
                            "like further rows: a quote (\") is probably not closed")
                    return None
        email_column = header[roles.email]
        raw_email = record[roles.email].strip()
        if not raw_email:
            problem(email_column, "no e-mail address")
            return None
        try:
            normalize_email(raw_email)
        except InvalidEmail as exc:
            problem(email_column, str(exc))
            return None
        if roles.status is not None:
            status = record[roles.status].strip().lower() or None
            if status is not None and status not in STATUSES:
                problem(header[roles.status],
                        f"unknown status `{record[roles.status].strip()}`; one of "
                        f"{', '.join(STATUSES)} (or rename the column if it means something else)")
                return None
        try:
            clean_name(" ".join(record[i] for i in roles.names))
        except InvalidName as exc:
            problem(" + ".join(header[i] or f"column {i + 1}" for i in roles.names), exc.message)
            return None
        row = _row(record, roles, line)
        assert row is not None  # every reason to refuse it was checked above
        return row


def open_csv(path: Path) -> CsvFile:
    """Open a subscriber CSV for streaming. Raises NewsletterError if the file is unusable (cannot
    be read or decoded, no header, no e-mail column)."""
    return CsvFile(Path(path))


def read_csv(path: Path, *, on_progress: ProgressCallback | None = None) -> ParsedCsv:
    """Parse and validate a whole subscriber CSV in memory, duplicates merged (small files;
    the importer streams with `open_csv`). Raises NewsletterError if the file is unusable."""
    with open_csv(path) as csv_file:
        rows: list[CsvRow] = []
        duplicates: list[Duplicate] = []
        seen: dict[str, CsvRow] = {}
        for chunk in csv_file.chunks(2000, on_progress):
            for row in chunk:
                first = seen.get(row.key)
                if first is None:
                    seen[row.key] = row
                    rows.append(row)
                else:
                    duplicates.append(Duplicate(row.line, first.line, row.email))
                    merge_duplicate(first, row)
        return ParsedCsv(csv_file.file, csv_file.encoding, csv_file.delimiter, rows,
                         csv_file.problems, duplicates, csv_file.records)


@dataclass
class _Roles:
    email: int
    name: int | None
    first: int | None
    last: int | None
    status: int | None
    attributes: list[tuple[int, str]]  # (column index, attribute name) of the free columns
    names: tuple[int, ...] = ()  # the columns that make up the name, in order
    # (column index, `"name": ` as JSON) of the attribute columns; None if two names clash.
    json_keys: list[tuple[int, str]] | None = None


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
    roles.names = tuple(i for i in (roles.name, roles.first, roles.last) if i is not None)
    if len({name for _, name in roles.attributes}) == len(roles.attributes):
        roles.json_keys = [(i, _quote(name) + ": ") for i, name in roles.attributes]
    return roles


def _fields(record: list[str], roles: _Roles) -> tuple[str, str | None, str | None] | None:
    """(email, name, status) of a record that has as many fields as the header, or None if
    anything about it needs a closer look (`CsvFile._checked_row` says what)."""
    raw_email = record[roles.email].strip()
    if not raw_email:
        return None
    try:
        email = normalize_email(raw_email)
    except InvalidEmail:
        return None
    status: str | None = None
    if roles.status is not None:
        status = record[roles.status].strip().lower() or None
        if status is not None and status not in STATUSES:
            return None
    names = roles.names
    try:
        name = clean_name(record[names[0]] if len(names) == 1 else " ".join(record[i] for i in names))
    except InvalidName:
        return None
    return email, name, status


def _row(record: list[str], roles: _Roles, line: int) -> CsvRow | None:
    fields = _fields(record, roles)
    if fields is None:
        return None
    email, name, status = fields
    attributes = {key: value for i, key in roles.attributes if (value := record[i].strip())}
    return CsvRow(line, email, email.lower(), name, attributes, status)


def _staged_row(record: list[str], roles: _Roles, line: int) -> StagedRow | None:
    """`_row` as the importer stages it, the attributes' JSON written straight from the record
    (no dict in between; `_Roles.json_keys` is None when two attribute names clash)."""
    fields = _fields(record, roles)
    if fields is None:
        return None
    email, name, status = fields
    if roles.json_keys is None:
        text = attributes_json({key: value for i, key in roles.attributes if (value := record[i].strip())})
    else:
        parts = [key + _quote(value) for i, key in roles.json_keys if (value := record[i].strip())]
        text = "{" + ", ".join(parts) + "}" if parts else "{}"
    return line, email, email.lower(), name, text, status  # email.lower(): `email_key`


def _as_staged(row: CsvRow) -> StagedRow:
    return row.line, row.email, row.key, row.name, attributes_json(row.attributes), row.status


def read_helper() -> None:
    """The helper process of `import_stage.read_in_helper`: (path, encoding found, chunk size) on
    stdin; each chunk pickled to stdout with the problems found since the one before."""
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but the chunks on the pipe
    path, found, size = pickle.load(sys.stdin.buffer)
    try:
        with CsvFile(Path(path), found) as csv_file:
            reported = 0
            for chunk in csv_file.staged_chunks(size):
                pickle.dump(("rows", chunk, csv_file.problems[reported:], csv_file.records,
                             csv_file.last_line), out, pickle.HIGHEST_PROTOCOL)
                reported = len(csv_file.problems)
            pickle.dump(("end", [], csv_file.problems[reported:], csv_file.records, 0), out)
        out.flush()
    except NewsletterError as exc:
        pickle.dump(("error", [], exc.problems, 0, 0), out)
        out.flush()
    except BrokenPipeError:  # the importing process is gone
        os._exit(1)
