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
from ..hooks import Policy
from ..tokens import TokenCounter
from ..types import Principal

if TYPE_CHECKING:
    from ..hooks import RequestContext
    from ..records import RequestRecord

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
    """One process: exact, no I/O. Entries whose TAT is in the past are dropped as they are found.

    ``admit``/``charge`` are the synchronous forms the policy calls directly: with nothing to await, a
    coroutine per call was pure overhead on every request.
    """

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}

    def admit(self, buckets: list[Bucket], now: float) -> Verdict:
        # GCRA per bucket, all-or-nothing: the new TATs are stored only if every bucket admits. Written with
        # plain comparisons (no max()/floor() calls): it runs for every bucket of every request.
        tats = self._tat
        remaining: list[int] = []
        reset: list[float] = []
        new_tats: list[float] = []
        retry = 0.0
        for key, limit, cost, _ in buckets:
            interval = PERIOD / limit
            # Seconds the TAT is ahead of now, rather than absolute TATs: an epoch time has a 2.4e-7 s float step,
            # which showed up as one unit less in ``remaining`` on a fresh bucket (992 of 1,000 after 7 tokens).
            ahead = tats.get(key, 0.0) - now
            if ahead < 0:
                ahead = 0.0
            new_ahead = ahead + interval * cost
            late = new_ahead - PERIOD
            if late > 0:  # refused: the bucket keeps its TAT
                if late > retry:
                    retry = late
                new_ahead = ahead
            left = (PERIOD - new_ahead) / interval + 1e-6  # floor below, undoing a last-digit float error
            remaining.append(int(left) if left > 0 else 0)
            reset.append(new_ahead)
            new_tats.append(now + new_ahead)
        if not retry:
            for b, new_tat in zip(buckets, new_tats, strict=True):
                tats[b.key] = new_tat
        if len(tats) > 100_000:
            self._tat = {k: v for k, v in tats.items() if v > now}
        return Verdict(not retry, remaining, reset, retry)

    def charge(self, buckets: list[Bucket], now: float) -> None:
        tats = self._tat
        for key, limit, cost, _ in buckets:
            tat = tats.get(key, 0.0)
            tats[key] = (tat if tat > now else now) + PERIOD / limit * cost

    async def take(self, buckets: list[Bucket], now: float) -> Verdict:
        return self.admit(buckets, now)

    async def force(self, buckets: list[Bucket], now: float) -> None:
        self.charge(buckets, now)


# KEYS: bucket keys. ARGV: caller's now (unused: Redis's own clock is shared by every replica), then per
# bucket (limit, cost), then force (0/1). TATs are stored with '%.17g': Lua's tostring keeps 14 digits, 0.1 ms
# of an epoch time, which is more than one token's interval at a million tokens per minute.
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
  local ahead = math.max(tonumber(redis.call('GET', KEYS[i]) or '0') - now, 0)
  local new_ahead = ahead + interval * cost
  if force == 0 and new_ahead - period > 0 then
    allowed = 0
    retry = math.max(retry, new_ahead - period)
    new_tats[i] = false
    out[i] = {math.max(0, math.floor((period - ahead) / interval + 1e-6)), ahead}
  else
    new_tats[i] = now + new_ahead
    out[i] = {math.max(0, math.floor((period - new_ahead) / interval + 1e-6)), new_ahead}
  end
end
if allowed == 1 then
  for i = 1, n do
    redis.call('SET', KEYS[i], string.format('%.17g', new_tats[i]), 'PX', math.ceil((new_tats[i] - now + 1) * 1000))
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


class _Plan(NamedTuple):
    """A principal's buckets (token buckets with cost 0, set per request) and its header groups."""

    principal: Principal
    requests: list[Bucket]
    tokens: list[Bucket]
    # Per kind present: its header names and the range of its buckets in ``requests + tokens``.
    headers: tuple[tuple[tuple[str, str, str], int, int], ...]


class RateLimitPolicy(Policy):
    name = "rate_limit"

    def __init__(self, limiter: Limiter, tokens: TokenCounter, *, fail_open: bool = False) -> None:
        self._limiter = limiter
        # In-process limits are called synchronously: they cannot fail and have nothing to wait for.
        self._local = limiter if isinstance(limiter, LocalLimiter) else None
        self._tokens = tokens
        self._fail_open = fail_open
        self._plans: dict[int, _Plan] = {}  # per principal (the authenticator's cached object)

    def _plan(self, p: Principal) -> _Plan:
        hit = self._plans.get(id(p))
        if hit is not None and hit.principal is p:
            return hit
        plan: dict[str, list[Bucket]] = {"requests": [], "tokens": []}
        for scope, ident, limits in (("key", p.key_id, p.key_limits), ("group", p.group, p.group_limits)):
            for kind, limit in (("requests", limits.rpm), ("tokens", limits.tpm)):
                if limit is not None and ident is not None:
                    plan[kind].append(Bucket(f"rl:{scope}:{ident}:{kind}", limit, 1 if kind == "requests" else 0, kind))
        requests, tokens = plan["requests"], plan["tokens"]
        groups = []
        if requests:
            groups.append((_HEADER_NAMES["requests"], 0, len(requests)))
        if tokens:
            groups.append((_HEADER_NAMES["tokens"], len(requests), len(requests) + len(tokens)))
        if len(self._plans) > 10_000:  # principals are replaced on every cache refresh: forget the old ones
            self._plans.clear()
        made = self._plans[id(p)] = _Plan(p, requests, tokens, tuple(groups))
        return made

    async def before(self, ctx: RequestContext) -> None:
        plan = self._plan(ctx.principal)
        if not plan.headers:
            return
        requests, tokens = plan.requests, plan.tokens
        if tokens:
            prompt = await self._tokens.count_messages_async(ctx.request.messages)
            ctx.prompt_tokens = prompt
            cost = prompt if prompt > 0 else 1
            buckets = requests + [Bucket(key, limit, cost, kind) for key, limit, _, kind in tokens]
        else:
            buckets = requests
        if self._local is not None:
            verdict = self._local.admit(buckets, time.time())
        else:
            try:
                verdict = await self._limiter.take(buckets, time.time())
            except Exception as exc:
                log.error("rate limiter unavailable (%s); failing %s", exc, "open" if self._fail_open else "closed")
                if self._fail_open:
                    return
                raise StoreUnavailable("The rate limiter is unavailable; try again shortly.") from exc
        _set_headers(ctx.headers, buckets, verdict, plan.headers)
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
        tokens = self._plan(ctx.principal).tokens
        if not tokens:
            return
        n = usage.completion_tokens
        buckets = [Bucket(key, limit, n, kind) for key, limit, _, kind in tokens]
        if self._local is not None:
            self._local.charge(buckets, time.time())
            return
        try:
            await self._limiter.force(buckets, time.time())
        except Exception as exc:
            log.error("could not charge %d completion tokens to the rate limiter: %s", n, exc)


_HEADER_NAMES = {
    kind: (f"x-ratelimit-limit-{kind}", f"x-ratelimit-remaining-{kind}", f"x-ratelimit-reset-{kind}")
    for kind in ("requests", "tokens")
}


def _set_headers(
    headers: dict[str, str],
    buckets: list[Bucket],
    verdict: Verdict,
    groups: tuple[tuple[tuple[str, str, str], int, int], ...],
) -> None:
    """The tightest bucket of each kind sets ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``."""
    remaining = verdict.remaining
    for (limit_name, remaining_name, reset_name), first, end in groups:
        i = first
        for j in range(first + 1, end):
            if remaining[j] < remaining[i]:
                i = j
        headers[limit_name] = str(buckets[i].limit)
        headers[remaining_name] = str(remaining[i])
        headers[reset_name] = duration(verdict.reset[i])
