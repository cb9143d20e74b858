#!/usr/bin/env python3
"""Profile sluicegate's hot path with py-spy under the kit's load, and group the samples.

    .venv/bin/python -m benchmarks.profile_gateway --kit DIR [--src DIR] [--seconds 15]

Starts the kit's mock (CPU 0) and the gateway (``taskset -c 1``, one worker, the config of
run_gateway_bench.py), then for each load — ``ns_c16`` (wrk, 16 connections), ``st0_c16`` (16 streams of
50 chunks back to back), ``st20_c200`` (200 streams, 20 ms spacing), ``st0_c1`` (one stream at a time) —
runs ``py-spy record --format raw`` on the gateway (py-spy on CPU 0) and prints self time grouped by
component and the top leaf frames. Output: ``benchmarks/results/profile-<stamp>/``. Needs py-spy installed
beside this interpreter or on PATH (``pip install py-spy``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from benchmarks import kit
from benchmarks import run_gateway_bench as rg

GROUPS = [  # first match wins, tested against "function (file:line)" of the leaf frame (py-spy raw format)
    # uvloop's loop is C: a sample whose innermost Python frame is Runner.run is the loop itself
    # (epoll, socket reads, callback dispatch), not asyncio's Python code
    ("uvloop event loop (C: epoll, recv, dispatch)", re.compile(r"^Runner\.run \(")),
    ("sluicegate", re.compile(r"\(sluicegate/")),
    ("uvicorn (httptools protocol, incl. socket writes)", re.compile(r"\(uvicorn/")),
    ("aiohttp client", re.compile(r"\(aiohttp/")),
    ("asyncio (Python: timeouts, tasks, locks)", re.compile(r"\(asyncio/|\(_weakrefset|\(<string>|\(base_futures")),
    ("tiktoken", re.compile(r"tiktoken")),
    ("yarl / multidict", re.compile(r"\(yarl/|\(multidict/")),
]


def group_of(frame: str) -> str:
    for name, rx in GROUPS:
        if rx.search(frame):
            return name
    return "other (" + frame.split("(")[-1].rstrip(")").split(":")[0] + ")"


def func_of(frame: str) -> str:
    """'f (path:line)' -> 'f (path)'."""
    return re.sub(r":\d+\)$", ")", frame)


def analyse(raw: Path, top: int = 25) -> str:
    leaf: collections.Counter[str] = collections.Counter()
    group: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()  # our functions, inclusive
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        total += count
        f = frames[-1]
        leaf[func_of(f)] += count
        # attribute a leaf inside the stdlib/C wrappers to the innermost non-asyncio caller group too
        group[group_of(f)] += count
        seen = set()
        for fr in frames:
            fn = func_of(fr)
            if "(sluicegate/" in fr and fn not in seen:
                seen.add(fn)
                inclusive[fn] += count
    out = [f"samples: {total}", "", "self time by component:"]
    for g, c in group.most_common():
        out.append(f"  {100 * c / total:5.1f}%  {g}")
    out += ["", f"top {top} functions by self time (leaf frame):"]
    for f, c in leaf.most_common(top):
        out.append(f"  {100 * c / total:5.1f}%  {f}")
    out += ["", "sluicegate functions, inclusive time (any line):"]
    merged: collections.Counter[str] = collections.Counter()
    for f, c in inclusive.items():
        merged[f] += c
    for f, c in merged.most_common(20):
        out.append(f"  {100 * c / total:5.1f}%  {f}")
    return "\n".join(out)


def find_pyspy() -> str:
    """py-spy beside this interpreter (installed into its venv), else on PATH; exits when there is none."""
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        sys.exit(f"py-spy is not installed: {Path(sys.executable).with_name('pip')} install py-spy")
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=None, metavar="DIR", help="gateway source tree (see run_gateway_bench.py --src)")
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--rate", type=int, default=250)
    ap.add_argument("--port", type=int, default=18180)
    ap.add_argument("--mock-port", type=int, default=18000)
    ap.add_argument("--proxy-cpus", default="1")
    ap.add_argument("--harness-cpus", default="0")
    ap.add_argument("--gateway-bin", default=str(rg.REPO / ".venv" / "bin" / "sluicegate"))
    ap.add_argument("--loads", default="ns_c16,st0_c16,st20_c200,st0_c1")
    ap.add_argument("--analyse", default=None, metavar="DIR", help="only re-analyse the *.raw.txt of an earlier run")
    kit.add_option(ap)
    a = ap.parse_args()
    if a.analyse:
        for raw in sorted(Path(a.analyse).glob("*.raw.txt")):
            text = analyse(raw)
            (raw.parent / raw.name.replace(".raw.txt", ".summary.txt")).write_text(text)
            print(f"===== {raw.name.replace('.raw.txt', '')} =====\n{text}\n")
        return
    kit_dir = kit.locate(a.kit)
    pyspy = find_pyspy()

    out = rg.HERE / "results" / ("profile-" + time.strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True)
    cfg = out / "sluicegate-bench.yaml"
    cfg.write_text(rg.CONFIG.format(mock_port=a.mock_port))
    mock_base = f"http://127.0.0.1:{a.mock_port}"
    base = f"http://127.0.0.1:{a.port}"
    url = base + "/v1/chat/completions"
    mock = rg.spawn(
        [*rg.pin(a.harness_cpus), sys.executable, str(kit_dir / "mock_upstream.py"), "--port", str(a.mock_port)],
        out / "mock.log",
    )
    gw = None
    try:
        time.sleep(1)
        gw = rg.start_gateway(a, rg.Gateway("sluicegate", a.src, a.port), cfg, out / "gateway.log")
        if rg.wait_healthy(base, gw, 60) is None:
            sys.exit("gateway did not start")

        def mock_cfg(**kw: int) -> None:
            req = urllib.request.Request(mock_base + "/mock/config", data=json.dumps(kw).encode())
            urllib.request.urlopen(req, timeout=5).read()

        env = dict(os.environ, BENCH_MODEL=rg.MODEL, BENCH_API_KEY=rg.MASTER_KEY)
        load_s = a.seconds + 6
        loads = {
            "ns_c16": (
                dict(chunks=50, first_delay_ms=0, chunk_delay_ms=0),
                ["wrk", "-t1", "-c16", f"-d{load_s}s", "-s", str(kit_dir / "post.lua"), url],
            ),
            "st0_c16": (
                dict(chunks=50, first_delay_ms=0, chunk_delay_ms=0),
                [
                    sys.executable,
                    str(kit_dir / "stream_client.py"),
                    "--url",
                    url,
                    "--model",
                    rg.MODEL,
                    "--api-key",
                    rg.MASTER_KEY,
                    "--stream",
                    "--include-usage",
                    "--expect-chunks",
                    "50",
                    "--concurrency",
                    "16",
                    "--requests",
                    "1000000",
                    "--max-seconds",
                    str(load_s),
                ],
            ),
            "st20_c200": (
                dict(chunks=50, first_delay_ms=0, chunk_delay_ms=20),
                [
                    sys.executable,
                    str(kit_dir / "stream_client.py"),
                    "--url",
                    url,
                    "--model",
                    rg.MODEL,
                    "--api-key",
                    rg.MASTER_KEY,
                    "--stream",
                    "--include-usage",
                    "--expect-chunks",
                    "50",
                    "--concurrency",
                    "200",
                    "--requests",
                    "1000000",
                    "--max-seconds",
                    str(load_s),
                ],
            ),
            "st0_c1": (
                dict(chunks=50, first_delay_ms=0, chunk_delay_ms=0),
                [
                    sys.executable,
                    str(kit_dir / "stream_client.py"),
                    "--url",
                    url,
                    "--model",
                    rg.MODEL,
                    "--api-key",
                    rg.MASTER_KEY,
                    "--stream",
                    "--include-usage",
                    "--expect-chunks",
                    "50",
                    "--concurrency",
                    "1",
                    "--requests",
                    "1000000",
                    "--max-seconds",
                    str(load_s),
                ],
            ),
        }
        for name in a.loads.split(","):
            settings, cmd = loads[name]
            mock_cfg(**settings)
            load_log = open(out / f"{name}.load.txt", "w")  # noqa: SIM115 - closed after load.wait()
            load = subprocess.Popen([*rg.pin(a.harness_cpus), *cmd], env=env, stdout=load_log, stderr=subprocess.STDOUT)
            time.sleep(3)
            raw = out / f"{name}.raw.txt"
            subprocess.run(
                [
                    *rg.pin(a.harness_cpus),
                    pyspy,
                    "record",
                    "-p",
                    str(gw.pid),
                    "-d",
                    str(a.seconds),
                    "-r",
                    str(a.rate),
                    "--format",
                    "raw",
                    "-o",
                    str(raw),
                    "--nonblocking",
                ],
                capture_output=True,
                check=False,
            )
            load.wait()
            load_log.close()
            text = analyse(raw) if raw.exists() else "py-spy wrote nothing"
            (out / f"{name}.summary.txt").write_text(text)
            print(f"===== {name} =====\n{text}\n", flush=True)
            time.sleep(1)
    finally:
        rg.stop(gw)
        rg.stop(mock)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
