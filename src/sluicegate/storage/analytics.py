"""Analytics over the usage ledger: time series and breakdowns from the cube plus raw rows, the request log.

A range is read in up to three parts: whole days before the rollup mark from the cube's day rows, the remaining
rolled hours from its hour rows, and raw ``usage`` rows (by the ``created_at`` index) from the mark on. So a 30-day
view reads about 30 rows per value plus a day of hour rows and an hour or so of raw rows, however large the
ledger. Every part is grouped in SQL into (time bucket, value, histogram bucket) cells; Python only adds them up.
Hours (and days) count whole: a range that starts inside a rolled hour includes that entire hour, the same rule
as ``usage_daily`` for days. ``usage_cube.py`` builds the cube.

Nothing here runs on the request path, and the group commit writes no extra index for it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
from sqlalchemy import BigInteger, Float, Integer, Text, and_, cast, delete, func, literal_column, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from .console_schema import CUBE_SUMS, LATENCY_COLUMNS, TTFT_COLUMNS, usage_hourly
from .schema import audit_log, usage
from .usage_cube import (
    ALL_DIMENSIONS,
    DAY,
    EMPTY,
    HOUR,
    LATENCY_INDEX,
    RAW_DIMENSIONS,
    RAW_SUMS,
    TTFT_INDEX,
    ZERO,
    Cell,
    Raced,
    hour_cells,
    init_mark,
    quantile,
    read_mark,
    varying,
    write_hour,
)

__all__ = ["DAY", "HOUR", "Cell", "Cells", "UsageAnalytics", "quantile"]

_REQUEST_LOG_COLUMNS = [c for c in usage.c if c.name != "day"]
_CUBE_COLUMNS = (*CUBE_SUMS, *LATENCY_COLUMNS, *TTFT_COLUMNS)

Cells = dict[tuple[int, str], Cell]  # (time bucket start, or 0 for a whole range; value) -> cell


def _cube_sum(name: str) -> ColumnElement[Any]:
    # Cast: PostgreSQL sums bigints as numeric, which the driver would turn into slow Decimals.
    return cast(func.sum(getattr(usage_hourly.c, name)), Float if name.endswith("_sum") else BigInteger)


def _int(n: int) -> ColumnElement[Any]:
    return literal_column(str(int(n)))  # inline, so SELECT and GROUP BY render the same expression


def parts(mark: float | None, start: float, end: float, bucket: int | None) -> Iterator[tuple[str, float, float]]:
    """The (source, from, to) parts of a range: cube ``hour`` and ``day`` rows before the mark, ``raw`` rows after.

    The cube serves ranges that start on an hour and are bucketed by whole hours; day rows serve the whole days
    inside a range that is not bucketed, or bucketed by whole days.
    """
    edge = start
    if mark is not None and start % HOUR == 0 and (bucket is None or bucket % HOUR == 0):
        if bucket is None or bucket % DAY == 0:
            first_day = -(-start // DAY) * DAY
            days_end = min(mark // DAY * DAY, end)
            if first_day < days_end:
                if edge < first_day:
                    yield "hour", edge, first_day
                yield "day", first_day, days_end
                edge = days_end
        hours_end = min(mark, end)
        if hours_end > edge:
            yield "hour", edge, hours_end
            edge = hours_end
    if end > edge:
        yield "raw", edge, end


class UsageAnalytics:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._pg = engine.dialect.name == "postgresql"

    # the cube

    async def hourly_mark(self) -> float | None:
        """The first hour not in the cube (epoch seconds), or None before the first rollup."""
        async with self._engine.connect() as conn:
            return await conn.run_sync(read_mark)

    async def rollup_hours(self, now: float | None = None, settle: float = 900.0) -> list[int]:
        """Roll every complete hour that ended at least ``settle`` seconds ago into the cube, oldest first.

        Returns the hours rolled (those with rows); stops where another process rolled an hour first.
        """
        now = time.time() if now is None else now
        ready = int((now - settle) // HOUR) * HOUR  # hours before this one have settled
        rolled: list[int] = []
        async with self._engine.begin() as conn:
            mark = await conn.run_sync(init_mark, now)
        while mark < ready:
            async with self._engine.connect() as conn:
                cells, following = await hour_cells(conn, int(mark), ready)
            try:
                async with self._engine.begin() as conn:
                    await conn.run_sync(write_hour, int(mark), cells, following)
            except Raced:
                break  # the other process carries on from there
            if cells:
                rolled.append(int(mark))
            mark = following
        return rolled

    async def prune_hours(self, before: float) -> int:
        c = usage_hourly.c
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(usage_hourly).where(c.dim.in_(ALL_DIMENSIONS), c.hour < before))
            return int(result.rowcount or 0)

    async def cells(
        self,
        dim: str | None,
        start: float,
        end: float,
        bucket: int | None,
        values: Sequence[str] | None = None,
    ) -> Cells:
        """Cells of ``[start, end)`` by ``dim`` (None: one value ``""``), per ``bucket`` seconds or for the whole
        range; for every value of ``dim``, or only ``values``."""
        out: Cells = {}
        c = usage_hourly.c
        async with self._engine.connect() as conn:
            mark = await conn.run_sync(read_mark)
            for source, lo, hi in parts(mark, start, end, bucket):
                if source == "raw":
                    await self._raw_cells(conn, out, dim, lo, hi, bucket, values)
                    continue
                tb = (c.hour / _int(bucket)) if bucket else ZERO
                value: ColumnElement[Any] = c.value if dim else EMPTY
                cube_dim = (dim or "model") + (":day" if source == "day" else "")
                stmt = select(tb, value, *(_cube_sum(n) for n in _CUBE_COLUMNS)).where(
                    c.dim == cube_dim, c.hour >= int(lo), c.hour < hi
                )
                if dim and values is not None:
                    stmt = stmt.where(c.value.in_(values))
                for row in await conn.execute(stmt.group_by(*varying(tb, value))):
                    out.setdefault((int(row[0]) * (bucket or 0), row[1]), Cell()).add_cube_row(row[2:])
        return out

    async def ranking(self, dim: str, start: float, end: float) -> dict[str, tuple[int, int]]:
        """(micro-credits, requests) per value of ``dim`` over the range: which values a chart shows."""
        out: dict[str, tuple[int, int]] = {}
        c, u = usage_hourly.c, usage.c
        async with self._engine.connect() as conn:
            mark = await conn.run_sync(read_mark)
            for source, lo, hi in parts(mark, start, end, None):
                if source == "raw":
                    value = RAW_DIMENSIONS[dim]
                    stmt = select(value, cast(func.sum(u.cost_micro), BigInteger), func.count())
                    stmt = stmt.where(u.created_at >= lo, u.created_at < hi).group_by(value)
                else:
                    cube_dim = dim + (":day" if source == "day" else "")
                    stmt = select(c.value, _cube_sum("cost_micro"), _cube_sum("requests"))
                    stmt = stmt.where(c.dim == cube_dim, c.hour >= int(lo), c.hour < hi).group_by(c.value)
                for name, cost, requests in await conn.execute(stmt):
                    old = out.get(name or "", (0, 0))
                    out[name or ""] = (old[0] + int(cost or 0), old[1] + int(requests or 0))
        return out

    def _time_bucket(self, bucket: int | None) -> ColumnElement[Any]:
        if not bucket:
            return ZERO
        quotient = usage.c.created_at / literal_column(f"{int(bucket)}.0")
        return cast(func.floor(quotient), BigInteger) if self._pg else cast(quotient, Integer)

    async def _raw_cells(
        self,
        conn: Any,
        out: Cells,
        dim: str | None,
        start: float,
        end: float,
        bucket: int | None,
        values: Sequence[str] | None,
    ) -> None:
        u = usage.c
        tb = self._time_bucket(bucket)
        value = RAW_DIMENSIONS[dim] if dim else EMPTY
        span = and_(u.created_at >= start, u.created_at < end)
        if dim and values is not None:
            span = and_(span, value.in_(values))
        main = select(tb, value, LATENCY_INDEX, *RAW_SUMS).where(span).group_by(*varying(tb, value, LATENCY_INDEX))
        for row in await conn.execute(main):
            cell = out.setdefault((int(row[0]) * (bucket or 0), row[1] or ""), Cell())
            for i in range(8):
                cell.sums[i] += float(row[3 + i] or 0)
            cell.latency[int(row[2])] += int(row[3])
        ttft = (
            select(tb, value, TTFT_INDEX, func.count(), func.sum(u.ttft_ms))
            .where(span, u.ttft_ms.is_not(None))
            .group_by(*varying(tb, value, TTFT_INDEX))
        )
        for row in await conn.execute(ttft):
            cell = out.setdefault((int(row[0]) * (bucket or 0), row[1] or ""), Cell())
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


def _plain(mapping: Any) -> dict[str, Any]:
    out = {str(k): v for k, v in mapping.items()}
    if isinstance(out.get("attempts"), str | bytes):
        out["attempts"] = orjson.loads(out["attempts"])
    return out
