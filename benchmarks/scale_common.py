"""Shared pieces of the scale benchmarks (bench_streams.py, bench_soak.py, bench_overload.py).

Process handling (the shared kit's mock upstream, ``sluicegate serve``), /proc sampling (RSS, open file
descriptors, CPU time) and a streaming SSE client on aiohttp. Run the benchmarks from the repository's root with
the project venv: ``.venv/bin/python -m benchmarks.bench_streams`` (aiohttp, uvloop, orjson and httpx are gateway
dependencies).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
MASTER_KEY = "sk-bench-master"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def results_dir(name: str, given: str | None) -> Path:
    out = Path(given) if given else ROOT / "benchmarks" / "results" / f"{name}-{stamp()}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def raise_nofile(wanted: int = 1_048_576) -> int:
    """Raise RLIMIT_NOFILE for this process and its children (as root the hard limit too); returns the soft limit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    for target in ((wanted, wanted), (min(wanted, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, target)
            break
        except (ValueError, PermissionError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# /proc sampling ------------------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def process_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def rss_kb(pid: int) -> int:
    """Resident set of the process tree, from /proc/PID/statm (kB)."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/statm") as f:
            total += int(f.read().split()[1]) * PAGE_KB
    return total


def open_fds(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{p}/fd"))
    return total


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            with open(f"/proc/{p}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            total += (int(parts[11]) + int(parts[12])) / CLK_TCK
    return total


def sched_wait_seconds(pid: int) -> float:
    """Time the process tree was runnable but waiting for a CPU (/proc/PID/schedstat): other load on the machine."""
    total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[1]) / 1e9
    return total


def threads(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{p}/task"))
    return total


def tcp_counters() -> dict[str, int]:
    """Kernel TCP counters showing a connect burst overflowing a listen backlog (SYNs retried after 1 s, 3 s, ...)."""
    wanted = ("ListenOverflows", "ListenDrops", "TCPReqQFullDrop", "SyncookiesSent", "TCPTimeouts")
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    out: dict[str, int] = {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        for k, v in zip(names.split()[1:], values.split()[1:], strict=False):
            if k in wanted:
                out[k] = int(v)
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


# processes ----------------------------------------------------------------------------------------------------


def spawn(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,  # its own process group: stop() ends exactly what we started
    )


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 45) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=0.5).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def start_mock(
    kit: Path, out: Path, chunks: int, chunk_delay_ms: float, port: int | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """The shared kit's mock upstream (``kit``: from ``benchmarks.kit.locate``) on ``port`` or a free one."""
    port = port or free_port()
    cmd = [
        str(VENV_BIN / "python"),
        str(kit / "mock_upstream.py"),
        "--port",
        str(port),
        "--chunks",
        str(chunks),
        "--chunk-delay-ms",
        str(chunk_delay_ms),
    ]
    proc = spawn(cmd, out / "mock.log")
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", proc)
    return proc, url


def gateway_config(upstream_base: str, server: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    timeouts = {"connect": 30, "headers": 120, "first_token": 120, "idle": 120, "total": 900}
    dep = {
        "provider": "openai",
        "model": "mock-gpt",
        "api_base": upstream_base,
        "api_key": "sk-up",
        "timeouts": timeouts,
    }
    return {
        "models": [{"id": "mock-gpt", "deployments": [dep], "price": {"input": 1, "output": 2}}],
        "server": {**(server or {})},
        **top,
    }


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    url: str
    pid: int
    log: Path

    @property
    def chat_url(self) -> str:
        return self.url + "/v1/chat/completions"


def start_gateway(
    out: Path, config: dict[str, Any], *, workers: int = 1, env: dict[str, str] | None = None, port: int | None = None
) -> Gateway:
    port = port or free_port()
    cfg = out / "sluicegate.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    full_env = {
        **os.environ,
        "SLUICEGATE_MASTER_KEY": MASTER_KEY,
        "SLUICEGATE_DATA_DIR": str(out / "gateway-data"),
        **(env or {}),
    }
    cmd = [str(VENV_BIN / "sluicegate"), "serve", "--config", str(cfg), "--port", str(port)]
    cmd += ["--workers", str(workers), "--log-format", "json"]
    log = out / "gateway.log"
    proc = spawn(cmd, log, env=full_env)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", proc)
    return Gateway(proc, url, proc.pid, log)


# the streaming client -----------------------------------------------------------------------------------------


@dataclass
class StreamResult:
    ok: bool
    status: int
    total: float
    ttfc: float | None = None
    chunks: int = 0
    error: str = ""
    retry_after: str | None = None


@dataclass
class OpenCounter:
    now: int = 0
    peak: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)

    def up(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)

    def down(self) -> None:
        self.now -= 1


def chat_body(stream: bool, content: str = "Say hello.", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "mock-gpt", "messages": [{"role": "user", "content": content}], **extra}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


async def stream_once(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    *,
    expect_chunks: int = 0,
    counter: OpenCounter | None = None,
    headers: dict[str, str] | None = None,
    cut_after: int | None = None,
) -> StreamResult:
    """One request; for streams, counts content chunks and checks the [DONE] ending."""
    t0 = time.perf_counter()
    hdrs = {"Authorization": f"Bearer {MASTER_KEY}", **(headers or {})}
    opened = False
    try:
        async with session.post(
            url, data=orjson.dumps(body), headers={**hdrs, "Content-Type": "application/json"}
        ) as r:
            if not body.get("stream") or r.status != 200:
                data = await r.read()
                err = "" if r.status == 200 else f"http {r.status}: {data[:120]!r}"
                return StreamResult(r.status == 200, r.status, time.perf_counter() - t0, error=err)
            if counter is not None:
                counter.up()
                opened = True
            buf, chunks, ttfc, done, err = b"", 0, None, False, ""
            async for data in r.content.iter_any():
                buf += data
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    if event.startswith(b"data: [DONE]"):
                        done = True
                    elif event.startswith(b"event: error"):
                        err = "stream_error frame"
                    elif event.startswith(b"data: {") and b'"content":"' in event:
                        delta = orjson.loads(event[6:])["choices"]
                        if delta and delta[0]["delta"].get("content"):
                            chunks += 1
                            if ttfc is None:
                                ttfc = time.perf_counter() - t0
                if cut_after is not None and chunks >= cut_after:
                    return StreamResult(True, 200, time.perf_counter() - t0, ttfc, chunks, "cut by client")
            total = time.perf_counter() - t0
            if not done and not err:
                err = "no [DONE]"
            if expect_chunks and chunks != expect_chunks and not err:
                err = f"{chunks} content chunks, expected {expect_chunks}"
            return StreamResult(not err, 200, total, ttfc, chunks, err)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return StreamResult(False, 0, time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}"[:160])
    finally:
        if opened and counter is not None:
            counter.down()


class _RawStream(asyncio.Protocol):
    """A minimal HTTP/1.1 streaming client: one connection per request, bytes only, no per-chunk objects.

    aiohttp costs ~25 µs of client CPU per SSE event; at 5,000 streams x 5 events/s that alone would need most
    of a core on this 2-vCPU machine, and the client, not the proxy under test, would set the stream times.
    This protocol splits events on blank lines and looks at a few bytes of each.
    """

    def __init__(self, t0: float, expect_chunks: int, counter: OpenCounter | None) -> None:
        self.t0, self.expect, self.counter = t0, expect_chunks, counter
        self.head = b""
        self.status = 0
        self.buf = b""
        self.chunks = 0
        self.ttfc: float | None = None
        self.done = False
        self.err = ""
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.opened = False
        self.retry_after: str | None = None
        self.error_body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.status:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = int(self.head[9:12])
            head, data, self.head = self.head[:end], self.head[end + 4 :], b""
            if self.status != 200:
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"retry-after":
                        self.retry_after = value.strip().decode()
                self.err = f"http {self.status}"
                self.error_body = data
                if b'"code"' in data or not data:
                    self._refused()
                return
            elif self.counter is not None:
                self.counter.up()
                self.opened = True
        elif self.status != 200:
            self.error_body += data
            if b'"code"' in self.error_body:
                self._refused()
            return
        buf = self.buf + data
        events = buf.split(b"\n\n")
        self.buf = events.pop()
        for event in events:
            # chunked framing puts "<hex>\r\n" before an event; look for the payload anywhere in it
            if b"data: [DONE]" in event:
                self.done = True
            elif b"event: error" in event:
                self.err = "stream_error frame"
            elif b'"content":"' in event and b'"content":""' not in event:
                self.chunks += 1
                if self.ttfc is None:
                    self.ttfc = time.perf_counter() - self.t0
        if (self.done or self.err) and not self.finished.done():
            self.finished.set_result(None)

    def _refused(self) -> None:
        code = re.search(rb'"code":\s*"([a-z_]+)"', self.error_body)
        self.err = f"http {self.status} {code.group(1).decode() if code else ''}".strip()
        if b'"code"' in self.error_body and not self.finished.done():
            self.finished.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            if not self.done and not self.err:
                self.err = f"connection lost: {exc}" if exc else "connection closed before [DONE]"
            self.finished.set_result(None)


async def raw_stream(
    url: str,
    body: bytes,
    *,
    api_key: str = MASTER_KEY,
    expect_chunks: int = 0,
    counter: OpenCounter | None = None,
    timeout: float = 300,
) -> StreamResult:
    """POST a streaming chat request over a fresh connection and read it to [DONE] (see ``_RawStream``)."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    t0 = time.perf_counter()
    loop = asyncio.get_running_loop()
    proto = _RawStream(t0, expect_chunks, counter)
    request = (
        f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nAuthorization: Bearer {api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    transport = None
    try:
        transport, _ = await asyncio.wait_for(loop.create_connection(lambda: proto, u.hostname, u.port), timeout)
        transport.write(request)
        await asyncio.wait_for(proto.finished, timeout)
    except (TimeoutError, OSError) as exc:
        proto.err = proto.err or f"{type(exc).__name__}: {exc}"[:160]
    finally:
        if transport is not None:
            transport.close()
        if proto.opened and counter is not None:
            counter.down()
    total = time.perf_counter() - t0
    err = proto.err
    if not err and expect_chunks and proto.chunks != expect_chunks:
        err = f"{proto.chunks} content chunks, expected {expect_chunks}"
    return StreamResult(not err, proto.status, total, proto.ttfc, proto.chunks, err, proto.retry_after)


def own_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def session(limit: int = 0, timeout: float = 120) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, force_close=False, enable_cleanup_closed=True),
        timeout=aiohttp.ClientTimeout(total=timeout),
    )


def use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str))


def machine() -> dict[str, Any]:
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {"cpus": os.cpu_count(), "loadavg_at_start": load, "python": sys.version.split()[0]}
