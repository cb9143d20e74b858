"""The orchestrator of one request: policies → targets → attempts → the answer → the record.

Before the first byte, every failure is still an ordinary error: the first chunk is awaited (under the
first-token timeout) before the response starts, so a failed attempt can be retried, replaced by the
next deployment or fallback model, or reported as an HTTP error. After it, failures end the stream with
the wire format's error event, never a restart (``service.stream``). Every request ends with a
``RequestRecord`` handed to the hooks (metering, budgets, audit, metrics), and they complete before the
last byte of the response, so a finished answer always has its record. They run on every exit path once
the before-hooks began, including cancellation and unexpected exceptions (a gateway bug must not leave a
budget reservation behind); a stream the edge never relays is closed with ``OpenStream.close``.

The service speaks only canonical types: which API the client used is the edge's and the wire
format's business.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator

from ..config import GatewayConfig, ModelConfig
from ..errors import GatewayError, ModelNotFound, StreamInterrupted, UpstreamError, UpstreamTimeout
from ..hooks import PolicyChain, RequestContext
from ..policies.access import check_model_access, may_use
from ..pricing import cost_micro
from ..providers.base import StreamStats
from ..records import RequestRecord
from ..routing.circuit import CircuitBreaker
from ..routing.router import Router, Target
from ..tokens import TokenCounter
from ..types import ChatChunk, ChatRequest, Completion, Principal, Usage
from .attempts import AttemptLoop, attempt_record, skipped
from .stream import OpenStream, close_upstream, shielded


class ChatService:
    def __init__(
        self,
        config: GatewayConfig,
        router: Router,
        tokens: TokenCounter,
        chain: PolicyChain | None = None,
        breaker: CircuitBreaker | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._router = router
        self._tokens = tokens
        self.chain = chain or PolicyChain([])
        self.breaker = breaker or CircuitBreaker(config.routing.circuit)
        self._attempts = AttemptLoop(config.routing.retry, router, self.breaker, rng or random.Random())

    @property
    def models(self) -> list[ModelConfig]:
        return self._router.models

    def context(self, request_id: str, principal: Principal, request: ChatRequest, *, api: str) -> RequestContext:
        """Resolve the model and check access (404 before 403, both before any upstream call)."""
        model = self._router.model(request.model)
        if model is None:
            raise ModelNotFound(f"The model '{request.model}' does not exist", param="model")
        check_model_access(principal, model.id)
        ctx = RequestContext(request_id, principal, request, model, api)
        ctx.default_max_tokens = self._router.default_max_tokens(model)
        return ctx

    async def estimate_usage(self, request: ChatRequest, completion_text: str) -> Usage:
        return Usage(
            prompt_tokens=await self._tokens.count_messages_async(request.messages),
            completion_tokens=await self._tokens.count_async(completion_text),
            estimated=True,
        )

    # -- the record --------------------------------------------------------------------------------

    def record(
        self,
        ctx: RequestContext,
        *,
        outcome: str,
        status: int,
        usage: Usage | None = None,
        error_code: str | None = None,
        partial: bool = False,
    ) -> RequestRecord:
        now = time.perf_counter()
        served = ctx.served_by
        rec = RequestRecord(
            request_id=ctx.request_id,
            key_id=ctx.principal.key_id,
            key_prefix=ctx.principal.key_prefix,
            group=ctx.principal.group,
            requested_model=ctx.request.model,
            model=served.model.id if served else None,
            deployment=served.deployment.label if served else None,
            stream=ctx.request.stream,
            started_at=ctx.started_wall,
            user=ctx.request.user,
            status=status,
            outcome=outcome,
            error_code=error_code,
            usage=usage,
            partial=partial,
            latency_ms=(now - ctx.started_perf) * 1000,
            ttft_ms=(ctx.first_token_at - ctx.started_perf) * 1000 if ctx.first_token_at is not None else None,
            attempts=ctx.attempt_log,
            metadata=ctx.request.metadata,
            api=ctx.api,
        )
        if usage is not None and served is not None:
            rec.cost_micro = cost_micro(usage, served.model.price)
        return rec

    async def finish(self, ctx: RequestContext, record: RequestRecord) -> None:
        await self.chain.after(ctx, record)

    async def _before(self, ctx: RequestContext) -> None:
        """Run the before-hooks; a refusal (or any failure) still runs the after-hooks of the policies that ran."""
        try:
            await self.chain.before(ctx)
        except BaseException as exc:
            await self._failed(ctx, exc, "rejected")
            raise

    async def _failed(self, ctx: RequestContext, exc: BaseException, outcome: str = "failed") -> None:
        """Record a request that ends with ``exc``; the after-hooks let go of what the before-hooks took."""
        if isinstance(exc, GatewayError):
            await self.finish(ctx, self.record(ctx, outcome=outcome, status=exc.status, error_code=exc.code))
        elif isinstance(exc, asyncio.CancelledError):
            await shielded(self.finish(ctx, self.record(ctx, outcome="cancelled", status=499)))
        else:  # a gateway bug; the edge answers 500 internal_error
            await self.finish(ctx, self.record(ctx, outcome="failed", status=500, error_code="internal_error"))

    # -- non-streaming -----------------------------------------------------------------------------

    async def complete(self, ctx: RequestContext) -> tuple[Completion, Usage]:
        """The whole answer (after the policies' rewrites) and its usage, recorded before it is returned."""
        await self._before(ctx)

        async def call(target: Target) -> Completion:
            try:
                async with asyncio.timeout(target.deployment.timeouts.total):
                    return await target.provider.complete(ctx.request, target.deployment, ctx.request_id)
            except TimeoutError:
                raise UpstreamTimeout("the upstream did not answer in time") from None

        try:
            completion = await self._attempts.run(ctx, ctx.model, call)
            ctx.first_token_at = time.perf_counter()
            completion = self.chain.filter_completion(ctx, completion)
            usage = completion.usage
            if usage is None:
                usage = await self.estimate_usage(ctx.request, "".join(_message_text(c) for c in completion.choices))
        except BaseException as exc:
            await self._failed(ctx, exc)
            raise
        await self.finish(ctx, self.record(ctx, outcome="completed", status=200, usage=usage))
        return completion, usage

    # -- streaming ---------------------------------------------------------------------------------

    async def open_stream(self, ctx: RequestContext) -> OpenStream:
        """Find a target whose first chunk arrives; raise the last error if none does."""
        await self._before(ctx)
        try:
            filters = self.chain.stream_filters(ctx)
        except BaseException as exc:
            await self._failed(ctx, exc)
            raise

        async def call(target: Target) -> OpenStream:
            stats = StreamStats()
            upstream = target.provider.stream(ctx.request, target.deployment, ctx.request_id, stats)
            stream = OpenStream(self, ctx, target, upstream, filters)
            try:
                async with asyncio.timeout(target.deployment.timeouts.first_token):
                    await stream.read_first()
            except BaseException:
                await close_upstream(upstream)
                raise
            return stream

        try:
            stream = await self._attempts.run(ctx, ctx.model, call)
        except BaseException as exc:
            await self._failed(ctx, exc)
            raise
        ctx.first_token_at = time.perf_counter()
        return stream

    async def resume(self, stream: OpenStream) -> AsyncIterator[list[ChatChunk]] | None:
        """Continue a stream that failed after its first byte on another deployment that accepts an assistant
        prefill: it receives the conversation plus the text already sent, and its continuation is appended to
        the same stream, so the client gets one complete answer. Off unless the model enables it; only plain
        text answers (no tool calls, one choice) are continued. A candidate that refuses the prefill (or fails
        before its first chunk) is skipped; if none continues, the caller reports the original failure.
        """
        ctx = stream.ctx
        model = ctx.model
        text = stream.state.text
        if not model.continue_on_failure or ctx.request.n != 1 or not text or stream.state.has_tool_calls:
            return None
        messages = [*ctx.request.messages, {"role": "assistant", "content": text}]
        prefill = dataclasses.replace(ctx.request, messages=messages, include_usage=False)
        for target in self._router.targets(model):
            if target.key == stream.target.key or not target.accepts_prefill:
                continue
            if not may_use(ctx.principal, target.model.id):
                ctx.attempt_log.append(skipped(target, "model_access_denied"))
                continue
            if not self.breaker.allow(target.key):
                continue
            ctx.attempts += 1
            started, started_at = time.perf_counter(), time.time()
            upstream = target.provider.stream(prefill, target.deployment, ctx.request_id, StreamStats())
            try:
                async with asyncio.timeout(target.deployment.timeouts.first_token):
                    first = await anext(upstream)
            except (UpstreamError, StreamInterrupted, TimeoutError, StopAsyncIteration) as exc:
                await close_upstream(upstream)
                self.breaker.release_probe(target.key)
                code = exc.code if isinstance(exc, UpstreamError) else "stream_error"
                ctx.attempt_log.append(attempt_record(target, started, started_at, code))
                continue
            self.breaker.success(target.key)
            ctx.attempt_log.append(attempt_record(target, started, started_at))
            stream.resumed += 1
            return _prepend(first, upstream)
        return None


async def _prepend(first: list[ChatChunk], rest: AsyncIterator[list[ChatChunk]]) -> AsyncIterator[list[ChatChunk]]:
    try:
        yield first
        async for batch in rest:
            yield batch
    finally:
        await close_upstream(rest)


def _message_text(choice: dict[str, object]) -> str:
    message = choice.get("message")
    if not isinstance(message, dict):
        return ""
    parts = [message.get("content") or ""]
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        parts.append(str(fn.get("name") or "") + str(fn.get("arguments") or ""))
    return "".join(p for p in parts if isinstance(p, str))
