"""What a usage row or an audit entry may hold: every value fits its column and what the drivers accept.

PostgreSQL refuses NUL in text and in jsonb (the group commit sends its batch as one jsonb document), a
``varchar(n)`` refuses n+1 characters and ``int4`` refuses 2**31; orjson, asyncpg and sqlite3 refuse lone
surrogates (not encodable in UTF-8) and integers past 64 bits. One such value used to fail the whole batch
that carried it, losing its neighbours' records too (issues 23 and 24). Texts reach these columns from
upstreams (error codes), from the config (model ids, deployment labels) and from the client (``user``,
``metadata``, validated at the edge), so every row is cleaned when it is built (``clean_usage_row``,
``clean_entry``: a few comparisons per value when there is nothing to clean). A record the store refuses
all the same is written by the batch writer in its last-resort form (``last_resort_row``,
``last_resort_entry``): ASCII-only texts, clamped numbers, the client's free-form fields dropped with a marker.

Column sizes and integer ranges are read from ``storage/schema.py`` (and a test holds ``USAGE_COLUMNS`` to the
table), so a schema change cannot leave a column out.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import JSON, BigInteger, Boolean, Float, Integer, String, Table

from .schema import audit_log, usage

if TYPE_CHECKING:  # audit.py uses ``clean_json`` for the payloads it chains
    from ..records import AuditEntry

TRUNCATED = "...[truncated]"
_SURROGATES = re.compile("[\ud800-\udfff]")
_INT4 = 2**31 - 1
_INT8 = 2**63 - 1
_UNBOUNDED = 2**62  # the size of a text column without one (Text)
# Fields of a request's audit payload that come from the client and that a last-resort entry drops.
_CLIENT_FIELDS = ("metadata", "prompt")


def clean_text(value: str, limit: int | None) -> str:
    """``value`` without NUL or lone surrogates and at most ``limit`` characters; itself when already so."""
    if (limit is None or len(value) <= limit) and "\x00" not in value and (value.isascii() or _no_surrogates(value)):
        return value
    value = _SURROGATES.sub("\ufffd", value.replace("\x00", ""))
    if limit is not None and len(value) > limit:
        # The marker only where it leaves room for the text: the short columns hold the gateway's own words.
        value = value[: limit - len(TRUNCATED)] + TRUNCATED if limit >= 2 * len(TRUNCATED) else value[:limit]
    return value


def _no_surrogates(value: str) -> bool:
    return _SURROGATES.search(value) is None


def _ascii(value: str, limit: int | None) -> str:
    """The last-resort text: cleaned, then ASCII only (backslash escapes), so no server encoding refuses it."""
    return clean_text(clean_text(value, None).encode("ascii", "backslashreplace").decode("ascii"), limit)


def _kinds(table: Table, columns: Sequence[str]) -> list[tuple[str, int | None, bool]]:
    """Per column, in ``columns`` order: its kind (text, int, float, bool, json), its size, and nullability."""
    out: list[tuple[str, int | None, bool]] = []
    for name in columns:
        column = table.c[name]
        t = column.type
        if isinstance(t, JSON):
            kind, size = "json", None
        elif isinstance(t, String):
            kind, size = "text", t.length
        elif isinstance(t, Boolean):
            kind, size = "bool", None
        elif isinstance(t, Integer):
            kind, size = "int", _INT8 if isinstance(t, BigInteger) else _INT4
        elif isinstance(t, Float):
            kind, size = "float", None
        else:  # pragma: no cover - a new column type must be taught here
            raise TypeError(f"no rule for column {table.name}.{name} of type {t!r}")
        out.append((kind, size, bool(column.nullable)))
    return out


# The order of the tuples ``usage_store.usage_row`` builds and the batch writer inserts; ``id`` is the database's.
USAGE_COLUMNS = (
    "request_id", "created_at", "day", "key_id", "key_prefix", "group_name", "requested_model", "model",
    "deployment", "stream", "status", "outcome", "error_code", "partial", "estimated", "prompt_tokens",
    "cached_tokens", "cache_write_tokens", "completion_tokens", "reasoning_tokens", "cost_micro", "latency_ms",
    "ttft_ms", "user_field", "attempts",
)  # fmt: skip
_USAGE_KINDS = _kinds(usage, USAGE_COLUMNS)
_USAGE_TEXTS = tuple((i, size or _UNBOUNDED) for i, (kind, size, _) in enumerate(_USAGE_KINDS) if kind == "text")
_USAGE_INTS = tuple((i, size or _INT4) for i, (kind, size, _) in enumerate(_USAGE_KINDS) if kind == "int")
_AUDIT_NAMES = ("kind", "actor", "action", "target")
_AUDIT_LIMITS = tuple(size or _UNBOUNDED for _, size, _ in _kinds(audit_log, _AUDIT_NAMES))
# An upstream's error code is also kept in a row's ``attempts`` and in its audit entry: cut to the same size.
ERROR_CODE_CHARS = _USAGE_KINDS[USAGE_COLUMNS.index("error_code")][1]


def clean_usage_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """Every text column of a ``usage`` row cleaned to its size, every integer inside its column's range.

    Runs for every request: the checks are inline, so a row with nothing to clean costs about a microsecond
    (measured: a plain loop beat C-level map/any passes over the row, and a call per value).
    """
    values: list[Any] | None = None
    for i, limit in _USAGE_TEXTS:
        value = row[i]
        if value is not None and (
            len(value) > limit or "\x00" in value or not (value.isascii() or _no_surrogates(value))
        ):
            values = values or list(row)
            values[i] = clean_text(value, limit)
    for i, high in _USAGE_INTS:
        value = row[i]
        if not 0 <= value <= high:
            values = values or list(row)
            values[i] = min(max(value, 0), high)
    return row if values is None else tuple(values)


def clean_entry(entry: AuditEntry) -> AuditEntry:
    """An audit entry's text columns cleaned to their sizes (a payload is cleaned when it is chained)."""
    kind, actor, action, target = entry.kind, entry.actor, entry.action, entry.target
    kind_chars, actor_chars, action_chars, target_chars = _AUDIT_LIMITS
    if len(kind) <= kind_chars and len(actor) <= actor_chars and len(action) <= action_chars:
        joined = kind + actor + action + target  # one scan for all four (half the cost of four)
        if len(target) <= target_chars and "\x00" not in joined and (joined.isascii() or _no_surrogates(joined)):
            return entry
    return entry._replace(
        kind=clean_text(kind, kind_chars),
        actor=clean_text(actor, actor_chars),
        action=clean_text(action, action_chars),
        target=clean_text(target, target_chars),
    )


def clean_json(value: Any, *, ascii_only: bool = False) -> Any:
    """``value`` with every string (keys too) cleaned and anything orjson cannot write made a string."""
    if isinstance(value, str):
        return _ascii(value, None) if ascii_only else clean_text(value, None)
    if isinstance(value, dict):
        return {_key(k, ascii_only): clean_json(v, ascii_only=ascii_only) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v, ascii_only=ascii_only) for v in value]
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int) and -(2**63) <= value < 2**64:
        return value
    return clean_json(str(value), ascii_only=ascii_only)


def _key(key: Any, ascii_only: bool) -> str:
    return _ascii(str(key), None) if ascii_only else clean_text(str(key), None)


def last_resort_row(row: Sequence[Any]) -> tuple[Any, ...]:
    """A ``usage`` row the store refused, in the form any store takes: ASCII texts cut to size, integers in
    range, finite times, ``attempts`` rewritten as ASCII JSON (or ``[]`` when it is not JSON)."""
    values = list(row)
    for i, (kind, size, nullable) in enumerate(_USAGE_KINDS):
        value = values[i]
        if value is None and nullable:
            continue
        if kind == "text":
            values[i] = _ascii(str(value) if value is not None else "", size)
        elif kind == "int":
            values[i] = min(max(value, 0), size or _INT4) if isinstance(value, int) else 0
        elif kind == "float":
            finite = isinstance(value, int | float) and math.isfinite(value)
            values[i] = float(value) if finite else (time.time() if USAGE_COLUMNS[i] == "created_at" else 0.0)
        elif kind == "bool":
            values[i] = bool(value)
        else:
            try:
                values[i] = json.dumps(clean_json(orjson.loads(value)), ensure_ascii=True)
            except (TypeError, ValueError):
                values[i] = "[]"
    return tuple(values)


def last_resort_entry(entry: AuditEntry, error: BaseException) -> AuditEntry:
    """An audit entry the store refused: ASCII texts, the client's free-form fields dropped, and a marker
    saying so (``last_resort``: the error's class and what was dropped). Chained like any other entry."""
    payload = entry.payload if isinstance(entry.payload, dict) else {"payload": entry.payload}
    dropped = [k for k in _CLIENT_FIELDS if k in payload]
    kept = {k: v for k, v in payload.items() if k not in _CLIENT_FIELDS}
    kept["last_resort"] = {"error": type(error).__name__, "dropped": dropped}
    created = entry.created_at
    kind_chars, actor_chars, action_chars, target_chars = _AUDIT_LIMITS
    return entry._replace(
        created_at=float(created) if isinstance(created, int | float) and math.isfinite(created) else time.time(),
        kind=_ascii(str(entry.kind), kind_chars),
        actor=_ascii(str(entry.actor), actor_chars),
        action=_ascii(str(entry.action), action_chars),
        target=_ascii(str(entry.target), target_chars),
        payload=clean_json(kept, ascii_only=True),
    )
