"""Budgets that cannot be locked or overrun (issue 23 items 1 and 5), through real gateway processes.

Each scenario runs on one gateway over SQLite and on two gateways sharing PostgreSQL and Redis; requests go to
both of the pair, so a reservation taken by one process must be seen, and let go, by the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from sluicegate.tokens import TokenCounter
from tests.conftest import TEST_TIMEOUTS
from tests.e2e.test_accounting import records
from tests.fakes.openai import PROMPT_TOKENS, FakeOpenAI
from tests.support.databases import database_url
from tests.support.gateway import GatewayProcess

REDIS_URL = os.environ.get("SLUICEGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")
PRICE = {"input": 1000, "output": 2000}  # credits per million tokens: 1,000 / 2,000 micro-credits per token
# cl100k counts this prompt (with the chat framing) as 11 tokens, the fake reports 11: the reservation's prompt
# part is then exact, and what these tests measure is the completion side alone.
PROMPT = "please answer in one word"


def config(upstream_url: str, **timeouts: float) -> dict[str, Any]:
    dep = {
        "provider": "openai",
        "model": "up",
        "api_base": upstream_url,
        "api_key": "sk-up",
        "timeouts": {**TEST_TIMEOUTS, **timeouts},
    }
    return {
        "models": [{"id": "metered", "deployments": [dep], "price": PRICE}],
        "server": {"tail_grace": 0.5},
        "routing": {"retry": {"max_attempts_per_deployment": 1, "max_retry_time": 1}, "circuit": {"enabled": False}},
        "limits": {"budget_hold_grace": 1},
    }


@pytest.fixture(scope="module")
def single(upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[GatewayProcess]]:
    with GatewayProcess(config(upstream.url), tmp_path_factory.mktemp("budget-sqlite")) as gw:
        yield [gw]


def start_pair(cfg: dict[str, Any], workdir: Path, url: str) -> list[GatewayProcess]:
    env = {"SLUICEGATE_DATABASE_URL": url, "SLUICEGATE_REDIS_URL": REDIS_URL}
    procs: list[GatewayProcess] = []
    try:
        for i in range(2):
            wd = workdir / f"r{i}"
            wd.mkdir()
            procs.append(GatewayProcess(cfg, wd, env).start())
    except BaseException:
        for p in procs:
            p.stop()
        raise
    return procs


@pytest.fixture(scope="module")
def pair(upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[GatewayProcess]]:
    workdir = tmp_path_factory.mktemp("budget-pair")
    with database_url("postgres", workdir) as url:
        procs = start_pair(config(upstream.url), workdir, url)
        try:
            yield procs
        finally:
            for p in procs:
                p.stop()


@pytest.fixture(params=["sqlite", "postgres+redis"])
def gateways(request: pytest.FixtureRequest) -> list[GatewayProcess]:
    return list(request.getfixturevalue("single" if request.param == "sqlite" else "pair"))


def admin(gw: GatewayProcess, method: str, path: str, body: Any = None) -> Any:
    r = httpx.request(method, gw.url + "/admin/v1" + path, json=body, headers={"Authorization": f"Bearer {gw.key}"})
    assert r.status_code < 300, r.text
    return r.json()


def group_with_budget(gw: GatewayProcess, budget_micro: int, keys: int = 2) -> tuple[str, list[str]]:
    """A group with a total budget, and keys in it (created after the limit, so every process sees it)."""
    group = "g-" + uuid.uuid4().hex[:8]
    admin(gw, "POST", "/groups", {"name": group, "models": ["*"]})
    admin(gw, "PUT", f"/groups/{group}/limits", {"budget_micro": budget_micro})
    made = [admin(gw, "POST", "/keys", {"name": "k-" + uuid.uuid4().hex[:8], "group": group}) for _ in range(keys)]
    return group, [k["key"] for k in made]


def body(content: str = PROMPT, **extra: Any) -> dict[str, Any]:
    return {"model": "metered", "messages": [{"role": "user", "content": content}], **extra}


def post(gw: GatewayProcess, key: str, payload: dict[str, Any] | bytes) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return httpx.post(gw.base_url + "/chat/completions", content=content, headers=headers, timeout=30)


def reservation(messages: list[dict[str, Any]], max_tokens: int) -> int:
    """What the gateway reserves: its own prompt count at the input price plus max_tokens at the output price."""
    return TokenCounter().count_messages(messages) * PRICE["input"] + max_tokens * PRICE["output"]


def books(group: str) -> dict[str, int]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        raw = client.hgetall(f"sluicegate:budget:group:{group}:total")
        holds = client.zcard(f"sluicegate:budget:group:{group}:total:holds")
    finally:
        client.close()
    return {"spent": 0, "reserved": 0} | {k.decode(): int(v) for k, v in raw.items()} | {"holds": holds}


def database(gws: list[GatewayProcess]) -> str | None:
    return gws[0].env.get("SLUICEGATE_DATABASE_URL")


# -- item 1: a failed request leaves the budget exactly as it was -------------------------------------------------


def nested(depth: int) -> bytes:
    """A chat body whose first message's content part carries ``depth`` nested arrays (beside a valid text)."""
    part = b'{"type":"text","text":"' + PROMPT.encode() + b'","x":' + b"[" * depth + b"]" * depth + b"}"
    return b'{"model":"metered","max_tokens":5,"messages":[{"role":"user","content":[' + part + b"]}]}"


@pytest.mark.parametrize("depth", [300, 60])
def test_deep_nesting_is_refused_before_anything_is_reserved(
    gateways: list[GatewayProcess], fake: FakeOpenAI, depth: int
) -> None:
    # The follow-up request reserves exactly the whole budget: it is admitted only if nothing was left behind.
    full = reservation([{"role": "user", "content": PROMPT}], 5)
    group, (k1, k2) = group_with_budget(gateways[0], full)
    refused = post(gateways[0], k1, nested(depth))
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_body", "messages")
    assert "64 levels" in error["message"]
    if len(gateways) == 2:
        assert books(group) == {"spent": 0, "reserved": 0, "holds": 0}
    assert not [r for r in fake.requests if b'"x":[[' in r.raw_body], "a refused body reached the upstream"
    follow_up = post(gateways[-1], k2, body(max_tokens=5))
    assert follow_up.status_code == 200, follow_up.text
    assert post(gateways[0], k1, body(max_tokens=5)).json()["error"]["code"] == "budget_exceeded"  # it was exact
    rids = [refused.headers["x-request-id"], follow_up.headers["x-request-id"]]
    got = records(gateways[0], rids, database=database(gateways))
    assert rids[0] not in got  # refused by the decoder, before the ledger: nothing to record
    assert got[rids[1]]["cost_micro"] == PROMPT_TOKENS * 1000 + 5 * 2000


def test_an_unexpected_error_after_the_reservation_lets_it_go(gateways: list[GatewayProcess], fake: FakeOpenAI) -> None:
    # The upstream's first content chunk is nested 300 levels: the gateway parses it but cannot write it to the
    # client, an internal error raised after the budget was reserved (here, while the stream opens).
    content = PROMPT + " scenario:nested_delta:300"
    full = reservation([{"role": "user", "content": content}], 5)
    group, (k1, k2) = group_with_budget(gateways[0], full)
    failed = post(gateways[0], k1, body(content, max_tokens=5, stream=True))
    assert failed.status_code == 500 and failed.json()["error"]["code"] == "internal_error"
    if len(gateways) == 2:
        assert books(group) == {"spent": 0, "reserved": 0, "holds": 0}
    # Any reservation at all is refused if the failed one still holds the whole budget.
    again = post(gateways[-1], k2, body(max_tokens=5))
    rid = failed.headers["x-request-id"]
    assert again.status_code == 200, again.text
    rec = records(gateways[0], [rid], database=database(gateways))[rid]
    assert (rec["status"], rec["error_code"], rec["cost_micro"]) == (500, "internal_error", 0)


def test_a_reservation_held_by_a_killed_gateway_expires(upstream: FakeOpenAI, tmp_path: Path) -> None:
    # Reservations expire retry window (1 s) + total timeout (4 s) + grace (1 s) after they are taken.
    with database_url("postgres", tmp_path) as url:
        a, b = start_pair(config(upstream.url, first_token=4, total=4), tmp_path, url)
        try:
            full = reservation([{"role": "user", "content": PROMPT + " scenario:slow_first:8000"}], 5)
            group, (k1, k2) = group_with_budget(a, full)
            marker = uuid.uuid4().hex
            doomed = body(f"{PROMPT} scenario:slow_first:8000", max_tokens=5, user=marker)
            threading.Thread(target=lambda: _swallow(lambda: post(a, k1, doomed)), daemon=True).start()
            upstream.wait_for(lambda rs: [r for r in rs if r.body and r.body.get("user") == marker])
            assert a.proc is not None
            os.kill(a.proc.pid, signal.SIGKILL)  # between reserve and settle
            a.proc.wait()
            # Still held: the group is out of budget for now (the test would prove nothing otherwise).
            assert books(group)["reserved"] == full and books(group)["holds"] == 1
            assert post(b, k2, body(max_tokens=5)).json()["error"]["code"] == "budget_exceeded"

            async def until_admitted() -> httpx.Response:
                async with httpx.AsyncClient(timeout=30) as client:
                    while True:
                        r = await client.post(b.base_url + "/chat/completions", json=body(max_tokens=5),
                                              headers={"Authorization": f"Bearer {k2}"})  # fmt: skip
                        if r.status_code != 403:
                            return r
                        await asyncio.sleep(0.2)

            admitted = asyncio.run(asyncio.wait_for(until_admitted(), 20))
            assert admitted.status_code == 200, admitted.text
            assert books(group) == {"spent": PROMPT_TOKENS * 1000 + 5 * 2000, "reserved": 0, "holds": 0}
        finally:
            a.stop()
            b.stop()


def _swallow(call: Any) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the gateway it talks to is killed
        call()


# -- item 5: an upstream that ignores max_tokens -------------------------------------------------------------------


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(e[6:]) for e in raw.decode().split("\n\n") if e.startswith("data: {")]


def test_an_answer_ends_at_the_tokens_it_reserved(gateways: list[GatewayProcess], fake: FakeOpenAI) -> None:
    _, (key, _) = group_with_budget(gateways[0], 10**9)
    # The fake ignores max_tokens: it always answers "Hello from the fake upstream." (5 chunks, 5 tokens).
    plain = post(gateways[0], key, body(max_tokens=1))
    assert plain.status_code == 200
    choice = plain.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("Hello", "length")
    assert plain.json()["usage"]["completion_tokens"] == 1 and plain.json()["usage"]["prompt_tokens"] == 11
    # A stream is cut at the token and its upstream closed at once: 200 ms between the fake's chunks, so the
    # whole answer would take over a second.
    streamed = post(gateways[-1], key, body(PROMPT + " scenario:slow_chunks:200", max_tokens=2, stream=True,
                                            stream_options={"include_usage": True}))  # fmt: skip
    events = sse_events(streamed.content)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    finishes = [e["choices"][0]["finish_reason"] for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert (text, finishes) == ("Hello from", ["length"]) and streamed.content.endswith(b"data: [DONE]\n\n")
    usage = events[-1]["usage"]
    prompt = TokenCounter().count_messages([{"role": "user", "content": PROMPT + " scenario:slow_chunks:200"}])
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompt, 2)
    up = fake.wait_for(lambda rs: [r for r in rs if r.scenario == "slow_chunks:200" and r.outcome])[0]
    assert up.outcome == "client_closed", "the gateway kept reading an answer it had cut"
    rids = [plain.headers["x-request-id"], streamed.headers["x-request-id"]]
    got = records(gateways[0], rids, database=database(gateways))
    assert got[rids[0]]["completion_tokens"] == 1 and got[rids[0]]["estimated"]
    assert got[rids[1]]["completion_tokens"] == 2 and got[rids[1]]["estimated"]
    assert got[rids[0]]["cost_micro"] == 11 * 1000 + 1 * 2000
    assert got[rids[1]]["cost_micro"] == prompt * 1000 + 2 * 2000


def test_an_answer_under_its_reservation_is_untouched(gateways: list[GatewayProcess], fake: FakeOpenAI) -> None:
    _, (key, _) = group_with_budget(gateways[0], 10**9)
    r = post(gateways[0], key, body(max_tokens=50, stream=True, stream_options={"include_usage": True}))
    events = sse_events(r.content)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == "Hello from the fake upstream." and events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["usage"]["completion_tokens"] == 5  # the upstream's own count, not an estimate
    rid = r.headers["x-request-id"]
    assert not records(gateways[0], [rid], database=database(gateways))[rid]["estimated"]


def test_100_concurrent_requests_to_an_upstream_ignoring_max_tokens_stay_in_budget(
    gateways: list[GatewayProcess], fake: FakeOpenAI
) -> None:
    each = reservation([{"role": "user", "content": PROMPT}], 1)  # 11 * 1,000 + 1 * 2,000 = 13,000
    budget = 10 * each + each // 2
    group, keys = group_with_budget(gateways[0], budget)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as client:
            calls = []
            for i in range(100):
                gw, key = gateways[i % len(gateways)], keys[i % 2]
                payload = body(max_tokens=1, stream=i % 4 < 2)
                calls.append(client.post(gw.base_url + "/chat/completions", json=payload,
                                         headers={"Authorization": f"Bearer {key}"}))  # fmt: skip
            return list(await asyncio.gather(*calls))

    responses = asyncio.run(burst())
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 403]
    assert len(ok) == 10 and len(refused) == 90  # each costs exactly its reservation: none comes back
    assert all(r.json()["error"]["code"] == "budget_exceeded" for r in refused)
    billed = records(gateways[0], [r.headers["x-request-id"] for r in responses], database=database(gateways))
    spent = sum(r["cost_micro"] for r in billed.values())
    assert spent == each * len(ok) <= budget  # the fake's 5 tokens would cost 21,000 each: 47 % over
    if len(gateways) == 2:
        assert books(group) == {"spent": spent, "reserved": 0, "holds": 0}
