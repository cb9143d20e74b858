#!/usr/bin/env python3
"""Soak: mixed traffic at half the measured maximum throughput; memory, fds and asyncio tasks must not grow.

    .venv/bin/python -m benchmarks.bench_soak --minutes 20            # the issue's run
    .venv/bin/python -m benchmarks.bench_soak --minutes 5 --rate 150   # fixed rate, skip the max measurement

Upstream: the test suite's FakeOpenAI (tests/fakes/openai/) in its own process, driven by scenarios in
the prompt. Gateway: ``sluicegate serve --workers 1`` (SQLite store, metering, audit, metrics: the defaults),
started through ``python -m benchmarks.soak_gateway``, which only adds a probe task counting the gateway loop's live
asyncio tasks. Traffic mix (weights): streams (normal, slow), non-streams, upstream 500s (a model whose circuit
may open), upstream 429s passed through, upstream connections reset mid-stream, stalled upstreams ended by the
idle timeout, clients that disconnect mid-stream, unknown keys.

1. Maximum throughput: closed loop, ``--max-concurrency`` clients, ``--max-seconds`` (unless ``--rate``).
2. Soak: open loop (Poisson arrivals) at ``--fraction`` (0.5) of that for ``--minutes``; RSS, open fds, threads and
   live tasks sampled every ``--sample-seconds``; after the run, a quiet period and a final sample.
3. Verdict: after warm-up (the first ``--warmup-fraction`` of the run, at least 60 s) the mean of the last
   quarter vs the first quarter of the remaining samples: memory growth < 10 %, fds and tasks not growing
   (quiet-time values back to the idle baseline).
Writes results.json and summary.md to benchmarks/results/soak-<stamp>/ (or ``--out``). Needs no benchmark kit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks import invocation
from benchmarks.scale_common import (
    MASTER_KEY,
    ROOT,
    VENV_BIN,
    Gateway,
    chat_body,
    cpu_seconds,
    free_port,
    machine,
    open_fds,
    raise_nofile,
    results_dir,
    rss_kb,
    session,
    spawn,
    stop,
    stream_once,
    threads,
    use_uvloop,
    wait_http,
    write_json,
)

FAKE_SERVER = """
import sys, time
from tests.fakes.openai import FakeOpenAI
fake = FakeOpenAI().start()
print(fake.url, flush=True)
sys.stdin.read()   # until the parent closes our stdin
fake.stop()
"""

# (name, weight, model, stream, prompt, client cut after N content chunks, key)
MIX: list[tuple[str, int, str, bool, str, int | None, str]] = [
    ("stream", 35, "good", True, "hello", None, "master"),
    ("stream_slow", 10, "good", True, "scenario:slow_chunks:40", None, "master"),
    ("nonstream", 25, "good", False, "hello", None, "master"),
    ("upstream_500", 5, "faulty", False, "scenario:status:500", None, "master"),
    ("upstream_429", 4, "good429", False, "scenario:status:429", None, "master"),
    ("upstream_reset", 5, "good", True, "scenario:reset_after:3", None, "master"),
    ("upstream_stall", 3, "good", True, "scenario:stall_after:2", None, "master"),
    ("client_disconnect", 10, "good", True, "scenario:slow_chunks:60", 2, "master"),
    ("bad_key", 3, "good", False, "hello", None, "bad"),
]


def config(upstream: str) -> dict[str, Any]:
    timeouts = {"connect": 2, "headers": 5, "first_token": 5, "idle": 1.0, "total": 30}

    def dep(name: str) -> dict[str, Any]:
        return {"provider": "openai", "name": name, "model": "up", "api_base": upstream, "api_key": "sk-up",
                "timeouts": timeouts}  # fmt: skip

    return {
        "models": [
            {"id": "good", "deployments": [dep("good")], "price": {"input": 1, "output": 2}},
            {"id": "good429", "deployments": [dep("good429")], "price": {"input": 1, "output": 2}},
            {"id": "faulty", "deployments": [dep("faulty")], "price": {"input": 1, "output": 2}},
        ],
        "server": {"tail_grace": 0.5},
        # The circuit stays closed (threshold far above the error rate) so upstream errors really reach the upstream.
        "routing": {
            "retry": {"max_attempts_per_deployment": 1, "retry_after_cap": 0},
            "circuit": {"failure_threshold": 100_000},
        },
    }


def start_gateway(out: Path, cfg: dict[str, Any], tasks_file: Path, interval: float) -> Gateway:
    import yaml

    port = free_port()
    path = out / "sluicegate.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {
        **os.environ,
        "SLUICEGATE_MASTER_KEY": MASTER_KEY,
        "SLUICEGATE_DATA_DIR": str(out / "gateway-data"),
        "SOAK_TASKS_FILE": str(tasks_file),
        "SOAK_TASKS_INTERVAL": str(interval),
    }
    cmd = [str(VENV_BIN / "python"), "-m", "benchmarks.soak_gateway", "serve", "--config", str(path),
           "--port", str(port), "--workers", "1", "--log-format", "json", "--log-level", "warning"]  # fmt: skip
    log = out / "gateway.log"
    proc = spawn(cmd, log, env=env, cwd=ROOT)  # -m finds the benchmarks package from the repository's root
    wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    return Gateway(proc, f"http://127.0.0.1:{port}", proc.pid, log)


async def one(
    s: Any, gw: Gateway, kind: tuple[str, int, str, bool, str, int | None, str], stats: dict[str, Any]
) -> None:
    name, _, model, stream, prompt, cut, key = kind
    body = chat_body(stream, prompt)
    body["model"] = model
    headers = {"Authorization": f"Bearer {MASTER_KEY if key == 'master' else 'sk-sg-nope'}"}
    r = await stream_once(s, gw.chat_url, body, headers=headers, cut_after=cut)
    bucket = stats.setdefault(name, {})
    outcome = f"{r.status}" + (f" {r.error.split(':')[0]}" if r.error and r.status == 200 else "")
    bucket[outcome] = bucket.get(outcome, 0) + 1
    if r.status == 0:
        stats.setdefault("client_errors", []).append(r.error)


def pick(rng: random.Random) -> tuple[str, int, str, bool, str, int | None, str]:
    return rng.choices(MIX, weights=[m[1] for m in MIX])[0]


async def measure_max(gw: Gateway, concurrency: int, seconds: float) -> float:
    rng = random.Random(1)
    stats: dict[str, Any] = {}
    done = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await one(s, gw, pick(rng), stats)
            done += 1

    async with session(timeout=60) as s:
        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.monotonic() - t0)


async def soak(gw: Gateway, rate: float, minutes: float, sample_every: float, tasks_file: Path) -> dict[str, Any]:
    rng = random.Random(2)
    stats: dict[str, Any] = {}
    samples: list[dict[str, Any]] = []
    inflight: set[asyncio.Task[None]] = set()
    t_end = time.monotonic() + minutes * 60
    t0 = time.monotonic()
    cpu0 = cpu_seconds(gw.pid)

    def last_tasks() -> int | None:
        try:
            lines = tasks_file.read_text().splitlines()
            return int(json.loads(lines[-1])["tasks"]) if lines else None
        except (OSError, ValueError):
            return None

    async def sampler() -> None:
        while time.monotonic() < t_end:
            row = {"t": round(time.monotonic() - t0, 1), "rss_kb": rss_kb(gw.pid), "fds": open_fds(gw.pid)}
            row.update(threads=threads(gw.pid), tasks=last_tasks(), client_inflight=len(inflight))
            samples.append(row)
            await asyncio.sleep(sample_every)

    sampling = asyncio.create_task(sampler())
    sent = 0
    async with session(timeout=60) as s:
        next_at = time.monotonic()
        while next_at < t_end:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            task = asyncio.create_task(one(s, gw, pick(rng), stats))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            sent += 1
            next_at += rng.expovariate(rate)
        await asyncio.gather(*list(inflight))
    await sampling
    wall = time.monotonic() - t0
    return {"sent": sent, "wall_s": round(wall, 1), "achieved_rps": round(sent / wall, 1), "outcomes": stats,
            "cpu_util": round((cpu_seconds(gw.pid) - cpu0) / wall, 2), "samples": samples}  # fmt: skip


def verdict(samples: list[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    after = [s for s in samples if s["t"] >= warmup_s]
    q = max(1, len(after) // 4)
    first, last = after[:q], after[-q:]

    def mean(rows: list[dict[str, Any]], k: str) -> float:
        vals = [r[k] for r in rows if r.get(k) is not None]
        return sum(vals) / len(vals) if vals else float("nan")

    out: dict[str, Any] = {"warmup_s": warmup_s, "samples_after_warmup": len(after)}
    for k in ("rss_kb", "fds", "threads", "tasks"):
        a, b = mean(first, k), mean(last, k)
        out[k] = {"first_quarter_mean": round(a, 1), "last_quarter_mean": round(b, 1),
                  "growth_pct": round((b - a) / a * 100, 2) if a else None,
                  "max": max((r[k] for r in after if r.get(k) is not None), default=None)}  # fmt: skip
    out["memory_ok"] = out["rss_kb"]["growth_pct"] is not None and out["rss_kb"]["growth_pct"] < 10
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=0.0, help="requests/s; 0 = --fraction of the measured maximum")
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--max-concurrency", type=int, default=64)
    ap.add_argument("--max-seconds", type=float, default=20.0)
    ap.add_argument("--sample-seconds", type=float, default=5.0)
    ap.add_argument("--warmup-fraction", type=float, default=0.2)
    ap.add_argument("--quiet-seconds", type=float, default=15.0, help="idle time after the run before the final sample")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    out = results_dir("soak", a.out)
    raise_nofile()
    use_uvloop()
    report: dict[str, Any] = {"args": vars(a), "machine": machine(), "command": invocation("benchmarks.bench_soak")}
    # `python -c` puts the working directory on sys.path, so the fake imports tests.fakes from the repository.
    fake = subprocess.Popen(
        [str(VENV_BIN / "python"), "-c", FAKE_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT
    )
    gw = None
    try:
        assert fake.stdout is not None
        upstream = fake.stdout.readline().decode().strip()
        tasks_file = out / "tasks.jsonl"
        gw = start_gateway(out, config(upstream), tasks_file, a.sample_seconds)
        time.sleep(a.sample_seconds + 0.5)
        report["idle_start"] = {"rss_kb": rss_kb(gw.pid), "fds": open_fds(gw.pid), "threads": threads(gw.pid),
                                "tasks": json.loads(tasks_file.read_text().splitlines()[-1])["tasks"]}  # fmt: skip
        if a.rate:
            rate = a.rate
        else:
            print(f"measuring maximum throughput for {a.max_seconds:.0f} s at concurrency {a.max_concurrency} ...")
            report["max_rps"] = round(asyncio.run(measure_max(gw, a.max_concurrency, a.max_seconds)), 1)
            rate = report["max_rps"] * a.fraction
            time.sleep(3)
        report["rate"] = round(rate, 1)
        print(f"soak: {rate:.0f} req/s for {a.minutes} min ...", flush=True)
        report["soak"] = asyncio.run(soak(gw, rate, a.minutes, a.sample_seconds, tasks_file))
        time.sleep(a.quiet_seconds)
        tasks = [json.loads(x) for x in tasks_file.read_text().splitlines()]
        report["idle_end"] = {"rss_kb": rss_kb(gw.pid), "fds": open_fds(gw.pid), "threads": threads(gw.pid),
                              "tasks": tasks[-1]["tasks"]}  # fmt: skip
        warmup = max(60.0, a.minutes * 60 * a.warmup_fraction)
        report["verdict"] = verdict(report["soak"]["samples"], warmup)
        v = report["verdict"]
        v["fds_back_to_idle"] = report["idle_end"]["fds"] <= report["idle_start"]["fds"] + 5
        v["tasks_back_to_idle"] = report["idle_end"]["tasks"] <= report["idle_start"]["tasks"] + 2
        v["pass"] = bool(v["memory_ok"] and v["fds_back_to_idle"] and v["tasks_back_to_idle"])
    finally:
        if gw is not None:
            stop(gw.proc)
        if fake.stdin:
            fake.stdin.close()
        fake.wait(15)
    write_json(out / "results.json", report)
    text = summary(report, out)
    (out / "summary.md").write_text(text)
    print(text)
    print(f"written to {out}")


def summary(r: dict[str, Any], out: Path) -> str:
    s, v = r["soak"], r["verdict"]
    rows = s["samples"]
    step = max(1, len(rows) // 12)
    timeline = " · ".join(f"{x['t'] / 60:.1f} min: {x['rss_kb'] / 1024:.1f} MB / {x['fds']} fds / {x['tasks']} tasks"
                          for x in rows[::step])  # fmt: skip
    lines = [
        f"# bench_soak — {out.name}",
        "",
        f"Command: `{r['command']}`; machine {r['machine']}",
        f"Maximum throughput (closed loop, mix): {r.get('max_rps', '—')} req/s; soak rate {r['rate']} req/s "
        f"(achieved {s['achieved_rps']}), {s['sent']} requests in {s['wall_s']} s, gateway CPU {s['cpu_util']}",
        f"Outcomes (status per kind): {json.dumps(s['outcomes'])}",
        f"Idle before: {r['idle_start']}; idle after a {r['args']['quiet_seconds']} s quiet period: {r['idle_end']}",
        "",
        f"| after warm-up ({v['warmup_s']:.0f} s) | first quarter mean | last quarter mean | growth | max |",
        "|---|---:|---:|---:|---:|",
    ]
    for k in ("rss_kb", "fds", "threads", "tasks"):
        x = v[k]
        lines.append(
            f"| {k} | {x['first_quarter_mean']} | {x['last_quarter_mean']} | {x['growth_pct']} % | {x['max']} |"
        )
    lines += ["", f"Verdict: memory growth < 10 %: {v['memory_ok']}; fds back to idle: {v['fds_back_to_idle']}; "
              f"tasks back to idle: {v['tasks_back_to_idle']} → **{'PASS' if v['pass'] else 'FAIL'}**", "",
              f"Timeline: {timeline}"]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
