#!/usr/bin/env python3
"""5,000 concurrent open streams through one gateway worker, against calling the mock upstream directly.

    export SLUICEGATE_BENCH_KIT=/path/to/the/kit                    # or pass --kit DIR
    .venv/bin/python -m benchmarks.bench_streams                     # 5,000 streams, 1 repetition
    .venv/bin/python -m benchmarks.bench_streams --streams 2000 --reps 2
    .venv/bin/python -m benchmarks.bench_streams --litellm-bin PATH/TO/litellm   # + LiteLLM
    .venv/bin/python -m benchmarks.bench_streams --nginx        # + nginx relaying the same streams (reference)
    .venv/bin/python -m benchmarks.bench_streams --workers 2    # the same 5,000 streams over two workers

Starts the shared kit's mock upstream (``mock_upstream.py --chunks 20 --chunk-delay-ms 200`` in ``--kit``)
and ``sluicegate serve --workers 1`` in front of it (SQLite store, metering, audit and metrics on: the defaults),
raises ``RLIMIT_NOFILE`` for itself and its children, then opens ``--streams`` streams (spread over ``--ramp``
seconds, so all are open at once: each lasts ~3.8 s), alternately direct and through the gateway. Reports
errors, peak open streams, stream time and time to first content chunk (p50/p99), the p99 ratio gateway/direct
(target <= 1.2), the gateway's CPU, and its memory per open stream above the warmed-up idle baseline
(target <= 40 KB; RSS of the process from /proc). Writes ``results.json`` and ``summary.md`` to
``benchmarks/results/streams-<stamp>/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks import invocation, kit
from benchmarks.scale_common import (
    MASTER_KEY,
    OpenCounter,
    StreamResult,
    chat_body,
    cpu_seconds,
    free_port,
    gateway_config,
    machine,
    open_fds,
    own_cpu_seconds,
    pct,
    raise_nofile,
    raw_stream,
    results_dir,
    rss_kb,
    sched_wait_seconds,
    spawn,
    start_gateway,
    start_mock,
    stop,
    tcp_counters,
    threads,
    use_uvloop,
    wait_http,
    write_json,
)

CHUNKS, DELAY_MS = 20, 200


async def run_streams(
    url: str, n: int, ramp: float, pid: int | None, *, api_key: str = MASTER_KEY
) -> tuple[list[StreamResult], dict[str, Any]]:
    counter = OpenCounter()
    samples: list[dict[str, Any]] = []
    stop_sampling = asyncio.Event()

    async def sampler() -> None:
        while not stop_sampling.is_set():
            row: dict[str, Any] = {"t": time.monotonic(), "open": counter.now}
            if pid:
                row.update(
                    rss_kb=rss_kb(pid), fds=open_fds(pid), cpu_s=cpu_seconds(pid), wait_s=sched_wait_seconds(pid)
                )
            samples.append(row)
            await asyncio.sleep(0.1)

    body = chat_body(True)
    cpu0 = cpu_seconds(pid) if pid else 0.0
    wait0 = sched_wait_seconds(pid) if pid else 0.0
    me0, tcp0 = own_cpu_seconds(), tcp_counters()
    t0 = time.monotonic()
    sampling = asyncio.create_task(sampler())
    payload = orjson.dumps(body)

    async def one(i: int) -> StreamResult:
        await asyncio.sleep(ramp * i / n)
        return await raw_stream(url, payload, api_key=api_key, expect_chunks=CHUNKS, counter=counter)

    results = await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.monotonic() - t0
    stop_sampling.set()
    await sampling
    info: dict[str, Any] = {"wall_s": round(wall, 2), "peak_open": counter.peak}
    info["client_cpu_util"] = round((own_cpu_seconds() - me0) / wall, 2)
    tcp1 = tcp_counters()
    info["tcp"] = {k: tcp1[k] - tcp0.get(k, 0) for k in tcp1 if tcp1[k] - tcp0.get(k, 0)}
    start = samples[0]["t"] if samples else 0
    info["timeline"] = [{**r, "t": round(r["t"] - start, 2)} for r in samples]
    if pid:
        info["cpu_s"] = round(cpu_seconds(pid) - cpu0, 2)
        info["cpu_util"] = round(info["cpu_s"] / wall, 2)
        info["runnable_waiting_s"] = round(sched_wait_seconds(pid) - wait0, 2)
        info["peak_rss_kb"] = max(r["rss_kb"] for r in samples)
        info["peak_fds"] = max(r["fds"] for r in samples)
        plateau = [r["rss_kb"] for r in samples if r["open"] >= 0.95 * n]
        info["median_rss_kb_at_plateau"] = sorted(plateau)[len(plateau) // 2] if plateau else None
        info["plateau_samples"] = len(plateau)
    return results, info


def summarize(results: list[StreamResult]) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            key = r.error.split(":")[0][:60]
            errors[key] = errors.get(key, 0) + 1
    totals = [r.total * 1000 for r in ok]
    ttfc = [r.ttfc * 1000 for r in ok if r.ttfc is not None]
    return {
        "sent": len(results),
        "ok": len(ok),
        "errors": len(results) - len(ok),
        "error_kinds": errors,
        "total_ms": {q: round(pct(totals, q), 1) for q in (50, 90, 99)} | {"max": round(max(totals, default=0), 1)},
        "ttfc_ms": {q: round(pct(ttfc, q), 1) for q in (50, 90, 99)},
    }


def start_litellm(kit_dir: Path, out: Path, binary: str, mock_url: str) -> tuple[Any, str, int]:
    port = free_port()
    d = out / "litellm"
    d.mkdir(exist_ok=True)
    env = dict(
        os.environ,
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_OFFLINE_MODE="true",
        LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS="true",
        LITELLM_DONT_SHOW_FEEDBACK_BOX="true",
        MOCK_API_BASE=mock_url + "/v1",
        LITELLM_MASTER_KEY=MASTER_KEY,
        LITELLM_LOG="ERROR",
        LITELLM_MODE="PRODUCTION",
    )
    cmd = [
        binary,
        "--config",
        str(kit_dir / "litellm" / "config_prod.yaml"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = spawn([*cmd, "--num_workers", "1"], d / "server.log", env=env, cwd=d)
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc, timeout=120)
    return proc, f"http://127.0.0.1:{port}/v1/chat/completions", proc.pid


def start_nginx(kit_dir: Path, out: Path, mock_url: str) -> tuple[Any, str, int]:
    """nginx as a bare reverse proxy (the shared kit's nginx.conf.in: 1 worker, no buffering, upstream
    keep-alive), with room for 5,000 client and 5,000 upstream connections: what relaying alone costs."""
    port = free_port()
    d = out / "nginx"
    d.mkdir(exist_ok=True)
    conf = (kit_dir / "nginx.conf.in").read_text()
    conf = conf.replace("@PORT@", str(port)).replace("@UPSTREAM@", mock_url.removeprefix("http://"))
    conf = conf.replace("worker_connections 4096;", "worker_connections 16384;")
    conf = conf.replace("worker_processes 1;", "worker_processes 1;\nworker_rlimit_nofile 20000;")
    (d / "nginx.conf").write_text(conf)
    proc = spawn(["nginx", "-p", str(d), "-c", str(d / "nginx.conf"), "-g", "daemon off;"], d / "server.log")
    wait_http(f"http://127.0.0.1:{port}/health", proc)
    return proc, f"http://127.0.0.1:{port}/v1/chat/completions", proc.pid


async def main_async(a: argparse.Namespace, out: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"args": vars(a), "machine": machine(), "nofile": raise_nofile()}
    mock, mock_url = start_mock(a.kit, out, CHUNKS, DELAY_MS)
    gw = litellm = nginx = None
    try:
        gw = start_gateway(out, gateway_config(mock_url + "/v1"), workers=a.workers)
        report["gateway_rss_kb_fresh"] = rss_kb(gw.pid)
        candidates: list[tuple[str, str, int | None]] = [
            ("direct", mock_url + "/v1/chat/completions", None),
            ("sluicegate", gw.chat_url, gw.pid),
        ]
        if a.nginx:
            nginx, nurl, npid = start_nginx(a.kit, out, mock_url)
            candidates.append(("nginx", nurl, npid))
        if a.litellm_bin:
            litellm, lurl, lpid = start_litellm(a.kit, out, a.litellm_bin, mock_url)
            candidates.append(("litellm-prod", lurl, lpid))
        # Warm-up: pools, lazily imported code, first records; then the idle baseline after a pause.
        for name, url, _ in candidates:
            res, _ = await run_streams(url, a.warmup, 1.0, None)
            report[f"warmup_{name}"] = summarize(res)
        await asyncio.sleep(3)
        for name, _, pid in candidates:
            if pid:
                report[f"idle_{name}"] = {"rss_kb": rss_kb(pid), "fds": open_fds(pid), "threads": threads(pid)}
        runs: list[dict[str, Any]] = []
        for rep in range(a.reps):
            order = candidates if rep % 2 == 0 else list(reversed(candidates))
            for name, url, pid in order:
                n = a.litellm_streams if name == "litellm-prod" and a.litellm_streams else a.streams
                print(f"rep {rep + 1}: {name}: {n} streams ...", flush=True)
                results, info = await run_streams(url, n, a.ramp, pid)
                row = {"rep": rep + 1, "candidate": name, "streams": n, **info, **summarize(results)}
                if pid:
                    base = report[f"idle_{name}"]["rss_kb"]
                    row["kb_per_open_stream_peak"] = round((info["peak_rss_kb"] - base) / max(1, info["peak_open"]), 1)
                    if info.get("median_rss_kb_at_plateau"):
                        plateau = info["median_rss_kb_at_plateau"]
                        row["kb_per_open_stream_plateau"] = round((plateau - base) / max(1, info["peak_open"]), 1)
                    await asyncio.sleep(3)
                    row["rss_kb_3s_after"] = rss_kb(pid)
                    row["fds_3s_after"] = open_fds(pid)
                keys = (
                    "candidate",
                    "ok",
                    "errors",
                    "peak_open",
                    "total_ms",
                    "ttfc_ms",
                    "tcp",
                    "client_cpu_util",
                    "cpu_util",
                    "runnable_waiting_s",
                )
                print({k: row.get(k) for k in keys}, flush=True)
                runs.append(row)
                await asyncio.sleep(2)
        report["runs"] = runs
        direct = [r for r in runs if r["candidate"] == "direct"]
        for name in ("sluicegate", "nginx", "litellm-prod"):
            mine = [r for r in runs if r["candidate"] == name]
            if mine:
                report[f"p99_ratio_{name}"] = [
                    round(m["total_ms"][99] / d["total_ms"][99], 3) for m, d in zip(mine, direct, strict=False)
                ]
    finally:
        stop(nginx)
        stop(litellm)
        if gw is not None:
            stop(gw.proc)
        stop(mock)
    return report


def write_summary(out: Path, report: dict[str, Any], command: str) -> str:
    lines = [
        f"# bench_streams — {out.name}",
        "",
        f"Command: `{command}`  ",
        f"Machine: {report['machine']}; RLIMIT_NOFILE {report['nofile']}; gateway RSS fresh "
        f"{report['gateway_rss_kb_fresh'] / 1024:.1f} MB, idle after warm-up "
        f"{report['idle_sluicegate']['rss_kb'] / 1024:.1f} MB, {report['idle_sluicegate']['fds']} fds",
        "",
        "| rep | candidate | streams | ok | errors | peak open | stream p50 / p99 / max (ms) | TTFC p50 / p99 (ms) "
        "| CPU util | peak RSS (MB) | KB per open stream (peak / plateau) | peak fds |",
        "|---|---|---:|---:|---:|---:|---|---|---:|---:|---|---:|",
    ]
    for r in report["runs"]:
        t, f = r["total_ms"], r["ttfc_ms"]
        mem = (
            f"{r['kb_per_open_stream_peak']} / {r.get('kb_per_open_stream_plateau', '—')}"
            if "kb_per_open_stream_peak" in r
            else "—"
        )
        lines.append(
            f"| {r['rep']} | {r['candidate']} | {r['streams']} | {r['ok']} | {r['errors']} {r['error_kinds'] or ''} "
            f"| {r['peak_open']} | {t[50]:,.0f} / {t[99]:,.0f} / {t['max']:,.0f} | {f[50]:,.0f} / {f[99]:,.0f} "
            f"| {r.get('cpu_util', '—')} | {r['peak_rss_kb'] / 1024:.0f} | {mem} | {r.get('peak_fds', '—')} |"
            if "peak_rss_kb" in r
            else f"| {r['rep']} | {r['candidate']} | {r['streams']} | {r['ok']} | {r['errors']} "
            f"{r['error_kinds'] or ''} | {r['peak_open']} | {t[50]:,.0f} / {t[99]:,.0f} / {t['max']:,.0f} "
            f"| {f[50]:,.0f} / {f[99]:,.0f} | — | — | — | — |"
        )
    for name in ("sluicegate", "nginx", "litellm-prod"):
        if f"p99_ratio_{name}" in report:
            lines.append(
                f"\np99 stream time ÷ direct, {name}: {report[f'p99_ratio_{name}']} (target ≤ 1.2 for sluicegate)"
            )
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=5000)
    ap.add_argument("--ramp", type=float, default=2.0, help="seconds over which the streams are opened")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1, help="gateway worker processes (the target is for 1)")
    ap.add_argument("--warmup", type=int, default=300, help="streams per candidate before the idle baseline")
    ap.add_argument("--litellm-bin", default=None, help="also run LiteLLM (config_prod of the shared kit)")
    ap.add_argument("--litellm-streams", type=int, default=0, help="streams for LiteLLM (default: --streams)")
    ap.add_argument("--nginx", action="store_true", help="also relay the streams through nginx (reference)")
    ap.add_argument("--out", default=None)
    kit.add_option(ap)
    a = ap.parse_args()
    a.kit = kit.locate(a.kit)
    out = results_dir("streams", a.out)
    use_uvloop()
    report = asyncio.run(main_async(a, out))
    write_json(out / "results.json", report)
    print(write_summary(out, report, invocation("benchmarks.bench_streams")))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
