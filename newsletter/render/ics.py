"""One RFC 5545 calendar file per event ("In den Kalender eintragen").

Times are local to the newsletter's time zone (default Europe/Berlin), written
with TZID and a matching VTIMEZONE; date-only events are all-day events (DTEND
is the day after the last day, as RFC 5545 wants). UID and DTSTAMP derive from
the content, so rebuilding an issue gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from icalendar import Calendar
from icalendar import Event as VEvent

from newsletter.content.model import Event, EventsSection, Issue
from newsletter.render.personal import fill
from newsletter.render.text import markdown_to_text

PRODID = "-//newsletter//Newsletter//DE"


def slugify(text: str, max_length: int = 60) -> str:
    """`Jetzt anmelden zum 8. MPSC-Kongress` → `jetzt-anmelden-zum-8-mpsc-kongress`."""
    text = text.lower()
    for umlaut, ascii_ in (("ä", "ae"), ("ö", "oe"), ("ü", "ue"), ("ß", "ss")):
        text = text.replace(umlaut, ascii_)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    return text[:max_length].rstrip("-") or "termin"


def event_calendar(event: Event, *, uid: str, stamp: datetime, tz: str) -> str:
    """The .ics text of one event."""
    cal = Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("method", "PUBLISH")
    vevent = VEvent()
    vevent.add("uid", uid)
    vevent.add("dtstamp", stamp)
    vevent.add("summary", event.title)
    last_day = event.end or event.date
    if event.time is None:
        vevent.add("dtstart", event.date)
        vevent.add("dtend", last_day + timedelta(days=1))
    else:
        zone = ZoneInfo(tz)
        start = datetime.combine(event.date, event.time, tzinfo=zone)
        if event.end_time is not None:
            end = datetime.combine(last_day, event.end_time, tzinfo=zone)
        elif event.end is not None:
            end = datetime.combine(last_day + timedelta(days=1), datetime.min.time(), tzinfo=zone)
        else:
            end = start + timedelta(hours=2)  # a start time alone: assume an evening's length
        vevent.add("dtstart", start)
        vevent.add("dtend", end)
    location = ", ".join(part for part in (event.venue, event.address) if part)
    if location:
        vevent.add("location", location)
    description = [part for part in (
        event.motto,
        markdown_to_text(fill(event.body), width=10_000) if event.body else None,
        event.note,
        f"{event.registration.label} {event.registration.url}" if event.registration else None,
        f"{event.link.label} {event.link.url}" if event.link else None,
    ) if part]
    if description:
        vevent.add("description", "\n\n".join(description))
    url = (event.link or event.registration)
    if url is not None:
        vevent.add("url", url.url)
    cal.add_component(vevent)
    if event.time is not None:
        cal.add_missing_timezones(first_date=event.date - timedelta(days=366),
                                  last_date=last_day + timedelta(days=366))
    return cal.to_ical().decode("utf-8")


def event_calendars(issue: Issue, slug: str, tz: str, base_url: str) -> dict[str, tuple[Event, str]]:
    """File name → (event, .ics text) for every event of the issue, in order."""
    host = urlsplit(base_url).hostname or "newsletter.invalid"
    stamp = datetime.combine(issue.date, datetime.min.time(), tzinfo=UTC)
    result: dict[str, tuple[Event, str]] = {}
    for section in issue.sections:
        if not isinstance(section, EventsSection):
            continue
        for event in section.events:
            name = f"{event.date:%Y-%m-%d}-{slugify(event.title)}"
            candidate, n = name, 2
            while f"{candidate}.ics" in result:
                candidate, n = f"{name}-{n}", n + 1
            filename = f"{candidate}.ics"
            digest = hashlib.sha256(f"{slug}\n{filename}\n{event.title}".encode()).hexdigest()[:20]
            uid = f"{digest}@{host}"
            result[filename] = (event, event_calendar(event, uid=uid, stamp=stamp, tz=tz))
    return result
