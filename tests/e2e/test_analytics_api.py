"""The analytics API behind the console's charts, through the real gateway on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sluicegate.records import Attempt, RequestRecord
from sluicegate.storage.analytics import HOUR, UsageAnalytics
from sluicegate.storage.db import create_engine
from sluicegate.storage.migrations import migrate
from sluicegate.storage.usage import UsageStore, usage_row
from sluicegate.types import Usage
from tests.conftest import TEST_TIMEOUTS
from tests.fakes.openai import FakeOpenAI
from tests.support.console import console_gateway, login
from tests.support.databases import database_url
from tests.support.gateway import GatewayProcess

PRICE = {"input": 1000, "cached_input": 100, "output": 2000}
COST = 11 * 1000 + 5 * 2000  # the fake's 11 prompt and 5 completion tokens, in micro-credits


def config(url: str) -> dict[str, Any]:
    dep = {"provider": "openai", "model": "up", "api_base": url, "api_key": "sk-up", "timeouts": TEST_TIMEOUTS}
    return {
        "models": [{"id": "gpt-test", "deployments": [dep], "price": PRICE}],
        "routing": {"retry": {"max_attempts_per_deployment": 1}, "circuit": {"enabled": False}},
    }


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gw(
    request: pytest.FixtureRequest, upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    with console_gateway(config(upstream.url), tmp_path_factory.mktemp("analytics"), request.param) as g:
        yield g


def api(gw: GatewayProcess, path: str, auth: str | None = None, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {auth or gw.key}"}
    return httpx.get(f"{gw.url}/admin/v1/usage/{path}", params=params, headers=headers, timeout=30)


def admin(gw: GatewayProcess, method: str, path: str, body: Any = None) -> Any:
    r = httpx.request(method, gw.url + "/admin/v1" + path, json=body, headers={"Authorization": f"Bearer {gw.key}"})
    assert r.status_code < 300, r.text
    return r.json()


@pytest.fixture(scope="module")
def traffic(gw: GatewayProcess) -> dict[str, Any]:
    """Six requests with a new key through the gateway: five answered, one failed upstream."""
    group = "g-" + uuid.uuid4().hex[:8]
    admin(gw, "POST", "/groups", {"name": group, "models": ["*"]})
    key = admin(gw, "POST", "/keys", {"name": "k-" + uuid.uuid4().hex[:8], "group": group})
    headers = {"Authorization": f"Bearer {key['key']}"}
    statuses = []
    for content in ["hi"] * 5 + ["scenario:status:500"]:
        body = {"model": "gpt-test", "messages": [{"role": "user", "content": content}]}
        statuses.append(
            httpx.post(gw.base_url + "/chat/completions", json=body, headers=headers, timeout=30).status_code
        )
    assert statuses == [200] * 5 + [502]
    return {"group": group, "key": key}


def test_timeseries_and_summary_count_the_requests_made(gw: GatewayProcess, traffic: dict[str, Any]) -> None:
    r = api(gw, "timeseries", by="key", since="1h", bucket="1m")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["bucket"] == 60 and len(body["timestamps"]) in (60, 61)
    mine = next(s for s in body["series"] if s["key"] == traffic["key"]["id"])
    assert mine["label"] == f"{traffic['key']['name']} ({traffic['key']['prefix']})"
    assert (sum(mine["requests"]), sum(mine["errors"]), sum(mine["cost_micro"])) == (6, 1, 5 * COST)
    assert sum(mine["prompt_tokens"]) == 5 * 11 and sum(mine["completion_tokens"]) == 5 * 5
    busiest = max(range(len(mine["requests"])), key=lambda i: mine["requests"][i])
    assert mine["latency_p50_ms"][busiest] is not None and mine["ttft_p95_ms"][busiest] is not None

    summary = api(gw, "summary", by="group", since="24h").json()
    row = next(r for r in summary["data"] if r["key"] == traffic["group"])
    assert (row["requests"], row["errors"], row["cost_micro"]) == (6, 1, 5 * COST)
    assert row["cost"] == pytest.approx(5 * COST / 1e6) and row["error_rate"] == pytest.approx(1 / 6)
    top = api(gw, "top", by="group", since="24h", limit=50).json()["data"]
    assert {"key": traffic["group"], "label": traffic["group"], "requests": 6, "cost_micro": 5 * COST,
            "cost": 5 * COST / 1e6} in top  # fmt: skip
    csv = api(gw, "summary", by="group", since="24h", format="csv")
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[0].startswith("key,label,requests,errors,error_rate")
    assert any(line.startswith(f"{traffic['group']},{traffic['group']},6,1,") for line in csv.text.splitlines())


def test_the_request_log_pages_filters_and_shows_attempts(gw: GatewayProcess, traffic: dict[str, Any]) -> None:
    name = traffic["key"]["name"]
    seen: list[str] = []
    cursor = None
    while True:
        r = api(gw, "requests", key=name, limit=4, **({"before": cursor} if cursor else {}))
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [row["request_id"] for row in page["data"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 6
    (failed,) = api(gw, "requests", key=name, status="error").json()["data"]
    assert failed["status"] == 502 and failed["error_code"] == "upstream_error" and failed["cost"] == 0
    detail = api(gw, f"requests/{failed['id']}").json()
    assert detail["request_id"] == failed["request_id"] and detail["audit"] is None  # prompt logging is off
    assert [(a["deployment"], a["ok"]) for a in detail["attempts"]] == [("openai/up", False)]
    upstreams = api(gw, "upstreams", since="1h").json()["data"]
    up = next(u for u in upstreams if u["model"] == "gpt-test")
    assert up["deployment"] == "openai/up" and up["attempts"] >= 6 and up["errors"]["upstream_error"] >= 1


@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        ("timeseries", {"by": "colour"}, "by"),
        ("timeseries", {"bucket": "7m"}, "bucket"),
        ("timeseries", {"since": "last tuesday"}, "since"),
        ("timeseries", {"since": "30d", "bucket": "1m"}, "bucket"),
        ("timeseries", {"top": "0"}, "top"),
        ("summary", {"since": "1h", "until": "2h"}, "since"),
        ("top", {"by": "none"}, "by"),
        ("top", {"by": "model", "limit": "1000"}, "limit"),
        ("requests", {"limit": "0"}, "limit"),
        ("requests", {"before": "yesterday"}, "before"),
        ("requests", {"status": "teapot"}, "status"),
    ],
)
def test_bad_parameters_get_a_400_naming_them(
    gw: GatewayProcess, path: str, params: dict[str, str], param: str
) -> None:
    r = api(gw, path, **params)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_only_the_master_key_reads_analytics(gw: GatewayProcess, traffic: dict[str, Any]) -> None:
    assert api(gw, "timeseries", auth=traffic["key"]["key"]).status_code == 401
    assert httpx.get(gw.url + "/admin/v1/usage/timeseries").status_code == 401
    post = httpx.post(gw.url + "/admin/v1/usage/timeseries", headers={"Authorization": f"Bearer {gw.key}"})
    assert post.status_code == 405
    assert api(gw, "requests/999999999").status_code == 404
    assert api(gw, "nothing").status_code == 404


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_ledger_with_history_is_rolled_into_the_cube_and_reads_the_same(
    kind: str, upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """An existing ledger (an upgrade): the gateway rolls its settled hours at start; the API's figures come from
    the cube for those hours and are exactly the raw rows' figures."""
    now = time.time()
    records = []
    for i in range(48):
        at = now - (3 + i % 24) * HOUR - i
        r = RequestRecord(f"old-{i}", "key_old", "sk-sg-old", "cube-group", "gpt-test", "gpt-test", "openai/up",
                          False, at, status=200 if i % 8 else 500, outcome="completed")  # fmt: skip
        r.usage, r.cost_micro, r.latency_ms, r.ttft_ms = Usage(100, 10), 1_000, 120.0 + i, 40.0
        r.attempts = [Attempt("gpt-test", "openai/up", bool(i % 8), latency_ms=120.0)]
        records.append(r)
    workdir = tmp_path_factory.mktemp("history")
    with database_url(kind, workdir) as url:

        async def write() -> None:
            engine = create_engine(url)
            await migrate(engine)
            store = UsageStore(engine)
            await store.write([usage_row(r) for r in records], [])
            await store.close()
            await engine.dispose()

        async def mark() -> float | None:
            engine = create_engine(url)
            try:
                return await UsageAnalytics(engine).hourly_mark()
            finally:
                await engine.dispose()

        asyncio.run(write())
        with GatewayProcess(config(upstream.url), workdir, {"SLUICEGATE_DATABASE_URL": url}) as g:
            deadline = time.monotonic() + 30
            while (asyncio.run(mark()) or 0) < now - 3 * HOUR and time.monotonic() < deadline:
                time.sleep(0.1)  # the gateway rolls settled hours as it starts
            assert (asyncio.run(mark()) or 0) >= now - 3 * HOUR, "the gateway did not roll the ledger's hours"
            row = next(r for r in api(g, "summary", by="key", since="30d").json()["data"] if r["key"] == "key_old")
            assert (row["requests"], row["errors"], row["cost_micro"]) == (48, 6, 48_000)
            assert 100 <= row["latency_p50_ms"] <= 200  # 120-167 ms: the 100-150 and 150-200 ms buckets
            series = api(g, "timeseries", by="group", since="30d", bucket="1d").json()["series"]
            daily = next(s for s in series if s["key"] == "cube-group")
            assert sum(daily["requests"]) == 48 and sum(daily["errors"]) == 6
            hourly = api(g, "timeseries", by="model", since="2d", bucket="1h").json()
            model = next(s for s in hourly["series"] if s["key"] == "gpt-test")
            per_hour: dict[int, int] = {}
            for r in records:
                per_hour[int(r.started_at // HOUR * HOUR)] = per_hour.get(int(r.started_at // HOUR * HOUR), 0) + 1
            got = {t: n for t, n in zip(hourly["timestamps"], model["requests"], strict=True) if n}
            assert got == per_hour


def test_a_request_shows_its_prompt_only_when_prompt_logging_is_on(
    gw: GatewayProcess, traffic: dict[str, Any], upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Off (the module's gateway): neither the API nor the console page holds the prompt's text.
    row = api(gw, "requests", key=traffic["key"]["name"], limit=1).json()["data"][0]
    assert api(gw, f"requests/{row['id']}").json()["audit"] is None
    page = login(gw).get(f"/ui/requests/{row['id']}").text
    assert "Prompt logging is off" in page and "scenario:status:500" not in page and '"hi"' not in page

    logging_on = {**config(upstream.url), "metering": {"audit_prompts": True}}
    with console_gateway(logging_on, tmp_path_factory.mktemp("prompts")) as g:
        body = {"model": "gpt-test", "messages": [{"role": "user", "content": "the plan for bluebird"}],
                "metadata": {"ticket": "T-42"}}  # fmt: skip
        r = httpx.post(g.base_url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {g.key}"})
        assert r.status_code == 200
        (row,) = api(g, "requests", limit=5).json()["data"]
        detail = api(g, f"requests/{row['id']}").json()
        assert "the plan for bluebird" in detail["audit"]["payload"]["prompt"]
        page = login(g).get(f"/ui/requests/{row['id']}").text
        assert "the plan for bluebird" in page and "ticket=T-42" in page
