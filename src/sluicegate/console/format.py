"""How numbers, times and durations read on the console's pages (also Jinja filters)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

NONE = "\u2013"  # an en dash where there is no figure


def number(value: Any) -> str:
    if value is None:
        return NONE
    return f"{int(value):,}"


def compact(value: Any) -> str:
    """1,234 → 1.2k; 3,400,000 → 3.4M (chart axes and tiles)."""
    if value is None:
        return NONE
    v = float(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= limit:
            text = f"{v / limit:.1f}".rstrip("0").rstrip(".")
            return text + suffix
    if v == int(v):
        return str(int(v))
    return f"{v:.2f}".rstrip("0").rstrip(".")


def credits(value: Any) -> str:
    if value is None:
        return NONE
    v = float(value)
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.2f}"
    if abs(v) >= 0.01:
        return f"{v:,.4f}".rstrip("0").rstrip(".")
    return f"{v:.6f}".rstrip("0").rstrip(".")


def millis(value: Any) -> str:
    if value is None:
        return NONE
    v = float(value)
    if v >= 10_000:
        return f"{v / 1000:.1f} s"
    if v >= 1000:
        return f"{v / 1000:.2f} s"
    return f"{v:.0f} ms"


def percent(value: Any) -> str:
    if value is None:
        return NONE
    v = float(value) * 100
    return f"{v:.1f} %" if v < 10 else f"{v:.0f} %"


def when(value: Any) -> str:
    """An epoch time as UTC date and time (the console shows UTC throughout, as the ledger does)."""
    if value is None:
        return NONE
    return dt.datetime.fromtimestamp(float(value), dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def iso(value: Any) -> str:
    if value is None:
        return ""
    return dt.datetime.fromtimestamp(float(value), dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def ago(value: Any, now: float) -> str:
    if value is None:
        return "never"
    seconds = max(0, now - float(value))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return "just now"


def axis_time(epoch: int, bucket: int) -> str:
    t = dt.datetime.fromtimestamp(epoch, dt.UTC)
    return (
        t.strftime("%m-%d")
        if bucket >= 86400
        else t.strftime("%H:%M")
        if bucket < 6 * 3600
        else t.strftime("%m-%d %H:%M")
    )


def plain(value: Any) -> str:
    """A JSON value as JSON writes it (null, true, [..]), strings bare: audit details read like the API's."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


FILTERS = {
    "plain": plain,
    "number": number,
    "compact": compact,
    "credits": credits,
    "millis": millis,
    "percent": percent,
    "when": when,
    "iso": iso,
}
