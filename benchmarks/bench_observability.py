#!/usr/bin/env python3
"""What metrics and request logging cost: gateway throughput with observability on vs off, in the same run.

    export SLUICEGATE_BENCH_KIT=/path/to/the/kit     # or pass --kit DIR
    .venv/bin/python -m benchmarks.bench_observability            # 5 alternations of 5 s each
    .venv/bin/python -m benchmarks.bench_observability --reps 3 --duration 3

Two gateways (one worker each, both pinned to CPU 1) run side by side in front of the shared kit's mock
upstream (``mock_upstream.py`` in ``--kit``, CPU 0): ``on`` with the defaults (``/metrics`` and one
JSON log line per request, written to a file as in production) and ``off`` with
``observability: {metrics: false, request_log: false}``. Tracing is off in both. wrk (CPU 0) drives
non-streaming chat completions at ``--connections`` for ``--duration`` seconds, alternating on/off and
flipping which goes first every repetition, so drift on the machine hits both alike. Reported: medians of
requests per second and of the gateway's CPU time per request (from /proc), and on/off ratios; the issue's
bar is throughput on >= 95 % of off.

Needs wrk and, for the mock, a Python with aiohttp (``--mock-python``; default this interpreter).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks import kit

REPO = Path(__file__).resolve().parent.parent
MASTER_KEY = "sk-bench-master"
MOCK_PORT, ON_PORT, OFF_PORT = 18300, 18301, 18302
CLK_TCK = os.sysconf("SC_CLK_TCK")

CONFIG = """\
models:
  - id: mock-gpt
    deployments:
      - provider: openai
        model: mock-gpt
        api_base: http://127.0.0.1:{mock}/v1
        api_key: sk-mock-upstream
        timeouts: {{connect: 30, headers: 120, first_token: 120, idle: 120, total: 900}}
{extra}"""
OFF = "observability: {metrics: false, request_log: false}\n"


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def pinned(cpus: str, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if cpus and shutil.which("taskset") else cmd


def start_gateway(work: Path, name: str, port: int, extra: str, cpus: str) -> subprocess.Popen[bytes]:
    config = work / f"{name}.yaml"
    config.write_text(CONFIG.format(mock=MOCK_PORT, extra=extra))
    env = {**os.environ, "SLUICEGATE_MASTER_KEY": MASTER_KEY, "SLUICEGATE_DATA_DIR": str(work / f"data-{name}")}
    env.pop("SLUICEGATE_OTEL_ENDPOINT", None)
    log = (work / f"{name}.log").open("ab")  # the JSON request lines land here, as they would in production
    cmd = [str(REPO / ".venv/bin/sluicegate"), "serve", "--config", str(config), "--port", str(port)]
    proc = subprocess.Popen(pinned(cpus, [*cmd, "--log-format", "json"]), stdout=log, stderr=log, env=env)
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return proc


def wrk(kit_dir: Path, port: int, connections: int, duration: float, cpus: str) -> dict[str, Any]:
    env = {**os.environ, "BENCH_MODEL": "mock-gpt", "BENCH_API_KEY": MASTER_KEY}
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "-s", str(kit_dir / "post.lua")]
    cmd.append(f"http://127.0.0.1:{port}/v1/chat/completions")
    out = subprocess.run(pinned(cpus, cmd), env=env, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    result: dict[str, Any] = json.loads(line.removeprefix("WRKJSON "))
    errors = sum(v for k, v in result.items() if k.startswith("err_"))
    if errors:
        raise RuntimeError(f"wrk saw {errors} errors: {line}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--gateway-cpus", default="1")
    parser.add_argument("--harness-cpus", default="0")
    parser.add_argument(
        "--mock-python", default=sys.executable, help="Python with aiohttp for the mock (default: this one)"
    )
    kit.add_option(parser)
    args = parser.parse_args()
    kit_dir = kit.locate(args.kit)
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install -y wrk)")
    work = Path(tempfile.mkdtemp(prefix="sg-obs-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        mock_cmd = [args.mock_python, str(kit_dir / "mock_upstream.py"), "--port", str(MOCK_PORT)]
        procs.append(subprocess.Popen(pinned(args.harness_cpus, mock_cmd), stdout=subprocess.DEVNULL))
        wait_http(f"http://127.0.0.1:{MOCK_PORT}/health")
        gateways = {
            "on": start_gateway(work, "on", ON_PORT, "", args.gateway_cpus),
            "off": start_gateway(work, "off", OFF_PORT, OFF, args.gateway_cpus),
        }
        procs.extend(gateways.values())
        ports = {"on": ON_PORT, "off": OFF_PORT}
        for name in gateways:  # warm-up: connection pools, tokenizer, first-request paths
            wrk(kit_dir, ports[name], args.connections, 2, args.harness_cpus)
        rps: dict[str, list[float]] = {"on": [], "off": []}
        cpu_us: dict[str, list[float]] = {"on": [], "off": []}
        for rep in range(args.reps):
            order = ["on", "off"] if rep % 2 == 0 else ["off", "on"]
            for name in order:
                pid = gateways[name].pid
                cpu0 = cpu_seconds(pid)
                result = wrk(kit_dir, ports[name], args.connections, args.duration, args.harness_cpus)
                cpu = cpu_seconds(pid) - cpu0
                rps[name].append(result["rps"])
                cpu_us[name].append(cpu / result["requests"] * 1e6)
                print(
                    f"rep {rep + 1} {name:>3}: {result['rps']:8.0f} req/s  {cpu_us[name][-1]:6.1f} us CPU/request  "
                    f"p50 {result['lat_p50_ms']:.2f} ms",
                    flush=True,
                )
        on_lines = sum(1 for line in (work / "on.log").open() if '"sluicegate.request"' in line)
        off_lines = sum(1 for line in (work / "off.log").open() if '"sluicegate.request"' in line)
        with urllib.request.urlopen(f"http://127.0.0.1:{ON_PORT}/metrics") as r:
            metrics = r.read().decode()
        counted = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("sluicegate_requests_total")
        )
        med = {k: statistics.median(v) for k, v in rps.items()}
        med_cpu = {k: statistics.median(v) for k, v in cpu_us.items()}
        ratio = med["on"] / med["off"]
        print()
        print(f"non-streaming, c={args.connections}, {args.reps} x {args.duration:g} s each, medians:")
        print(f"  off: {med['off']:8.0f} req/s  {med_cpu['off']:6.1f} us CPU/request")
        print(f"  on:  {med['on']:8.0f} req/s  {med_cpu['on']:6.1f} us CPU/request")
        print(f"  throughput on/off: {ratio * 100:.1f} %  (bar: >= 95 %)")
        print(f"  CPU per request on - off: {med_cpu['on'] - med_cpu['off']:+.1f} us")
        print(f"  request log lines: on {on_lines}, off {off_lines}; sluicegate_requests_total on: {counted:.0f}")
        print(f"  per-rep on/off: {[round(a / b * 100, 1) for a, b in zip(rps['on'], rps['off'], strict=True)]}")
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
