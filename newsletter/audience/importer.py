"""CSV import and export of list members, as editors really have their data.

Import: a header row naming the e-mail column (``email``, ``E-Mail``, ``Mail`` …), an optional
name (``name`` or ``Vorname`` + ``Nachname``); every other column is kept as a free attribute.
UTF-8 with or without BOM, UTF-16 with BOM, or Windows-1252 (German Excel); comma, semicolon or
tab separated. Every bad row is reported with the physical line where its record starts; the
valid rows go in as one transaction. Nobody who unsubscribed, bounced, complained or is
suppressed is re-activated. The library is UI-free: progress goes to a callback.

Export writes the same format back (plus status and dates), so export → import round-trips.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa

from newsletter.audience.store import (
    NOW,
    OPTED_OUT,
    STATUSES,
    InvalidEmail,
    MailingList,
    Store,
    chunked,
    consent_log,
    email_key,
    memberships,
    new_token_id,
    normalize_email,
    subscribers,
    suppressions,
)
from newsletter.errors import NewsletterError, Problem

# progress(phase, done, total): "read" counts physical lines, "write" database rows written.
Progress = Callable[[str, int, int], None]

EMAIL_HEADERS = {"email", "mail", "emailadresse", "emailaddress", "mailadresse", "mailaddress",
                 "emailadr", "mailadr"}
NAME_HEADERS = {"name", "fullname", "displayname", "vollername"}
FIRST_NAME_HEADERS = {"vorname", "firstname", "givenname"}
LAST_NAME_HEADERS = {"nachname", "lastname", "surname", "familienname", "familyname", "zuname"}
# Columns written by export; on import they are read (status) or ignored (dates), never attributes.
STATUS_HEADER = "status"
DATE_HEADERS = {"createdat", "updatedat"}
EXPORT_COLUMNS = ["email", "name", "status", "created_at", "updated_at"]

WRITE_BATCH = 5000


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


@dataclass
class Skipped:
    line: int
    email: str
    reason: str


@dataclass
class ImportReport:
    file: str
    list_name: str
    dry_run: bool
    confirmed: bool
    encoding: str
    delimiter: str
    records: int = 0
    added: int = 0          # new subscribers created and put on the list
    joined: int = 0         # existing subscribers newly put on the list
    confirmed_pending: int = 0  # pending → subscribed (--confirmed)
    opted_out: int = 0      # opt-out statuses carried over from the file
    unchanged: int = 0      # already on the list in that state
    updated: int = 0        # missing name / attributes filled in
    skipped: list[Skipped] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file, "list": self.list_name, "dry_run": self.dry_run,
            "confirmed": self.confirmed, "encoding": self.encoding, "delimiter": self.delimiter,
            "records": self.records, "added": self.added, "joined": self.joined,
            "confirmed_pending": self.confirmed_pending, "opted_out": self.opted_out,
            "unchanged": self.unchanged, "updated": self.updated,
            "skipped": [vars(s) for s in self.skipped],
            "duplicates": [vars(d) for d in self.duplicates],
            "problems": [p.format() for p in self.problems],
        }


# --- reading ----------------------------------------------------------------------------------


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


def read_csv(path: Path, *, progress: Progress | None = None) -> ParsedCsv:
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
            if progress and records % 2000 == 0:
                progress("read", previous_end, total_lines)
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
    if progress:
        progress("read", total_lines, total_lines)
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


# --- importing --------------------------------------------------------------------------------


class _DryRun(Exception):
    pass


def import_csv(store: Store, path: Path, mailing_list: MailingList, *, confirmed: bool = False,
               dry_run: bool = False, progress: Progress | None = None) -> ImportReport:
    """Import a CSV into a list in one transaction (rolled back for `dry_run`); the report says
    what happened to every row. Invalid rows are reported in `report.problems` and left out."""
    parsed = read_csv(path, progress=progress)
    report = ImportReport(parsed.file, mailing_list.name, dry_run, confirmed, parsed.encoding,
                          parsed.delimiter, records=parsed.records, duplicates=parsed.duplicates,
                          problems=parsed.problems)
    try:
        with store.write() as conn:
            _apply(conn, parsed, mailing_list.id, Path(path).name, confirmed, report, progress)
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    return report


def _apply(conn: sa.Connection, parsed: ParsedCsv, list_id: int, file_name: str, confirmed: bool,
           report: ImportReport, progress: Progress | None) -> None:
    rows = parsed.rows
    keys = [r.key for r in rows]
    hashes = {r.key: hashlib.sha256(r.key.encode("utf-8")).hexdigest() for r in rows}
    existing: dict[str, Any] = {}
    columns = (subscribers.c.id, subscribers.c.email_key, subscribers.c.name, subscribers.c.attributes)
    wanted = set(keys)
    for found in _lookup(conn, subscribers, subscribers.c.email_key, keys, columns):
        if found.email_key in wanted:
            existing[found.email_key] = found
    wanted_hashes = set(hashes.values())
    suppressed = {
        found.email_hash
        for found in _lookup(conn, suppressions, suppressions.c.email_hash, list(wanted_hashes),
                             (suppressions.c.email_hash,))
        if found.email_hash in wanted_hashes
    }
    current: dict[int, str] = {}
    for chunk in chunked([e.id for e in existing.values()]):
        for sid, status in conn.execute(
            sa.select(memberships.c.subscriber_id, memberships.c.status)
            .where(memberships.c.list_id == list_id, memberships.c.subscriber_id.in_(chunk))
        ):
            current[sid] = status

    consent = "editor confirmed prior consent" if confirmed else "not confirmed: double opt-in pending"
    new_rows: list[CsvRow] = []
    new_members: list[tuple[int, CsvRow, str]] = []   # (subscriber_id, row, status)
    changed_members: list[tuple[int, CsvRow, str]] = []
    subscriber_updates: list[dict[str, Any]] = []
    for row in rows:
        if hashes[row.key] in suppressed:
            report.skipped.append(Skipped(row.line, row.email, "on the suppression list"))
            continue
        if row.status in OPTED_OUT:
            desired = row.status
        elif confirmed and row.status != "pending":
            desired = "subscribed"
        else:
            desired = "pending"
        found = existing.get(row.key)
        if found is None:
            new_rows.append(row)
            continue
        status = current.get(found.id)
        if status in OPTED_OUT:
            if desired in OPTED_OUT:
                report.unchanged += 1
            else:
                report.skipped.append(Skipped(row.line, row.email, f"{status}; imports never re-activate"))
            continue
        update = _fill_details(found, row)
        if update:
            subscriber_updates.append(update)
        if status is None:
            new_members.append((found.id, row, desired))
            report.joined += 1
        elif desired in OPTED_OUT or (status == "pending" and desired == "subscribed"):
            changed_members.append((found.id, row, desired))
            if desired in OPTED_OUT:
                report.opted_out += 1
            else:
                report.confirmed_pending += 1
        else:
            report.unchanged += 1
    report.updated = len(subscriber_updates)

    # Subscriber inserts, then memberships (new subscribers and existing ones), changes, updates.
    total = 2 * len(new_rows) + len(new_members) + len(changed_members) + len(subscriber_updates)
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress("write", done, total)

    for batch in chunked(new_rows, WRITE_BATCH):
        # RETURNING the key (not relying on row order) lets SQLAlchemy batch the INSERTs.
        ids = dict(conn.execute(
            subscribers.insert().returning(subscribers.c.email_key, subscribers.c.id),
            [{"email": r.email, "email_key": r.key, "name": r.name, "attributes": r.attributes,
              "token_id": new_token_id()} for r in batch],
        ).all())
        for row in batch:
            sid = ids[row.key]
            desired = (row.status if row.status in OPTED_OUT
                       else "subscribed" if confirmed and row.status != "pending" else "pending")
            new_members.append((sid, row, desired))
        step(len(batch))
    report.added = len(new_rows)

    if subscriber_updates:
        conn.execute(
            subscribers.update().where(subscribers.c.id == sa.bindparam("_id"))
            .values(name=sa.bindparam("_name"), attributes=sa.bindparam("_attributes")),
            subscriber_updates,
        )
        step(len(subscriber_updates))

    def detail(row: CsvRow, status: str) -> str:
        why = f"status {status} carried over from the file" if status in OPTED_OUT else consent
        return f"{file_name} line {row.line}; {why}"

    for batch in chunked(new_members, WRITE_BATCH):
        conn.execute(memberships.insert(), [
            {"subscriber_id": sid, "list_id": list_id, "status": status}
            for sid, _row, status in batch
        ])
        conn.execute(consent_log.insert(), [
            {"subscriber_id": sid, "list_id": list_id, "action": status,
             "source": "import", "ip": None, "consent_version": None,
             "detail": detail(row, status)} for sid, row, status in batch
        ])
        step(len(batch))
    if changed_members:
        conn.execute(
            memberships.update()
            .where(memberships.c.subscriber_id == sa.bindparam("_sid"),
                   memberships.c.list_id == list_id)
            .values(status=sa.bindparam("_status"), updated_at=NOW),
            [{"_sid": sid, "_status": status} for sid, _row, status in changed_members],
        )
        conn.execute(consent_log.insert(), [
            {"subscriber_id": sid, "list_id": list_id, "action": status,
             "source": "import", "ip": None, "consent_version": None,
             "detail": detail(row, status)} for sid, row, status in changed_members
        ])
        step(len(changed_members))


def _lookup(conn: sa.Connection, table: sa.Table, column: sa.Column[str], values: list[str],
            columns: tuple[sa.Column[Any], ...]) -> Iterable[Any]:
    """Rows of `table` whose `column` is in `values`: one full scan when the table is not much
    bigger than the import (a fresh list), else chunked IN queries."""
    size = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() or 0
    if not size or not values:
        return []
    if size <= 4 * len(values):
        return conn.execute(sa.select(*columns)).all()
    return [found for chunk in chunked(values)
            for found in conn.execute(sa.select(*columns).where(column.in_(chunk)))]


def _fill_details(found: Any, row: CsvRow) -> dict[str, Any] | None:
    """Fill in a missing name and new attribute keys; never overwrite what the database has."""
    attributes = dict(found.attributes or {})
    added = {k: v for k, v in row.attributes.items() if k not in attributes}
    name = found.name or row.name
    if not added and name == found.name:
        return None
    attributes.update(added)
    return {"_id": found.id, "_name": name, "_attributes": attributes}


# --- exporting --------------------------------------------------------------------------------


def export_rows(store: Store, list_id: int) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a list's CSV export: email, name, status, dates, then attributes."""
    members = store.member_rows(list_id)
    attribute_keys = sorted({k for m in members for k in (m["attributes"] or {})}
                            - set(EXPORT_COLUMNS))
    rows = [
        [m["email"], m["name"] or "", m["status"], _iso(m["created_at"]), _iso(m["updated_at"]),
         *(_cell((m["attributes"] or {}).get(k)) for k in attribute_keys)]
        for m in members
    ]
    return [*EXPORT_COLUMNS, *attribute_keys], rows


def export_csv(store: Store, list_id: int, out: TextIO) -> int:
    """Write a list as CSV to `out`; the number of members written."""
    header, rows = export_rows(store, list_id)
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return len(rows)


def _iso(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z") if value else ""


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def format_report(report: ImportReport) -> Iterable[str]:
    """Human-readable summary lines of an import."""
    verb = "would be" if report.dry_run else "were"
    state = "subscribed (editor confirmed consent)" if report.confirmed else "pending (not yet confirmed)"
    yield (f"{report.file}: {report.records} rows ({report.encoding}, "
           f"{'tab' if report.delimiter == chr(9) else repr(report.delimiter)}-separated) "
           f"→ list {report.list_name}")
    yield f"  {report.added} new subscribers {verb} added as {state}"
    if report.joined:
        yield f"  {report.joined} existing subscribers {verb} added to the list"
    if report.confirmed_pending:
        yield f"  {report.confirmed_pending} pending members {verb} confirmed"
    if report.opted_out:
        yield f"  {report.opted_out} opt-outs from the file {verb} recorded"
    if report.updated:
        yield f"  {report.updated} existing subscribers {verb} given a missing name or attributes"
    if report.unchanged:
        yield f"  {report.unchanged} already on the list, unchanged"
    for dup in report.duplicates:
        yield f"  line {dup.line}: {dup.email} merged with line {dup.first_line} (duplicate)"
    for skip in report.skipped:
        yield f"  line {skip.line}: {skip.email} skipped: {skip.reason}"
    if report.dry_run:
        yield "  dry run: nothing was changed"
