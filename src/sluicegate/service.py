"""The orchestrator of one chat request: policies → targets → attempts → the answer → the record.

Before the first byte, every failure is still an ordinary error: the first chunk is awaited (under the
first-token timeout) before the response starts, so a failed attempt can be retried, replaced by the
next deployment or fallback model, or reported as an HTTP error. After it, failures become the
``stream_error`` frame, never a restart. Timeouts are enforced around the adapter's reads and never
around writes to the client, so a slow reader is not mistaken for a silent upstream. Every request ends
with a ``RequestRecord`` handed to the policies' after-hooks (metering, budgets, audit, metrics), and
they complete before the last byte of the response, so a finished answer always has its record. They run
on every exit path once the before-hooks began, including cancellation and unexpected exceptions (a gateway
bug must not leave a budget reservation behind); a stream the edge never relays is closed with ``close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .config import GatewayConfig, ModelConfig
from .errors import (
    GatewayError,
    ModelNotFound,
    StreamInterrupted,
    UpstreamEmptyBody,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .http.sse import DONE, StreamEncoder, stream_error_frame
from .idle_timer import IdleTimer
from .metering.pricing import cost_micro
from .metering.record import Attempt, RequestRecord
from .metering.tokens import TokenCounter
from .policies.access import check_model_access, may_use
from .policies.base import Policy, PolicyChain, StreamFilter
from .providers.base import StreamStats
from .resilience import CircuitBreaker, backoff_delay
from .routing import Router, Target
from .types import ChatChunk, ChatRequest, Principal, Usage

T = TypeVar("T")
log = logging.getLogger("sluicegate.service")


@dataclass(slots=True)
class RequestContext:
    request_id: str
    principal: Principal
    request: ChatRequest
    model: ModelConfig | None = None
    attempts: int = 0
    fallbacks: int = 0
    served_by: Target | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    started: float = field(default_factory=lambda: asyncio.get_running_loop().time())
    started_wall: float = field(default_factory=time.time)
    # Durations in records use perf_counter: uvloop's loop.time() is libuv's cached millisecond clock,
    # too coarse for sub-millisecond gateway overhead. loop.time() still drives the deadlines.
    started_perf: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    prompt_estimate: int | None = None  # prompt tokens, counted once by whichever policy needs them first
    budget_hold: Any = None  # the budget reservation (policies.budgets.Hold) until it is settled
    dlp_events: list[Any] = field(default_factory=list)  # what DLP found and did (types and counts, never text)
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


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_urlsafe(18)


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
        self._rng = rng or random.Random()

    def resolve(self, ctx: RequestContext) -> ModelConfig:
        """Model lookup and access check: 404 before 403, both before any upstream call."""
        model = self._router.model(ctx.request.model)
        if model is None:
            raise ModelNotFound(f"The model '{ctx.request.model}' does not exist", param="model")
        check_model_access(ctx.principal, model.id)
        ctx.model = model
        return model

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
        target = ctx.served_by
        rec = RequestRecord(
            request_id=ctx.request_id,
            key_id=ctx.principal.key_id,
            key_prefix=ctx.principal.key_prefix,
            group=ctx.principal.group,
            requested_model=ctx.request.model,
            model=target.model.id if target else None,
            deployment=target.deployment.label if target else None,
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
        )
        if usage is not None and target is not None:
            rec.cost_micro = cost_micro(usage, target.model.price)
        return rec

    async def finish(self, ctx: RequestContext, record: RequestRecord) -> None:
        await self.chain.after(ctx, record)

    async def before(self, ctx: RequestContext) -> None:
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
            await _shielded(self.finish(ctx, self.record(ctx, outcome="cancelled", status=499)))
        else:  # a gateway bug; the edge answers 500 internal_error
            await self.finish(ctx, self.record(ctx, outcome="failed", status=500, error_code="internal_error"))

    # -- attempts ----------------------------------------------------------------------------------

    async def _attempts(self, ctx: RequestContext, model: ModelConfig, call: Callable[[Target], Awaitable[T]]) -> T:
        """Try targets in order with bounded retries; return the first success or raise the last error."""
        loop = asyncio.get_running_loop()
        retry = self.config.routing.retry
        deadline = ctx.started + retry.max_retry_time
        last_error: GatewayError | None = None
        targets = self._router.targets(model)
        context_fallback_used = False
        while (target := next(targets, None)) is not None:
            if not may_use(ctx.principal, target.model.id):
                # A fallback is asked only if the key could ask for it directly; skipped, never silently used.
                ctx.attempt_log.append(_skipped(target, "model_access_denied"))
                continue
            if not self.breaker.allow(target.key):
                ctx.attempt_log.append(_skipped(target, "circuit_open"))
                last_error = last_error or UpstreamUnavailable("every deployment of this model is unavailable")
                continue
            tries = 0
            while True:
                tries += 1
                ctx.attempts += 1
                started = time.perf_counter()
                started_at = time.time()
                try:
                    result = await call(target)
                except (UpstreamError, StreamInterrupted, TimeoutError) as exc:
                    err = _pre_stream_error(exc)
                    ctx.attempt_log.append(_attempt(target, started, started_at, err.code, err.status))
                    last_error = err
                    if err.retryable:
                        self.breaker.failure(target.key)
                    else:
                        self.breaker.release_probe(target.key)
                        fallback = model.context_window_fallback
                        if err.code == "context_length_exceeded" and fallback and not context_fallback_used:
                            fallback_model = self._router.model(fallback)
                            if fallback_model is not None:
                                context_fallback_used = True
                                targets = self._router.targets(fallback_model)
                                break
                        raise err from exc
                    wait = self._retry_wait(err, tries)
                    if wait is None or loop.time() + wait >= deadline:
                        break
                    await asyncio.sleep(wait)
                    continue
                except BaseException:
                    self.breaker.release_probe(target.key)
                    raise
                self.breaker.success(target.key)
                ctx.attempt_log.append(_attempt(target, started, started_at))
                ctx.served_by = target
                # Fallback models tried (a model switch each), whether or not they answered; one the key may
                # not use was not tried (and counting it would tell the client it exists).
                tried = {a.model for a in ctx.attempt_log if a.error_code != "model_access_denied"}
                ctx.fallbacks = len(tried - {model.id})
                return result
            if loop.time() >= deadline:
                break
        raise last_error or UpstreamUnavailable("no deployment is available for this model")

    def _retry_wait(self, err: UpstreamError, tries: int) -> float | None:
        """Seconds to wait before retrying the same deployment, or None to move on."""
        retry = self.config.routing.retry
        if isinstance(err, UpstreamTimeout) or tries >= retry.max_attempts_per_deployment:
            return None  # a silent route only multiplies the wait: move on
        if err.retry_after is not None:
            return err.retry_after if err.retry_after <= retry.retry_after_cap else None
        return backoff_delay(retry, tries - 1, self._rng)

    # -- non-streaming -----------------------------------------------------------------------------

    async def complete(self, ctx: RequestContext) -> dict[str, Any]:
        model = ctx.model or self.resolve(ctx)
        await self.before(ctx)

        async def call(target: Target) -> Any:
            try:
                async with asyncio.timeout(target.deployment.timeouts.total):
                    return await target.provider.complete(ctx.request, target.deployment, ctx.request_id)
            except TimeoutError:
                raise UpstreamTimeout("the upstream did not answer in time") from None

        try:
            completion = await self._attempts(ctx, model, call)
            target = ctx.served_by
            assert target is not None
            ctx.first_token_at = time.perf_counter()
            completion = self.chain.filter_completion(ctx, completion)
            usage = completion.usage
            if usage is None:
                usage = await self.estimate_usage(ctx.request, "".join(_message_text(c) for c in completion.choices))
        except BaseException as exc:
            await self._failed(ctx, exc)
            raise
        await self.finish(ctx, self.record(ctx, outcome="completed", status=200, usage=usage))
        return {
            "id": new_completion_id(),
            "object": "chat.completion",
            "created": ctx.created,
            "model": target.model.id,
            "choices": completion.choices,
            "usage": usage.to_openai(),
            **completion.extra,
        }

    # -- streaming ---------------------------------------------------------------------------------

    async def open_stream(self, ctx: RequestContext) -> OpenStream:
        """Find a target whose first chunk arrives; raise the last error if none does."""
        model = ctx.model or self.resolve(ctx)
        await self.before(ctx)
        completion_id = new_completion_id()
        try:
            filters = self.chain.stream_filters(ctx)
        except BaseException as exc:
            await self._failed(ctx, exc)
            raise

        async def call(target: Target) -> OpenStream:
            encoder = StreamEncoder(completion_id, ctx.created, target.model.id, ctx.request.include_usage)
            stats = StreamStats()
            upstream = target.provider.stream(ctx.request, target.deployment, ctx.request_id, stats)
            stream = OpenStream(self, ctx, target, upstream, encoder, filters)
            try:
                async with asyncio.timeout(target.deployment.timeouts.first_token):
                    await stream.read_first()
            except BaseException:
                await _close(upstream)
                raise
            return stream

        try:
            stream = await self._attempts(ctx, model, call)
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
        text = "".join(stream.encoder.completion_parts)
        if model is None or not model.continue_on_failure or ctx.request.n != 1 or not text:
            return None
        if stream.encoder.has_tool_calls:
            return None
        messages = [*ctx.request.messages, {"role": "assistant", "content": text}]
        prefill = dataclasses.replace(
            ctx.request, messages=messages, body={**ctx.request.body, "messages": messages}, include_usage=False
        )
        for target in self._router.targets(model):
            if target.key == stream.target.key or not target.deployment.accepts_prefill:
                continue
            if not may_use(ctx.principal, target.model.id):
                ctx.attempt_log.append(_skipped(target, "model_access_denied"))
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
                await _close(upstream)
                self.breaker.release_probe(target.key)
                code = exc.code if isinstance(exc, UpstreamError) else "stream_error"
                ctx.attempt_log.append(_attempt(target, started, started_at, code))
                continue
            self.breaker.success(target.key)
            ctx.attempt_log.append(_attempt(target, started, started_at))
            stream.resumed += 1
            return _prepend(first, upstream)
        return None


async def _prepend(first: list[ChatChunk], rest: AsyncIterator[list[ChatChunk]]) -> AsyncIterator[list[ChatChunk]]:
    try:
        yield first
        async for batch in rest:
            yield batch
    finally:
        await _close(rest)


class OpenStream:
    """A stream whose first chunk has arrived: the status is decided, the rest is bytes for the client."""

    def __init__(
        self,
        service: ChatService,
        ctx: RequestContext,
        target: Target,
        upstream: AsyncIterator[list[ChatChunk]],
        encoder: StreamEncoder,
        filters: list[StreamFilter],
    ) -> None:
        self._service = service
        self.ctx = ctx
        self._target = target
        self._upstream = upstream
        self.encoder = encoder
        self._filters = filters
        self.first = b""
        self.outcome = "pending"  # completed | interrupted | cancelled
        self._recorded = False
        self.abort_reason: str | None = None  # set by a graceful shutdown that ran out of time
        self.resumed = 0  # times the answer was continued on another deployment after a mid-stream failure
        self._timer: asyncio.Timeout | None = None

    def _encode(self, batch: list[ChatChunk]) -> bytes:
        for f in self._filters:
            batch = f.feed(batch)
        return self.encoder.encode(batch)

    async def read_first(self) -> None:
        parts: list[bytes] = []
        while not self.encoder.started:
            try:
                batch = await anext(self._upstream)
            except StopAsyncIteration:
                raise UpstreamEmptyBody("the upstream ended the stream before sending anything") from None
            parts.append(self._encode(batch))
        self.first = b"".join(parts)

    def abort(self, reason: str) -> None:
        """End the stream with a stream_error frame as soon as possible (used on shutdown)."""
        self.abort_reason = reason
        if self._timer is not None:
            self._timer.reschedule(asyncio.get_running_loop().time())

    async def rest(self) -> AsyncGenerator[bytes, None]:
        """Everything after the first bytes, ending with ``[DONE]`` or the ``stream_error`` frame."""
        loop = asyncio.get_running_loop()
        t = self._target.deployment.timeouts
        tail_grace = self._service.config.server.tail_grace
        deadline = self.ctx.started + t.total
        encoder = self.encoder
        upstream = self._upstream
        in_tail = encoder.complete
        failure: str | None = None
        try:
            while True:
                idle: IdleTimer | None = None
                try:
                    async with asyncio.timeout(None) as timer:
                        self._timer = timer
                        idle = IdleTimer(timer, deadline)
                        while not (encoder.complete and encoder.usage is not None) and self.abort_reason is None:
                            idle.reading(tail_grace if in_tail else t.idle)
                            try:
                                batch = await anext(upstream)
                            except StopAsyncIteration:
                                break
                            idle.done_reading()  # never time the client's reading
                            data = self._encode(batch)
                            in_tail = encoder.complete
                            if data:
                                yield data
                except TimeoutError:
                    if self.abort_reason is not None:
                        failure = self.abort_reason
                    elif not in_tail:
                        failure = "upstream idle timeout" if loop.time() < deadline else "upstream total timeout"
                except (StreamInterrupted, UpstreamError) as exc:
                    failure = _stream_message(exc)
                finally:
                    self._timer = None
                    if idle is not None:
                        idle.cancel()
                    await _close(upstream)
                if failure is None and self.abort_reason is None and not encoder.complete:
                    failure = "upstream stream ended without a finish_reason"
                if failure is None or self.abort_reason is not None or loop.time() >= deadline:
                    break
                resumed = await self._service.resume(self)
                if resumed is None:
                    break  # the client gets the original failure, never a fallback's refusal of the prefill
                upstream, failure, in_tail = resumed, None, False
                self._upstream = upstream
            if failure is None and self.abort_reason is not None and not encoder.complete:
                failure = self.abort_reason
            tail = self._flush_filters()
            if failure is None and not encoder.complete:
                failure = "upstream stream ended without a finish_reason"
            if failure is not None:
                self.outcome = "interrupted"
                await self._finish(partial=True, error_code="stream_error")
                yield tail + stream_error_frame(failure)
                return
            self.outcome = "completed"
            await self._finish(partial=False, error_code=None)
            usage = encoder.usage
            assert usage is not None
            yield tail + (encoder.usage_frame(usage) + DONE if encoder.include_usage else DONE)
        except Exception:
            if not self._recorded:  # a gateway bug mid-stream; the edge ends the stream with stream_error
                self.outcome = "interrupted"
                await _shielded(self._finish(partial=True, error_code="internal_error"))
            raise
        finally:
            if not self._recorded:  # the client went away (or the task was cancelled) mid-stream
                self.outcome = "cancelled"
                await _shielded(self._finish(partial=True, error_code="client_disconnected"))

    async def close(self) -> None:
        """Settle a stream whose relay will not run to its end (the client left, or the edge failed, before
        ``rest`` began): close the upstream and record it, so what it holds (a budget reservation) is let go.
        A no-op once the stream is recorded."""
        if self._recorded:
            return
        self.outcome = "cancelled"
        try:
            with contextlib.suppress(Exception):
                await _close(self._upstream)
        finally:
            await _shielded(self._finish(partial=True, error_code="client_disconnected"))

    @property
    def target(self) -> Target:
        return self._target

    def _flush_filters(self) -> bytes:
        """Release text the filters still hold (a stream that ended without its finish chunk)."""
        out: list[ChatChunk] = []
        for i, f in enumerate(self._filters):
            pending = f.flush()
            for later in self._filters[i + 1 :]:
                pending = later.feed(pending) if pending else pending
            out.extend(pending)
        return self.encoder.encode(out) if out else b""

    async def _finish(self, *, partial: bool, error_code: str | None) -> None:
        self._recorded = True
        encoder = self.encoder
        usage = encoder.usage
        if usage is None or partial or self.resumed:
            # A resumed answer came from two upstreams; neither usage report covers the whole of it.
            try:
                estimated = await self._service.estimate_usage(self.ctx.request, "".join(encoder.completion_parts))
            except Exception:  # the record (and the after-hooks it feeds) must still happen
                log.exception("could not count the usage of request %s", self.ctx.request_id)
                estimated = Usage(estimated=True)
            if usage is None or usage.completion_tokens == 0:
                usage = estimated
            encoder.usage = usage
        service = self._service
        record = service.record(
            self.ctx, outcome=self.outcome, status=200, usage=usage, error_code=error_code, partial=partial
        )
        await service.finish(self.ctx, record)


async def _shielded(awaitable: Awaitable[None]) -> None:
    """Run bookkeeping to completion even if the request's task is being cancelled."""
    task = asyncio.ensure_future(awaitable)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.shield(task)


def _attempt(
    target: Target, started: float, started_at: float, error_code: str | None = None, status: int | None = None
) -> Attempt:
    """The record of one finished attempt (``started``: perf_counter; ``started_at``: epoch)."""
    return Attempt(
        target.model.id,
        target.deployment.label,
        error_code is None,
        error_code,
        status,
        (time.perf_counter() - started) * 1000,
        started_at,
        time.time(),
    )


def _skipped(target: Target, error_code: str) -> Attempt:
    """The record of a target passed over without a network call (``Attempt.skipped``)."""
    now = time.time()
    return Attempt(target.model.id, target.deployment.label, False, error_code, started_at=now, ended_at=now)


def _pre_stream_error(exc: BaseException) -> UpstreamError:
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout("the upstream sent no first token in time")
    if isinstance(exc, StreamInterrupted):
        return UpstreamError(f"the upstream failed before the first token: {exc.message}")
    return UpstreamError("the upstream failed")


def _stream_message(exc: BaseException) -> str:
    if isinstance(exc, StreamInterrupted | GatewayError):
        return exc.message
    return "upstream stream interrupted"


async def _close(upstream: AsyncIterator[list[ChatChunk]]) -> None:
    aclose = getattr(upstream, "aclose", None)
    if aclose is not None:
        await aclose()


def _message_text(choice: dict[str, Any]) -> str:
    message = choice.get("message") or {}
    parts = [message.get("content") or ""]
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        parts.append(str(fn.get("name") or "") + str(fn.get("arguments") or ""))
    return "".join(p for p in parts if isinstance(p, str))
