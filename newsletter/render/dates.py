"""Dates and times as readers expect them, via Babel: `Di., 28. April 2026`,
`28.–29. April 2026`, `18:00 Uhr`. The locale comes from `newsletter.language`."""

from __future__ import annotations

from datetime import date, time

from babel.dates import format_date, format_interval, format_time


def _german(locale: str) -> bool:
    return locale.lower().replace("-", "_").split("_")[0] == "de"


def long_date(day: date, locale: str = "de", *, weekday: bool = True) -> str:
    """`Di., 28. April 2026` (or without the weekday)."""
    if _german(locale):
        return format_date(day, "EEE, d. MMMM y" if weekday else "d. MMMM y", locale=locale)
    return format_date(day, "full" if weekday else "long", locale=locale)


def short_date(day: date, locale: str = "de") -> str:
    """`18.03.2026`: for dated news items."""
    return format_date(day, "dd.MM.y" if _german(locale) else "short", locale=locale)


def date_range(start: date, end: date | None, locale: str = "de") -> str:
    """One day with weekday, or a range written the short German way: `28.–29. April 2026`,
    `30. April – 2. Mai 2026`, `30. Dezember 2025 – 2. Januar 2026`."""
    if end is None or end == start:
        return long_date(start, locale)
    if not _german(locale):
        return format_interval(start, end, "yMMMMd", locale=locale)
    last = format_date(end, "d. MMMM y", locale=locale)
    if (start.year, start.month) == (end.year, end.month):
        return f"{start.day}.–{last}"
    if start.year == end.year:
        return f"{format_date(start, 'd. MMMM', locale=locale)} – {last}"
    return f"{format_date(start, 'd. MMMM y', locale=locale)} – {last}"


def clock(value: time, locale: str = "de") -> str:
    """`18:00` (German) or the locale's short time."""
    return format_time(value, "H:mm" if _german(locale) else "short", locale=locale)


def time_range(start: time | None, end: time | None, locale: str = "de") -> str:
    """`18:00 Uhr`, `9:30–17:00 Uhr`; empty when there is no time."""
    if start is None:
        return ""
    text = clock(start, locale) + (f"–{clock(end, locale)}" if end is not None else "")
    return f"{text} Uhr" if _german(locale) else text


def event_when(start: date, end: date | None, start_time: time | None, end_time: time | None,
               locale: str = "de") -> str:
    """The date line of an event: `Di., 28. April 2026, 18:00 Uhr`."""
    times = time_range(start_time, end_time, locale)
    when = date_range(start, end, locale)
    return f"{when}, {times}" if times else when
