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
import marshal
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
from newsletter.audience.token_ids import new_token_ids
from newsletter.errors import NewsletterError, Problem

# on_progress(phase, done, total): "read" counts physical lines, "write" database rows written.
ProgressCallback = Callable[[str, int, int], None]
# make(record, line, email, name, status): the row `CsvFile.chunks` / `staged_chunks` yield.
_Make = Callable[[list[str], int, str, str | None, str | None], Any]

EMAIL_HEADERS = {"email", "mail", "emailadresse", "emailaddress", "mailadresse", "mailaddress",
                 "emailadr", "mailadr"}
NAME_HEADERS = {"name", "fullname", "displayname", "vollername"}
FIRST_NAME_HEADERS = {"vorname", "firstname", "givenname"}
LAST_NAME_HEADERS = {"nachname", "lastname", "surname", "familienname", "familyname", "zuname"}
# Columns written by `audience/export.py`; here they are read (status) or ignored (dates), never attributes.
STATUS_HEADER = "status"
DATE_HEADERS = {"createdat", "updatedat"}

_BLOCK = 1 << 20  # bytes per read while finding the encoding
# (line, email, email_key, name, attributes as JSON, token_id[, status]): a row as the importer
# stages it; the status only from a file with a `status` column (one value less to bind).
StagedRow = tuple[Any, ...]
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
        """The first non-blank record, and what its columns are."""
        reader = self._reader
        try:
            for record in reader:
                line = self._previous_end + 1  # the physical line where the record starts
                self._previous_end = reader.line_num
                if any(cell.strip() for cell in record):
                    header = [cell.strip() for cell in record]
                    return header, _roles(header, self.file, line)
        except csv.Error as exc:
            raise NewsletterError(problems=[Problem(self.file, self._previous_end + 1, None, "",
                                                    f"CSV syntax error: {exc}")]) from None
        raise NewsletterError(problems=[Problem(self.file, None, None, "",
                                                "the file is empty; expected a header row with an "
                                                "`email` column")])

    def chunks(self, size: int, on_progress: ProgressCallback | None = None) -> Iterator[list[CsvRow]]:
        """The valid rows, `size` records at a time (a chunk may be shorter, or empty when all
        its records were refused), in file order; duplicates are left to the caller
        (`merge_duplicate`). Refused rows go to `problems`."""
        attributes = self._roles.attributes

        def make(record: list[str], line: int, email: str, name: str | None, status: str | None) -> CsvRow:
            return CsvRow(line, email, email.lower(), name,
                          {key: value for i, key in attributes if (value := record[i].strip())}, status)

        return self._chunks(size, on_progress, make)

    def staged_chunks(self, size: int,
                      on_progress: ProgressCallback | None = None) -> Iterator[list[StagedRow]]:
        """`chunks` as the tuples the importer stages, each with a new token_id (the importer
        has a large file read by `read_helper` in a process of its own)."""
        return self._chunks(size, on_progress, _stager(self._roles))

    def _chunks(self, size: int, on_progress: ProgressCallback | None, make: _Make) -> Iterator[list[Any]]:
        reader, width, strip = self._reader, len(self._header), str.strip
        email_at, status_at, names = self._roles.email, self._roles.status, self._roles.names
        name_at = names[0] if len(names) == 1 else None
        chunk: list[Any] = []
        read = 0
        try:
            for record in reader:
                line = self._previous_end + 1  # the physical line where the record starts
                self._previous_end = end = reader.line_num
                if on_progress and read % 2000 == 0:
                    on_progress("read", end, self.total_lines)
                # The usual record (one line, as many fields as the header, an address) checked
                # here, inline; anything else, or anything refused, takes the careful path, which
                # says what is wrong.
                careful = True
                if len(record) == width and end == line and (raw := record[email_at].strip()):
                    read += 1
                    try:
                        email = normalize_email(raw)
                        name = clean_name(record[name_at] if name_at is not None
                                          else " ".join(record[i] for i in names))
                        status = None if status_at is None else record[status_at].strip().lower() or None
                        if status is None or status in STATUSES:
                            chunk.append(make(record, line, email, name, status))
                            careful = False
                    except (InvalidEmail, InvalidName):
                        pass
                elif any(map(strip, record)):
                    read += 1
                else:
                    continue  # a blank record
                if careful and (checked := self._checked_row(record, line)) is not None:
                    record, email, name, status = checked
                    chunk.append(make(record, line, email, name, status))
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

    def _checked_row(self, record: list[str], line: int,
                     ) -> tuple[list[str], str, str | None, str | None] | None:
        """(record, email, name, status) of a record (padded to the header's width), or None
        with the reason added to `problems`."""
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
            email = normalize_email(raw_email)
        except InvalidEmail as exc:
            problem(email_column, str(exc))
            return None
        status = None
        if roles.status is not None:
            status = record[roles.status].strip().lower() or None
            if status is not None and status not in STATUSES:
                problem(header[roles.status],
                        f"unknown status `{record[roles.status].strip()}`; one of "
                        f"{', '.join(STATUSES)} (or rename the column if it means something else)")
                return None
        try:
            name = clean_name(" ".join(record[i] for i in roles.names))
        except InvalidName as exc:
            problem(" + ".join(header[i] or f"column {i + 1}" for i in roles.names), exc.message)
            return None
        return record, email, name, status


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


def _stager(roles: _Roles) -> _Make:
    """The `make` of `staged_chunks`: the attributes' JSON written straight from the record (no
    dict in between; `_Roles.json_keys` is None when two attribute names clash)."""
    attributes, keys, with_status = roles.attributes, roles.json_keys, roles.status is not None
    token = itertools.chain.from_iterable(map(new_token_ids, itertools.repeat(4096))).__next__
    at, one_key = keys[0] if keys is not None and len(keys) == 1 else (None, "")

    def make(record: list[str], line: int, email: str, name: str | None, status: str | None) -> StagedRow:
        if at is not None:  # one attribute column: no list in between
            text = "{" + one_key + _quote(value) + "}" if (value := record[at].strip()) else "{}"
        elif keys is None:
            text = attributes_json({key: value for i, key in attributes if (value := record[i].strip())})
        else:
            parts = [key + _quote(value) for i, key in keys if (value := record[i].strip())]
            text = "{" + ", ".join(parts) + "}" if parts else "{}"
        if with_status:
            return line, email, email.lower(), name, text, token(), status  # lower: `email_key`
        return line, email, email.lower(), name, text, token()

    return make


def read_helper() -> None:
    """The helper process of `import_stage.read_in_helper`: (path, encoding found, chunk size)
    on stdin; each chunk to stdout (its header pickled, with the problems found since
    the one before, then its rows `marshal`led)."""
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but the chunks on the pipe
    path, found, size = pickle.load(sys.stdin.buffer)
    try:
        with CsvFile(Path(path), found) as csv_file:
            reported = 0
            for chunk in csv_file.staged_chunks(size):
                data = marshal.dumps(chunk)
                pickle.dump(("rows", len(data), csv_file.problems[reported:], csv_file.records,
                             csv_file.last_line), out, pickle.HIGHEST_PROTOCOL)
                out.write(data)
                reported = len(csv_file.problems)
            pickle.dump(("end", 0, csv_file.problems[reported:], csv_file.records, 0), out)
        out.flush()
    except NewsletterError as exc:
        pickle.dump(("error", 0, exc.problems, 0, 0), out)
        out.flush()
    except BrokenPipeError:  # the importing process is gone
        os._exit(1)
