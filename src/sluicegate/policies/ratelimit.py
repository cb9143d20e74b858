"""Rate limits per key and per group: requests and tokens per minute, by GCRA.

GCRA (the generic cell rate algorithm) keeps one number per limit, the theoretical arrival time (TAT).
Each unit of work pushes it forward by ``60 / limit`` seconds; a request is admitted while the TAT stays
within one minute of now. It never allows a double burst at a window edge (there are no windows), and it
gives exact ``remaining``/``reset``/``Retry-After`` values. Several limits (key and group, requests and
tokens) are checked and charged all-or-nothing: in-process in one event-loop step, or in Redis by one
Lua script, so the limit holds across workers and replicas.

Tokens: the prompt is charged before the call (counted with the tokenizer), the completion after it
(forced: it may push the TAT into the future, delaying the next requests, never refusing a finished one).
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from ..errors import RateLimited, StoreUnavailable
from ..metering.tokens import TokenCounter
from ..types import Principal
from .base import Policy

if TYPE_CHECKING:
    from ..metering.record import RequestRecord
    from ..service import RequestContext

log = logging.getLogger("sluicegate.ratelimit")

PERIOD = 60.0


class Bucket(NamedTuple):
    key: str  # e.g. "rl:key:<id>:requests"
    limit: int  # units per minute
    cost: int
    kind: str  # requests | tokens


class Verdict(NamedTuple):
    allowed: bool
    remaining: list[int]  # per bucket, after this request
    reset: list[float]  # seconds until each bucket is full again
    retry_after: float  # when refused: seconds until it would be admitted


class Limiter(Protocol):
    async def take(self, buckets: list[Bucket], now: float) -> Verdict: ...
    async def force(self, buckets: list[Bucket], now: float) -> None: ...


class LocalLimiter:
    """One process: exact, no I/O. Entries whose TAT is in the past are dropped as they are found."""

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}

    async def take(self, buckets: list[Bucket], now: float) -> Verdict:
        # GCRA per bucket, all-or-nothing: the new TATs are stored only if every bucket admits. Written with
        # plain comparisons (no max()/floor() calls): it runs for every bucket of every request.
        tats = self._tat
        remaining: list[int] = []
        reset: list[float] = []
        new_tats: list[float] = []
        retry = 0.0
        for key, limit, cost, _ in buckets:
            interval = PERIOD / limit
            tat = tats.get(key, 0.0)
            base = tat if tat > now else now
            new_tat = base + interval * cost
            late = new_tat - PERIOD - now
            if late > 0:  # refused: the bucket keeps its TAT
                if late > retry:
                    retry = late
                new_tat = base
            left = (PERIOD - (new_tat - now)) / interval
            remaining.append(int(left) if left > 0 else 0)  # floor, for a positive number
            reset.append(new_tat - now)
            new_tats.append(new_tat)
        if not retry:
            for b, new_tat in zip(buckets, new_tats, strict=True):
                tats[b.key] = new_tat
        if len(tats) > 100_000:
            self._tat = {k: v for k, v in tats.items() if v > now}
        return Verdict(not retry, remaining, reset, retry)

    async def force(self, buckets: list[Bucket], now: float) -> None:
        for b in buckets:
            self._tat[b.key] = max(self._tat.get(b.key, 0.0), now) + PERIOD / b.limit * b.cost


# KEYS: bucket keys. ARGV: caller's now (unused: Redis's own clock is shared by every replica), then per
# bucket (limit, cost), then force (0/1).
_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = #KEYS
local force = tonumber(ARGV[2 + 2 * n])
local period = 60.0
local out = {}
local allowed = 1
local new_tats = {}
local retry = 0
for i = 1, n do
  local limit = tonumber(ARGV[2 * i])
  local cost = tonumber(ARGV[2 * i + 1])
  local interval = period / limit
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  local base = math.max(tat, now)
  local new_tat = base + interval * cost
  local allow_at = new_tat - period
  if force == 0 and allow_at > now then
    allowed = 0
    retry = math.max(retry, allow_at - now)
    new_tats[i] = false
    out[i] = {math.max(0, math.floor((period - (base - now)) / interval)), base - now}
  else
    new_tats[i] = new_tat
    out[i] = {math.max(0, math.floor((period - (new_tat - now)) / interval)), new_tat - now}
  end
end
if allowed == 1 then
  for i = 1, n do
    redis.call('SET', KEYS[i], tostring(new_tats[i]), 'PX', math.ceil((new_tats[i] - now + 1) * 1000))
  end
end
local flat = {allowed, tostring(retry)}
for i = 1, n do
  table.insert(flat, out[i][1])
  table.insert(flat, tostring(out[i][2]))
end
return flat
"""


class RedisLimiter:
    """Shared by every process and replica using the same Redis; time comes from Redis's clock."""

    def __init__(self, redis: Any, prefix: str = "sluicegate:") -> None:
        self._script = redis.register_script(_LUA)
        self._prefix = prefix

    async def _run(self, buckets: list[Bucket], now: float, force: int) -> list[Any]:
        keys = [self._prefix + b.key for b in buckets]
        args: list[Any] = [repr(now)]
        for b in buckets:
            args += [b.limit, b.cost]
        args.append(force)
        return list(await self._script(keys=keys, args=args))

    async def take(self, buckets: list[Bucket], now: float) -> Verdict:
        flat = await self._run(buckets, now, 0)
        remaining = [int(flat[2 + 2 * i]) for i in range(len(buckets))]
        reset = [float(flat[3 + 2 * i]) for i in range(len(buckets))]
        return Verdict(bool(int(flat[0])), remaining, reset, float(flat[1]))

    async def force(self, buckets: list[Bucket], now: float) -> None:
        await self._run(buckets, now, 1)


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``250ms``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


class RateLimitPolicy(Policy):
    name = "rate_limit"

    def __init__(self, limiter: Limiter, tokens: TokenCounter, *, fail_open: bool = False) -> None:
        self._limiter = limiter
        self._tokens = tokens
        self._fail_open = fail_open
        # Per principal (the authenticator's cached object): its request buckets and token buckets (cost 0).
        self._plans: dict[int, tuple[Principal, list[Bucket], list[Bucket]]] = {}

    def _plan(self, p: Principal) -> tuple[list[Bucket], list[Bucket]]:
        hit = self._plans.get(id(p))
        if hit is not None and hit[0] is p:
            return hit[1], hit[2]
        plan: dict[str, list[Bucket]] = {"requests": [], "tokens": []}
        for scope, ident, limits in (("key", p.key_id, p.key_limits), ("group", p.group, p.group_limits)):
            for kind, limit in (("requests", limits.rpm), ("tokens", limits.tpm)):
                if limit is not None and ident is not None:
                    plan[kind].append(Bucket(f"rl:{scope}:{ident}:{kind}", limit, 1 if kind == "requests" else 0, kind))
        if len(self._plans) > 10_000:  # principals are replaced on every cache refresh: forget the old ones
            self._plans.clear()
        self._plans[id(p)] = (p, plan["requests"], plan["tokens"])
        return plan["requests"], plan["tokens"]

    async def before(self, ctx: RequestContext) -> None:
        requests, tokens = self._plan(ctx.principal)
        if not (requests or tokens):
            return
        if tokens:
            prompt = self._tokens.count_messages(ctx.request.messages)
            ctx.prompt_estimate = prompt
            cost = max(1, prompt)
            buckets = requests + [Bucket(b.key, b.limit, cost, b.kind) for b in tokens]
        else:
            buckets = requests
        try:
            verdict = await self._limiter.take(buckets, time.time())
        except Exception as exc:
            log.error("rate limiter unavailable (%s); failing %s", exc, "open" if self._fail_open else "closed")
            if self._fail_open:
                return
            raise StoreUnavailable("The rate limiter is unavailable; try again shortly.") from exc
        _set_headers(ctx.headers, buckets, verdict)
        if not verdict.allowed:
            retry = max(1, math.ceil(verdict.retry_after))
            raise RateLimited(
                "Rate limit exceeded for this key or its group; retry after the time in Retry-After.",
                headers={**ctx.headers, "retry-after": str(retry)},
            )

    async def after(self, ctx: RequestContext, record: RequestRecord) -> None:
        usage = record.usage
        if usage is None or not usage.completion_tokens:
            return
        tokens = self._plan(ctx.principal)[1]
        if tokens:
            buckets = [Bucket(b.key, b.limit, usage.completion_tokens, b.kind) for b in tokens]
            try:
                await self._limiter.force(buckets, time.time())
            except Exception as exc:
                log.error("could not charge %d completion tokens to the rate limiter: %s", usage.completion_tokens, exc)


_HEADER_NAMES = {
    kind: (f"x-ratelimit-limit-{kind}", f"x-ratelimit-remaining-{kind}", f"x-ratelimit-reset-{kind}")
    for kind in ("requests", "tokens")
}


def _set_headers(headers: dict[str, str], buckets: list[Bucket], verdict: Verdict) -> None:
    """The tightest bucket of each kind sets ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``."""
    remaining = verdict.remaining
    tightest: dict[str, int] = {}
    for i, b in enumerate(buckets):
        j = tightest.get(b.kind)
        if j is None or remaining[i] < remaining[j]:
            tightest[b.kind] = i
    for kind, i in tightest.items():
        limit_name, remaining_name, reset_name = _HEADER_NAMES[kind]
        headers[limit_name] = str(buckets[i].limit)
        headers[remaining_name] = str(remaining[i])
        headers[reset_name] = duration(verdict.reset[i])
