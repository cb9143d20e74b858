"""The hourly (and daily) usage cube: its cells, and the rollup that builds it from raw usage rows.

``usage_hourly`` (``storage/console_schema.py``) holds, per dimension (model, group, key, deployment) and per
complete UTC hour, one row per value with the hour's counts, sums and two histograms. When the rollup passes the
end of a UTC day it also writes that day's rows, the sums of its hours, under the dimension ``<dim>:day``, so a
30-day range reads 30 rows per value instead of 720.

``rollup_marks['hourly']`` is the first hour not yet rolled. An hour is rolled once it has settled (no request
that started in it can still be running), in two steps: aggregate it in a read transaction, then write its rows
and move the mark in one short write transaction guarded by the mark it expects (compare and set), so replicas
racing for an hour roll it once and SQLite's write lock is never held while an hour is aggregated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, case, delete, func, insert, literal_column, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from .console_schema import (
    BUCKETS,
    CUBE_DIMENSIONS,
    CUBE_SUMS,
    HISTOGRAM_BOUNDS_MS,
    LATENCY_COLUMNS,
    TTFT_COLUMNS,
    rollup_marks,
    usage_hourly,
)
from .schema import usage

HOUR = 3600
DAY = 86400
HOURLY_MARK = "hourly"
ALL_DIMENSIONS = (*CUBE_DIMENSIONS, *(f"{d}:day" for d in CUBE_DIMENSIONS))

# Inline literals, not bound parameters: PostgreSQL must see the SELECT and GROUP BY expressions as identical.
EMPTY: ColumnElement[str] = literal_column("''")
ZERO: ColumnElement[int] = literal_column("0")
# By model: the one that answered, else the one asked for (so failures and refusals count against a model).
RAW_DIMENSIONS: dict[str, ColumnElement[Any]] = {
    "model": func.coalesce(usage.c.model, usage.c.requested_model),
    "group": func.coalesce(usage.c.group_name, EMPTY),
    "key": usage.c.key_id,
    "deployment": func.coalesce(usage.c.deployment, EMPTY),
}


def _histogram_index(column: ColumnElement[Any]) -> ColumnElement[int]:
    whens: list[tuple[Any, Any]] = [
        (column < literal_column(repr(float(bound))), literal_column(str(i)))
        for i, bound in enumerate(HISTOGRAM_BOUNDS_MS)
    ]
    return case(*whens, else_=literal_column(str(len(HISTOGRAM_BOUNDS_MS))))


LATENCY_INDEX = _histogram_index(usage.c.latency_ms)
TTFT_INDEX = _histogram_index(usage.c.ttft_ms)
ERRORS = func.sum(case((usage.c.status >= 400, 1), else_=0))
# The raw counterparts of the first eight CUBE_SUMS, for a query grouped by a latency bucket.
RAW_SUMS = (
    func.count(),
    ERRORS,
    func.sum(usage.c.prompt_tokens),
    func.sum(usage.c.cached_tokens),
    func.sum(usage.c.completion_tokens),
    func.sum(usage.c.reasoning_tokens),
    func.sum(usage.c.cost_micro),
    func.sum(usage.c.latency_ms),
)


def varying(*columns: ColumnElement[Any]) -> list[ColumnElement[Any]]:
    """GROUP BY terms without the constants (SQLite reads ``GROUP BY 0`` as a column position)."""
    return [c for c in columns if c is not ZERO and c is not EMPTY]


def quantile(histogram: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0-1) of a histogram over ``HISTOGRAM_BOUNDS_MS``, interpolated inside its bucket."""
    total = sum(histogram)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(histogram):
        if count and seen + count >= rank:
            low = float(HISTOGRAM_BOUNDS_MS[i - 1]) if i else 0.0
            if i == len(HISTOGRAM_BOUNDS_MS):
                return low  # the open top bucket: at least its lower bound
            return low + (float(HISTOGRAM_BOUNDS_MS[i]) - low) * (rank - seen) / count
        seen += count
    return float(HISTOGRAM_BOUNDS_MS[-1])


@dataclass(slots=True)
class Cell:
    """Counters (``CUBE_SUMS`` order) and the two histograms of one (time bucket, value)."""

    sums: list[float] = field(default_factory=lambda: [0.0] * len(CUBE_SUMS))
    latency: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    ttft: list[int] = field(default_factory=lambda: [0] * BUCKETS)

    def merge(self, other: Cell, sign: int = 1) -> None:
        self.sums = [a + sign * b for a, b in zip(self.sums, other.sums, strict=True)]
        self.latency = [a + sign * b for a, b in zip(self.latency, other.latency, strict=True)]
        self.ttft = [a + sign * b for a, b in zip(self.ttft, other.ttft, strict=True)]

    def add_cube_row(self, values: Sequence[Any]) -> None:
        """Add a cube row's ``CUBE_SUMS``, latency and TTFT columns, in that order."""
        n = len(CUBE_SUMS)
        self.sums = [a + (b or 0) for a, b in zip(self.sums, values[:n], strict=True)]
        self.latency = [a + (b or 0) for a, b in zip(self.latency, values[n : n + BUCKETS], strict=True)]
        self.ttft = [a + (b or 0) for a, b in zip(self.ttft, values[n + BUCKETS :], strict=True)]

    def figures(self) -> dict[str, Any]:
        s = dict(zip(CUBE_SUMS, self.sums, strict=True))
        requests = int(s["requests"])
        return {
            "requests": requests,
            "errors": int(s["errors"]),
            "error_rate": s["errors"] / requests if requests else None,
            "prompt_tokens": int(s["prompt_tokens"]),
            "cached_tokens": int(s["cached_tokens"]),
            "completion_tokens": int(s["completion_tokens"]),
            "reasoning_tokens": int(s["reasoning_tokens"]),
            "cost_micro": int(s["cost_micro"]),
            "latency_avg_ms": s["latency_ms_sum"] / requests if requests else None,
            "latency_p50_ms": quantile(self.latency, 0.5),
            "latency_p95_ms": quantile(self.latency, 0.95),
            "ttft_p50_ms": quantile(self.ttft, 0.5),
            "ttft_p95_ms": quantile(self.ttft, 0.95),
        }


class Raced(Exception):
    """Another process moved the mark first: it rolled this hour."""


def read_mark(conn: Connection) -> float | None:
    value = conn.execute(select(rollup_marks.c.value).where(rollup_marks.c.name == HOURLY_MARK)).scalar()
    return float(value) if value is not None else None


def init_mark(conn: Connection, now: float) -> float:
    """The mark, created on first use at the hour of the oldest raw row (or the current hour)."""
    mark = read_mark(conn)
    if mark is not None:
        return mark
    oldest = conn.execute(select(func.min(usage.c.created_at))).scalar()
    start = float(int((oldest if oldest is not None else now) // HOUR) * HOUR)
    conn.execute(insert(rollup_marks).values(name=HOURLY_MARK, value=start))
    return start


async def hour_cells(conn: AsyncConnection, hour: int, ready: int) -> tuple[dict[tuple[str, str], Cell], int]:
    """The cube rows of one hour, and the next hour to roll (skipping hours without rows, up to ``ready``).

    The rollup runs in the gateway's process: the grouped rows are added up a slice at a time, letting the event
    loop serve requests in between.
    """
    u = usage.c
    span = and_(u.created_at >= hour, u.created_at < hour + HOUR)
    dims = tuple(RAW_DIMENSIONS[d] for d in CUBE_DIMENSIONS)
    cells: dict[tuple[str, str], Cell] = {}

    def targets(row: Sequence[Any]) -> list[Cell]:
        return [cells.setdefault((dim, row[i] or ""), Cell()) for i, dim in enumerate(CUBE_DIMENSIONS)]

    main = select(*dims, LATENCY_INDEX, *RAW_SUMS).where(span).group_by(*dims, LATENCY_INDEX)
    for n, row in enumerate((await conn.execute(main)).all()):
        for cell in targets(row):
            for i in range(8):
                cell.sums[i] += float(row[5 + i] or 0)
            cell.latency[int(row[4])] += int(row[5])
        if n % _SLICE == _SLICE - 1:
            await asyncio.sleep(0)
    ttft = (
        select(*dims, TTFT_INDEX, func.count(), func.sum(u.ttft_ms))
        .where(span, u.ttft_ms.is_not(None))
        .group_by(*dims, TTFT_INDEX)
    )
    for n, row in enumerate((await conn.execute(ttft)).all()):
        for cell in targets(row):
            cell.sums[8] += int(row[5])
            cell.sums[9] += float(row[6] or 0)
            cell.ttft[int(row[4])] += int(row[5])
        if n % _SLICE == _SLICE - 1:
            await asyncio.sleep(0)
    following = hour + HOUR
    if not cells:
        nxt = (await conn.execute(select(func.min(u.created_at)).where(u.created_at >= following))).scalar()
        following = min(ready, int(nxt // HOUR) * HOUR) if nxt is not None else ready
    return cells, max(following, hour + HOUR)


_SLICE = 500  # grouped rows added up between two turns of the event loop


def write_hour(conn: Connection, hour: int, cells: dict[tuple[str, str], Cell], following: int) -> None:
    """Write an hour's rows, the rows of every day it completes, and move the mark from ``hour`` to ``following``."""
    c = usage_hourly.c
    conn.execute(delete(usage_hourly).where(c.dim.in_(CUBE_DIMENSIONS), c.hour == hour))
    if cells:
        rows = []
        for (dim, value), cell in cells.items():
            row: dict[str, Any] = {"dim": dim, "hour": hour, "value": value}
            for name, v in zip(CUBE_SUMS, cell.sums, strict=True):
                row[name] = v if name.endswith("_sum") else int(v)
            row.update(zip(LATENCY_COLUMNS, cell.latency, strict=True))
            row.update(zip(TTFT_COLUMNS, cell.ttft, strict=True))
            rows.append(row)
        conn.execute(insert(usage_hourly), rows)
    # Days whose last hour is now rolled: hour < day end <= following.
    for day in range(hour // DAY * DAY, following, DAY):
        if hour < day + DAY <= following:
            _write_day(conn, day)
    moved = conn.execute(
        update(rollup_marks)
        .where(rollup_marks.c.name == HOURLY_MARK, rollup_marks.c.value == float(hour))
        .values(value=float(following))
    )
    if moved.rowcount != 1:
        raise Raced()  # rolls the transaction back


def _write_day(conn: Connection, day: int) -> None:
    c = usage_hourly.c
    columns = (*CUBE_SUMS, *LATENCY_COLUMNS, *TTFT_COLUMNS)
    for dim in CUBE_DIMENSIONS:
        daily = f"{dim}:day"
        conn.execute(delete(usage_hourly).where(c.dim == daily, c.hour == day))
        sums = select(
            literal_column(f"'{daily}'"),
            literal_column(str(day)),
            c.value,
            *(func.sum(getattr(c, name)) for name in columns),
        )
        rows = sums.where(c.dim == dim, c.hour >= day, c.hour < day + DAY).group_by(c.value)
        conn.execute(insert(usage_hourly).from_select(["dim", "hour", "value", *columns], rows))
