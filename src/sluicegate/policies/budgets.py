"""Credit budgets per key and per group, total or per calendar period (UTC day or month).

Before the call the request reserves an estimate (prompt tokens at the input price plus ``max_tokens`` at
the output price; the deployment's default when the client set none) against every budget that applies,
all-or-nothing and atomically: in-process in one event-loop step, or by one Redis script across replicas.
It is admitted only if ``spent + reserved + estimate <= budget``, so concurrent requests can never
overshoot by more than what the estimates failed to cover. After the call the reservation is replaced
by the real cost, taken from the same record the ledger stores. Spend is initialised from the store
(rollups + raw usage of the period), so a restart or a flushed Redis loses nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import BudgetExceeded, StoreUnavailable
from ..metering.pricing import ceil_micro
from ..metering.tokens import TokenCounter
from ..types import Limits, Principal
from .base import Policy

if TYPE_CHECKING:
    from ..metering.record import RequestRecord
    from ..service import RequestContext

log = logging.getLogger("sluicegate.budgets")

SpentLoader = Callable[[str, str, float], Awaitable[int]]  # (scope, ident, period start) -> micro-credits


def period_bounds(period: str, now: float) -> tuple[str, float, float]:
    """(period id, start epoch, end epoch) of the calendar period containing ``now`` (UTC)."""
    t = dt.datetime.fromtimestamp(now, dt.UTC)
    if period == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("%Y-%m-%d"), start.timestamp(), (start + dt.timedelta(days=1)).timestamp()
    if period == "month":
        start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = (start + dt.timedelta(days=32)).replace(day=1)
        return start.strftime("%Y-%m"), start.timestamp(), nxt.timestamp()
    return "total", 0.0, float("inf")


@dataclass(frozen=True, slots=True)
class Account:
    scope: str  # key | group
    ident: str
    period_id: str
    start: float
    end: float
    limit: int
    key: str = field(init=False)  # "budget:<scope>:<ident>:<period>", the ledger's name for these books

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"budget:{self.scope}:{self.ident}:{self.period_id}")


class Ledger(Protocol):
    async def reserve(self, accounts: list[Account], amount: int) -> Account | None:
        """Reserve ``amount`` on all accounts, or none; return the account that refused, if any."""
        ...

    async def settle(self, accounts: list[Account], reserved: int, actual: int) -> None: ...


class LocalLedger:
    def __init__(self, load_spent: SpentLoader) -> None:
        self._load = load_spent
        self._books: dict[str, list[int]] = {}  # key -> [spent, reserved]

    async def reserve(self, accounts: list[Account], amount: int) -> Account | None:
        books = []
        for account in accounts:
            book = self._books.get(account.key)
            if book is None:  # first use of these books in this process: spend so far comes from the store
                spent = await self._load(account.scope, account.ident, account.start)
                book = self._books.setdefault(account.key, [spent, 0])
            books.append(book)
        # No await from here on: check-and-reserve is atomic within the event loop.
        for account, book in zip(accounts, books, strict=True):
            if book[0] + book[1] + amount > account.limit:
                return account
        for book in books:
            book[1] += amount
        return None

    async def settle(self, accounts: list[Account], reserved: int, actual: int) -> None:
        for account in accounts:
            book = self._books.get(account.key)
            if book is not None:
                book[0] += actual
                book[1] -= reserved


_RESERVE = """
local amount = tonumber(ARGV[1])
for i = 1, #KEYS do
  local spent = redis.call('HGET', KEYS[i], 'spent')
  if not spent then return {-1, i} end
  local reserved = tonumber(redis.call('HGET', KEYS[i], 'reserved') or '0')
  if tonumber(spent) + reserved + amount > tonumber(ARGV[1 + i]) then return {0, i} end
end
for i = 1, #KEYS do redis.call('HINCRBY', KEYS[i], 'reserved', amount) end
return {1, 0}
"""


class RedisLedger:
    """The same books in Redis hashes, shared by every process and replica."""

    def __init__(self, redis: Any, load_spent: SpentLoader, prefix: str = "sluicegate:") -> None:
        self._redis = redis
        self._load = load_spent
        self._prefix = prefix
        self._reserve = redis.register_script(_RESERVE)

    async def reserve(self, accounts: list[Account], amount: int) -> Account | None:
        keys = [self._prefix + a.key for a in accounts]
        for _ in range(3):
            status, index = await self._reserve(keys=keys, args=[amount, *(a.limit for a in accounts)])
            if int(status) == 1:
                return None
            account = accounts[int(index) - 1]
            if int(status) == 0:
                return account
            # Not in Redis yet (first use, or Redis lost it): load the period's spend from the store.
            spent = await self._load(account.scope, account.ident, account.start)
            key = self._prefix + account.key
            if await self._redis.hsetnx(key, "spent", spent):
                ttl = 86400 * 40 if account.end == float("inf") else int(account.end - account.start) + 86400
                await self._redis.expire(key, ttl)
        raise StoreUnavailable("The budget ledger could not be initialised; try again shortly.")

    async def settle(self, accounts: list[Account], reserved: int, actual: int) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            for a in accounts:
                pipe.hincrby(self._prefix + a.key, "reserved", -reserved)
                pipe.hincrby(self._prefix + a.key, "spent", actual)
            await pipe.execute()


class BudgetPolicy(Policy):
    name = "budget"

    def __init__(self, ledger: Ledger, tokens: TokenCounter, clock: Callable[[], float]) -> None:
        self._ledger = ledger
        self._tokens = tokens
        self._clock = clock
        # Per principal (the authenticator's cached object): its accounts and when their period ends.
        self._cache: dict[int, tuple[Principal, list[Account], float]] = {}

    def _accounts(self, ctx: RequestContext) -> list[Account]:
        p = ctx.principal
        if not (p.key_limits.budget_micro is not None or p.group_limits.budget_micro is not None):
            return []
        now = self._clock()
        hit = self._cache.get(id(p))
        if hit is not None and hit[0] is p and now < hit[2]:
            return hit[1]
        out = []
        for scope, ident, limits in (("key", p.key_id, p.key_limits), ("group", p.group, p.group_limits)):
            if ident is not None and limits.budget_micro is not None:
                out.append(_account(scope, ident, limits, now))
        if len(self._cache) > 10_000:  # principals are replaced on every cache refresh: forget the old ones
            self._cache.clear()
        self._cache[id(p)] = (p, out, min((a.end for a in out), default=float("inf")))
        return out

    async def before(self, ctx: RequestContext) -> None:
        accounts = self._accounts(ctx)
        if not accounts:
            return
        model = ctx.model
        assert model is not None
        if ctx.prompt_estimate is None:
            ctx.prompt_estimate = await self._tokens.count_messages_async(ctx.request.messages)
        max_out = ctx.request.max_tokens or model.deployments[0].default_max_tokens
        estimate = ceil_micro(ctx.prompt_estimate, model.price.input) + ceil_micro(
            max_out * max(1, ctx.request.n), model.price.output
        )
        refused = await self._ledger.reserve(accounts, estimate)
        if refused is not None:
            whose = "this key's" if refused.scope == "key" else f"group {refused.ident!r}'s"
            raise BudgetExceeded(
                f"The request would exceed {whose} {_period_name(refused.period_id)} credit budget"
                " (the estimate reserves the prompt plus max_tokens)."
            )
        ctx.budget_hold = (accounts, estimate)

    async def after(self, ctx: RequestContext, record: RequestRecord) -> None:
        hold = ctx.budget_hold
        if hold is None:
            return
        accounts, reserved = hold
        ctx.budget_hold = None
        await self._ledger.settle(accounts, reserved, record.cost_micro)


def _account(scope: str, ident: str, limits: Limits, now: float) -> Account:
    period_id, start, end = period_bounds(limits.budget_period, now)
    assert limits.budget_micro is not None
    return Account(scope, ident, period_id, start, end, limits.budget_micro)


def _period_name(period_id: str) -> str:
    if period_id == "total":
        return "total"
    return "daily" if len(period_id) == 10 else "monthly"
