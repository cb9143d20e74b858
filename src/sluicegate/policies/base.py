"""The policy chain: hooks around every chat request (Bifrost's contract, failing closed).

``before`` hooks run in order before any upstream call and may refuse the request by raising a
``GatewayError`` (rate limits, budgets, DLP blocks) or rewrite it (DLP redaction). ``after`` hooks run
in reverse order once the outcome is known, for exactly the policies whose ``before`` ran, whatever the
outcome (so a reservation is always released or reconciled). ``stream_filter`` lets a policy rewrite
the streamed answer chunk by chunk (DLP). A policy error is never swallowed: a failing ``before``
refuses the request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from ..types import ChatChunk, Completion

if TYPE_CHECKING:
    from ..metering.record import RequestRecord
    from ..service import RequestContext

log = logging.getLogger("sluicegate.policies")


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


class PolicyChain:
    def __init__(self, policies: Sequence[Policy]) -> None:
        self._policies = tuple(policies)
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
