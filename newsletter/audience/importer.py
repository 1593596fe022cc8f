"""CSV import of list members: the rows `audience/csvfile.py` read, applied to a list.

The valid rows go in as one transaction (rolled back for a dry run); the report says what
happened to every row. Which status a row gets, and that nobody who unsubscribed, bounced or
complained is re-activated, is decided by `editor_target` / `editor_change` in
`audience/statuses.py` (the same rules as `Store.add_subscriber`); suppressed addresses are
skipped. The library is UI-free: progress goes to a callback.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from newsletter.audience.addresses import key_hash
from newsletter.audience.csvfile import CsvRow, Duplicate, ParsedCsv, ProgressCallback, read_csv
from newsletter.audience.records import MailingList
from newsletter.audience.statuses import OPTED_OUT, editor_change, editor_target
from newsletter.audience.store import Store
from newsletter.audience.tables import consent_log, memberships, new_token_id, subscribers, suppressions
from newsletter.db.schema import NOW, chunked
from newsletter.errors import Problem

WRITE_BATCH = 5000


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


class _DryRun(Exception):
    pass


def import_csv(store: Store, path: Path, mailing_list: MailingList, *, confirmed: bool = False,
               dry_run: bool = False, on_progress: ProgressCallback | None = None) -> ImportReport:
    """Import a CSV into a list in one transaction (rolled back for `dry_run`); the report says
    what happened to every row. Invalid rows are reported in `report.problems` and left out."""
    parsed = read_csv(path, on_progress=on_progress)
    report = ImportReport(parsed.file, mailing_list.name, dry_run, confirmed, parsed.encoding,
                          parsed.delimiter, records=parsed.records, duplicates=parsed.duplicates,
                          problems=parsed.problems)
    try:
        with store.write() as conn:
            _apply(conn, parsed, mailing_list.id, Path(path).name, confirmed, report, on_progress)
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    return report


def _apply(conn: sa.Connection, parsed: ParsedCsv, list_id: int, file_name: str, confirmed: bool,
           report: ImportReport, on_progress: ProgressCallback | None) -> None:
    rows = parsed.rows
    keys = [r.key for r in rows]
    hashes = {r.key: key_hash(r.key) for r in rows}
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
        found = existing.get(row.key)
        if found is None:
            new_rows.append(row)
            continue
        target = editor_target(row.status, confirmed)
        status = current.get(found.id)
        change = editor_change(status, target)
        if change == "refused":
            report.skipped.append(Skipped(row.line, row.email, f"{status}; imports never re-activate"))
            continue
        if status in OPTED_OUT:  # left (and the file agrees): their details stay untouched too
            report.unchanged += 1
            continue
        update = _fill_details(found, row)
        if update:
            subscriber_updates.append(update)
        if change == "join":
            new_members.append((found.id, row, target))
            report.joined += 1
        elif change == "change":
            changed_members.append((found.id, row, target))
            if target in OPTED_OUT:
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
        if on_progress:
            on_progress("write", done, total)

    for batch in chunked(new_rows, WRITE_BATCH):
        # RETURNING the key (not relying on row order) lets SQLAlchemy batch the INSERTs.
        ids = dict(conn.execute(
            subscribers.insert().returning(subscribers.c.email_key, subscribers.c.id),
            [{"email": r.email, "email_key": r.key, "name": r.name, "attributes": r.attributes,
              "token_id": new_token_id()} for r in batch],
        ).all())
        for row in batch:
            new_members.append((ids[row.key], row, editor_target(row.status, confirmed)))
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
