"""Credit budgets per key and per group, total or per calendar period (UTC day or month).

Before the call the request reserves an estimate (prompt tokens at the input price plus ``max_tokens`` at
the output price; the deployment's default when the client set none) against every budget that applies,
all-or-nothing and atomically: in-process in one event-loop step, or by one Redis script across replicas.
It is admitted only if ``spent + reserved + estimate <= budget``, so concurrent requests can never
overshoot by more than what the estimates failed to cover. After the call the reservation is replaced
by the real cost, taken from the same record the ledger stores, whatever the outcome (the after-hook runs
on every exit path). A reservation also expires on its own, a margin after the longest the request could
run, so a process that dies before settling cannot lock a budget. On the way back the answer is cut at the
completion tokens the reservation covers (``output_cap``), so an upstream that ignores ``max_tokens`` cannot
spend more than was reserved. Spend is initialised from the store (rollups + raw usage of the period), so a
restart or a flushed Redis loses nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import BudgetExceeded, GatewayError, StoreUnavailable
from ..hooks import BudgetAccount, BudgetHold, Policy, StreamFilter
from ..pricing import ceil_micro
from ..tokens import TokenCounter
from ..types import Completion, Limits, Principal
from .output_cap import OutputCap, cap_completion

if TYPE_CHECKING:
    from ..config import ModelConfig
    from ..hooks import RequestContext
    from ..records import RequestRecord

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


class Ledger(Protocol):
    async def reserve(self, hold: BudgetHold) -> BudgetAccount | None:
        """Reserve ``hold.amount`` on all its accounts, or on none; return the account that refused, if any."""
        ...

    async def settle(self, hold: BudgetHold, actual: int) -> None:
        """Let the hold go (if the ledger still has it) and book ``actual`` as spent."""
        ...


class LocalLedger:
    """The books of one process. They die with it; a hold still expires, as a guard against a path that
    never settles."""

    def __init__(self, load_spent: SpentLoader, clock: Callable[[], float] = time.monotonic) -> None:
        self._load = load_spent
        self._clock = clock
        self._books: dict[str, list[int]] = {}  # key -> [spent, reserved]
        # Live holds per lifetime: one lifetime per model, so each of these is in expiry order and the
        # next to expire is first. A settled hold leaves at once: memory follows the requests in flight.
        self._holds: dict[float, OrderedDict[str, tuple[float, BudgetHold]]] = {}

    async def reserve(self, hold: BudgetHold) -> BudgetAccount | None:
        books = []
        for account in hold.accounts:
            book = self._books.get(account.key)
            if book is None:  # first use of these books in this process: spend so far comes from the store
                spent = await self._load(account.scope, account.ident, account.start)
                book = self._books.setdefault(account.key, [spent, 0])
            books.append(book)
        # No await from here on: check-and-reserve is atomic within the event loop.
        now = self._clock()
        self._expire(now)
        amount = hold.amount
        for account, book in zip(hold.accounts, books, strict=True):
            if book[0] + book[1] + amount > account.limit:
                return account
        for book in books:
            book[1] += amount
        live = self._holds.get(hold.ttl)
        if live is None:
            live = self._holds[hold.ttl] = OrderedDict()
        live[hold.id] = (now + hold.ttl, hold)
        return None

    async def settle(self, hold: BudgetHold, actual: int) -> None:
        live = self._holds.get(hold.ttl)
        held = live is not None and live.pop(hold.id, None) is not None
        for account in hold.accounts:
            book = self._books.get(account.key)
            if book is not None:
                book[0] += actual
                if held:
                    book[1] -= hold.amount

    def _expire(self, now: float) -> None:
        for live in self._holds.values():
            while live:
                hold_id = next(iter(live))
                expiry, hold = live[hold_id]
                if expiry > now:
                    break
                del live[hold_id]
                log.error("budget reservation %s expired unsettled; releasing %d micro-credits", hold_id, hold.amount)
                for account in hold.accounts:
                    book = self._books.get(account.key)
                    if book is not None:
                        book[1] -= hold.amount


# Per account, KEYS holds a pair: the books (hash: spent, reserved) and the holds behind ``reserved`` (sorted
# set: "<amount>:<id>" scored by expiry, Redis's clock). ``reserved`` is always the sum of the live holds:
# expired ones are subtracted (a bounded number per call) before anything is checked, and books without any
# hold have nothing reserved (which also heals books left by versions that had no holds).
_PURGE = """
local function purge(books, holds, now)
  local reserved = tonumber(redis.call('HGET', books, 'reserved') or '0')
  if reserved == 0 then return 0 end
  local before = reserved
  local expired = redis.call('ZRANGEBYSCORE', holds, '-inf', now, 'LIMIT', 0, 1000)
  if #expired > 0 then
    for _, member in ipairs(expired) do reserved = reserved - tonumber(string.match(member, '^%d+')) end
    redis.call('ZREMRANGEBYRANK', holds, 0, #expired - 1)
  end
  if reserved < 0 or redis.call('ZCARD', holds) == 0 then reserved = 0 end
  if reserved ~= before then redis.call('HSET', books, 'reserved', string.format('%d', reserved)) end
  return reserved
end
"""

_RESERVE = (
    _PURGE
    + """
local amount = tonumber(ARGV[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
for i = 1, #KEYS / 2 do
  local books, holds = KEYS[2 * i - 1], KEYS[2 * i]
  local spent = redis.call('HGET', books, 'spent')
  if not spent then return {-1, i} end
  local reserved = purge(books, holds, now)
  if tonumber(spent) + reserved + amount > tonumber(ARGV[3 + i]) then return {0, i} end
end
local expiry = now + tonumber(ARGV[3])
for i = 1, #KEYS / 2 do
  local books, holds = KEYS[2 * i - 1], KEYS[2 * i]
  redis.call('HINCRBY', books, 'reserved', ARGV[1])
  redis.call('ZADD', holds, expiry, ARGV[2])
  local ttl = redis.call('PTTL', books)
  if ttl > 0 then redis.call('PEXPIRE', holds, ttl) end
end
return {1, 0}
"""
)

# ARGV: hold member, its amount, the actual cost. Only a hold still present is subtracted: one that expired was
# subtracted by the purge already. Books that vanished (expired, flushed) are not recreated with a partial
# spend: the next reservation loads the period's spend from the store.
_SETTLE = """
for i = 1, #KEYS / 2 do
  local books, holds = KEYS[2 * i - 1], KEYS[2 * i]
  if redis.call('EXISTS', books) == 1 then
    if redis.call('ZREM', holds, ARGV[1]) == 1 then
      local reserved = tonumber(redis.call('HGET', books, 'reserved') or '0') - tonumber(ARGV[2])
      if reserved < 0 or redis.call('ZCARD', holds) == 0 then reserved = 0 end
      redis.call('HSET', books, 'reserved', string.format('%d', reserved))
    end
    redis.call('HINCRBY', books, 'spent', ARGV[3])
  end
end
"""

# ARGV: the spend loaded from the store, the books' TTL. Holds of books that vanished belong to nobody now.
_OPEN = """
if redis.call('HSETNX', KEYS[1], 'spent', ARGV[1]) == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('DEL', KEYS[2])
end
"""


class RedisLedger:
    """The same books in Redis, shared by every process and replica; each operation is one script."""

    def __init__(self, redis: Any, load_spent: SpentLoader, prefix: str = "sluicegate:") -> None:
        self._redis = redis
        self._load = load_spent
        self._prefix = prefix
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._open = redis.register_script(_OPEN)
        self._settling: set[asyncio.Future[Any]] = set()

    def _keys(self, accounts: list[BudgetAccount]) -> list[str]:
        keys: list[str] = []
        for a in accounts:
            books = self._prefix + a.key
            keys += (books, books + ":holds")
        return keys

    async def reserve(self, hold: BudgetHold) -> BudgetAccount | None:
        accounts = hold.accounts
        keys = self._keys(accounts)
        args = [hold.amount, _member(hold), hold.ttl, *(a.limit for a in accounts)]
        for _ in range(3):
            status, index = await self._reserve(keys=keys, args=args)
            if int(status) == 1:
                return None
            account = accounts[int(index) - 1]
            if int(status) == 0:
                return account
            # Not in Redis yet (first use, or Redis lost it): load the period's spend from the store.
            spent = await self._load(account.scope, account.ident, account.start)
            ttl = 86400 * 40 if account.end == float("inf") else int(account.end - account.start) + 86400
            books = self._prefix + account.key
            await self._open(keys=[books, books + ":holds"], args=[spent, ttl])
        raise StoreUnavailable("The budget ledger could not be initialised; try again shortly.")

    async def settle(self, hold: BudgetHold, actual: int) -> None:
        # Shielded: a request cancelled (client gone) while its settle is on the wire still settles.
        args = [_member(hold), hold.amount, actual]
        done = asyncio.ensure_future(self._settle(keys=self._keys(hold.accounts), args=args))
        self._settling.add(done)
        done.add_done_callback(self._settling.discard)
        await asyncio.shield(done)


def _member(hold: BudgetHold) -> str:
    return f"{hold.amount}:{hold.id}"


class BudgetPolicy(Policy):
    name = "budget"

    def __init__(
        self,
        ledger: Ledger,
        tokens: TokenCounter,
        clock: Callable[[], float],
        hold_ttl: Callable[[ModelConfig], float] = lambda model: 3600.0,
    ) -> None:
        self._ledger = ledger
        self._tokens = tokens
        self._clock = clock
        self._hold_ttl = hold_ttl
        self._ttls: dict[str, float] = {}  # per model id: the configuration is fixed for the process's life
        # BudgetHold ids: unique across processes sharing a ledger, without a random draw per request.
        self._id_prefix = secrets.token_hex(8) + "-"
        self._ids = itertools.count()
        # Per principal (the authenticator's cached object): its accounts and when their period ends.
        self._cache: dict[int, tuple[Principal, list[BudgetAccount], float]] = {}

    def _accounts(self, ctx: RequestContext) -> list[BudgetAccount]:
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
        if ctx.prompt_tokens is None:
            ctx.prompt_tokens = await self._tokens.count_messages_async(ctx.request.messages)
        max_out = ctx.request.max_tokens or ctx.default_max_tokens
        estimate = ceil_micro(ctx.prompt_tokens, model.price.input) + ceil_micro(
            max_out * max(1, ctx.request.n), model.price.output
        )
        ttl = self._ttls.get(model.id)
        if ttl is None:
            ttl = self._ttls[model.id] = self._hold_ttl(model)
        hold = BudgetHold(accounts, estimate, ttl, max_out, f"{self._id_prefix}{next(self._ids)}")
        # Held before the ledger answers: if that answer never comes (cancelled, store error), the after-hook
        # still lets go of whatever the ledger took, by id.
        ctx.reservation = hold
        try:
            refused = await self._ledger.reserve(hold)
        except GatewayError:
            raise
        except Exception as exc:
            log.error("budget ledger unavailable (%s); refusing the request", exc)
            raise StoreUnavailable("The budget ledger is unavailable; try again shortly.") from exc
        if refused is not None:
            ctx.reservation = None
            whose = "this key's" if refused.scope == "key" else f"group {refused.ident!r}'s"
            raise BudgetExceeded(
                f"The request would exceed {whose} {_period_name(refused.period_id)} credit budget"
                " (the estimate reserves the prompt plus max_tokens)."
            )

    async def after(self, ctx: RequestContext, record: RequestRecord) -> None:
        hold = ctx.reservation
        if hold is None:
            return
        ctx.reservation = None
        await self._ledger.settle(hold, record.cost_micro)

    def stream_filter(self, ctx: RequestContext) -> StreamFilter | None:
        hold = ctx.reservation
        if hold is None:
            return None
        return OutputCap(hold.completion_tokens, ctx.request.n, ctx.prompt_tokens or 0, self._tokens)

    def filter_completion(self, ctx: RequestContext, completion: Completion) -> Completion:
        hold = ctx.reservation
        if hold is None:
            return completion
        return cap_completion(completion, hold.completion_tokens, ctx.prompt_tokens or 0, self._tokens)


def _account(scope: str, ident: str, limits: Limits, now: float) -> BudgetAccount:
    period_id, start, end = period_bounds(limits.budget_period, now)
    assert limits.budget_micro is not None
    return BudgetAccount(scope, ident, period_id, start, end, limits.budget_micro)


def _period_name(period_id: str) -> str:
    if period_id == "total":
        return "total"
    return "daily" if len(period_id) == 10 else "monthly"
