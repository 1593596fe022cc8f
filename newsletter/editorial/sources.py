"""Fetching a feed and reading it: RSS/Atom with feedparser, iCalendar with icalendar.

Each reader returns plain records (`FeedEntry`, `CalendarEvent`) in the project's time zone,
or raises `SourceError` with one sentence saying what is wrong; `draft.py` turns records into
issue YAML. No hand-written parsing of either format.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

import feedparser
import httpx
from icalendar import Calendar

from newsletter.editorial.markup import clean, html_to_text, looks_like_html, one_line

TIMEOUT = 15.0  # seconds, per request (connect, each read)
MAX_BYTES = 5 * 1024 * 1024  # a feed or calendar larger than this is refused
USER_AGENT = "newsletter-draft/0.1 (feed reader of the newsletter tool)"


class SourceError(Exception):
    """A feed that could not be fetched or read; the message is the reason, one line."""


def fetch(url: str, client: httpx.Client, max_bytes: int = MAX_BYTES) -> tuple[bytes, str | None]:
    """The body of `url` (following redirects) and its Content-Type; `SourceError` otherwise."""
    if not url.lower().startswith(("http://", "https://")):
        raise SourceError("not an http(s) URL")
    try:
        with client.stream("GET", url) as response:
            if response.status_code >= 400:
                reason = response.reason_phrase or ""
                raise SourceError(f"HTTP {response.status_code} {reason}".rstrip())
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise SourceError(f"larger than {max_bytes // 1024} KB ({int(declared) // 1024} KB)")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise SourceError(f"larger than {max_bytes // 1024} KB")
            return bytes(body), response.headers.get("content-type")
    except httpx.TimeoutException:
        raise SourceError(f"no answer within {client.timeout.read or TIMEOUT:g} seconds") from None
    except httpx.ConnectError as exc:
        raise SourceError(f"not reachable ({_first_line(exc) or 'connection failed'})") from None
    except httpx.TooManyRedirects:
        raise SourceError("too many redirects") from None
    except httpx.HTTPError as exc:
        raise SourceError(f"cannot be fetched ({type(exc).__name__}: {_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= 120 else line[:119] + "…"


# --------------------------------------------------------------------------- RSS / Atom


@dataclass(frozen=True)
class FeedEntry:
    title: str
    url: str | None
    published: datetime | None  # aware, in the project's time zone
    summary: str | None  # HTML or plain text, as the feed has it
    summary_is_html: bool = True


@dataclass
class Feed:
    url: str
    title: str | None
    entries: list[FeedEntry] = field(default_factory=list)
    warning: str | None = None  # malformed, but some entries could be read


# feedparser's "bozo" exceptions that only say the feed was read leniently, not that it is broken.
_HARMLESS = (feedparser.CharacterEncodingOverride, feedparser.NonXMLContentType)


def read_feed(url: str, data: bytes, content_type: str | None, zone: tzinfo) -> Feed:
    """The entries of an RSS 0.9x/1.0/2.0 or Atom feed (feedparser; relative links resolved
    against `url`, HTML sanitised by feedparser and converted again by `markup`)."""
    headers = {"content-location": url}
    if content_type:
        headers["content-type"] = content_type
    parsed = feedparser.parse(data, response_headers=headers)
    problem = parsed.get("bozo_exception") if parsed.get("bozo") else None
    if isinstance(problem, _HARMLESS):
        problem = None
    if not parsed.get("version") and not parsed.entries:
        if not data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
            raise SourceError("not an RSS or Atom feed (not XML)")
        if problem is not None:
            raise SourceError(f"malformed feed ({_describe_xml_error(problem)}), nothing could be read")
        raise SourceError("not an RSS or Atom feed (no channel or feed element found)")
    if problem is not None and not parsed.entries:
        raise SourceError(f"malformed feed ({_describe_xml_error(problem)}), nothing could be read")
    feed = Feed(url=url, title=_text(parsed.feed, "title") or None)
    if problem is not None:
        count = len(parsed.entries)
        feed.warning = (f"malformed feed ({_describe_xml_error(problem)}); {count} "
                        f"{'entry' if count == 1 else 'entries'} read by the tolerant parser: check them")
    for entry in parsed.entries:
        stamp = entry.get("published_parsed") or entry.get("updated_parsed")
        published = (datetime.fromtimestamp(calendar.timegm(stamp), UTC).astimezone(zone)
                     if stamp else None)
        summary, is_html = _summary(entry)
        feed.entries.append(FeedEntry(
            title=_text(entry, "title"), url=entry.get("link") or None, published=published,
            summary=summary, summary_is_html=is_html))
    return feed


def _text(node: Any, key: str) -> str:
    """A title: plain text on one line, whatever type (text, html, xhtml) the feed gave it."""
    value = node.get(key) or ""
    detail = node.get(f"{key}_detail") or {}
    if "html" in (detail.get("type") or ""):
        return html_to_text(value)
    return one_line(value)


def _summary(entry: Any) -> tuple[str | None, bool]:
    for value, detail in ((entry.get("summary"), entry.get("summary_detail")),
                          *((c.get("value"), c) for c in entry.get("content") or [])):
        if value and value.strip():
            kind = (detail or {}).get("type") or "text/html"
            return value, "html" in kind or looks_like_html(value)
    return None, False


def _describe_xml_error(error: BaseException) -> str:
    line = getattr(error, "getLineNumber", None)
    message = getattr(error, "getMessage", None)
    text = message() if callable(message) else _first_line(error)
    if callable(line) and line():
        return f"line {line()}: {text}"
    return text or type(error).__name__


# --------------------------------------------------------------------------- iCalendar


@dataclass(frozen=True)
class CalendarEvent:
    title: str
    day: date
    end: date | None = None  # last day, for events over several days
    start_time: time | None = None
    end_time: time | None = None
    location: str | None = None
    description: str | None = None
    description_is_html: bool = False
    url: str | None = None
    recurring: bool = False


def read_calendar(data: bytes, zone: tzinfo) -> tuple[str | None, list[CalendarEvent]]:
    """The calendar's name (X-WR-CALNAME) and its events, times in `zone` (floating times are
    taken as `zone`'s); cancelled events are left out, recurring ones give their first date."""
    if not data.lstrip(b"\xef\xbb\xbf \t\r\n").upper().startswith(b"BEGIN:VCALENDAR"):
        raise SourceError("not an iCalendar file (it does not start with BEGIN:VCALENDAR)")
    try:
        calendars = Calendar.from_ical(data, multiple=True)
    except (ValueError, IndexError, KeyError) as exc:
        raise SourceError(f"not a valid iCalendar file ({_first_line(exc)})") from None
    if not calendars:
        raise SourceError("malformed iCalendar file (no complete BEGIN:VCALENDAR … END:VCALENDAR)")
    name = one_line(str(calendars[0].get("X-WR-CALNAME", ""))) or None
    events: list[CalendarEvent] = []
    for cal in calendars:
        for component in cal.walk("VEVENT"):
            if str(component.get("STATUS", "")).upper() == "CANCELLED":
                continue
            try:
                event = _event(component, zone)
            except (ValueError, TypeError, KeyError, AttributeError):
                continue  # an event without a start or with an unreadable one: skipped
            if event is not None:
                events.append(event)
    return name, events


def _event(component: Any, zone: tzinfo) -> CalendarEvent | None:
    title = one_line(str(component.get("SUMMARY", "")))
    if not title or "DTSTART" not in component:
        return None
    start = component.decoded("DTSTART")
    end: date | datetime | None = component.decoded("DTEND") if "DTEND" in component else None
    if end is None and "DURATION" in component:
        end = start + component.decoded("DURATION")
    description = clean(str(component.get("DESCRIPTION", ""))).strip() or None
    location = ", ".join(p for p in (one_line(x) for x in str(component.get("LOCATION", "")).split(
        "\n")) if p) or None
    url = one_line(str(component.get("URL", ""))) or None
    common: dict[str, Any] = {
        "title": title, "location": location, "description": description,
        "description_is_html": bool(description and looks_like_html(description)), "url": url,
        "recurring": "RRULE" in component or "RDATE" in component,
    }
    if not isinstance(start, datetime):  # an all-day event; DTEND is the day after the last
        last = (end if isinstance(end, date) and not isinstance(end, datetime) else start + timedelta(1))
        last -= timedelta(days=1)
        return CalendarEvent(day=start, end=last if last > start else None, **common)
    begin = _local(start, zone)
    finish = _local(end, zone) if isinstance(end, datetime) else None
    if finish is not None and finish <= begin:
        finish = None
    start_time = time(begin.hour, begin.minute)
    if finish is None:
        return CalendarEvent(day=begin.date(), start_time=start_time, **common)
    if finish.time() == time(0, 0):  # ends at midnight: the day before is its last day
        last_day = (finish - timedelta(minutes=1)).date()
        if last_day == begin.date():
            return CalendarEvent(day=begin.date(), start_time=start_time, **common)
        return CalendarEvent(day=begin.date(), end=last_day, start_time=start_time, **common)
    end_time = time(finish.hour, finish.minute)
    if finish.date() == begin.date():
        return CalendarEvent(day=begin.date(), start_time=start_time,
                             end_time=end_time if end_time > start_time else None, **common)
    return CalendarEvent(day=begin.date(), end=finish.date(), start_time=start_time, end_time=end_time,
                         **common)


def _local(moment: datetime, zone: tzinfo) -> datetime:
    if moment.tzinfo is None:  # a floating time: the project's time zone
        return moment.replace(tzinfo=zone)
    return moment.astimezone(zone)
