"""Usage analytics: time series, breakdowns, the request log and upstream error rates.

The one implementation behind the analytics API (``http/analytics_api.py``) and the web console: parameters
are parsed and checked here (400 naming the field), figures come from ``metering/usage_analytics.py``, and key
ids are shown by the names the admin service gives them. Costs are credits (micro-credits / 1,000,000).
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import re
import time
from decimal import Decimal
from typing import Any

from .admin import Admin
from .admin import _when as parse_when  # the same dates, times and durations as the usage reports
from .config import GatewayConfig
from .errors import InvalidRequest, NotFound
from .storage.analytics import HOUR, Cell, UsageAnalytics

log = logging.getLogger("sluicegate.analytics")

DIMENSIONS = ("model", "key", "group", "deployment", "none")
_BUCKET = re.compile(r"(\d+)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_POINTS = 1500
MAX_RAW_RANGE = 7 * 86400  # sub-hour buckets read raw rows only
# The default bucket for a range: about 24-60 points per chart.
_DEFAULT_BUCKETS = ((3600, 60), (6 * 3600, 300), (2 * 86400, 3600), (14 * 86400, 6 * 3600))
DAY = 86400
ROLLUP_CHECK_SECONDS = 60.0
CUBE_MIN_DAYS = 35  # the cube outlives raw rows kept for fewer days: the console shows up to 30
CSV_FIELDS = (
    "key",
    "label",
    "requests",
    "errors",
    "error_rate",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cost",
    "latency_p50_ms",
    "latency_p95_ms",
    "ttft_p50_ms",
    "ttft_p95_ms",
)


def credits(micro: int) -> float:
    return float(Decimal(micro) / 1_000_000)


def parse_bucket(value: Any, span: float) -> int:
    """``1m``, ``5m``, ``1h``, ``1d``... or seconds; None picks one for the range. Divides a day; hours whole."""
    if value is None or value == "":
        return next((b for limit, b in _DEFAULT_BUCKETS if span <= limit), DAY)
    text = str(value).strip()
    m = _BUCKET.fullmatch(text)
    seconds = int(m.group(1)) * _UNIT[m.group(2)] if m else (int(text) if text.isdigit() else 0)
    if seconds < 60 or DAY % seconds or (seconds >= HOUR and seconds % HOUR):
        raise InvalidRequest(
            "'bucket' must divide a day: 1m, 5m, 15m, 30m, 1h, 2h, 3h, 6h, 12h or 1d (or those in seconds)",
            param="bucket",
        )
    return seconds


def _dimension(by: Any) -> str | None:
    by = "none" if by in (None, "") else by
    if by not in DIMENSIONS:
        raise InvalidRequest("'by' must be model, key, group, deployment or none", param="by")
    return None if by == "none" else str(by)


def _positive_int(value: Any, param: str, default: int, maximum: int) -> int:
    if value is None or value == "":
        return default
    text = str(value)
    if not text.isdigit() or not 1 <= int(text) <= maximum:
        raise InvalidRequest(f"'{param}' must be an integer from 1 to {maximum}", param=param)
    return int(text)


class Range:
    """A range of whole buckets ending now (or at ``until``): the start is rounded down to a bucket."""

    def __init__(self, since: Any, until: Any, bucket: Any, now: float | None = None) -> None:
        now = time.time() if now is None else now
        end = parse_when(until, "until") if until not in (None, "") else now
        begin = parse_when(since if since not in (None, "") else "24h", "since")
        if begin >= end:
            raise InvalidRequest("'since' must be before 'until'", param="since")
        self.bucket = parse_bucket(bucket, end - begin)
        if self.bucket < HOUR and end - begin > MAX_RAW_RANGE:
            raise InvalidRequest("buckets under an hour cover at most 7 days; use 1h or more", param="bucket")
        self.start = int(begin // self.bucket) * self.bucket
        self.end = end
        self.points = int((end - self.start - 1e-9) // self.bucket) + 1
        if self.points > MAX_POINTS:
            raise InvalidRequest(f"at most {MAX_POINTS} points per series; use a larger 'bucket'", param="bucket")

    @property
    def timestamps(self) -> list[int]:
        return [self.start + i * self.bucket for i in range(self.points)]


class Analytics:
    def __init__(self, store: UsageAnalytics, admin: Admin, *, prompts_logged: bool = False) -> None:
        self.store = store
        self._admin = admin
        self.prompts_logged = prompts_logged

    async def keep_rolling(self, config: GatewayConfig) -> None:
        """Roll settled hours into the cube, every minute, on every process (the mark makes it idempotent).

        An hour has settled when no request that started in it can still be running: the longest deployment
        timeout plus the retry budget, plus a minute for the record's commit.
        """
        settle = (
            max(d.timeouts.total for m in config.models for d in m.deployments)
            + config.routing.retry.max_retry_time
            + 60.0
        )
        keep = max(config.metering.retention_days, CUBE_MIN_DAYS) * DAY
        while True:
            try:
                if await self.store.rollup_hours(settle=settle):
                    await self.store.prune_hours(time.time() - keep)
            except Exception as exc:  # another replica may be rolling the same hour; the next round resumes
                log.info("hourly usage rollup skipped: %s", exc)
            await asyncio.sleep(ROLLUP_CHECK_SECONDS)

    async def _labels(self, by: str | None) -> dict[str, str]:
        if by != "key":
            return {}
        return {k["id"]: f"{k['name']} ({k['prefix']})" for k in await self._admin.list_keys()}

    async def timeseries(
        self, by: Any = None, since: Any = None, until: Any = None, bucket: Any = None, top: Any = None
    ) -> dict[str, Any]:
        """Per-bucket figures of the ``top`` values of ``by`` (by spend, then requests), the rest as ``(other: N)``.

        Three grouped reads, whatever the number of values: the totals per bucket, the ranking of the values, and
        the buckets of the values shown; the rest is the totals minus those.
        """
        dim = _dimension(by)
        limit = _positive_int(top, "top", 8, 50)
        span = Range(since, until, bucket)
        stamps = span.timestamps
        everything = await self.store.cells(None, span.start, span.end, span.bucket)
        overall = {t: cell for (t, _), cell in everything.items()}
        series: list[dict[str, Any]] = []
        if dim is None:
            series.append({"key": "", "label": "all", **_columns(overall, stamps)})
        else:
            ranking = await self.store.ranking(dim, span.start, span.end)
            ranked = sorted(ranking, key=lambda v: (-ranking[v][0], -ranking[v][1], v))
            shown, rest = ranked[:limit], ranked[limit:]
            grid: dict[str, dict[int, Cell]] = {v: {} for v in shown}
            if shown:
                for (t, value), cell in (await self.store.cells(dim, span.start, span.end, span.bucket, shown)).items():
                    grid.setdefault(value, {})[t] = cell
            labels = await self._labels(dim)
            series.extend({"key": v, "label": _label(dim, v, labels), **_columns(grid[v], stamps)} for v in shown)
            if rest:
                other: dict[int, Cell] = {}
                for t, cell in overall.items():
                    remainder = Cell()
                    remainder.merge(cell)
                    for v in shown:
                        if t in grid[v]:
                            remainder.merge(grid[v][t], -1)
                    other[t] = remainder
                series.append({"key": None, "label": f"(other: {len(rest)})", **_columns(other, stamps)})
        return {
            "object": "usage.timeseries",
            "by": dim or "none",
            "bucket": span.bucket,
            "since": span.start,
            "until": span.end,
            "timestamps": stamps,
            "series": series,
            "total": _columns(overall, stamps),
        }

    async def summary(self, by: Any = None, since: Any = None, until: Any = None, bucket: Any = None) -> dict[str, Any]:
        """Totals per value of ``by`` over the range (the same range rules as ``timeseries``), biggest spend first."""
        dim = _dimension(by)
        span = Range(since, until, bucket)
        cells = await self.store.cells(dim, span.start, span.end, None)
        totals: dict[str, Cell] = {}
        for (_, value), cell in cells.items():
            totals.setdefault(value, Cell()).merge(cell)
        everything = Cell()
        for cell in totals.values():
            everything.merge(cell)
        labels = await self._labels(dim)
        rows = [
            {"key": v, "label": _label(dim, v, labels), **_figures(c)}
            for v, c in sorted(totals.items(), key=lambda kv: (-kv[1].sums[6], -kv[1].sums[0], kv[0]))
        ]
        return {
            "object": "list",
            "by": dim or "none",
            "since": span.start,
            "until": span.end,
            "data": rows,
            "total": _figures(everything),
        }

    async def top(
        self, by: Any, since: Any = None, until: Any = None, bucket: Any = None, limit: Any = None
    ) -> dict[str, Any]:
        """The ``limit`` values of ``by`` with the most spend (then requests): just those two figures, cheaply."""
        dim = _dimension(by)
        if dim is None:
            raise InvalidRequest("'by' must be model, key, group or deployment", param="by")
        size = _positive_int(limit, "limit", 5, 100)
        span = Range(since, until, bucket)
        ranking = await self.store.ranking(dim, span.start, span.end)
        ranked = sorted(ranking, key=lambda v: (-ranking[v][0], -ranking[v][1], v))[:size]
        labels = await self._labels(dim)
        rows = [
            {"key": v, "label": _label(dim, v, labels), "requests": ranking[v][1], "cost_micro": ranking[v][0],
             "cost": credits(ranking[v][0])}
            for v in ranked
        ]  # fmt: skip
        return {"object": "list", "by": dim, "since": span.start, "until": span.end, "data": rows}

    async def requests(
        self,
        *,
        limit: Any = None,
        before: Any = None,
        since: Any = None,
        model: Any = None,
        key: Any = None,
        group: Any = None,
        status: Any = None,
        error_code: Any = None,
    ) -> dict[str, Any]:
        """A page of the request log, newest first; ``next`` is the cursor of the following page."""
        size = _positive_int(limit, "limit", 50, 500)
        cursor = _cursor(before)
        if status not in (None, "", "error", "any"):
            raise InvalidRequest("'status' must be 'error' or 'any'", param="status")
        key_id = (await self._admin.key(str(key))).id if key else None
        rows = await self.store.requests(
            limit=size + 1,
            before=cursor,
            since=parse_when(since, "since") if since else None,
            model=model or None,
            key_id=key_id,
            group=group or None,
            errors_only=status == "error",
            error_code=error_code or None,
        )
        more = len(rows) > size
        rows = rows[:size]
        for row in rows:
            _request_view(row)
        nxt = f"{rows[-1]['created_at']!r}:{rows[-1]['id']}" if more and rows else None
        return {"object": "list", "data": rows, "next": nxt}

    async def request(self, row_id: Any) -> dict[str, Any]:
        """One request's record; its audit entry (and logged prompt) when prompt logging is on."""
        if not str(row_id).isdigit():
            raise NotFound(f"no request {row_id!r}")
        row = await self.store.request(int(row_id))
        if row is None:
            raise NotFound(f"no request {row_id!r}")
        _request_view(row)
        row["audit"] = None
        if self.prompts_logged:
            row["audit"] = await self.store.request_audit(row["request_id"], row["created_at"], row["key_prefix"])
        return row

    async def upstreams(self, since: Any = "1h") -> list[dict[str, Any]]:
        """Attempts, failures and their error codes per (model, deployment) over the range."""
        start = parse_when(since or "1h", "since")
        out = []
        for (model, deployment), (attempts, failed, codes) in sorted((await self.store.attempts_since(start)).items()):
            out.append(
                {
                    "model": model,
                    "deployment": deployment,
                    "attempts": attempts,
                    "failed": failed,
                    "error_rate": failed / attempts if attempts else None,
                    "errors": dict(sorted(codes.items(), key=lambda kv: -kv[1])),
                }
            )
        return out


def summary_csv(summary: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in summary["data"]:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in CSV_FIELDS})
    return out.getvalue()


def _label(dim: str | None, value: str, labels: dict[str, str]) -> str:
    if dim is None:
        return "all"
    if not value:
        return {"group": "(no group)", "deployment": "(no deployment)"}.get(dim, "(none)")
    return labels.get(value, value)


def _figures(cell: Cell) -> dict[str, Any]:
    figures = cell.figures()
    figures["cost"] = credits(figures["cost_micro"])
    return figures


def _columns(cells: dict[int, Cell], timestamps: list[int]) -> dict[str, list[Any]]:
    """Figures as one list per field, aligned with ``timestamps`` (empty buckets are zeros, percentiles null)."""
    empty = Cell()
    columns: dict[str, list[Any]] = {}
    for t in timestamps:
        for name, value in _figures(cells.get(t, empty)).items():
            columns.setdefault(name, []).append(value)
    return columns


def _cursor(before: Any) -> tuple[float, int] | None:
    if before in (None, ""):
        return None
    at, _, row_id = str(before).partition(":")
    try:
        return float(at), int(row_id)
    except ValueError as exc:
        raise InvalidRequest("'before' must be the 'next' cursor of a previous page", param="before") from exc


def _request_view(row: dict[str, Any]) -> None:
    row["cost"] = credits(int(row["cost_micro"]))
    # Fallback models tried, as in the x-sluicegate-fallbacks header.
    tried = {a.get("model") for a in row.get("attempts") or []}
    row["fallbacks"] = len(tried - {row.get("requested_model")})
