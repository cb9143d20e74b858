"""The analytics cube: hourly rollups plus raw rows answer exactly what the raw rows alone say, on both stores."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select

from sluicegate.admin import Admin
from sluicegate.analytics import Analytics
from sluicegate.auth.authenticator import LocalBus
from sluicegate.records import Attempt, RequestRecord
from sluicegate.storage.analytics import DAY, HOUR, Cell, UsageAnalytics, quantile
from sluicegate.storage.console_schema import CUBE_DIMENSIONS, HISTOGRAM_BOUNDS_MS, usage_hourly
from sluicegate.storage.db import create_engine
from sluicegate.storage.identity import IdentityStore
from sluicegate.storage.migrations import migrate
from sluicegate.storage.usage import UsageStore, usage_row
from sluicegate.types import Usage
from tests.support.databases import database_url

# A fixed "now" in the middle of an hour, so the ranges below are exact.
NOW = 1_790_000_000.0 // HOUR * HOUR + 1_800


@dataclass
class Stores:
    usage: UsageStore
    analytics: UsageAnalytics


@pytest.fixture(params=["sqlite", "postgres"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    with database_url(request.param, tmp_path) as url:
        engine = create_engine(url)
        await migrate(engine)
        usage = UsageStore(engine)
        try:
            yield Stores(usage, UsageAnalytics(engine))
        finally:
            await usage.close()
            await engine.dispose()


def rec(i: int, at: float, rng: random.Random) -> RequestRecord:
    model = rng.choice(["m1", "m2", "m3"])
    status = 200 if rng.random() > 0.1 else rng.choice([429, 502])
    failed_first = status == 200 and rng.random() < 0.2
    attempts = [Attempt(model, "openai/up", True, latency_ms=5.0)]
    if failed_first:
        attempts.insert(0, Attempt(model, "openai/other", False, "upstream_timeout", 504, 3.0))
    r = RequestRecord(
        request_id=f"req-{i}",
        key_id=rng.choice(["key_a", "key_b"]),
        key_prefix="sk-sg-x",
        group=rng.choice(["eng", "ops", None]),
        requested_model=model,
        model=model if status != 429 else None,
        deployment="openai/up" if status != 429 else None,
        stream=True,
        started_at=at,
        status=status,
        outcome="completed" if status == 200 else "failed",
        usage=Usage(prompt_tokens=rng.randint(1, 500), completion_tokens=rng.randint(0, 300), cached_tokens=3),
        attempts=attempts if status != 429 else [],
    )
    r.cost_micro = rng.randint(0, 10_000)
    r.latency_ms = rng.lognormvariate(6, 1)
    r.ttft_ms = rng.lognormvariate(5, 1) if status == 200 else None
    return r


async def load(stores: Stores, hours: int = 30, per_hour: int = 40) -> list[RequestRecord]:
    rng = random.Random(7)
    records = [
        rec(h * 1000 + j, NOW - h * HOUR - rng.random() * HOUR, rng) for h in range(hours) for j in range(per_hour)
    ]
    await stores.usage.write([usage_row(r) for r in records], [])
    return records


def expected(records: list[RequestRecord], start: float, end: float, by: str | None) -> dict[str, Cell]:
    """The same cells computed in Python from the records themselves."""
    out: dict[str, Cell] = {}
    for r in records:
        if not start <= r.started_at < end:
            continue
        value = {"model": r.model or r.requested_model, "group": r.group, "key": r.key_id, None: ""}[by] or ""
        cell = out.setdefault(value, Cell())
        u = r.usage
        assert u is not None
        for i, v in enumerate(
            (1, r.status >= 400, u.prompt_tokens, u.cached_tokens, u.completion_tokens, 0, r.cost_micro)
        ):
            cell.sums[i] += v
        cell.latency[_bucket(round(r.latency_ms, 3))] += 1
        if r.ttft_ms is not None:
            cell.sums[8] += 1
            cell.ttft[_bucket(round(r.ttft_ms, 3))] += 1
    return out


def _bucket(ms: float) -> int:
    return next((i for i, b in enumerate(HISTOGRAM_BOUNDS_MS) if ms < b), len(HISTOGRAM_BOUNDS_MS))


def comparable(cells: dict[str, Cell]) -> dict[str, tuple[object, ...]]:
    # Latency sums are float sums in different orders: compare everything else exactly.
    return {k: (c.sums[:7], c.sums[8], c.latency, c.ttft) for k, c in cells.items()}


@pytest.mark.parametrize("by", ["model", "group", "key", None])
async def test_cube_plus_raw_rows_equal_the_raw_rows(stores: Stores, by: str | None) -> None:
    records = await load(stores)
    start = NOW // HOUR * HOUR - 24 * HOUR
    before = await stores.analytics.cells(by, start, NOW + 1, None)
    rolled = await stores.analytics.rollup_hours(now=NOW, settle=600)
    # Every hour that ended at least 10 minutes before NOW; the current hour stays raw.
    current = NOW // HOUR * HOUR
    assert rolled == sorted({int(r.started_at) // HOUR * HOUR for r in records} - {current})
    assert await stores.analytics.hourly_mark() == NOW // HOUR * HOUR
    after = await stores.analytics.cells(by, start, NOW + 1, None)
    want = expected(records, start, NOW + 1, by)
    assert comparable({v: c for (_, v), c in before.items()}) == comparable(want)
    assert comparable({v: c for (_, v), c in after.items()}) == comparable(want)
    # Per hour as well: each bucket of the series is the hour's records.
    series = await stores.analytics.cells(by, start, NOW + 1, HOUR)
    for hour in (start, start + 5 * HOUR, NOW // HOUR * HOUR):
        got = {v: c for (t, v), c in series.items() if t == hour}
        assert comparable(got) == comparable(expected(records, hour, hour + HOUR, by))


async def test_rolling_again_or_concurrently_counts_each_hour_once(stores: Stores) -> None:
    records = await load(stores, hours=6)
    results = await asyncio.gather(
        *(stores.analytics.rollup_hours(now=NOW, settle=600) for _ in range(3)), return_exceptions=True
    )
    rolled = [h for r in results if isinstance(r, list) for h in r]
    assert sorted(rolled) == sorted({int(r.started_at) // HOUR * HOUR for r in records} - {NOW // HOUR * HOUR})
    assert await stores.analytics.rollup_hours(now=NOW, settle=600) == []
    start = NOW // HOUR * HOUR - 5 * HOUR
    got = await stores.analytics.cells(None, start, NOW + 1, None)
    assert comparable({"": got[(0, "")]}) == comparable(expected(records, start, NOW + 1, None))


async def test_an_unsettled_hour_waits_and_empty_hours_are_skipped(stores: Stores) -> None:
    rng = random.Random(1)
    old = [rec(i, NOW - 400 * HOUR + i, rng) for i in range(3)]
    recent = [rec(10 + i, NOW - HOUR + i, rng) for i in range(3)]  # in the hour that ended 30 minutes ago
    await stores.usage.write([usage_row(r) for r in old + recent], [])
    # 45 minutes of settling: the last complete hour ended only 30 minutes ago, so it is not rolled yet.
    rolled = await stores.analytics.rollup_hours(now=NOW, settle=2_700)
    assert rolled == [int(NOW - 400 * HOUR) // HOUR * HOUR]
    assert await stores.analytics.hourly_mark() == NOW // HOUR * HOUR - HOUR
    rolled = await stores.analytics.rollup_hours(now=NOW, settle=600)
    assert rolled == [NOW // HOUR * HOUR - HOUR]
    hours = await _cube_hours(stores)
    assert hours == sorted({int(r.started_at) // HOUR * HOUR for r in old + recent})


async def _cube_hours(stores: Stores) -> list[int]:
    async with stores.analytics._engine.connect() as conn:
        hourly = usage_hourly.c.dim.in_(CUBE_DIMENSIONS)
        rows = await conn.execute(select(usage_hourly.c.hour).where(hourly).distinct().order_by(usage_hourly.c.hour))
        assert (await conn.execute(select(func.count()).select_from(usage_hourly))).scalar_one() > 0
        return [int(h) for (h,) in rows]


async def test_request_log_pages_and_filters(stores: Stores) -> None:
    records = await load(stores, hours=2, per_hour=30)
    newest_first = sorted(records, key=lambda r: -r.started_at)
    seen: list[str] = []
    before = None
    while True:
        page = await stores.analytics.requests(limit=7, before=before)
        if not page:
            break
        seen.extend(r["request_id"] for r in page)
        before = (page[-1]["created_at"], page[-1]["id"])
    assert seen == [r.request_id for r in newest_first]
    errors = await stores.analytics.requests(limit=100, errors_only=True, model="m2")
    assert {r["request_id"] for r in errors} == {
        r.request_id for r in records if r.status >= 400 and r.requested_model == "m2"
    }
    detail = await stores.analytics.request(errors[0]["id"])
    assert detail is not None and detail["request_id"] == errors[0]["request_id"]
    assert isinstance(detail["attempts"], list)


async def test_upstream_attempts_count_failures_per_deployment(stores: Stores) -> None:
    records = await load(stores, hours=1, per_hour=60)
    got = await stores.analytics.attempts_since(NOW - 2 * HOUR)
    want: dict[tuple[str, str], list[int]] = {}
    for r in records:
        for a in r.attempts:
            entry = want.setdefault((a.model, a.deployment), [0, 0])
            entry[0] += 1
            entry[1] += not a.ok
    assert {k: v[:2] for k, v in got.items()} == want
    assert all(set(v[2]) <= {"upstream_timeout"} for v in got.values())


def test_quantiles_interpolate_inside_a_bucket() -> None:
    histogram = [0] * (len(HISTOGRAM_BOUNDS_MS) + 1)
    assert quantile(histogram, 0.5) is None
    histogram[HISTOGRAM_BOUNDS_MS.index(100)] = 10  # ten requests between 75 and 100 ms
    assert quantile(histogram, 0.5) == pytest.approx(87.5)
    histogram[-1] = 90  # ninety above the top bound
    assert quantile(histogram, 0.95) == HISTOGRAM_BOUNDS_MS[-1]


async def test_day_rows_serve_whole_days_and_agree_with_the_raw_rows(stores: Stores) -> None:
    records = await load(stores, hours=100, per_hour=12)  # four days and a bit
    await stores.analytics.rollup_hours(now=NOW, settle=600)
    async with stores.analytics._engine.connect() as conn:
        days = (await conn.execute(select(usage_hourly.c.hour).where(usage_hourly.c.dim == "key:day"))).scalars()
        assert sorted(set(days)) == sorted({int(r.started_at) // DAY * DAY for r in records} - {NOW // DAY * DAY})
    first_day = NOW // DAY * DAY - 3 * DAY
    for start, bucket in ((first_day, DAY), (first_day, None), (first_day - 5 * HOUR, None)):
        got = await stores.analytics.cells("key", start, NOW + 1, bucket)
        if bucket is None:
            assert comparable({v: c for (_, v), c in got.items()}) == comparable(
                expected(records, start, NOW + 1, "key")
            )
        else:
            for day in range(int(first_day), int(NOW), DAY):
                per_day = {v: c for (t, v), c in got.items() if t == day}
                assert comparable(per_day) == comparable(expected(records, day, day + DAY, "key"))
    ranking = await stores.analytics.ranking("model", first_day - 5 * HOUR, NOW + 1)
    want = expected(records, first_day - 5 * HOUR, NOW + 1, "model")
    assert ranking == {v: (int(c.sums[6]), int(c.sums[0])) for v, c in want.items()}


async def test_a_chart_shows_the_top_values_and_the_rest_as_other(stores: Stores) -> None:
    records = await load(stores, hours=30)
    await stores.analytics.rollup_hours(now=NOW, settle=600)
    service = Analytics(stores.analytics, Admin(IdentityStore(stores.analytics._engine), LocalBus()))
    until = NOW
    ts = await service.timeseries("model", NOW - 24 * HOUR, until, "1h", top=1)
    (top, other) = ts["series"]
    shown = [r for r in records if r.started_at >= ts["since"]]
    spend = {m: sum(r.cost_micro for r in shown if (r.model or r.requested_model) == m) for m in ("m1", "m2", "m3")}
    assert top["key"] == max(spend, key=lambda m: spend[m]) and other["label"] == "(other: 2)"
    for field in ("requests", "errors", "cost_micro", "prompt_tokens"):
        assert [a + b for a, b in zip(top[field], other[field], strict=True)] == ts["total"][field]
    assert sum(ts["total"]["requests"]) == sum(1 for r in records if ts["since"] <= r.started_at < until)
