"""Property, through a real gateway: no request body gets a 5xx, and a refused one changes no budget and no ledger.

The gateway runs with a budget on the caller's group, DLP redaction on requests and its budget books in Redis,
so every accepted body goes through the decoder, the budget reservation, DLP, the upstream call and the
settlement; the books are checked against the usage ledger once all bodies are in.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings

from tests.e2e.test_accounting import records
from tests.e2e.test_budget_safety import config
from tests.fakes.openai import FakeOpenAI
from tests.support.fuzz_bodies import bodies, with_known_bodies
from tests.support.gateway import GatewayProcess

REDIS_URL = os.environ.get("SLUICEGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture
def gateway(upstream: FakeOpenAI, tmp_path: Path) -> Iterator[GatewayProcess]:
    cfg: dict[str, Any] = {**config(upstream.url), "dlp": {"request": {"action": "redact"}}}
    with GatewayProcess(cfg, tmp_path, {"SLUICEGATE_REDIS_URL": REDIS_URL}) as gw:
        yield gw


def test_no_body_gets_a_5xx_and_refused_ones_change_no_budget(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    admin = httpx.Client(base_url=gateway.url + "/admin/v1", headers={"Authorization": f"Bearer {gateway.key}"})
    group = "fuzz-" + uuid.uuid4().hex[:8]
    assert admin.post("/groups", json={"name": group, "models": ["*"]}).status_code == 201
    assert admin.put(f"/groups/{group}/limits", json={"budget": 10**6}).status_code == 200
    key = admin.post("/keys", json={"name": group, "group": group}).json()["key"]
    client = httpx.Client(timeout=30, headers={"Authorization": f"Bearer {key}", "content-type": "application/json"})
    answered: dict[str, int] = {}

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(raw=bodies())
    @with_known_bodies
    def post(raw: bytes) -> None:
        r = client.post(gateway.base_url + "/chat/completions", content=raw)
        assert r.status_code < 500, (r.status_code, r.text, raw[:300])
        if r.status_code != 200:
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}, r.text
        answered[r.headers["x-request-id"]] = r.status_code

    try:
        post()
    finally:
        client.close()
        admin.close()
    statuses = set(answered.values())
    assert 200 in statuses and 400 in statuses, statuses  # both sides of the property were exercised
    got = records(gateway, list(answered))
    refused = [rid for rid, status in answered.items() if status != 200]
    assert all(got[rid]["cost_micro"] == 0 for rid in refused if rid in got)
    assert all(rid in got for rid, status in answered.items() if status == 200)
    store = redis.Redis.from_url(REDIS_URL)
    try:
        books = {k.decode(): int(v) for k, v in store.hgetall(f"sluicegate:budget:group:{group}:total").items()}
        holds = store.zcard(f"sluicegate:budget:group:{group}:total:holds")
    finally:
        store.close()
    # Nothing left reserved, and the budget's spend is exactly what the ledger billed.
    assert (books["reserved"], holds) == (0, 0)
    assert books["spent"] == sum(r["cost_micro"] for r in got.values())
    assert "Traceback" not in gateway.log(), gateway.log()[-3000:]
