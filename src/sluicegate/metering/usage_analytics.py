"""Analytics over the usage ledger: time series and breakdowns from an hourly cube plus raw rows, the request log.

The cube (``usage_hourly``, see ``storage/console_schema.py``) holds complete UTC hours, rolled once they have
settled (no request that started in them can still be running). A range is answered from the cube for the hours
before the rollup mark and from raw ``usage`` rows after it, so a 30-day view reads a few thousand cube rows and
about an hour of raw rows, however large the ledger. Both parts are grouped in SQL into (time bucket, value,
histogram bucket) cells; Python only adds cells up. Hours count whole: a range that starts inside a rolled hour
includes that entire hour, the same rule as ``usage_daily`` for days.

Nothing here runs on the request path: the cube is built by a background task and read by the console and the
analytics API. The group commit writes no extra index for it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Connection,
    Integer,
    Text,
    and_,
    case,
    cast,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from ..storage.console_schema import (
    BUCKETS,
    CUBE_DIMENSIONS,
    CUBE_SUMS,
    HISTOGRAM_BOUNDS_MS,
    LATENCY_COLUMNS,
    TTFT_COLUMNS,
    rollup_marks,
    usage_hourly,
)
from ..storage.schema import audit_log, usage

HOUR = 3600
HOURLY_MARK = "hourly"
# Inline literals, not bound parameters: PostgreSQL must see the SELECT and GROUP BY expressions as identical.
_EMPTY: ColumnElement[str] = literal_column("''")
_ZERO: ColumnElement[int] = literal_column("0")
# By model: the one that answered, else the one asked for (so failures and refusals count against a model).
_RAW_DIMENSIONS: dict[str, ColumnElement[Any]] = {
    "model": func.coalesce(usage.c.model, usage.c.requested_model),
    "group": func.coalesce(usage.c.group_name, _EMPTY),
    "key": usage.c.key_id,
    "deployment": func.coalesce(usage.c.deployment, _EMPTY),
}
_REQUEST_LOG_COLUMNS = [c for c in usage.c if c.name != "day"]


def _num(value: float) -> ColumnElement[Any]:
    return literal_column(repr(value))


def _histogram_index(column: ColumnElement[Any]) -> ColumnElement[int]:
    whens: list[tuple[Any, Any]] = [
        (column < _num(float(bound)), literal_column(str(i))) for i, bound in enumerate(HISTOGRAM_BOUNDS_MS)
    ]
    return case(*whens, else_=literal_column(str(len(HISTOGRAM_BOUNDS_MS))))


_LATENCY_INDEX = _histogram_index(usage.c.latency_ms)
_TTFT_INDEX = _histogram_index(usage.c.ttft_ms)
_ERROR = func.sum(case((usage.c.status >= 400, 1), else_=0))


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

    def merge(self, other: Cell) -> None:
        for i, v in enumerate(other.sums):
            self.sums[i] += v
        for i, n in enumerate(other.latency):
            self.latency[i] += n
        for i, n in enumerate(other.ttft):
            self.ttft[i] += n

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


Cells = dict[tuple[int, str], Cell]  # (time bucket start, or 0 for a whole range; value) -> cell


class UsageAnalytics:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._pg = engine.dialect.name == "postgresql"

    # the cube

    async def hourly_mark(self) -> float | None:
        """The first hour not in the cube (epoch seconds), or None before the first rollup."""
        async with self._engine.connect() as conn:
            return await conn.run_sync(_mark)

    async def rollup_hours(self, now: float | None = None, settle: float = 900.0) -> list[int]:
        """Roll every complete hour that ended at least ``settle`` seconds ago into the cube, oldest first.

        Each hour is read in its own read transaction, then written (delete, insert, move the mark) in a short
        write transaction guarded by the mark it expects, so replicas racing for an hour roll it once and a
        SQLite writer never holds the lock while the hour is aggregated. Returns the hours rolled.
        """
        now = time.time() if now is None else now
        ready = int((now - settle) // HOUR) * HOUR  # hours before this one have settled
        rolled: list[int] = []
        async with self._engine.begin() as conn:
            mark = await conn.run_sync(_init_mark, now)
        while mark < ready:
            async with self._engine.connect() as conn:
                cells, following = await conn.run_sync(_hour_cells, int(mark), ready)
            try:
                async with self._engine.begin() as conn:
                    await conn.run_sync(_write_hour, int(mark), cells, following)
            except _Raced:
                break  # another process rolled it first; it carries on from there
            if cells:
                rolled.append(int(mark))
            mark = following
        return rolled

    async def prune_hours(self, before: float) -> int:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                delete(usage_hourly).where(usage_hourly.c.dim.in_(CUBE_DIMENSIONS), usage_hourly.c.hour < before)
            )
            return int(result.rowcount or 0)

    async def cells(self, dim: str | None, start: float, end: float, bucket: int | None) -> Cells:
        """Cells of ``[start, end)`` by ``dim`` (None: one value ``""``), per ``bucket`` seconds or for the whole range.

        Ranges that start on an hour and use buckets of whole hours (or none) read the cube for rolled hours.
        """
        out: Cells = {}
        async with self._engine.connect() as conn:
            raw_from = start
            whole_hours = start % HOUR == 0 and (bucket is None or bucket % HOUR == 0)
            if whole_hours:
                mark = await conn.run_sync(_mark)
                if mark is not None and mark > start:
                    for row in await conn.execute(self._cube_query(dim, start, min(mark, end), bucket)):
                        cell = out.setdefault((int(row[0]) * (bucket or 0), row[1]), Cell())
                        values = row[2:]
                        n = len(CUBE_SUMS)
                        for i in range(n):
                            cell.sums[i] += float(values[i] or 0)
                        for i in range(BUCKETS):
                            cell.latency[i] += int(values[n + i] or 0)
                            cell.ttft[i] += int(values[n + BUCKETS + i] or 0)
                    raw_from = max(start, mark)
            if raw_from < end:
                await self._raw_cells(conn, out, dim, raw_from, end, bucket)
        return out

    def _cube_query(self, dim: str | None, start: float, end: float, bucket: int | None) -> Any:
        c = usage_hourly.c
        tb: ColumnElement[Any] = (c.hour / literal_column(str(bucket))) if bucket else _ZERO
        value: ColumnElement[Any] = c.value if dim else _EMPTY
        sums = [func.sum(getattr(c, name)) for name in (*CUBE_SUMS, *LATENCY_COLUMNS, *TTFT_COLUMNS)]
        return (
            select(tb, value, *sums)
            .where(c.dim == (dim or "model"), c.hour >= int(start), c.hour < end)
            .group_by(*_varying(tb, value))
        )

    def _time_bucket(self, bucket: int | None) -> ColumnElement[Any]:
        if not bucket:
            return _ZERO
        quotient = usage.c.created_at / literal_column(f"{bucket}.0")
        return cast(func.floor(quotient), BigInteger) if self._pg else cast(quotient, Integer)

    async def _raw_cells(
        self, conn: Any, out: Cells, dim: str | None, start: float, end: float, bucket: int | None
    ) -> None:
        u = usage.c
        tb = self._time_bucket(bucket)
        value = _RAW_DIMENSIONS[dim] if dim else _EMPTY
        span = and_(u.created_at >= start, u.created_at < end)
        main = (
            select(
                tb,
                value,
                _LATENCY_INDEX,
                func.count(),
                _ERROR,
                func.sum(u.prompt_tokens),
                func.sum(u.cached_tokens),
                func.sum(u.completion_tokens),
                func.sum(u.reasoning_tokens),
                func.sum(u.cost_micro),
                func.sum(u.latency_ms),
            )
            .where(span)
            .group_by(*_varying(tb, value, _LATENCY_INDEX))
        )
        for row in await conn.execute(main):
            cell = out.setdefault((int(row[0]) * (bucket or 0), row[1]), Cell())
            for i in range(8):
                cell.sums[i] += float(row[3 + i] or 0)
            cell.latency[int(row[2])] += int(row[3])
        ttft = (
            select(tb, value, _TTFT_INDEX, func.count(), func.sum(u.ttft_ms))
            .where(span, u.ttft_ms.is_not(None))
            .group_by(*_varying(tb, value, _TTFT_INDEX))
        )
        for row in await conn.execute(ttft):
            cell = out.setdefault((int(row[0]) * (bucket or 0), row[1]), Cell())
            cell.sums[8] += int(row[3])
            cell.sums[9] += float(row[4] or 0)
            cell.ttft[int(row[2])] += int(row[3])

    # the request log

    async def requests(
        self,
        *,
        limit: int,
        before: tuple[float, int] | None = None,
        since: float | None = None,
        model: str | None = None,
        key_id: str | None = None,
        group: str | None = None,
        errors_only: bool = False,
        error_code: str | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first; ``before`` is the (created_at, id) of the last row of the previous page."""
        u = usage.c
        stmt = select(*_REQUEST_LOG_COLUMNS).order_by(u.created_at.desc(), u.id.desc()).limit(limit)
        if before is not None:
            # The range term lets the created_at index bound the scan; the OR breaks ties within one instant.
            stmt = stmt.where(u.created_at <= before[0], or_(u.created_at < before[0], u.id < before[1]))
        if since is not None:
            stmt = stmt.where(u.created_at >= since)
        if model:
            stmt = stmt.where(or_(u.model == model, u.requested_model == model))
        if key_id:
            stmt = stmt.where(u.key_id == key_id)
        if group:
            stmt = stmt.where(u.group_name == group)
        if errors_only:
            stmt = stmt.where(u.status >= 400)
        if error_code:
            stmt = stmt.where(u.error_code == error_code)
        async with self._engine.connect() as conn:
            return [_plain(r._mapping) for r in await conn.execute(stmt)]

    async def request(self, row_id: int) -> dict[str, Any] | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(*_REQUEST_LOG_COLUMNS).where(usage.c.id == row_id))).first()
        return _plain(row._mapping) if row else None

    async def request_audit(self, request_id: str, created_at: float, key_prefix: str) -> dict[str, Any] | None:
        """The request's audit entry (which holds the prompt when prompt logging is on).

        The audit log has no index for this (the group commit would write it for every request), so this scans
        the entries of that instant; the console asks only when prompt logging is on.
        """
        a = audit_log.c
        stmt = select(audit_log).where(a.kind == "request", a.created_at == created_at, a.actor == key_prefix)
        async with self._engine.connect() as conn:
            for row in await conn.execute(stmt):
                payload = orjson.loads(row.payload)
                if payload.get("request_id") == request_id:
                    return {**_plain(row._mapping), "payload": payload}
        return None

    async def attempts_since(self, since: float, max_failed_rows: int = 20_000) -> dict[tuple[str, str], list[Any]]:
        """Upstream attempts per (model, deployment) since ``since``: [attempts, failed, {error code: count}].

        Requests whose attempts all succeeded are counted in SQL (one attempt each, at the deployment that
        answered); only the rows with a failed attempt are read and parsed, newest first, at most
        ``max_failed_rows`` of them.
        """
        u = usage.c
        as_text = cast(u.attempts, Text)
        failed = or_(as_text.like('%"ok":false%'), as_text.like('%"ok": false%'))
        ok_rows = (
            select(u.model, u.deployment, func.count())
            .where(u.created_at >= since, u.deployment.is_not(None), u.model.is_not(None), ~failed)
            .group_by(u.model, u.deployment)
        )
        failed_rows = (
            select(u.attempts).where(u.created_at >= since, failed).order_by(u.created_at.desc()).limit(max_failed_rows)
        )
        out: dict[tuple[str, str], list[Any]] = {}
        async with self._engine.connect() as conn:
            for model, deployment, count in await conn.execute(ok_rows):
                out.setdefault((model, deployment), [0, 0, {}])[0] += int(count)
            for (attempts,) in await conn.execute(failed_rows):
                for a in orjson.loads(attempts) if isinstance(attempts, str | bytes) else attempts:
                    entry = out.setdefault((a["model"], a["deployment"]), [0, 0, {}])
                    entry[0] += 1
                    if not a.get("ok"):
                        entry[1] += 1
                        code = a.get("error_code") or "error"
                        entry[2][code] = entry[2].get(code, 0) + 1
        return out


def _varying(*columns: ColumnElement[Any]) -> list[ColumnElement[Any]]:
    """The GROUP BY terms: constants are left out (SQLite reads ``GROUP BY 0`` as a column position)."""
    return [c for c in columns if c is not _ZERO and c is not _EMPTY]


def _plain(mapping: Any) -> dict[str, Any]:
    out = {str(k): v for k, v in mapping.items()}
    if isinstance(out.get("attempts"), str | bytes):
        out["attempts"] = orjson.loads(out["attempts"])
    return out


def _mark(conn: Connection) -> float | None:
    value = conn.execute(select(rollup_marks.c.value).where(rollup_marks.c.name == HOURLY_MARK)).scalar()
    return float(value) if value is not None else None


def _init_mark(conn: Connection, now: float) -> float:
    """The mark, created on first use at the hour of the oldest raw row (or the current hour)."""
    mark = _mark(conn)
    if mark is not None:
        return mark
    oldest = conn.execute(select(func.min(usage.c.created_at))).scalar()
    start = float(int((oldest if oldest is not None else now) // HOUR) * HOUR)
    conn.execute(insert(rollup_marks).values(name=HOURLY_MARK, value=start))
    return start


def _hour_cells(conn: Connection, hour: int, ready: int) -> tuple[dict[tuple[str, str], Cell], int]:
    """The cube rows of one hour, and the next hour to roll (skipping hours without rows, up to ``ready``)."""
    u = usage.c
    span = and_(u.created_at >= hour, u.created_at < hour + HOUR)
    dims = (_RAW_DIMENSIONS["model"], _RAW_DIMENSIONS["group"], u.key_id, _RAW_DIMENSIONS["deployment"])
    cells: dict[tuple[str, str], Cell] = {}

    def targets(row: Sequence[Any]) -> list[Cell]:
        return [cells.setdefault((dim, row[i] or ""), Cell()) for i, dim in enumerate(CUBE_DIMENSIONS)]

    main = (
        select(
            *dims,
            _LATENCY_INDEX,
            func.count(),
            _ERROR,
            func.sum(u.prompt_tokens),
            func.sum(u.cached_tokens),
            func.sum(u.completion_tokens),
            func.sum(u.reasoning_tokens),
            func.sum(u.cost_micro),
            func.sum(u.latency_ms),
        )
        .where(span)
        .group_by(*dims, _LATENCY_INDEX)
    )
    for row in conn.execute(main):
        for cell in targets(row):
            for i in range(8):
                cell.sums[i] += float(row[5 + i] or 0)
            cell.latency[int(row[4])] += int(row[5])
    ttft = (
        select(*dims, _TTFT_INDEX, func.count(), func.sum(u.ttft_ms))
        .where(span, u.ttft_ms.is_not(None))
        .group_by(*dims, _TTFT_INDEX)
    )
    for row in conn.execute(ttft):
        for cell in targets(row):
            cell.sums[8] += int(row[5])
            cell.sums[9] += float(row[6] or 0)
            cell.ttft[int(row[4])] += int(row[5])
    following = hour + HOUR
    if not cells:
        nxt = conn.execute(select(func.min(u.created_at)).where(u.created_at >= following)).scalar()
        following = min(ready, int(nxt // HOUR) * HOUR) if nxt is not None else ready
    return cells, max(following, hour + HOUR)


def _write_hour(conn: Connection, hour: int, cells: dict[tuple[str, str], Cell], following: int) -> None:
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
    moved = conn.execute(
        update(rollup_marks)
        .where(rollup_marks.c.name == HOURLY_MARK, rollup_marks.c.value == float(hour))
        .values(value=float(following))
    )
    if moved.rowcount != 1:
        raise _Raced()  # rolls the transaction back: another process rolled this hour


class _Raced(Exception):
    pass
