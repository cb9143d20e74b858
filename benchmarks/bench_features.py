#!/usr/bin/env python3
"""What the features cost: gateway variants side by side in one run, on the same scenarios.

    export SLUICEGATE_BENCH_KIT=/path/to/the/kit     # or pass --kit DIR
    .venv/bin/python -m benchmarks.bench_features --pg-url postgresql://USER@HOST:5432/DB            # about 7 min
    .venv/bin/python -m benchmarks.bench_features --quick --variants master,apikey,accounting-sqlite,dlp

Variants (each its own gateway process, config and data dir; one worker, pinned to CPU 1):

  master             the master key, ``metering: {enabled: false}``, no limits
  apikey             an API key (admin API: group + key), metering off, no limits
  accounting-sqlite  an API key whose key and group have rpm/tpm/budget limits too large to refuse,
                     metering and the request audit log on (the defaults), SQLite store
  accounting-pg      the same on PostgreSQL (a fresh schema in ``--pg-url``, dropped afterwards; without
                     ``--pg-url`` leave this variant out of ``--variants``)
  dlp                like ``apikey`` plus ``dlp: {request: {action: block}, response: {action: redact}}``

Every variant routes ``mock-gpt`` to the shared kit's mock upstream (``mock_upstream.py`` in ``--kit``, CPU 0)
with a price, so budgets have something to reserve. Scenarios (load generators on CPU 0):

  ns_c64   wrk, non-streaming, 64 connections  -> RPS, gateway CPU ms per request (/proc utime+stime)
  ns_c1    wrk, non-streaming, 1 connection    -> latency p50
  st0_c16  kit stream client, 50 chunks back to back, 16 in flight -> gateway CPU us per content chunk
  st0_c1   same, 1 in flight                   -> time to first content chunk (TTFC) p50
  st5_c1   10 chunks 5 ms apart, 1 in flight   -> TTFC p50 when the first read holds only the first chunk

Each round runs every scenario on every variant, scenario by scenario, with the variant order rotated each
round; tables show the median over rounds and the per-round spread (min-max). Ratios are to ``apikey`` (the
same auth path with the feature off) from this run. Also measured in-process: the DLP request scan of a
100 KB prompt (``scan_messages`` with every default detector, the path ``action: block`` runs).

Results: printed, and written to ``benchmarks/results/features-<stamp>/`` (summary.md, raw.jsonl).
Run it from the repository's root with the project venv (the DLP scan imports sluicegate); the mock and the
stream client run with ``--kit-python`` (default: this interpreter; it needs aiohttp + uvloop, which the project
venv has). ``--profile`` needs py-spy beside that interpreter or on PATH.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import invocation, kit
from benchmarks.features_report import fmt, report

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MASTER_KEY = "sk-bench-master"
MODEL = "mock-gpt"
CLK_TCK = os.sysconf("SC_CLK_TCK")
VARIANTS = ["master", "apikey", "accounting-sqlite", "accounting-pg", "dlp"]
SCENARIOS = ["ns_c64", "ns_c1", "st0_c16", "st0_c1", "st5_c1"]
MOCK_BACK_TO_BACK = {"chunks": 50, "first_delay_ms": 0, "chunk_delay_ms": 0}
MOCK_PACED = {"chunks": 10, "first_delay_ms": 0, "chunk_delay_ms": 5}
# Large enough never to refuse (the load here is < 1M tokens a minute): rpm 10M, tpm 2G, 1e9 credits.
# tpm stays below 2**31: the rpm/tpm columns are INTEGER, and on PostgreSQL a larger value makes
# PUT .../limits fail with 500 (asyncpg: "value out of int32 range"); SQLite stores it.
LIMITS = {"rpm": 10_000_000, "tpm": 2_000_000_000, "budget": 1_000_000_000, "budget_period": "total"}

CONFIG = """\
# written by benchmarks/bench_features.py (variant {name})
models:
  - id: mock-gpt
    price: {{input: 1.0, output: 2.0}}
    deployments:
      - provider: openai
        model: mock-gpt
        api_base: http://127.0.0.1:{mock}/v1
        api_key: sk-mock-upstream
        timeouts: {{connect: 30, headers: 120, first_token: 120, idle: 120, total: 900}}
{extra}"""
EXTRA = {
    "master": "metering: {enabled: false}\n",
    "apikey": "metering: {enabled: false}\n",
    "accounting-sqlite": "",
    "accounting-pg": "",
    "dlp": "metering: {enabled: false}\ndlp: {request: {action: block}, response: {action: redact}}\n",
}


# ---------------------------------------------------------------------------------------------- processes


def pinned(cpus: str, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if cpus and shutil.which("taskset") else cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def http(method: str, url: str, body: Any = None, key: str | None = None, timeout: float = 10.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            if http("GET", url, timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process this script started (it leads its own session)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in task.read_text().split())
    return pids


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process tree."""
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def postgres_cpu_seconds() -> float:
    """utime + stime of every live PostgreSQL server process on this machine (its backends included).

    The database shares the machine's two cores with the gateway and the harness; this says how much of them
    it took during a measurement (everything else using the server is counted too: keep the machine quiet).
    """
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if "(postgres)" not in text:
            continue
        fields = text.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def postgres_pids() -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if "(postgres)" in stat.read_text():
                pids.append(int(stat.parent.name))
    return pids


@contextlib.contextmanager
def postgres_pinned(cpus: str) -> Iterator[None]:
    """Keep the machine's PostgreSQL server (postmaster, so every backend it forks, and its helpers) on ``cpus``
    for the run, as if it ran on another host, then give each process its old affinity back."""
    if not cpus:
        yield
        return
    want = {int(c) for c in cpus.split(",")}
    before: dict[int, set[int]] = {}
    for pid in postgres_pids():
        with contextlib.suppress(OSError):
            before[pid] = os.sched_getaffinity(pid)
            os.sched_setaffinity(pid, want)
    try:
        yield
    finally:
        every_cpu = set(range(os.cpu_count() or 1))
        for pid in postgres_pids():  # backends forked meanwhile had only the pinned set: give them every CPU
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, before.get(pid, every_cpu))


def run_wait(pid: int) -> float:
    """Seconds the gateway's main (event-loop) thread spent runnable but waiting for a CPU: scheduler noise."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


class Gateway:
    def __init__(self, name: str, port: int, work: Path) -> None:
        self.name = name
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.work = work
        self.key = MASTER_KEY
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, a: argparse.Namespace, mock_port: int, pg_url: str | None) -> None:
        config = self.work / f"{self.name}.yaml"
        config.write_text(CONFIG.format(name=self.name, mock=mock_port, extra=EXTRA[self.name]))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
        env.update(SLUICEGATE_MASTER_KEY=MASTER_KEY, SLUICEGATE_DATA_DIR=str(self.work / f"data-{self.name}"))
        if pg_url:
            env["SLUICEGATE_DATABASE_URL"] = pg_url
        self.env = env
        cmd = [a.gateway_bin, "serve", "--config", str(config), "--port", str(self.port), "--workers", "1"]
        cmd += ["--log-level", a.gateway_log_level]
        with (self.work / f"{self.name}.log").open("ab") as log:
            self.proc = subprocess.Popen(
                pinned(a.gateway_cpus, cmd), stdout=log, stderr=log, env=env, start_new_session=True
            )
        wait_http(self.base + "/healthz", self.proc)

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        status, out = http(method, f"{self.base}/admin/v1/{path}", body, MASTER_KEY)
        if status >= 300:
            raise RuntimeError(f"{self.name}: {method} /admin/v1/{path} -> {status} {out}")
        return out

    def provision(self) -> None:
        """Create the group and key through the admin API (and limits for the accounting variants)."""
        if self.name == "master":
            return
        self.admin("POST", "groups", {"name": "bench", "models": [MODEL]})
        self.key = self.admin("POST", "keys", {"name": "bench-key", "group": "bench"})["key"]
        if self.name.startswith("accounting"):
            self.admin("PUT", "keys/bench-key/limits", LIMITS)
            self.admin("PUT", "groups/bench/limits", LIMITS)

    def chat(self, content: str, stream: bool = False) -> tuple[int, Any]:
        body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 64}
        if stream:
            body["stream"] = True
        return http("POST", f"{self.base}/v1/chat/completions", body, self.key)


# ---------------------------------------------------------------------------------------------- load


def wrk(a: argparse.Namespace, gw: Gateway, connections: int, duration: float) -> dict[str, Any]:
    env = {**os.environ, "BENCH_MODEL": MODEL, "BENCH_API_KEY": gw.key}
    seconds = max(1, round(duration))  # wrk takes whole seconds
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(a.kit / "post.lua")]
    cmd.append(f"{gw.base}/v1/chat/completions")
    out = subprocess.run(pinned(a.harness_cpus, cmd), env=env, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    result: dict[str, Any] = json.loads(line.removeprefix("WRKJSON "))
    result["errors"] = sum(v for k, v in result.items() if k.startswith("err_"))
    result["ok"] = result["requests"] - result["err_status"]
    return result


def streams(a: argparse.Namespace, gw: Gateway, concurrency: int, duration: float, chunks: int) -> dict[str, Any]:
    cmd = [a.kit_python, str(a.kit / "stream_client.py"), "--url", f"{gw.base}/v1/chat/completions"]
    cmd += ["--model", MODEL, "--api-key", gw.key, "--stream", "--include-usage", "--expect-chunks", str(chunks)]
    cmd += ["--concurrency", str(concurrency), "--requests", "1000000", "--max-seconds", f"{duration:g}"]
    out = subprocess.run(pinned(a.harness_cpus, cmd), capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["errors"] = sum(result["errors"].values())
    return result


def set_mock(mock_port: int, cfg: dict[str, Any]) -> None:
    status, _ = http("POST", f"http://127.0.0.1:{mock_port}/mock/config", cfg)
    if status != 200:
        raise RuntimeError(f"mock config -> {status}")


def measure(a: argparse.Namespace, gw: Gateway, scenario: str, duration: float) -> dict[str, Any]:
    pg0 = postgres_cpu_seconds() if gw.name == "accounting-pg" else 0.0
    cpu0, wait0, t0 = cpu_seconds(gw.pid), run_wait(gw.pid), time.perf_counter()
    if scenario == "ns_c64":
        r = wrk(a, gw, 64, duration)
    elif scenario == "ns_c1":
        r = wrk(a, gw, 1, duration)
    elif scenario == "st0_c16":
        r = streams(a, gw, 16, duration, 50)
    elif scenario == "st0_c1":
        r = streams(a, gw, 1, duration, 50)
    else:
        r = streams(a, gw, 1, duration, MOCK_PACED["chunks"])
    wall = time.perf_counter() - t0
    cpu, wait = cpu_seconds(gw.pid) - cpu0, run_wait(gw.pid) - wait0
    rec: dict[str, Any] = {"variant": gw.name, "scenario": scenario, "cpu_s": cpu, "wait_s": wait, "wall_s": wall}
    rec["busy"] = cpu / wall
    if gw.name == "accounting-pg":
        rec["db_cpu_s"] = postgres_cpu_seconds() - pg0
    if scenario.startswith("ns"):
        rec.update(rps=r["rps"], lat_p50_ms=r["lat_p50_ms"], errors=r["errors"], n=r["requests"])
        rec["cpu_ms_per_req"] = cpu / r["requests"] * 1e3 if r["requests"] else None
        if "db_cpu_s" in rec and r["requests"]:
            rec["db_cpu_ms_per_req"] = rec["db_cpu_s"] / r["requests"] * 1e3
    else:
        rec.update(rps=r["rps"], chunks=r["chunks"], chunks_per_s=r["chunks_per_s"], ttfc_p50_ms=r["ttfc_ms_p50"])
        rec.update(errors=r["errors"], n=r["requests"])
        rec["cpu_us_per_chunk"] = cpu / r["chunks"] * 1e6 if r["chunks"] else None
    return rec


# ---------------------------------------------------------------------------------------------- DLP scan


def dlp_scan_100kb(repeat: int) -> dict[str, Any]:
    """In-process: the request-side block check (scan_messages, all default detectors) of a 100 KB prompt."""
    from benchmarks.bench_dlp import SECRETS, prompt  # the same 100 KB prompt as bench_dlp.py (four secrets in it)
    from sluicegate.dlp import scan_messages
    from sluicegate.dlp.config import DlpConfig

    engine = DlpConfig.model_validate({"request": {"action": "block"}}).engine("request")
    assert engine is not None
    text = prompt()
    messages = [{"role": "user", "content": text}]
    clean_text = text
    for s in SECRETS:
        clean_text = clean_text.replace(s, " " * len(s))
    clean = [{"role": "user", "content": clean_text}]

    def timed(fn: Callable[[], object]) -> list[float]:
        fn()  # warm
        out = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
        return out

    with_secrets = timed(lambda: scan_messages(messages, engine))
    return {
        "chars": len(text),
        "detectors": len(engine.types),
        "findings": len(scan_messages(messages, engine)),
        "ms_median": statistics.median(with_secrets),
        "ms_min": min(with_secrets),
        "ms_max": max(with_secrets),
        "clean_ms_median": statistics.median(timed(lambda: scan_messages(clean, engine))),
        "repeat": repeat,
    }


def profile(a: argparse.Namespace, gw: Gateway, raw: Path) -> str:
    """py-spy (raw format, all threads) on the gateway while wrk runs c=64; self time by function."""
    from benchmarks import profile_gateway  # the same grouping as the issue-2 profiles

    cmd = [profile_gateway.find_pyspy(), "record", "--format", "raw", "--nonblocking", "--threads", "-r", "250"]
    cmd += ["-d", str(max(1, round(a.profile))), "-o", str(raw), "--pid", str(gw.pid)]
    spy = subprocess.Popen(pinned(a.harness_cpus, cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    wrk(a, gw, 64, a.profile)
    spy.wait(60)
    return profile_gateway.analyse(raw, top=30) if raw.exists() else "py-spy wrote nothing"


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 rounds x 2 s (smoke run)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--gateway-bin", default=str(REPO / ".venv/bin/sluicegate"))
    parser.add_argument(
        "--kit-python",
        default=sys.executable,
        help="Python with aiohttp (+uvloop) for mock and client (default: this one)",
    )
    kit.add_option(parser)
    parser.add_argument("--mock-port", type=int, default=18000)
    parser.add_argument("--gateway-cpus", default="1")
    parser.add_argument("--harness-cpus", default="0")
    parser.add_argument("--gateway-log-level", default="warning", help="info: also the recorder's commit count at exit")
    parser.add_argument(
        "--db-cpus",
        default="",
        help="pin the PostgreSQL server to these CPUs for the run (e.g. 0: off the gateway's core, as if on "
        "another host); default: leave it where the scheduler puts it",
    )
    parser.add_argument(
        "--pg-url",
        default=None,
        help="PostgreSQL for the accounting-pg variant, e.g. postgresql://USER@HOST:5432/DB (a fresh schema is "
        "created in it and dropped afterwards); required when that variant runs",
    )
    parser.add_argument("--scan-repeat", type=int, default=30)
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results/features-<stamp>)")
    parser.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after the rounds, record each variant with py-spy during SECONDS of wrk c=64 and print self time",
    )
    a = parser.parse_args()
    if a.quick:
        a.rounds, a.duration = 2, 2.0
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        sys.exit(f"unknown variants: {', '.join(sorted(unknown))}")
    if "accounting-pg" in variants and not a.pg_url:
        sys.exit(
            "the accounting-pg variant needs a PostgreSQL database: pass --pg-url postgresql://USER@HOST:PORT/DB, "
            f"or leave it out: --variants {','.join(v for v in variants if v != 'accounting-pg')}"
        )
    a.kit = kit.locate(a.kit)
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install -y wrk)")
    if a.harness_cpus:  # this script is part of the harness too
        os.sched_setaffinity(0, {int(c) for c in a.harness_cpus.split(",")})

    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = Path(a.out) if a.out else HERE / "results" / f"features-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    if port_in_use(a.mock_port):
        old = a.mock_port
        a.mock_port = free_port()
        print(f"port {old} is busy (another session's mock?); using {a.mock_port} for the mock", flush=True)

    schema = f"sg_bench_features_{stamp.replace('-', '_')}_{random.randrange(1 << 16):04x}"
    pg_made = False
    procs: list[subprocess.Popen[bytes]] = []
    gateways: dict[str, Gateway] = {}
    raw: list[dict[str, Any]] = []
    started = time.time()
    load_start = os.getloadavg()
    pinning = contextlib.ExitStack()
    pinning.enter_context(postgres_pinned(a.db_cpus if "accounting-pg" in variants else ""))
    try:
        mock_cmd = [a.kit_python, str(a.kit / "mock_upstream.py"), "--port", str(a.mock_port)]
        with (work / "mock.log").open("ab") as log:
            mock = subprocess.Popen(pinned(a.harness_cpus, mock_cmd), stdout=log, stderr=log, start_new_session=True)
        procs.append(mock)
        wait_http(f"http://127.0.0.1:{a.mock_port}/health", mock)
        for name in variants:
            pg_url = None
            if name == "accounting-pg":
                subprocess.run(
                    ["psql", a.pg_url, "-v", "ON_ERROR_STOP=1", "-qc", f"CREATE SCHEMA {schema}"], check=True
                )
                pg_made = True
                pg_url = f"{a.pg_url}?search_path={schema}"
            gw = Gateway(name, free_port(), work)
            gw.start(a, a.mock_port, pg_url)
            assert gw.proc is not None
            procs.append(gw.proc)
            gw.provision()
            gateways[name] = gw
        # sanity: every variant answers; DLP blocks a secret; the others do not
        secret = "my card is 4111 1111 1111 1111"
        for gw in gateways.values():
            status, body = gw.chat("hello")
            if status != 200:
                raise RuntimeError(f"{gw.name}: chat -> {status} {body}")
            status, body = gw.chat(secret)
            expect = 403 if gw.name == "dlp" else 200
            if status != expect:
                raise RuntimeError(f"{gw.name}: chat with a card number -> {status} (expected {expect}) {body}")
        print(f"variants up: {', '.join(f'{g.name}=:{g.port}' for g in gateways.values())}", flush=True)

        set_mock(a.mock_port, MOCK_BACK_TO_BACK)
        for gw in gateways.values():  # warm-up: pools, caches, first-request paths
            wrk(a, gw, 64, 1.0)
            streams(a, gw, 16, 1.0, 50)

        for rnd in range(a.rounds):
            order = variants[rnd % len(variants) :] + variants[: rnd % len(variants)]
            for scenario in SCENARIOS:
                set_mock(a.mock_port, MOCK_PACED if scenario == "st5_c1" else MOCK_BACK_TO_BACK)
                for name in order:
                    rec = measure(a, gateways[name], scenario, a.duration)
                    rec["round"] = rnd + 1
                    raw.append(rec)
                    shown = {k: rec.get(k) for k in ("rps", "cpu_ms_per_req", "lat_p50_ms", "cpu_us_per_chunk")}
                    shown.update(ttfc=rec.get("ttfc_p50_ms"), busy=rec["busy"], wait=rec["wait_s"], err=rec["errors"])
                    shown_s = " ".join(f"{k}={fmt(v)}" for k, v in shown.items() if v is not None)
                    print(f"round {rnd + 1} {scenario:8} {name:18} {shown_s}", flush=True)

        if a.profile:
            set_mock(a.mock_port, MOCK_BACK_TO_BACK)
            for gw in gateways.values():
                print(f"\n== profile {gw.name} (wrk c=64, {a.profile:g} s)", flush=True)
                print(profile(a, gw, work / f"{gw.name}.raw.txt"), flush=True)

        # metering really ran on the accounting variants (usage rows exist)
        usage: dict[str, Any] = {}
        for name in ("accounting-sqlite", "accounting-pg"):
            if name in gateways:
                usage[name] = gateways[name].admin("GET", "usage?by=key")
        (out / "usage.json").write_text(json.dumps(usage, indent=1))
    finally:
        for proc in reversed(procs):
            stop(proc)
        if pg_made:
            subprocess.run(["psql", a.pg_url, "-qc", f"DROP SCHEMA IF EXISTS {schema} CASCADE"], check=False)
        pinning.close()

    scan = dlp_scan_100kb(a.scan_repeat) if "dlp" in variants else None
    meta = {
        "stamp": stamp,
        "rounds": a.rounds,
        "duration": a.duration,
        "variants": variants,
        "elapsed_s": round(time.time() - started, 1),
        "python": platform.python_version(),
        "command": invocation("benchmarks.bench_features"),
        "loadavg_start": load_start,
        "db_cpus": a.db_cpus,
        "loadavg_end": os.getloadavg(),
        "scan": scan,
    }
    with (out / "raw.jsonl").open("w") as f:
        for rec in raw:
            f.write(json.dumps(rec) + "\n")
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    text = report(raw, variants, scan, meta)
    (out / "summary.md").write_text(text)
    shutil.rmtree(work / "data-accounting-sqlite", ignore_errors=True)
    print()
    print(text)
    print(f"written to {out} in {meta['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
