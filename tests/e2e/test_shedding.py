"""Load shedding: over the caps, a fast refusal with Retry-After; health stays responsive."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sluicegate.errors import Overloaded
from sluicegate.http.shedding import ConcurrencyLimited, LoadShedder
from tests.conftest import TEST_TIMEOUTS
from tests.fakes.openai_upstream import FakeOpenAI
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
