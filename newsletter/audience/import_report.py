"""What an import does to each row, and the report of it: the actions, the rule that decides
them from the file's status and the member's current one, and the report's lines."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from newsletter.audience.csvfile import (
    Duplicate,
)
from newsletter.audience.statuses import OPTED_OUT, editor_change, editor_target
from newsletter.errors import Problem

ADD = "add"              # a new subscriber, put on the list
JOIN = "join"            # an existing subscriber, put on the list
CHANGE = "change"        # the membership's status changes (pending → subscribed, → an opt-out)
UNCHANGED = "unchanged"  # nothing to do
LEFT = "left"            # opted out, and the file does not ask to re-activate: left alone
REFUSED = "refused"      # opted out; the file would re-activate: skipped
SUPPRESSED = "suppressed"  # on the suppression list: skipped
FILLABLE = (JOIN, CHANGE, UNCHANGED)  # a missing name / attributes are filled in
WRITES = (ADD, JOIN, CHANGE)          # a membership row and a consent-log entry
# The plans of people who were there before the import (re-checked by its final transaction).
EXISTING = (JOIN, CHANGE, UNCHANGED, LEFT, REFUSED)


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



def decide(file_status: str | None, confirmed: bool, exists: bool, current: str | None,
            suppressed: bool) -> tuple[str, str | None]:
    """(action, target status) for one person of the file: the rules of `statuses.py`."""
    if suppressed:
        return SUPPRESSED, None
    target = editor_target(file_status, confirmed)
    if not exists:
        return ADD, target
    change = editor_change(current, target)
    if change == "refused":
        return REFUSED, target
    if current in OPTED_OUT:  # left (and the file agrees): their details stay untouched too
        return LEFT, target
    return {"join": JOIN, "change": CHANGE}.get(change, UNCHANGED), target


def count_plan(conn: Connection, staged: sa.Table) -> dict[str, int]:
    """What the staged plan (`import_stage.staging_tables`) does, counted in one pass: the
    report's numbers, and which of the final transaction's statements have rows to change."""
    action, target = staged.c.action, staged.c.target
    conditions = {
        ADD: action == ADD,
        JOIN: action == JOIN,
        "opted_out": (action == CHANGE) & target.in_(sorted(OPTED_OUT)),
        "confirmed_pending": (action == CHANGE) & target.not_in(sorted(OPTED_OUT)),
        UNCHANGED: action.in_((UNCHANGED, LEFT)),
        "fill": staged.c.fill & action.in_(FILLABLE),
        "existing": action.in_(EXISTING),
        "skipped": action.in_((REFUSED, SUPPRESSED)),
    }
    row = conn.execute(sa.select(*(
        sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0).label(name)
        for name, condition in conditions.items()))).one()
    return dict(row._mapping)


def all_new(rows: int) -> dict[str, int]:
    """`count_plan` of a plan that adds all of its `rows`, none of them there before."""
    return {ADD: rows, JOIN: 0, "opted_out": 0, "confirmed_pending": 0, UNCHANGED: 0, "fill": 0,
            "existing": 0, "skipped": 0}


def fill_details(name: str | None, attributes: dict[str, Any] | None, row_name: str | None,
          row_attributes: dict[str, Any]) -> tuple[str | None, dict[str, Any]] | None:
    """(name, attributes) with a missing name and new attribute keys filled in from the file, or
    None if the file adds nothing; never overwrites what the database has."""
    current = dict(attributes or {})
    added = {k: v for k, v in row_attributes.items() if k not in current}
    filled = name or row_name
    if not added and filled == name:
        return None
    current.update(added)
    return filled, current


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
