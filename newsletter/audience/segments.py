"""Segments: named conditions on the members of a list, `[segments.<name>]` in newsletter.toml
(docs/segments.md).

    [segments.jena]
    list = "news"
    title = "Jena: Verwaltung und Politik"
    where = 'Kommune = "Jena" and Rolle in ["Verwaltung", "Politik"] and joined < "2026-01-01"'

The language is `audience/conditions.py`; here the segments of a project are loaded and checked
(each mistake a `Problem` at newsletter.toml's FILE:LINE:COL inside the `where` string), and the
members of a segment are counted and listed. The send journal filters its members with
`queries.subscribed_members(list_id, segment)`.
"""

from __future__ import annotations

import bisect
import tomllib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from newsletter.audience.conditions import (
    EXAMPLE,
    AttributeText,
    Condition,
    ConditionError,
    compile_condition,
)
from newsletter.audience.records import Member
from newsletter.audience.statuses import check_status
from newsletter.audience.tables import memberships, subscribers
from newsletter.config import ENV_PREFIX, toml_position
from newsletter.errors import ConfigError, NewsletterError, Problem, Severity
from newsletter.project import CONFIG_NAME

if TYPE_CHECKING:
    from newsletter.audience.store import Store
    from newsletter.project import Project


class SegmentError(NewsletterError):
    """A segment cannot be used as asked: no such segment, or a list other than its own."""

# --- segments of a project --------------------------------------------------------------------


@dataclass(frozen=True)
class _Locator:
    """Where the characters of a `where` are: newsletter.toml positions of each character (and
    of the closing quote), or only the value's start (a `where` from the environment)."""

    file: str
    field: str
    start: tuple[int | None, int | None]
    chars: list[tuple[int, int]] | None = None

    def problem(self, offset: int, message: str, severity: Severity = "error") -> Problem:
        if self.chars:
            line, column = self.chars[min(max(offset, 0), len(self.chars) - 1)]
        else:
            (line, column), message = self.start, f"{message} (character {offset + 1} of the condition)"
        return Problem(self.file, line, column, self.field, message, severity)


@dataclass(frozen=True, eq=False)
class Segment:
    """A named condition from `[segments.<name>]`: for the members of `list_name` (None: any list)."""

    name: str
    title: str | None
    list_name: str | None
    condition: Condition
    locator: _Locator = field(repr=False)

    @property
    def where(self) -> str:
        return self.condition.where

    def check_list(self, list_name: str) -> None:
        """Refuse to use the segment on a list other than its own."""
        if self.list_name is not None and self.list_name != list_name:
            raise SegmentError(f"segment `{self.name}` belongs to the list `{self.list_name}` "
                               f"([segments.{self.name}] in {CONFIG_NAME}), not to `{list_name}`")

    def problem(self, offset: int, message: str, severity: Severity = "error") -> Problem:
        """A problem at the character `offset` of the segment's `where`."""
        return self.locator.problem(offset, message, severity)


def segment_condition(segment: Segment) -> sa.ColumnElement[bool]:
    """The segment's condition on `subscribers` joined with `memberships` (the list's row), for
    a WHERE of a statement that joins both (`queries.subscribed_members(list_id, segment)`)."""
    return segment.condition.clause


def load_segments(project: Project) -> dict[str, Segment]:
    """Every segment of the project, each checked: raises `ConfigError` with one problem per
    mistake, at newsletter.toml's FILE:LINE:COL inside the `where`."""
    configured = project.settings.segments
    if not configured:
        return {}
    path = project.root / CONFIG_NAME
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        data = {}
    timezone = project.settings.newsletter.timezone
    found: dict[str, Segment] = {}
    problems: list[Problem] = []
    for name, settings in configured.items():
        locator = _locate(text, data, str(path), name, settings.where)
        try:
            condition = compile_condition(settings.where, timezone)
        except ConditionError as exc:
            problems.extend(locator.problem(offset, message) for offset, message in exc.faults)
            continue
        found[name] = Segment(name, settings.title, settings.list, condition, locator)
    if problems:
        raise ConfigError(problems=problems)
    return found


def load_segment(project: Project, name: str) -> Segment:
    """The segment `name` (every segment of the project is checked on the way)."""
    segments = load_segments(project)
    if name not in segments:
        hint = (f"known segments: {', '.join(segments)}" if segments else
                f"there are none; define one in {CONFIG_NAME} as [segments.{name}] with "
                f"where = '{EXAMPLE.removeprefix('e.g. ')}'")
        raise SegmentError(f"no segment named `{name}`; {hint}")
    return segments[name]


def _locate(text: str, data: dict[str, Any], file: str, name: str, where: str) -> _Locator:
    loc = ("segments", name, "where")
    field_name = ".".join(loc)
    table = data.get("segments", {}).get(name) if isinstance(data.get("segments"), dict) else None
    in_file = table.get("where") if isinstance(table, dict) else None
    if in_file != where:  # set in the environment, which beats the file
        return _Locator(f"environment {ENV_PREFIX}SEGMENTS__{name.upper()}__WHERE", field_name,
                        (None, None))
    line, column = toml_position(text, loc)
    chars = None
    if line is not None and column is not None:
        starts = [0]
        for part in text.splitlines(keepends=True):
            starts.append(starts[-1] + len(part))
        indexes = _string_chars(text, starts[line - 1] + column - 1, where)
        if indexes is not None:
            chars = [(number + 1, index - starts[number] + 1) for index in indexes
                     for number in [bisect.bisect_right(starts, index) - 1]]
    return _Locator(file, field_name, (line, column), chars)


_ESCAPES = {"b": 2, "t": 2, "n": 2, "f": 2, "r": 2, '"': 2, "\\": 2, "e": 2, "x": 4, "u": 6, "U": 10}


def _string_chars(text: str, index: int, expected: str) -> list[int] | None:
    """Indexes in `text` of each character of the TOML string that starts at `index` (an
    escape sequence counts as its one character), then of its closing quote; None when what is
    there is no string decoding to `expected` (tomllib keeps no positions)."""
    delimiter = next((d for d in ('"""', "'''", '"', "'") if text.startswith(d, index)), None)
    if delimiter is None:
        return None
    i, multi, literal = index + len(delimiter), len(delimiter) == 3, delimiter[0] == "'"
    if multi:  # a newline right after the opening delimiter is not part of the string
        i += 2 if text.startswith("\r\n", i) else 1 if text.startswith("\n", i) else 0
    found: list[int] = []
    while i < len(text):
        if text.startswith(delimiter, i) and not (multi and text.startswith(delimiter[0], i + 3)):
            break
        if not literal and text[i] == "\\":
            step = _ESCAPES.get(text[i + 1:i + 2])
            if step is None and multi:  # a line-ending backslash: the blanks and newlines go
                i += 1
                while i < len(text) and text[i] in " \t\r\n":
                    i += 1
                continue
            if step is None:
                return None
            found.append(i)
            i += step
            continue
        found.append(i)
        i += 2 if text.startswith("\r\n", i) else 1
    else:
        return None
    if len(found) != len(expected) or any(
            text[at] != char and text[at] != "\\" and not (text[at] == "\r" and char == "\n")
            for at, char in zip(found, expected, strict=True)):
        return None
    return [*found, i]


# --- members of a segment ---------------------------------------------------------------------


def _members_query(columns: list[Any], list_id: int, segment: Segment | None,
                   status: str | None) -> sa.Select[Any]:
    query = (sa.select(*columns)
             .select_from(subscribers.join(memberships, memberships.c.subscriber_id == subscribers.c.id))
             .where(memberships.c.list_id == list_id))
    if status is not None:
        check_status(status)
        query = query.where(memberships.c.status == status)
    if segment is not None:
        query = query.where(segment_condition(segment))
    return query


def _check_list(store: Store, list_id: int, segment: Segment) -> None:
    if segment.list_name is not None:
        mailing_list = store.get_list_by_id(list_id)
        if mailing_list is not None:
            segment.check_list(mailing_list.name)


def segment_members(store: Store, list_id: int, segment: Segment,
                    status: str | None = "subscribed") -> list[Member]:
    """The members of the list in the segment with `status` (None: any), in subscription order."""
    _check_list(store, list_id, segment)
    query = _members_query([subscribers.c.id, subscribers.c.email, subscribers.c.name,
                            subscribers.c.token_id], list_id, segment, status).order_by(subscribers.c.id)
    with store.read() as conn:
        return [Member(r.id, r.email, r.name, r.token_id) for r in conn.execute(query)]


def segment_member_ids(store: Store, list_id: int, segment: Segment,
                       status: str | None = None) -> set[int]:
    """The subscriber ids of the list's members in the segment (any status by default)."""
    _check_list(store, list_id, segment)
    with store.read() as conn:
        return set(conn.execute(_members_query([subscribers.c.id], list_id, segment, status)).scalars())


def count_members(store: Store, list_id: int, segment: Segment | None,
                  status: str | None = "subscribed") -> int:
    """How many members of the list with `status` (None: any) are in the segment (None: all)."""
    if segment is not None:
        _check_list(store, list_id, segment)
    with store.read() as conn:
        return int(conn.execute(_members_query([sa.func.count()], list_id, segment, status)).scalar_one())


def check_segments(store: Store, segments: dict[str, Segment], project: Project) -> list[Problem]:
    """What only the database can tell: a segment's `list` that does not exist (an error), an
    attribute no subscriber has (a warning: a typo, or a column not imported yet)."""
    path = project.root / CONFIG_NAME
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    known_lists = {ml.name for ml in store.lists()}
    problems = []
    seen: dict[str, bool] = {}
    for name, segment in segments.items():
        if segment.list_name is not None and segment.list_name not in known_lists:
            line, column = toml_position(text, ("segments", name, "list"))
            problems.append(Problem(str(path), line, column, f"segments.{name}.list",
                                    f"no list named `{segment.list_name}`"))
        for attribute, offset in segment.condition.attributes:
            if attribute not in seen:
                query = sa.select(sa.exists().where(AttributeText(attribute).is_not(None)))
                with store.read() as conn:
                    seen[attribute] = bool(conn.execute(query).scalar())
            if not seen[attribute]:
                problems.append(segment.problem(offset, f"no subscriber has the attribute `{attribute}` "
                                                "(a typo? attribute names are CSV column names)",
                                                "warning"))
    return problems
