"""Costs by hand, GCRA admission, budgets: in-process and in the machine's Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from sluicegate.config import Price
from sluicegate.errors import RateLimited
from sluicegate.hooks import BudgetAccount, BudgetHold
from sluicegate.policies.budgets import LocalLedger, RedisLedger, period_bounds
from sluicegate.policies.ratelimit import Bucket, LocalLimiter, RedisLimiter, duration
from sluicegate.pricing import ceil_micro, cost_micro
from sluicegate.types import Usage
from tests.support.services import redis_url


@pytest.mark.parametrize(
    ("usage", "price", "expected"),
    [
        # 1,000 prompt tokens at 3 credits/M = 3,000 micro; 500 completion at 15/M = 7,500 micro.
        (Usage(prompt_tokens=1000, completion_tokens=500), Price(input=3, output=15), 10_500),
        # 800 of 1,000 prompt tokens cached at 0.3/M: 200*3 + 800*0.3 + 100*15 = 600 + 240 + 1,500.
        (
            Usage(prompt_tokens=1000, cached_tokens=800, completion_tokens=100),
            Price(input=3, cached_input=0.3, output=15),
            2340,
        ),
        # No cached price: cached tokens cost the input price.
        (Usage(prompt_tokens=10, cached_tokens=10, completion_tokens=0), Price(input=2, output=0), 20),
        # 7 tokens at 0.15/M = 1.05 micro; 3 at 0.6/M = 1.8 micro; total 2.85 rounds half-up once to 3.
        (Usage(prompt_tokens=7, completion_tokens=3), Price(input=0.15, output=0.6), 3),
        # Free model.
        (Usage(prompt_tokens=10**6, completion_tokens=10**6), Price(), 0),
    ],
)
def test_cost_in_integer_micro_credits(usage: Usage, price: Price, expected: int) -> None:
    cost = cost_micro(usage, price)
    assert cost == expected and isinstance(cost, int)


PRICES = st.sampled_from([0.0, 0.075, 0.1, 0.15, 0.3, 0.6, 1.25, 2.5, 3.0, 15.0, 1e-7, 123.456789])


@given(
    prompt=st.integers(0, 10**7),
    cached=st.integers(0, 10**7),
    completion=st.integers(0, 10**6),
    prices=st.tuples(PRICES, st.none() | PRICES, PRICES),
)
def test_integer_cost_equals_exact_decimal_cost(
    prompt: int, cached: int, completion: int, prices: tuple[float, float | None, float]
) -> None:
    """The integer arithmetic gives what exact decimal arithmetic on the prices as written gives."""
    price = Price(input=prices[0], cached_input=prices[1], output=prices[2])
    usage = Usage(prompt_tokens=prompt, cached_tokens=cached, completion_tokens=completion)
    hit = min(cached, prompt)
    exact = (
        Decimal(prompt - hit) * Decimal(str(price.input))
        + Decimal(hit) * Decimal(str(prices[1] if prices[1] is not None else prices[0]))
        + Decimal(completion) * Decimal(str(price.output))
    )
    assert cost_micro(usage, price) == int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    # A budget reservation never under-estimates: it rounds up.
    assert ceil_micro(prompt, prices[0]) == int(
        (Decimal(prompt) * Decimal(str(prices[0]))).to_integral_value(rounding=ROUND_CEILING)
    )


def test_duration_format() -> None:
    assert [duration(x) for x in (0.0, 0.25, 1.0, 1.2, 59.5, 60.0, 361)] == [
        "0ms",
        "250ms",
        "1s",
        "2s",
        "1m0s",
        "1m0s",
        "6m1s",
    ]


def test_period_bounds_utc() -> None:
    ts = 1795812000.0  # 2026-11-27 17:20 UTC
    assert period_bounds("day", ts)[0] == "2026-11-27"
    pid, start, end = period_bounds("month", ts)
    assert pid == "2026-11" and end - start == 30 * 86400
    assert period_bounds("total", ts)[:2] == ("total", 0.0)


@pytest.fixture(params=["local", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[LocalLimiter | RedisLimiter]:
    if request.param == "local":
        yield LocalLimiter()
        return
    client = aioredis.from_url(redis_url())
    try:
        yield RedisLimiter(client, prefix=f"test:{uuid.uuid4().hex}:")
    finally:
        await client.aclose()


async def test_gcra_admits_exactly_the_limit_in_a_burst(limiter: LocalLimiter | RedisLimiter) -> None:
    now = time.time()
    bucket = [Bucket("rl:key:k:requests", 60, 1, "requests")]
    verdicts = [await limiter.take(bucket, now) for _ in range(100)]
    allowed = [v for v in verdicts if v.allowed]
    assert len(allowed) == 60
    assert [v.remaining[0] for v in allowed][:3] == [59, 58, 57] and allowed[-1].remaining[0] == 0
    refused = verdicts[60]
    assert not refused.allowed and 0 < refused.retry_after <= 1.05


async def test_gcra_all_or_nothing_across_buckets(limiter: LocalLimiter | RedisLimiter) -> None:
    now = time.time()
    key = Bucket("rl:key:a:requests", 100, 1, "requests")
    group = Bucket("rl:group:g:requests", 2, 1, "requests")
    assert (await limiter.take([key, group], now)).allowed
    assert (await limiter.take([key, group], now)).allowed
    third = await limiter.take([key, group], now)
    assert not third.allowed
    # The refused request charged nothing: the key bucket still has 98 left.
    assert (await limiter.take([key], now)).remaining == [97]


async def test_local_gcra_has_no_double_burst_at_window_edges() -> None:
    limiter = LocalLimiter()
    bucket = [Bucket("b", 60, 1, "requests")]
    t = 1000.0
    # A fixed one-minute window would admit 60 just before its edge and 60 more just after: 120 in one second.
    before_edge = sum([(await limiter.take(bucket, t + 59.5)).allowed for _ in range(100)])
    after_edge = sum([(await limiter.take(bucket, t + 60.5)).allowed for _ in range(100)])
    assert (before_edge, after_edge) == (60, 1)  # GCRA refills at one per second, never a second burst
    # The steady rate is the limit: one more per second after that.
    assert sum([(await limiter.take(bucket, t + 62.5)).allowed for _ in range(100)]) == 2


async def test_policy_headers_follow_the_tightest_bucket_of_each_kind(limiter: LocalLimiter | RedisLimiter) -> None:
    from types import SimpleNamespace

    from sluicegate.policies.ratelimit import RateLimitPolicy
    from sluicegate.tokens import TokenCounter
    from sluicegate.types import Limits, Principal
    from sluicegate.wire.openai_chat.decode import parse_chat_request

    ident = uuid.uuid4().hex[:8]  # fresh buckets in the shared Redis
    principal = Principal(
        key_id=f"k{ident}", key_prefix="sk", name="n", group=f"g{ident}",
        key_limits=Limits(rpm=100, tpm=1000), group_limits=Limits(rpm=3),
    )  # fmt: skip
    policy = RateLimitPolicy(limiter, TokenCounter())
    request = parse_chat_request(b'{"model": "m", "messages": [{"role": "user", "content": "hello"}]}')
    seen = []
    started = time.monotonic()
    for _ in range(3):
        ctx = SimpleNamespace(principal=principal, request=request, headers={}, prompt_tokens=None)
        await policy.before(ctx)  # type: ignore[arg-type]
        # The group's 3 rpm is tighter than the key's 100; tokens have only the key's bucket.
        assert ctx.headers["x-ratelimit-limit-requests"] == "3"
        assert ctx.headers["x-ratelimit-limit-tokens"] == "1000"
        seen.append((ctx.headers["x-ratelimit-remaining-requests"], ctx.headers["x-ratelimit-remaining-tokens"]))
        assert ctx.prompt_tokens is not None and ctx.prompt_tokens > 0
        # The completion is charged after the call: 100 tokens.
        await policy.after(ctx, SimpleNamespace(usage=Usage(prompt_tokens=1, completion_tokens=100)))  # type: ignore[arg-type]
    drained = int((time.monotonic() - started) / 0.06)  # 1,000 tpm refill one token per 60 ms meanwhile
    prompt = ctx.prompt_tokens
    assert [r for r, _ in seen] == ["2", "1", "0"]
    # Each request charged its prompt before, the previous ones also their 100 completion tokens after. The
    # first is exact (a fresh bucket); the later ones may have refilled by what the elapsed time drained.
    tokens_left = [int(t) for _, t in seen]
    assert tokens_left[0] == 1000 - prompt
    assert 0 <= tokens_left[1] - (1000 - 2 * prompt - 100) <= drained
    assert 0 <= tokens_left[2] - (1000 - 3 * prompt - 200) <= drained
    refused = SimpleNamespace(principal=principal, request=request, headers={}, prompt_tokens=None)
    with pytest.raises(RateLimited) as info:
        await policy.before(refused)  # type: ignore[arg-type]
    assert info.value.headers is not None and info.value.headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(info.value.headers["retry-after"]) <= 21


@pytest.fixture(params=["local", "redis"])
async def ledger(request: pytest.FixtureRequest) -> AsyncIterator[LocalLedger | RedisLedger]:
    async def load(scope: str, ident: str, start: float) -> int:
        return 1_000 if ident == "preloaded" else 0

    if request.param == "local":
        yield LocalLedger(load)
        return
    client = aioredis.from_url(redis_url())
    try:
        yield RedisLedger(client, load, prefix=f"test:{uuid.uuid4().hex}:")
    finally:
        await client.aclose()


async def test_concurrent_reservations_never_overshoot(ledger: LocalLedger | RedisLedger) -> None:
    account = BudgetAccount("key", "k1", "total", 0.0, float("inf"), 10_000)
    holds = [BudgetHold([account], 1_000, 60) for _ in range(50)]
    results = await asyncio.gather(*(ledger.reserve(h) for h in holds))
    admitted = [h for h, r in zip(holds, results, strict=True) if r is None]
    assert len(admitted) == 10
    # Each finished call costs less than it reserved: the room comes back.
    for hold in admitted[:5]:
        await ledger.settle(hold, 400)
    assert (
        await ledger.reserve(BudgetHold([account], 1_000, 60)) is None
    )  # 5*400 spent + 5*1000 reserved + 1000 <= 10000
    again = await asyncio.gather(*(ledger.reserve(BudgetHold([account], 1_000, 60)) for _ in range(10)))
    assert sum(r is None for r in again) == 2  # 2,000 + 6,000 reserved + 2 * 1,000 = 10,000


async def test_ledger_loads_prior_spend_and_refuses_group_or_key(ledger: LocalLedger | RedisLedger) -> None:
    key = BudgetAccount("key", "preloaded", "total", 0.0, float("inf"), 1_500)
    group = BudgetAccount("group", "g", "total", 0.0, float("inf"), 10_000)
    refused = await ledger.reserve(BudgetHold([key, group], 600, 60))
    assert refused == key  # 1,000 already spent before this process started
    assert await ledger.reserve(BudgetHold([key, group], 500, 60)) is None
