#!/usr/bin/env python3
"""One command: benchmark sluicegate against direct-to-upstream and nginx with the shared kit.

    export SLUICEGATE_BENCH_KIT=/path/to/the/kit                # or pass --kit DIR
    .venv/bin/python -m benchmarks.run_gateway_bench            # full run (about 15 min)
    .venv/bin/python -m benchmarks.run_gateway_bench --quick    # smoke run (about 3 min)

Steps (see benchmarks/README.md):
  1. write a sluicegate config routing model ``mock-gpt`` to the kit's mock (http://127.0.0.1:18000/v1);
  2. start-to-ready: with the kit's mock running, spawn the gateway (pinned, 1 worker) ``--startup-reps`` times
     and time spawn -> /healthz 200 -> first chat completion 200; stop the mock again;
  3. start the gateway pinned with ``taskset -c 1`` and run the kit's run_bench.py with
     ``--candidates direct,nginx --target sluicegate=URL@PID`` (the kit starts its own mock on 18000);
  4. stop the gateway;
  5. read the kit's raw.jsonl and print/write ``gateway_summary.md`` with the issue-2 figures vs targets.

Run it from the repository's root with an interpreter that has aiohttp + uvloop (the project venv has both, or the
kit's own venv); the kit's mock and clients run with that same interpreter. The gateway itself runs from the
project venv (``--gateway-bin``, default .venv/bin/sluicegate).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from benchmarks import invocation, kit

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MASTER_KEY = "sk-bench-master"
MODEL = "mock-gpt"

CONFIG = """\
# written by benchmarks/run_gateway_bench.py: one model routed to the shared kit's mock upstream
models:
  - id: mock-gpt
    deployments:
      - provider: openai
        model: mock-gpt
        api_base: http://127.0.0.1:{mock_port}/v1
        api_key: sk-mock-upstream
        timeouts: {{connect: 30, headers: 120, first_token: 120, idle: 120, total: 900}}
"""

# figure, LiteLLM 1.108 (kit README), nginx (kit README), target (issue 2)
TARGETS = {
    "ns_c64": ("CPU per non-streaming request, c=64 (ms)", "8.8-9.7", "0.024", "≤ 0.30"),
    "ns_c1": ("CPU per non-streaming request, c=1 (ms)", "11.7", "0.057", "≤ 0.40"),
    "st0_c16": ("CPU per streamed chunk, 0 ms spacing, c=16 (µs)", "810", "1.4", "≤ 25"),
    "st20_c200": ("CPU per streamed chunk, 200 streams x 20 ms (µs)", "875", "12", "≤ 50"),
    "lat": ("added latency p50, c=1 (ms)", "11.9", "0.13", "≤ 0.5"),
    "ttfc": ("added time to first chunk p50, c=1 (ms)", "10.2", "0.09", "≤ 0.75"),
    "st20": (
        "st20_c200: p99 stream time ÷ direct; errors; proxy CPU busy",
        "15x; 0; 98%",
        "1.0x; 0; 10%",
        "≤ 1.1x, 0 errors; ≤ 50%",
    ),
    "rss": ("peak RSS in these runs (MB)", "484", "16", "≤ 100"),
    "start": ("start to ready (s)", "12", "0.5", "≤ 2"),
}


def pin(cpus: str) -> list[str]:
    return ["taskset", "-c", cpus] if cpus else []


def get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def chat(base: str, timeout: float = 5.0) -> int:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(
        base + "/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {MASTER_KEY}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop a process this script started (its own session / process group)."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def schedstat(pid: int) -> tuple[float, float]:
    """(seconds on CPU, seconds waiting on a run queue) of a process's main thread, from /proc."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            run_ns, wait_ns, _ = f.read().split()
        return int(run_ns) / 1e9, int(wait_ns) / 1e9
    except (OSError, ValueError):
        return 0.0, 0.0


def start_gateway(a: argparse.Namespace, gw: Gateway, cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, SLUICEGATE_MASTER_KEY=MASTER_KEY)
    env.pop("SLUICEGATE_CONFIG", None)
    env.pop("SLUICEGATE_DATABASE_URL", None)
    env.pop("SLUICEGATE_REDIS_URL", None)
    env["SLUICEGATE_DATA_DIR"] = str(cfg.parent / f"gateway-data-{gw.name}")  # the key store (SQLite) of this run
    exe = [a.gateway_bin]
    if gw.src:  # another source tree (e.g. a `git archive` snapshot) run with the project venv's packages
        env["PYTHONPATH"] = str(Path(gw.src).resolve() / "src")
        exe = [str(Path(a.gateway_bin).with_name("python")), "-m", "sluicegate"]
    cmd = (
        pin(a.proxy_cpus)
        + exe
        + ["serve", "--config", str(cfg), "--port", str(gw.port), "--workers", "1", "--log-level", "warning"]
    )
    return spawn(cmd, log, env)


def wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float) -> float | None:
    """Seconds from now until /healthz answers 200 (None if the process died or timed out)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            return None
        try:
            if get(base + "/healthz", 1.0) == 200:
                return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.01)
    return None


def measure_startup(a: argparse.Namespace, gateways: list[Gateway], cfg: Path, logs: Path) -> None:
    """spawn -> /healthz 200 -> first chat completion 200, with the kit's mock up (then stopped)."""
    mock = spawn(
        [*pin(a.harness_cpus), sys.executable, str(a.kit / "mock_upstream.py"), "--port", str(a.mock_port)],
        logs / "startup-mock.log",
    )
    try:
        for _ in range(50):
            try:
                if get(f"http://127.0.0.1:{a.mock_port}/health") == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            sys.exit("mock upstream did not start for the start-up measurement")
        for i in range(a.startup_reps):
            for gw in gateways:
                log = logs / f"startup-{gw.name}-{i}.log"
                t0 = time.perf_counter()
                proc = start_gateway(a, gw, cfg, log)
                try:
                    healthy = wait_healthy(gw.base, proc, 60)
                    if healthy is None:
                        sys.exit(f"gateway {gw.name} did not become healthy; see {log}")
                    status = chat(gw.base)
                    ready = time.perf_counter() - t0
                    gw.startup.append(
                        {
                            "healthz_s": round(healthy, 3),
                            "first_request_s": round(ready, 3),
                            "first_status": status,
                            "rss_after_first_mb": round(rss_mb(proc.pid), 1),
                        }
                    )
                    print(
                        f"start-up {gw.name} {i}: /healthz after {healthy:.3f} s, first request {status} "
                        f"after {ready:.3f} s",
                        flush=True,
                    )
                finally:
                    stop(proc)
                time.sleep(0.5)
    finally:
        stop(mock)
        time.sleep(0.5)


class Gateway:
    def __init__(self, name: str, src: str | None, port: int) -> None:
        self.name, self.src, self.port = name, src, port
        self.base = f"http://127.0.0.1:{port}"
        self.startup: list[dict[str, object]] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.contention: dict[str, float] = {}

    def startup_median(self) -> float | None:
        ok = [float(r["first_request_s"]) for r in self.startup if r["first_status"] == 200]  # type: ignore[arg-type]
        return statistics.median(ok) if ok else None

    def meta(self) -> dict[str, object]:
        return {
            "name": self.name,
            "src": self.src or str(REPO),
            "port": self.port,
            "startup": self.startup,
            "startup_median_s": self.startup_median(),
            "contention": self.contention,
        }


def load_raw(path: Path) -> dict[tuple[str, str], list[dict]]:
    by: dict[tuple[str, str], list[dict]] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if "client" in r:
            by.setdefault((r["scenario"], r["candidate"]), []).append(r)
    return by


def figures(by: dict[tuple[str, str], list[dict]], cand: str) -> dict[str, object]:
    def m(scen: str, c: str, f):  # median over repetitions
        vals = [v for v in (f(r) for r in by.get((scen, c), [])) if v is not None]
        return statistics.median(vals) if vals else None

    def cl(k: str):
        return lambda r: r["client"].get(k)

    def cpu1k(r: dict) -> float | None:
        return r.get("proxy_cpu_s_per_1k")

    f: dict[str, object] = {}
    f["ns_c64"] = m("ns_c64", cand, cpu1k)  # CPU-s per 1k requests == CPU-ms per request
    f["ns_c1"] = m("ns_c1", cand, cpu1k)
    for s in ("st0_c16", "st20_c200"):
        v = m(s, cand, cpu1k)  # CPU-s per 1k streams of 50 chunks -> µs per chunk
        f[s] = v * 1000 / 50 if v is not None else None
    lat, dlat = m("ns_c1", cand, cl("lat_p50_ms")), m("ns_c1", "direct", cl("lat_p50_ms"))
    f["lat"] = lat - dlat if None not in (lat, dlat) else None
    t, dt = m("st0_c1", cand, cl("ttfc_ms_p50")), m("st0_c1", "direct", cl("ttfc_ms_p50"))
    f["ttfc"] = t - dt if None not in (t, dt) else None
    p99, dp99 = m("st20_c200", cand, cl("total_ms_p99")), m("st20_c200", "direct", cl("total_ms_p99"))
    f["st20_ratio"] = p99 / dp99 if None not in (p99, dp99) and dp99 else None
    f["st20_p99"], f["st20_direct_p99"] = p99, dp99
    errs = 0
    for r in by.get(("st20_c200", cand), []):
        e = r["client"].get("errors", {})
        errs += sum(e.values()) if isinstance(e, dict) else e
    f["st20_errors"] = errs
    f["st20_util"] = m("st20_c200", cand, lambda r: r.get("proxy_cpu_util"))
    peaks = [r.get("proxy_rss_peak_mb") for k, rs in by.items() if k[1] == cand for r in rs]
    peaks = [p for p in peaks if p]
    f["rss"] = max(peaks) if peaks else None
    all_errs = 0
    for k, rs in by.items():
        if k[1] != cand:
            continue
        for r in rs:
            e = r["client"].get("errors", 0)
            all_errs += sum(e.values()) if isinstance(e, dict) else e
    f["all_errors"] = all_errs
    f["ns_c64_rps"] = m("ns_c64", cand, cl("rps"))
    f["ns_c1_rps"] = m("ns_c1", cand, cl("rps"))
    f["st0_c16_cps"] = m("st0_c16", cand, cl("chunks_per_s"))
    f["ns_c64_util"] = m("ns_c64", cand, lambda r: r.get("proxy_cpu_util"))
    f["st0_c16_util"] = m("st0_c16", cand, lambda r: r.get("proxy_cpu_util"))
    return f


def fmt(v: object, nd: int = 2) -> str:
    return "—" if v is None else (f"{v:,.{nd}f}" if isinstance(v, float | int) else str(v))


def cells(f: dict[str, object], start: float | None) -> dict[str, str]:
    util = f["st20_util"]
    return {
        "ns_c64": fmt(f["ns_c64"], 3),
        "ns_c1": fmt(f["ns_c1"], 3),
        "st0_c16": fmt(f["st0_c16"], 1),
        "st20_c200": fmt(f["st20_c200"], 1),
        "lat": fmt(f["lat"], 3),
        "ttfc": fmt(f["ttfc"], 3),
        "st20": f"{fmt(f['st20_ratio'], 2)}x; {f['st20_errors']}; "
        f"{fmt(util * 100 if isinstance(util, float | int) else None, 0)}%",
        "rss": fmt(f["rss"], 0),
        "start": fmt(start, 2),
    }


def summary(by: dict, meta: dict) -> str:
    gws = meta["gateways"]
    cols = [(g["name"], cells(figures(by, g["name"]), g["startup_median_s"])) for g in gws]
    nginx = cells(figures(by, "nginx"), None) if any(k[1] == "nginx" for k in by) else {}
    lines = [f"# sluicegate vs targets (issue 2) — run {meta['stamp']}", "", f"Command: `{meta['command']}`  "]
    lines += [f"Gateway `{g['name']}`: source `{g['src']}`, port {g['port']}  " for g in gws]
    lines += [
        f"Kit output: `{meta['kit_out']}` (summary.md, raw.jsonl). Medians of {meta['reps']} repetition(s); "
        "every candidate measured in the same run, alternating.",
        "",
        "| figure | LiteLLM 1.108 (kit README) | nginx (kit README) | nginx (this run) | target | "
        + " | ".join(f"{n} (this run)" for n, _ in cols)
        + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(cols),
    ]
    for k, (label, lite, ngx, target) in TARGETS.items():
        lines.append(
            f"| {label} | {lite} | {ngx} | {nginx.get(k, '—')} | **{target}** | "
            + " | ".join(c[k] for _, c in cols)
            + " |"
        )
    lines.append("")
    for g in gws:
        f = figures(by, g["name"])
        c = g.get("contention") or {}
        lines += [
            f"**{g['name']}** context: RPS c=1 {fmt(f['ns_c1_rps'], 0)}, c=64 {fmt(f['ns_c64_rps'], 0)} "
            f"(proxy CPU util {fmt(f['ns_c64_util'], 2)}); st0_c16 {fmt(f['st0_c16_cps'], 0)} chunks/s "
            f"(util {fmt(f['st0_c16_util'], 2)}); st20_c200 p99 {fmt(f['st20_p99'], 0)} ms vs direct "
            f"{fmt(f['st20_direct_p99'], 0)} ms; client errors over all scenarios: {f['all_errors']}. "
            f"Contention over the kit run: {c.get('run_s', '—')} s on CPU, {c.get('runqueue_wait_s', '—')} s "
            "runnable but waiting for its core (/proc/PID/schedstat; large = other work shared CPU 1, so "
            "throughput and latency are pessimistic; CPU per request is less affected). "
            "Start to ready (spawn → /healthz 200 → first chat completion 200): "
            + ", ".join(f"{r['first_request_s']:.2f} s (RSS {r['rss_after_first_mb']} MB)" for r in g["startup"]),
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the kit's --quick (1 rep, 2 s wrk, 1/5 of the streams)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (kit default 3)")
    ap.add_argument("--scenarios", default=None, help="comma list of kit scenarios (default all)")
    ap.add_argument("--candidates", default="direct,nginx", help="kit candidates compared in the same run")
    ap.add_argument("--port", type=int, default=18180, help="gateway port (the next ones for further --src)")
    ap.add_argument("--mock-port", type=int, default=18000)
    ap.add_argument("--proxy-cpus", default="1")
    ap.add_argument("--harness-cpus", default="0")
    ap.add_argument("--startup-reps", type=int, default=3)
    ap.add_argument("--gateway-bin", default=str(REPO / ".venv" / "bin" / "sluicegate"))
    ap.add_argument(
        "--src",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="run the gateway from DIR/src instead of the editable install (the venv's python -m "
        "sluicegate with PYTHONPATH=DIR/src), e.g. a snapshot: git archive HEAD src | tar -x -C DIR. "
        "Repeat to compare several trees in one run (each its own pinned gateway, candidates "
        "alternating)",
    )
    kit.add_option(ap)
    ap.add_argument("--out", default=str(HERE / "results"), help="results root (gitignored)")
    ap.add_argument(
        "--from-raw", default=None, metavar="DIR", help="only re-summarise an earlier run directory (no benchmark)"
    )
    a = ap.parse_args()

    if a.from_raw:
        d = Path(a.from_raw)
        meta = json.loads((d / "gateway_meta.json").read_text())
        print(summary(load_raw(next(d.rglob("raw.jsonl"))), meta))
        return
    a.kit = kit.locate(a.kit)

    gateways = []
    for i, spec in enumerate(a.src or [None]):
        name, _, path = spec.rpartition("=") if spec else ("", "", None)
        name = name or ("sluicegate" if len(a.src) <= 1 else f"sg-{Path(path).name}")  # type: ignore[arg-type]
        gateways.append(Gateway(name, path, a.port + i))

    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(a.out) / stamp
    logs = out / "gateway-logs"
    logs.mkdir(parents=True)
    cfg = out / "sluicegate-bench.yaml"
    cfg.write_text(CONFIG.format(mock_port=a.mock_port))
    for gw in gateways:
        if get_quiet(gw.base + "/healthz") is not None:
            sys.exit(f"something already listens on port {gw.port}; pass --port")

    measure_startup(a, gateways, cfg, logs)

    kit_out = out / "kit"
    try:
        for gw in gateways:
            gw.proc = start_gateway(a, gw, cfg, logs / f"gateway-{gw.name}.log")
            if wait_healthy(gw.base, gw.proc, 60) is None:
                sys.exit(f"gateway {gw.name} did not start; see {logs}")
            print(f"gateway {gw.name} pid {gw.proc.pid} healthy; RSS {rss_mb(gw.proc.pid):.1f} MB", flush=True)
        # taskset execs the gateway, so proc.pid is the uvicorn process itself (one worker: no supervisor)
        cmd = [sys.executable, str(a.kit / "run_bench.py"), "--candidates", a.candidates]
        for gw in gateways:
            assert gw.proc is not None
            cmd += ["--target", f"{gw.name}={gw.base}@{gw.proc.pid}"]
        cmd += [
            "--api-key",
            MASTER_KEY,
            "--model",
            MODEL,
            "--mock-port",
            str(a.mock_port),
            "--proxy-cpus",
            a.proxy_cpus,
            "--harness-cpus",
            a.harness_cpus,
            "--out",
            str(kit_out),
        ]
        if a.quick:
            cmd.append("--quick")
        if a.reps:
            cmd += ["--reps", str(a.reps)]
        if a.scenarios:
            cmd += ["--scenarios", a.scenarios]
        print("+ " + " ".join(cmd), flush=True)
        before = {gw.name: schedstat(gw.proc.pid) for gw in gateways if gw.proc}
        rc = subprocess.run(cmd).returncode
        for gw in gateways:
            if gw.proc:
                s1 = schedstat(gw.proc.pid)
                s0 = before[gw.name]
                gw.contention = {"run_s": round(s1[0] - s0[0], 2), "runqueue_wait_s": round(s1[1] - s0[1], 2)}
        if rc != 0:
            print(f"run_bench.py exited {rc}", file=sys.stderr)
    finally:
        for gw in gateways:
            stop(gw.proc)

    raws = sorted(kit_out.rglob("raw.jsonl"))
    if not raws:
        sys.exit("the kit wrote no raw.jsonl")
    meta = {
        "stamp": stamp,
        "command": invocation("benchmarks.run_gateway_bench"),
        "kit_out": str(raws[-1].parent),
        "reps": 1 if a.quick else (a.reps or 3),
        "gateways": [gw.meta() for gw in gateways],
    }
    (out / "gateway_meta.json").write_text(json.dumps(meta, indent=1))
    text = summary(load_raw(raws[-1]), meta)
    (out / "gateway_summary.md").write_text(text)
    print("\n" + text)
    print(f"wrote {out / 'gateway_summary.md'}")


def get_quiet(url: str) -> int | None:
    try:
        return get(url, 0.5)
    except OSError:
        return None


if __name__ == "__main__":
    main()
