"""Three replicas on one PostgreSQL + Redis behind the reference nginx (deploy/nginx.conf) behave as one gateway.

The nginx config is the shipped file with only its deployment specifics rewritten (listen port, the replicas'
addresses, file paths); two test-only lines are added: a response header naming the replica that answered (so
the tests can see the balancing), and ``proxy_ignore_headers X-Accel-Buffering`` so that the streaming test
measures the config itself, not the gateway's per-response header. (nginx 1.22 happens to forward a slow
chunked response promptly even with ``proxy_buffering on``; what the streaming test catches is any setting that
holds the body back, e.g. gzip of ``text/event-stream``. The SSE directives are also checked statically.)
"""

from __future__ import annotations

import asyncio
import itertools
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from sluicegate.config import ServerConfig
from sluicegate.storage.db import create_engine
from sluicegate.storage.usage import UsageStore
from tests.conftest import TEST_TIMEOUTS
from tests.fakes.openai import FakeOpenAI
from tests.support.databases import database_url
from tests.support.gateway import MASTER_KEY, GatewayProcess, free_port
from tests.support.services import nginx_path, redis_url

NGINX_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
PRICE = {"input": 1000, "cached_input": 100, "output": 2000}  # credits per million tokens
COST = 11 * 1000 + 5 * 2000  # the fake upstream always reports 11 prompt + 5 completion tokens
UPSTREAM_HEADER = "x-test-upstream"


def gateway_config(upstream_url: str) -> dict[str, Any]:
    dep = {"provider": "openai", "model": "up", "api_base": upstream_url, "api_key": "sk-up", "timeouts": TEST_TIMEOUTS}
    return {
        "models": [{"id": "metered", "deployments": [dep], "price": PRICE}],
        "server": {"tail_grace": 0.5},
        "routing": {"retry": {"max_attempts_per_deployment": 1}, "circuit": {"enabled": False}},
        "auth": {"cache_ttl": 60},  # revocation must come from the Redis bus, not from cache expiry
    }


def nginx_config(template: str, prefix: Path, port: int, replicas: list[int]) -> str:
    """deploy/nginx.conf with this machine's ports and a private prefix directory; fails loudly if it drifted."""

    def sub(pattern: str, repl: str, text: str, count: int = 0) -> str:
        new, n = re.subn(pattern, repl, text, count=count, flags=re.M)
        assert n, f"deploy/nginx.conf no longer matches {pattern!r}; update the test's rewrite"
        return new

    conf = sub(r"^user\s+[^;]+;\n", "", template)
    conf = sub(r"^pid\s+[^;]+;\n", "", conf)  # given with -g
    conf = sub(r"^worker_processes\s+[^;]+;", "worker_processes 2;", conf)
    conf = sub(r"^error_log\s+[^;]+;", f"error_log {prefix}/error.log warn;", conf)
    conf = sub(r"access_log\s+/var/log/nginx/\S+", f"access_log {prefix}/access.log", conf)
    servers = "".join(f"        server 127.0.0.1:{p} max_fails=3 fail_timeout=10s;\n" for p in replicas)
    conf = sub(r"(upstream sluicegate \{\n(?:.*\n)*?)(?:\s*server [^\n]+\n)+", r"\g<1>" + servers, conf, count=1)
    conf = sub(r"listen 80\b[^;]*;", f"listen 127.0.0.1:{port} backlog=4096;", conf)
    temp = "".join(f"    {d}_temp_path {prefix}/{d};\n" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = sub(r"^http \{\n", "http {\n" + temp, conf, count=1)
    conf = sub(
        r"(location / \{\n\s*proxy_pass http://sluicegate;\n)",
        r"\g<1>"
        + f"            add_header {UPSTREAM_HEADER} $upstream_addr always;\n"
        + "            proxy_ignore_headers X-Accel-Buffering;\n",
        conf,
        count=1,
    )
    return conf


@dataclass
class Cluster:
    replicas: list[GatewayProcess]
    lb_url: str
    database_url: str

    @property
    def lb_base(self) -> str:
        return self.lb_url + "/v1"


def start_nginx(prefix: Path, replicas: list[GatewayProcess]) -> tuple[subprocess.Popen[bytes], str]:
    nginx = nginx_path()
    port = free_port()
    conf_path = prefix / "nginx.conf"
    conf_path.write_text(nginx_config(NGINX_CONF.read_text(), prefix, port, [r.port for r in replicas]))
    cmd = [nginx, "-p", str(prefix), "-c", str(conf_path), "-g", f"daemon off; pid {prefix}/nginx.pid;"]
    check = subprocess.run([*cmd[:-2], "-t"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, f"nginx -t refused the generated config:\n{check.stderr}"
    log = (prefix / "nginx.out").open("ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, (prefix / "nginx.out").read_text() + (prefix / "error.log").read_text()
        try:
            if httpx.get(url + "/nginx-health", timeout=0.5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nginx did not start within 10 s")


@pytest.fixture(scope="module")
def cluster(upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    nginx_path()  # before starting three replicas it could not balance
    workdir = tmp_path_factory.mktemp("nginx-replicas")
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / "nginx" / d).mkdir(parents=True)
    with database_url("postgres", workdir) as url:
        env = {"SLUICEGATE_DATABASE_URL": url, "SLUICEGATE_REDIS_URL": redis_url()}
        procs: list[GatewayProcess] = []
        nginx: subprocess.Popen[bytes] | None = None
        try:
            # The first start runs the migrations; the other two start in parallel.
            for i in range(3):
                (workdir / f"r{i}").mkdir()
                procs.append(GatewayProcess(gateway_config(upstream.url), workdir / f"r{i}", env))
            procs[0].start()
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(lambda p: p.start(), procs[1:]))
            nginx, lb_url = start_nginx(workdir / "nginx", procs)
            yield Cluster(procs, lb_url, url)
        finally:
            if nginx is not None:
                nginx.terminate()
                nginx.wait(10)
            for p in procs:
                p.stop()


def admin(url: str, method: str, path: str, body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}
    r = httpx.request(method, url + "/admin/v1" + path, json=body, headers=headers, timeout=10)
    assert r.status_code < 300, r.text
    return r.json()


def new_key(url: str, **limits: Any) -> dict[str, Any]:
    group = "g-" + uuid.uuid4().hex[:8]
    admin(url, "POST", "/groups", {"name": group, "models": ["*"]})
    key = admin(url, "POST", "/keys", {"name": "k-" + uuid.uuid4().hex[:8], "group": group})
    if limits:
        admin(url, "PUT", f"/keys/{key['name']}/limits", limits)
    return dict(key)


def body(content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "metered", "messages": [{"role": "user", "content": content}], **extra}


async def burst(url: str, key: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=len(bodies))) as client:
        return await asyncio.gather(*(client.post(url + "/chat/completions", json=b, headers=headers) for b in bodies))


def replica_ports(responses: list[httpx.Response]) -> set[str]:
    return {r.headers[UPSTREAM_HEADER].rsplit(":", 1)[-1] for r in responses}


def test_60_rpm_admits_60_of_180_across_three_replicas(cluster: Cluster, fake: FakeOpenAI) -> None:
    key = new_key(cluster.replicas[0].url, rpm=60)
    responses = asyncio.run(burst(cluster.lb_base, key["key"], [body() for _ in range(180)]))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) in (60, 61), statuses  # 61 only if the burst straddles a one-second refill
    assert statuses.count(429) == 180 - statuses.count(200)
    assert all(r.headers.get("retry-after") for r in responses if r.status_code == 429)
    # nginx spread the burst over every replica (each alone would have admitted 60): the limit is global.
    assert replica_ports(responses) == {str(r.port) for r in cluster.replicas}


def test_budget_is_not_overshot_under_concurrency_through_the_balancer(cluster: Cluster, fake: FakeOpenAI) -> None:
    # Each request reserves ~7 prompt tokens + max_tokens 10 at the prices: 7,000 + 20,000 = 27,000 micro-credits
    # and really costs 11*1000 + 5*2000 = 21,000. A budget of 270,000 admits exactly 10 reservations at once.
    key = new_key(cluster.replicas[1].url, budget_micro=270_000)
    responses = asyncio.run(burst(cluster.lb_base, key["key"], [body(max_tokens=10) for _ in range(120)]))
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 403]
    assert len(ok) + len(refused) == 120 and 10 <= len(ok) <= 270_000 // COST
    assert all(r.json()["error"]["code"] == "budget_exceeded" for r in refused)
    assert len(replica_ports(responses)) == 3
    report = {r["key"]: r for r in admin(cluster.lb_url, "GET", "/usage?by=key&since=1h")["data"]}
    assert report[key["prefix"]]["cost_micro"] == COST * len(ok) <= 270_000


def test_revocation_on_one_replica_is_refused_by_all_within_a_second(cluster: Cluster, fake: FakeOpenAI) -> None:
    a = cluster.replicas[0]
    key = new_key(a.url)
    headers = {"Authorization": f"Bearer {key['key']}"}
    with httpx.Client(timeout=5) as client:
        for gw in cluster.replicas:  # every replica has the key cached now (TTL 60 s)
            assert client.post(gw.base_url + "/chat/completions", json=body(), headers=headers).status_code == 200
        admin(a.url, "POST", f"/keys/{key['name']}/revoke")
        revoked_at = time.monotonic()
        for gw in cluster.replicas:
            while (r := client.get(gw.base_url + "/models", headers=headers)).status_code != 401:
                assert r.status_code == 200, r.text
                assert time.monotonic() - revoked_at < 1.0, f"replica :{gw.port} still accepts the key after 1 s"
                time.sleep(0.01)
        through_lb = [
            client.post(cluster.lb_base + "/chat/completions", json=body(), headers=headers) for _ in range(9)
        ]
        elapsed = time.monotonic() - revoked_at
    assert [r.status_code for r in through_lb] == [401] * 9
    assert all(r.json()["error"]["code"] == "invalid_api_key" for r in through_lb)
    assert replica_ports(through_lb) == {str(gw.port) for gw in cluster.replicas}
    assert elapsed < 1.0


def test_usage_ledger_sums_exactly_what_clients_saw(cluster: Cluster, fake: FakeOpenAI) -> None:
    key = new_key(cluster.replicas[2].url)
    bodies = (
        [body() for _ in range(20)]
        + [body(stream=True, stream_options={"include_usage": True}) for _ in range(20)]
        + [body("scenario:status:500") for _ in range(5)]
    )
    responses = asyncio.run(burst(cluster.lb_base, key["key"], bodies))
    seen = {"prompt_tokens": 0, "completion_tokens": 0, "cost_micro": 0, "requests": 0, "errors": 0}
    for b, r in zip(bodies, responses, strict=True):
        seen["requests"] += 1
        if r.status_code != 200:
            assert r.status_code == 502
            seen["errors"] += 1
            continue
        if b.get("stream"):
            assert r.content.endswith(b"data: [DONE]\n\n")
            events = [e for e in r.content.split(b"\n\n") if e.startswith(b"data: {")]
            usage = orjson.loads(events[-1][6:])["usage"]
        else:
            usage = r.json()["usage"]
        seen["prompt_tokens"] += usage["prompt_tokens"]
        seen["completion_tokens"] += usage["completion_tokens"]
        seen["cost_micro"] += usage["prompt_tokens"] * PRICE["input"] + usage["completion_tokens"] * PRICE["output"]
    assert len(replica_ports(responses)) == 3

    report = {r["key"]: r for r in admin(cluster.lb_url, "GET", "/usage?by=key&since=1h")["data"]}[key["prefix"]]
    assert {k: report[k] for k in seen} == seen

    async def rows() -> list[dict[str, Any]]:
        engine = create_engine(cluster.database_url)
        try:
            return await UsageStore(engine).by_request_ids([r.headers["x-request-id"] for r in responses])
        finally:
            await engine.dispose()

    got = asyncio.run(rows())
    assert len(got) == len(responses) and {r["key_prefix"] for r in got} == {key["prefix"]}
    assert sum(r["cost_micro"] for r in got) == seen["cost_micro"]
    assert sum(r["completion_tokens"] for r in got) == seen["completion_tokens"]


def test_stream_arrives_incrementally_through_the_balancer(cluster: Cluster, fake: FakeOpenAI) -> None:
    key = new_key(cluster.replicas[0].url)
    request_id = "inc-" + uuid.uuid4().hex[:8]
    headers = {"Authorization": f"Bearer {key['key']}", "x-request-id": request_id}
    payload = body("scenario:slow_chunks:300", stream=True)
    arrivals: list[tuple[float, bytes]] = []
    with httpx.Client(timeout=10) as client:
        start = time.monotonic()
        with client.stream("POST", cluster.lb_base + "/chat/completions", json=payload, headers=headers) as r:
            assert r.status_code == 200 and r.headers["x-request-id"] == request_id
            buffer = b""
            for part in r.iter_raw():
                buffer += part
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    arrivals.append((time.monotonic() - start, event))
    assert arrivals[-1][1] == b"data: [DONE]"
    total = arrivals[-1][0]
    # The fake sends ~8 events 300 ms apart (>= 2 s in all); a buffering proxy would deliver them together at the end.
    assert total > 1.8
    assert arrivals[0][0] < total - 1.2, f"first event only at {arrivals[0][0]:.2f}s of {total:.2f}s"
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(arrivals)]
    assert sum(g > 0.15 for g in gaps) >= 4, gaps


def test_reference_config_has_what_sse_needs() -> None:
    conf = NGINX_CONF.read_text()
    location = conf[conf.index("location / {") :]
    for directive in (
        "proxy_buffering off;",
        "proxy_cache off;",
        "gzip off;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_set_header X-Request-ID $sg_request_id;",
    ):
        assert directive in location, directive
    upstream = conf[conf.index("upstream sluicegate {") :]
    assert re.search(r"^\s*keepalive \d+;", upstream, re.M) and "least_conn;" in upstream
    for timeout in ("proxy_read_timeout", "proxy_send_timeout"):
        seconds = int(re.search(rf"{timeout} (\d+)s;", location).group(1))  # type: ignore[union-attr]
        assert seconds >= 600, timeout
    # The gateway's server.max_body_bytes default.
    assert f"client_max_body_size {ServerConfig().max_body_bytes // 2**20}m;" in conf
