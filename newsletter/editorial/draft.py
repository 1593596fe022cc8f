"""A draft issue from the city's own feeds: `newsletter new --from-feed … --from-ics …`.

What a feed item becomes (docs/drafts.md):
- an RSS/Atom entry with a date → an item of a `news` section (one section per feed, headed by
  the feed's title): `date`, `title`, `teaser` (the summary in the Markdown subset, shortened to
  whole paragraphs) and `url`. `news` is the kind made for this: dated short news with a link to
  the full text on the website, exactly what a feed entry is. Newest first.
- an entry without a date → an item of a `links` section of that feed (`title`, `url`,
  `teaser`): `news` needs a date, and `--since` cannot judge it (the comment says so).
- an iCalendar VEVENT → an event of one `events` section (all calendars together, by date):
  `date`, `end`, `time`, `end_time` in the project's time zone, `venue`/`address` from LOCATION
  (before/after its first comma), `body` from DESCRIPTION, `link` from URL.

The draft keeps the editor in charge: subject, preheader and intro are the placeholders of every
new issue; comments say which feed each section came from and what was left out or shortened.
Every item is validated with the issue model before it is written, so the draft validates as it
is; an item that would not is left out with a comment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import httpx
from pydantic import BaseModel, ValidationError

from newsletter.content.model import Event, Issue, LinkItem, NewsItem, parse_day
from newsletter.content.source import read_yaml
from newsletter.editorial.markup import html_to_markdown, one_line, text_to_markdown
from newsletter.editorial.sources import (
    MAX_BYTES,
    TIMEOUT,
    USER_AGENT,
    CalendarEvent,
    Feed,
    FeedEntry,
    SourceError,
    fetch,
    read_calendar,
    read_feed,
)
from newsletter.errors import IssueInvalid, NewsletterError, Problem
from newsletter.scaffold import NEW_ISSUE_SECTIONS, issue_head

if TYPE_CHECKING:
    from newsletter.project import Project

DEFAULT_TIMEZONE = "Europe/Berlin"
TEASER_LIMIT = 600  # characters of a news teaser: whole paragraphs up to this
BODY_LIMIT = 1200  # characters of an event's description
MORE = "Weitere Informationen"


def latest_issue_date(directory: Path) -> date | None:
    """The latest `date:` of the issue files in `directory` (files that cannot be read, or have
    no valid date, are passed over); None when there is none."""
    latest: date | None = None
    for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
        try:
            data, _ = read_yaml(path)
            day = parse_day(data["date"]) if isinstance(data, dict) and isinstance(
                data.get("date"), str) else None
        except (NewsletterError, ValueError, OSError):
            continue
        if day is not None and (latest is None or day > latest):
            latest = day
    return latest


@dataclass
class _Part:
    """One section of the draft (or only comments, when a source gave nothing)."""

    comments: list[str]
    lines: list[str] = field(default_factory=list)


def draft_from_feeds(
    project: Project | None,
    urls: Sequence[str],
    ics_urls: Sequence[str] = (),
    since: date | None = None,
    *,
    on: date | None = None,
    timeout: float = TIMEOUT,
    max_bytes: int = MAX_BYTES,
) -> tuple[str | None, list[Problem]]:
    """The YAML text of a draft issue dated `on` (default: today) from RSS/Atom feeds (`urls`)
    and iCalendar feeds (`ics_urls`), and one problem per source that could not be used (or was
    malformed): `Problem(file=URL, message=reason)`.

    Entries published before `since` are left out (None: all); so are events that end before
    `since` or before the issue's date. The text is None when no source could be read at all.
    `project` gives the time zone (`[newsletter] timezone`; None: Europe/Berlin).
    """
    zone = ZoneInfo(project.settings.newsletter.timezone if project is not None else DEFAULT_TIMEZONE)
    today = datetime.now(zone).date()
    on = on or today
    problems: list[Problem] = []
    parts: list[_Part] = []
    events: list[tuple[CalendarEvent, str]] = []
    calendar_names: list[str] = []
    calendars_read: list[str] = []
    read = 0
    headers = {"user-agent": USER_AGENT}
    with httpx.Client(timeout=timeout, follow_redirects=True, headers=headers) as client:
        for url in urls:
            try:
                data, content_type = fetch(url, client, max_bytes)
                feed = read_feed(url, data, content_type, zone)
            except SourceError as error:
                problems.append(Problem(url, None, None, "", str(error)))
                parts.append(_Part([f"nicht gelesen: {one_line(url)}: {error}"]))
                continue
            read += 1
            if feed.warning:
                problems.append(Problem(url, None, None, "", feed.warning))
            parts.extend(_feed_parts(feed, since, today))
        for url in ics_urls:
            try:
                data, _ = fetch(url, client, max_bytes)
                name, found = read_calendar(data, zone)
            except SourceError as error:
                problems.append(Problem(url, None, None, "", str(error)))
                parts.append(_Part([f"nicht gelesen: {one_line(url)}: {error}"]))
                continue
            read += 1
            calendars_read.append(url)
            if name:
                calendar_names.append(name)
            events.extend((event, url) for event in found)
    if read == 0:
        return None, problems
    if calendars_read:
        parts.append(_events_part(events, calendars_read, calendar_names, since, on, today))
    return _document(parts, since, on, today), problems


# --------------------------------------------------------------------------- feeds → sections


def _feed_parts(feed: Feed, since: date | None, today: date) -> list[_Part]:
    source = f"aus {one_line(feed.url)}, {today.isoformat()}"
    heading = feed.title or _host(feed.url)
    warning = [f"Achtung: {feed.warning}"] if feed.warning else []
    dated = [e for e in feed.entries if e.published is not None]
    undated = [e for e in feed.entries if e.published is None]
    old = [e for e in dated if since is not None and e.published is not None
           and e.published.date() < since]
    dated = sorted((e for e in dated if e not in old), key=lambda e: e.published or datetime.min,
                   reverse=True)
    parts: list[_Part] = []
    if dated or not undated:
        comments = [source, *warning]
        if old:
            comments.append(f"{_count(len(old), 'Eintrag', 'Einträge')} vor dem {since:%d.%m.%Y} "
                            "ausgelassen (--since)")
        part = _Part(comments)
        items = [_news_item(entry) for entry in dated]
        _section(part, "news", heading, "items", items)
        if not part.lines:
            part.comments.append("keine neuen Einträge" + (f" seit dem {since:%d.%m.%Y}" if since else ""))
        parts.append(part)
    if undated:
        part = _Part([source, *([] if dated else warning),
                      "Einträge ohne Datum (als Links; --since kann sie nicht auswählen)"])
        _section(part, "links", heading, "links", [_link_item(entry) for entry in undated])
        parts.append(part)
    return parts


def _summary(entry: FeedEntry, limit: int) -> tuple[str | None, bool]:
    if not entry.summary:
        return None, False
    convert = html_to_markdown if entry.summary_is_html else text_to_markdown
    text, shortened = convert(entry.summary, limit)
    return text or None, shortened


def _news_item(entry: FeedEntry) -> tuple[dict[str, Any], list[str], type[BaseModel]]:
    teaser, shortened = _summary(entry, TEASER_LIMIT)
    assert entry.published is not None
    item = {"date": entry.published.date().isoformat(), "title": entry.title, "teaser": teaser,
            "url": _url(entry.url)}
    return item, ["Text gekürzt"] if shortened else [], NewsItem


def _link_item(entry: FeedEntry) -> tuple[dict[str, Any], list[str], type[BaseModel]]:
    teaser, shortened = _summary(entry, TEASER_LIMIT)
    item = {"title": entry.title, "url": _url(entry.url), "teaser": teaser}
    return item, ["Text gekürzt"] if shortened else [], LinkItem


def _url(url: str | None) -> str | None:
    return url.strip().replace(" ", "%20") if url else None


def _host(url: str) -> str:
    match = re.match(r"^[a-z]+://([^/:?#]+)", url, re.I)
    return match.group(1) if match else "Aus dem Web"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


# --------------------------------------------------------------------------- calendars → events


def _events_part(found: list[tuple[CalendarEvent, str]], urls: list[str], names: list[str],
                 since: date | None, on: date, today: date) -> _Part:
    cut = max(since, on) if since is not None else on
    kept = sorted(((e, u) for e, u in found if (e.end or e.day) >= cut),
                  key=lambda pair: (pair[0].day, pair[0].start_time or datetime.min.time()))
    comments = [f"aus {one_line(u)}, {today.isoformat()}" for u in dict.fromkeys(urls)]
    if len(found) > len(kept):
        comments.append(f"{_count(len(found) - len(kept), 'Termin', 'Termine')} vor dem "
                        f"{cut:%d.%m.%Y} ausgelassen")
    part = _Part(comments)
    several = len(set(urls)) > 1
    items = []
    for event, url in kept:
        item, notes, model = _event(event)
        if several:
            notes.insert(0, f"aus {one_line(url)}")
        items.append((item, notes, model))
    heading = names[0] if len(set(names)) == 1 and len(names) == len(set(urls)) else "Termine"
    _section(part, "events", heading, "events", items)
    if not part.lines:
        part.comments.append("keine kommenden Termine")
    return part


def _event(event: CalendarEvent) -> tuple[dict[str, Any], list[str], type[BaseModel]]:
    venue, _, address = (event.location or "").partition(",")
    body = None
    notes: list[str] = []
    if event.description:
        convert = html_to_markdown if event.description_is_html else text_to_markdown
        body, shortened = convert(event.description, BODY_LIMIT)
        if shortened:
            notes.append("Beschreibung gekürzt")
    if event.recurring:
        notes.append("wiederkehrender Termin: nur der erste übernommen")
    item = {
        "title": event.title, "date": event.day.isoformat(),
        "end": event.end.isoformat() if event.end else None,
        "time": f"{event.start_time:%H:%M}" if event.start_time else None,
        "end_time": f"{event.end_time:%H:%M}" if event.end_time else None,
        "venue": venue.strip() or None, "address": address.strip() or None, "body": body or None,
        "link": {"label": MORE, "url": _url(event.url)} if event.url else None,
    }
    return item, notes, Event


# --------------------------------------------------------------------------- YAML


def _section(part: _Part, kind: str, heading: str, key: str,
             items: list[tuple[dict[str, Any], list[str], type[BaseModel]]]) -> None:
    """Append the section's lines to `part` for the items that validate (none: no lines)."""
    lines: list[str] = []
    for item, notes, model in items:
        item = {k: v for k, v in item.items() if v is not None}
        item, reason = _valid(item, model)
        if item is None:
            part.comments.append(f"ausgelassen: {reason}")
            continue
        lines += [f"      # {note}" for note in notes]
        lines += _mapping(item, indent=6, first="- ")
    if lines:
        part.lines = [f"  - kind: {kind}", f"    heading: {_scalar(heading)}", f"    {key}:", *lines]


def _valid(item: dict[str, Any], model: type[BaseModel]) -> tuple[dict[str, Any] | None, str]:
    """`item` if the model takes it; else without its optional texts; else None and why."""
    try:
        model.model_validate(item)
        return item, ""
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        what = "kein Link" if where == "url" and first["type"] == "missing" else f"{where}: {message}"
        reason = f"„{one_line(str(item.get('title', '')))[:60]}“ ({what})"
    lean = {k: v for k, v in item.items() if k not in ("teaser", "body", "link", "venue", "address")}
    try:
        model.model_validate(lean)
        return lean, ""
    except ValidationError:
        return None, reason


def _mapping(item: dict[str, Any], indent: int, first: str = "") -> list[str]:
    lines = []
    for n, (key, value) in enumerate(item.items()):
        pad = " " * indent + (first if n == 0 else " " * len(first))
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:")
            lines += _mapping(value, indent + len(first) + 2)
        elif key in ("teaser", "body"):
            lines.append(f"{pad}{key}: |")
            inner = " " * (indent + len(first) + 2)
            lines += [f"{inner}{line}" if line else "" for line in value.split("\n")]
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return lines


_PLAIN = re.compile(r"[\w(„][\w .,;()/–—’'„“!?+%-]*")
_NULLS = {"~", "null", "Null", "NULL"}


def _scalar(value: str) -> str:
    """`value` as a YAML scalar: plain where that is unambiguous, else double-quoted (JSON's
    escaping is valid YAML)."""
    plain = _PLAIN.fullmatch(value) or re.fullmatch(r"https?://\S+|\d{4}-\d{2}-\d{2}|\d{2}:\d{2}", value)
    if plain and not value.endswith(":") and value not in _NULLS:
        return value
    return json.dumps(value, ensure_ascii=False)


def _document(parts: list[_Part], since: date | None, on: date, today: date) -> str:
    window = f"Einträge seit dem {since:%d.%m.%Y}" if since else "alle Einträge (kein --since)"
    comment = (f"# Entwurf aus Feeds, erstellt am {today:%d.%m.%Y}: {window}.\n"
               "# Betreff, Preheader und Einleitung schreibt die Redaktion. Die Abschnitte sind\n"
               "# Vorschläge aus den Feeds: prüfen, kürzen, umstellen oder löschen.\n")
    body: list[str] = []
    for part in parts:
        body += [f"  # {one_line(c)}" for c in part.comments]
        body += part.lines
        if part.lines:
            body.append("")
    if not any(part.lines for part in parts):
        sample = NEW_ISSUE_SECTIONS.splitlines()
        body = [sample[0], "  # Nichts Neues in den Feeds: ein Beispielabschnitt zum Ersetzen.",
                *body, *sample[1:]]
    else:
        body.insert(0, "sections:")
    text = issue_head(on, comment) + "\n".join(body).rstrip("\n") + "\n"
    _check(text)
    return text


def _check(text: str) -> None:
    """The draft validates as written; anything else is a bug here, said plainly."""
    try:
        data, _ = read_yaml(Path("draft.yaml"), text)
        Issue.model_validate({**data, "slug": "draft"})
    except (IssueInvalid, ValidationError) as error:
        raise NewsletterError(f"the draft made from the feeds does not validate (please report "
                              f"this as a bug): {str(error).splitlines()[0]}") from None
