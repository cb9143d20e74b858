"""The console's analytics queries on a realistic ledger: millions of usage rows over 30 days, on PostgreSQL.

Loads a fresh schema with ``--rows`` usage rows spread over ``--days`` days up to now (a daily cycle, a few heavy
keys and many light ones, eight models with their own latencies, 3 % errors, 2 % failed-over attempts), plus the
groups and keys they name; rolls the complete days and the settled hours as a running gateway would (timing the
hourly backfill), then times every query the console makes, through the same service (``analytics.py``) the API
and the pages call. Each query runs once to warm up, then ``--reps`` times; the median and the worst are reported.
For comparison it also times the 30-day totals read from raw rows only (what the cube saves).

    .venv/bin/python -m benchmarks.bench_console_queries                      # 3,000,000 rows, 30 days
    .venv/bin/python -m benchmarks.bench_console_queries --rows 10000000 --keep
    .venv/bin/python -m benchmarks.bench_console_queries --pg-url postgresql://root@127.0.0.1:5432/test

Results (JSON) go to benchmarks/results/<stamp>/console_queries.json; the table in docs/benchmarks.md is copied
from the printed one by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from sluicegate.admin import Admin
from sluicegate.analytics import Analytics
from sluicegate.auth.authenticator import LocalBus
from sluicegate.auth.keys import generate_key
from sluicegate.storage.analytics import UsageAnalytics
from sluicegate.storage.batch_writer import USAGE_COLUMNS
from sluicegate.storage.db import create_engine
from sluicegate.storage.identity import IdentityStore
from sluicegate.storage.migrations import migrate
from sluicegate.storage.usage import UsageStore, utc_day

# (model, deployment, median latency ms, input and output credits per million tokens)
MODELS = [
    ("gpt-4o", "openai/gpt-4o", 1800, 2.5, 10.0),
    ("gpt-4o-mini", "openai/gpt-4o-mini", 900, 0.15, 0.6),
    ("claude-sonnet-4-5", "anthropic/claude-sonnet-4-5", 2600, 3.0, 15.0),
    ("claude-haiku-4-5", "anthropic/claude-haiku-4-5", 1100, 1.0, 5.0),
    ("gemini-2.5-pro", "gemini/gemini-2.5-pro", 3200, 1.25, 10.0),
    ("gemini-2.5-flash", "gemini/gemini-2.5-flash", 800, 0.3, 2.5),
    ("llama-3.3-70b", "openai/vllm-llama", 1400, 0.6, 0.6),
    ("embed-rerank", "openai/rerank", 120, 0.05, 0.0),
]
MODEL_WEIGHTS = [20, 30, 12, 10, 6, 10, 8, 4]
ERRORS = [(429, "rate_limit_exceeded"), (502, "upstream_error"), (504, "upstream_timeout"), (403, "budget_exceeded")]


def rows(count: int, days: int, keys: list[tuple[str, str, str]], now: float, seed: int) -> Iterator[tuple[Any, ...]]:
    """Usage rows in ``USAGE_COLUMNS`` order, oldest first."""
    rng = random.Random(seed)
    start = now - days * 86400
    # Zipf-like key popularity: a few keys make most of the traffic.
    key_weights = [1 / (i + 1) ** 1.1 for i in range(len(keys))]
    picks_key = rng.choices(range(len(keys)), key_weights, k=count)
    picks_model = rng.choices(range(len(MODELS)), MODEL_WEIGHTS, k=count)
    times = []
    while len(times) < count:
        # A daily cycle: busier in the (UTC) working day.
        at = start + rng.random() * (now - start)
        hour = (at % 86400) / 3600
        if rng.random() < 0.35 + 0.65 * math.sin(math.pi * max(0.0, min(1.0, (hour - 6) / 14))):
            times.append(at)
    times.sort()  # written in time order, as a gateway writes them
    for i, at in enumerate(times):
        key_id, prefix, group = keys[picks_key[i]]
        model, deployment, median, price_in, price_out = MODELS[picks_model[i]]
        r = rng.random()
        status, code = (200, None) if r > 0.03 else ERRORS[min(3, int(r / 0.0075))]
        answered = status not in (429, 403)
        prompt = int(rng.lognormvariate(6.5, 1.0)) if status != 403 else 0
        completion = int(rng.lognormvariate(5.5, 0.9)) if status == 200 else 0
        cached = prompt // 2 if rng.random() < 0.3 else 0
        cost = int((prompt * price_in + completion * price_out) + 0.5) if status == 200 else 0
        latency = rng.lognormvariate(math.log(median), 0.6) if answered else rng.uniform(0.2, 3)
        ttft = latency * rng.uniform(0.1, 0.4) if status == 200 else None
        attempt = {"model": model, "deployment": deployment, "ok": status == 200, "error_code": code,
                   "status": status if status != 200 else None, "latency_ms": round(latency, 3)}  # fmt: skip
        attempts = [attempt] if answered else []
        if status == 200 and rng.random() < 0.02:
            failed = {**attempt, "deployment": deployment + "-b", "ok": False, "error_code": "upstream_error"}
            attempts = [failed | {"status": 503}, attempt]
        yield (
            f"req_{uuid.UUID(int=rng.getrandbits(128)).hex[:24]}",
            at,
            utc_day(at),
            key_id,
            prefix,
            group,
            model,
            model if answered else None,
            deployment if answered else None,
            rng.random() < 0.7,
            status,
            "completed" if status == 200 else ("rejected" if not answered else "failed"),
            code,
            False,
            False,
            prompt,
            cached,
            0,
            completion,
            0,
            cost,
            round(latency, 3),
            round(ttft, 3) if ttft is not None else None,
            None,
            orjson.dumps(attempts).decode(),
        )


async def load(args: argparse.Namespace, schema: str, now: float) -> tuple[float, int]:
    engine = create_engine(f"{args.pg_url}?search_path={schema}")
    await migrate(engine)
    identity = IdentityStore(engine)
    groups = [await identity.create_group(f"team-{g:02d}", ["*"]) for g in range(args.groups)]
    keys = []
    for k in range(args.keys):
        new = generate_key()
        group = groups[k % len(groups)]
        key_id = await identity.create_key(name=f"key-{k:04d}", prefix=new.prefix, key_hash=new.key_hash,
                                           group_id=group.id, models=None, expires_at=None)  # fmt: skip
        keys.append((key_id, new.prefix, group.name))
    await engine.dispose()
    conn = await asyncpg.connect(args.pg_url, server_settings={"search_path": schema})
    started = time.perf_counter()
    batch: list[tuple[Any, ...]] = []
    loaded = 0
    columns = list(USAGE_COLUMNS)

    async def flush() -> None:
        nonlocal loaded
        await conn.copy_records_to_table("usage", records=batch, columns=columns, schema_name=schema)
        loaded += len(batch)
        batch.clear()

    for row in rows(args.rows, args.days, keys, now, args.seed):
        batch.append(row)
        if len(batch) >= 50_000:
            await flush()
            print(f"\rloaded {loaded:,} rows", end="", flush=True)
    if batch:
        await flush()
    await conn.execute("ANALYZE")
    await conn.close()
    print(f"\rloaded {loaded:,} rows in {time.perf_counter() - started:.0f} s")
    return time.perf_counter() - started, loaded


async def timed(label: str, reps: int, op: Callable[[], Awaitable[Any]], out: list[dict[str, Any]]) -> None:
    await op()  # warm-up: plans, caches, the labels' key list
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        await op()
        times.append((time.perf_counter() - t0) * 1000)
    result = {"query": label, "median_ms": statistics.median(times), "max_ms": max(times)}
    out.append(result)
    print(f"| {label} | {result['median_ms']:.1f} | {result['max_ms']:.1f} |", flush=True)


async def measure(args: argparse.Namespace, schema: str, now: float) -> dict[str, Any]:
    engine = create_engine(f"{args.pg_url}?search_path={schema}")
    usage = UsageStore(engine)
    cube = UsageAnalytics(engine)
    t0 = time.perf_counter()
    days = await usage.rollup(now)
    daily_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    hours = await cube.rollup_hours(now=now, settle=args.settle)
    hourly_s = time.perf_counter() - t0
    conn = await asyncpg.connect(args.pg_url, server_settings={"search_path": schema})
    await conn.execute("ANALYZE")
    cube_rows = await conn.fetchval("SELECT count(*) FROM usage_hourly")
    mark = await cube.hourly_mark() or now
    raw_tail = await conn.fetchval("SELECT count(*) FROM usage WHERE created_at >= $1", mark)
    size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('usage'))")
    total_rows = await conn.fetchval("SELECT count(*) FROM usage")
    await conn.close()
    print(f"rolled {len(days)} days in {daily_s:.1f} s; {len(hours)} hours into {cube_rows:,} cube rows in "
          f"{hourly_s:.1f} s ({hourly_s / max(len(hours), 1) * 1000:.0f} ms per hour); raw tail {raw_tail:,} rows; "
          f"usage table {total_rows:,} rows, {size}")  # fmt: skip
    admin = Admin(IdentityStore(engine), LocalBus(), None, usage)
    an = Analytics(cube, admin)
    results: list[dict[str, Any]] = []
    print("\n| query | median ms | max ms |\n|---|---:|---:|")
    for span in ("1h", "24h", "7d", "30d"):
        for by in ("none", "model", "key", "group"):
            await timed(
                f"timeseries by={by} since={span}", args.reps, lambda b=by, s=span: an.timeseries(b, s), results
            )
    for by in ("model", "key", "group"):
        await timed(f"summary by={by} since=30d", args.reps, lambda b=by: an.summary(b, "30d"), results)
    for by in ("model", "key", "group"):
        await timed(f"top 5 by={by} since=30d", args.reps, lambda b=by: an.top(b, "30d"), results)
    await timed("overview page's queries, 30d (1 series, totals, 3 tops)", args.reps,
                lambda: _overview(an, "30d"), results)  # fmt: skip
    await timed("request log, first page of 50", args.reps, lambda: an.requests(limit=50), results)
    await timed("request log, page 50 deep (cursor)", args.reps, lambda: _deep_page(an), results)
    await timed("request log, one key's errors", args.reps, lambda: an.requests(limit=50, key="key-0003",
                                                                                 status="error"), results)  # fmt: skip
    await timed("upstream error rates, last hour", args.reps, lambda: an.upstreams("1h"), results)
    start = int(now // 86400 - 30) * 86400
    await timed("30d totals from raw rows only (no cube), for comparison", max(1, args.reps // 2),
                lambda: cube.cells(None, start + 1, now, None), results)  # fmt: skip
    await usage.close()
    await engine.dispose()
    results.extend(await asyncio.to_thread(_over_http, args, schema))
    return {"daily_rollup_s": daily_s, "hourly_rollup_s": hourly_s, "hours": len(hours), "cube_rows": cube_rows,
            "raw_tail_rows": raw_tail, "usage_rows": total_rows, "usage_size": size, "queries": results}  # fmt: skip


def _over_http(args: argparse.Namespace, schema: str) -> list[dict[str, Any]]:
    """The same figures as a browser or API client gets them: a real gateway on this schema, over HTTP."""
    port, master = 18_790, "sk-bench-console-master"
    config = Path(tempfile.mkdtemp()) / "bench-console.yaml"
    config.write_text(CONFIG)
    env = {**os.environ, "SLUICEGATE_DATABASE_URL": f"{args.pg_url}?search_path={schema}",
           "SLUICEGATE_MASTER_KEY": master, "SLUICEGATE_DATA_DIR": str(config.parent)}  # fmt: skip
    cmd = [sys.executable, "-m", "sluicegate", "serve", "--config", str(config), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results: list[dict[str, Any]] = []
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=60) as client:
            for _ in range(300):
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            auth = {"Authorization": f"Bearer {master}"}
            calls = [
                (
                    "HTTP GET /admin/v1/usage/timeseries?by=model&since=30d",
                    "/admin/v1/usage/timeseries?by=model&since=30d",
                ),
                ("HTTP GET /admin/v1/usage/timeseries?by=key&since=30d", "/admin/v1/usage/timeseries?by=key&since=30d"),
                ("HTTP GET /admin/v1/usage/summary?by=key&since=30d", "/admin/v1/usage/summary?by=key&since=30d"),
            ]
            for label, path in calls:
                results.append(_time_http(label, args.reps, lambda p=path: client.get(p, headers=auth)))
            client.post("/ui/login", data={"master_key": master})
            for span in ("24h", "30d"):
                label = f"HTTP GET /ui/overview?range={span} (the page, logged in)"
                results.append(_time_http(label, args.reps, lambda s=span: client.get(f"/ui/overview?range={s}")))
    finally:
        proc.terminate()
        proc.wait(30)
    return results


def _time_http(label: str, reps: int, call: Callable[[], httpx.Response]) -> dict[str, Any]:
    assert call().status_code == 200, label
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        assert call().status_code == 200
        times.append((time.perf_counter() - t0) * 1000)
    result = {"query": label, "median_ms": statistics.median(times), "max_ms": max(times)}
    print(f"| {label} | {result['median_ms']:.1f} | {result['max_ms']:.1f} |", flush=True)
    return result


CONFIG = """
models:
  - id: gpt-4o
    deployments: [{provider: openai, model: gpt-4o, api_base: "http://127.0.0.1:9/v1"}]
"""


async def _overview(an: Analytics, span: str) -> None:
    await an.timeseries("none", span)
    await an.summary("none", span)
    for by in ("model", "key", "group"):
        await an.top(by, span)


async def _deep_page(an: Analytics) -> None:
    cursor = None
    for _ in range(50):
        page = await an.requests(limit=50, before=cursor)
        cursor = page["next"]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pg-url", required=True, help="a PostgreSQL database to load the ledger into (a fresh schema)"
    )
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--groups", type=int, default=25)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--settle", type=float, default=690.0, help="the gateway's default: 600 + 30 + 60 s")
    parser.add_argument("--keep", action="store_true", help="keep the schema (its name is printed)")
    parser.add_argument("--schema", help="measure a schema kept by an earlier --keep run instead of loading one")
    args = parser.parse_args()
    schema = args.schema or "bench_console_" + uuid.uuid4().hex[:8]
    now = time.time()
    load_s, loaded = 0.0, 0
    if not args.schema:
        conn = await asyncpg.connect(args.pg_url)
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.close()
    try:
        if not args.schema:
            load_s, loaded = await load(args, schema, now)
        report = await measure(args, schema, now)
    finally:
        if not args.keep and not args.schema:
            conn = await asyncpg.connect(args.pg_url)
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
            await conn.close()
        else:
            print(f"kept schema {schema}")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    out = Path(__file__).parent / "results" / stamp
    out.mkdir(parents=True, exist_ok=True)
    meta = {"rows": loaded, "days": args.days, "keys": args.keys, "groups": args.groups, "load_s": load_s}
    (out / "console_queries.json").write_text(json.dumps({**meta, **report}, indent=2))
    print(f"\nwritten to {out / 'console_queries.json'}")


if __name__ == "__main__":
    asyncio.run(main())
