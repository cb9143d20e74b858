"""Budget holds: they expire on their own, settle once, and are let go on every way a request can end."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from sluicegate.config import Deployment, GatewayConfig
from sluicegate.errors import BudgetExceeded, GatewayError, StoreUnavailable
from sluicegate.hooks import BudgetAccount, BudgetHold, Policy, PolicyChain, RequestContext
from sluicegate.policies.budgets import BudgetPolicy, LocalLedger, RedisLedger
from sluicegate.providers.base import StreamStats
from sluicegate.providers.registry import PROVIDERS
from sluicegate.routing.router import Router
from sluicegate.service import ChatService
from sluicegate.tokens import TokenCounter
from sluicegate.types import ChatChunk, ChatRequest, ChoiceDelta, Completion, Limits, Principal
from sluicegate.wire.openai_chat.decode import parse_chat_request

REDIS_URL = os.environ.get("SLUICEGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


async def nothing_spent(scope: str, ident: str, start: float) -> int:
    return 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["local", "redis"])
async def ledger(request: pytest.FixtureRequest) -> AsyncIterator[tuple[LocalLedger | RedisLedger, Any]]:
    """A ledger and a coroutine function that moves its clock past a hold's expiry."""
    if request.param == "local":
        clock = Clock()

        async def advance(seconds: float) -> None:
            clock.now += seconds

        yield LocalLedger(nothing_spent, clock), advance
        return
    client = aioredis.from_url(REDIS_URL)
    try:
        # Redis keeps its own clock (TIME): its holds expire in real time.
        yield RedisLedger(client, nothing_spent, prefix=f"test:{uuid.uuid4().hex}:"), asyncio.sleep
    finally:
        await client.aclose()


def account(limit: int) -> BudgetAccount:
    return BudgetAccount("group", "g-" + uuid.uuid4().hex[:6], "total", 0.0, float("inf"), limit)


async def test_an_unsettled_hold_expires_and_settling_it_late_subtracts_nothing(
    ledger: tuple[LocalLedger | RedisLedger, Any],
) -> None:
    books, advance = ledger
    a = account(1_000)
    forgotten = BudgetHold([a], 1_000, 0.2)  # its process died before settling
    assert await books.reserve(forgotten) is None
    assert await books.reserve(BudgetHold([a], 1_000, 60)) == a  # held
    await advance(0.3)
    live = BudgetHold([a], 1_000, 60)
    assert await books.reserve(live) is None  # the expired hold was let go
    await books.settle(forgotten, 300)  # a late settle books its cost, and does not let go of `live`'s room
    assert await books.reserve(BudgetHold([a], 1, 60)) == a
    await books.settle(live, 0)
    assert await books.reserve(BudgetHold([a], 701, 60)) == a  # 300 spent
    assert await books.reserve(BudgetHold([a], 700, 60)) is None


async def test_a_hold_the_ledger_never_took_settles_without_releasing_others(
    ledger: tuple[LocalLedger | RedisLedger, Any],
) -> None:
    books, _ = ledger
    a = account(1_000)
    taken = BudgetHold([a], 600, 60)
    assert await books.reserve(taken) is None
    refused = BudgetHold([a], 600, 60)
    assert await books.reserve(refused) == a
    await books.settle(refused, 0)  # e.g. a reservation cancelled before the ledger answered
    assert await books.reserve(BudgetHold([a], 401, 60)) == a  # `taken` still holds its 600


async def test_redis_heals_books_whose_reservations_were_leaked_by_an_older_version() -> None:
    client = aioredis.from_url(REDIS_URL)
    prefix = f"test:{uuid.uuid4().hex}:"
    try:
        books = RedisLedger(client, nothing_spent, prefix=prefix)
        a = account(1_000_000)
        # What issue 23 found: `reserved` left on the books, with no record of whose it is.
        await client.hset(prefix + a.key, mapping={"spent": 0, "reserved": 996_000})
        await client.expire(prefix + a.key, 3600)
        assert await books.reserve(BudgetHold([a], 10_000, 60)) is None
        assert int(await client.hget(prefix + a.key, "reserved")) == 10_000
        assert 0 < await client.pttl(prefix + a.key + ":holds") <= 3600_000  # no older than its books
    finally:
        await client.aclose()


# -- the service: every way a request can end lets its hold go ---------------------------------------------------


class Upstream:
    """A provider whose behaviour each test sets: raise, hang, or answer."""

    def __init__(self) -> None:
        self.failure: BaseException | None = None
        self.fail_mid_stream = False  # the failure comes after the first chunk, not before it
        self.entered = asyncio.Event()
        self.hang = False
        self.closed = False

    async def complete(self, request: ChatRequest, deployment: Deployment, request_id: str) -> Completion:
        self.entered.set()
        if self.hang:
            await asyncio.Event().wait()
        if self.failure is not None:
            raise self.failure
        return Completion([{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                          None)  # fmt: skip

    async def stream(
        self, request: ChatRequest, deployment: Deployment, request_id: str, stats: StreamStats
    ) -> AsyncIterator[list[ChatChunk]]:
        self.entered.set()
        try:
            if self.failure is not None and not self.fail_mid_stream:
                raise self.failure
            yield [ChatChunk([ChoiceDelta(0, {"role": "assistant", "content": ""})])]
            if self.failure is not None:
                raise self.failure
            yield [ChatChunk([ChoiceDelta(0, {"content": "hi"}, "stop")])]
        finally:
            self.closed = True

    async def aclose(self) -> None:
        return None


class Explodes(Policy):
    name = "explodes"

    async def before(self, ctx: RequestContext) -> None:
        raise RuntimeError("a bug in a later policy")


CONFIG = GatewayConfig.model_validate({
    "models": [{"id": "m", "deployments": [{"provider": "openai", "model": "u", "api_base": "http://127.0.0.1:9"}],
                "price": {"input": 1000, "output": 1000}}],
    "routing": {"retry": {"max_attempts_per_deployment": 1}, "circuit": {"enabled": False}},
})  # fmt: skip


def service(upstream: Upstream, ledger: LocalLedger, *extra: Policy) -> ChatService:
    tokens = TokenCounter()
    chain = PolicyChain([BudgetPolicy(ledger, tokens, time.time), *extra])
    return ChatService(CONFIG, Router(CONFIG, {"openai": upstream}, PROVIDERS), tokens, chain)


BUDGET = 1_000_000


def context(stream: bool = False) -> RequestContext:
    principal = Principal("k1", "sk-sg-k1", "k1", group="g", models=("*",), group_limits=Limits(budget_micro=BUDGET))
    raw = b'{"model":"m","max_tokens":900,"messages":[{"role":"user","content":"hi"}],"stream":%s}' % (
        b"true" if stream else b"false"
    )
    return RequestContext("req-" + uuid.uuid4().hex[:6], principal, parse_chat_request(raw), CONFIG.models[0])


async def assert_released(ledger: LocalLedger) -> None:
    """Nothing is held: all that is left of the budget (what was not spent) can be reserved again."""
    spent = ledger._books["budget:group:g:total"][0]
    rest = BudgetHold([BudgetAccount("group", "g", "total", 0.0, float("inf"), BUDGET)], BUDGET - spent, 60)
    assert await ledger.reserve(rest) is None


async def test_an_unexpected_exception_in_the_upstream_call_lets_the_hold_go() -> None:
    upstream, ledger = Upstream(), LocalLedger(nothing_spent)
    upstream.failure = RuntimeError("a bug in an adapter")
    chat = service(upstream, ledger)
    with pytest.raises(RuntimeError):
        await chat.complete(context())
    with pytest.raises(RuntimeError):
        await chat.open_stream(context(stream=True))
    await assert_released(ledger)


async def test_a_later_policy_failing_lets_the_hold_go() -> None:
    ledger = LocalLedger(nothing_spent)
    with pytest.raises(RuntimeError):
        await service(Upstream(), ledger, Explodes()).complete(context())
    await assert_released(ledger)


async def test_a_cancelled_request_lets_the_hold_go() -> None:
    upstream, ledger = Upstream(), LocalLedger(nothing_spent)
    upstream.hang = True
    task = asyncio.create_task(service(upstream, ledger).complete(context()))
    await upstream.entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_released(ledger)


async def test_a_stream_the_edge_never_relays_is_closed_and_lets_the_hold_go() -> None:
    upstream, ledger = Upstream(), LocalLedger(nothing_spent)
    stream = await service(upstream, ledger).open_stream(context(stream=True))
    await stream.close()  # e.g. the client left while the status line was being written
    assert upstream.closed and stream.outcome == "cancelled"
    await assert_released(ledger)
    await stream.close()  # idempotent


async def test_a_failure_mid_stream_lets_the_hold_go() -> None:
    upstream, ledger = Upstream(), LocalLedger(nothing_spent)
    upstream.failure = RuntimeError("a bug while relaying")
    upstream.fail_mid_stream = True
    stream = await service(upstream, ledger).open_stream(context(stream=True))
    rest = stream.rest()
    with pytest.raises(RuntimeError):
        async for _ in rest:
            pass
    assert stream.outcome == "interrupted"
    await assert_released(ledger)


async def test_a_ledger_that_fails_refuses_with_503_and_holds_nothing() -> None:
    class Broken(LocalLedger):
        async def reserve(self, hold: BudgetHold) -> BudgetAccount | None:
            raise ConnectionError("redis went away")

    with pytest.raises(StoreUnavailable):
        await service(Upstream(), Broken(nothing_spent)).complete(context())


async def test_budget_refusal_is_a_gateway_error_and_holds_nothing() -> None:
    ledger = LocalLedger(nothing_spent)
    ctx = context()
    ctx.request.max_tokens = 10**6  # far over the budget
    with pytest.raises(BudgetExceeded) as info:
        await service(Upstream(), ledger).complete(ctx)
    assert isinstance(info.value, GatewayError) and ctx.reservation is None
    await assert_released(ledger)


async def test_the_local_ledger_forgets_a_settled_hold_at_once() -> None:
    # Memory follows the requests in flight, not the request rate times the holds' lifetime.
    ledger = LocalLedger(nothing_spent)
    a = account(10**9)
    for _ in range(1_000):
        hold = BudgetHold([a], 10, 600)
        assert await ledger.reserve(hold) is None
        await ledger.settle(hold, 5)
    assert sum(len(live) for live in ledger._holds.values()) == 0


async def test_a_request_without_a_reservation_gets_no_output_cap() -> None:
    policy = BudgetPolicy(LocalLedger(nothing_spent), TokenCounter(), time.time)
    ctx = context(stream=True)
    assert ctx.reservation is None and policy.stream_filter(ctx) is None
    plain = Completion([{"index": 0, "message": {"role": "assistant", "content": "x" * 10_000}}], None)
    assert policy.filter_completion(ctx, plain) is plain
