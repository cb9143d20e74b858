"""Reading upstream response headers: one copy of the rules every adapter follows."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any


def header(headers: Any, name: str) -> str | None:
    """Case-insensitive header lookup that works for plain dicts and multidicts alike."""
    if headers is None:
        return None
    value = headers.get(name)
    if value is not None:
        return str(value)
    lname = name.lower()
    for key, val in headers.items():
        if str(key).lower() == lname:
            return str(val)
    return None


def retry_after_seconds(headers: Any) -> float | None:
    """``retry-after-ms`` then ``retry-after`` (seconds or HTTP date), the order the OpenAI SDKs use."""
    ms = header(headers, "retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    raw = header(headers, "retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
