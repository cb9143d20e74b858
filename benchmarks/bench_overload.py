#!/usr/bin/env python3
"""Load shedding: far beyond ``server.max_concurrent_requests`` / ``max_concurrent_per_key``, refusals are fast.

    export SLUICEGATE_BENCH_KIT=/path/to/the/kit                     # or pass --kit DIR
    .venv/bin/python -m benchmarks.bench_overload                     # cap 200, 1,000 new streams/s for 15 s
    .venv/bin/python -m benchmarks.bench_overload --cap 100 --rate 2000 --seconds 30

Starts the shared kit's mock (streams of 20 chunks 200 ms apart: each admitted request holds its slot ~3.8 s)
and ``sluicegate serve --workers 1`` with ``server.max_concurrent_requests: --cap`` and
``server.max_concurrent_per_key: --per-key-cap``. Three phases, each with a /healthz prober (every 20 ms) and
RSS/fd sampling:

1. idle: /healthz latency with no load;
2. global: open-loop arrivals at ``--rate`` per second spread over 50 API keys, ~``rate x 3.8 / cap`` times the
   capacity: refusals must be 503 ``overloaded`` with Retry-After, answered fast; admitted streams complete
   normally; the gateway's open streams never exceed the cap (no queue behind it);
3. per key: ``--per-key-burst`` concurrent streams on one API key: exactly the per-key cap is admitted, the rest
   are 429 ``concurrency_limit_exceeded`` with Retry-After; once on a key not seen before (every request looks
   the key up in the store), once on a key cached a moment earlier.

Writes results.json and summary.md to benchmarks/results/overload-<stamp>/ (or ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

import httpx
import orjson

from benchmarks import invocation, kit
from benchmarks.scale_common import (
    MASTER_KEY,
    Gateway,
    OpenCounter,
    StreamResult,
    chat_body,
    cpu_seconds,
    gateway_config,
    machine,
    open_fds,
    pct,
    raise_nofile,
    raw_stream,
    results_dir,
    rss_kb,
    start_gateway,
    start_mock,
    stop,
    use_uvloop,
    write_json,
)


async def probe_health(gw: Gateway, stop_at: asyncio.Event, out: list[float]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        while not stop_at.is_set():
            t0 = time.perf_counter()
            r = await client.get(gw.url + "/healthz")
            out.append((time.perf_counter() - t0) * 1000 if r.status_code == 200 else float("inf"))
            await asyncio.sleep(0.02)


async def open_streams_gauge(gw: Gateway) -> float | None:
    async with httpx.AsyncClient(timeout=5) as client:
        r = await client.get(gw.url + "/metrics")
    for line in r.text.splitlines():
        if line.startswith("sluicegate_open_streams"):
            return float(line.split()[-1])
    return None


def lat(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": round(pct(values, 50), 2), "p99": round(pct(values, 99), 2),
            "max": round(max(values, default=float("nan")), 2)}  # fmt: skip


def classify(results: list[StreamResult]) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    for r in results:
        k = "200 ok" if r.ok else (r.error or f"http {r.status}")
        kinds[k] = kinds.get(k, 0) + 1
    refused = [r for r in results if r.status in (429, 503)]
    ok = [r for r in results if r.ok]
    return {
        "outcomes": kinds,
        "refused": len(refused),
        "refused_with_retry_after": sum(1 for r in refused if r.retry_after),
        "retry_after_values": sorted({r.retry_after for r in refused if r.retry_after}),
        "refusal_ms": lat([r.total * 1000 for r in refused]),
        "admitted_stream_ms": lat([r.total * 1000 for r in ok]),
    }


async def phase(gw: Gateway, name: str, load: Any, seconds_hint: float) -> dict[str, Any]:
    health: list[float] = []
    samples: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def sampler() -> None:
        while not done.is_set():
            samples.append({"rss_kb": rss_kb(gw.pid), "fds": open_fds(gw.pid), "open": await open_streams_gauge(gw)})
            await asyncio.sleep(0.25)

    cpu0, t0 = cpu_seconds(gw.pid), time.monotonic()
    bg = [asyncio.create_task(probe_health(gw, done, health)), asyncio.create_task(sampler())]
    results = await load if load is not None else await asyncio.sleep(seconds_hint)
    done.set()
    await asyncio.gather(*bg)
    wall = time.monotonic() - t0
    row: dict[str, Any] = {"phase": name, "wall_s": round(wall, 1), "healthz_ms": lat(health),
                           "gateway_cpu_util": round((cpu_seconds(gw.pid) - cpu0) / wall, 2),
                           "peak_rss_mb": round(max(s["rss_kb"] for s in samples) / 1024, 1),
                           "peak_fds": max(s["fds"] for s in samples),
                           "peak_open_streams_gauge": max((s["open"] or 0) for s in samples)}  # fmt: skip
    if results:
        row["requests"] = len(results)
        row.update(classify(results))
    return row


async def open_loop(url: str, rate: float, seconds: float, keys: list[str]) -> list[StreamResult]:
    rng = random.Random(3)
    payload = orjson.dumps(chat_body(True))
    tasks: list[asyncio.Task[StreamResult]] = []
    end = time.monotonic() + seconds
    next_at = time.monotonic()
    while next_at < end:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        key = keys[len(tasks) % len(keys)]
        tasks.append(asyncio.create_task(raw_stream(url, payload, api_key=key, expect_chunks=20, timeout=60)))
        next_at += rng.expovariate(rate)
    return list(await asyncio.gather(*tasks))


async def burst(url: str, n: int, key: str) -> list[StreamResult]:
    payload = orjson.dumps(chat_body(True))
    counter = OpenCounter()
    return list(
        await asyncio.gather(
            *(raw_stream(url, payload, api_key=key, expect_chunks=20, counter=counter, timeout=60) for _ in range(n))
        )
    )


async def main_async(a: argparse.Namespace, out: Any) -> dict[str, Any]:
    report: dict[str, Any] = {"args": vars(a), "machine": machine(), "nofile": raise_nofile()}
    mock, mock_url = start_mock(a.kit, out, 20, 200)
    gw = None
    try:
        server = {"max_concurrent_requests": a.cap, "max_concurrent_per_key": a.per_key_cap}
        gw = start_gateway(out, gateway_config(mock_url + "/v1", server))
        admin = {"Authorization": f"Bearer {MASTER_KEY}"}
        async with httpx.AsyncClient(base_url=gw.url + "/admin/v1", headers=admin, timeout=10) as c:
            (await c.post("/groups", json={"name": "load", "models": ["*"]})).raise_for_status()
            # Many keys for the global phase, so that the per-key cap (which applies to the master key too) never
            # binds there: keys x per-key cap is well above the global cap.
            keys = [(await c.post("/keys", json={"name": f"k{i}", "group": "load"})).json()["key"] for i in range(51)]
        key, many = keys[0], keys[1:]
        await burst(gw.chat_url, 20, many[0])  # warm-up
        phases = [await phase(gw, "idle", None, 3.0)]
        print("global overload ...", flush=True)
        phases.append(await phase(gw, "global", open_loop(gw.chat_url, a.rate, a.seconds, many), a.seconds))
        await asyncio.sleep(5)
        print("per-key overload ...", flush=True)
        # A burst on a key the gateway has not seen yet: every request looks the key up in the store at once.
        phases.append(await phase(gw, "per_key_cold", burst(gw.chat_url, a.per_key_burst, key), 5))
        await asyncio.sleep(5)
        # The same burst right after one request cached the key (auth.cache_ttl 5 s).
        await burst(gw.chat_url, 1, keys[-1])
        phases.append(await phase(gw, "per_key_warm", burst(gw.chat_url, a.per_key_burst, keys[-1]), 5))
        report["phases"] = phases
        report["rss_mb_after"] = round(rss_kb(gw.pid) / 1024, 1)
    finally:
        if gw is not None:
            stop(gw.proc)
        stop(mock)
    return report


def summary(r: dict[str, Any], command: str) -> str:
    a = r["args"]
    lines = [
        "# bench_overload",
        "",
        f"Command: `{command}`; machine {r['machine']}",
        f"Config: server.max_concurrent_requests {a['cap']}, max_concurrent_per_key {a['per_key_cap']}; upstream "
        "streams 20 chunks x 200 ms (~3.8 s each)",
        "",
        "| phase | requests | outcomes | refusals with Retry-After | refusal latency p50 / p99 / max (ms) "
        "| admitted stream p50 / p99 (ms) | /healthz p50 / p99 / max (ms) | peak open streams (gauge) "
        "| gateway CPU | peak RSS (MB) | peak fds |",
        "|---|---:|---|---|---|---|---|---:|---:|---:|---:|",
    ]
    for p in r["phases"]:
        h = p["healthz_ms"]
        if "requests" in p:
            rf, st = p["refusal_ms"], p["admitted_stream_ms"]
            cells = (f"{p['requests']} | {p['outcomes']} | {p['refused_with_retry_after']}/{p['refused']} "
                     f"({', '.join(p['retry_after_values'])} s) | {rf['p50']} / {rf['p99']} / {rf['max']} "
                     f"| {st['p50']:,.0f} / {st['p99']:,.0f}")  # fmt: skip
        else:
            cells = "— | — | — | — | —"
        lines.append(
            f"| {p['phase']} | {cells} | {h['p50']} / {h['p99']} / {h['max']} | {p['peak_open_streams_gauge']:.0f} "
            f"| {p['gateway_cpu_util']} | {p['peak_rss_mb']} | {p['peak_fds']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cap", type=int, default=200, help="server.max_concurrent_requests")
    ap.add_argument("--per-key-cap", type=int, default=20, help="server.max_concurrent_per_key")
    ap.add_argument("--rate", type=float, default=1000.0, help="new streams per second in the global phase")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--per-key-burst", type=int, default=200)
    ap.add_argument("--out", default=None)
    kit.add_option(ap)
    a = ap.parse_args()
    a.kit = kit.locate(a.kit)
    out = results_dir("overload", a.out)
    use_uvloop()
    report = asyncio.run(main_async(a, out))
    write_json(out / "results.json", report)
    text = summary(report, invocation("benchmarks.bench_overload"))
    (out / "summary.md").write_text(text)
    print(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
