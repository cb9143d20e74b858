"""Usage rows, daily rollups, retention, spend totals and reports, over the shared SQL store."""

from __future__ import annotations

import datetime as dt
import functools
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
from sqlalchemy import Connection, and_, delete, func, insert, literal, literal_column, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnClause

from ..records import AuditEntry, RequestRecord
from . import audit
from .audit import VerifyResult
from .batch_writer import PostgresBatchWriter, SqliteBatchWriter, UsageRow
from .console_schema import AUDIT_KIND_PREDICATE
from .isolation import Tally
from .sanitize import ERROR_CODE_CHARS, clean_json, clean_text, clean_usage_row
from .schema import USAGE_TOTALS, audit_head, audit_log, rollup_days, usage, usage_daily

# Inline '' (not a bound parameter): PostgreSQL must see the GROUP BY and SELECT expressions as identical.
_EMPTY: ColumnClause[str] = literal_column("''")

REPORT_DIMENSIONS = {"key": "key_prefix", "group": "group_name", "model": "model"}


def utc_day(epoch: float) -> str:
    """``YYYY-MM-DD`` of an epoch time in UTC (every usage row carries it; formatted once per day)."""
    return _day_name(int(epoch // 86400))


@functools.lru_cache(maxsize=64)
def _day_name(day: int) -> str:
    return dt.datetime.fromtimestamp(day * 86400, dt.UTC).strftime("%Y-%m-%d")


def _ms3(ms: float) -> float:
    """Milliseconds to the microsecond (round(x, 3) formats a decimal string: ~1 µs, twice per request)."""
    return int(ms * 1000 + 0.5) / 1000 if ms >= 0 else -int(-ms * 1000 + 0.5) / 1000


def usage_row(rec: RequestRecord) -> UsageRow:
    """The record as a row of ``usage``, in ``USAGE_COLUMNS`` order, every value fit for the store."""
    u = rec.usage
    attempts = [
        {
            "model": a.model,
            "deployment": a.deployment,
            "ok": a.ok,
            # An upstream's own code: cut to the size of the row's error_code column, like it.
            "error_code": clean_text(a.error_code, ERROR_CODE_CHARS) if a.error_code is not None else None,
            "status": a.status,
            "latency_ms": _ms3(a.latency_ms),
        }
        for a in rec.attempts
    ]
    try:
        attempts_json = orjson.dumps(attempts).decode()
    except TypeError:  # a text UTF-8 cannot encode (a lone surrogate): every text of every attempt cleaned
        attempts_json = orjson.dumps(clean_json(attempts)).decode()
    row = (
        rec.request_id,
        rec.started_at,
        utc_day(rec.started_at),
        rec.key_id,
        rec.key_prefix,
        rec.group,
        rec.requested_model,
        rec.model,
        rec.deployment,
        rec.stream,
        rec.status,
        rec.outcome,
        rec.error_code,
        rec.partial,
        u is not None and u.estimated,
        u.prompt_tokens if u else 0,
        u.cached_tokens if u else 0,
        u.cache_write_tokens if u else 0,
        u.completion_tokens if u else 0,
        u.reasoning_tokens if u else 0,
        rec.cost_micro,
        _ms3(rec.latency_ms),
        _ms3(rec.ttft_ms) if rec.ttft_ms is not None else None,
        rec.user or None,
        attempts_json,
    )
    return clean_usage_row(row)


class UsageStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._writer: SqliteBatchWriter | PostgresBatchWriter
        if engine.dialect.name == "sqlite":
            self._writer = SqliteBatchWriter(engine.url.database or ":memory:")
        else:
            self._writer = PostgresBatchWriter(engine)

    @property
    def tally(self) -> Tally:
        """What the writer did with batches the store refused (``isolation.py``)."""
        return self._writer.tally

    @property
    def max_in_flight(self) -> int:
        """How many batches may be committing at once."""
        return self._writer.max_in_flight

    async def write(self, rows: Sequence[UsageRow], audits: Sequence[AuditEntry]) -> None:
        """One transaction for a whole batch: the group commit."""
        await self._writer.write(rows, audits)

    async def close(self) -> None:
        """Release the writer's connections (the engine is the caller's to dispose)."""
        await self._writer.close()

    async def by_request_ids(self, request_ids: Sequence[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        async with self._engine.connect() as conn:
            for i in range(0, len(request_ids), 500):
                part = list(request_ids[i : i + 500])
                rows = await conn.execute(select(usage).where(usage.c.request_id.in_(part)))
                out.extend({str(k): v for k, v in r._mapping.items()} for r in rows)
        return out

    async def spent_since(self, scope: str, ident: str, start: float) -> int:
        """Micro-credits spent by a key (scope ``key``) or group since ``start``: rollups plus raw rows."""
        raw_col = usage.c.key_id if scope == "key" else usage.c.group_name
        daily_col = usage_daily.c.key_id if scope == "key" else usage_daily.c.group_name
        start_day = utc_day(start)
        rolled = select(rollup_days.c.day)
        async with self._engine.connect() as conn:
            raw = await conn.execute(
                select(func.coalesce(func.sum(usage.c.cost_micro), 0)).where(
                    raw_col == ident, usage.c.created_at >= start, usage.c.day.not_in(rolled)
                )
            )
            daily = await conn.execute(
                select(func.coalesce(func.sum(usage_daily.c.cost_micro), 0)).where(
                    daily_col == ident, usage_daily.c.day >= start_day
                )
            )
            return int(raw.scalar_one()) + int(daily.scalar_one())

    async def report(self, by: str, since: float, until: float | None = None) -> list[dict[str, Any]]:
        """Totals grouped by key prefix, group or model: rolled-up days from usage_daily, the rest raw."""
        column = REPORT_DIMENSIONS[by]
        since_day, until = utc_day(since), until or time.time() + 1
        until_day = utc_day(until)
        rolled = select(rollup_days.c.day)
        totals: dict[str, dict[str, int]] = {}
        metrics = USAGE_TOTALS
        raw_group = getattr(usage.c, column)
        daily_group = getattr(usage_daily.c, column)
        raw_q = select(
            raw_group.label("k"),
            func.count().label("requests"),
            func.coalesce(func.sum((usage.c.status >= 400).cast(usage.c.prompt_tokens.type)), 0).label("errors"),
            *(func.coalesce(func.sum(getattr(usage.c, m)), 0).label(m) for m in metrics[2:]),
        ).where(usage.c.created_at >= since, usage.c.created_at < until, usage.c.day.not_in(rolled))
        daily_q = select(
            daily_group.label("k"),
            *(func.coalesce(func.sum(getattr(usage_daily.c, m)), 0).label(m) for m in metrics),
        ).where(usage_daily.c.day >= since_day, usage_daily.c.day <= until_day)
        async with self._engine.connect() as conn:
            for q in (raw_q.group_by(raw_group), daily_q.group_by(daily_group)):
                for row in await conn.execute(q):
                    entry = totals.setdefault(row.k or "", dict.fromkeys(metrics, 0))
                    for m in metrics:
                        entry[m] += int(getattr(row, m))
        return [{by: k, **v} for k, v in sorted(totals.items(), key=lambda kv: -kv[1]["cost_micro"])]

    async def rollup(self, now: float | None = None) -> list[str]:
        """Roll every complete UTC day not yet rolled into usage_daily; idempotent, safe on many replicas."""
        today = utc_day(now or time.time())
        async with self._engine.begin() as conn:
            return await conn.run_sync(_rollup_sync, today)

    async def prune(self, retention_days: int, now: float | None = None) -> int:
        """Delete raw rows older than the retention, only for days already rolled up."""
        cutoff = (now or time.time()) - retention_days * 86400
        async with self._engine.begin() as conn:
            result = await conn.execute(
                delete(usage).where(usage.c.created_at < cutoff, usage.c.day.in_(select(rollup_days.c.day)))
            )
            return int(result.rowcount or 0)

    async def verify_audit(self) -> VerifyResult:
        async with self._engine.connect() as conn:
            head = (await conn.execute(select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1))).one()
            stream = await conn.stream(select(audit_log).order_by(audit_log.c.seq))

            async def rows() -> AsyncIterator[Any]:
                async for row in stream:
                    yield row

            return await audit.verify(rows(), int(head.seq), str(head.hash))

    async def audit_entries(
        self, limit: int = 100, kind: str | None = None, before: int | None = None
    ) -> list[dict[str, Any]]:
        stmt = select(audit_log).order_by(audit_log.c.seq.desc()).limit(limit)
        if kind:
            stmt = stmt.where(audit_log.c.kind == kind)
            if kind != "request":  # repeated so that SQLite uses the partial index of migration 0005
                stmt = stmt.where(text(AUDIT_KIND_PREDICATE))
        if before is not None:
            stmt = stmt.where(audit_log.c.seq < before)
        async with self._engine.connect() as conn:
            return [{str(k): v for k, v in r._mapping.items()} for r in await conn.execute(stmt)]


def _day_start(day: str) -> float:
    return dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.UTC).timestamp()


def _rollup_sync(conn: Connection, today: str) -> list[str]:
    done = set(conn.execute(select(rollup_days.c.day)).scalars())
    # Ranges of created_at (indexed) select the rows; ``day`` is derived from it when the row is written.
    before_today = usage.c.created_at < _day_start(today)
    days = [d for d in conn.execute(select(usage.c.day).where(before_today).distinct()).scalars() if d not in done]
    for day in sorted(days):
        start = _day_start(day)
        conn.execute(delete(usage_daily).where(usage_daily.c.day == day))
        errors = func.sum((usage.c.status >= 400).cast(usage.c.prompt_tokens.type))
        agg = (
            select(
                literal(day).label("day"),
                usage.c.key_id,
                func.max(usage.c.key_prefix),
                func.coalesce(usage.c.group_name, _EMPTY),
                func.coalesce(usage.c.model, _EMPTY),
                func.count(),
                func.coalesce(errors, 0),
                func.sum(usage.c.prompt_tokens),
                func.sum(usage.c.cached_tokens),
                func.sum(usage.c.completion_tokens),
                func.sum(usage.c.reasoning_tokens),
                func.sum(usage.c.cost_micro),
            )
            .where(and_(usage.c.created_at >= start, usage.c.created_at < start + 86400, usage.c.day == day))
            .group_by(usage.c.key_id, func.coalesce(usage.c.group_name, _EMPTY), func.coalesce(usage.c.model, _EMPTY))
        )
        conn.execute(
            insert(usage_daily).from_select(
                ["day", "key_id", "key_prefix", "group_name", "model", *USAGE_TOTALS],
                agg,
            )
        )
        conn.execute(insert(rollup_days).values(day=day, rolled_at=time.time()))
    return sorted(days)
