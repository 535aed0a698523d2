"""Date presets of the reports page: last 7 / 30 / 90 days and last quarter, as links that
fill the form's `from`/`to` (whole UTC days, `to` inclusive) and keep the other filters."""

from __future__ import annotations

from datetime import date, timedelta
from urllib.parse import urlencode


def last_quarter(today: date) -> tuple[date, date]:
    """The calendar quarter before the one `today` is in: (first day, last day)."""
    first_this = date(today.year, 3 * ((today.month - 1) // 3) + 1, 1)
    last = first_this - timedelta(days=1)
    return date(last.year, 3 * ((last.month - 1) // 3) + 1, 1), last


def periods(today: date) -> list[tuple[str, str, date, date]]:
    """(key, label, from, to) for each preset; the last N days end today."""
    out = [(f"{n}d", f"Last {n} days", today - timedelta(days=n - 1), today) for n in (7, 30, 90)]
    start, end = last_quarter(today)
    quarter = (start.month - 1) // 3 + 1
    out.append(("quarter", f"Last quarter (Q{quarter} {start.year})", start, end))
    return out


def links(values: dict, today: date) -> list[dict]:
    """One link per preset: the current filters with the preset's period; `active` when the
    form shows exactly that period."""
    out = []
    for key, label, start, end in periods(today):
        query = {**values, "from": start.isoformat(), "to": end.isoformat()}
        out.append(
            {
                "key": key,
                "label": label,
                "query": urlencode(query),
                "active": values.get("from") == query["from"] and values.get("to") == query["to"],
            }
        )
    return out
