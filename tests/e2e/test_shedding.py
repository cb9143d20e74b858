"""Load shedding: over the caps, a fast refusal with Retry-After; health stays responsive."""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from sluicegate.errors import Overloaded
from sluicegate.http.shedding import ConcurrencyLimited, LoadShedder
from tests.conftest import TEST_TIMEOUTS
from tests.fakes.openai import FakeOpenAI
from tests.support.gateway import GatewayProcess


def test_shedder_counts_and_releases() -> None:
    shedder = LoadShedder(max_total=3, max_per_key=2)
    shedder.admit("a")
    shedder.admit("a")
    with pytest.raises(ConcurrencyLimited):
        shedder.admit("a")
    shedder.admit("b")
    with pytest.raises(Overloaded):
        shedder.admit("c")
    shedder.release("a")
    shedder.admit("c")
    assert shedder.inflight == 3 and shedder.shed_total == 2


@pytest.fixture(scope="module")
def gw(upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    dep = {"provider": "openai", "model": "up", "api_base": upstream.url, "api_key": "k", "timeouts": TEST_TIMEOUTS}
    config: dict[str, Any] = {
        "models": [{"id": "gpt-test", "deployments": [dep]}],
        "server": {"max_concurrent_requests": 8, "max_concurrent_per_key": 5},
        "routing": {"circuit": {"enabled": False}},
    }
    with GatewayProcess(config, tmp_path_factory.mktemp("shed")) as g:
        yield g


def test_over_capacity_is_refused_fast_and_health_stays_up(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    async def run() -> tuple[list[httpx.Response], float]:
        body = {
            "model": "gpt-test",
            "stream": True,
            "messages": [{"role": "user", "content": "scenario:slow_chunks:200"}],
        }
        headers = {"Authorization": f"Bearer {gw.key}"}
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=50)) as client:
            calls = [client.post(gw.base_url + "/chat/completions", json=body, headers=headers) for _ in range(20)]
            tasks = [asyncio.ensure_future(c) for c in calls]
            # Over capacity now: admitted requests have reached the upstream and a refusal has come back.
            await fake.wait_for_async(lambda reqs: reqs, timeout=10)
            _, pending = await asyncio.wait(tasks, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            assert pending, "every request finished before /healthz was probed: nothing was streaming"
            started = time.monotonic()
            health = await client.get(gw.url + "/healthz")
            health_ms = (time.monotonic() - started) * 1000
            assert health.status_code == 200
            return list(await asyncio.gather(*tasks)), health_ms

    responses, health_ms = asyncio.run(run())
    ok = [r for r in responses if r.status_code == 200]
    shed = [r for r in responses if r.status_code in (429, 503)]
    assert len(ok) + len(shed) == 20 and 1 <= len(ok) <= 8 and shed
    for r in shed:
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] in ("overloaded", "concurrency_limit_exceeded")
    assert all(r.content.endswith(b"data: [DONE]\n\n") for r in ok)
    assert health_ms < 500


@pytest.fixture(scope="module")
def shared(upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The audit's setup (issue 24.4): a process cap of 50 and no per-key cap configured."""
    dep = {"provider": "openai", "model": "up", "api_base": upstream.url, "api_key": "k", "timeouts": TEST_TIMEOUTS}
    config: dict[str, Any] = {
        "models": [{"id": "gpt-test", "deployments": [dep]}],
        "server": {"max_concurrent_requests": 50, "body_timeout": 6},
        "routing": {"circuit": {"enabled": False}},
    }
    with GatewayProcess(config, tmp_path_factory.mktemp("shared")) as g:
        yield g


def _api_key(gw: GatewayProcess, group: str, name: str) -> str:
    headers = {"Authorization": f"Bearer {gw.key}"}
    created = httpx.post(gw.url + "/admin/v1/keys", json={"name": name, "group": group}, headers=headers)
    assert created.status_code == 201, created.text
    return str(created.json()["key"])


def test_one_keys_slow_bodies_do_not_starve_other_keys(shared: GatewayProcess, fake: FakeOpenAI) -> None:
    headers = {"Authorization": f"Bearer {shared.key}"}
    assert httpx.post(shared.url + "/admin/v1/groups", json={"name": "team", "models": ["gpt-*"]}, headers=headers)
    greedy, other = _api_key(shared, "team", "greedy"), _api_key(shared, "team", "other")
    body = b'{"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}'
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n" % (greedy.encode(), len(body))
    )
    slow = [socket.create_connection(("127.0.0.1", shared.port), timeout=20) for _ in range(50)]
    try:
        for sock in slow:
            sock.sendall(head + body[:5])  # and never the rest
        # Half the process cap per key by default: 25 are admitted and wait for their body, 25 are refused at
        # once. (Before the fix all 50 were admitted and filled the process cap.)
        refused: set[socket.socket] = set()
        deadline = time.monotonic() + 10
        while len(refused) < 25 and time.monotonic() < deadline:
            readable, _, _ = select.select([s for s in slow if s not in refused], [], [], 0.5)
            refused.update(readable)
        probe = httpx.post(
            shared.base_url + "/chat/completions", content=body, headers={"Authorization": f"Bearer {greedy}"}
        )
        assert probe.status_code == 429 and probe.json()["error"]["code"] == "concurrency_limit_exceeded"

        client = openai.OpenAI(base_url=shared.base_url, api_key=other, max_retries=0)
        for _ in range(5):
            answer = client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
            assert answer.choices[0].message.content

        # The admitted ones are cut by the body timeout, which frees their slots.
        for sock in slow:
            reply = sock.recv(65536)
            if sock in refused:
                assert reply.startswith(b"HTTP/1.1 429") and b'"code":"concurrency_limit_exceeded"' in reply
            else:
                assert reply.startswith(b"HTTP/1.1 408") and b'"code":"request_timeout"' in reply
        assert len(refused) == 25
        again = httpx.post(
            shared.base_url + "/chat/completions", content=body, headers={"Authorization": f"Bearer {greedy}"}
        )
        assert again.status_code == 200
    finally:
        for sock in slow:
            sock.close()
