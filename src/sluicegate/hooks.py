"""The hook contract between the service and what runs around every request (Bifrost's, failing closed).

Two kinds of hook, both called by the service through ``PolicyChain``:

* a ``Policy`` may refuse a request (``before`` raises a ``GatewayError``: rate limits, budgets, DLP blocks),
  rewrite it (DLP redaction of ``ctx.request.messages``), rewrite the answer (``stream_filter`` chunk by
  chunk, ``filter_completion`` whole) and settle what it reserved (``after``). ``before`` hooks run in
  order; ``after`` hooks run in reverse, for exactly the policies whose ``before`` ran, whatever the
  outcome, so a reservation is always released or reconciled. A policy error is never swallowed: a
  failing ``before`` refuses the request.
* a ``Sink`` only reads the finished ``RequestRecord`` (metering, metrics, logs, traces). Sinks run after
  every policy's ``after`` hook, in order, for every request that reached the chain; a sink's failure is
  logged and does not stop the others, because the answer is already decided.

This module sits below the service and the policies: both import it, neither imports the other.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .config import Deployment, ModelConfig
from .records import Attempt, RequestRecord
from .types import ChatChunk, ChatRequest, Completion, Principal

log = logging.getLogger("sluicegate.hooks")


@dataclass(frozen=True, slots=True)
class BudgetAccount:
    """One set of books a request is charged to: a key's or a group's budget for one period."""

    scope: str  # key | group
    ident: str
    period_id: str
    start: float
    end: float
    limit: int  # micro-credits
    key: str = field(init=False)  # "budget:<scope>:<ident>:<period>", the ledger's name for these books

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"budget:{self.scope}:{self.ident}:{self.period_id}")


@dataclass(slots=True)
class BudgetHold:
    """One request's reservation: ``amount`` micro-credits on every one of ``accounts``.

    It has an id so that settling it is idempotent (a hold the ledger never took, or already let go, is not
    subtracted again), and a lifetime of its own: after ``ttl`` seconds the ledger lets it go even if nobody
    settles it, so a process killed between reserve and settle cannot leak it.
    """

    accounts: list[BudgetAccount]
    amount: int
    ttl: float
    completion_tokens: int = 0  # completion tokens per choice the amount covers: the answer is cut there
    id: str = field(default_factory=lambda: secrets.token_hex(12))


@dataclass(frozen=True, slots=True)
class DlpEvent:
    """What DLP found and did: detector type and count, never the matched text."""

    direction: str  # request | response
    action: str  # block | redact | log
    detector: str
    count: int


@dataclass(frozen=True, slots=True)
class Served:
    """The deployment that answered: its public model (a fallback's when one answered) and its config."""

    model: ModelConfig
    deployment: Deployment


@dataclass(slots=True)
class RequestContext:
    """One request as the service and every hook see it; created once the model is resolved."""

    request_id: str
    principal: Principal
    request: ChatRequest
    model: ModelConfig
    api: str = "chat"  # the inbound API: chat | messages | responses | embeddings
    attempts: int = 0
    fallbacks: int = 0
    served_by: Served | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    started: float = field(default_factory=lambda: asyncio.get_running_loop().time())
    started_wall: float = field(default_factory=time.time)
    # Durations in records use perf_counter: uvloop's loop.time() is libuv's cached millisecond clock,
    # too coarse for sub-millisecond gateway overhead. loop.time() still drives the deadlines.
    started_perf: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    prompt_tokens: int | None = None  # counted once, by whichever policy needs them first
    default_max_tokens: int = 4096  # output tokens to plan for when the client sets no max_tokens
    reservation: BudgetHold | None = None  # the budget reservation until it is settled
    dlp_events: list[DlpEvent] = field(default_factory=list)
    attempt_log: list[Attempt] = field(default_factory=list)
    policies_run: list[Policy] = field(default_factory=list)
    # Headers policies want on the response (e.g. x-ratelimit-*), whatever the outcome.
    headers: dict[str, str] = field(default_factory=dict)

    def response_headers(self) -> dict[str, str]:
        return {
            **self.headers,
            "x-request-id": self.request_id,
            "x-sluicegate-attempts": str(self.attempts),
            "x-sluicegate-fallbacks": str(self.fallbacks),
        }


class StreamFilter(Protocol):
    def feed(self, batch: list[ChatChunk]) -> list[ChatChunk]:
        """Rewrite one batch; may hold text back (returned later) but never drop the finish or usage."""
        ...

    def flush(self) -> list[ChatChunk]:
        """Release whatever is held back, at the end of the stream."""
        ...


class Policy:
    """Base class: every hook is optional."""

    name = "policy"

    async def before(self, ctx: RequestContext) -> None:
        return None

    async def after(self, ctx: RequestContext, record: RequestRecord) -> None:
        return None

    def stream_filter(self, ctx: RequestContext) -> StreamFilter | None:
        return None

    def filter_completion(self, ctx: RequestContext, completion: Completion) -> Completion:
        """Rewrite a non-streaming answer (DLP); the default passes it through."""
        return completion


class Sink(Protocol):
    """Reads finished records; never refuses or rewrites anything."""

    name: str

    async def finished(self, ctx: RequestContext, record: RequestRecord) -> None: ...


class PolicyChain:
    def __init__(self, policies: Sequence[Policy], sinks: Sequence[Sink] = ()) -> None:
        self._policies = tuple(policies)
        self._sinks = tuple(sinks)
        # Hooks a policy does not override are not awaited at all: a coroutine per policy per request is
        # measurable on the hot path. Such a policy still counts as run (its after-hook depends on that).
        self._befores = tuple((p, type(p).before is not Policy.before) for p in self._policies)
        self._has_after = frozenset(id(p) for p in self._policies if type(p).after is not Policy.after)

    async def before(self, ctx: RequestContext) -> None:
        for policy, hooked in self._befores:
            ctx.policies_run.append(policy)
            if hooked:
                await policy.before(ctx)

    async def after(self, ctx: RequestContext, record: RequestRecord) -> None:
        has_after = self._has_after
        cancelled: asyncio.CancelledError | None = None
        for policy in reversed(ctx.policies_run):
            if id(policy) not in has_after:
                continue
            try:
                await policy.after(ctx, record)
            except asyncio.CancelledError as exc:
                # The client left while the books were being closed: close them all (a budget reservation
                # left open would hold the budget), then let the cancellation through.
                cancelled = exc
            except Exception:
                # The answer is already decided; an after-hook failure must not hide the others.
                log.exception("after-hook of %s failed (request %s)", policy.name, ctx.request_id)
        for sink in self._sinks:
            try:
                await sink.finished(ctx, record)
            except asyncio.CancelledError as exc:
                cancelled = exc
            except Exception:
                log.exception("sink %s failed (request %s)", sink.name, ctx.request_id)
        if cancelled is not None:
            raise cancelled

    def filter_completion(self, ctx: RequestContext, completion: Completion) -> Completion:
        for policy in self._policies:
            completion = policy.filter_completion(ctx, completion)
        return completion

    def stream_filters(self, ctx: RequestContext) -> list[StreamFilter]:
        filters = []
        for policy in self._policies:
            f = policy.stream_filter(ctx)
            if f is not None:
                filters.append(f)
        return filters
