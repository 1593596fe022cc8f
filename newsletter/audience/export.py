"""CSV export of a list: the import's format plus status and dates, so export → import
round-trips (the importer reads `status` and ignores the dates)."""

from __future__ import annotations

import csv
from datetime import datetime
from typing import Any, TextIO

from newsletter.audience.store import Store

EXPORT_COLUMNS = ["email", "name", "status", "created_at", "updated_at"]


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
